"""What the store's :meth:`~hashserver.directory.DirectoryStore.peek` answers
with no system call (the watch vouches), and that it never answers from
memory what changed on disk.

In-process, on real directories and a real inotify watch; the system calls
that look at files (stat, lstat, open, scandir) are counted by wrapping them.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections import Counter

import pytest
from test_index import age_directories, make_store

from hashserver.checksum import Hasher
from hashserver.config import Config
from hashserver.contentcache import ENTRY_OVERHEAD, ContentCache
from hashserver.directory import DirectoryStore
from hashserver.index import IndexReader
from hashserver.layout import PrefixLayout, SearchPath
from hashserver.lockfree import lock_sentinels
from hashserver.locks import LockProtocol
from hashserver.storage import CorruptBuffer, Fast

from conftest import add_buffer, buffer_path, sha3

CONTENT = b"held in memory" * 50
OTHER = b"another buffer" * 50
ABSENT = bytes.fromhex(sha3(b"never stored"))


def build(directory, *, stale_lock: bool = False):
    """A store on a settled directory holding CONTENT and OTHER, with ABSENT's
    prefix directory there too (empty, or with a stale lock of ABSENT), and inotify."""
    for data in (CONTENT, OTHER):
        add_buffer(directory, data)
    (directory / ABSENT.hex()[:2]).mkdir(exist_ok=True)
    if stale_lock:
        lock = buffer_path(directory, ABSENT.hex(), suffix=".LOCK")
        lock.touch()
        os.utime(lock, (time.time() - 3600,) * 2)
    age_directories(directory)
    lookups, _, generations = make_store(Config(str(directory), writable=True))
    assert lookups.watch.active
    return lookups, generations


@pytest.fixture
def store(tmp_path):
    lookups, generations = build(tmp_path)
    yield lookups.store
    lookups.watch.close()
    generations.remove()


@pytest.fixture
def file_calls(monkeypatch):
    """Counts of the calls that look at files, made from now on."""
    calls: Counter = Counter()

    def counting(name, original):
        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return call

    for name in ("stat", "lstat", "scandir", "open"):
        monkeypatch.setattr(os, name, counting(name, getattr(os, name)))
    monkeypatch.setattr(builtins, "open", counting("builtins.open", builtins.open))
    return calls


def checksum_of(data: bytes) -> bytes:
    return bytes.fromhex(sha3(data))


def test_held_buffers_and_absent_ones_take_no_file_system_call(store, file_calls):
    assert store.peek(checksum_of(CONTENT)) == CONTENT  # read from its file, verified, held, proven
    assert store.peek(ABSENT) is Fast.ABSENT  # learns that its directory holds no lock file
    assert file_calls["open"] == 1 and file_calls["builtins.open"] == 0 and file_calls["scandir"] == 1
    file_calls.clear()
    for _ in range(3):
        assert store.peek(checksum_of(CONTENT)) == CONTENT
        assert store.peek(ABSENT) is Fast.ABSENT
    assert sum(file_calls.values()) == 0


def test_a_buffer_not_held_is_read_with_one_open_and_no_stat(store, file_calls):
    """A miss where the watch vouches: the index says where the file is, the
    open and its fstat say which version is read (no stat, no second open)."""
    checksum = checksum_of(CONTENT)
    assert store.lookups.stamp(checksum) is not None  # its directory confirmed once (one stat)
    file_calls.clear()
    assert store.peek(checksum) == CONTENT
    assert dict(file_calls) == {"open": 1}
    file_calls.clear()
    assert store.peek(checksum) == CONTENT
    assert sum(file_calls.values()) == 0


def test_a_file_replaced_by_a_fifo_is_not_waited_for(store, tmp_path):
    """Between the stamp and the open the file may become anything: a FIFO
    is opened without blocking the worker and left to the regular route."""
    checksum = checksum_of(CONTENT)
    stamp = store.lookups.stamp(checksum)
    path = buffer_path(tmp_path, checksum.hex())
    os.unlink(path)
    os.mkfifo(path)
    assert store._peek_vouched(checksum, stamp) is Fast.REGULAR


def test_a_removed_file_is_never_served_from_memory(store, tmp_path):
    checksum = checksum_of(CONTENT)
    assert store.peek(checksum) == CONTENT and store.peek(checksum) == CONTENT
    os.unlink(buffer_path(tmp_path, checksum.hex()))
    assert store.peek(checksum) is Fast.ABSENT


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_a_file_replaced_by_wrong_content_is_never_served_from_memory(store, tmp_path, how):
    """Rewritten without any change to the directory's entries, too: the
    regular route then says the file is corrupt, and the hot path leaves it to it."""
    checksum = checksum_of(CONTENT)
    path = buffer_path(tmp_path, checksum.hex())
    assert store.peek(checksum) == CONTENT and store.peek(checksum) == CONTENT
    wrong = b"x" * len(CONTENT)
    if how == "in place":
        with open(path, "r+b") as f:
            f.write(wrong)
    else:
        other = path.with_name("replacement")
        other.write_bytes(wrong)
        os.rename(other, path)
    assert store.peek(checksum) is Fast.REGULAR


@pytest.mark.parametrize("how", ["renamed", "hard-linked"])
def test_held_content_is_never_answered_for_another_checksum(store, tmp_path, how):
    """``mv`` and ``ln`` keep a file's identity (device, inode, size, time):
    what was held, or verified, for one checksum is never answered for
    another name of the same file; the regular route says it is corrupt."""
    checksum = checksum_of(CONTENT)
    assert store.peek(checksum) == CONTENT and store.peek(checksum) == CONTENT
    other = checksum_of(b"x" * len(CONTENT))
    target = buffer_path(tmp_path, other.hex())
    target.parent.mkdir(exist_ok=True)
    (os.rename if how == "renamed" else os.link)(buffer_path(tmp_path, checksum.hex()), target)
    assert store.peek(other) is Fast.REGULAR
    assert store.peek(other) is Fast.REGULAR
    with pytest.raises(CorruptBuffer):
        asyncio.run(store.open(other))


def test_a_verified_large_file_renamed_is_hashed_again(store, tmp_path):
    """Large files are hashed once per version (``--verify once``): per name too."""
    data = b"a large buffer" * 100_000
    checksum = bytes.fromhex(add_buffer(tmp_path, data))
    readable = asyncio.run(store.open(checksum))
    readable.file.close()
    other = checksum_of(b"y" * len(data))
    target = buffer_path(tmp_path, other.hex())
    target.parent.mkdir(exist_ok=True)
    os.rename(buffer_path(tmp_path, checksum.hex()), target)
    with pytest.raises(CorruptBuffer):
        asyncio.run(store.open(other))


def test_a_touched_file_is_served_after_one_more_stat(store, tmp_path, file_calls):
    """A new version of the file (its time changed) is looked at again: the
    same content, still held, proven anew."""
    checksum = checksum_of(CONTENT)
    assert store.peek(checksum) == CONTENT
    os.utime(buffer_path(tmp_path, checksum.hex()), (1, 1))
    file_calls.clear()
    assert store.peek(checksum) == CONTENT
    assert file_calls["open"] == 1  # the new version read and verified
    file_calls.clear()
    assert store.peek(checksum) == CONTENT
    assert sum(file_calls.values()) == 0


def test_the_move_of_the_directory_from_the_issue(store, tmp_path):
    """``mv DIR DIR.old; mkdir -p DIR/<prefix>``: what moved away is no longer there."""
    checksum = checksum_of(CONTENT)
    assert store.peek(checksum) == CONTENT and store.peek(checksum) == CONTENT
    os.rename(tmp_path, f"{tmp_path}.old")
    try:
        os.makedirs(tmp_path / checksum.hex()[:2])
        assert store.peek(checksum) is Fast.ABSENT
    finally:
        os.rename(f"{tmp_path}.old", f"{tmp_path}.moved")


@pytest.mark.parametrize("lock", ["own", "directory", "global"])
def test_a_lock_made_after_a_404_is_seen(store, tmp_path, lock):
    """A 404 learnt that no lock file exists; a writer's lock made afterwards
    (``<checksum>.LOCK``, the prefix directory's ``.LOCK``, ``DIR/.LOCK``)
    is seen at once, and gone again once removed."""
    assert store.peek(ABSENT) is Fast.ABSENT and store.peek(ABSENT) is Fast.ABSENT
    assert store.lock_free.holds(ABSENT[0])
    path = {"own": buffer_path(tmp_path, ABSENT.hex(), suffix=".LOCK"),
            "directory": tmp_path / ABSENT.hex()[:2] / ".LOCK",
            "global": tmp_path / ".LOCK"}[lock]
    path.touch()
    assert store.peek(ABSENT) is Fast.REGULAR
    path.unlink()
    assert store.peek(ABSENT) is Fast.ABSENT


def test_a_promise_made_after_a_404_is_seen(tmp_path):
    """Another server promises the buffer (``<checksum>.PROMISE``) after this
    (writable) one learnt its directory: before the index records the promise,
    a GET must still take the regular path (it waits for the buffer), never say absent."""
    lookups, generations = build(tmp_path)
    lookups.watch.close()
    config = Config(str(tmp_path), writable=True).validate()
    store = DirectoryStore(SearchPath.from_config(config), IndexReader(generations), Hasher(), LockProtocol(2.0),
                           writable=True)
    try:
        _promise_after_a_404(store, tmp_path)
    finally:
        store.close()
        generations.remove()


def _promise_after_a_404(store: DirectoryStore, tmp_path) -> None:
    assert store.peek(ABSENT) is Fast.ABSENT and store.peek(ABSENT) is Fast.ABSENT
    assert store.lock_free.holds(ABSENT[0])
    promise = buffer_path(tmp_path, ABSENT.hex(), suffix=".PROMISE")
    promise.touch()
    number = store.search_path.candidate_dirs(ABSENT[0])[0]
    assert not store.lock_free._lock_free(number)  # looked at, as after the watch's next vouch
    assert store.peek(ABSENT) is Fast.REGULAR
    promise.unlink()
    assert store.peek(ABSENT) is Fast.ABSENT


def test_a_stale_lock_leaves_the_directory_to_stats(tmp_path, file_calls):
    lookups, generations = build(tmp_path, stale_lock=True)
    try:
        store = lookups.store
        assert store.peek(ABSENT) is Fast.ABSENT
        assert store.lookups.stamp(ABSENT) is not None and not store.lock_free.holds(ABSENT[0])
        file_calls.clear()
        assert store.peek(ABSENT) is Fast.ABSENT
        assert file_calls["stat"] >= 3  # the locks, as before
    finally:
        lookups.watch.close()
        generations.remove()


def test_without_inotify_every_answer_stats(store, file_calls):
    store.lookups.watch.close()
    assert store.peek(checksum_of(CONTENT)) == CONTENT
    file_calls.clear()
    assert store.peek(checksum_of(CONTENT)) == CONTENT
    assert store.peek(ABSENT) is Fast.ABSENT
    assert file_calls["stat"] >= 2


def test_global_locks_outside_prefix_directories_are_sentinels(tmp_path):
    sentinels = lock_sentinels(SearchPath(PrefixLayout(str(tmp_path))))
    assert sentinels == {n: (str(tmp_path / ".LOCK"),) for n in range(256)}


def test_content_cache_drops_proofs_with_their_content():
    cache = ContentCache(capacity=16 * (100 + ENTRY_OVERHEAD))
    identities = [(1, n, 100, 0) for n in range(20)]
    for n, identity in enumerate(identities[:16]):
        cache.put(bytes([n]) * 32, identity, bytes([n]) * 100)
        cache.prove(bytes([n]) * 32, identity, stamp=7)
    assert cache.proven(bytes([0]) * 32, 7) == bytes([0]) * 100
    assert cache.proven(bytes([0]) * 32, 8) is None  # another stamp: not proven
    cache.put(bytes([16]) * 32, identities[16], b"x" * 100)  # evicts the least recently used: 1, not 0 (just used)
    assert cache.proven(bytes([1]) * 32, 7) is None and cache.get(bytes([1]) * 32, identities[1]) is None
    assert cache.proven(bytes([0]) * 32, 7) == bytes([0]) * 100
    cache.prove(bytes([99]) * 32, identities[19], stamp=7)  # its content is not held: no proof
    assert cache.proven(bytes([99]) * 32, 7) is None
    assert len(cache._proofs) == len(cache) - 1  # the new one is not proven
