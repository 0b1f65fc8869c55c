"""Faults of a long-running service, in the storage and from clients: a
vanished directory, a writer or promise that never finishes, a lock dated
in the future, uploads that stall or crawl."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests

from hashserver.directory import HEALTH_EVERY

from conftest import add_buffer, buffer_path, leftovers, sha3, wait_for


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def every_worker_looked_since(moment: float) -> None:
    """Sleep until each worker's last look at its directory is either after ``moment``
    or too old to be used again: /healthcheck keeps what it saw for HEALTH_EVERY, and a
    worker that was not asked since ``moment`` still holds its earlier answer."""
    time.sleep(max(0.0, moment + HEALTH_EVERY + 0.05 - time.monotonic()))


def test_a_vanished_directory_is_503_never_absent_and_health_says_so(serve, tmp_path):
    directory = tmp_path / "buffers"
    directory.mkdir()
    present = add_buffer(directory, b"present")
    missing = sha3(b"missing")
    server = serve(directory, workers=2)
    assert requests.post(f"{server.url}/has", json=[present, missing], timeout=30).json() == [True, False]
    os.rename(directory, tmp_path / "moved away")
    moved = time.monotonic()
    for _ in range(10):  # any worker
        for response in (requests.get(f"{server.url}/{present}", timeout=30),
                         requests.get(f"{server.url}/{missing}", timeout=30),
                         requests.post(f"{server.url}/has", json=[present, missing], timeout=30),
                         requests.post(f"{server.url}/buffer-length", json=[missing], timeout=30)):
            assert response.status_code == 503
            assert "Storage unavailable" in response.json()["message"]
    every_worker_looked_since(moved)
    for _ in range(10):  # any worker
        response = requests.get(f"{server.url}/healthcheck", timeout=30)
        assert response.status_code == 503
        assert "Storage unavailable" in response.json()["message"]
    os.rename(tmp_path / "moved away", directory)  # back, without a restart
    every_worker_looked_since(time.monotonic())
    for _ in range(10):
        assert requests.get(f"{server.url}/healthcheck", timeout=30).status_code == 200
    assert requests.post(f"{server.url}/has", json=[present, missing], timeout=30).json() == [True, False]


def test_a_reader_waits_on_a_fresh_lock_at_most_the_wait_timeout(serve, tmp_path):
    cs = sha3(b"never arrives")
    lock = buffer_path(tmp_path, cs).with_name(cs + ".LOCK")
    lock.parent.mkdir()
    lock.write_text("another-host-1")
    server = serve(tmp_path, "--wait-timeout", "2", "--lock-timeout", "600")
    response = requests.get(f"{server.url}/{cs}", timeout=30)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "still being written" in response.json()["message"]
    lock.unlink()
    assert requests.get(f"{server.url}/{cs}", timeout=30).status_code == 404


def test_a_reader_waits_on_a_promise_at_most_the_wait_timeout(serve, tmp_path):
    server = serve(tmp_path, "--writable", "--wait-timeout", "2")
    cs = sha3(b"promised, never written")
    assert requests.put(f"{server.url}/promise/{cs}", timeout=30).status_code == 202
    response = requests.get(f"{server.url}/{cs}", timeout=30)
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert requests.post(f"{server.url}/has", json=[cs], timeout=30).json() == [True]


def test_a_lock_dated_in_the_future_is_fresh_only_for_the_lock_timeout(serve, tmp_path):
    """Another host's clock an hour ahead: its lock must not block readers for an hour."""
    cs = sha3(b"locked by a host whose clock is ahead")
    lock = buffer_path(tmp_path, cs).with_name(cs + ".LOCK")
    lock.parent.mkdir()
    lock.write_text("other-host-1")
    ahead = time.time() + 3600
    os.utime(lock, (ahead, ahead))
    server = serve(tmp_path, "--lock-timeout", "1", "--wait-timeout", "20")
    # fresh for 1 s from when the server first sees it, then stale: a 404, not a 503 after 20 s
    assert requests.get(f"{server.url}/{cs}", timeout=60).status_code == 404


def start_upload(server, cs: str, total: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=60)
    sock.sendall(f"PUT /{cs} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n".encode() + first)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_stalled_upload_is_aborted_and_leaves_nothing(serve, tmp_path):
    server = serve(tmp_path, "--writable", "--body-idle-timeout", "1")
    cs = sha3(b"x" * 1000)
    with start_upload(server, cs, 1000, b"x" * 10) as sock:
        status, body = read_answer(sock)  # nothing more is sent
    assert status == 408
    assert "no byte" in body["message"]
    wait_for(lambda: leftovers(tmp_path) == [], lambda: f"no leftovers, but {leftovers(tmp_path)}")
    assert not buffer_path(tmp_path, cs).exists()


@pytest.mark.timeout(180)
def test_a_trickling_upload_is_aborted_after_its_first_30_s(serve, tmp_path):
    server = serve(tmp_path, "--writable", "--min-body-rate", "1000", "--body-idle-timeout", "5")
    data = b"y" * 100_000
    cs = sha3(data)
    lock = buffer_path(tmp_path, cs).with_name(cs + ".LOCK")
    with start_upload(server, cs, len(data), b"y") as sock:
        wait_for(lock.exists, "the writer's lock")
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:  # one byte every 0.5 s: 2 bytes/s, under 1000
            try:
                sock.sendall(b"y")
            except OSError:
                break
            readable, _, _ = __import__("select").select([sock], [], [], 0.5)
            if readable:
                break
        status, body = read_answer(sock)
    assert status == 408
    assert "below the minimum" in body["message"]
    wait_for(lambda: leftovers(tmp_path) == [], lambda: f"no leftovers, but {leftovers(tmp_path)}")
