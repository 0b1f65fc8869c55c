"""The index and the store's exact lookups, without HTTP."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from hashserver.checksum import Hasher
from hashserver.config import Config
from hashserver.directory import DirectoryStore
from hashserver.index import RECORD, GenerationStore, IndexData, IndexPublisher, IndexReader, scan_directory
from hashserver.layout import SearchPath, is_buffer_name
from hashserver.locks import LockProtocol

from conftest import add_buffer, sha3


class Lookups:
    """A directory store's exact lookups, called as these tests call them (synchronously)."""

    def __init__(self, store: DirectoryStore):
        self.store = store
        self.exact = store.lookups
        self.watch = store.lookups.watch

    def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        return asyncio.run(self.store.has(checksums, promised))

    def lookup(self, checksums: bytes):
        found = self.exact.lookup(checksums)
        return found.present, found.sizes, found.unmeasured

    def find(self, checksum: bytes):
        return self.exact.find(checksum)

    async def lengths(self, checksums: bytes) -> list[int]:
        return await self.store.lengths(checksums)


def make_store(config: Config):
    config = config.validate()
    search_path = SearchPath.from_config(config)
    generations = GenerationStore.create()
    publisher = IndexPublisher(search_path, generations)
    publisher.build()
    store = DirectoryStore(search_path, IndexReader(generations), Hasher(), LockProtocol(2.0))
    return Lookups(store), publisher, generations


def index_data(keys, sizes, dirs, encodings, dir_mtimes, dir_settled) -> IndexData:
    records = np.zeros(len(keys), RECORD)
    records["key"], records["size"], records["dir"], records["encoding"] = keys, sizes, dirs, encodings
    return IndexData(records, dir_mtimes, dir_settled)


@pytest.fixture
def built(request):
    made = []

    def build(config):
        result = make_store(config)
        made.append(result)
        return result

    yield build
    for store, _, generations in made:
        store.watch.close()
        generations.remove()


def checksums_bytes(*hexes: str) -> bytes:
    return b"".join(bytes.fromhex(h) for h in hexes)


def lengths(store, checksums: bytes) -> list[int]:
    return asyncio.run(store.lengths(checksums))


def age_directories(root) -> None:
    """Backdate directory times so the scan sees them as settled (the fast path)."""
    old = time.time() - 3600
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (old, old))


def test_buffer_names():
    cs = sha3(b"x")
    assert is_buffer_name(cs)
    assert not is_buffer_name(cs.upper())
    assert not is_buffer_name(cs + ".LOCK")
    assert not is_buffer_name("." + cs + ".host-1.0.tmp")
    assert not is_buffer_name(".HASHSERVER_PREFIX")


@pytest.mark.parametrize("layout", ["prefix", "flat"])
def test_build_and_batch_lookup(tmp_path, built, layout):
    data = [os.urandom(n) for n in (0, 1, 100, 5000)]
    hexes = [add_buffer(tmp_path, d, layout) for d in data]
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path), layout=layout))
    assert len(publisher.data) == 4
    missing = sha3(b"missing")
    query = checksums_bytes(*hexes, missing)
    assert store.has(query) == [True] * 4 + [False]
    # Sizes: first measured by a stat per file, then known to the index itself.
    assert lengths(store, query) == [len(d) for d in data] + [0]
    publisher.measure_sizes()
    present, sizes, unmeasured = store.lookup(query)
    assert unmeasured == {}
    assert sizes.tolist() == [len(d) for d in data] + [0]
    assert store.find(bytes.fromhex(hexes[2])).size == 100
    assert store.find(bytes.fromhex(missing)) is None


def test_junk_files_are_not_indexed(tmp_path, built):
    cs = add_buffer(tmp_path, b"real")
    sub = tmp_path / cs[:2]
    (sub / (cs + ".LOCK")).write_bytes(b"")
    (sub / f".{cs}.host-1.0.tmp").write_bytes(b"partial")
    (sub / "notes.txt").write_text("junk")
    (sub / cs.upper()).write_bytes(b"real")
    (sub / sha3(b"dir")).mkdir()  # a directory with a checksum name is not a buffer
    (tmp_path / ".HASHSERVER_PREFIX").write_bytes(b"")
    (tmp_path / "zz").mkdir()
    age_directories(tmp_path)
    _, publisher, _ = built(Config(str(tmp_path)))
    assert len(publisher.data) == 1


def test_vault_layout(tmp_path, built):
    hexes = []
    for sub in ("independent/small", "independent/big", "dependent/small", "dependent/big"):
        d = tmp_path / sub
        d.mkdir(parents=True)
        hexes.append(add_buffer(d, sub.encode(), "flat"))
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path), layout="vault"))
    assert store.has(checksums_bytes(*hexes)) == [True] * 4
    assert lengths(store, checksums_bytes(*hexes)) == [len(s) for s in
                                                        ("independent/small", "independent/big",
                                                         "dependent/small", "dependent/big")]


def test_extra_dirs_flat_and_prefix(tmp_path, built):
    main = tmp_path / "main"
    flat = tmp_path / "flat"
    prefix = tmp_path / "prefix"
    for d in (main, flat, prefix):
        d.mkdir()
    (prefix / ".HASHSERVER_PREFIX").write_bytes(b"")
    a = add_buffer(main, b"main")
    b = add_buffer(flat, b"flat extra", "flat")
    c = add_buffer(prefix, b"prefix extra", "prefix")
    wrongly_placed = add_buffer(flat, b"in a prefix dir of a flat extra", "prefix")
    age_directories(tmp_path)
    store, _, _ = built(Config(str(main), extra_dirs=(str(flat), str(prefix))))
    assert store.has(checksums_bytes(a, b, c, wrongly_placed)) == [True, True, True, False]
    assert store.find(bytes.fromhex(c)).path == str(prefix / c[:2] / c)


def test_main_directory_comes_first(tmp_path, built):
    main, extra = tmp_path / "main", tmp_path / "extra"
    main.mkdir()
    extra.mkdir()
    cs = add_buffer(main, b"same")
    add_buffer(extra, b"same", "flat")
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(main), extra_dirs=(str(extra),)))
    assert len(publisher.data) == 1
    assert store.find(bytes.fromhex(cs)).path == str(main / cs[:2] / cs)


def test_added_and_removed_files_are_seen_at_once(tmp_path, built):
    kept = add_buffer(tmp_path, b"kept")
    removed = add_buffer(tmp_path, b"removed")
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path)))
    added = add_buffer(tmp_path, b"added later")  # may land in a new prefix directory
    os.unlink(tmp_path / removed[:2] / removed)
    query = checksums_bytes(kept, removed, added)
    assert store.has(query) == [True, False, True]
    assert lengths(store, query) == [4, 0, len(b"added later")]
    assert store.find(bytes.fromhex(removed)) is None
    assert store.find(bytes.fromhex(added)) is not None
    # After the background rescan the index itself knows, and stays exact.
    age_directories(tmp_path)
    assert publisher.refresh()
    assert store.has(query) == [True, False, True]
    assert publisher.refresh() is False


def test_recently_modified_directory_is_not_trusted(tmp_path, built):
    """A directory modified within the timestamp granularity of the scan may
    change without its mtime moving; such a directory is checked on disk."""
    store, publisher, _ = built(Config(str(tmp_path), layout="flat"))
    assert not publisher.data.dir_settled[0]
    cs = add_buffer(tmp_path, b"written right after the scan", "flat")
    st = os.stat(tmp_path)
    os.utime(tmp_path, ns=(st.st_atime_ns, int(publisher.data.dir_mtimes[0])))  # same mtime as scanned
    assert store.has(checksums_bytes(cs)) == [True]


def test_scan_directory_reads_mtime_before_listing(tmp_path):
    add_buffer(tmp_path, b"x", "flat")
    scan = scan_directory(0, str(tmp_path))
    assert scan.mtime_ns == os.stat(tmp_path).st_mtime_ns
    assert len(scan.sizes) == 1
    assert scan_directory(1, str(tmp_path / "nope")).mtime_ns == -1


def test_index_file_roundtrip(tmp_path):
    keys = np.sort(np.frombuffer(os.urandom(32 * 5), "S32"))
    data = index_data(keys, np.arange(5, dtype=np.uint64), np.zeros(5, np.uint16),
                     np.array([0, 1, 2, 0, 255], np.uint8), np.array([7], np.int64), np.array([True]))
    data.write(str(tmp_path / "idx"))
    loaded = IndexData.open(str(tmp_path / "idx"))
    assert loaded.keys.tolist() == keys.tolist()
    assert loaded.sizes.tolist() == list(range(5))
    assert loaded.dir_mtimes.tolist() == [7]
    assert loaded.encodings.tolist() == [0, 1, 2, 0, 255]
    positions, found = loaded.find(keys[::-1].copy())
    assert found.all()


def test_workers_follow_new_generations(tmp_path, built):
    store, publisher, generations = built(Config(str(tmp_path)))
    reader = IndexReader(generations)
    before = len(reader.current())
    add_buffer(tmp_path, b"new")
    age_directories(tmp_path)
    publisher.refresh()
    assert len(reader.current()) == before + 1


def test_tens_of_thousands(tmp_path, built):
    hexes = [add_buffer(tmp_path, i.to_bytes(4, "little")) for i in range(20000)]
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path)))
    assert len(publisher.data) == 20000
    query = checksums_bytes(*hexes[::7], *(sha3(str(i).encode()) for i in range(100)))
    present = store.has(query)
    assert present == [True] * len(hexes[::7]) + [False] * 100


@pytest.mark.parametrize("inotify", [True, False])
def test_changes_after_directories_were_vouched_for(tmp_path, built, inotify):
    """Once a lookup has confirmed a directory unchanged, later changes are
    seen through inotify events (or, without inotify, through stats)."""
    kept = add_buffer(tmp_path, b"kept")
    removed = add_buffer(tmp_path, b"removed")
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path)))
    if not inotify:
        store.watch.close()
    assert store.watch.active is inotify
    added = sha3(b"added after vouching")
    query = checksums_bytes(kept, removed, added)
    assert store.has(query) == [True, True, False]
    if inotify:
        assert store.watch.vouched[int(kept[:2], 16)]
    add_buffer(tmp_path, b"added after vouching")
    os.unlink(tmp_path / removed[:2] / removed)
    assert store.has(query) == [True, False, True]
    assert store.find(bytes.fromhex(added)) is not None
    assert store.find(bytes.fromhex(removed)) is None
    # A whole prefix directory removed and made again is noticed too.
    other = add_buffer(tmp_path, b"in a fresh directory")
    assert store.has(checksums_bytes(other)) == [True]
    for p in (tmp_path / other[:2]).iterdir():
        p.unlink()
    (tmp_path / other[:2]).rmdir()
    assert store.has(checksums_bytes(other)) == [False]


def test_file_system_type_from_mountinfo(tmp_path):
    from hashserver.filesystems import file_system_type

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                         "36 22 0:50 / /mnt/shared rw,relatime - nfs4 server:/export rw\n")
    assert file_system_type("/mnt/shared/buffers/ab", str(mountinfo)) == "nfs4"
    assert file_system_type("/mnt/sharedness", str(mountinfo)) == "ext4"


def test_network_file_systems_are_never_vouched_for(tmp_path, built, monkeypatch):
    from hashserver import watch

    monkeypatch.setattr(watch, "is_network_file_system", lambda path: True)
    cs = add_buffer(tmp_path, b"on a shared file system")
    age_directories(tmp_path)
    store, _, _ = built(Config(str(tmp_path)))
    assert store.has(checksums_bytes(cs)) == [True]
    assert not store.watch.vouched.any()


def test_keys_sharing_their_search_prefix():
    """Keys whose first 8 bytes are equal are told apart on the full key."""
    a, b, c = bytes(8) + b"a" * 24, bytes(8) + b"b" * 24, b"\1" * 32
    keys = np.sort(np.frombuffer(a + b + c, "S32"))
    data = index_data(keys, np.arange(3, dtype=np.uint64), np.zeros(3, np.uint16), np.zeros(3, np.uint8),
                     np.zeros(1, np.int64), np.ones(1, np.bool_))
    _, found = data.find(np.frombuffer(a + b + c + bytes(8) + b"c" * 24, "S32"))
    assert found.tolist() == [True, True, True, False]
    assert [data.find_one(k) for k in (a, b, c)] == [0, 1, 2]
    assert data.find_one(bytes(8) + b"c" * 24) == -1
    assert data.find_one(b"\2" * 32) == -1


def test_rescan_keeps_known_sizes_and_measures_new_files(tmp_path, built):
    old = add_buffer(tmp_path, b"old buffer")
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(tmp_path)))
    publisher.measure_sizes()
    new = add_buffer(tmp_path, b"new buffer, longer")
    age_directories(tmp_path)
    assert publisher.refresh()
    present, sizes, unmeasured = store.lookup(checksums_bytes(old, new))
    assert present.tolist() == [True, True]
    assert unmeasured == {}
    assert sizes.tolist() == [10, 18]


def test_index_directories_of_dead_servers_are_removed(tmp_path):
    import subprocess

    from hashserver.owner import owner_tag

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = owner_tag().rpartition("-")[0]
    orphan = tmp_path / f"{GenerationStore.PREFIX}{host}-{dead.pid}-abc123"
    alive = tmp_path / f"{GenerationStore.PREFIX}{owner_tag()}-def456"
    elsewhere = tmp_path / f"{GenerationStore.PREFIX}otherhost-{dead.pid}-ghi789"
    for d in (orphan, alive, elsewhere):
        d.mkdir()
    assert GenerationStore.remove_orphans(str(tmp_path)) == 1
    assert not orphan.exists() and alive.exists() and elsewhere.exists()


# ------------------------------------------------------------- fan-out lookups
def sorted_records(keys: list[bytes], dirs: list[int] | None = None) -> np.ndarray:
    """Records of these keys (32 bytes each), sorted as a generation holds them:
    by key, then directory."""
    dirs = dirs if dirs is not None else [0] * len(keys)
    order = sorted(range(len(keys)), key=lambda i: (keys[i], dirs[i]))
    records = np.zeros(len(keys), RECORD)
    records["key"] = np.frombuffer(b"".join(keys[i] for i in order), "S32") if keys else []
    records["dir"] = [dirs[i] for i in order]
    records["size"] = np.arange(len(keys))
    return records


def assert_lookups_exact(data: IndexData, queries: list[bytes]) -> None:
    """find and find_one against a brute-force reference: a key is found exactly
    when present, at the first of its records."""
    stored = [data.keys[i:i + 1].tobytes() for i in range(len(data.records))]
    first = {}
    for position, key in enumerate(stored):
        first.setdefault(key, position)
    positions, found = data.find(np.frombuffer(b"".join(queries), "S32") if queries
                                 else np.empty(0, "S32"))
    assert len(positions) == len(found) == len(queries)
    for i, query in enumerate(queries):
        expected = first.get(query, -1)
        assert data.find_one(query) == expected, (i, query.hex())
        assert bool(found[i]) == (expected >= 0), (i, query.hex())
        if expected >= 0:
            assert positions[i] == expected, (i, query.hex())
        elif len(stored):
            assert 0 <= positions[i] < len(stored)  # absent: still a position callers may index with


def keys_with_prefix(prefix: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [prefix + rng.bytes(32 - len(prefix)) for _ in range(count)]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 100, 5000])
def test_fanout_lookups_against_brute_force(count):
    keys = keys_with_prefix(b"", count, seed=count)
    data = index_data_of(keys)
    absent = keys_with_prefix(b"", 200, seed=10_000 + count)
    queries = keys + absent + [bytes(32), b"\xff" * 32] + [k[:31] + bytes([k[31] ^ 1]) for k in keys[:50]]
    assert_lookups_exact(data, queries)
    assert len(data) == count


@pytest.mark.parametrize("prefix", [bytes(2), bytes(4), b"\x7f" * 8, b"\xab" * 31])
def test_fanout_lookups_of_keys_in_one_bucket(prefix):
    """Every key in one fan-out bucket (far beyond the batch's window), sharing
    their first 8 bytes (so the first word tells nothing) or all but the last."""
    keys = keys_with_prefix(prefix, 300, seed=len(prefix))
    if len(prefix) == 31:
        keys = [prefix + bytes([i]) for i in range(0, 256, 2)]
    data = index_data_of(keys + keys_with_prefix(b"", 50, seed=1))
    near = [k[:-1] + bytes([k[-1] ^ 1]) for k in keys[:100]]
    assert_lookups_exact(data, keys + near + keys_with_prefix(prefix, 100, seed=99))


def test_fanout_lookups_of_keys_sharing_leading_words():
    """Keys equal on their first 8 bytes, and on the bytes that choose the
    bucket, next to keys that are not."""
    base = bytes.fromhex("00112233445566778899aabbccddeeff") * 2
    keys = [base[:8] + bytes([i]) * 24 for i in range(40)]
    keys += [base[:4] + bytes([i]) * 28 for i in range(40)]
    keys += keys_with_prefix(b"", 1000, seed=5)
    queries = keys + [base[:8] + bytes([i]) * 24 for i in range(40, 80)] + [base]
    assert_lookups_exact(index_data_of(keys), queries)


def test_fanout_first_of_equal_keys():
    """A checksum with records in several directories: lookups give the first
    (the one that answers), and len() counts checksums, not records."""
    dup = b"\x42" * 32
    others = keys_with_prefix(b"", 20, seed=7)
    keys = [dup, dup, dup, *others, others[3]]
    data = index_data_of(keys, dirs=[2, 0, 1] + [0] * 20 + [5])
    assert_lookups_exact(data, [dup, *others, b"\x43" * 32])
    assert int(data.dirs[data.find_one(dup)]) == 0
    assert len(data.records) == 24 and len(data) == 21


def index_data_of(keys: list[bytes], dirs: list[int] | None = None) -> IndexData:
    return IndexData(sorted_records(keys, dirs), np.zeros(8, np.int64), np.ones(8, np.bool_))


def test_fanout_table_sizes():
    from hashserver.index.fanout import fanout_bits

    assert [fanout_bits(n) for n in (0, 1, 2, 1000, 786_431, 786_432, 10_000_000)] == [1, 1, 2, 11, 20, 21, 24]
    data = index_data_of(keys_with_prefix(b"", 1000, seed=3))
    assert data.fanout.bits == 11 and len(data.fanout.table) == 2049
    starts = data.fanout.starts
    assert starts[0] == 0 and starts[-1] == 1000
    assert (np.diff(starts.astype(np.int64)) >= 0).all()


def test_fanout_table_holds_each_bucket_s_first_tag():
    """Each table entry: the bucket's first position, and the tag (the 32 bits
    after the bucket's) of the record there; an empty bucket's is its next record's."""
    from hashserver.index.fanout import leading, tags
    from hashserver.index.records import record_words

    data = index_data_of(keys_with_prefix(b"", 3000, seed=13))
    lead = leading(record_words(data.records)[:, 0])
    starts, table = data.fanout.starts, data.fanout.table
    at = np.minimum(starts[:-1], len(lead) - 1).astype(np.intp)
    assert ((table[:-1] >> np.uint64(32)) == tags(lead[at], data.fanout.bits)).all()
    assert table[-1] == 3000
    assert tags(np.array([0x0123456789ABCDEF], np.uint64), 32)[0] == 0x89ABCDEF
    assert tags(np.array([0x0123456789ABCDEF], np.uint64), 4)[0] == 0x12345678


def key_in_bucket(bits: int, bucket: int, tag: int, low: int = 0, tail: bytes = bytes(24)) -> bytes:
    """A key whose first ``bits`` bits are ``bucket``, the next 32 ``tag``, the rest of its first 8 bytes ``low``."""
    lead = (bucket << (64 - bits)) | (tag << (32 - bits)) | low
    return lead.to_bytes(8, "big") + tail


def test_fanout_lookups_at_tag_edges():
    """Lookups decided by a bucket's first tag: queries below, equal to (with
    another key) and above it; tags 0 and all ones; several keys of one tag;
    a checksum in several directories; the first and last keys of the index;
    empty buckets before, between and after; a bucket of one key."""
    bits = 7  # 64 to 127 records
    shared_tail = [bytes([i]) * 24 for i in range(1, 6)]
    keys = [bytes(32), b"\xff" * 32]  # the first and last possible keys
    keys += [key_in_bucket(bits, 5, 0), key_in_bucket(bits, 5, 0, 1), key_in_bucket(bits, 5, 7)]
    keys += [key_in_bucket(bits, 9, 0xFFFFFFFF), key_in_bucket(bits, 9, 0xFFFFFFFF, 5)]
    keys += [key_in_bucket(bits, 20, 100, 3, tail) for tail in shared_tail]  # one tag, one first word
    keys += [key_in_bucket(bits, 21, 100)]  # a bucket of one key
    keys += [key_in_bucket(bits, 40 + i, 50 * i) for i in range(60)]  # no empty bucket from 40 to 99
    dirs = [0] * len(keys) + [3, 1]
    keys += [keys[3], keys[10]]  # present in several directories
    data = index_data_of(keys, dirs)
    assert data.fanout.bits == bits
    queries = list(keys)
    for bucket, tag in [(5, 0), (5, 7), (9, 0xFFFFFFFF), (20, 100), (21, 100), (40, 0), (99, 50 * 59)]:
        queries += [key_in_bucket(bits, bucket, tag, 2), key_in_bucket(bits, bucket, tag, 0, b"\1" * 24)]
        queries += [key_in_bucket(bits, bucket, max(tag - 1, 0)), key_in_bucket(bits, bucket, min(tag + 1, 0xFFFFFFFF))]
    queries += [key_in_bucket(bits, 20, 100, 3, b"\x09" * 24), key_in_bucket(bits, 20, 99, 3, shared_tail[0])]
    queries += [key_in_bucket(bits, b, 0) for b in (1, 30, 100, 126, 127)]  # empty buckets
    queries += [bytes(31) + b"\1", b"\xff" * 31 + b"\xfe"]
    assert_lookups_exact(data, queries)
    assert int(data.dirs[data.find_one(keys[3])]) == 0


def test_generation_file_round_trip_with_fanout(tmp_path):
    keys = keys_with_prefix(b"", 3000, seed=11)
    keys += [keys[0], keys[1]]  # two checksums present twice
    data = index_data_of(keys, dirs=[0] * 3000 + [1, 1])
    data.dir_mtimes[:] = np.arange(8) * 1000
    data.dir_settled[:] = [True, False] * 4
    data.write(str(tmp_path / "idx"))
    loaded = IndexData.open(str(tmp_path / "idx"))
    assert loaded.records.tobytes() == data.records.tobytes()
    assert loaded.fanout.table.tolist() == data.fanout.table.tolist()
    assert loaded.dir_mtimes.tolist() == data.dir_mtimes.tolist()
    assert loaded.dir_settled.tolist() == [True, False] * 4
    assert len(loaded) == 3000 and len(loaded.records) == 3002
    assert loaded.size_bytes == os.path.getsize(tmp_path / "idx")
    assert_lookups_exact(loaded, keys[::7] + keys_with_prefix(b"", 100, seed=12))


def test_generation_file_of_another_version_is_refused(tmp_path):
    from hashserver.index.records import MAGIC

    index_data_of(keys_with_prefix(b"", 10, seed=1)).write(str(tmp_path / "idx"))
    content = (tmp_path / "idx").read_bytes()
    (tmp_path / "old").write_bytes(b"HSIDX005" + content[len(MAGIC):])
    with pytest.raises(ValueError, match="version"):
        IndexData.open(str(tmp_path / "old"))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError):
        IndexData.open(str(tmp_path / "empty"))


def scan_of(number: int, keys: list[bytes], encodings: list[int] | None = None):
    from hashserver.index import DirectoryScan
    from hashserver.index.records import make_records

    encodings = encodings if encodings is not None else [0] * len(keys)
    records = make_records(b"".join(keys), np.arange(len(keys)), encodings, number)
    return DirectoryScan(number, 1_000 + number, True, records)


def test_merge_orders_each_checksum_s_records_by_rank(tmp_path):
    """A real file before a promise, then search order, then plain before compressed;
    the merge written to a file equals the one made in memory."""
    from hashserver.index.merge import Merge

    shared = keys_with_prefix(b"", 3, seed=21)
    own = keys_with_prefix(b"", 500, seed=22)

    def scans():
        return [scan_of(2, [*shared, *own[:250], shared[2]], [0] * 253 + [1]),
                scan_of(0, shared[:2], [255, 1]),
                scan_of(1, shared + own[250:], [255, 0, 2] + [0] * 250)]

    empty = IndexData.empty(3)
    written = tmp_path / "merged"
    Merge(empty, [scan_of(s.number, [], []) for s in scans()]).write(str(written))
    assert len(IndexData.open(str(written))) == 0
    in_memory = empty.merged(scans())
    Merge(empty, scans()).write(str(written))
    on_file = IndexData.open(str(written))
    assert on_file.records.tobytes() == in_memory.records.tobytes()
    assert len(on_file) == 503 and len(on_file.records) == 509
    assert on_file.dir_mtimes.tolist() == [1000, 1001, 1002]

    assert places(on_file, shared[0]) == [(2, 0), (0, 255), (1, 255)]  # the file before the promises
    assert places(on_file, shared[1]) == [(0, 1), (1, 0), (2, 0)]  # search order, compressed or not
    assert places(on_file, shared[2]) == [(1, 2), (2, 0), (2, 1)]  # in one directory: plain first
    assert_lookups_exact(on_file, shared + own + keys_with_prefix(b"", 50, seed=23))

    # A rescan of directory 1 keeps the others' records, in the same order.
    rescanned = Merge(on_file, [scan_of(1, own[250:300])]).data()
    assert places(rescanned, shared[0]) == [(2, 0), (0, 255)]
    assert places(rescanned, shared[2]) == [(2, 0), (2, 1)]
    assert len(rescanned) == 503 - 200 and len(rescanned.records) == 509 - 253 + 50
    assert_lookups_exact(rescanned, shared + own)


def places(data: IndexData, key: bytes) -> list[tuple[int, int]]:
    """(directory, encoding) of each record of ``key``, in index order."""
    at = data.find_one(key)
    return [(int(data.dirs[p]), int(data.encodings[p]))
            for p in range(at, len(data.records)) if data.keys[p:p + 1].tobytes() == key]


def test_rescan_keeps_other_directories_copies(tmp_path, built):
    """A buffer in the main directory and in an extra one, deleted from the
    main one: once the main one is rescanned, the extra one's copy answers
    (the index used to keep only the first copy and lose the other)."""
    main, extra = tmp_path / "main", tmp_path / "extra"
    main.mkdir()
    extra.mkdir()
    cs = add_buffer(main, b"in both")
    add_buffer(extra, b"in both", "flat")
    age_directories(tmp_path)
    store, publisher, _ = built(Config(str(main), extra_dirs=(str(extra),)))
    assert len(publisher.data) == 1
    os.unlink(main / cs[:2] / cs)
    old = time.time() - 3000
    os.utime(main / cs[:2], (old, old))  # only this directory changed
    assert publisher.changed_dirs() == [int(cs[:2], 16)]
    assert publisher.refresh()
    assert store.has(checksums_bytes(cs)) == [True]
    assert store.find(bytes.fromhex(cs)).path == str(extra / cs)


@pytest.mark.slow
def test_fanout_lookups_at_ten_million_entries():
    """The index alone at 10,000,000 generated checksums, written and mapped as
    the server does it, against a binary search over the same keys."""
    from bench.lookups import generated_index

    generations = GenerationStore.create()
    try:
        data, _ = generated_index(10_000_000, 3, generations)
        assert len(data) == len(data.records) == 10_000_000 and data.fanout.bits == 24
        rng = np.random.default_rng(4)
        present = data.keys[rng.integers(0, len(data.records), 50_000)]
        absent = np.frombuffer(rng.bytes(32 * 50_000), "S32")
        queries = np.concatenate([present, absent])
        positions, found = data.find(queries)
        from hashserver.index.fanout import leading as leading_words
        from hashserver.index.records import record_words

        leading = leading_words(record_words(data.records)[:, 0])
        query_words = np.ascontiguousarray(queries).view(">u8").reshape(-1, 4)
        reference = np.searchsorted(leading, query_words[:, 0].astype(np.uint64))
        reference = np.minimum(reference, len(data.records) - 1)
        expected = data.keys[reference] == queries
        assert (found == expected).all() and found[:50_000].all()
        assert (positions[found] == reference[found]).all()
        singles = [queries[i:i + 1].tobytes() for i in range(0, 1000, 10)]  # all 32 bytes, trailing zeros too
        assert [data.find_one(q) for q in singles] == reference[:1000:10].tolist()
    finally:
        generations.remove()
