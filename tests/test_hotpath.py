"""The hot path (:mod:`hashserver.hotpath`) answers exactly as the regular route.

The differential tests send the same raw bytes over real sockets to two real
servers on identical directories, one with the hot path on and one with it off
(``HASHSERVER_HOT_PATH=0``), and compare every response byte for byte: status
line, every header in order (the value of ``Date`` aside, its presence not),
body, and whether the server closed the connection.  Each test also checks
what the answers must be, so that both paths going wrong the same way fails too.

The in-process tests serve the app through :class:`HotPathProtocol` on a real
socket from a thread of the test process, so that they can read what the hot
path itself answered: that it serves what it should, and leaves the rest to Sanic.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import uvloop
from sanic import Sanic
from sanic.application.state import ApplicationServerInfo
from sanic.server.protocols.http_protocol import HttpProtocol

from hashserver import create_app
from hashserver.compression import zstd
from hashserver.config import Config
from hashserver.hotpath import FLUSH_BYTES, SIMPLE_REQUEST, HotPath, HotPathProtocol
from hashserver.reader import SMALL_BUFFER
from hashserver.runtime import MainProcess, attach_main
from hashserver.testing import ServerProcess, free_port

from conftest import add_buffer, buffer_path, sha3, wait_for

READ_TIMEOUT = 30.0
PACE = 0.002  # between the parts of a split request, so that they travel as separate segments
MiB = 1 << 20


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


SMALL = payload(1000, 1)
PIPELINED = payload(16 << 10, 2)  # 10,000 answers of it: 160 MB, were they all buffered
LARGE = payload(SMALL_BUFFER + 12345, 3)  # never held in memory: sent from its file
ZST, GZ = payload(3000, 4) * 3, payload(3000, 5) * 3
SMALL_CS, PIPELINED_CS, LARGE_CS, ZST_CS, GZ_CS = (sha3(x) for x in (SMALL, PIPELINED, LARGE, ZST, GZ))
ABSENT_CS = sha3(b"never stored")


def populate(directory: Path) -> None:
    for data in (SMALL, PIPELINED, LARGE):
        add_buffer(directory, data)
    buffer_path(directory, ZST_CS).parent.mkdir(exist_ok=True)
    Path(f"{buffer_path(directory, ZST_CS)}.zst").write_bytes(zstd.compress(ZST))
    buffer_path(directory, GZ_CS).parent.mkdir(exist_ok=True)
    Path(f"{buffer_path(directory, GZ_CS)}.gz").write_bytes(gzip.compress(GZ, mtime=0))


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """One raw request; ``target`` a checksum means ``/<checksum>``."""
    target = target if target.startswith(("/", "*")) else "/" + target
    head = "".join(f"{line}\r\n" for line in (f"{method} {target} {version}", *headers))
    return head.encode() + b"\r\n" + body


# ------------------------------------------------------------------ raw client
@dataclass(frozen=True)
class Reply:
    head: bytes  # status line and headers as sent, the value of Date masked
    body: bytes

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])


CLOSED = "closed"  # what a reply reads as when the server closed the connection instead


class Connection:
    """A raw HTTP/1.1 client connection that reads replies exactly as sent."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.position = 0  # where the unread part of the buffer begins

    def send(self, *parts: bytes) -> None:
        """Each part on its own, paced, so that they arrive as separate segments.
        A server that closed the connection is seen when reading."""
        for i, part in enumerate(parts):
            if i:
                time.sleep(PACE)
            try:
                self.sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                return

    def replies(self, *methods: str) -> list[Reply | str]:
        """One reply per request method, in order; ``CLOSED`` from where the server closed."""
        found = []
        for method in methods:
            reply = self.reply(method)
            found.append(CLOSED if reply is None else reply)
            if reply is None:
                break
        return found

    def reply(self, method: str) -> Reply | None:
        head = self._until(b"\r\n\r\n")
        if head is None:
            return None
        head = re.sub(rb"(?im)^(date): [^\r\n]*", rb"\1: <masked>", head)
        status = int(head.split(b" ", 2)[1])
        if status == 100:  # the final reply follows
            final = self.reply(method)
            return None if final is None else Reply(head + final.head, final.body)
        assert b"transfer-encoding" not in head.lower(), head
        found = re.search(rb"(?im)^content-length: *(\d+)", head)
        length = int(found[1]) if found else 0
        if method == "HEAD" or status in (204, 304):
            length = 0
        body = self._exactly(length)
        return None if body is None else Reply(head, body)

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        while self._fill():
            pass
        return self._take(len(self.buffer) - self.position)

    def _until(self, marker: bytes) -> bytes | None:
        while (end := self.buffer.find(marker, self.position)) < 0:
            if not self._fill():
                return None
        return self._take(end + len(marker) - self.position)

    def _exactly(self, count: int) -> bytes | None:
        while len(self.buffer) - self.position < count:
            if not self._fill():
                return None
        return self._take(count)

    def _take(self, count: int) -> bytes:
        found = bytes(self.buffer[self.position:self.position + count])
        self.position += count
        return found

    def _fill(self) -> bool:
        del self.buffer[:self.position]
        self.position = 0
        try:
            chunk = self.sock.recv(1 << 18)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------- server pairs
@dataclass
class Side:
    server: ServerProcess
    directory: Path

    def connect(self) -> Connection:
        return Connection(self.server.port)

    def get(self, checksum: str, *headers: str) -> Reply:
        connection = self.connect()
        try:
            connection.send(request("GET", checksum, *headers))
            return connection.reply("GET")
        finally:
            connection.close()


@dataclass
class Pair:
    hot: Side
    regular: Side

    def both(self, exchange: Callable[[Side], object]):
        """``exchange`` run against each server; the two outcomes must be identical."""
        hot, regular = exchange(self.hot), exchange(self.regular)
        assert hot == regular, f"\nhot path: {hot!r}\nregular:  {regular!r}"
        return hot


def start_pair(root: Path, *options: str, env: dict | None = None) -> Pair:
    sides = []
    for name, switch in (("hot", "1"), ("regular", "0")):
        directory = root / name
        directory.mkdir()
        populate(directory)
        server = ServerProcess.hashserver(directory, *options, env={**(env or {}), "HASHSERVER_HOT_PATH": switch},
                                          log_path=root / f"{name}.log")
        sides.append(Side(server.start(), directory))
    for side in sides:
        side.server.wait_ready()
    return Pair(*sides)


def stop_pair(pair: Pair) -> None:
    for side in (pair.hot, pair.regular):
        side.server.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A writable server with the hot path and one without, on identical directories."""
    started = start_pair(tmp_path_factory.mktemp("pair"), "--writable")
    for side in (started.hot, started.regular):
        for checksum in (SMALL_CS, PIPELINED_CS):
            assert side.get(checksum).status == 200  # read once: now held in memory
    yield started
    stop_pair(started)


def test_the_switch_turns_the_hot_path_on_and_off(pair):
    assert "hashserver: hot path on" in pair.hot.server.output()
    assert "hashserver: hot path off" in pair.regular.server.output()


def one_by_one(*requests: tuple[str, bytes]) -> Callable[[Side], list]:
    """Send each request after the reply to the previous one, on one connection."""
    def exchange(side: Side) -> list:
        connection = side.connect()
        try:
            found = []
            for method, raw in requests:
                connection.send(raw)
                found += connection.replies(method)
            return found
        finally:
            connection.close()
    return exchange


def pipelined(*requests: tuple[str, bytes]) -> Callable[[Side], list]:
    """Send the requests in one write on one connection; their replies, in order."""
    def exchange(side: Side) -> list:
        connection = side.connect()
        try:
            connection.send(b"".join(raw for _, raw in requests))
            return connection.replies(*(method for method, _ in requests))
        finally:
            connection.close()
    return exchange


def statuses(replies: list) -> list:
    return [reply if reply == CLOSED else reply.status for reply in replies]


def test_present_absent_invalid_uppercase(pair):
    cold = add_buffer(pair.hot.directory, b"cold"), add_buffer(pair.regular.directory, b"cold")
    found = pair.both(one_by_one(
        ("GET", request("GET", cold[0])),  # read from its file, then held
        ("GET", request("GET", cold[0])),
        ("HEAD", request("HEAD", cold[0])),
        ("GET", request("GET", SMALL_CS, "Host: 127.0.0.1")),
        ("HEAD", request("HEAD", SMALL_CS)),
        ("GET", request("GET", SMALL_CS.upper())),
        ("HEAD", request("HEAD", SMALL_CS.upper())),
        ("GET", request("GET", ABSENT_CS)),
        ("HEAD", request("HEAD", ABSENT_CS)),
        ("GET", request("GET", ABSENT_CS.upper())),
        ("GET", request("GET", "/abc")),
        ("GET", request("GET", SMALL_CS[:63] + "z")),
        ("GET", request("GET", SMALL_CS + "00")),
        ("GET", request("GET", SMALL_CS + "?x=1")),
        ("GET", request("GET", "/healthcheck")),
        ("GET", request("GET", LARGE_CS)),
    ))
    assert statuses(found) == [200, 200, 200, 200, 200, 200, 200, 404, 404, 404, 400, 400, 400, 200, 200, 200]
    assert found[0].body == b"cold" and found[3].body == SMALL and found[-1].body == LARGE
    assert found[4].body == b"" and b"content-length: 1000\r\n" in found[4].head


@pytest.mark.parametrize("checksum", [ZST_CS, GZ_CS], ids=["zstd", "gzip"])
def test_compressed_with_and_without_accept_encoding(pair, checksum):
    encodings = ["", "Accept-Encoding: zstd", "Accept-Encoding: gzip", "Accept-Encoding: gzip, deflate, br, zstd",
                 "Accept-Encoding: identity", "Accept-Encoding: *", "Accept-Encoding: GZIP;q=0.5"]
    requests = [(method, request(method, checksum, *([accept] if accept else [])))
                for _ in range(2) for accept in encodings for method in ("GET", "HEAD")]
    found = pair.both(one_by_one(*requests))
    assert set(statuses(found)) == {200}
    assert found[0].body == (ZST if checksum == ZST_CS else GZ)


def test_conditional_range_authorization_and_other_headers(pair):
    etag = f'If-None-Match: "{SMALL_CS}"'
    headers = [[etag], ['If-None-Match: "other"'], ["If-None-Match: *"], ["Range: bytes=0-9"],
               ["Range: bytes=5-", f'If-Range: "{SMALL_CS}"'], ["Range: bytes=0-9", 'If-Range: "x"'],
               ["Range: bytes=2000-"], ["Authorization: Bearer token"], ["Expect: 100-continue"],
               ["X-Unknown: 1"], ["Cookie: a=b"], ["Connection: Keep-Alive"], ["Connection: keep-alive"],
               ["Origin: https://example.org", "Referer: https://example.org/page", "User-Agent: test",
                "Accept: */*", "Accept-Language: en", "Cache-Control: no-cache", "Pragma: no-cache"],
               ["Host : spaced"], ["Host:tight"], ["Host:\ttab"], ["HOST: upper"], ["Upgrade: h2c"],
               ["Connection: keep-alive, Upgrade", "Upgrade: h2c"]]
    requests = [(method, request(method, checksum, *lines)) for lines in headers
                for checksum in (SMALL_CS, ABSENT_CS) for method in ("GET", "HEAD")]
    found = pair.both(one_by_one(*requests))
    assert statuses(found[:4]) == [304, 304, 404, 404]
    assert statuses(found[12:16]) == [206, 206, 404, 404]
    assert found[12].body == SMALL[:10]


def test_cors_preflight_and_cross_origin_gets(pair):
    preflight = request("OPTIONS", SMALL_CS, "Origin: https://example.org", "Access-Control-Request-Method: GET",
                        "Access-Control-Request-Headers: range, authorization")
    found = pair.both(one_by_one(
        ("OPTIONS", preflight),
        ("OPTIONS", request("OPTIONS", ABSENT_CS)),
        ("GET", request("GET", SMALL_CS, "Origin: https://example.org")),
        ("GET", request("GET", ABSENT_CS, "Origin: https://example.org")),
    ))
    assert statuses(found) == [204, 204, 200, 404]
    assert b"access-control-allow-origin: *\r\n" in found[2].head


def test_locks_held(pair):
    """A lock on a buffer held in memory changes nothing; a lock on an absent
    one makes the GET wait for the writer, on both paths."""
    late = payload(500, 6)
    late_cs = sha3(late)

    def exchange(side: Side) -> list:
        held = Path(f"{buffer_path(side.directory, SMALL_CS)}.LOCK")
        held.touch()
        waiting = Path(f"{buffer_path(side.directory, late_cs)}.LOCK")
        waiting.parent.mkdir(exist_ok=True)
        waiting.touch()
        connection = side.connect()
        try:
            connection.send(request("GET", SMALL_CS) + request("GET", late_cs))
            first = connection.reply("GET")
            time.sleep(0.3)  # the second GET now waits for the lock (if not, it finds the buffer: the same)
            add_buffer(side.directory, late)
            waiting.unlink()
            return [first, connection.reply("GET")]
        finally:
            held.unlink()
            connection.close()

    found = pair.both(exchange)
    assert statuses(found) == [200, 200] and found[1].body == late


def test_promise_pending(pair):
    promised = payload(700, 7)
    promised_cs = sha3(promised)

    def exchange(side: Side) -> list:
        reader, writer = side.connect(), side.connect()
        try:
            writer.send(request("PUT", f"/promise/{promised_cs}"))
            found = writer.replies("PUT")
            reader.send(request("GET", promised_cs), request("HEAD", promised_cs))
            time.sleep(0.3)  # the reader now waits for the promised buffer
            writer.send(request("PUT", promised_cs, f"Content-Length: {len(promised)}", body=promised))
            found += writer.replies("PUT")
            found += reader.replies("GET", "HEAD")
            reader.send(request("GET", promised_cs))
            return found + reader.replies("GET")
        finally:
            reader.close()
            writer.close()

    found = pair.both(exchange)
    assert statuses(found) == [202, 200, 200, 200, 200]
    assert found[2].body == promised == found[4].body


def test_held_buffers_changed_on_disk(pair):
    """Buffers read and held (proven, once the watch vouches), then removed or
    rewritten in place with wrong bytes: never answered from memory."""
    kept, gone, corrupt = payload(800, 10), payload(800, 11), payload(800, 12)

    def exchange(side: Side) -> list:
        checksums = [add_buffer(side.directory, data) for data in (kept, gone, corrupt)]
        connection = side.connect()
        try:
            found = []
            for _ in range(3):
                for checksum in checksums:
                    connection.send(request("GET", checksum))
                    found += connection.replies("GET")
            os.unlink(buffer_path(side.directory, checksums[1]))
            with open(buffer_path(side.directory, checksums[2]), "r+b") as f:
                f.write(bytes(10))
            for checksum in checksums:
                connection.send(request("GET", checksum), request("HEAD", checksum))
                found += connection.replies("GET", "HEAD")
            # The corruption message names the file, in each server's own directory.
            return found[:-2] + [(r.status, r.body.replace(str(side.directory).encode(), b"DIR")) for r in found[-2:]]
        finally:
            connection.close()

    found = pair.both(exchange)
    assert statuses(found[:-2]) == [200] * 9 + [200, 200, 404, 404]
    assert found[9].body == kept and [status for status, _ in found[-2:]] == [400, 400]
    assert b"File corruption" in found[-2][1]


def test_a_global_lock_made_after_a_404(pair):
    """``DIR/.LOCK`` made after a 404 (which may have learnt that no lock file
    exists): the next GET waits for the writer, on both paths."""
    late = payload(600, 14)
    late_cs = sha3(late)

    def exchange(side: Side) -> list:
        connection = side.connect()
        lock = side.directory / ".LOCK"
        try:
            for _ in range(2):
                connection.send(request("GET", late_cs))
                found = connection.replies("GET")
            lock.touch()
            connection.send(request("GET", late_cs))
            time.sleep(0.3)  # the GET now waits for the lock
            add_buffer(side.directory, late)
            lock.unlink()
            return found + connection.replies("GET")
        finally:
            lock.unlink(missing_ok=True)
            connection.close()

    found = pair.both(exchange)
    assert statuses(found) == [404, 200] and found[1].body == late


def test_pipelined_requests_mixing_hot_and_regular_routes(pair):
    fresh = payload(900, 8)
    has_body = json.dumps([SMALL_CS, ABSENT_CS]).encode()
    mix = [
        ("GET", request("GET", SMALL_CS)),
        ("POST", request("POST", "/has", f"Content-Length: {len(has_body)}", body=has_body)),
        ("HEAD", request("HEAD", SMALL_CS)),
        ("GET", request("GET", ABSENT_CS)),
        ("GET", request("GET", LARGE_CS)),
        ("GET", request("GET", SMALL_CS, "Range: bytes=1-2")),
        ("PUT", request("PUT", sha3(fresh), f"Content-Length: {len(fresh)}", body=fresh)),
        ("GET", request("GET", sha3(fresh))),
        ("OPTIONS", request("OPTIONS", SMALL_CS)),
        ("GET", request("GET", ZST_CS, "Accept-Encoding: zstd")),
        ("GET", request("GET", "/healthcheck")),
        ("GET", request("GET", SMALL_CS)),
        ("HEAD", request("HEAD", ABSENT_CS)),
        ("GET", request("GET", SMALL_CS)),
    ]
    found = pair.both(pipelined(*mix))
    assert statuses(found) == [200, 200, 200, 404, 200, 206, 200, 200, 204, 200, 200, 200, 404, 200]
    assert found[0].body == found[-1].body == SMALL and found[4].body == LARGE and found[7].body == fresh


def test_a_request_split_across_segments_at_every_offset(pair):
    data = request("GET", SMALL_CS, "Host: 127.0.0.1", "User-Agent: split") + request("HEAD", ABSENT_CS)

    def exchange(side: Side) -> list:
        connection = side.connect()
        try:
            found = []
            for offset in range(1, len(data)):
                connection.send(data[:offset], data[offset:])
                found += connection.replies("GET", "HEAD")
            return found
        finally:
            connection.close()

    found = pair.both(exchange)
    assert statuses(found) == [200, 404] * (len(data) - 1)


def smuggling_exchanges() -> dict[str, Callable[[Side], list]]:
    """Bodies whose bytes are a GET request line, answered before they are read:
    Sanic drains them, and neither path may take them for a request."""
    inner = request("GET", SMALL_CS)
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(inner), inner)

    def early_answer(head: bytes, body: bytes, method: str) -> Callable[[Side], list]:
        def exchange(side: Side) -> list:
            connection = side.connect()
            try:
                connection.send(head)
                found = connection.replies(method)  # answered before the body is sent
                connection.send(body, request("GET", ABSENT_CS))
                return found + connection.replies("GET")
            finally:
                connection.close()
        return exchange

    return {
        "invalid checksum, Content-Length": early_answer(
            request("PUT", "/abc", f"Content-Length: {len(inner)}"), inner, "PUT"),
        "invalid checksum, chunked": early_answer(
            request("PUT", "/abc", "Transfer-Encoding: chunked"), chunked, "PUT"),
        "GET with a body": one_by_one(
            ("GET", request("GET", SMALL_CS, f"Content-Length: {len(inner)}", body=inner) + request("GET", ABSENT_CS)),
            ("GET", b"")),
        "in one segment": one_by_one(
            ("PUT", request("PUT", ABSENT_CS, f"Content-Length: {len(inner)}", body=inner) + request("GET", ABSENT_CS)),
            ("GET", b"")),
    }


@pytest.mark.parametrize("case", list(smuggling_exchanges()))
def test_a_put_whose_body_holds_a_get_request(pair, case):
    found = pair.both(smuggling_exchanges()[case])
    assert found[0].status in (200, 400) and found[1].status == 404  # the GET after the body, not the one in it


def test_http_1_0_and_connection_close(pair):
    def exchange(side: Side) -> list:
        found = []
        for raw in (request("GET", SMALL_CS, version="HTTP/1.0"),
                    request("HEAD", ABSENT_CS, version="HTTP/1.0"),
                    request("GET", SMALL_CS, "Connection: close") + request("GET", SMALL_CS),
                    request("GET", ABSENT_CS, "Connection: close"),
                    request("GET", SMALL_CS, "Host: x", "Connection: close", "User-Agent: y")):
            connection = side.connect()
            connection.send(raw)
            found += connection.replies(raw.split(b" ", 1)[0].decode())
            found.append(connection.rest())  # nothing more: the server closes
            connection.close()
        connection = side.connect()
        connection.send(request("GET", SMALL_CS, "Connection: keep-alive", version="HTTP/1.0"),
                        request("GET", SMALL_CS))
        found += connection.replies("GET", "GET")
        connection.close()
        return found

    found = pair.both(exchange)
    assert [found[i].status for i in (0, 2, 4, 6, 8, 10, 11)] == [200, 404, 200, 404, 200, 200, 200]
    assert b"connection: close\r\n" in found[0].head and found[1] == b""
    assert found[5] == b""  # the request after Connection: close is not answered


GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + payload(200, 9) + b"\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    request("GET", SMALL_CS, version="HTTP/2.0"),
    request("GET", SMALL_CS, version="http/1.1"),
    request("get", SMALL_CS),
    request("HEAD", SMALL_CS, version="HTTP/1.1 "),
    request("GET", SMALL_CS, "NoColon"),
    request("GET", SMALL_CS, "Host: a", " folded"),
    request("GET", SMALL_CS, "Connection: keep-alive\t"),
    request("GET", SMALL_CS, "Connection: keepalive"),
    request("GET", SMALL_CS, "Content-Length: 1", "Content-Length: 1", body=b"xx"),
    request("GET", SMALL_CS, "Content-Length: -1"),
    request("GET", SMALL_CS, "Transfer-Encoding: chunked", body=b"zz\r\n\r\n"),
    request("GET", SMALL_CS, "X-Big: " + "b" * 9000),
    request("GET", SMALL_CS, "Host: " + "h" * 5000),
    request("GET", SMALL_CS, "Host: \x00\x01"),
    request("GET", SMALL_CS, "Host: caf\u00e9"),
    b"GET /" + b"\xff" * 64 + b" HTTP/1.1\r\n\r\n",
    b"GET  /" + SMALL_CS.encode() + b" HTTP/1.1\r\n\r\n",
    b"GET /" + SMALL_CS.encode() + b"  HTTP/1.1\r\n\r\n",
    b"GET /" + SMALL_CS.encode() + b" HTTP/1.1\n\r\n\r\n",
    b"GET /" + SMALL_CS.encode() + b"\tHTTP/1.1\r\n\r\n",
    b"\x00" * 100 + b"\r\n\r\n",
]


def test_garbage(pair):
    """Each (a complete request head, or what passes for one) on a connection of its own, followed
    by a valid GET: what is answered, and whether the connection survives, must not depend on the path."""
    def exchange(side: Side) -> list:
        found = []
        for raw in GARBAGE:
            connection = side.connect()
            connection.send(raw, request("GET", SMALL_CS))
            found.append(connection.replies("GET", "GET"))
            connection.close()
        return found

    found = pair.both(exchange)
    assert found[-1][0].status == 400


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pipeline_without_reading(side: Side, count: int = 10_000) -> tuple[int, list]:
    """``count`` GETs of a 16 KiB buffer sent without reading: the worker's
    growth in memory while the client does not read, and then every reply."""
    worker = side.server.worker_pids()[0]
    before = rss_bytes(worker)
    connection = side.connect()
    sender = threading.Thread(target=connection.sock.sendall, args=(request("GET", PIPELINED_CS) * count,))
    sender.start()
    peak = before
    for _ in range(30):  # the server stops reading once its write buffer is full
        time.sleep(0.1)
        peak = max(peak, rss_bytes(worker))
    replies = []
    for _ in range(count // 1000):
        replies += connection.replies(*["GET"] * 1000)
        peak = max(peak, rss_bytes(worker))
    sender.join(READ_TIMEOUT)
    connection.close()
    return peak - before, replies


@pytest.mark.timeout(300)
def test_a_client_pipelining_10000_requests_without_reading(pair):
    expected = pair.regular.get(PIPELINED_CS)
    assert expected.body == PIPELINED
    for side in (pair.hot, pair.regular):
        growth, replies = pipeline_without_reading(side)
        assert growth < 50 * MiB, f"{side.server}: grew by {growth / MiB:.0f} MiB"
        assert len(replies) == 10_000
        assert all(reply == expected for reply in replies)


def test_a_request_held_in_pieces_past_the_request_timeout_gets_408(tmp_path):
    """A request start held by the hot path times out as Sanic's own would."""
    timed = start_pair(tmp_path, "--header-timeout", "1")
    try:
        def exchange(side: Side) -> list:
            connection = side.connect()
            connection.send(request("GET", SMALL_CS), request("GET", SMALL_CS)[:30])
            found = [connection.reply("GET"), connection.rest()]
            connection.close()
            return found

        found = timed.both(exchange)
    finally:
        stop_pair(timed)
    assert found[0].status == 200 and found[1].startswith(b"HTTP/1.1 408 ")


def test_hot_answers_are_activity_for_the_inactivity_timeout(serve, tmp_path):
    add_buffer(tmp_path, SMALL)
    server = serve(tmp_path, "--timeout", "2")
    connection = Connection(server.port)
    for _ in range(20):  # 4 s of hot answers only, past the timeout
        connection.send(request("GET", SMALL_CS))
        assert connection.reply("GET").body == SMALL
        time.sleep(0.2)
    assert server.exit_code() is None
    connection.close()
    for _ in range(300):  # then, without requests, it ends
        if server.exit_code() is not None:
            break
        time.sleep(0.1)
    assert server.exit_code() == 0


def test_sanic_command_line_runs_the_hot_path(serve_sanic, tmp_path):
    add_buffer(tmp_path, SMALL)
    server = serve_sanic({"HASHSERVER_DIRECTORY": str(tmp_path)}, workers=2)
    side = Side(server, tmp_path)
    for _ in range(4):
        assert side.get(SMALL_CS).body == SMALL
    assert "hashserver: hot path on" in server.output()


# ------------------------------------------------------------------ in process
class InProcess:
    """The app served by :class:`HotPathProtocol` on a real socket, from an
    event loop (uvloop, as Sanic's workers run) in a thread of this process."""

    _names = iter(range(1_000_000))

    def __init__(self, config: Config, keep_alive_timeout: float | None = None, middleware: tuple = ()):
        Sanic.test_mode = True  # so that each app's start touches up Sanic's original methods (as sanic-testing does)
        self.app = create_app(config, name=f"hotpath_test_{next(self._names)}")
        for function, where in middleware:
            self.app.register_middleware(function, where)
        if keep_alive_timeout is not None:
            self.app.config.KEEP_ALIVE_TIMEOUT = keep_alive_timeout
        self.main = MainProcess.start(config)
        self.port = free_port()
        attach_main(self.app, self.main, "127.0.0.1", self.port, 1)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(self._start())

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(READ_TIMEOUT)

    def call(self, function: Callable):
        """``function()`` called in the server's event loop."""
        async def call():
            return function()
        return self._run(call())

    async def _start(self):
        server = await self.app.create_server(host="127.0.0.1", port=self.port, protocol=HotPathProtocol,
                                              return_asyncio_server=True)
        await server.startup()
        await server.before_start()
        await server.after_start()
        return server

    async def _stop(self) -> None:
        await self.server.before_stop()
        self.server.close()
        await self.server.wait_closed()
        await self.server.after_stop()

    @property
    def answered(self) -> dict:
        """What the hot path answered so far, by (route, status)."""
        return {key: counts[0] for key, counts in HotPath.of(self.app).counts.items()}

    def connect(self) -> Connection:
        return Connection(self.port)

    def stop(self) -> None:
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(READ_TIMEOUT)
        self.main.stop()


def hold_in_memory(port: int) -> None:
    """Read the buffers the tests GET once: then they are held in memory (and proven)."""
    connection = Connection(port)
    for checksum in (SMALL_CS, PIPELINED_CS):
        connection.send(request("GET", checksum))
        assert connection.reply("GET").status == 200
    connection.close()


@pytest.fixture
def in_process(tmp_path, request):
    """Parametrized (indirectly) by a keep-alive timeout."""
    populate(tmp_path)
    served = InProcess(Config(str(tmp_path), writable=True).validate(), getattr(request, "param", None))
    hold_in_memory(served.port)
    yield served
    served.stop()


def answered_after(served: InProcess, *requests: tuple[str, bytes]) -> dict:
    """What the hot path answered of these requests (sent one by one on one connection)."""
    before = served.answered
    connection = served.connect()
    for method, raw in requests:
        connection.send(raw)
        assert connection.replies(method)[0] != CLOSED
    connection.close()
    return {key: n - before[key] for key, n in served.answered.items() if n != before[key]}


def test_the_hot_path_answers_held_buffers_and_absent_ones(in_process):
    # The fixture's first GETs: small plain buffers not held yet, read from their files by the hot path itself.
    assert in_process.answered == {("get", 200): 2, ("get", 404): 0, ("head", 200): 0, ("head", 404): 0,
                                   ("get", 400): 0, ("get", 503): 0}
    assert answered_after(in_process, ("GET", request("GET", SMALL_CS)), ("GET", request("GET", SMALL_CS.upper())),
                          ("HEAD", request("HEAD", SMALL_CS)), ("GET", request("GET", ABSENT_CS)),
                          ("HEAD", request("HEAD", ABSENT_CS)),
                          ("GET", request("GET", SMALL_CS, "Host: x", "Accept-Encoding: br", "Connection: keep-alive")),
                          ) == {("get", 200): 3, ("head", 200): 1, ("get", 404): 1, ("head", 404): 1}


def test_held_buffers_are_proven_once_the_watch_vouches(in_process):
    """Once the index is exact for the directory (settled and rescanned), a
    held buffer is answered from its proof, with no stat; removing its file
    makes the hot path answer 404 at once."""
    storage = in_process.app.ctx.storage
    checksum = bytes.fromhex(SMALL_CS)

    def proven():
        stamp = storage.lookups.stamp(checksum)
        return stamp is not None and storage.cache.proven(checksum, stamp) is not None

    def answered_until_proven() -> bool:
        if in_process.call(proven):
            return True
        assert answered_after(in_process, ("GET", request("GET", SMALL_CS))) == {("get", 200): 1}
        return False

    wait_for(answered_until_proven, "proven: the watch vouched for the directory", 30)
    os.unlink(buffer_path(storage.search_path.main.root, SMALL_CS))
    assert answered_after(in_process, ("GET", request("GET", SMALL_CS))) == {("get", 404): 1}


@pytest.mark.parametrize("raw", [
    request("GET", SMALL_CS, "Authorization: Bearer x"), request("GET", SMALL_CS, 'If-None-Match: "x"'),
    request("GET", SMALL_CS, "Range: bytes=0-1"), request("GET", SMALL_CS, "If-Range: x"),
    request("GET", SMALL_CS, "Accept-Encoding: gzip"), request("GET", SMALL_CS, "Accept-Encoding: x, ZSTD"),
    request("GET", SMALL_CS, "Expect: 100-continue"), request("GET", SMALL_CS, "Upgrade: h2c"),
    request("GET", SMALL_CS, "X-Other: 1"), request("GET", SMALL_CS, version="HTTP/1.0"),
    request("GET", SMALL_CS, "Connection: keep-alive", version="HTTP/1.0"),
    request("GET", SMALL_CS + "?a"), request("GET", ZST_CS), request("GET", LARGE_CS), request("GET", "/abc"),
], ids=lambda raw: raw.split(b"\r\n")[1].decode() or raw.split(b"\r\n")[0][70:].decode() or "other")
def test_what_the_hot_path_leaves_to_sanic(in_process, raw):
    assert answered_after(in_process, ("GET", raw)) == {}


def test_a_split_request_is_still_answered_by_the_hot_path(in_process):
    data = request("GET", SMALL_CS, "Host: 127.0.0.1")
    connection = in_process.connect()
    before = in_process.answered[("get", 200)]
    for offset in range(1, len(data)):
        connection.send(data[:offset], data[offset:])
        assert connection.reply("GET").body == SMALL
    connection.close()
    assert in_process.answered[("get", 200)] - before == len(data) - 1


def test_reads_delivered_before_sanic_runs_are_answered_in_order(in_process):
    """The event loop may deliver two reads before Sanic's task runs (libuv reads
    again when a read filled its buffer): a simple request in the second read must
    wait for the request Sanic was handed in the first."""
    connection = in_process.connect()
    connection.send(request("GET", SMALL_CS))
    assert connection.reply("GET").status == 200
    protocol = next(iter(in_process.server.connections))
    first, second = request("GET", SMALL_CS, "X-Regular: 1"), request("HEAD", ABSENT_CS)
    in_process.loop.call_soon_threadsafe(lambda: [protocol.data_received(data) for data in (first, second)])
    assert statuses(connection.replies("GET", "HEAD")) == [200, 404]
    connection.close()


@pytest.mark.parametrize("in_process", [2.0], indirect=True, ids=["keep-alive 2 s"])
def test_hot_answers_keep_the_connection_alive(in_process):
    """Each answer restarts the keep-alive clock, as Sanic's own do."""
    connection = in_process.connect()
    for _ in range(25):  # 5 s, well past the keep-alive timeout
        time.sleep(0.2)
        connection.send(request("GET", SMALL_CS))
        assert connection.reply("GET").body == SMALL
    connection.close()
    assert in_process.answered[("get", 200)] >= 25


def test_no_answer_while_sanic_drains_a_body(in_process):
    inner = request("GET", SMALL_CS)
    connection = in_process.connect()
    connection.send(request("PUT", "/abc", f"Content-Length: {len(inner)}"))
    assert connection.reply("PUT").status == 400
    before = in_process.answered
    connection.send(inner, request("GET", ABSENT_CS))
    assert connection.reply("GET").status == 404
    connection.close()
    assert in_process.answered[("get", 200)] == before[("get", 200)]


def test_a_client_that_does_not_read_is_answered_by_sanic_meanwhile(in_process):
    """Once the write buffer is full the hot path stops answering (Sanic answers,
    waiting for the client); once the client reads, every reply is there."""
    count = 2000  # 32 MB of answers: more than the socket buffers hold
    connection = in_process.connect()
    before = in_process.answered[("get", 200)]
    sender = threading.Thread(target=connection.sock.sendall, args=(request("GET", PIPELINED_CS) * count,))
    sender.start()
    time.sleep(1.0)  # until the server has stopped answering
    assert in_process.answered[("get", 200)] - before < count
    protocol = next(iter(in_process.server.connections))
    buffered = in_process.call(protocol.transport.get_write_buffer_size)
    assert buffered < FLUSH_BYTES + 2 * 65536  # one batch of answers past Sanic's high-water mark, at most
    assert all(reply.body == PIPELINED for reply in connection.replies(*["GET"] * count))
    sender.join(READ_TIMEOUT)
    connection.close()


def test_an_error_in_the_hot_path_leaves_the_request_to_sanic(in_process, monkeypatch):
    hot = HotPath.of(in_process.app)

    def failing(checksum: bytes):
        raise OSError("storage failed")

    monkeypatch.setattr(hot.storage, "peek", failing)
    connection = in_process.connect()
    connection.send(request("GET", SMALL_CS))
    reply = connection.reply("GET")
    connection.close()
    assert reply.status == 500  # the regular route meets the same failure and reports it


def test_hot_answers_are_counted_in_the_metrics(tmp_path):
    """With the metrics middleware counting the regular route's answers, the hot path
    stays on, and its running totals reach the worker's metrics at each fold."""
    from prometheus_client.parser import text_string_to_metric_families

    populate(tmp_path / "buffers")
    served = InProcess(Config(str(tmp_path / "buffers")).validate())  # the app's own metrics and middleware
    metrics = served.app.ctx.metrics
    try:
        hold_in_memory(served.port)  # two GETs the regular route answers
        assert answered_after(served, *[("GET", request("GET", SMALL_CS))] * 3, ("GET", request("GET", ABSENT_CS)),
                              ("HEAD", request("HEAD", SMALL_CS)), ("HEAD", request("HEAD", ABSENT_CS))
                              ) == {("get", 200): 3, ("get", 404): 1, ("head", 200): 1, ("head", 404): 1}
        text = served.call(metrics.exposition).decode()
    finally:
        served.stop()
    figures = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}

    def figure(name: str, **labels: str) -> float | None:
        return figures.get((name, tuple(sorted(labels.items()))))

    requests = {(route, status): figure("hashserver_requests_total", route=route, status=status)
                for route, status in (("get", "200"), ("get", "404"), ("head", "200"), ("head", "404"))}
    assert requests == {("get", "200"): 5, ("get", "404"): 1, ("head", "200"): 1, ("head", "404"): 1}
    assert figure("hashserver_sent_bytes_total", route="get") == \
        4 * len(SMALL) + len(PIPELINED) + len(b"Not found")
    assert figure("hashserver_request_duration_seconds_count", route="get") == 6


def test_other_middleware_turns_the_hot_path_off(tmp_path):
    """Middleware the hot path would bypass (here: a header on every answer)."""
    async def stamp(request, response):
        response.headers["x-stamp"] = "1"

    populate(tmp_path)
    served = InProcess(Config(str(tmp_path)).validate(), middleware=((stamp, "response"),))
    try:
        connection = served.connect()
        for _ in range(2):
            connection.send(request("GET", SMALL_CS))
            assert b"x-stamp: 1" in connection.reply("GET").head
        connection.close()
        assert HotPath.of(served.app) is None
    finally:
        served.stop()


def test_the_protocol_is_chosen_for_the_sanic_command_line(tmp_path):
    from hashserver.lifecycle import use_protocol
    from hashserver.server import ServerProtocol

    app = create_app(Config(str(tmp_path)), name="hotpath_select")
    app.state.server_info.append(ApplicationServerInfo(settings={"protocol": HttpProtocol}))
    use_protocol(app, ServerProtocol)
    assert app.state.server_info[0].settings["protocol"] is ServerProtocol


@pytest.mark.parametrize("head, simple", [
    (f"GET /{SMALL_CS} HTTP/1.1\r\n\r\n", True),
    (f"HEAD /{SMALL_CS.upper()} HTTP/1.1\r\nHost: x\r\nconnection: KEEP-ALIVE\r\n\r\n", True),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nAccept-Encoding: br, deflate\r\nAccept: */*\r\n\r\n", True),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nAccept-Encoding: br, x-gzip\r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nAccept-Encoding-X: 1\r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nConnection: keep-alive \r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nHost: x\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nHosts: x\r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.1\r\nHost: x\ny: z\r\n\r\n", False),
    (f"GET /{SMALL_CS} HTTP/1.0\r\n\r\n", False),
    (f"PUT /{SMALL_CS} HTTP/1.1\r\n\r\n", False),
    (f"GET /{SMALL_CS}0 HTTP/1.1\r\n\r\n", False),
    (f"GET /{SMALL_CS[:-1]} HTTP/1.1\r\n\r\n", False),
])
def test_simple_requests(head, simple):
    match = SIMPLE_REQUEST.match(head.encode())
    assert (match is not None and match.end() == len(head)) == simple
