"""Parts and HEADs of buffers a server on a bucket does not hold locally: a real
server process on SeaweedFS, bare (``--cache-size 0``) and with its local tier.

A part (``Range``) of an object not in the local tier is sent only once the
whole object was verified, for objects verified before sending (up to 64 MiB)
and for those streamed (above): a corrupt object is the same 400 as a GET, never
a 206 of unverified bytes.  A HEAD of a large object takes its size from a HEAD
of the object, with no GET; a HEAD of a small corrupt one is a 400, as on a
directory (tests/test_writer.py)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re

import pytest
from relay import RelayThread
from seaweedfs import SeaweedFS, s3_bucket, seaweedfs  # noqa: F401  (fixtures)
from test_s3_server import request, s3_serve, wait_for  # noqa: F401  (s3_serve: a fixture)

from conftest import sha3

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
from hashserver.objectstore import WHOLE_GET  # noqa: E402  (needs obstore)

SIZES = {"small": 100_000, "medium": (3 << 20) + 7, "large": WHOLE_GET + (1 << 20)}  # verified first; sent
# in pieces (more than 1 MiB in memory); streamed
TIERS = {"bare": ("--cache-size", "0"), "tier": ("--cache-size", "1G")}

pytestmark = pytest.mark.timeout(300)  # objects of 65 MiB, each read whole several times


def calls(server, operation: str) -> float:
    """Object-store calls of one operation the server made (any outcome)."""
    status, body = request(server, "GET", "/metrics")
    assert status == 200
    found = re.findall(rf'^hashserver_object_store_requests_total{{operation="{operation}",[^}}]*}} (\S+)$',
                       body.decode(), re.MULTILINE)
    return sum(float(value) for value in found)


def tier_hits(server) -> float:
    status, body = request(server, "GET", "/metrics")
    assert status == 200
    found = re.search(r'^hashserver_local_tier_requests_total{result="hit"} (\S+)$', body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def key(checksum: str) -> str:
    return f"{checksum[:2]}/{checksum}"


def corrupted(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.fixture(scope="module")
def contents() -> dict[str, bytes]:
    return {name: os.urandom(size) for name, size in SIZES.items()}


@pytest.mark.parametrize("tier", list(TIERS))
def test_a_part_of_an_object_not_held_locally_is_verified_first(s3_serve, seaweedfs, s3_bucket, tmp_path,  # noqa: F811
                                                                contents, tier):
    raw = seaweedfs.s3_store(s3_bucket)
    good, bad = {}, {}
    for name, data in contents.items():
        good[name] = sha3(data)
        obstore.put(raw, key(good[name]), data)
        bad[name] = sha3(b"corrupt " + data[:100])
        obstore.put(raw, key(bad[name]), corrupted(data))
    cache = tmp_path / "cache"
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), *TIERS[tier])
    for name, data in contents.items():
        for asked, (start, end) in (("bytes=0-99", (0, 100)), ("bytes=5000-", (5000, len(data))),
                                    ("bytes=-10", (len(data) - 10, len(data)))):
            status, body = request(server, "GET", "/" + bad[name], headers={"Range": asked})
            assert status == 400, (name, asked, status)
            assert (status, json.loads(body)) == (400, {"message": (
                f"File corruption: file at path s3://{s3_bucket}/{key(bad[name])} "
                "does not have the correct SHA3-256 checksum.")}), (name, asked)
            assert request(server, "GET", "/" + good[name], headers={"Range": asked}) == (206, data[start:end])
        assert request(server, "GET", "/" + good[name]) == (200, data)
        assert not (cache / key(bad[name])).exists()
    if tier == "bare":  # no tier: no directory made for one (the spool is the system's temporary directory)
        assert not cache.exists()
    if tier == "tier":  # the good ones were filled in whole, once verified
        for name, data in contents.items():
            filled = cache / key(good[name])
            wait_for(filled.exists, f"the {name} buffer in the tier")
            assert filled.read_bytes() == data
    assert "Traceback" not in server.output()


def test_a_whole_get_of_an_object_not_held_locally_fills_the_tier(s3_serve, seaweedfs, s3_bucket, tmp_path,  # noqa: F811
                                                                    contents):
    """Read once over HTTP, whole (no part asked first), each object enters the tier and
    is read from there next: the ones verified before sending, the streamed one, and
    compressed ones sent decoded to a client that does not accept their encoding (one
    decoded from memory, one large enough to be decoded as it streams)."""
    raw = seaweedfs.s3_store(s3_bucket)
    objects = {name: (sha3(data), key(sha3(data)), data) for name, data in contents.items()}
    packed = {"gzip, decoded": contents["medium"][:200_000], "gzip, streamed decoded": contents["large"][::-1]}
    for name, data in packed.items():
        objects[name] = (sha3(data), key(sha3(data)) + ".gz", gzip.compress(data, compresslevel=1))
    assert len(objects["gzip, streamed decoded"][2]) > WHOLE_GET
    for _, object_key, data in objects.values():
        obstore.put(raw, object_key, data)
    cache = tmp_path / "cache"
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), *TIERS["tier"])
    for name, (checksum, _, _) in objects.items():
        content = packed.get(name, contents.get(name))
        assert request(server, "GET", "/" + checksum, headers={"Accept-Encoding": "identity"}) == (200, content)
        filled = cache / (object_key := objects[name][1])
        wait_for(filled.exists, f"the {name} buffer in the tier")
        assert filled.read_bytes() == objects[name][2]  # as the bucket holds it (compressed)
        if object_key.endswith(".gz"):
            assert not (cache / key(checksum)).exists()
    wait_for(lambda: calls(server, "get") >= len(objects), "the calls counted (folded every second)")
    gets = calls(server, "get")
    for name, (checksum, _, _) in objects.items():
        content = packed.get(name, contents.get(name))
        assert request(server, "GET", "/" + checksum, headers={"Accept-Encoding": "identity"}) == (200, content)
    assert "Traceback" not in server.output()
    wait_for(lambda: tier_hits(server) >= len(objects), "the second reads counted as the tier's hits")
    assert calls(server, "get") == gets, "a second read went to the bucket"


@pytest.mark.parametrize("tier", list(TIERS))
def test_head_of_a_large_object_starts_no_get(s3_serve, seaweedfs, s3_bucket, tmp_path, contents, tier):  # noqa: F811
    raw = seaweedfs.s3_store(s3_bucket)
    data = contents["large"]
    good = sha3(data)
    obstore.put(raw, key(good), data)
    small_bad = sha3(b"small and corrupt")
    obstore.put(raw, key(small_bad), b"something else")
    server = s3_serve(s3_bucket, "--cache-dir", str(tmp_path / "cache"), *TIERS[tier])
    for _ in range(3):
        assert request(server, "HEAD", "/" + good) == (200, b"")
    wait_for(lambda: calls(server, "head") + calls(server, "get") >= 3,
             "the calls counted (each worker folds its counts every second)")
    assert calls(server, "get") == 0
    assert request(server, "HEAD", "/" + small_bad)[0] == 400  # as a directory's corrupt buffer
    assert request(server, "GET", "/" + good) == (200, data)


def test_a_store_failing_while_an_object_streams_cuts_the_answer_with_one_line(serve, seaweedfs, s3_bucket,  # noqa: F811
                                                                                contents):
    """The headers are out when the store fails (a streamed object, above 64 MiB): the
    answer is cut short, never completed, and the log says so in one line, with no
    traceback."""
    data = contents["large"]
    checksum = sha3(data)
    obstore.put(seaweedfs.s3_store(s3_bucket), key(checksum), data)
    relay = RelayThread(seaweedfs.s3_endpoint).start()
    try:
        server = serve(f"s3://{s3_bucket}", "--s3-endpoint", relay.url, "--cache-size", "0",
                       env=seaweedfs.s3_env())
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("GET", "/" + checksum)
        answer = connection.getresponse()
        assert answer.status == 200 and int(answer.headers["content-length"]) == len(data)
        received = len(answer.read(4 << 20))
        relay.cut()
        try:
            while piece := answer.read(1 << 20):  # b"" at the connection's end
                received += len(piece)
        except http.client.IncompleteRead as cut:
            received += len(cut.partial)
        assert received < len(data), "a complete answer from a store that failed"
        connection.close()
    finally:
        relay.close()
    wait_for(lambda: "response cut short" in server.output(), "the cut logged")
    output = server.output()
    assert output.count("response cut short") == 1 and "Traceback" not in output, output[-3000:]
    assert "will not be sent to the client" not in output  # Sanic's own error for the same event
