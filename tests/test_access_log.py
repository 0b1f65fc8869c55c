"""--access-log, the client address behind trusted proxies, and HTTPS."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import requests

from hashserver.testing import clean_environ

from conftest import BIN, add_buffer, self_signed, sha3, wait_for

LINE = re.compile(r'^(\S+) "(\S+) (\S+)" (\d{3}) (\d+) (\d+\.\d{4})$', re.M)


def log_lines(server, count: int, bound: float = 10) -> list[tuple]:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        lines = LINE.findall(server.output())
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    return LINE.findall(server.output())


def test_access_log_is_off_by_default(serve, tmp_path):
    server = serve(tmp_path)
    requests.get(f"{server.url}/{sha3(b'x')}", timeout=30)
    time.sleep(0.5)  # give a line the time to appear; none may
    assert LINE.findall(server.output()) == []


def test_access_log_one_line_per_request(serve, tmp_path):
    cs = add_buffer(tmp_path, b"logged")
    server = serve(tmp_path, "--access-log", workers=2)
    requests.get(f"{server.url}/{cs}", timeout=30)
    requests.get(f"{server.url}/{sha3(b'absent')}", timeout=30)
    requests.post(f"{server.url}/has?x=1", json=[cs], timeout=30)
    lines = [line for line in log_lines(server, 4) if line[2] != "/healthcheck"]  # the readiness probe
    assert len(lines) == 3
    assert ("127.0.0.1", "GET", f"/{cs}", "200", "6") == lines[0][:5]
    assert ("127.0.0.1", "GET", f"/{sha3(b'absent')}", "404", "9") == lines[1][:5]
    assert ("127.0.0.1", "POST", "/has?x=1", "200", "6") == lines[2][:5]


def test_the_hot_path_is_off_with_the_access_log_as_documented_not_warned(serve, tmp_path):
    server = serve(tmp_path, "--access-log")
    requests.get(f"{server.url}/{sha3(b'absent')}", timeout=30)  # the hot path is decided at the first connection
    wait_for(lambda: "hot path off" in server.output(), "the hot path's decision logged")
    assert "hot path off (--access-log" in server.output() and "would bypass" not in server.output()


def test_forwarded_addresses_are_trusted_only_from_configured_proxies(serve, tmp_path):
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    untrusting = serve(tmp_path, "--access-log")
    requests.get(f"{untrusting.url}/has", headers=forwarded, data="[]", timeout=30)
    assert [line[0] for line in log_lines(untrusting, 2) if line[2] == "/has"] == ["127.0.0.1"]
    trusting = serve(tmp_path, "--access-log", "--proxies-count", "1")
    requests.get(f"{trusting.url}/has", headers=forwarded, data="[]", timeout=30)
    assert [line[0] for line in log_lines(trusting, 2) if line[2] == "/has"] == ["203.0.113.7"]
    real_ip = serve(tmp_path, "--access-log", "--real-ip-header", "X-Real-IP")
    requests.get(f"{real_ip.url}/has", headers={"X-Real-IP": "198.51.100.9"}, data="[]", timeout=30)
    assert [line[0] for line in log_lines(real_ip, 2) if line[2] == "/has"] == ["198.51.100.9"]


def test_https_with_a_self_signed_certificate(serve, tmp_path):
    cert, key = self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "IP:127.0.0.1,DNS:localhost")
    directory = tmp_path / "buffers"
    directory.mkdir()
    cs = add_buffer(directory, b"over TLS")
    server = serve(directory, "--tls-cert", str(cert), "--tls-key", str(key), workers=2)
    url = server.url.replace("http://", "https://")
    assert requests.get(f"{url}/{cs}", verify=str(cert), timeout=30).content == b"over TLS"
    assert requests.post(f"{url}/has", json=[cs], verify=str(cert), timeout=30).json() == [True]
    try:
        requests.get(f"{server.url}/{cs}", timeout=10)  # plain HTTP on the TLS port
        plain_answered = True
    except requests.RequestException:
        plain_answered = False
    assert not plain_answered


def test_https_with_a_certificate_without_subject_alt_names(serve, tmp_path):
    """``openssl req -subj /CN=host`` makes no subjectAltName (Sanic would fail to start)."""
    cert, key = self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", common_name="127.0.0.1")
    directory = tmp_path / "buffers"
    directory.mkdir()
    cs = add_buffer(directory, b"over TLS, named by CN")
    server = serve(directory, "--tls-cert", str(cert), "--tls-key", str(key))
    url = server.url.replace("http://", "https://")
    assert requests.get(f"{url}/{cs}", verify=False, timeout=30).content == b"over TLS, named by CN"


@pytest.mark.parametrize("key_kind", ["another certificate's", "encrypted"])
def test_a_key_that_cannot_serve_the_certificate_is_one_line(tmp_path, key_kind):
    cert, key = self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    if key_kind == "encrypted":
        subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(tmp_path / "locked.pem"), "-aes256",
                        "-passout", "pass:secret"], check=True, capture_output=True, timeout=60)
        key = tmp_path / "locked.pem"
    else:
        _, key = self_signed(tmp_path / "other.pem", tmp_path / "other-key.pem")
    out = subprocess.run([str(BIN / "hashserver"), str(tmp_path), "--tls-cert", str(cert), "--tls-key", str(key)],
                         capture_output=True, text=True, timeout=60, env=clean_environ(), stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert f"--tls-cert='{cert}': not a certificate that --tls-key='{key}' can serve" in out.stderr
