"""A PUT's body as read by hashserver.bodyreader (out of Sanic's receive buffer
in place): the Sanic internals it relies on still exist, and on a real server a
body is taken whole and no further, however it arrives, so that the request
after it on the connection is read as sent."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time

import pytest
import requests
from sanic.http.http1 import Http
from sanic.server.protocols.http_protocol import HttpProtocol

from hashserver import bodyreader
from hashserver.server import ServerProtocol

from conftest import ServerProcess, buffer_path, leftovers, sha3


def test_the_slots_the_reader_relies_on_exist():
    assert set(bodyreader._SLOTS) <= set(Http.__slots__)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("buffers")
    logs = tmp_path_factory.mktemp("logs")
    with ServerProcess.hashserver(directory, "--writable", log_path=logs / "server.log") as running:
        running.directory = directory
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, bytes]:
    """One response (status, body) from ``sock``; bytes after it stay in ``buffered``."""
    while b"\r\n\r\n" not in buffered:
        received = sock.recv(65536)
        assert received, f"connection closed; got {bytes(buffered)!r}"
        buffered += received
    head, _, _ = bytes(buffered).partition(b"\r\n\r\n")
    del buffered[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(buffered) < length:
        received = sock.recv(65536)
        assert received, "connection closed in a response body"
        buffered += received
    body = bytes(buffered[:length])
    del buffered[:length]
    return int(lines[0].split()[1]), body


def put_head(checksum: str, length: int, extra: str = "") -> bytes:
    return f"PUT /{checksum} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def get_request(checksum: str) -> bytes:
    return f"GET /{checksum} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_a_body_in_pieces_of_every_size_then_a_request_on_the_same_connection(server):
    data = os.urandom(3 << 20)
    checksum = sha3(data)
    rng = random.Random(11)
    with connect(server) as sock:
        sock.sendall(put_head(checksum, len(data)))
        sent = 0
        while sent < len(data):
            size = rng.choice([1, 7, 1000, 4096, 65536, 300_000, 1 << 20])
            sock.sendall(data[sent:sent + size])
            sent += size
            if rng.random() < 0.05:
                time.sleep(0.01)  # the server catches up: its buffer is empty at times
        sock.sendall(get_request(checksum))
        buffered = bytearray()
        assert read_response(sock, buffered) == (200, b"OK")
        assert read_response(sock, buffered) == (200, data)
    assert buffer_path(server.directory, checksum).read_bytes() == data


def test_the_next_request_in_the_bodys_last_packet_is_not_taken_as_body(server):
    """A body whose last bytes share a packet with the next request (and one
    whose next request looks like a body's continuation): each is read as sent."""
    first, second = os.urandom(200_000), get_request("0" * 64) * 3
    with connect(server) as sock:
        sock.sendall(put_head(sha3(first), len(first)) + first[:100_000])
        sock.sendall(first[100_000:] + put_head(sha3(second), len(second)) + second + get_request(sha3(first)))
        buffered = bytearray()
        assert read_response(sock, buffered) == (200, b"OK")
        assert read_response(sock, buffered) == (200, b"OK")
        assert read_response(sock, buffered) == (200, first)
    assert buffer_path(server.directory, sha3(second)).read_bytes() == second


def test_expect_100_continue_is_answered_before_the_body_is_sent(server):
    data = os.urandom(1 << 20)
    with connect(server) as sock:
        sock.sendall(put_head(sha3(data), len(data), "Expect: 100-continue\r\n"))
        assert sock.recv(25).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data)
        assert read_response(sock, bytearray()) == (200, b"OK")
    assert buffer_path(server.directory, sha3(data)).read_bytes() == data


def test_a_wrong_body_is_refused_and_the_connection_goes_on(server):
    data = os.urandom(2 << 20)
    wrong = sha3(b"something else")
    with connect(server) as sock:
        sock.sendall(put_head(wrong, len(data)) + data + get_request(sha3(b"absent")))
        buffered = bytearray()
        assert read_response(sock, buffered) == (400, b"Incorrect checksum")
        assert read_response(sock, buffered)[0] == 404
    assert not buffer_path(server.directory, wrong).exists()
    assert leftovers(server.directory) == []


def test_chunked_and_empty_bodies(server):
    data = os.urandom(300_000)
    chunks = (data[i:i + 70_000] for i in range(0, len(data), 70_000))
    assert requests.put(f"{server.url}/{sha3(data)}", data=chunks, timeout=60).status_code == 200
    assert requests.put(f"{server.url}/{sha3(b'')}", data=b"", timeout=60).status_code == 200
    assert buffer_path(server.directory, sha3(data)).read_bytes() == data
    assert buffer_path(server.directory, sha3(b"")).read_bytes() == b""


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def large_put_growth(server, pid: int, mib: int = 256) -> tuple[str, int]:
    """PUT a body of ``mib`` MiB, sent as fast as the client can, to a server whose one
    worker is ``pid``: (its checksum, how much the worker's peak memory grew meanwhile)."""
    before = peak_rss(pid)
    block = os.urandom(1 << 20)
    chunks = [block[i:] + block[:i] for i in range(mib)]
    digest = hashlib.sha3_256()
    for chunk in chunks:
        digest.update(chunk)
    checksum = digest.hexdigest()
    with connect(server) as sock:
        sock.sendall(put_head(checksum, mib << 20))
        for chunk in chunks:
            sock.sendall(chunk)
        assert read_response(sock, bytearray()) == (200, b"OK")
    return checksum, peak_rss(pid) - before


@pytest.mark.timeout(300)
def test_a_large_put_keeps_the_workers_memory_flat(serve, tmp_path):
    """A 256 MiB body, sent as fast as the client can: the worker's peak
    memory grows by a few batches at most, not by the body."""
    server = serve(tmp_path, "--writable")
    [pid] = server.worker_pids()
    requests.put(f"{server.url}/{sha3(b'warm')}", data=b"warm", timeout=30)
    checksum, grown = large_put_growth(server, pid)
    assert os.path.getsize(buffer_path(tmp_path, checksum)) == 256 << 20
    assert grown < 48 << 20


def test_request_body_gives_a_body_whole_in_pieces_as_they_arrived():
    """In process, on a bare Sanic app: a body of several megabytes, one that
    fits in the first packet, and an empty one."""
    from sanic import Sanic
    from sanic.response import text

    app = Sanic("bodyreader_test")

    @app.put("/", stream=True)
    async def handler(request):
        digest, pieces = hashlib.sha3_256(), 0
        async for piece in bodyreader.request_body(request):
            digest.update(piece)
            pieces += 1
        return text(f"{digest.hexdigest()} {pieces}")

    for data, most_pieces in ((os.urandom(5 << 20), 5 << 20), (b"small", 1), (b"", 0)):
        _, response = app.test_client.put("/", content=data)
        checksum, pieces = response.text.split()
        assert checksum == sha3(data)
        assert int(pieces) <= most_pieces


class WindowProtocol(bodyreader.BodyWindowMixin, HttpProtocol):
    """Sanic's protocol with the body's window alone (no hot path, no deadline)."""

    __slots__ = bodyreader.BodyWindowMixin.SLOTS


def held_ahead(protocol_class, size: int) -> tuple[int, bool]:
    """On a bare Sanic app whose protocol is ``protocol_class``: a PUT of ``size`` bytes
    whose handler takes the first piece, then waits while the rest arrives.  Returns
    how many bytes the connection had buffered once it stopped reading (none arriving
    for a while), and whether the whole body then read hashed right."""
    import asyncio

    from sanic import Sanic
    from sanic.response import json

    app = Sanic(f"window_{protocol_class.__name__}")
    data = os.urandom(size)

    @app.put("/", stream=True)
    async def handler(request):
        body = bodyreader.request_body(request)
        digest = hashlib.sha3_256(await body.__anext__())
        buffer = request.stream.recv_buffer
        held, quiet = len(buffer), 0
        for _ in range(500):  # until nothing arrived for 0.2 s (a bound, not a speed)
            await asyncio.sleep(0.02)
            quiet = quiet + 1 if len(buffer) == held else 0
            held = len(buffer)
            if quiet == 10:
                break
        async for piece in body:
            digest.update(piece)
        return json({"held": held, "checksum": digest.hexdigest()})

    _, response = app.test_client.put("/", content=data, server_kwargs={"protocol": protocol_class})
    return response.json["held"], response.json["checksum"] == sha3(data)


def test_a_body_is_read_ahead_of_its_reader_within_the_window():
    """Sanic stops reading at 64 KiB buffered (plus a read); the window reads on while
    the reader is busy, up to BODY_WINDOW (plus a read), and no further."""
    read = 1 << 20  # more than the event loop's one read from a socket
    held, whole = held_ahead(HttpProtocol, 3 * bodyreader.BODY_WINDOW)
    assert whole and held < 64 * 1024 + read, held
    held, whole = held_ahead(WindowProtocol, 3 * bodyreader.BODY_WINDOW)
    assert whole and bodyreader.BODY_WINDOW <= held < bodyreader.BODY_WINDOW + read, held
    assert bodyreader._Windows.open == 0
    assert issubclass(ServerProtocol, bodyreader.BodyWindowMixin)  # the server's protocol reads ahead


def test_a_worker_reads_at_most_windows_bodies_ahead(monkeypatch):
    """With WINDOWS windows open in the worker, the next body is read as Sanic reads it."""
    monkeypatch.setattr(bodyreader._Windows, "open", bodyreader.WINDOWS)
    held, whole = held_ahead(WindowProtocol, 3 * bodyreader.BODY_WINDOW)
    assert whole and held < 64 * 1024 + (1 << 20), held
    assert bodyreader._Windows.open == bodyreader.WINDOWS


def test_a_body_left_unread_closes_its_window():
    """A reader that stops after the first piece and closes the body (as the PUT route
    does, whatever storage.put raised): the window is closed at once, not when the
    reader is collected."""
    from contextlib import aclosing

    from sanic import Sanic
    from sanic.response import json
    app = Sanic("window_closed")

    @app.put("/", stream=True)
    async def handler(request):
        protocol = request.stream.protocol
        async with aclosing(bodyreader.request_body(request)) as body:
            await body.__anext__()
            during = protocol.body_window
        return json({"during": during, "after": protocol.body_window, "open": bodyreader._Windows.open})

    _, response = app.test_client.put("/", content=os.urandom(3 << 20), server_kwargs={"protocol": WindowProtocol})
    assert response.json == {"during": bodyreader.BODY_WINDOW, "after": 0, "open": 0}
