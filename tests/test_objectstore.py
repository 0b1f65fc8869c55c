"""The object store (hashserver.objectstore) against a real S3: the session's SeaweedFS.

Each test drives an ObjectStore in this process on a new bucket, and looks at the
bucket with a plain obstore client: which objects exist, and which multipart uploads
are left incomplete.  The thresholds (whole GET, small PUT, part size) are lowered so
that multipart uploads and streamed reads happen with a few MiB.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time

import pytest
from relay import Relay
from seaweedfs import (
    SeaweedFS,
    s3_bucket,  # noqa: F401  (fixtures)
    seaweedfs,  # noqa: F401
)

from bench.servers import HOST, NginxServer
from hashserver import s3uploads
from hashserver.checksum import Hasher
from hashserver.compression import zstd
from hashserver.config import ConfigError
from hashserver.storage import (
    BodyTooLarge,
    ChecksumMismatch,
    CorruptBuffer,
    InvalidPayload,
    PutOutcome,
    ReadOnly,
    StillWriting,
    StorageUnavailable,
    Want,
)
from hashserver.testing import free_port

from conftest import signed_by_a_test_ca

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
from hashserver import objectstore  # noqa: E402  (needs obstore)
from hashserver.objectstore import (  # noqa: E402  (needs obstore)
    HASH_INLINE,
    HASH_STEP,
    HEAD_CONCURRENCY,
    HEALTH_EVERY,
    LIST_MIN,
    SMALL_GET,
    ObjectStore,
)
from hashserver.promises import PROMISE_TTL  # noqa: E402

MiB = 1 << 20
BOUND = 60.0  # seconds: a bound against hangs, not a speed requirement


def sha3(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, BOUND))


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch):  # noqa: F811
    """The standard AWS variables, as a deployment would set them."""
    for name, value in seaweedfs.s3_env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs


def make_store(seaweedfs: SeaweedFS, bucket: str, prefix: str = "buffers", **options) -> ObjectStore:  # noqa: F811
    settings = dict(endpoint=seaweedfs.s3_endpoint, layout="prefix", hasher=Hasher(), writable=True,
                    max_body_size=1 << 34, wait_timeout=10.0, lock_timeout=120.0,
                    whole_get=2 * MiB, small_put=1 * MiB, part_size=5 * MiB)
    settings.update(options)
    return ObjectStore(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", **settings)


@pytest.fixture
def bucket_store(s3_env, s3_bucket):  # noqa: F811
    """(ObjectStore on s3://bucket/buffers, a raw obstore client on the bucket, the bucket)."""
    store = make_store(s3_env, s3_bucket)
    yield store, s3_env.s3_store(s3_bucket), s3_bucket
    store.close()


def keys(raw) -> set[str]:
    return {entry["path"] for batch in obstore.list(raw) for entry in batch}


def incomplete_uploads(seaweedfs: SeaweedFS, bucket: str) -> list:  # noqa: F811
    signer = s3uploads.Signer.from_settings(bucket, seaweedfs.s3_endpoint, {})
    return s3uploads.list_uploads(signer, bucket, "")


async def body_of(data: bytes, piece: int = 256 << 10, fail_after: int | None = None):
    """A request body: ``data`` in pieces; raising ConnectionResetError after ``fail_after`` bytes."""
    for start in range(0, len(data), piece):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("the client went away")
        yield data[start:start + piece]
        await asyncio.sleep(0)


async def read_all(readable) -> bytes:
    if readable.content is not None:
        return readable.content
    return b"".join([chunk async for chunk in readable.chunks()])


def key_of(checksum: bytes, suffix: str = "", prefix: str = "buffers") -> str:
    return f"{prefix}/{checksum.hex()[:2]}/{checksum.hex()}{suffix}"


# ------------------------------------------------------------------ round trips
def test_small_buffer_round_trip(bucket_store):
    store, raw, _ = bucket_store
    data = os.urandom(1000)
    checksum, absent = sha3(data), sha3(b"absent")

    async def scenario():
        assert await store.put(checksum, body_of(data)) is PutOutcome.STORED
        assert await store.has(checksum + absent) == [True, False]
        assert await store.lengths(checksum + absent) == [1000, 0]
        assert await read_all(await store.open(checksum)) == data
        assert await store.open(absent) is None
        assert await store.put(checksum, body_of(data)) is PutOutcome.PRESENT

    run(scenario())
    assert keys(raw) == {key_of(checksum)}  # exactly where a prefix-layout directory holds it


def test_large_buffer_goes_up_in_parts_and_is_streamed(bucket_store, seaweedfs):  # noqa: F811
    store, raw, bucket = bucket_store
    data = os.urandom(12 * MiB)
    checksum = sha3(data)

    async def scenario():
        assert await store.put(checksum, body_of(data, MiB)) is PutOutcome.STORED
        readable = await store.open(checksum)
        assert readable.content is None and readable.length == len(data)
        assert await read_all(readable) == data
        assert await store.lengths(checksum) == [len(data)]
        assert await store.put(checksum, body_of(data, MiB)) is PutOutcome.PRESENT

    run(scenario())
    assert obstore.head(raw, key_of(checksum))["e_tag"].endswith('-3"')  # a multipart object: 5+5+2 MiB
    assert incomplete_uploads(seaweedfs, bucket) == []


def test_flat_layout_and_whole_bucket(s3_env, s3_bucket):  # noqa: F811
    store = make_store(s3_env, s3_bucket, prefix="", layout="flat")
    data = b"flat"
    run(store.put(sha3(data), body_of(data)))
    assert keys(s3_env.s3_store(s3_bucket)) == {sha3(data).hex()}


def test_a_read_only_store_refuses_writes(s3_env, s3_bucket):  # noqa: F811
    store = make_store(s3_env, s3_bucket, writable=False)
    with pytest.raises(ReadOnly):
        run(store.put(sha3(b"x"), body_of(b"x")))
    with pytest.raises(ReadOnly):
        run(store.promise(sha3(b"x")))


@pytest.mark.parametrize("lean", [True, False], ids=["lean client", "obstore"])
@pytest.mark.parametrize("size", [0, 1, SMALL_GET - 1, SMALL_GET, SMALL_GET + 1])
def test_reads_on_either_side_of_the_first_gets_size(s3_env, s3_bucket, size, lean):  # noqa: F811
    """obstore asks for the first SMALL_GET bytes: a shorter object comes whole in that one
    GET (S3 refuses the range of an empty one: 416), a longer one gets a second GET of the
    rest (refused, 416, when there is none).  The lean client asks for the first
    ``whole_get`` bytes: an object up to that comes whole in one GET, a longer one is cut
    off at the answer's headers and read by a GET of the whole (streamed)."""
    store = make_store(s3_env, s3_bucket, lean=lean)
    raw = s3_env.s3_store(s3_bucket)
    assert (store.lean is not None) is lean
    data = os.urandom(size)
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data)
    packed = zstd.compress(data + b"z")
    obstore.put(raw, key_of(sha3(data + b"z"), ".zst"), packed)

    async def scenario():
        plain = await store.open(checksum)
        compressed = await store.open(sha3(data + b"z"))
        return (plain.length, await read_all(plain)), (compressed.length, await read_all(compressed))

    calls = store.metrics._values["hashserver_object_store_requests"]
    try:
        assert run(scenario()) == ((size, data), (size + 1, data + b"z"))
    finally:
        store.close()
    first_get = store.whole_get if lean else SMALL_GET
    gets = [1 if len(stored) < first_get + lean else 2 for stored in (data, packed)]  # its first bytes, then the rest
    assert calls[("get", "ok")] == sum(gets)


@pytest.mark.parametrize("size", [2 * MiB, 2 * MiB + 1], ids=["whole_get", "longer"])
def test_the_lean_client_cuts_a_longer_object_off_at_its_headers(s3_env, s3_bucket, size):  # noqa: F811
    """An object up to ``whole_get`` comes in the lean client's one GET; a longer one is
    cut off once its answer's headers say how long it is (its connection dropped, not
    read: at most a few of its bytes were sent), then read by a GET of the whole."""
    store = make_store(s3_env, s3_bucket)
    assert store.lean is not None and store.whole_get == 2 * MiB
    data = os.urandom(size)
    obstore.put(s3_env.s3_store(s3_bucket), key_of(sha3(data)), data)
    connections = []

    async def scenario():
        connect = asyncio.get_running_loop().create_connection

        async def counted(factory, *args, **kwargs):
            made = await connect(factory, *args, **kwargs)
            connections.append(made[1])
            return made

        asyncio.get_running_loop().create_connection = counted
        readable = await store.open(sha3(data))
        return readable.content is not None, await read_all(readable)

    calls = store.metrics._values["hashserver_object_store_requests"]
    try:
        whole, read = run(scenario())
    finally:
        store.close()
    assert read == data and whole is (size <= store.whole_get)  # else streamed, its last bytes once verified
    assert calls[("get", "ok")] == (1 if size <= store.whole_get else 2)
    received = [connection.received for connection in connections]
    assert received == ([size] if size <= store.whole_get else [0])


class RangeBlindMirror(NginxServer):
    """nginx serving a copy of a bucket from a directory, byte ranges turned off
    (``max_ranges 0``): a store that answers a GET of a range with the whole object.
    ``open_ended_only``: blind only to ranges with no end (``bytes=N-``)."""

    name = "nginx-mirror"

    def __init__(self, workdir: str, root: str, open_ended_only: bool = False):
        super().__init__(workdir, workers=1)
        self.root = root
        self.open_ended_only = open_ended_only

    def http_config(self) -> str:
        if self.open_ended_only:
            locations = f"""        location / {{
            root {self.root};
            if ($http_range ~ "^bytes=[0-9]+-$") {{ rewrite ^ /whole$uri last; }}
        }}
        location /whole/ {{ internal; alias {self.root}/; max_ranges 0; }}"""
        else:
            locations = f"""        max_ranges 0;
        location / {{ root {self.root}; }}"""
        return f"""    server {{
        listen {HOST}:{self.port};
        location = /healthcheck {{ return 200 "OK"; }}
{locations}
    }}
"""


@pytest.mark.parametrize("lean", [True, False], ids=["lean client", "obstore"])
def test_a_store_that_ignores_ranges_is_read_whole(s3_env, tmp_path, lean):
    """A small object answered whole is the object; a longer one (the lean client drops
    the connection rather than read it; obstore refuses the answer) is read by a whole
    GET, and whole GETs only from then on."""
    contents = [os.urandom(3000), b"", os.urandom(2 * MiB + 5000)]  # the last: longer than whole_get
    for content in contents:
        path = tmp_path / "mirror" / "bucket" / key_of(sha3(content))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    with RangeBlindMirror(str(tmp_path), str(tmp_path / "mirror")) as mirror:
        endpoint = f"http://{HOST}:{mirror.port}"
        raw = obstore.store.S3Store("bucket", endpoint=endpoint, client_options={"allow_http": True})
        with pytest.raises(obstore.exceptions.BaseError, match="non-partial"):  # what the store does
            obstore.get_range(raw, key_of(sha3(contents[0])), start=0, end=10)
        store = make_store(s3_env, "bucket", endpoint=endpoint, writable=False, lean=lean)
        assert (store.lean is not None) is lean

        async def scenario():
            return [await read_all(await store.open(sha3(content))) for content in contents]

        calls = store.metrics._values["hashserver_object_store_requests"]
        try:
            assert run(scenario()) == contents
            # lean: the two small ones by one GET each, the long one's whole answer dropped, one whole GET;
            # obstore: the first's range refused, then a whole GET each
            assert calls[("get", "ok")] == 4
            assert store._ranges is False
            assert run(scenario()) == contents
            assert calls[("get", "ok")] == 7
        finally:
            store.close()


def test_a_store_that_ignores_only_the_rests_range_is_read_whole(s3_env, tmp_path):
    """First bytes by a range, the rest answered whole (``bytes=N-`` ignored): the
    object is read by one GET, and whole GETs from then on."""
    content = os.urandom(SMALL_GET + 5000)
    path = tmp_path / "mirror" / "bucket" / key_of(sha3(content))
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with RangeBlindMirror(str(tmp_path), str(tmp_path / "mirror"), open_ended_only=True) as mirror:
        endpoint = f"http://{HOST}:{mirror.port}"
        raw = obstore.store.S3Store("bucket", endpoint=endpoint, client_options={"allow_http": True})
        assert bytes(obstore.get_range(raw, key_of(sha3(content)), start=0, end=10)) == content[:10]
        with pytest.raises(obstore.exceptions.BaseError, match="non-partial"):  # what the store does
            obstore.get(raw, key_of(sha3(content)), options={"range": {"offset": 10}})
        store = make_store(s3_env, "bucket", endpoint=endpoint, writable=False, lean=False)  # the lean client: one GET
        calls = store.metrics._values["hashserver_object_store_requests"]

        async def scenario():
            return await read_all(await store.open(sha3(content)))

        try:
            assert run(scenario()) == content
            assert calls[("get", "ok")] == 3  # the first bytes, the rest answered whole, one whole GET
            assert run(scenario()) == content
            assert calls[("get", "ok")] == 4
        finally:
            store.close()


@pytest.mark.parametrize("whole_get, gets", [(64 * MiB, 3), (2 * MiB, 4)], ids=["fetched whole", "streamed"])
def test_an_object_replaced_between_its_two_gets_is_read_by_one(s3_env, s3_bucket, whole_get, gets):  # noqa: F811
    """Another encoding of the same buffer may replace a compressed object between the
    GET of its first bytes and the GET of the rest (a multipart upload is not created
    conditionally).  Fetched whole, the joined read does not hash right and the object
    is read again by one GET instead of being called corrupt; streamed (sent as it
    arrives), it is read by one GET from the start."""
    store = make_store(s3_env, s3_bucket, whole_get=whole_get, lean=False)  # the lean client: one GET
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(12 * MiB).translate(bytes(b"acgt"[i % 4] for i in range(256)))  # 2 bits a byte
    fast, small = zstd.compress(data, 1), zstd.compress(data, 19)
    assert fast != small and min(len(fast), len(small)) > SMALL_GET
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum, ".zst"), fast)
    get_rest = store._get_rest

    async def replaced_first(key: str):
        await obstore.put_async(raw, key, small)
        return await get_rest(key)

    store._get_rest = replaced_first
    counts = store.metrics._values

    async def scenario():
        readable = await store.open(checksum)
        return readable.length, await read_all(readable)

    try:
        assert run(scenario()) == (len(data), data)
        # first bytes, rest, then one GET (streamed: after the one that counts the decoded length)
        assert counts["hashserver_object_store_requests"][("get", "ok")] == gets
        assert counts["hashserver_corruptions"][()] == 0 and counts["hashserver_verifications"][()] == 1
    finally:
        store.close()


# ------------------------------------------------------------ refused and cut uploads
@pytest.mark.parametrize("size", [1000, 8 * MiB], ids=["small", "multipart"])
def test_wrong_checksum_leaves_nothing(bucket_store, seaweedfs, size):  # noqa: F811
    store, raw, bucket = bucket_store
    with pytest.raises(ChecksumMismatch):
        run(store.put(sha3(b"something else"), body_of(os.urandom(size))))
    assert keys(raw) == set()
    assert incomplete_uploads(seaweedfs, bucket) == []


def test_a_cut_body_leaves_no_object_and_no_upload(bucket_store, seaweedfs):  # noqa: F811
    store, raw, bucket = bucket_store
    data = os.urandom(16 * MiB)
    with pytest.raises(ConnectionResetError):
        run(store.put(sha3(data), body_of(data, fail_after=11 * MiB)))
    assert keys(raw) == set()
    assert incomplete_uploads(seaweedfs, bucket) == []


def test_a_body_too_large_leaves_nothing(s3_env, s3_bucket):  # noqa: F811
    store = make_store(s3_env, s3_bucket, max_body_size=7 * MiB)
    data = os.urandom(9 * MiB)
    with pytest.raises(BodyTooLarge):
        run(store.put(sha3(data), body_of(data)))
    assert keys(s3_env.s3_store(s3_bucket)) == set()
    assert incomplete_uploads(s3_env, s3_bucket) == []


def test_a_cancelled_upload_leaves_no_object_and_no_upload(bucket_store, seaweedfs):  # noqa: F811
    store, raw, bucket = bucket_store
    data = os.urandom(16 * MiB)
    stalled = asyncio.Event()

    async def body():
        async for piece in body_of(data[: 11 * MiB]):
            yield piece
        stalled.set()
        await asyncio.Event().wait()  # the client stops sending; the server cancels the handler

    async def scenario():
        task = asyncio.ensure_future(store.put(sha3(data), body()))
        await stalled.wait()
        await asyncio.sleep(0.5)  # parts are on their way
        assert incomplete_uploads(seaweedfs, bucket) != []  # (a blocking call: the upload waits meanwhile)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert keys(raw) == set()
    assert incomplete_uploads(seaweedfs, bucket) == []


@pytest.mark.parametrize("size", [1000, 8 * MiB], ids=["small", "multipart"])
def test_two_puts_of_one_buffer_at_once(bucket_store, seaweedfs, size):  # noqa: F811
    store, raw, bucket = bucket_store
    other = make_store(seaweedfs, bucket)  # a second host
    data = os.urandom(size)
    checksum = sha3(data)

    async def scenario():
        return await asyncio.gather(store.put(checksum, body_of(data)), other.put(checksum, body_of(data)))

    outcomes = run(scenario())
    assert set(outcomes) <= {PutOutcome.STORED, PutOutcome.PRESENT}
    if size <= MiB:  # one conditional create wins
        assert sorted(o.value for o in outcomes) == ["present", "stored"]
    assert keys(raw) == {key_of(checksum)}
    assert bytes(obstore.get(raw, key_of(checksum)).bytes()) == data
    assert incomplete_uploads(seaweedfs, bucket) == []


def test_conditional_create_is_honoured(bucket_store):
    """SeaweedFS refuses a create-only PUT (If-None-Match: *) of an existing key: the
    store relies on it (a duplicate write would be harmless, buffers being immutable)."""
    _, raw, _ = bucket_store
    obstore.put(raw, "k", b"first", mode="create")
    with pytest.raises(obstore.exceptions.AlreadyExistsError):
        obstore.put(raw, "k", b"second", mode="create")
    assert bytes(obstore.get(raw, "k").bytes()) == b"first"


# ------------------------------------------------------------------- corruption
def test_a_corrupt_small_object_is_refused_before_sending(bucket_store, s3_bucket):  # noqa: F811
    store, raw, _ = bucket_store
    checksum = sha3(b"the real content")
    obstore.put(raw, key_of(checksum), b"something else")
    with pytest.raises(CorruptBuffer) as caught:
        run(store.open(checksum))
    assert str(caught.value) == (f"File corruption: file at path s3://{s3_bucket}/{key_of(checksum)} "
                                 f"does not have the correct SHA3-256 checksum.")


@pytest.mark.parametrize("lean", [True, False], ids=["lean client", "obstore"])
def test_an_object_hashed_as_it_arrives_is_verified_whole(s3_env, s3_bucket, monkeypatch, lean):  # noqa: F811
    """Objects above HASH_INLINE and up to whole_get are hashed in pieces while they
    arrive (the lean client's into one buffer): right ones read whole, plain and
    compressed; a wrong byte in the last piece, or a compressed object cut short, is
    refused as corrupt before anything is sent."""
    store = make_store(s3_env, s3_bucket, lean=lean)
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(HASH_STEP + 300_000)  # two pieces and a third, short
    packed = os.urandom(HASH_STEP) + bytes(600_000)
    fine, wrong, cut = sha3(data), sha3(b"wrong"), sha3(b"cut")
    obstore.put(raw, key_of(fine), data)
    obstore.put(raw, key_of(sha3(packed), ".zst"), zstd.compress(packed))
    obstore.put(raw, key_of(wrong), data[:-1] + bytes([data[-1] ^ 1]))
    obstore.put(raw, key_of(cut, ".zst"), zstd.compress(packed)[:-100])
    assert len(zstd.compress(packed)) > HASH_INLINE
    began = []
    begin = objectstore._HashedAsRead.begin
    monkeypatch.setattr(objectstore._HashedAsRead, "begin",
                        lambda self, length: began.append(length) or begin(self, length))

    async def scenario():
        read = [await read_all(await store.open(checksum)) for checksum in (fine, sha3(packed))]
        refused = []
        for checksum in (wrong, cut):
            try:
                await store.open(checksum)
            except CorruptBuffer as exc:
                refused.append(str(exc))
        return read, refused

    try:
        read, refused = run(scenario())
    finally:
        store.close()
    assert [bytes(r) for r in read] == [data, packed]
    assert refused == [f"File corruption: file at path s3://{s3_bucket}/{key_of(wrong)} does not have the correct "
                       "SHA3-256 checksum.", f"File corruption: file at path s3://{s3_bucket}/{key_of(cut, '.zst')} "
                       "does not have the correct SHA3-256 checksum."]
    compressed = len(zstd.compress(packed))
    assert began == ([len(data), compressed, len(data), compressed - 100] if lean else [])


def test_an_upload_takes_a_batch_as_its_pieces_unless_they_are_many():
    """A PUT's batch (about a MiB) goes to obstore as the pieces it came in, not joined;
    a batch of many small pieces (a slow client's) goes joined, one call for the lot."""
    large = [os.urandom(300_000) for _ in range(4)]
    small = [os.urandom(4000) for _ in range(objectstore.PIECES_UNJOINED + 1)]

    async def drained():
        queue: asyncio.Queue = asyncio.Queue()
        for item in (large, small, objectstore._DONE):
            queue.put_nowait(item)
        return [piece async for piece in objectstore._drain(queue)]

    assert asyncio.run(drained()) == [*large, b"".join(small)]


def test_no_memory_for_an_object_is_a_503_that_names_it_not_an_unreadable_answer(s3_env, s3_bucket,  # noqa: F811
                                                                                  monkeypatch):
    """The lean client's receiver cannot get a buffer for the object (MemoryError): the
    read is StorageUnavailable (503) saying so, not the object store's fault; the object
    is read once memory is there again."""
    store = make_store(s3_env, s3_bucket, lean=True)
    data = os.urandom(HASH_INLINE + 1000)
    checksum = sha3(data)
    obstore.put(s3_env.s3_store(s3_bucket), key_of(checksum), data)
    begin = objectstore._HashedAsRead.begin

    def no_memory(self, length):
        raise MemoryError()

    async def scenario():
        monkeypatch.setattr(objectstore._HashedAsRead, "begin", no_memory)
        with pytest.raises(StorageUnavailable) as refused:
            await store.open(checksum)
        monkeypatch.setattr(objectstore._HashedAsRead, "begin", begin)
        return str(refused.value), bytes(await read_all(await store.open(checksum)))

    try:
        refused, read = run(scenario())
    finally:
        store.close()
    assert refused == (f"Storage unavailable: no memory on this host for the object store get of "
                       f"s3://{s3_bucket}/{key_of(checksum)} now")
    assert read == data


def test_a_corrupt_large_object_fails_before_its_last_byte(bucket_store):
    store, raw, _ = bucket_store
    data = os.urandom(6 * MiB)
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data[:-1] + b"\0")
    received = []

    async def scenario():
        readable = await store.open(checksum)  # streamed: the size is above whole_get
        assert readable.length == len(data)
        async for chunk in readable.chunks():
            received.append(chunk)

    with pytest.raises(CorruptBuffer, match="File corruption"):
        run(scenario())
    assert sum(map(len, received)) < len(data)


# --------------------------------------------------------------------- promises
def test_a_promise_is_kept_in_the_bucket_for_every_host(bucket_store, seaweedfs):  # noqa: F811
    store, raw, bucket = bucket_store
    other = make_store(seaweedfs, bucket)
    data = os.urandom(5000)
    checksum = sha3(data)

    async def scenario():
        assert await store.promise(checksum) > 0
        assert await other.has(checksum) == [True]
        assert await other.has(checksum, promised=False) == [False]
        assert await other.lengths(checksum) == [1]
        reading = asyncio.ensure_future(other.open(checksum))
        await asyncio.sleep(0.5)
        assert not reading.done()  # it waits for the promised buffer
        await store.put(checksum, body_of(data))
        assert await read_all(await reading) == data
        # The resolved promise is kept RESOLVED_KEPT (30 s) beside its buffer, then deleted.
        assert keys(raw) == {key_of(checksum), store.keys.promise(checksum.hex())}

    run(scenario())


def test_a_resolved_promise_is_deleted_after_a_while(bucket_store, seaweedfs):  # noqa: F811
    _, raw, bucket = bucket_store
    store = make_store(seaweedfs, bucket, resolved_kept=1.0)
    data = os.urandom(5000)
    checksum = sha3(data)

    async def scenario():
        await store.promise(checksum)
        await store.put(checksum, body_of(data))
        deadline = time.monotonic() + BOUND
        while keys(raw) != {key_of(checksum)}:
            assert time.monotonic() < deadline, keys(raw)
            await asyncio.sleep(0.05)

    try:
        run(scenario())
    finally:
        store.close()


def put_during_lookup(reader: ObjectStore, writer: ObjectStore, raw, checksum: bytes, data: bytes) -> None:
    """Make ``writer`` PUT the buffer (and resolve its promise) in the middle of a lookup
    by ``reader``: after it found no plain and no zstd object, before it looks further
    (the .gz object, then the promise).  With ``writer.resolved_kept`` 0 it waits until
    the promise is gone from the bucket."""
    real_head, real_get_small = reader._head, reader._get_small
    done = []

    async def meanwhile(key: str) -> None:
        if key.endswith(".gz") and not done:
            done.append(True)
            await writer.put(checksum, body_of(data))
            await asyncio.sleep(0.5)  # time for the writer's deletion of the promise, were it at once
            promise = writer.keys.promise(checksum.hex())
            while writer.resolved_kept == 0 and promise in keys(raw):
                await asyncio.sleep(0.05)

    async def head(key):
        await meanwhile(key)
        return await real_head(key)

    async def get_small(key, receiver=None):
        await meanwhile(key)
        return await real_get_small(key, receiver)

    reader._head, reader._get_small = head, get_small


def answer_when_put_during_lookup(seaweedfs: SeaweedFS, bucket: str, raw, call: str,  # noqa: F811
                                  **kept: float) -> tuple[object, bytes]:
    """The answer of a reader's ``call`` (has, lengths, or open and read) for a promised
    buffer that another host PUT in the middle of the lookup (:func:`put_during_lookup`);
    ``kept``: both stores' ``resolved_kept``, if given.  Also the buffer."""
    writer, reader = make_store(seaweedfs, bucket, **kept), make_store(seaweedfs, bucket, **kept)
    data = os.urandom(5000)
    checksum = sha3(data)

    async def scenario():
        await writer.promise(checksum)
        put_during_lookup(reader, writer, raw, checksum, data)
        if call == "open":
            readable = await reader.open(checksum)
            return None if readable is None else await read_all(readable)
        return await getattr(reader, call)(checksum)

    try:
        return run(scenario()), data
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("call", ["has", "lengths", "open"])
def test_a_promise_resolved_during_a_lookup_still_answers(bucket_store, seaweedfs, call):  # noqa: F811
    """A host found no object, then the buffer was PUT through another host, which
    resolved its promise: the promise is still there for the lookup's next step (it
    was deleted at once, and the lookup answered absent, or 404 for a waiting GET)."""
    _, raw, bucket = bucket_store
    answer, data = answer_when_put_during_lookup(seaweedfs, bucket, raw, call)
    assert answer == {"has": [True], "lengths": [1], "open": data}[call]


@pytest.mark.parametrize("call", ["has", "lengths", "open"])
def test_a_lookup_slower_than_a_promise_is_kept_looks_again(bucket_store, seaweedfs, call):  # noqa: F811
    """A lookup that took longer than a resolved promise is kept (here both 0 s) may find
    neither the object nor its promise: it looks for the object once more."""
    _, raw, bucket = bucket_store
    answer, data = answer_when_put_during_lookup(seaweedfs, bucket, raw, call, resolved_kept=0.0)
    assert answer == {"has": [True], "lengths": [len(data)], "open": data}[call]


def test_a_promise_dated_ahead_lasts_its_time_from_when_it_is_seen(bucket_store):
    """A promise made by a host whose clock is an hour ahead is not in force for 70
    minutes: PROMISE_TTL from when this host first saw it, as a directory's promise."""
    store, raw, _ = bucket_store
    ahead, normal = sha3(b"ahead"), sha3(b"normal")
    obstore.put(raw, store.keys.promise(ahead.hex()), f"{time.time() + 3600 + PROMISE_TTL:.3f}".encode())
    obstore.put(raw, store.keys.promise(normal.hex()), f"{time.time() + PROMISE_TTL:.3f}".encode())
    assert run(store.has(ahead + normal)) == [True, True]
    first_seen = store._promise_ages._first_seen
    assert len(first_seen) == 1  # the promise dated ahead, not the other
    for version in first_seen:
        first_seen[version] -= PROMISE_TTL + 1  # as if first seen PROMISE_TTL ago
    assert run(store.has(ahead + normal)) == [False, True]


def test_a_promise_not_kept_runs_out_of_patience(bucket_store, seaweedfs):  # noqa: F811
    store, _, bucket = bucket_store
    impatient = make_store(seaweedfs, bucket, wait_timeout=1.0)
    checksum = sha3(b"never comes")
    run(store.promise(checksum))
    with pytest.raises(StillWriting):
        run(impatient.open(checksum))


def test_no_promise_for_a_present_buffer(bucket_store):
    store, raw, _ = bucket_store
    data = b"present"
    run(store.put(sha3(data), body_of(data)))
    run(store.promise(sha3(data)))
    assert keys(raw) == {key_of(sha3(data))}


# ------------------------------------------------------------------- compression
@pytest.mark.parametrize("token,suffix,compress", [("zstd", ".zst", zstd.compress),
                                                   ("gzip", ".gz", gzip.compress)])
@pytest.mark.parametrize("size", [300_000, 3 * MiB], ids=["whole", "streamed"])
def test_compressed_buffers(bucket_store, token, suffix, compress, size):
    store, raw, _ = bucket_store
    data = os.urandom(size // 2) * 2  # compresses, not to nothing
    checksum = sha3(data)
    encoded = compress(data)

    async def scenario():
        assert await store.put(checksum, body_of(encoded), token) is PutOutcome.STORED
        assert await store.lengths(checksum) == [len(data)]
        assert await store.has(checksum) == [True]
        as_stored = await store.open(checksum, frozenset({token}))
        assert (as_stored.encoding, as_stored.variant, as_stored.varies) == (token, suffix[1:], True)
        assert await read_all(as_stored) == encoded
        decoded = await store.open(checksum)
        assert (decoded.encoding, decoded.length) == (None, len(data))
        assert await read_all(decoded) == data

    run(scenario())
    assert keys(raw) == {key_of(checksum, suffix), key_of(checksum, ".BUFFERLENGTH")}
    assert bytes(obstore.get(raw, key_of(checksum, ".BUFFERLENGTH")).bytes()) == str(len(data)).encode()


@pytest.mark.parametrize("size", [3000, 3 * MiB], ids=["one PUT", "multipart"])
def test_a_compressed_put_of_a_buffer_held_in_another_form_writes_nothing(bucket_store, size):
    """As a directory answers: already present, in whichever form."""
    store, raw, _ = bucket_store
    data = os.urandom(size // 2) * 2
    checksum = sha3(data)

    async def scenario():
        assert await store.put(checksum, body_of(data)) is PutOutcome.STORED
        assert await store.put(checksum, body_of(zstd.compress(data)), "zstd") is PutOutcome.PRESENT
        assert await store.put(checksum, body_of(gzip.compress(data)), "gzip") is PutOutcome.PRESENT

    run(scenario())
    assert keys(raw) == {key_of(checksum)}


def test_a_put_replaces_a_plain_object_of_another_length(bucket_store):
    """Another program's truncated copy under the buffer's name: every GET would be a 400
    for ever; the verified PUT of the buffer replaces it."""
    store, raw, _ = bucket_store
    data = os.urandom(3000)
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data[:1000])
    with pytest.raises(CorruptBuffer):
        run(store.open(checksum))
    assert run(store.put(checksum, body_of(data))) is PutOutcome.STORED
    assert bytes(obstore.get(raw, key_of(checksum)).bytes()) == data
    assert run(read_all_of(store, checksum)) == data


@pytest.mark.parametrize("tls, setting, lean, signed", [
    (True, None, False, True), (False, None, False, True), (False, None, True, True),
    (True, "true", False, False), (False, "true", True, False)],
    ids=["https", "http", "http, lean client", "https, AWS_UNSIGNED_PAYLOAD=true", "http, AWS_UNSIGNED_PAYLOAD=true"])
def test_bodies_are_signed_unless_the_environment_says_not(s3_env, s3_bucket, tmp_path, monkeypatch,  # noqa: F811
                                                           tls, setting, lean, signed):
    """Every body goes with its SHA-256 in the request's signature, over HTTPS too (a store
    that checks it refuses a body damaged on its way), unless ``AWS_UNSIGNED_PAYLOAD=true``
    (which also turns the lean client off).  The store, here behind a relay that sees every
    request's ``x-amz-content-sha256`` (and is its HTTPS end where ``tls``), takes both."""
    context = None
    if tls:
        ca, cert, key = signed_by_a_test_ca(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # before the store's client is made
    if setting is None:
        monkeypatch.delenv("AWS_UNSIGNED_PAYLOAD", raising=False)
    else:
        monkeypatch.setenv("AWS_UNSIGNED_PAYLOAD", setting)
    relay = Relay(s3_env.s3_endpoint, ssl=context)
    large, small = os.urandom(12 * MiB), os.urandom(600_000)  # in parts of 5 MiB; in one create-only PUT

    async def scenario():
        await relay.start()
        store = make_store(s3_env, s3_bucket, endpoint=relay.url, lean=lean)
        try:
            assert (store.lean is not None) == (lean and setting is None)
            for data in (large, small):
                assert await store.put(sha3(data), body_of(data, MiB)) is PutOutcome.STORED
                assert await read_all_of(store, sha3(data)) == data
        finally:
            store.close()
            await relay.stop()

    run(scenario())
    seen = set(relay.content_sha256)
    bodies = [large[:5 * MiB], large[5 * MiB:10 * MiB], large[10 * MiB:], small]
    if signed:
        assert {hashlib.sha256(body).hexdigest().encode() for body in bodies} <= seen
        assert b"UNSIGNED-PAYLOAD" not in seen
    else:
        assert seen == {b"UNSIGNED-PAYLOAD"} and len(relay.content_sha256) >= len(bodies) + 2  # + multipart's two POSTs
    assert bytes(obstore.get(s3_env.s3_store(s3_bucket), key_of(sha3(large))).bytes()) == large


async def read_all_of(store: ObjectStore, checksum: bytes) -> bytes:
    return await read_all(await store.open(checksum))


class ConflictingProxy:
    """An HTTP proxy to the object store that answers the first ``conflicts`` create-only
    PUTs (``If-None-Match: *``) with AWS's 409 ConditionalRequestConflict, as AWS does
    while another conditional write of the key is under way; the rest it forwards."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
            b"<Message>A conflicting operation occurred.</Message></Error>")

    def __init__(self, upstream: str, conflicts: float):
        self.conflicts = conflicts
        self.answered = 0
        proxy = self
        host = upstream.split("//", 1)[1]

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                if (self.command == "PUT" and self.headers.get("if-none-match") == "*"
                        and proxy.answered < proxy.conflicts):
                    proxy.answered += 1
                    self.send_response(409)
                    self.send_header("content-type", "application/xml")
                    self.send_header("content-length", str(len(proxy.BODY)))
                    self.end_headers()
                    self.wfile.write(proxy.BODY)
                    return
                upstream_conn = http.client.HTTPConnection(host, timeout=BOUND)
                try:
                    upstream_conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        upstream_conn.putheader(name, value)
                    upstream_conn.endheaders(body)
                    reply = upstream_conn.getresponse()
                    data = reply.read()
                finally:
                    upstream_conn.close()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.endpoint = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ConflictingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(BOUND)


@pytest.mark.parametrize("lean", [True, False], ids=["lean client", "obstore"])
def test_a_conflict_is_present_only_if_the_object_is_there(s3_env, s3_bucket, monkeypatch, lean):  # noqa: F811
    """A create-only PUT refused as a conflict with no object there (another write of it
    under way, which may fail) is tried again, then unavailable: never "already present"
    for what the bucket does not hold."""
    monkeypatch.setattr(objectstore, "CONFLICT_BUDGET", 1.0)
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(2000)
    checksum = sha3(data)
    with ConflictingProxy(s3_env.s3_endpoint, conflicts=float("inf")) as proxy:
        store = make_store(s3_env, s3_bucket, endpoint=proxy.endpoint, lean=lean)
        try:
            with pytest.raises(StorageUnavailable, match="conflict|409"):
                run(store.put(checksum, body_of(data)))
        finally:
            store.close()
    assert key_of(checksum) not in keys(raw)
    with ConflictingProxy(s3_env.s3_endpoint, conflicts=2) as proxy:  # the other write failed: this one goes in
        store = make_store(s3_env, s3_bucket, endpoint=proxy.endpoint, lean=lean)
        try:
            assert run(store.put(checksum, body_of(data))) is PutOutcome.STORED
        finally:
            store.close()
    assert bytes(obstore.get(raw, key_of(checksum)).bytes()) == data


@pytest.mark.parametrize("writable", [True, False])
def test_a_missing_sidecar_is_counted_once_then_written(s3_env, s3_bucket, writable):  # noqa: F811
    """A compressed object without its length sidecar (another program's, or a PUT whose
    sidecar failed): its length is counted by decoding it, and a writable store writes the
    sidecar then, so the next count reads it; a read-only one writes nothing."""
    store = make_store(s3_env, s3_bucket, writable=writable)
    raw = s3_env.s3_store(s3_bucket)
    data = b"no sidecar beside me " * 1000
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum, ".zst"), zstd.compress(data))
    calls = store.metrics._values["hashserver_object_store_requests"]
    try:
        assert run(store.lengths(checksum)) == [len(data)]
        gets = calls[("get", "ok")]
        assert run(store.lengths(checksum)) == [len(data)]
        sidecar = key_of(checksum, ".BUFFERLENGTH")
        if writable:
            assert bytes(obstore.get(raw, sidecar).bytes()) == str(len(data)).encode()
            assert calls[("get", "ok")] == gets + 1  # the sidecar alone, not the object again
        else:
            assert keys(raw) == {key_of(checksum, ".zst")}
    finally:
        store.close()


def test_a_compressed_body_that_does_not_decode_to_its_checksum(bucket_store):
    store, raw, _ = bucket_store
    with pytest.raises(ChecksumMismatch):
        run(store.put(sha3(b"other"), body_of(zstd.compress(b"content")), "zstd"))
    assert keys(raw) == set()


@pytest.mark.parametrize("size", [3 * 256 << 10, 6 * MiB], ids=["one-put", "multipart"])
def test_a_compressed_body_that_does_not_decode_leaves_nothing(bucket_store, seaweedfs, size):  # noqa: F811
    """Hashed in a thread while the body arrives: the decoder's error still ends the PUT,
    however far the upload got, and leaves no object and no upload."""
    store, raw, bucket = bucket_store
    pieces = -(-size // MiB)
    sent = []

    async def body():
        async for piece in body_of(os.urandom(size), piece=1 * MiB):
            sent.append(len(piece))
            yield piece

    with pytest.raises(InvalidPayload) as raised:
        run(store.put(sha3(b"content"), body(), "zstd"))
    assert "truncated" not in str(raised.value)  # the decoder's own error, not the end's
    if pieces > 3:  # ended by it: a few pieces past the first, not the whole body
        assert len(sent) < pieces, (len(sent), pieces)
    assert keys(raw) == set()
    assert incomplete_uploads(seaweedfs, bucket) == []


def test_a_directory_synced_into_the_bucket_is_served(bucket_store, tmp_path):
    """What ``aws s3 sync DIR s3://bucket/prefix`` does: every file of a buffer directory
    becomes the object at its relative path."""
    from conftest import add_buffer

    store, raw, _ = bucket_store
    plain = add_buffer(tmp_path, b"plain buffer")
    packed = add_buffer(tmp_path, zstd.compress(b"packed buffer"), checksum=sha3(b"packed buffer").hex(),
                        suffix=".zst")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            obstore.put(raw, f"buffers/{path.relative_to(tmp_path)}", path.read_bytes())

    async def scenario():
        assert await read_all(await store.open(bytes.fromhex(plain))) == b"plain buffer"
        assert await read_all(await store.open(bytes.fromhex(packed))) == b"packed buffer"

    run(scenario())


# ----------------------------------------------------------------------- failures
def test_an_unreachable_object_store_is_unavailable_not_absent(s3_env):
    closed = f"http://127.0.0.1:{free_port()}"
    store = make_store(s3_env, "nobucket", endpoint=closed)
    checksum = sha3(b"x")

    async def scenario():
        for call in (store.has(checksum), store.lengths(checksum), store.open(checksum),
                     store.put(checksum, body_of(b"x"))):
            with pytest.raises(StorageUnavailable, match="nobucket"):
                await call
        return await store.health()  # checked for this call

    assert "nobucket" in run(scenario())


def test_health_is_cheap_and_cached(bucket_store):
    store, _, _ = bucket_store

    async def scenario():
        calls = store.metrics._values["hashserver_object_store_requests"]
        lists = calls[("list", "ok")]
        assert await asyncio.gather(*(store.health() for _ in range(5))) == [None] * 5
        assert await store.health() is None
        assert calls[("list", "ok")] == lists + 1  # one check, shared by the calls of the same second
        await asyncio.sleep(HEALTH_EVERY)
        assert await store.health() is None
        assert calls[("list", "ok")] == lists + 2

    run(scenario())


@pytest.mark.parametrize("size", [1000, 8 * MiB], ids=["small", "multipart"])
def test_a_compressed_put_whose_object_fails_leaves_no_sidecar(s3_env, s3_bucket, size):  # noqa: F811
    """The length sidecar is written once the object exists: the store refusing the object
    (its PUT, or the multipart upload's completion) leaves neither."""
    data = os.urandom(size)
    checksum = sha3(data)
    path = f"/{s3_bucket}/{key_of(checksum, '.zst')}".encode()

    def creates_the_object(line: bytes) -> bool:
        method, _, target = line.partition(b" ")
        if method == b"PUT":  # the object itself (its parts go to path?partNumber=...)
            return target.startswith(path + b" ")
        return method == b"POST" and target.startswith(path + b"?uploadId=")  # the upload's completion

    relay = Relay(s3_env.s3_endpoint, cut=creates_the_object)

    async def scenario():
        await relay.start()
        store = make_store(s3_env, s3_bucket, endpoint=relay.url)
        try:
            with pytest.raises(StorageUnavailable):
                await store.put(checksum, body_of(zstd.compress(data)), "zstd")
        finally:
            store.close()
            await relay.stop()

    run(scenario())
    assert keys(s3_env.s3_store(s3_bucket)) == set()
    assert incomplete_uploads(s3_env, s3_bucket) == []


def test_health_reports_the_store_as_it_is_now(s3_env, s3_bucket):  # noqa: F811
    """Not an earlier check's result: the first call after the store went away says so, and
    the first after it came back."""
    relay = Relay(s3_env.s3_endpoint)

    async def scenario():
        await relay.start()
        store = make_store(s3_env, s3_bucket, endpoint=relay.url)
        try:
            assert await store.health() is None
            await relay.stop()
            await asyncio.sleep(HEALTH_EVERY)
            gone = await store.health()
            await relay.start()
            await asyncio.sleep(HEALTH_EVERY)
            back = await store.health()
        finally:
            store.close()
            await relay.stop()
        return gone, back

    gone, back = run(scenario())
    assert gone is not None and gone.startswith("Storage unavailable") and s3_bucket in gone, gone
    assert back is None


def test_check_names_the_setting(s3_env, s3_bucket, monkeypatch):  # noqa: F811
    with pytest.raises(ConfigError, match=r"^directory='s3://no-such-bucket/p': the bucket does not exist"):
        run(make_store(s3_env, "no-such-bucket", prefix="p").check())
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=rf"^s3_endpoint='{closed}': the object store does not answer"):
        run(make_store(s3_env, s3_bucket, endpoint=closed).check())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="refused the credentials"):
        run(make_store(s3_env, s3_bucket).check())


def test_check_writes_the_prefix_marker_when_writable(s3_env, s3_bucket):  # noqa: F811
    raw = s3_env.s3_store(s3_bucket)
    run(make_store(s3_env, s3_bucket, writable=False).check())
    assert keys(raw) == set()
    run(make_store(s3_env, s3_bucket).check())
    assert keys(raw) == {"buffers/.HASHSERVER_PREFIX"}
    assert bytes(obstore.get(raw, "buffers/.HASHSERVER_PREFIX").bytes()) == b""
    run(make_store(s3_env, s3_bucket).check())  # a second host: the marker stays


def test_stale_uploads_under_the_prefix_are_aborted(bucket_store, seaweedfs):  # noqa: F811
    store, _, bucket = bucket_store
    signer = s3uploads.Signer.from_settings(bucket, seaweedfs.s3_endpoint, {})
    for key in (f"buffers/ab/ab{'0' * 62}", "elsewhere/x"):  # a buffer's key, left by a killed host
        s3uploads.send(signer.request("POST", f"/{bucket}/{key}", {"uploads": ""}))
    assert run(store.abort_stale_uploads(3600)) == 0  # younger than that: kept
    time.sleep(1.1)  # S3 dates an upload to the second
    assert run(store.abort_stale_uploads(1)) == 1
    assert [u.key for u in incomplete_uploads(seaweedfs, bucket)] == ["elsewhere/x"]


def test_a_vanished_bucket_is_unavailable_not_absent(s3_env, s3_bucket):  # noqa: F811
    """A HEAD in a deleted bucket is a plain 404: "absent" is said only once the bucket
    answers a listing (at most once a second, as the directory store stats its directory)."""
    store = make_store(s3_env, s3_bucket)
    checksum = sha3(b"x")
    assert run(store.has(checksum)) == [False]
    signer = s3uploads.Signer.from_settings(s3_bucket, s3_env.s3_endpoint, {})
    s3uploads.send(signer.request("DELETE", f"/{s3_bucket}", {}))
    time.sleep(1.1)  # past the cached check

    async def scenario():
        for call in (store.has(checksum), store.lengths(checksum), store.open(checksum)):
            with pytest.raises(StorageUnavailable, match="does not exist"):
                await call

    run(scenario())


@pytest.mark.parametrize("page", [1000, 2], ids=["one-page", "pages-run-out"])
def test_a_large_batch_lists_what_it_does_not_find(bucket_store, monkeypatch, page):
    """With many buffers missing from a batch, their compressed forms and promises are
    looked for by listing their directories; when the listing would take too many pages,
    the rest by HEADs: the answers are the same either way."""
    import hashserver.objectstore as objectstore

    monkeypatch.setattr(objectstore, "LIST_PAGE", page)
    store, raw, _ = bucket_store
    plain = [os.urandom(100) for _ in range(10)]
    packed = [os.urandom(50) * 4 for _ in range(10)]
    promised = [sha3(b"promised %d" % i) for i in range(5)]
    absent = [sha3(b"absent %d" % i) for i in range(40)]
    for i in range(40):  # neighbours in the directories listed
        for tail in "01":
            obstore.put(raw, key_of(sha3(b"absent %d" % i)) + tail, b"")

    async def scenario():
        for data in plain:
            await store.put(sha3(data), body_of(data))
        for data in packed:
            await store.put(sha3(data), body_of(zstd.compress(data)), "zstd")
        for checksum in promised:
            await store.promise(checksum)
        batch = b"".join([*map(sha3, plain), *map(sha3, packed), *promised, *absent])
        assert await store.has(batch) == [True] * 25 + [False] * 40
        assert await store.has(batch, promised=False) == [True] * 20 + [False] * 45
        assert await store.lengths(batch) == [100] * 10 + [200] * 10 + [1] * 5 + [0] * 40

    run(scenario())
    calls = store.metrics._values["hashserver_object_store_requests"]  # every call is counted
    assert calls[("list", "ok")] > 0 and calls[("put", "ok")] > 0
    if page == 2:  # listings that run out of pages: HEADs alone for a while
        assert calls[("head", "absent")] > 0 and store._heads_until > time.monotonic()


def test_listings_of_many_keys_per_checksum_give_way_to_heads(bucket_store, monkeypatch):
    """A listing that returns more than LIST_WORTH keys per checksum it answers costs more
    than HEADs would (a large bucket): the next batches go by HEADs, with the same answers."""
    import hashserver.objectstore as objectstore

    monkeypatch.setattr(objectstore, "LIST_WORTH", 4)
    store, raw, _ = bucket_store
    present = [os.urandom(100) for _ in range(8)]
    absent = [sha3(b"absent %d" % i) for i in range(16)]
    for i in range(16):  # neighbours: 6 keys listed per checksum
        for tail in "012345":
            obstore.put(raw, key_of(sha3(b"absent %d" % i)) + tail, b"")
    calls = store.metrics._values["hashserver_object_store_requests"]  # every call is counted
    batch = b"".join([*map(sha3, present), *absent])

    async def scenario():
        for data in present:
            await store.put(sha3(data), body_of(data))
        first = await store.has(batch)
        lists, heads = calls[("list", "ok")], calls[("head", "ok")] + calls[("head", "absent")]
        second = await store.has(batch)
        return first, second, lists, heads

    first, second, lists, heads = run(scenario())
    assert first == second == [True] * 8 + [False] * 16
    assert lists > 0 and store._heads_until > time.monotonic()
    assert calls[("list", "ok")] - lists <= 1  # the second batch: its promises' directory at most
    assert calls[("head", "ok")] + calls[("head", "absent")] - heads >= 24  # a HEAD per checksum at least


# -------------------------------------------------------------- through HTTP
def test_through_http_a_corrupt_object_is_never_a_complete_200(serve, s3_env, s3_bucket, tmp_path):  # noqa: F811
    """A real server on the bucket: a small object is verified before the answer (400,
    naming the object); one above 64 MiB is streamed, and the connection ends before its
    last byte."""
    raw = s3_env.s3_store(s3_bucket)
    small, large = os.urandom(1000), os.urandom(65 * MiB)
    for data in (small, large):
        obstore.put(raw, key_of(sha3(data), prefix="")[1:], data[:-1] + bytes([data[-1] ^ 1]))
    server = serve(f"s3://{s3_bucket}", "--s3-endpoint", s3_env.s3_endpoint, "--cache-dir", str(tmp_path / "tier"))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    connection.request("GET", f"/{sha3(small).hex()}")
    response = connection.getresponse()
    where = f"s3://{s3_bucket}/{key_of(sha3(small), prefix='')[1:]}"
    assert (response.status, json.loads(response.read())) == (
        400, {"message": f"File corruption: file at path {where} does not have the correct SHA3-256 checksum."})
    connection.request("GET", f"/{sha3(large).hex()}")
    response = connection.getresponse()
    assert (response.status, response.length) == (200, len(large))
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    log = server.output()
    assert f"{where.rsplit('/', 1)[0]}/" in log and "response cut short" in log  # one line, named
    assert "Traceback" not in log and "smaller than content-length" not in log, log[-4000:]


# ------------------------------------------------------------------ a part's spool
def full_under(directory, monkeypatch, unusable: str | None = "unset") -> None:
    """A part's spool with ``directory`` full: its files are /dev/full (every write fails
    with the kernel's ENOSPC); ``unusable``: a place where no file can be made at all."""
    import hashserver.objectstore as objectstore

    spool_file = objectstore._spool_file
    full = None if directory is None else str(directory)  # None: the system's temporary directory

    def spool(place: str | None):
        if place == full:
            return open("/dev/full", "r+b", buffering=0)
        if place == unusable:
            raise PermissionError(13, "Permission denied")
        return spool_file(place)

    monkeypatch.setattr(objectstore, "_spool_file", spool)


def test_a_part_spooled_where_there_is_no_room_is_spooled_in_the_system_temporary_directory(
        s3_env, s3_bucket, tmp_path, monkeypatch, caplog):  # noqa: F811
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(3 * MiB)  # above whole_get: a part is spooled
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data)
    full_under(tmp_path, monkeypatch)
    store = make_store(s3_env, s3_bucket, spool_dir=str(tmp_path))

    async def scenario():
        readable = await store.open(checksum, want=Want.PART)
        with readable:
            assert readable.file is not None and readable.length == len(data)
            return readable.file.read()

    assert run(scenario()) == data
    assert f"cannot spool s3://{s3_bucket}/{key_of(checksum)} under {tmp_path}" in caplog.text


def test_a_part_with_no_room_to_spool_it_anywhere_is_unavailable(s3_env, s3_bucket, monkeypatch):  # noqa: F811
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(3 * MiB)
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data)
    full_under(None, monkeypatch)
    store = make_store(s3_env, s3_bucket)
    with pytest.raises(StorageUnavailable, match=r"cannot hold s3://.* for a part of it under .*: "
                                                 r"No space left on device"):
        run(store.open(checksum, want=Want.PART))


def test_a_part_with_a_full_spool_and_no_temporary_directory_is_unavailable(s3_env, s3_bucket, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    raw = s3_env.s3_store(s3_bucket)
    data = os.urandom(3 * MiB)
    checksum = sha3(data)
    obstore.put(raw, key_of(checksum), data)
    full_under(tmp_path, monkeypatch, unusable=None)
    store = make_store(s3_env, s3_bucket, spool_dir=str(tmp_path))
    with pytest.raises(StorageUnavailable, match=r"cannot hold s3://.* for a part of it under .*: Permission denied"):
        run(store.open(checksum, want=Want.PART))


def test_a_spool_write_cut_short_by_the_kernel_is_an_error_not_a_short_file(tmp_path):
    """An unbuffered write may take part of its bytes and say nothing (here: a file size
    limit, as a disk filling up does); the spool writes the rest, and the next write fails."""
    script = (
        "import os, resource, signal, sys, tempfile\n"
        "from hashserver.objectstore import _write_all\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "spool = tempfile.TemporaryFile(dir=sys.argv[1], buffering=0)\n"
        "_write_all(spool, bytes(512 << 10))\n"
        "try:\n"
        "    _write_all(spool, bytes(768 << 10))\n"
        "except OSError as exc:\n"
        "    print('refused', spool.tell(), exc.errno)\n"
        "else:\n"
        "    print('written', spool.tell())\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.split()[:2] == ["refused", str(1 << 20)], out.stdout + out.stderr


# ------------------------------------------------------------------ bounded calls
def test_concurrent_batches_share_one_bound_on_calls(s3_env, s3_bucket):  # noqa: F811
    """Each call holds a connection (a descriptor) until its answer: 20 batches at once
    make no more calls at once than one batch may, whatever their number.  Connections
    open at once: at most HEAD_CONCURRENCY calls, each a HEAD (obstore; a missing
    buffer's two compressed forms are looked for together: twice that many) or a GET
    of a promise (the lean client), while the other client's connections of an
    earlier phase stay open, idle, for the next calls (764 without the shared bound)."""
    relay = Relay(s3_env.s3_endpoint)
    batches = [b"".join(sha3(b"missing %d %d" % (i, j)) for j in range(LIST_MIN - 1)) for i in range(20)]

    async def scenario():
        await relay.start()
        store = make_store(s3_env, s3_bucket, endpoint=relay.url)
        try:
            answers = await asyncio.gather(*(store.has(batch) for batch in batches))
        finally:
            store.close()
            await relay.stop()
        assert answers == [[False] * (LIST_MIN - 1)] * len(batches)

    run(scenario())
    assert relay.most_connections <= 3 * HEAD_CONCURRENCY + 8, relay.most_connections
