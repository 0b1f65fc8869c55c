"""Write tokens and read tokens, through HTTP against real servers."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests

from conftest import add_buffer, buffer_path, sha3

DATA = b"guarded buffer"


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "write-tokens"
    path.write_text("# the team's writers\n\nalpha-token\n  beta-token  \n")
    return path


def assert_unauthorized(response: requests.Response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Connection"] == "close"
    assert "token" in response.json()["message"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_writes_need_a_write_token_reads_stay_open(serve, tmp_path, token_file):
    directory = tmp_path / "buffers"
    directory.mkdir()
    server = serve(directory, "--writable", "--write-token-file", str(token_file), workers=2)
    cs = sha3(DATA)
    for headers in ({}, auth("wrong"), {"Authorization": "Basic alpha-token"}, auth("alpha-token x")):
        assert_unauthorized(requests.put(f"{server.url}/{cs}", data=DATA, headers=headers, timeout=30))
        assert_unauthorized(requests.put(f"{server.url}/promise/{cs}", headers=headers, timeout=30))
    assert not buffer_path(directory, cs).exists()
    assert not os.path.exists(str(buffer_path(directory, cs)) + ".PROMISE")
    for token in ("alpha-token", "beta-token"):
        assert requests.put(f"{server.url}/{cs}", data=DATA, headers=auth(token), timeout=30).status_code == 200
    assert requests.put(f"{server.url}/promise/{sha3(b'later')}", headers=auth("beta-token"),
                        timeout=30).status_code == 202
    assert requests.get(f"{server.url}/{cs}", timeout=30).content == DATA
    assert requests.post(f"{server.url}/has", json=[cs], timeout=30).json() == [True]
    preflight = requests.options(f"{server.url}/{cs}", headers={"Origin": "http://x.org",
                                 "Access-Control-Request-Method": "PUT"}, timeout=30)
    assert preflight.status_code == 204


def test_a_refused_upload_is_not_read(serve, tmp_path, token_file):
    """Headers announcing 100 MB, and no body: the 401 comes at once, and the connection closes."""
    server = serve(tmp_path, "--writable", "--write-token-file", str(token_file))
    cs = sha3(b"never sent")
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=20) as sock:
        sock.sendall(f"PUT /{cs} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # ends when the server closes: it waits for no body
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 401")
    assert "connection: close" in head.lower()
    assert not buffer_path(tmp_path, cs).exists()


def test_token_file_is_reread_when_it_changes(serve, tmp_path, token_file):
    directory = tmp_path / "buffers"
    directory.mkdir()
    server = serve(directory, "--writable", "--write-token-file", str(token_file), workers=2)
    replacement = tmp_path / "new-tokens"
    replacement.write_text("gamma-token\n")
    os.replace(replacement, token_file)  # alpha and beta revoked, gamma added
    deadline = time.monotonic() + 30
    answers = set()
    for i in range(10_000):  # every worker must see it; each rereads within a second
        data = b"after the change %d" % i
        gamma = requests.put(f"{server.url}/{sha3(data)}", data=data, headers=auth("gamma-token"), timeout=30)
        alpha = requests.put(f"{server.url}/{sha3(data)}", data=data, headers=auth("alpha-token"), timeout=30)
        answers = {(gamma.status_code, alpha.status_code)}
        if answers == {(200, 401)}:
            consecutive = sum(
                requests.put(f"{server.url}/{sha3(b'%d' % j)}", data=b"%d" % j, headers=auth("alpha-token"),
                             timeout=30).status_code == 401 for j in range(20))
            if consecutive == 20:
                break
        assert time.monotonic() < deadline, answers
    assert answers == {(200, 401)}


def test_read_tokens_guard_every_read_but_health_and_preflight(serve, tmp_path, token_file):
    directory = tmp_path / "buffers"
    directory.mkdir()
    readers = tmp_path / "read-tokens"
    readers.write_text("reader-token\n")
    cs = add_buffer(directory, DATA)
    server = serve(directory, "--writable", "--write-token-file", str(token_file),
                   "--read-token-file", str(readers), workers=2)
    reads = [("GET", f"/{cs}", None), ("HEAD", f"/{cs}", None), ("POST", "/has", json.dumps([cs])),
             ("POST", "/has-now", json.dumps([cs])), ("POST", "/buffer-length", json.dumps([cs])),
             ("GET", "/has", json.dumps([cs]))]
    for method, path, body in reads:
        for headers in ({}, auth("alpha-token")):  # a write token is not a read token
            response = requests.request(method, server.url + path, data=body, headers=headers, timeout=30)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        allowed = requests.request(method, server.url + path, data=body, headers=auth("reader-token"), timeout=30)
        assert allowed.status_code == 200, (method, path)
    assert requests.get(f"{server.url}/healthcheck", timeout=30).text == "OK"
    assert requests.options(f"{server.url}/has", timeout=30).status_code == 204
    # a write needs the write token only
    assert requests.put(f"{server.url}/{sha3(b'w')}", data=b"w", headers=auth("alpha-token"),
                        timeout=30).status_code == 200


def test_a_writable_server_open_to_the_network_without_tokens_warns(serve, tmp_path, token_file):
    open_server = serve(tmp_path, "--writable", "--host", "0.0.0.0")
    guarded = serve(tmp_path, "--writable", "--host", "0.0.0.0", "--write-token-file", str(token_file))
    local = serve(tmp_path, "--writable")
    warning = "without --write-token-file"
    assert open_server.output().count(warning) == 1
    assert warning not in guarded.output() and warning not in local.output()


@pytest.mark.parametrize("content, fragment", [("", "holds no token"), ("# only a comment\n\n", "holds no token")])
def test_a_token_file_without_tokens_is_refused_at_startup(tmp_path, content, fragment):
    import subprocess

    from conftest import BIN

    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    out = subprocess.run([str(BIN / "hashserver"), str(tmp_path), "--writable", "--write-token-file", str(tokens)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert fragment in out.stderr and "--write-token-file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
