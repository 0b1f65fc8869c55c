"""The local cache tier (hashserver.tiered) in front of another store, and its
bound (hashserver.eviction): in process, with a buffer directory as the back
store, both assembled as a worker assembles its storage."""

from __future__ import annotations

import asyncio
import gzip
import logging
import mmap
import multiprocessing
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from seaweedfs import s3_bucket, seaweedfs  # noqa: F401  (fixtures)
from test_objectstore import s3_env  # noqa: F401  (a fixture)

from hashserver import Config, tiered
from hashserver.checksum import Hasher
from hashserver.directory import DirectoryStore
from hashserver.eviction import SLOTS, Entry, Recency, TierEvictor, evict, hold_for_sending, scan_tier
from hashserver.layout import PrefixLayout
from hashserver.runtime import MainProcess, Shared, open_storage, tier_config
from hashserver.storage import (
    ChecksumMismatch,
    CorruptBuffer,
    Fast,
    PutOutcome,
    Readable,
    ReadOnly,
    StorageUnavailable,
)
from hashserver.tiered import TieredStore

from conftest import add_buffer, buffer_path, leftovers, resident_bytes, sha3


class Stores:
    """A tiered store over two directories: ``tier`` (the local tier) and ``back``."""

    def __init__(self, root: Path, back_writable: bool = True, back=None):
        self.tier, self.back_dir = root / "tier", root / "back"
        self.tier.mkdir()
        self.back_dir.mkdir()
        self.mains: list[MainProcess] = []
        self.local = self._open(tier_config(Config(str(self.back_dir)), str(self.tier)))
        self.back = back or self._open(Config(str(self.back_dir), writable=back_writable))
        self.added = multiprocessing.Value("q", 0)
        self.recency = Recency.create(0)
        self.store = TieredStore(self.local, self.back, stored=self._stored, recency=self.recency)

    def _open(self, config: Config) -> DirectoryStore:
        main = MainProcess.start(config)
        self.mains.append(main)
        return open_storage(main.config, Shared.create(main))

    def _stored(self, size: int) -> None:
        self.added.value += size

    def in_tier(self, checksum: str, suffix: str = "") -> bool:
        return buffer_path(self.tier, checksum, suffix=suffix).exists()

    def close(self) -> None:
        self.store.close()
        for main in self.mains:
            main.stop()


@pytest.fixture
def hashserver_log(caplog):
    """caplog for the server's logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("hashserver")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def stores(tmp_path):
    made: list[Stores] = []

    def make(**options) -> Stores:
        made.append(Stores(tmp_path, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def stray(directory: Path) -> list[str]:
    """Temporary files and locks: what an interrupted or refused write may leave."""
    return [path for path in leftovers(directory) if not path.endswith((".gz", ".zst", ".BUFFERLENGTH"))]


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def raw(checksum: str) -> bytes:
    return bytes.fromhex(checksum)


async def read_all(readable) -> bytes:
    with readable:
        if readable.content is not None:
            return readable.content
        if readable.file is not None:
            return readable.file.read()
        return b"".join([chunk async for chunk in readable.chunks()])


# ------------------------------------------------------------------ reading
def test_has_and_open_fill_the_tier_from_the_back_store(stores):
    s = stores()
    data = b"in the back store only"
    cs = add_buffer(s.back_dir, data)
    absent = sha3(b"nowhere")

    async def scenario():
        assert s.store.peek(raw(cs)) is Fast.REGULAR  # never ABSENT: the back store may hold it
        assert s.store.peek(raw(absent)) is Fast.REGULAR
        assert await s.store.has(raw(cs) + raw(absent)) == [True, False]
        assert await s.store.lengths(raw(absent) + raw(cs)) == [0, len(data)]
        assert not s.in_tier(cs)  # presence alone does not fill the tier
        assert await read_all(await s.store.open(raw(cs))) == data
        await s.store.settled()
        assert s.in_tier(cs) and s.added.value == len(data)
        os.unlink(buffer_path(s.back_dir, cs))  # from now on, only the tier holds it
        assert await s.store.has(raw(cs)) == [True]
        assert await s.store.lengths(raw(cs)) == [len(data)]
        assert await read_all(await s.store.open(raw(cs))) == data
        assert s.store.peek(raw(cs)) == data  # read once from the tier, now in memory
        assert await s.store.open(raw(absent)) is None

    asyncio.run(scenario())
    assert stray(s.tier) == []


def test_a_miss_is_looked_up_in_the_tier_once(stores):
    """The hot path's peek, the route's and open ask the tier about one request: after
    the first says absent, the others take it for granted (no look on disk); once the
    fill is done, the tier answers again."""
    s = stores()
    data = b"only in the back store, for now"
    cs = add_buffer(s.back_dir, data)
    looks: list[bytes] = []
    find = s.local.lookups.find
    s.local.lookups.find = lambda checksum: looks.append(checksum) or find(checksum)

    async def scenario():
        assert s.store.peek(raw(cs)) is Fast.REGULAR
        first = len(looks)
        assert s.store.peek(raw(cs)) is Fast.REGULAR
        assert await read_all(await s.store.open(raw(cs))) == data
        assert len(looks) == first
        await s.store.settled()
        assert s.in_tier(cs)
        assert await read_all(await s.store.open(raw(cs))) == data  # from the tier
        assert len(looks) > first

    asyncio.run(scenario())


def test_a_miss_takes_only_a_look_at_the_tiers_own_files(stores):
    """Under a storm of misses the tier's directories keep changing, so the exact
    lookup (drain the watch, stat the directory, its locks, the main directory)
    is not taken for a buffer the index lacks: a stat of each file a fill could
    have left decides.  A buffer filled since the last rescan is found so."""
    s = stores()
    data = b"filled after the tier's index was built"
    cs = add_buffer(s.back_dir, data)
    exact: list[str] = []
    for name in ("find", "stamp", "lookup"):
        method = getattr(s.local.lookups, name)
        setattr(s.local.lookups, name, lambda *a, _m=method, _n=name, **k: exact.append(_n) or _m(*a, **k))

    async def scenario():
        assert s.store.peek(raw(sha3(b"absent"))) is Fast.REGULAR
        assert await s.store.open(raw(sha3(b"absent too"))) is None
        assert exact == []
        add_buffer(s.tier, gzip.compress(data), checksum=cs, suffix=".gz")  # as a fill of another worker
        os.unlink(buffer_path(s.back_dir, cs))  # so only the tier can answer
        assert await read_all(await s.store.open(raw(cs))) == data

    asyncio.run(scenario())


def test_extra_directories_are_looked_up_exactly(tmp_path):
    """A file another program copies into an extra directory is found at once,
    not after the index's rescan (the cheap look is the tier's own)."""
    extra, back_dir, tier = tmp_path / "extra", tmp_path / "back", tmp_path / "tier"
    for d in (extra, back_dir, tier):
        d.mkdir()
    (extra / ".HASHSERVER_PREFIX").write_bytes(b"")
    mains = [MainProcess.start(c) for c in (
        tier_config(Config(str(back_dir), extra_dirs=[str(extra)]), str(tier)), Config(str(back_dir)))]
    try:
        local, back = (open_storage(m.config, Shared.create(m)) for m in mains)
        store = TieredStore(local, back)
        data = b"copied into the extra directory"

        async def scenario():
            cs = sha3(data)
            assert await store.open(raw(cs)) is None
            add_buffer(extra, data)
            store._missed.clear()  # past the second a miss is remembered for
            assert store.peek(raw(cs)) == data

        asyncio.run(scenario())
        store.close()
    finally:
        for main in mains:
            main.stop()


def test_large_buffer_from_an_open_file_fills_the_tier(stores):
    s = stores()
    data = os.urandom(3 << 20)
    cs = add_buffer(s.back_dir, data)

    async def scenario():
        readable = await s.store.open(raw(cs))
        assert readable.file is not None  # sent zero-copy as before; the tier reads its own descriptor
        assert await read_all(readable) == data
        await s.store.settled()

    asyncio.run(scenario())
    assert buffer_path(s.tier, cs).read_bytes() == data
    assert s.added.value == len(data)


def test_a_decoded_stream_fills_the_tier_with_the_stored_form(stores):
    """The tier holds a buffer as the back store holds it (a compressed one compressed, with
    its representations and their headers), never its decoded content: a compressed buffer
    sent decoded as it streams is read again, as stored, into the tier once the stream ended."""
    s = stores()
    data = b"compressed in the back store " * 1000
    cs = sha3(data)
    add_buffer(s.back_dir, gzip.compress(data), checksum=cs, suffix=".gz")

    async def scenario():
        readable = await s.store.open(raw(cs))  # gzip not accepted: decoded chunks
        assert readable.chunks is not None and readable.encoding is None
        assert await read_all(readable) == data
        await s.store.settled()
        assert s.in_tier(cs, ".gz") and not s.in_tier(cs)
        assert buffer_path(s.tier, cs, suffix=".gz").read_bytes() == gzip.compress(data)
        os.unlink(buffer_path(s.back_dir, cs, suffix=".gz"))
        answer = await s.store.open(raw(cs), frozenset({"gzip"}))  # from the tier, as stored
        assert answer.encoding == "gzip" and gzip.decompress(await read_all(answer)) == data

    asyncio.run(scenario())


def test_a_decoded_stream_that_ends_once_the_tier_holds_the_buffer_reads_nothing_again(stores):
    s = stores()
    data = b"read decoded twice at once " * 1000
    cs = sha3(data)
    add_buffer(s.back_dir, gzip.compress(data), checksum=cs, suffix=".gz")
    back_open = s.back.open
    opened: list[frozenset] = []

    async def counting_open(checksum, accepted=frozenset(), *args, **kwargs):
        opened.append(accepted)
        return await back_open(checksum, accepted, *args, **kwargs)

    s.store.back.open = counting_open

    async def scenario():
        first, second = await s.store.open(raw(cs)), await s.store.open(raw(cs))  # both before any fill
        assert await read_all(first) == data
        await s.store.settled()
        assert s.in_tier(cs, ".gz")
        assert await read_all(second) == data
        await s.store.settled()

    asyncio.run(scenario())
    assert len(opened) == 3  # the two reads, and one of the stored form


def test_a_decoded_stream_cut_before_its_end_fills_nothing(stores):
    s = stores()
    data = os.urandom(3 << 20)  # chunks of 1 MiB, not compressible: several of them
    cs = sha3(data)
    add_buffer(s.back_dir, gzip.compress(data, compresslevel=1), checksum=cs, suffix=".gz")

    async def scenario():
        readable = await s.store.open(raw(cs))
        chunks = readable.chunks()
        await chunks.__anext__()
        await chunks.aclose()  # the client went away
        readable.close()
        await s.store.settled()

    asyncio.run(scenario())
    assert not any(cs in name for _, _, names in os.walk(s.tier) for name in names)


def test_stream_stored_as_sent_when_the_client_accepts_its_encoding(stores):
    s = stores()
    data = b"sent as stored " * 1000
    cs = sha3(data)
    add_buffer(s.back_dir, gzip.compress(data), checksum=cs, suffix=".gz")

    async def scenario():
        readable = await s.store.open(raw(cs), frozenset({"gzip"}))
        assert readable.encoding == "gzip"
        await read_all(readable)
        await s.store.settled()
        assert s.in_tier(cs, ".gz") and s.in_tier(cs, ".BUFFERLENGTH")
        os.unlink(buffer_path(s.back_dir, cs, suffix=".gz"))
        assert await s.store.lengths(raw(cs)) == [len(data)]
        assert await read_all(await s.store.open(raw(cs))) == data  # decoded from the tier's copy

    asyncio.run(scenario())


def test_stream_cut_before_its_end_leaves_nothing_in_the_tier(page_cache_path, s3_env, s3_bucket):  # noqa: F811
    """A bucket's object read as it streams (above ``whole_get``): the tier keeps it only
    once the stream ended, written past the page cache, not hashed again."""
    import obstore
    from test_objectstore import make_store

    s = Stores(page_cache_path, back=make_store(s3_env, s3_bucket, prefix="", whole_get=1 << 20))
    counting = s.local.writer.hasher = CountingHasher()
    data = os.urandom(3 << 20)
    cs = sha3(data)
    obstore.put(s3_env.s3_store(s3_bucket), f"{cs[:2]}/{cs}", data)

    async def scenario():
        readable = await s.store.open(raw(cs))
        assert readable.chunks is not None
        stream = readable.chunks()
        await stream.__anext__()
        await stream.aclose()  # what a cut connection or a Range's end does
        await s.store.settled()
        await asyncio.sleep(0.2)  # the writer's own clean-up after the stream's end
        assert not s.in_tier(cs)
        assert await read_all(await s.store.open(raw(cs))) == data  # then a whole read fills it
        await s.store.settled()
        assert s.in_tier(cs)

    try:
        asyncio.run(scenario())
        assert resident_bytes(buffer_path(s.tier, cs)) <= mmap.PAGESIZE
        assert buffer_path(s.tier, cs).read_bytes() == data
        assert counting.started == 0
    finally:
        s.close()
    assert stray(s.tier) == []


def test_corrupt_tier_file_is_removed_and_read_from_the_back_store(stores, hashserver_log):
    s = stores()
    data = b"right content"
    cs = add_buffer(s.back_dir, data)
    add_buffer(s.tier, b"wrong content", checksum=cs)

    async def scenario():
        assert await read_all(await s.store.open(raw(cs))) == data
        await s.store.settled()

    asyncio.run(scenario())
    assert "File corruption" in hashserver_log.text
    assert buffer_path(s.tier, cs).read_bytes() == data


# ------------------------------------------------------------------ writing
def test_put_goes_to_the_back_store_then_the_tier(stores, monkeypatch):
    s = stores()
    steps = []  # the tier writer's hand-offs to its thread
    write_all = tiered.DirectFile.write_all
    monkeypatch.setattr(tiered.DirectFile, "write_all", lambda self, pieces: steps.append(len(pieces))
                        or write_all(self, pieces))
    data = b"stored through the tier"
    cs = sha3(data)

    async def scenario():
        assert await s.store.put(raw(cs), chunks(data[:5], data[5:])) is PutOutcome.STORED
        assert buffer_path(s.back_dir, cs).read_bytes() == data
        await s.store.settled()
        assert s.in_tier(cs)
        assert await s.store.put(raw(cs), chunks(data)) is PutOutcome.PRESENT
        wrong = sha3(b"something else")
        with pytest.raises(ChecksumMismatch):
            await s.store.put(raw(wrong), chunks(data))
        await s.store.settled()
        assert not s.in_tier(wrong) and not buffer_path(s.back_dir, wrong).exists()
        compressed = b"compressed upload " * 100
        ccs = sha3(compressed)
        assert await s.store.put(raw(ccs), chunks(gzip.compress(compressed)), "gzip") is PutOutcome.STORED
        await s.store.settled()
        assert s.in_tier(ccs, ".gz") and buffer_path(s.back_dir, ccs, suffix=".gz").exists()
        large = os.urandom(3 << 20)  # past the size kept in memory: the tier's writer takes it as it passes
        lcs = sha3(large)
        parts = [large[i:i + 65536] for i in range(0, len(large), 65536)]
        steps.clear()
        assert await s.store.put(raw(lcs), chunks(*parts)) is PutOutcome.STORED
        await s.store.settled()
        assert buffer_path(s.tier, lcs).read_bytes() == large
        assert steps == [16, 16, 16]  # its 48 chunks written a MiB at a time, not one by one

    asyncio.run(scenario())
    assert stray(s.tier) == [] and stray(s.back_dir) == []


class CountingHasher(Hasher):
    """The tier writer's hasher, counting the hashes it starts."""

    def __init__(self):
        super().__init__()
        self.started = 0

    def new(self):
        self.started += 1
        return super().new()


def test_a_fill_the_back_store_proved_is_not_hashed_again(page_cache_path):
    """Plain buffers entering the tier from an open file and a large PUT (a stream from
    the bucket: test_stream_cut_before_its_end_leaves_nothing_in_the_tier): written and
    published past the page cache (directwrite: at most the last partial page cached),
    the tier's hasher never started."""
    s = Stores(page_cache_path)
    counting = s.local.writer.hasher = CountingHasher()
    from_file = os.urandom(3 << 20)
    fcs = add_buffer(s.back_dir, from_file)
    put = os.urandom(3 << 20)
    pcs = sha3(put)

    async def scenario():
        assert await read_all(await s.store.open(raw(fcs))) == from_file
        assert await s.store.put(raw(pcs), chunks(*(put[i:i + 65536] for i in range(0, len(put), 65536)))) \
            is PutOutcome.STORED
        await s.store.settled()

    asyncio.run(scenario())
    for checksum in (fcs, pcs):  # before anything reads them
        assert resident_bytes(buffer_path(s.tier, checksum)) <= mmap.PAGESIZE
    for checksum, data in ((fcs, from_file), (pcs, put)):
        assert buffer_path(s.tier, checksum).read_bytes() == data
    assert counting.started == 0
    assert s.added.value == len(from_file) + len(put)
    assert stray(s.tier) == []
    s.close()


class CorruptBack:
    """A back store whose streams end as the object store's end on a wrong object:
    CorruptBuffer before the last chunk."""

    def __init__(self, back: DirectoryStore):
        self.back = back
        self.writable = True

    async def open(self, checksum, accepted=frozenset(), want=None):
        async def chunks():
            yield b"the first part of a wrong object " * 1000
            raise CorruptBuffer("File corruption: file at path s3://bucket/key does not have the correct "
                                "SHA3-256 checksum.")

        return Readable(64_000, chunks=chunks)

    def __getattr__(self, name):
        return getattr(self.back, name)


def test_a_corrupt_stream_never_enters_the_tier(stores):
    s = stores()
    s.store.back = CorruptBack(s.back)
    cs = sha3(b"a buffer the bucket holds wrong")

    async def scenario():
        readable = await s.store.open(raw(cs))
        with pytest.raises(CorruptBuffer):
            await read_all(readable)
        await s.store.settled()

    asyncio.run(scenario())
    assert not s.in_tier(cs)
    assert stray(s.tier) == []


class RefusingBack:
    """A back store whose PUT fails after reading the whole body (the bucket
    refusing the upload at its end): the tier must not keep the buffer."""

    def __init__(self, back: DirectoryStore):
        self.back = back
        self.writable = True

    async def put(self, checksum, body, content_encoding=None):
        async for _ in body:
            pass
        raise StorageUnavailable("Storage unavailable: the bucket refused the upload")

    def __getattr__(self, name):
        return getattr(self.back, name)


def test_put_the_back_store_refuses_leaves_nothing_in_the_tier(stores):
    s = stores()
    s.store = TieredStore(s.local, RefusingBack(s.back), stored=s._stored)
    data = b"refused by the bucket"
    cs = sha3(data)

    async def scenario():
        with pytest.raises(StorageUnavailable):
            await s.store.put(raw(cs), chunks(data))
        await s.store.settled()
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert not s.in_tier(cs) and s.added.value == 0
    assert stray(s.tier) == []


def test_read_only_back_store_refuses_put_but_fills_the_tier_on_reads(stores):
    s = stores(back_writable=False)
    data = b"read through a read-only server"
    cs = add_buffer(s.back_dir, data)

    async def scenario():
        assert s.store.writable is False
        with pytest.raises(ReadOnly):
            await s.store.put(raw(cs), chunks(data))
        with pytest.raises(ReadOnly):
            await s.store.promise(raw(cs))
        assert await read_all(await s.store.open(raw(cs))) == data
        await s.store.settled()

    asyncio.run(scenario())
    assert s.in_tier(cs)


def test_promise_is_the_back_stores(stores):
    s = stores()
    data = b"promised"
    cs = sha3(data)

    async def scenario():
        assert await s.store.promise(raw(cs)) > 0
        assert await s.store.has(raw(cs)) == [True]
        assert await s.store.has(raw(cs), promised=False) == [False]
        assert await s.store.lengths(raw(cs)) == [1]

    asyncio.run(scenario())
    assert not s.in_tier(cs)


# ------------------------------------------------------------ a failing tier
def test_failing_tier_is_logged_and_requests_go_to_the_back_store(stores, hashserver_log):
    s = stores()
    kept = add_buffer(s.back_dir, b"in the back store")
    data = b"stored while the tier fails"
    cs = sha3(data)
    shutil.rmtree(s.tier)

    async def scenario():
        assert s.store.peek(raw(kept)) is Fast.REGULAR
        assert await s.store.has(raw(kept) + raw(cs)) == [True, False]
        assert await s.store.lengths(raw(kept)) == [17]
        assert await read_all(await s.store.open(raw(kept))) == b"in the back store"
        assert await s.store.put(raw(cs), chunks(data)) is PutOutcome.STORED
        await s.store.settled()
        assert await s.store.has(raw(cs)) == [True]
        assert await s.store.health() is None  # the server is healthy: the back store is

    asyncio.run(scenario())
    assert "local tier failing" in hashserver_log.text
    assert buffer_path(s.back_dir, cs).read_bytes() == data


# ------------------------------------------------------------------ the bound
def fill_tier(directory: Path, count: int, size: int, first: int = 0) -> list[str]:
    """``count`` buffers of ``size`` bytes, each used a second after the last."""
    made = []
    for i in range(first, first + count):
        cs = add_buffer(directory, i.to_bytes(4, "big") * (size // 4))
        path = buffer_path(directory, cs)
        os.utime(path, ns=(1_000_000_000 * (i + 1), path.stat().st_mtime_ns))
        made.append(cs)
    return made


def test_scan_keeps_only_the_oldest_worth_the_target(tmp_path):
    made = fill_tier(tmp_path, 20, 1024)
    layout = PrefixLayout(str(tmp_path))
    scan = scan_tier(layout, 3000)
    assert scan.total == 20 * 1024
    assert [Path(entry.paths[0]).name for entry in scan.oldest] == made[:3]
    assert scan_tier(layout, 0).oldest == []
    assert len(scan_tier(layout, 10**9).oldest) == 20


def test_evictor_keeps_the_bound_least_recently_used_out_first(stores):
    """3x the bound read through the tier; one buffer read between every two
    others survives (its file the oldest: the tier's stamps keep it), and
    the tier stays within its bound."""
    s = stores()
    size, limit = 16 * 1024, 10 * 16 * 1024
    evictor = TierEvictor(PrefixLayout(str(s.tier)), limit, s.added, s.recency)
    hot = add_buffer(s.back_dir, b"hot" * (size // 3))
    others = [add_buffer(s.back_dir, i.to_bytes(4, "big") * (size // 4)) for i in range(30)]
    base = int(time.time()) - 10**6

    async def scenario():
        await read_all(await s.store.open(raw(hot)))
        await s.store.settled()
        date_back(s.tier, hot, base)
        evicted = 0
        for n, cs in enumerate(others):
            for checksum in (hot, cs):
                await read_all(await s.store.open(raw(checksum)))
                await s.store.settled()
            date_back(s.tier, cs, base + 1 + n)
            date_back(s.tier, hot, base)  # undo the kernel's own update when the tier read it
            evicted += evictor.check()
            assert evictor.estimate <= limit
            assert scan_tier(evictor.layout, 0).total <= limit
        return evicted

    evicted = asyncio.run(scenario())
    assert evicted >= 15
    assert s.in_tier(hot) and s.in_tier(others[-1]) and not s.in_tier(others[0])
    assert stray(s.tier) == []


def date_back(tier: Path, checksum: str, seconds: int) -> None:
    """Set the access time of a tier file: as if stored at that time."""
    path = buffer_path(tier, checksum)
    os.utime(path, ns=(seconds * 1_000_000_000, path.stat().st_mtime_ns))


def test_recency_slots_follow_the_bound_and_last_stamp():
    assert len(Recency.create(0).table) == SLOTS[0]
    assert len(Recency.create(10 * 1024**3).table) == 1 << 20
    assert len(Recency.create(1 << 60).table) == SLOTS[1]
    recency = Recency.create(0)
    cs = sha3(b"used")
    assert recency.last_used_ns(cs) == 0
    recency.used(raw(cs))
    assert abs(recency.last_used_ns(cs) / 1e9 - time.time()) < 5


def test_evictor_corrects_its_estimate_by_scanning(tmp_path):
    fill_tier(tmp_path, 10, 1024)
    added = multiprocessing.Value("q", 0)
    evictor = TierEvictor(PrefixLayout(str(tmp_path)), 8 * 1024, added, rescan_every=3600)
    assert evictor.check() == 3  # the first check scans: down to 90% of the bound
    assert evictor.estimate == 7 * 1024
    fill_tier(tmp_path, 10, 1024, first=100)  # written by someone else: not counted...
    assert evictor.check() == 0
    added.value += 10 * 1024  # ...until the workers' count says the bound is passed
    assert evictor.check() > 0
    assert scan_tier(evictor.layout, 0).total <= 8 * 1024


def test_without_filling_the_local_directories_are_only_read(stores):
    """--cache-size 0 with --extra-dirs: the extra directories answer first, nothing is stored."""
    s = stores()
    s.store = TieredStore(s.local, s.back, fill=False, stored=s._stored)
    local = add_buffer(s.tier, b"held locally")
    data = b"in the back store"
    cs = add_buffer(s.back_dir, data)

    async def scenario():
        assert await read_all(await s.store.open(raw(local))) == b"held locally"
        assert await read_all(await s.store.open(raw(cs))) == data
        assert await s.store.put(raw(sha3(b"new")), chunks(b"new")) is PutOutcome.STORED
        await s.store.settled()

    asyncio.run(scenario())
    assert not s.in_tier(cs) and not s.in_tier(sha3(b"new")) and s.added.value == 0


@pytest.mark.parametrize("kind", ["small", "large"])
def test_fills_under_way_are_bounded(stores, monkeypatch, kind):
    """Small plain buffers by the bytes of those under way, larger ones by their number."""
    if kind == "small":
        monkeypatch.setattr(tiered, "SMALL_PENDING", 2 * len(b"buffer 0"))
        monkeypatch.setattr(tiered, "MAX_FILLS", 0)  # not what bounds small fills
    else:
        monkeypatch.setattr(tiered, "SMALL_FILL", 4)  # "buffer i" is large now
        monkeypatch.setattr(tiered, "MAX_FILLS", 2)
    s = stores()
    buffers = {add_buffer(s.back_dir, f"buffer {i}".encode()): f"buffer {i}".encode() for i in range(5)}

    async def scenario():
        for checksum, data in buffers.items():  # no fill ends before the last read
            assert await read_all(await s.store.open(raw(checksum))) == data
        await s.store.settled()
        assert sum(s.in_tier(checksum) for checksum in buffers) == 2
        for checksum in buffers:  # missed again: filled this time
            await read_all(await s.store.open(raw(checksum)))
            await s.store.settled()

    asyncio.run(scenario())
    assert all(s.in_tier(checksum) for checksum in buffers)


def test_a_put_beyond_the_bound_is_not_stored_in_the_tier(stores, monkeypatch):
    monkeypatch.setattr(tiered, "SMALL_PENDING", 10)
    s = stores()
    data = b"more than ten bytes"

    async def scenario():
        assert await s.store.put(raw(sha3(data)), chunks(data)) is PutOutcome.STORED
        await s.store.settled()

    asyncio.run(scenario())
    assert buffer_path(s.back_dir, sha3(data)).read_bytes() == data and not s.in_tier(sha3(data))


class CollectingBack:
    """A back store that reads the whole body first, then lets ``release`` go and
    stores it: the tier's writer, held up until then, falls behind the stream."""

    def __init__(self, back: DirectoryStore, release: threading.Event):
        self.back, self.release, self.writable = back, release, True

    async def put(self, checksum, body, content_encoding=None):
        parts = [chunk async for chunk in body]
        self.release.set()
        return await self.back.put(checksum, chunks(*parts), content_encoding)

    def __getattr__(self, name):
        return getattr(self.back, name)


def test_a_tier_falling_behind_does_not_hold_up_the_upload(stores, monkeypatch):
    monkeypatch.setattr(tiered, "HAND_ON_WAIT", 0.2)
    s = stores()
    release = threading.Event()
    s.store = TieredStore(s.local, CollectingBack(s.back, release), stored=s._stored)
    data = os.urandom(32 << 20)
    cs = sha3(data)

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))  # the writers' hashing waits behind this:
        held = loop.run_in_executor(None, release.wait, 60)
        parts = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        assert await asyncio.wait_for(s.store.put(raw(cs), chunks(*parts)), 60) is PutOutcome.STORED
        await held
        await s.store.settled()

    asyncio.run(scenario())
    assert buffer_path(s.back_dir, cs).read_bytes() == data
    assert not s.in_tier(cs) and stray(s.tier) == []


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_cancelled_fill_lets_its_thread_finish_before_closing_the_file(stores, monkeypatch, cancels):
    """A fill cancelled while its thread writes (a worker stopping; once more while it
    waits) waits for that write before its buffer goes back to the pool and its
    descriptor is closed: else the thread would write into a buffer another fill
    took, or a reused descriptor."""
    from hashserver.directwrite import DirectFile

    s = stores()
    events: list[str] = []
    writing = threading.Event()
    real_write, real_release = DirectFile.write, DirectFile.release

    def slow_write(self, data):
        writing.set()
        time.sleep(0.3)
        real_write(self, data)
        events.append("written")

    def release(self):
        events.append("released")
        real_release(self)

    monkeypatch.setattr(DirectFile, "write", slow_write)
    monkeypatch.setattr(DirectFile, "release", release)
    data = os.urandom(3 << 20)
    cs = sha3(data)

    async def scenario():
        fill = asyncio.ensure_future(s.store.store_proven(raw(cs), chunks(data), None))
        await asyncio.get_running_loop().run_in_executor(None, writing.wait, 10)
        fill.cancel()
        if cancels == 2:
            await asyncio.sleep(0.05)
            fill.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fill

    asyncio.run(scenario())
    assert events == ["written", "released"]
    assert not s.in_tier(cs) and stray(s.tier) == []


def test_a_file_held_for_sending_is_passed_over_by_eviction(tmp_path):
    """A tier file a worker holds to send it is not unlinked (its bytes count as spared)
    and the next oldest goes instead; once closed, it goes too.  One evicted before the
    worker held it tells the worker so (it then reads the back store)."""
    sent, other = tmp_path / ("a" * 64), tmp_path / ("b" * 64)
    for path in (sent, other):
        path.write_bytes(b"x" * 1000)
    entries = [Entry(path.stat().st_atime_ns, 1000, (str(path),)) for path in (sent, other)]  # as a scan made them
    with open(sent, "rb") as sending:
        assert hold_for_sending(sending.fileno())
        evicted = evict(entries, 1000)
        assert (evicted.entries, evicted.spared) == ([entries[1]], 1000)
        assert sent.exists() and not other.exists()
        assert sending.read() == b"x" * 1000
    rescanned = Entry(sent.stat().st_atime_ns, 1000, (str(sent),))  # (the send read it: used since the scan)
    assert evict([rescanned], 1000).entries == [rescanned] and not sent.exists()
    link = tmp_path / ("d" * 64)  # not a file the evictor can lock: unlinked all the same, the round goes on
    link.symlink_to(tmp_path / "elsewhere")
    assert len(evict([Entry(0, 1, (str(link),))], 1).entries) == 1 and not os.path.lexists(link)
    late = tmp_path / ("c" * 64)
    late.write_bytes(b"y")
    with open(late, "rb") as opened:
        late.unlink()  # evicted between the worker's open and its lock
        assert not hold_for_sending(opened.fileno())
