"""The HTTP contract, byte for byte, against an in-process server (sanic-testing), for
each kind of storage: a buffer directory, and an S3 bucket (SeaweedFS) behind a local tier.

Tests reach the storage through a :class:`Place` (put a buffer there as another program
would, read what is stored), so the same assertions hold for both."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from seaweedfs import SeaweedFS, s3_bucket, seaweedfs  # noqa: F401  (fixtures)

from hashserver import Config
from hashserver.compression import zstd
from hashserver.layout import PREFIX_MARKER

from conftest import add_buffer, buffer_path, sha3

HELLO = b"hello world"
MISSING = sha3(b"not there")


def request(client, method, path, body=None, headers=None):
    _, response = client.request(path, http_method=method, content=body, headers=headers or {})
    return response


class DirectoryPlace:
    """A buffer directory."""

    def __init__(self, directory: Path):
        self.directory = directory

    def config(self, **settings) -> Config:
        return Config(str(self.directory), **settings)

    def add(self, data: bytes) -> str:
        return add_buffer(self.directory, data)

    def add_file(self, relative: str, data: bytes) -> None:
        (self.directory / relative).write_bytes(data)

    def read(self, checksum: str) -> bytes | None:
        path = buffer_path(self.directory, checksum)
        return path.read_bytes() if path.exists() else None

    def identity(self, checksum: str) -> tuple:
        """What changes if the buffer is written again."""
        before = os.stat(buffer_path(self.directory, checksum))
        return before.st_ino, before.st_mtime_ns

    def leftovers(self) -> list[str]:
        return [str(p) for p in self.directory.rglob("*") if p.is_file() and p.name != PREFIX_MARKER]


class BucketPlace:
    """A bucket of SeaweedFS, served with a local tier in ``tier``."""

    def __init__(self, weed: SeaweedFS, bucket: str, tier: Path):
        import obstore
        import obstore.exceptions

        self.obstore, self.weed, self.bucket, self.tier = obstore, weed, bucket, tier
        self.store = weed.s3_store(bucket)

    def config(self, **settings) -> Config:
        return Config(f"s3://{self.bucket}", s3_endpoint=self.weed.s3_endpoint, cache_dir=str(self.tier), **settings)

    def add(self, data: bytes) -> str:
        checksum = sha3(data)
        self.add_file(f"{checksum[:2]}/{checksum}", data)
        return checksum

    def add_file(self, relative: str, data: bytes) -> None:
        self.obstore.put(self.store, relative, data)

    def read(self, checksum: str) -> bytes | None:
        try:
            return bytes(self.obstore.get(self.store, f"{checksum[:2]}/{checksum}").bytes())
        except (FileNotFoundError, self.obstore.exceptions.NotFoundError):
            return None

    def identity(self, checksum: str) -> tuple:
        meta = self.obstore.head(self.store, f"{checksum[:2]}/{checksum}")
        return meta["e_tag"], meta["last_modified"]

    def leftovers(self) -> list[str]:
        keys = [e["path"] for batch in self.obstore.list(self.store) for e in batch]
        return [k for k in keys if k != PREFIX_MARKER]


@pytest.fixture(params=["directory", "s3"])
def place(request, tmp_path, monkeypatch):
    if request.param == "directory":
        directory = tmp_path / "buffers"
        directory.mkdir()
        return DirectoryPlace(directory)
    weed = request.getfixturevalue("seaweedfs")
    for name, value in weed.s3_env().items():  # the in-process server's S3 client reads them
        monkeypatch.setenv(name, value)
    return BucketPlace(weed, request.getfixturevalue("s3_bucket"), tmp_path / "tier")


@pytest.fixture
def client(app_client, place):
    return app_client(place.config(writable=True))


@pytest.fixture
def readonly(app_client, place):
    return app_client(place.config())


def test_healthcheck(client):
    response = request(client, "GET", "/healthcheck")
    assert response.status == 200
    assert response.body == b"OK"


def test_get_present_buffer(client, place):
    cs = place.add(HELLO)
    response = request(client, "GET", "/" + cs)
    assert response.status == 200
    assert response.body == HELLO
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(HELLO))


def test_uppercase_checksum_means_the_same_buffer(client, place):
    cs = place.add(HELLO)
    assert request(client, "GET", "/" + cs.upper()).body == HELLO
    assert json.loads(request(client, "POST", "/has", json.dumps([cs.upper()])).body) == [True]


def test_get_missing_is_plain_not_found(client):
    response = request(client, "GET", "/" + MISSING)
    assert response.status == 404
    assert response.body == b"Not found"


def test_head_gives_get_headers_without_body(client, place):
    cs = place.add(HELLO)
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
def test_has(client, place, method):
    present = place.add(HELLO)
    response = request(client, method, "/has", json.dumps([present, MISSING, present]))
    assert response.status == 200
    assert json.loads(response.body) == [True, False, True]
    assert json.loads(request(client, method, "/has", b"[]").body) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_buffer_length(client, place, method):
    present = place.add(HELLO)
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


def test_put_stores_and_is_served(client, place):
    cs = sha3(HELLO)
    response = request(client, "PUT", "/" + cs, HELLO)
    assert response.status == 200
    assert response.body == b"OK"
    assert place.read(cs) == HELLO
    assert request(client, "GET", "/" + cs).body == HELLO
    assert json.loads(request(client, "GET", "/has", json.dumps([cs])).body) == [True]


def test_put_already_present_rewrites_nothing(client, place):
    cs = place.add(HELLO)
    before = place.identity(cs)
    response = request(client, "PUT", "/" + cs, HELLO)
    assert (response.status, response.body) == (200, b"OK")
    assert place.identity(cs) == before


def test_put_wrong_body_is_rejected_and_nothing_stored(client, place):
    cs = sha3(HELLO)
    response = request(client, "PUT", "/" + cs, b"something else")
    assert response.status == 400
    assert response.body == b"Incorrect checksum"
    assert place.read(cs) is None
    assert place.leftovers() == []


def test_put_on_read_only_server_is_405_json(readonly, place):
    cs = sha3(HELLO)
    response = request(readonly, "PUT", "/" + cs, HELLO)
    assert response.status == 405
    assert "read-only" in json.loads(response.body)["message"]
    assert place.read(cs) is None


def test_cors_any_origin(client, place):
    cs = place.add(HELLO)
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


def test_unexpected_failure_is_json_500(client, monkeypatch):
    store = client.app.ctx.storage

    def broken(checksums):
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "has", broken)
    response = request(client, "POST", "/has", json.dumps([MISSING]))
    assert response.status == 500
    assert "message" in json.loads(response.body)


def test_non_buffer_files_are_never_served(client, place):
    cs = place.add(HELLO)
    place.add_file(f"{cs[:2]}/{cs}.LOCK", b"")
    place.add_file("README", b"not a buffer")
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


@pytest.mark.parametrize("coding", ["zstd", "gzip"])
def test_put_of_concatenated_frames_stores_their_contents_in_order(client, place, coding):
    """A body of several zstd frames or gzip members (``pzstd``, ``cat a.gz b.gz``)."""
    compress = zstd.compress if coding == "zstd" else gzip.compress
    content = b"first frame, " + b"second frame"
    cs = sha3(content)
    body = compress(b"first frame, ") + compress(b"second frame")
    response = request(client, "PUT", "/" + cs, body, {"Content-Encoding": coding})
    assert (response.status, response.body) == (200, b"OK")
    # decoded by the server (the test client's own gzip decoder would stop after one member)
    assert request(client, "GET", "/" + cs, headers={"Accept-Encoding": "identity"}).body == content
    assert json.loads(request(client, "GET", "/buffer-length", json.dumps([cs])).body) == [len(content)]


def test_put_of_a_body_that_expands_enormously_holds_little_memory(client, place):
    """64 MiB of zeros in a zstd body of some KiB: the server decodes it piece by piece while
    it hashes it (traced, in this process, which runs the server: a whole decode holds 64 MiB)."""
    size = 64 << 20
    content = bytes(size)
    cs, body = sha3(content), zstd.compress(content)
    del content
    tracemalloc.start()
    try:
        response = request(client, "PUT", "/" + cs, body, {"Content-Encoding": "zstd"})
        wrong = request(client, "PUT", "/" + sha3(b"other"), body, {"Content-Encoding": "zstd"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (response.status, response.body) == (200, b"OK")
    assert (wrong.status, wrong.body) == (400, b"Incorrect checksum")
    assert peak < 16 << 20, f"the PUTs held {peak} bytes at once"
    assert json.loads(request(client, "GET", "/buffer-length", json.dumps([cs])).body) == [size]
