"""The HTTP contract, byte for byte, against an in-process server (sanic-testing)."""

from __future__ import annotations

import json
import os

import pytest

from hashserver import Config

from conftest import add_buffer, buffer_path, sha3

HELLO = b"hello world"
MISSING = sha3(b"not there")


def request(client, method, path, body=None, headers=None):
    _, response = client.request(path, http_method=method, content=body, headers=headers or {})
    return response


@pytest.fixture
def directory(tmp_path):
    d = tmp_path / "buffers"
    d.mkdir()
    return d


@pytest.fixture
def client(app_client, directory):
    return app_client(Config(str(directory), writable=True))


@pytest.fixture
def readonly(app_client, directory):
    return app_client(Config(str(directory)))


def test_healthcheck(client):
    response = request(client, "GET", "/healthcheck")
    assert response.status == 200
    assert response.body == b"OK"


def test_get_present_buffer(client, directory):
    cs = add_buffer(directory, HELLO)
    response = request(client, "GET", "/" + cs)
    assert response.status == 200
    assert response.body == HELLO
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(HELLO))


def test_uppercase_checksum_means_the_same_buffer(client, directory):
    cs = add_buffer(directory, HELLO)
    assert request(client, "GET", "/" + cs.upper()).body == HELLO
    assert json.loads(request(client, "POST", "/has", json.dumps([cs.upper()])).body) == [True]


def test_get_missing_is_plain_not_found(client):
    response = request(client, "GET", "/" + MISSING)
    assert response.status == 404
    assert response.body == b"Not found"


def test_head_gives_get_headers_without_body(client, directory):
    cs = add_buffer(directory, HELLO)
    response = request(client, "HEAD", "/" + cs)
    assert response.status == 200
    assert response.body == b""
    assert response.headers["content-length"] == str(len(HELLO))
    assert request(client, "HEAD", "/" + MISSING).status == 404


@pytest.mark.parametrize(
    "checksum, msg",
    [
        ("abc", "Value error, Wrong length"),
        ("ab", "Value error, Wrong length"),
        ("a" * 66, "Value error, Wrong length"),
        ("zz" + "a" * 62, "Value error, non-hexadecimal number found in fromhex() arg at position 0"),
        ("a" * 10 + "g" + "a" * 53, "Value error, non-hexadecimal number found in fromhex() arg at position 10"),
    ],
)
def test_invalid_checksum_in_path(client, checksum, msg):
    for method in ("GET", "PUT"):
        response = request(client, method, "/" + checksum, b"x" if method == "PUT" else None)
        assert response.status == 400
        assert json.loads(response.body) == {
            "message": "Invalid data",
            "exception": {"type": "value_error", "loc": ["path", "checksum"], "msg": msg, "input": checksum},
        }


def test_invalid_checksum_exact_bytes(client):
    response = request(client, "GET", "/abc")
    assert response.body == (
        b'{"message": "Invalid data", "exception": {"type": "value_error", "loc": ["path", "checksum"], '
        b'"msg": "Value error, Wrong length", "input": "abc"}}'
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_has(client, directory, method):
    present = add_buffer(directory, HELLO)
    response = request(client, method, "/has", json.dumps([present, MISSING, present]))
    assert response.status == 200
    assert json.loads(response.body) == [True, False, True]
    assert json.loads(request(client, method, "/has", b"[]").body) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_buffer_length(client, directory, method):
    present = add_buffer(directory, HELLO)
    response = request(client, method, "/buffer-length", json.dumps([present, MISSING]))
    assert response.status == 200
    assert json.loads(response.body) == [len(HELLO), 0]


@pytest.mark.parametrize("path", ["/has", "/buffer-length"])
@pytest.mark.parametrize(
    "body, error_type",
    [(b'{"a": 1}', "list_type"), (b'"abc"', "list_type"), (b"[1, 2", "json_invalid"), (b"", "missing")],
)
def test_batch_body_not_a_list(client, path, body, error_type):
    response = request(client, "POST", path, body)
    assert response.status == 400
    payload = json.loads(response.body)
    assert payload["message"] == "Invalid data"
    assert payload["exception"]["type"] == error_type
    assert payload["exception"]["loc"] == ["body"]
    assert payload["exception"]["msg"]


@pytest.mark.parametrize("path", ["/has", "/buffer-length"])
def test_batch_invalid_checksum_position(client, path):
    good = sha3(b"x")
    response = request(client, "POST", path, json.dumps([good, good, "abc"]))
    assert response.status == 400
    assert json.loads(response.body) == {
        "message": "Invalid data",
        "exception": {"type": "value_error", "loc": ["body", 2], "msg": "Value error, Wrong length", "input": "abc"},
    }
    response = request(client, "POST", path, json.dumps([good, 5]))
    assert json.loads(response.body)["exception"]["loc"] == ["body", 1]
    assert json.loads(response.body)["exception"]["type"] == "string_type"


def test_put_stores_and_is_served(client, directory):
    cs = sha3(HELLO)
    response = request(client, "PUT", "/" + cs, HELLO)
    assert response.status == 200
    assert response.body == b"OK"
    path = buffer_path(directory, cs)
    assert path.read_bytes() == HELLO
    assert request(client, "GET", "/" + cs).body == HELLO
    assert json.loads(request(client, "GET", "/has", json.dumps([cs])).body) == [True]


def test_put_already_present_rewrites_nothing(client, directory):
    cs = add_buffer(directory, HELLO)
    path = buffer_path(directory, cs)
    before = os.stat(path)
    response = request(client, "PUT", "/" + cs, HELLO)
    assert (response.status, response.body) == (200, b"OK")
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_put_wrong_body_is_rejected_and_nothing_stored(client, directory):
    cs = sha3(HELLO)
    response = request(client, "PUT", "/" + cs, b"something else")
    assert response.status == 400
    assert response.body == b"Incorrect checksum"
    assert not buffer_path(directory, cs).exists()
    leftovers = [p for p in directory.rglob("*") if p.is_file() and p.name != ".HASHSERVER_PREFIX"]
    assert leftovers == []


def test_put_on_read_only_server_is_405_json(readonly, directory):
    cs = sha3(HELLO)
    response = request(readonly, "PUT", "/" + cs, HELLO)
    assert response.status == 405
    assert "read-only" in json.loads(response.body)["message"]
    assert not buffer_path(directory, cs).exists()


def test_cors_any_origin(client, directory):
    cs = add_buffer(directory, HELLO)
    response = request(client, "GET", "/" + cs, headers={"Origin": "http://example.org"})
    assert response.headers["access-control-allow-origin"] == "*"
    preflight = request(client, "OPTIONS", "/" + cs, headers={
        "Origin": "http://example.org", "Access-Control-Request-Method": "PUT"})
    assert preflight.status in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "PUT" in preflight.headers["access-control-allow-methods"]


def test_unknown_route_and_method_are_json_errors(client):
    response = request(client, "GET", "/a/b")
    assert response.status == 404
    assert "message" in json.loads(response.body)
    response = request(client, "DELETE", "/" + MISSING)
    assert response.status == 405
    assert "message" in json.loads(response.body)


def test_unexpected_failure_is_json_500(client, directory, monkeypatch):
    store = client.app.ctx.storage

    def broken(checksums):
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "has", broken)
    response = request(client, "POST", "/has", json.dumps([MISSING]))
    assert response.status == 500
    assert "message" in json.loads(response.body)


def test_non_buffer_files_are_never_served(client, directory):
    cs = add_buffer(directory, HELLO)
    junk = directory / cs[:2] / (cs + ".LOCK")
    junk.write_bytes(b"")
    (directory / "README").write_text("not a buffer")
    assert request(client, "GET", "/" + cs + ".LOCK").status == 400
    response = request(client, "POST", "/has", json.dumps([cs]))
    assert json.loads(response.body) == [True]


@pytest.mark.parametrize("body", [b"[" * 100000 + b"]" * 100000, b"[1e999]", b"[NaN]", b'{"a": -Infinity}'])
def test_batch_bodies_that_are_not_json_are_400(client, body):
    for path in ("/has", "/has-now", "/buffer-length"):
        response = request(client, "POST", path, body)
        assert response.status == 400
        payload = json.loads(response.body)  # the answer itself is valid JSON
        assert payload["exception"]["type"] == "json_invalid"


def test_percent_encoded_path_is_reported_decoded(client):
    response = request(client, "GET", "/%C3%A9")
    assert response.status == 400
    assert json.loads(response.body)["exception"]["input"] == "é"
