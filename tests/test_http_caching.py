"""HTTP caching and ranges of buffers: ETag, Cache-Control, 304, Vary, Range,
If-Range, and the CORS headers that let a browser use them.

Every test runs against a real server process for each kind of storage: a buffer
directory, and an S3 bucket prefix (SeaweedFS) served through a local tier.  Buffers
are put there as another program would (the places of tests/test_api.py): the
bucket's objects are ``PREFIX/<first two hex>/<checksum>``, compressed ones
``<checksum>.zst``/``.gz``, with or without a ``<checksum>.BUFFERLENGTH`` sidecar."""

from __future__ import annotations

import gzip
import http.client
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from seaweedfs import SeaweedFS, seaweedfs  # noqa: F401  (fixture)
from test_api import BucketPlace, DirectoryPlace

from hashserver.caching import IMMUTABLE
from hashserver.compression import zstd
from hashserver.reader import SMALL_BUFFER
from hashserver.testing import ServerProcess

from conftest import sha3

MISSING = sha3(b"not there")
PREFIX = "buffers"  # the bucket variant serves s3://BUCKET/PREFIX


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes  # as sent: never decoded


def request(client, method, path, headers=None, body=None) -> Answer:
    """Plain HTTP/1.1 to the server: what was sent, byte for byte
    (no client-side decoding, no Accept-Encoding unless given)."""
    connection = http.client.HTTPConnection(client.host, client.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


class Directory(DirectoryPlace):
    """A buffer directory, served as ``hashserver DIRECTORY``."""

    def serve(self, logs: Path) -> ServerProcess:
        return ServerProcess.hashserver(self.directory, "--writable", workers=2, log_path=logs / "server.log")

    def add_file(self, relative: str, data: bytes) -> None:
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class Bucket(BucketPlace):
    """``PREFIX`` in a bucket of SeaweedFS, served as ``hashserver s3://BUCKET/PREFIX``
    with its local tier in ``tier``; keys are relative to the prefix."""

    def __init__(self, weed: SeaweedFS, bucket: str, tier: Path, prefix: str):
        super().__init__(weed, bucket, tier)
        self.prefix = prefix
        self.store = weed.s3_store(bucket, prefix=prefix)

    def serve(self, logs: Path) -> ServerProcess:
        return ServerProcess.hashserver(
            f"s3://{self.bucket}/{self.prefix}", "--writable", "--s3-endpoint", self.weed.s3_endpoint,
            "--cache-dir", str(self.tier), workers=2, env=self.weed.s3_env(), log_path=logs / "server.log")


@pytest.fixture(scope="module", params=["directory", "s3"])
def served(request, tmp_path_factory):
    """One real server (2 workers) per kind of storage for the module; each test adds its own buffers."""
    logs = tmp_path_factory.mktemp("logs")
    if request.param == "directory":
        place = Directory(tmp_path_factory.mktemp("buffers"))
    else:
        weed = request.getfixturevalue("seaweedfs")
        bucket = weed.create_bucket(f"http-caching-{os.getpid()}")
        place = Bucket(weed, bucket, tmp_path_factory.mktemp("tier"), PREFIX)
    with place.serve(logs) as server:
        yield server, place


@pytest.fixture
def place(served):
    return served[1]


@dataclass
class Client:
    host: str
    port: int


@pytest.fixture
def client(served):
    server = served[0]
    return Client("127.0.0.1", server.port)


def add_compressed(place, data: bytes, suffix: str = ".zst", sidecar: bool = False) -> tuple[str, bytes]:
    """``<checksum>.zst`` or ``.gz`` (and its ``.BUFFERLENGTH``); the checksum and the stored bytes."""
    cs = sha3(data)
    encoded = zstd.compress(data) if suffix == ".zst" else gzip.compress(data)
    place.add_file(f"{cs[:2]}/{cs}{suffix}", encoded)
    if sidecar:
        place.add_file(f"{cs[:2]}/{cs}.BUFFERLENGTH", str(len(data)).encode())
    return cs, encoded


SIZES = {"small": 1000, "large": SMALL_BUFFER + 12345}  # served from memory / from the file
SIDECAR = pytest.mark.parametrize("sidecar", [False, True], ids=["no-sidecar", "sidecar"])


@pytest.mark.parametrize("size", SIZES)
def test_a_buffer_is_immutable_and_tagged(client, place, size):
    data = os.urandom(SIZES[size])
    cs = place.add(data)
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
def test_if_none_match_gives_304_without_body(client, place, size, if_none_match):
    cs = place.add(os.urandom(SIZES[size]))
    for method in ("GET", "HEAD"):
        response = request(client, method, "/" + cs, {"If-None-Match": if_none_match.format(cs=cs)})
        assert response.status == 304
        assert response.body == b""
        assert response.headers["etag"] == f'"{cs}"'
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["access-control-allow-origin"] == "*"


def test_if_none_match_of_another_tag_gives_the_buffer(client, place):
    cs = place.add(b"content")
    response = request(client, "GET", "/" + cs, {"If-None-Match": f'"{MISSING}"'})
    assert (response.status, response.body) == (200, b"content")
    assert request(client, "GET", "/" + MISSING, {"If-None-Match": "*"}).status == 404


def test_answers_that_may_change_are_never_cached(client, place):
    cs = place.add(b"x")
    for method, path, body in [("GET", "/" + MISSING, None), ("POST", "/has", json.dumps([cs])),
                               ("POST", "/buffer-length", json.dumps([cs])), ("GET", "/healthcheck", None),
                               ("GET", "/abc", None), ("PUT", "/" + MISSING, b"wrong")]:
        response = request(client, method, path, body=body)
        assert response.headers["cache-control"] == "no-store", (method, path, response.status)
        assert response.headers["access-control-allow-origin"] == "*"


@SIDECAR
@pytest.mark.parametrize("suffix, coding", [(".zst", "zstd"), (".gz", "gzip")])
def test_compressed_buffer_has_two_representations(client, place, suffix, coding, sidecar):
    data = f"compressible {suffix} {sidecar} ".encode() * 1000  # a buffer of its own for each test
    cs, _ = add_compressed(place, data, suffix, sidecar)
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
def test_single_ranges(client, place, size, spec, start, end):
    data = os.urandom(SIZES[size])
    cs = place.add(data)
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
def test_unsatisfiable_range_is_416(client, place, spec):
    data = os.urandom(SIZES["large"])
    cs = place.add(data)
    response = request(client, "GET", "/" + cs, {"Range": spec})
    assert response.status == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    assert "message" in json.loads(response.body)


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=abc", "items=0-1", "bytes=9-2", "bytes=-"])
def test_several_or_malformed_ranges_give_the_whole_buffer(client, place, spec):
    data = os.urandom(1000)
    cs = place.add(data)
    response = request(client, "GET", "/" + cs, {"Range": spec})
    assert (response.status, response.body) == (200, data)


def test_if_range(client, place):
    data = os.urandom(SIZES["large"])
    cs = place.add(data)
    matching = request(client, "GET", "/" + cs, {"Range": "bytes=10-19", "If-Range": f'"{cs}"'})
    assert (matching.status, matching.body) == (206, data[10:20])
    for stale in (f'"{MISSING}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        response = request(client, "GET", "/" + cs, {"Range": "bytes=10-19", "If-Range": stale})
        assert (response.status, response.body) == (200, data)


@SIDECAR
def test_range_of_a_compressed_buffer_applies_to_the_representation_sent(client, place, sidecar):
    data = bytes(range(256)) * 5000 + bytes([sidecar])  # a buffer of its own for each test
    cs, stored = add_compressed(place, data, sidecar=sidecar)
    decoded = request(client, "GET", "/" + cs, {"Range": "bytes=1000-300000"})
    assert (decoded.status, decoded.body) == (206, data[1000:300001])
    assert decoded.headers["content-range"] == f"bytes 1000-300000/{len(data)}"
    encoded = request(client, "GET", "/" + cs, {"Range": "bytes=3-", "Accept-Encoding": "zstd"})
    assert (encoded.status, encoded.body) == (206, stored[3:])
    assert encoded.headers["content-range"] == f"bytes 3-{len(stored) - 1}/{len(stored)}"


def test_cors_preflight_names_the_headers_a_browser_must_be_allowed(client, place):
    cs = place.add(b"x")
    for path in ("/" + cs, "/has", "/promise/" + cs):
        response = request(client, "OPTIONS", path, {"Origin": "http://example.org",
                                                     "Access-Control-Request-Method": "PUT",
                                                     "Access-Control-Request-Headers": "authorization"})
        allowed = [h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")]
        for header in ("authorization", "range", "if-none-match", "if-range"):
            assert header in allowed
        exposed = [h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")]
        assert {"etag", "content-range", "accept-ranges", "content-encoding", "content-length"} <= set(exposed)
