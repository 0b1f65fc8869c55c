"""The storage interface (hashserver.storage) as the buffer directory
implements it, assembled as a worker assembles it; and the rule that the
HTTP side knows storage only through that interface."""

from __future__ import annotations

import ast
import asyncio
import gzip
import os
import time
from pathlib import Path

import pytest

import hashserver
from hashserver import Config
from hashserver.runtime import MainProcess, Shared, open_storage
from hashserver.storage import ChecksumMismatch, Fast, PutOutcome, ReadOnly

from conftest import add_buffer, buffer_path, sha3


@pytest.fixture
def open_store():
    """``open_store(config)``: a worker's storage over a freshly started main process."""
    made = []

    def make(config: Config):
        main = MainProcess.start(config.validate())
        storage = open_storage(main.config, Shared.create(main))
        made.append((main, storage))
        return storage

    yield make
    for main, storage in made:
        storage.close()
        main.stop()


def run(coroutine):
    return asyncio.run(coroutine)


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def raw(checksum_hex: str) -> bytes:
    return bytes.fromhex(checksum_hex)


def test_peek_absent_then_content_read_and_verified_by_peek(open_store, tmp_path):
    cs = add_buffer(tmp_path, b"small buffer")
    storage = open_store(Config(str(tmp_path)))
    assert storage.peek(raw(sha3(b"missing"))) is Fast.ABSENT
    assert storage.peek(raw(cs)) == b"small buffer"  # a small plain buffer is read and verified by peek itself
    with run(storage.open(raw(cs))) as readable:
        assert (readable.content, readable.length) == (b"small buffer", 12)
    assert storage.peek(raw(cs)) == b"small buffer"


@pytest.mark.parametrize("memory_cache", [0, 1 << 20])
def test_memory_cache_bounds_what_a_worker_holds(open_store, tmp_path, memory_cache):
    """--memory-cache: with 0 nothing is held (every answer reads the file), else
    the small buffers it has room for are answered from memory."""
    buffers = [b"buffer %d" % i for i in range(20)]
    checksums = [raw(add_buffer(tmp_path, data)) for data in buffers]
    storage = open_store(Config(str(tmp_path), memory_cache=memory_cache))
    for _ in range(2):
        assert [storage.peek(cs) for cs in checksums] == buffers
    sources = storage.metrics._values["hashserver_small_buffers"]
    held = sources[("memory",)]
    assert (held == 0) if memory_cache == 0 else (held == len(buffers))
    assert storage.cache.capacity == memory_cache


def test_peek_never_serves_a_replaced_or_removed_file(open_store, tmp_path):
    cs = add_buffer(tmp_path, b"original")
    storage = open_store(Config(str(tmp_path)))
    run(storage.open(raw(cs)))
    path = buffer_path(tmp_path, cs)
    path.write_bytes(b"tampered")  # same name, another version of the file
    assert storage.peek(raw(cs)) is Fast.REGULAR
    path.unlink()
    assert storage.peek(raw(cs)) is Fast.ABSENT


def test_peek_takes_the_regular_path_for_locks_and_promises(open_store, tmp_path):
    storage = open_store(Config(str(tmp_path), writable=True))
    locked, promised = sha3(b"being written"), sha3(b"promised")
    lock = buffer_path(tmp_path, locked).with_suffix(".LOCK")
    lock.parent.mkdir(exist_ok=True)
    lock.write_bytes(b"")
    assert storage.peek(raw(locked)) is Fast.REGULAR
    os.utime(lock, (time.time() - 3600,) * 2)  # stale: its writer is gone
    assert storage.peek(raw(locked)) is Fast.ABSENT
    assert run(storage.promise(raw(promised))) == 600
    assert storage.peek(raw(promised)) is Fast.REGULAR
    assert run(storage.has(raw(promised))) == [True]
    assert run(storage.has(raw(promised), promised=False)) == [False]


def test_peek_leaves_compressed_and_always_verified_buffers_to_the_regular_path(open_store, tmp_path):
    data = b"compressed " * 100
    cs = sha3(data)
    path = buffer_path(tmp_path, cs)
    path.parent.mkdir()
    Path(str(path) + ".gz").write_bytes(gzip.compress(data))
    plain = add_buffer(tmp_path, b"plain")
    storage = open_store(Config(str(tmp_path), verify="always"))
    for checksum in (cs, plain):
        run(storage.open(raw(checksum)))
        assert storage.peek(raw(checksum)) is Fast.REGULAR


def test_open_gives_each_representation(open_store, tmp_path):
    data = b"compressed " * 100
    cs = sha3(data)
    buffer_path(tmp_path, cs).parent.mkdir()
    Path(str(buffer_path(tmp_path, cs)) + ".gz").write_bytes(gzip.compress(data))
    large = os.urandom(2 << 20)
    large_cs = add_buffer(tmp_path, large)
    storage = open_store(Config(str(tmp_path)))
    with run(storage.open(raw(cs))) as decoded:
        assert (decoded.encoding, decoded.length, decoded.file) == (None, len(data), None)
        assert b"".join(run(_collect(decoded.chunks()))) == data
    with run(storage.open(raw(cs), frozenset({"gzip"}))) as encoded:
        assert encoded.encoding == "gzip"
        assert gzip.decompress(encoded.file.read()) == data
    with run(storage.open(raw(large_cs))) as readable:
        assert (readable.length, readable.content) == (len(large), None)
        assert readable.file.read() == large
    assert run(storage.open(raw(sha3(b"missing")))) is None


async def _collect(iterator):
    return [chunk async for chunk in iterator]


def test_put_through_the_interface(open_store, tmp_path):
    storage = open_store(Config(str(tmp_path), writable=True))
    data = b"stored through the interface"
    cs = raw(sha3(data))
    assert run(storage.put(cs, chunks(data[:5], data[5:]))) is PutOutcome.STORED
    assert run(storage.put(cs, chunks(data))) is PutOutcome.PRESENT
    assert run(storage.has(cs)) == [True] and run(storage.lengths(cs)) == [len(data)]
    with pytest.raises(ChecksumMismatch):
        run(storage.put(raw(sha3(b"other")), chunks(b"not it")))
    assert run(storage.promise(cs)) == 600
    assert not Path(str(buffer_path(tmp_path, cs.hex())) + ".PROMISE").exists()  # present: no promise


def test_read_only_storage_refuses_writes(open_store, tmp_path):
    storage = open_store(Config(str(tmp_path)))
    assert storage.writable is False
    with pytest.raises(ReadOnly):
        run(storage.put(raw(sha3(b"x")), chunks(b"x")))
    with pytest.raises(ReadOnly):
        run(storage.promise(raw(sha3(b"x"))))


HTTP_SIDE = ("routes.py", "sending.py", "responses.py", "caching.py", "bodyreader.py")
ALLOWED = {"storage", "responses", "sending", "caching", "checksum", "docs", "metrics", "bodyreader"}


@pytest.mark.parametrize("module", HTTP_SIDE)
def test_the_http_side_imports_only_the_storage_interface(module):
    tree = ast.parse((Path(hashserver.__file__).parent / module).read_text())
    imported = {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.level == 1 and node.module is None for alias in node.names}
    assert imported <= ALLOWED, imported - ALLOWED
