"""HTTP caching and ranges of buffers: ETag, Cache-Control, 304, Vary, Range,
If-Range, and the CORS headers that let a browser use them."""

from __future__ import annotations

import gzip
import http.client
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hashserver.caching import IMMUTABLE
from hashserver.compression import zstd
from hashserver.reader import SMALL_BUFFER
from hashserver.testing import ServerProcess

from conftest import add_buffer, buffer_path, sha3

MISSING = sha3(b"not there")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes  # as sent: never decoded


def request(client, method, path, headers=None, body=None) -> Answer:
    """Plain HTTP/1.1 to the in-process server: what was sent, byte for byte
    (no client-side decoding, no Accept-Encoding unless given)."""
    connection = http.client.HTTPConnection(client.host, client.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real server (2 workers) for the module; each test adds its own buffers."""
    directory = tmp_path_factory.mktemp("buffers")
    logs = tmp_path_factory.mktemp("logs")
    with ServerProcess.hashserver(directory, "--writable", workers=2, log_path=logs / "server.log") as server:
        yield server, directory


@pytest.fixture
def directory(served):
    return served[1]


@dataclass
class Client:
    host: str
    port: int


@pytest.fixture
def client(served):
    server = served[0]
    return Client("127.0.0.1", server.port)


def add_compressed(directory: Path, data: bytes, suffix: str = ".zst") -> str:
    cs = sha3(data)
    path = buffer_path(directory, cs)
    path.parent.mkdir(exist_ok=True)
    encoded = zstd.compress(data) if suffix == ".zst" else gzip.compress(data)
    Path(str(path) + suffix).write_bytes(encoded)
    return cs


SIZES = {"small": 1000, "large": SMALL_BUFFER + 12345}  # served from memory / from the file


@pytest.mark.parametrize("size", SIZES)
def test_a_buffer_is_immutable_and_tagged(client, directory, size):
    data = os.urandom(SIZES[size])
    cs = add_buffer(directory, data)
    for _ in range(2):  # before and after the content is cached in memory
        response = request(client, "GET", "/" + cs)
        assert response.status == 200 and response.body == data
        assert response.headers["etag"] == f'"{cs}"'
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["accept-ranges"] == "bytes"
        assert "vary" not in response.headers
        assert "etag" in response.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("if_none_match", ['"{cs}"', '*', 'W/"{cs}"', '"other", "{cs}"'])
def test_if_none_match_gives_304_without_body(client, directory, size, if_none_match):
    cs = add_buffer(directory, os.urandom(SIZES[size]))
    for method in ("GET", "HEAD"):
        response = request(client, method, "/" + cs, {"If-None-Match": if_none_match.format(cs=cs)})
        assert response.status == 304
        assert response.body == b""
        assert response.headers["etag"] == f'"{cs}"'
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["access-control-allow-origin"] == "*"


def test_if_none_match_of_another_tag_gives_the_buffer(client, directory):
    cs = add_buffer(directory, b"content")
    response = request(client, "GET", "/" + cs, {"If-None-Match": f'"{MISSING}"'})
    assert (response.status, response.body) == (200, b"content")
    assert request(client, "GET", "/" + MISSING, {"If-None-Match": "*"}).status == 404


def test_answers_that_may_change_are_never_cached(client, directory):
    cs = add_buffer(directory, b"x")
    for method, path, body in [("GET", "/" + MISSING, None), ("POST", "/has", json.dumps([cs])),
                               ("POST", "/buffer-length", json.dumps([cs])), ("GET", "/healthcheck", None),
                               ("GET", "/abc", None), ("PUT", "/" + MISSING, b"wrong")]:
        response = request(client, method, path, body=body)
        assert response.headers["cache-control"] == "no-store", (method, path, response.status)
        assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("suffix, coding", [(".zst", "zstd"), (".gz", "gzip")])
def test_compressed_buffer_has_two_representations(client, directory, suffix, coding):
    data = f"compressible {suffix} ".encode() * 1000
    cs = add_compressed(directory, data, suffix)
    decoded = request(client, "GET", "/" + cs)
    assert decoded.body == data
    assert decoded.headers["etag"] == f'"{cs}"'
    assert decoded.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in decoded.headers
    encoded = request(client, "GET", "/" + cs, {"Accept-Encoding": coding})
    assert encoded.headers["content-encoding"] == coding
    assert encoded.headers["etag"] == f'"{cs}{suffix}"'
    assert encoded.headers["vary"] == "Accept-Encoding"
    assert encoded.headers["cache-control"] == IMMUTABLE
    not_modified = request(client, "GET", "/" + cs, {"Accept-Encoding": coding, "If-None-Match": f'"{cs}{suffix}"'})
    assert not_modified.status == 304
    # the decoded tag does not match the encoded representation
    other = request(client, "GET", "/" + cs, {"Accept-Encoding": coding, "If-None-Match": f'"{cs}"'})
    assert other.status == 200


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("spec, start, end", [("bytes=0-9", 0, 9), ("bytes=100-", 100, None),
                                              ("bytes=-50", -50, None), ("bytes=5-5", 5, 5),
                                              ("bytes=990-100000000", 990, None)])
def test_single_ranges(client, directory, size, spec, start, end):
    data = os.urandom(SIZES[size])
    cs = add_buffer(directory, data)
    for _ in range(2):
        response = request(client, "GET", "/" + cs, {"Range": spec})
        expected = data[start:] if end is None else data[start:end + 1]
        assert response.status == 206
        assert response.body == expected
        first = start % len(data)
        assert response.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
        assert response.headers["content-length"] == str(len(expected))
        assert response.headers["etag"] == f'"{cs}"'
    head = request(client, "HEAD", "/" + cs, {"Range": spec})
    assert head.status == 206 and head.body == b""
    assert head.headers["content-range"] == response.headers["content-range"]


@pytest.mark.parametrize("spec", ["bytes=5000000-", "bytes=-0", f"bytes={SIZES['large'] + 1}-{SIZES['large'] + 9}"])
def test_unsatisfiable_range_is_416(client, directory, spec):
    data = os.urandom(SIZES["large"])
    cs = add_buffer(directory, data)
    response = request(client, "GET", "/" + cs, {"Range": spec})
    assert response.status == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    assert "message" in json.loads(response.body)


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=abc", "items=0-1", "bytes=9-2", "bytes=-"])
def test_several_or_malformed_ranges_give_the_whole_buffer(client, directory, spec):
    data = os.urandom(1000)
    cs = add_buffer(directory, data)
    response = request(client, "GET", "/" + cs, {"Range": spec})
    assert (response.status, response.body) == (200, data)


def test_if_range(client, directory):
    data = os.urandom(SIZES["large"])
    cs = add_buffer(directory, data)
    matching = request(client, "GET", "/" + cs, {"Range": "bytes=10-19", "If-Range": f'"{cs}"'})
    assert (matching.status, matching.body) == (206, data[10:20])
    for stale in (f'"{MISSING}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        response = request(client, "GET", "/" + cs, {"Range": "bytes=10-19", "If-Range": stale})
        assert (response.status, response.body) == (200, data)


def test_range_of_a_compressed_buffer_applies_to_the_representation_sent(client, directory):
    data = bytes(range(256)) * 5000
    cs = add_compressed(directory, data)
    decoded = request(client, "GET", "/" + cs, {"Range": "bytes=1000-300000"})
    assert (decoded.status, decoded.body) == (206, data[1000:300001])
    assert decoded.headers["content-range"] == f"bytes 1000-300000/{len(data)}"
    stored = Path(str(buffer_path(directory, cs)) + ".zst").read_bytes()
    encoded = request(client, "GET", "/" + cs, {"Range": "bytes=3-", "Accept-Encoding": "zstd"})
    assert (encoded.status, encoded.body) == (206, stored[3:])
    assert encoded.headers["content-range"] == f"bytes 3-{len(stored) - 1}/{len(stored)}"


def test_cors_preflight_names_the_headers_a_browser_must_be_allowed(client, directory):
    cs = add_buffer(directory, b"x")
    for path in ("/" + cs, "/has", "/promise/" + cs):
        response = request(client, "OPTIONS", path, {"Origin": "http://example.org",
                                                     "Access-Control-Request-Method": "PUT",
                                                     "Access-Control-Request-Headers": "authorization"})
        allowed = [h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")]
        for header in ("authorization", "range", "if-none-match", "if-range"):
            assert header in allowed
        exposed = [h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")]
        assert {"etag", "content-range", "accept-ranges", "content-encoding", "content-length"} <= set(exposed)
