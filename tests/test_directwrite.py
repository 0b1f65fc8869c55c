"""The tier's large fills written past the page cache (hashserver.directwrite):
every byte lands where it belongs however the stream is cut, whether the file
system takes O_DIRECT, refuses it from the start, or refuses it midway."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
from pathlib import Path

import pytest

from hashserver import directwrite
from hashserver.directwrite import ALIGN, BUFFER, BufferPool, DirectFile

from conftest import resident_bytes

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER - 1, BUFFER, BUFFER + 123, 5 * BUFFER + 1]
PIECES = [1, 100, ALIGN, 70_000, BUFFER, 3 * BUFFER]


@pytest.fixture
def directory(page_cache_path: Path) -> Path:
    """A directory on a disk's file system (the test's own, unless that is tmpfs), where
    a file's pages are cached only if written through the cache."""
    return page_cache_path


def write_file(path: Path, data: bytes, pool: BufferPool, seed: int) -> DirectFile:
    """``data`` written to a new file at ``path`` in pieces of random sizes."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    file = DirectFile(fd, pool)
    try:
        position = 0
        while position < len(data):
            n = rng.choice(PIECES)
            file.write(data[position:position + n])
            position += n
        file.finish()
    finally:
        file.release()
        os.close(fd)
    return file


@pytest.mark.parametrize("size", SIZES)
def test_written_past_the_cache_byte_for_byte(directory, size):
    pool = BufferPool()
    data = os.urandom(size)
    path = directory / f"buffer-{size}"
    file = write_file(path, data, pool, seed=size)
    assert file.direct and file.offset == size
    # past the page cache up to the last whole block: at most the last partial page is cached
    assert resident_bytes(path) == (mmap.PAGESIZE if size % mmap.PAGESIZE else 0)
    assert path.read_bytes() == data
    assert pool.idle == 1  # its buffer kept for the next file


def test_a_file_system_that_refuses_o_direct_gets_plain_writes(directory, monkeypatch):
    monkeypatch.setattr(directwrite, "_set_direct", lambda fd, on: False)
    pool = BufferPool()
    data = os.urandom(3 * BUFFER + 77)
    file = write_file(directory / "plain", data, pool, seed=1)
    assert not file.direct and file.offset == len(data)
    assert resident_bytes(directory / "plain") == -(-len(data) // mmap.PAGESIZE) * mmap.PAGESIZE
    assert (directory / "plain").read_bytes() == data
    assert pool.idle == 0  # no buffer taken


@pytest.mark.parametrize("refused_at", [1, 3])
def test_a_write_refused_midway_goes_on_through_the_cache(directory, monkeypatch, refused_at):
    """A file system that takes O_DIRECT but refuses a write (an alignment it wants
    and the buffer lacks): what was written stays, the rest is written plainly."""
    real_pwrite = os.pwrite
    direct_writes = []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append(offset)
            if len(direct_writes) >= refused_at:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directwrite.os, "pwrite", pwrite)
    data = os.urandom(4 * BUFFER + 5)
    file = write_file(directory / "refused", data, BufferPool(), seed=refused_at)
    assert len(direct_writes) == refused_at and not file.direct
    assert (directory / "refused").read_bytes() == data


@pytest.mark.parametrize("short", [3 * ALIGN, 512], ids=["whole-blocks", "part-of-a-block"])
def test_a_short_write_past_the_cache_is_continued(directory, monkeypatch, short):
    """A direct write that writes less than asked: whole blocks go on past the cache;
    part of a block (which the next direct write could not follow), through it."""
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            return real_pwrite(fd, memoryview(data)[:min(len(data), short)], offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directwrite.os, "pwrite", pwrite)
    data = os.urandom(2 * BUFFER + 999)
    file = write_file(directory / "short", data, BufferPool(), seed=2)
    assert file.direct is (short % ALIGN == 0)
    assert (directory / "short").read_bytes() == data


def test_other_errors_are_raised(directory, monkeypatch):
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directwrite.os, "pwrite", pwrite)
    fd = os.open(directory / "full", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    file = DirectFile(fd, BufferPool())
    try:
        with pytest.raises(OSError) as raised:
            file.write(os.urandom(BUFFER))
        assert raised.value.errno == errno.ENOSPC
    finally:
        file.release()
        os.close(fd)


def test_the_pool_keeps_a_few_buffers_for_reuse():
    pool = BufferPool(keep=2)
    taken = [pool.take() for _ in range(3)]
    assert all(len(b) == BUFFER for b in taken)
    for buffer in taken:
        pool.give(buffer)
    assert pool.idle == 2 and taken[2].closed  # beyond ``keep``: unmapped
    assert pool.take() is taken[1]  # the same pages again
    pool.close()
    assert pool.idle == 0 and taken[0].closed
