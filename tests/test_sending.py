"""The one place that touches Sanic's internals (hashserver.sending): the
internals it relies on still exist, and zero-copy sending really happens and
ends the response exactly."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time

import pytest
import sanic
from sanic.http import Http
from sanic.http.stream import Stream

from hashserver import Config, sending
from hashserver.reader import SMALL_BUFFER

from conftest import add_buffer


def test_sanic_is_the_major_version_checked():
    assert sanic.__version__.split(".")[0] == "25"


def test_the_response_byte_count_slot_exists():
    """Zero-copy sending lowers Sanic's count of body bytes still due; if
    Sanic renamed or dropped it, responses would be cut or hang."""
    assert sending.SANIC_BYTES_LEFT in Http.__slots__


def test_the_slot_a_response_cut_short_relies_on_exists():
    """A response cut short (a streamed object found corrupt) marks Sanic's
    response as sent: else Sanic ends it once more and logs a traceback."""
    assert sending.SANIC_RESPONSE_FUNC in Http.__slots__


def test_the_slots_a_refused_body_relies_on_exist():
    """A refused upload ends the connection (keep_alive), unread (request_body),
    or after a bounded drain (request_max_size)."""
    assert {"keep_alive", sending.SANIC_REQUEST_BODY, "request_bytes"} <= set(Http.__slots__)
    assert sending.SANIC_REQUEST_MAX_SIZE in Stream.__slots__


@pytest.mark.parametrize("size", [SMALL_BUFFER + 1, 3 << 20])  # smaller ones are served from memory
def test_large_get_goes_out_zero_copy_and_whole(app_client, tmp_path, monkeypatch, size):
    data = os.urandom(size)
    cs = add_buffer(tmp_path, data)
    client = app_client(Config(str(tmp_path)))
    sent = []
    blocking = sending._sendfile_blocking

    def counting(sock_fd, file_fd, offset, count):
        n = blocking(sock_fd, file_fd, offset, count)
        sent.append(n)
        return n

    monkeypatch.setattr(sending, "_sendfile_blocking", counting)
    for _ in range(2):  # the same kept-alive connection: nothing may bleed into the next response
        _, response = client.get("/" + cs)
        assert response.status == 200
        assert response.body == data
    assert sent and all(n == size - 1 for n in sent)  # the last byte ends the response through Sanic


def test_small_get_is_not_sent_zero_copy(app_client, tmp_path, monkeypatch):
    cs = add_buffer(tmp_path, b"small")
    client = app_client(Config(str(tmp_path)))
    monkeypatch.setattr(sending, "_sendfile_blocking", lambda *a: pytest.fail("sendfile for a small buffer"))
    assert client.get("/" + cs)[1].body == b"small"


def test_sendfile_waits_for_a_socket_numbered_past_1023(tmp_path):
    """The server raises its open-files limit: a worker's sockets may be numbered past
    1023, which select() does not take.  A full socket buffer is waited for all the same."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    data = os.urandom(8 << 20)  # far more than a socket buffer holds
    path = tmp_path / "buffer"
    path.write_bytes(data)
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    high = os.dup2(sender.fileno(), 1500)
    received = bytearray()

    def receive() -> None:
        while len(received) < len(data):
            piece = receiver.recv(1 << 16)
            if not piece:
                return
            received.extend(piece)
            time.sleep(0.001)  # slower than the sender: its buffer fills

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        with open(path, "rb") as file:
            assert sending._sendfile_blocking(high, file.fileno(), 0, len(data)) == len(data)
        reader.join(60)
    finally:
        os.close(high)
        sender.close()
        receiver.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert bytes(received) == data


def test_the_sending_thread_keeps_its_own_descriptors(tmp_path):
    """A request cancelled mid-send closes its file and its connection while the thread
    sends: the thread goes on with its own copies, so numbers reused meanwhile (a new file,
    a new connection) get nothing of it; the first client gets its buffer's bytes. A send
    cancelled before its thread started closes the copies itself."""
    data, other = os.urandom(8 << 20), b"another client's file"
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(other)
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    file = open(tmp_path / "a", "rb")
    owned = sending._OwnedDescriptors(sender.fileno(), file.fileno())
    received = bytearray()
    thread = threading.Thread(target=lambda: received.extend(b"%d" % owned.sendfile(0, len(data))))
    thread.start()
    sender.close()
    file.close()  # as the cancelled request does
    reused_sender, reused_receiver = socket.socketpair()  # likely the freed numbers
    reused_file = open(tmp_path / "b", "rb")
    got = bytearray()
    receiver.settimeout(30)
    while len(got) < len(data):
        piece = receiver.recv(1 << 16)
        if not piece:
            break
        got.extend(piece)
    thread.join(60)
    reused_receiver.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing came on the connection that took a freed number
        reused_receiver.recv(1)
    assert bytes(got) == data and bytes(received) == b"%d" % len(data)
    assert reused_file.read() == other
    for fd in owned.fds:  # the thread closed its copies when done
        with pytest.raises(OSError):
            os.fstat(fd)
    for end in (reused_sender, reused_receiver, reused_file, receiver):
        end.close()

    never = sending._OwnedDescriptors(0, 0)
    never.abandon()
    for fd in never.fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert never.sendfile(0, 1) == 0
