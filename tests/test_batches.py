"""Bounded batch bodies (/has, /has-now, /buffer-length): refused before they
are read, and a worker's memory stays bounded under a flood of them."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from conftest import add_buffer

PATHS = ("/has", "/has-now", "/buffer-length")


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture
def small_batches(serve, tmp_path):
    cs = add_buffer(tmp_path, b"present")
    return serve(tmp_path, "--max-batch", "10", workers=2), cs


@pytest.mark.parametrize("path", PATHS)
def test_a_batch_within_bounds_is_answered(small_batches, path):
    server, cs = small_batches
    response = requests.post(server.url + path, json=[cs] * 10, timeout=30)
    assert response.status_code == 200 and len(response.json()) == 10


@pytest.mark.parametrize("path", PATHS)
def test_too_many_checksums_is_413_naming_the_limit(small_batches, path):
    server, cs = small_batches
    response = requests.post(server.url + path, data=json.dumps([cs] * 11, separators=(",", ":")), timeout=30)
    assert response.status_code == 413
    message = response.json()["message"]
    assert "10 checksums" in message and str(70 * 10 + 1024) in message


@pytest.mark.parametrize("path", PATHS)
def test_an_announced_oversized_body_is_refused_unread(small_batches, path):
    """Content-Length over 70 × N + 1024: 413 before any of the body is sent, then the connection closes."""
    server, _ = small_batches
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1725\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert "10 checksums" in json.loads(body)["message"]


@pytest.mark.parametrize("path", PATHS)
def test_a_chunked_body_is_cut_at_the_bound(small_batches, path):
    server, cs = small_batches
    pieces = (json.dumps(cs).encode() + b", " for _ in range(1000))
    response = requests.post(server.url + path, data=(b"[" + piece for piece in pieces), timeout=30)
    assert response.status_code == 413


def worker_rss(pids) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
    return total


@pytest.mark.timeout(300)
def test_memory_stays_bounded_under_a_flood_of_oversized_batches(serve, tmp_path):
    """200 clients each announcing a 1 GB /has body (and sending 1 MB of it),
    then 200 chunked ones sending 8 MB each: the workers' memory grows by far
    less than what was sent (the default bound is 70 MB a request)."""
    cs = add_buffer(tmp_path, b"present")
    server = serve(tmp_path, workers=2)
    pids = server.worker_pids()
    assert len(pids) == 2
    requests.post(f"{server.url}/has", json=[cs], timeout=30)
    before = worker_rss(pids)
    errors = []

    def announced():
        try:
            with socket.create_connection(("127.0.0.1", port_of(server)), timeout=60) as sock:
                sock.sendall(b"POST /has HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
                try:
                    sock.sendall(b"[" + b" " * (1 << 20))
                except OSError:
                    pass  # refused and closed: as it should
                assert sock.recv(12) == b"HTTP/1.1 413"
        except Exception as exc:  # reported below
            errors.append(exc)

    def chunked():
        try:
            body = (b" " * (1 << 20) for _ in range(8))
            response = requests.post(f"{server.url}/has", data=body, timeout=60)
            assert response.status_code == 400  # 8 MB of spaces: within the bound, then not JSON
        except Exception as exc:
            errors.append(exc)

    for target in (announced, chunked):
        threads = [threading.Thread(target=target) for _ in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors[:3]
    grown = worker_rss(pids) - before
    assert grown < 400 << 20, f"workers grew by {grown >> 20} MiB"
    assert requests.post(f"{server.url}/has", json=[cs], timeout=30).json() == [True]
