"""The metrics of an ``s3://`` store, read from ``/metrics`` of real server processes on a
real SeaweedFS bucket, over HTTP: object-store calls by operation and outcome (``error``
included) with their latency histogram; the local tier's hits and misses, bytes and
evictions; a corrupt object counted; a failing local tier logged and counted while the
bucket answers.

One worker each, so that a ``/metrics`` answer holds every count (the worker folds its
own first); each wait is bounded all the same (tests/test_s3_server.py's ``wait_for``).
Figures are the families of hashserver/metrics.py, exactly as named there."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from relay import RelayThread
from seaweedfs import s3_bucket, seaweedfs  # noqa: F401  (fixtures)
from test_s3_server import BOUND, request, s3_serve, wait_for  # noqa: F401  (s3_serve: a fixture)

from conftest import sha3

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
from hashserver.objectstore import PROMISE_GRACE, WHOLE_GET  # noqa: E402  (needs obstore)

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20
TIER_SIZE = "1G"  # a bound never reached: no eviction
CALLS = "hashserver_object_store_requests_total"
LATENCY = "hashserver_object_store_request_duration_seconds"
TIER = "hashserver_local_tier_requests_total"
TIER_BYTES = "hashserver_local_tier_bytes"
EVICTIONS = "hashserver_local_tier_evictions_total"
CORRUPTIONS = "hashserver_corruptions_total"
VERIFICATIONS = "hashserver_verifications_total"
STORAGE_ERRORS = "hashserver_storage_errors_total"
EXPIRED = "hashserver_promises_expired_total"
PROMISES = ".promises/"


# ------------------------------------------------------------------ helpers
class Samples(dict):
    """One ``/metrics`` answer: (sample name, sorted labels) -> value."""

    def get_sum(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(value for (sample, have), value in self.items() if sample == name and wanted <= set(have))

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(sample == name and wanted <= set(have) for sample, have in self)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(have)[label] for sample, have in self if sample == name and label in dict(have)}


def scrape(server) -> Samples:
    status, body = request(server, "GET", "/metrics")
    assert status == 200, body
    samples = Samples()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def calls(server_or_samples, operation: str, outcome: str | None = None) -> float:
    samples = server_or_samples if isinstance(server_or_samples, Samples) else scrape(server_or_samples)
    labels = {"operation": operation} | ({"outcome": outcome} if outcome else {})
    return samples.get_sum(CALLS, **labels)


def tier(samples: Samples) -> tuple[float, float]:
    """(hits, misses) of the local tier."""
    return samples.get_sum(TIER, result="hit"), samples.get_sum(TIER, result="miss")


def tier_gauge(server) -> float | None:
    """``hashserver_local_tier_bytes``, or None before the evictor first set it."""
    samples = scrape(server)
    return samples[(TIER_BYTES, ())] if (TIER_BYTES, ()) in samples else None


def key(checksum: str) -> str:
    return f"{checksum[:2]}/{checksum}"


def put_object(weed, bucket: str, data: bytes, checksum: str | None = None) -> str:
    """An object written straight into the bucket (as another host would)."""
    checksum = checksum or sha3(data)
    obstore.put(weed.s3_store(bucket), key(checksum), data)
    return checksum


def tier_files(cache: Path) -> dict[str, int]:
    """The buffer files of the tier (plain, compressed, sidecars), as the evictor's scan
    counts them (hashserver/eviction.py, tier_entries): name -> bytes."""
    from hashserver.eviction import TIER_SUFFIXES
    from hashserver.layout import is_buffer_name

    return {path.name: path.stat().st_size for path in cache.glob("??/*")
            if is_buffer_name(path.name[:64]) and path.name[64:] in TIER_SUFFIXES}


def histogram_matches_calls(samples: Samples) -> None:
    """For each operation counted, the latency histogram observed every call once."""
    operations = samples.label_values(CALLS, "operation")
    assert operations, "no object-store call counted"
    assert samples.label_values(f"{LATENCY}_count", "operation") == operations
    for operation in operations:
        counted = samples.get_sum(CALLS, operation=operation)
        assert samples.get_sum(f"{LATENCY}_count", operation=operation) == counted, operation
        assert samples.get_sum(f"{LATENCY}_bucket", operation=operation, le="+Inf") == counted, operation
        assert samples.get_sum(f"{LATENCY}_sum", operation=operation) > 0, operation


@pytest.fixture
def relay(seaweedfs):  # noqa: F811
    relay = RelayThread(seaweedfs.s3_endpoint).start()
    yield relay
    relay.close()


# ------------------------------------------------------------------ object-store calls
def test_object_store_calls_are_counted_by_operation_with_their_latency(s3_serve, seaweedfs, s3_bucket):  # noqa: F811
    """A bare bucket (no tier): each request's object-store calls, by operation and outcome
    ``ok``; the latency histogram observes every call counted, once."""
    present = {put_object(seaweedfs, s3_bucket, b"listed %d" % i): b"listed %d" % i for i in range(20)}
    server = s3_serve(s3_bucket, "--writable", "--cache-size", "0")
    data = os.urandom(5000)
    cs = sha3(data)

    before = scrape(server)
    assert request(server, "PUT", "/" + cs, data) == (200, b"OK")
    wait_for(lambda: calls(server, "put", "ok") >= calls(before, "put", "ok") + 1, "the PUT's call counted")
    after_put = scrape(server)
    assert calls(after_put, "put", "ok") == calls(before, "put", "ok") + 1  # one conditional PUT
    assert calls(after_put, "put") == calls(before, "put") + 1

    assert request(server, "GET", "/" + cs) == (200, data)
    wait_for(lambda: calls(server, "get", "ok") >= calls(after_put, "get", "ok") + 1, "the GET's call counted")
    after_get = scrape(server)
    assert calls(after_get, "get", "ok") == calls(after_put, "get", "ok") + 1  # a small object: one GET
    assert calls(after_get, "head") == calls(after_put, "head")

    assert request(server, "HEAD", "/" + cs) == (200, b"")
    wait_for(lambda: calls(server, "head", "ok") >= calls(after_get, "head", "ok") + 1, "the HEAD's call counted")
    after_head = scrape(server)
    assert calls(after_head, "head", "ok") == calls(after_get, "head", "ok") + 1  # (then read, to verify it)

    status, body = request(server, "POST", "/has", json.dumps(list(present)).encode(),
                           {"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (200, [True] * len(present))
    wait_for(lambda: calls(server, "list", "ok") > calls(after_head, "list", "ok"),
             "the listings of a batch of 20 counted")

    samples = scrape(server)
    for operation in ("get", "head", "put", "list"):
        assert calls(samples, operation, "ok") >= 1, operation
    assert not samples.has(CALLS, outcome="error")
    histogram_matches_calls(samples)


def test_the_startup_abort_of_idle_uploads_is_counted(s3_serve, seaweedfs, s3_bucket, monkeypatch):  # noqa: F811
    """A writable host starting aborts the buffer uploads left idle longer than
    ``--lock-timeout`` (another program's upload stays): its listing call is in
    ``/metrics`` with the calls of the requests that follow."""
    from hashserver import s3uploads

    for name, value in seaweedfs.s3_env().items():  # the signer's credentials
        monkeypatch.setenv(name, value)
    signer = s3uploads.Signer.from_settings(s3_bucket, seaweedfs.s3_endpoint, {})
    idle = key(sha3(b"a killed host's upload"))
    for upload_key in (idle, "elsewhere/x"):
        s3uploads.send(signer.request("POST", f"/{s3_bucket}/{upload_key}", {"uploads": ""}))
    time.sleep(2.1)  # S3 dates an upload to the second
    server = s3_serve(s3_bucket, "--writable", "--cache-size", "0", "--lock-timeout", "1")
    assert [upload.key for upload in s3uploads.list_uploads(signer, s3_bucket, "")] == ["elsewhere/x"]
    wait_for(lambda: calls(server, "abort stale uploads", "ok") == 1, "the startup's call counted")
    histogram_matches_calls(scrape(server))


def test_lapsed_promises_are_removed_and_counted_as_expired(s3_serve, seaweedfs, s3_bucket):  # noqa: F811
    """A writable host sweeps the bucket's promises every ``--lock-timeout``, as a directory
    server removes its lapsed promise files: a promise that lapsed for every host (its
    expiry a further PROMISE_GRACE ago: hosts whose clocks are behind, or that first saw it
    late, may count it that long) goes, and counts as expired unless its buffer arrived;
    one still in force stays, and so does one only just lapsed."""
    store = seaweedfs.s3_store(s3_bucket)
    arrived_data = b"its buffer came, its promise was left behind"
    lapsed, arrived = sha3(b"never came"), sha3(arrived_data)
    in_force, just_lapsed = sha3(b"still promised"), sha3(b"lapsed a minute ago")
    obstore.put(store, key(arrived), arrived_data)
    now, long_ago = time.time(), PROMISE_GRACE + 60
    for checksum, expiry in ((lapsed, now - long_ago), (arrived, now - long_ago), (in_force, now + 500),
                             (just_lapsed, now - 60)):
        obstore.put(store, f"{PROMISES}{checksum}", f"{expiry:.3f}".encode())
    server = s3_serve(s3_bucket, "--writable", "--cache-size", "0", "--lock-timeout", "1")
    assert json.loads(request(server, "POST", "/has", json.dumps([lapsed, in_force]).encode())[1]) == [False, True]

    def promises() -> set[str]:
        return {entry["path"] for batch in obstore.list(store, prefix=PROMISES) for entry in batch}

    kept = {PROMISES + in_force, PROMISES + just_lapsed}
    wait_for(lambda: promises() == kept, lambda: f"promises left: {promises()}")
    wait_for(lambda: scrape(server).get_sum(EXPIRED) == 1, lambda: f"expired: {scrape(server).get_sum(EXPIRED)}")
    assert request(server, "GET", "/" + arrived) == (200, arrived_data)
    assert json.loads(request(server, "POST", "/has", json.dumps([lapsed, in_force]).encode())[1]) == [False, True]


def test_a_failing_object_store_is_counted_as_error(serve, seaweedfs, s3_bucket, relay):  # noqa: F811
    """The object store taken away (a relay between the server and SeaweedFS, cut): the
    GET is a 503, and its call is counted with outcome ``error``, its latency observed."""
    data = os.urandom(3000)
    cs = put_object(seaweedfs, s3_bucket, data)
    server = serve(f"s3://{s3_bucket}", "--s3-endpoint", relay.url, "--cache-size", "0",
                   env=seaweedfs.s3_env())
    assert request(server, "GET", "/" + cs) == (200, data)
    wait_for(lambda: calls(server, "get", "ok") >= 1, "the GET's call counted")
    before = scrape(server)
    assert calls(before, "get", "error") == 0

    relay.cut()
    status, _ = request(server, "GET", "/" + cs)
    assert status == 503, status
    wait_for(lambda: calls(server, "get", "error") >= 1, "the failed GET counted as an error")
    samples = scrape(server)
    assert calls(samples, "get", "ok") == calls(before, "get", "ok")
    histogram_matches_calls(samples)
    assert "Traceback" not in server.output()


# ------------------------------------------------------------------ the local tier
def test_a_miss_then_a_hit_of_the_local_tier(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A buffer the tier lacks: one miss (no hit), read from the bucket; once filled, read
    again: one hit (no miss), and no call to the bucket."""
    cache = tmp_path / "cache"
    data = os.urandom(4000)
    cs = put_object(seaweedfs, s3_bucket, data)
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    before = scrape(server)
    hits, misses = tier(before)

    assert request(server, "GET", "/" + cs) == (200, data)
    wait_for(lambda: tier(scrape(server))[1] >= misses + 1, "the miss counted")
    after_miss = scrape(server)
    assert tier(after_miss) == (hits, misses + 1)
    assert calls(after_miss, "get", "ok") == calls(before, "get", "ok") + 1

    wait_for((cache / key(cs)).exists, "the buffer in the tier")
    assert request(server, "GET", "/" + cs) == (200, data)
    wait_for(lambda: tier(scrape(server))[0] >= hits + 1, "the hit counted")
    after_hit = scrape(server)
    assert tier(after_hit) == (hits + 1, misses + 1)
    assert calls(after_hit, "get") == calls(after_miss, "get"), "the hit went to the bucket"


def test_has_asks_the_bucket_only_for_what_the_tier_lacks(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """/has, /has-now and /buffer-length answer from the local tier first: buffers it holds
    cost no call to the bucket; one it lacks is asked of the bucket."""
    cache = tmp_path / "cache"
    held = {put_object(seaweedfs, s3_bucket, data): data for data in (os.urandom(n) for n in (10, 2000, 50_000))}
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    for cs, data in held.items():
        assert request(server, "GET", "/" + cs) == (200, data)
    wait_for(lambda: all((cache / key(cs)).exists() for cs in held), "the buffers in the tier")
    before = scrape(server)
    for path, answer in (("/has", [True] * 3), ("/has-now", [True] * 3), ("/buffer-length", [10, 2000, 50_000])):
        status, body = request(server, "POST", path, json.dumps(list(held)).encode())
        assert (status, json.loads(body)) == (200, answer), path
    assert scrape(server).get_sum(CALLS) == before.get_sum(CALLS), "the tier's buffers were asked of the bucket"
    absent = sha3(b"in neither")
    status, body = request(server, "POST", "/has", json.dumps([*held, absent]).encode())
    assert (status, json.loads(body)) == (200, [True, True, True, False])
    assert scrape(server).get_sum(CALLS) > before.get_sum(CALLS)


def test_tier_bytes_count_the_buffer_files_held(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """``hashserver_local_tier_bytes`` is the evictor's estimate (hashserver/eviction.py):
    the bytes of the buffer files its scan found at the start (a buffer left by an earlier
    run counts; the layout's marker does not), plus the bytes of each file the workers
    stored since: exactly what the tier holds on disk, for buffers read and PUT."""
    cache = tmp_path / "cache"
    earlier = os.urandom(7000)
    old = sha3(earlier)
    (cache / old[:2]).mkdir(parents=True)
    (cache / key(old)).write_bytes(earlier)
    read = {put_object(seaweedfs, s3_bucket, d): d for d in (os.urandom(1000), os.urandom(200_000),
                                                              os.urandom(MiB + 12345))}  # small, larger fill
    server = s3_serve(s3_bucket, "--writable", "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    assert wait_for(lambda: tier_gauge(server) is not None, "the gauge set") is not None
    assert tier_gauge(server) == len(earlier) == sum(tier_files(cache).values())

    put = os.urandom(30_000)
    assert request(server, "PUT", "/" + sha3(put), put) == (200, b"OK")
    for checksum, data in read.items():
        assert request(server, "GET", "/" + checksum) == (200, data)
    held = [old, sha3(put), *read]
    wait_for(lambda: all((cache / key(c)).exists() for c in held), "every buffer in the tier")
    expected = len(earlier) + len(put) + sum(map(len, read.values()))
    assert sum(tier_files(cache).values()) == expected
    wait_for(lambda: tier_gauge(server) == expected,
             lambda: f"the gauge at the {expected} bytes held: {tier_gauge(server)}")
    assert scrape(server).get_sum(EVICTIONS) == 0


def test_tier_bytes_count_compressed_buffers_with_their_sidecars(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A compressed buffer enters the tier as the bucket holds it, with its length sidecar
    (``<checksum>.BUFFERLENGTH``), read or PUT; the evictor's scan counts both files
    (eviction.py, TIER_SUFFIXES), so the gauge must count both from the fill on, not only
    after the next scan (every 300 s, or when the bound is passed)."""
    cache = tmp_path / "cache"
    read, put = os.urandom(50_000), os.urandom(40_000)
    obstore.put(seaweedfs.s3_store(s3_bucket), key(sha3(read)) + ".gz", gzip.compress(read))
    server = s3_serve(s3_bucket, "--writable", "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    wait_for(lambda: tier_gauge(server) == 0, "the gauge set, for an empty tier")
    assert request(server, "GET", "/" + sha3(read), headers={"Accept-Encoding": "identity"}) == (200, read)
    assert request(server, "PUT", "/" + sha3(put), gzip.compress(put), {"Content-Encoding": "gzip"}) == (200, b"OK")
    wanted = {f"{sha3(data)}{suffix}" for data in (read, put) for suffix in (".gz", ".BUFFERLENGTH")}
    wait_for(lambda: set(tier_files(cache)) == wanted, lambda: f"both buffers in the tier: {tier_files(cache)}")
    on_disk = sum(tier_files(cache).values())
    wait_for(lambda: tier_gauge(server) == on_disk,
             lambda: f"the gauge at the {on_disk} bytes held (sidecars included): {tier_gauge(server)}")


def test_evictions_are_counted_and_the_tier_bytes_keep_the_bound(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """3 MiB read through a tier of 1 MiB: evictions counted; the gauge comes back within
    the bound (between two checks, a second apart, fills may pass it: that is the slack
    eviction.py documents; a check over it evicts down to 90% of it) and never counts less
    than the tier holds.  Each first read is a miss."""
    cache = tmp_path / "cache"
    bound = MiB
    buffers = {}
    for i in range(48):
        data = i.to_bytes(4, "big") * (16 * 1024)  # 64 KiB
        buffers[put_object(seaweedfs, s3_bucket, data)] = data
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "1M")
    before = scrape(server)
    hits, misses = tier(before)
    assert before.get_sum(EVICTIONS) == 0
    for checksum, data in buffers.items():
        assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: scrape(server).get_sum(EVICTIONS) > 0, "evictions counted")
    # each buffer filled once: held, or evicted and counted
    wait_for(lambda: scrape(server).get_sum(EVICTIONS) + len(tier_files(cache)) == len(buffers),
             lambda: f"{scrape(server).get_sum(EVICTIONS)} evicted + {len(tier_files(cache))} held")
    wait_for(lambda: sum(tier_files(cache).values()) <= bound, "the tier back within its bound")
    wait_for(lambda: (tier_gauge(server) or 0) <= bound,
             lambda: f"the gauge back within the bound: {tier_gauge(server)}")
    gauge, on_disk = tier_gauge(server), sum(tier_files(cache).values())
    assert 0 < on_disk <= gauge <= bound, (on_disk, gauge)
    samples = scrape(server)
    assert tier(samples) == (hits, misses + len(buffers))
    assert samples.get_sum(EVICTIONS) >= len(buffers) - bound // (64 * 1024)  # what could not stay

    for checksum, data in buffers.items():  # still served, from the tier or the bucket
        assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: sum(tier(scrape(server))) >= hits + misses + 2 * len(buffers), "the second reads counted")
    second_hits, second_misses = tier(scrape(server))
    assert second_hits + second_misses == hits + misses + 2 * len(buffers)
    assert second_misses > misses + len(buffers)  # evicted ones came from the bucket again


# ------------------------------------------------------------------ corruption, a failing tier
def test_a_corrupt_object_is_counted(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """An object that does not hash to its key's checksum: a 400, one verification, one
    corruption; nothing enters the tier."""
    cache = tmp_path / "cache"
    cs = sha3(b"what the key says")
    put_object(seaweedfs, s3_bucket, b"something else", checksum=cs)
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    before = scrape(server)
    assert before.get_sum(CORRUPTIONS) == 0
    status, _ = request(server, "GET", "/" + cs)
    assert status == 400
    wait_for(lambda: scrape(server).get_sum(CORRUPTIONS) >= 1, "the corruption counted")
    samples = scrape(server)
    assert samples.get_sum(CORRUPTIONS) == 1
    assert samples.get_sum(VERIFICATIONS) == before.get_sum(VERIFICATIONS) + 1
    assert not (cache / key(cs)).exists()


@pytest.mark.slow
def test_a_corrupt_object_streamed_is_counted(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """Above the size verified before the headers go out, a corrupt object is streamed and
    its connection aborted before the last byte: that corruption is counted too, once,
    and nothing enters the tier."""
    cache = tmp_path / "cache"
    cs = sha3(b"what the key says, of a large object")
    put_object(seaweedfs, s3_bucket, os.urandom(WHOLE_GET + MiB), checksum=cs)
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    assert scrape(server).get_sum(CORRUPTIONS) == 0
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):  # never a complete 200
        request(server, "GET", "/" + cs)
    wait_for(lambda: scrape(server).get_sum(CORRUPTIONS) >= 1, "the streamed corruption counted")
    assert scrape(server).get_sum(CORRUPTIONS) == 1
    assert not [p for p in cache.rglob(cs + "*")], "a corrupt object entered the tier"


def test_a_failing_tier_is_counted_and_the_bucket_answers(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """The tier's directory of a buffer replaced by a plain file after the start (root
    ignores permissions; a file where a directory should be fails for root too): a small
    and a larger buffer are still read whole from the bucket, and each failed fill is
    counted as a storage error by errno (ENOTDIR) and logged."""
    cache = tmp_path / "cache"
    small, large = os.urandom(2000), os.urandom(2 * MiB)
    checksums = [put_object(seaweedfs, s3_bucket, small), put_object(seaweedfs, s3_bucket, large)]
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", TIER_SIZE)
    wait_for(lambda: tier_gauge(server) is not None, "the evictor started")
    for checksum in checksums:
        directory = cache / checksum[:2]
        if directory.is_dir():
            shutil.rmtree(directory)
        directory.write_bytes(b"not a directory")
    before = scrape(server)
    assert not before.has(STORAGE_ERRORS)

    for checksum, data in zip(checksums, (small, large), strict=True):
        assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: scrape(server).get_sum(STORAGE_ERRORS, errno="ENOTDIR") >= 2,
             lambda: f"both failed fills counted: {scrape(server).get_sum(STORAGE_ERRORS)}")
    samples = scrape(server)
    assert samples.label_values(STORAGE_ERRORS, "errno") == {"ENOTDIR"}
    assert "local tier failing, answering from the back store" in server.output()
    for checksum, data in zip(checksums, (small, large), strict=True):  # still served, from the bucket
        assert request(server, "GET", "/" + checksum) == (200, data)
    assert "Traceback" not in server.output()

