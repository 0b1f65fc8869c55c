"""The writer path: stream a body to a temporary file while hashing it, and
publish it under its checksum only once it is verified, atomically.

Guarantees: a reader sees either no file or the whole, correct file under a
checksum's name; an interrupted, wrong or failed upload leaves nothing behind
(after ``kill -9``, the next start removes this host's dead writers'
temporary files and locks, and other readers ignore stale locks).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from enum import Enum
from typing import AsyncIterator

from .checksum import Hasher
from .compression import SIDECAR_SUFFIX, Decoder, Encoding
from .files import TEMP_SUFFIX, is_temp_name, make_group_dir, temp_name, unlink_quietly
from .layout import LOCK_SUFFIX, PREFIX_MARKER, SearchPath, is_buffer_name
from .locks import HeldLock, pid_is_dead
from .store import BufferStore

BATCH = 1 << 20  # bytes handed to the hashing/writing thread at a time
BUFFER_MODE = 0o444


class Outcome(Enum):
    STORED = "stored"
    PRESENT = "present"


class ChecksumMismatch(Exception):
    """The body does not hash to the checksum in the URL."""


class DiskFull(Exception):
    """No space (or quota) left to store the buffer."""


class BodyTooLarge(Exception):
    """The body is larger than the configured maximum."""


class _Digest:
    """Hashes what is written: the body itself, or what it decompresses to."""

    def __init__(self, hasher: Hasher, encoding: Encoding | None):
        self._hash = hasher.new()
        self._decoder = Decoder(encoding) if encoding else None

    def update(self, data: bytes) -> None:
        self._hash.update(self._decoder.feed(data) if self._decoder else data)

    def finish(self) -> tuple[bytes, int | None]:
        """The checksum, and the uncompressed length of a compressed body."""
        if self._decoder is None:
            return self._hash.digest(), None
        self._hash.update(self._decoder.finish())
        return self._hash.digest(), self._decoder.length


class BufferWriter:
    """Writes into the store's main directory, with the store's algorithm,
    lock protocol and promises."""

    def __init__(self, store: BufferStore, max_body_size: int):
        self.store = store
        self.search_path = store.search_path
        self.hasher = store.hasher
        self.locks = store.locks
        self.promises = store.promises
        self.max_body_size = max_body_size

    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  encoding: Encoding | None = None) -> Outcome:
        """Store the body under ``checksum`` if it hashes to it.

        A body with an ``encoding`` is stored compressed as it came
        (``<checksum>.zst`` / ``.gz`` with a length sidecar), its checksum being
        that of what it decompresses to.  Raises :class:`ChecksumMismatch`,
        :class:`InvalidPayload`, :class:`BodyTooLarge` or :class:`DiskFull`;
        in every case nothing is left behind.  A stored (or already present)
        buffer resolves its promise.
        """
        try:
            outcome = await self._put(checksum, body, encoding)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull() from exc
            raise
        if self.promises is not None:
            self.promises.resolve(checksum.hex())
        return outcome

    async def _put(self, checksum: bytes, body: AsyncIterator[bytes],
                   encoding: Encoding | None) -> Outcome:
        checksum_hex = checksum.hex()
        digest = _Digest(self.hasher, encoding)
        if self.store.find(checksum) is not None:
            await self._consume(body, digest)
            if digest.finish()[0] != checksum:
                raise ChecksumMismatch()
            return Outcome.PRESENT
        base = self.search_path.publish_path(checksum_hex)
        final = base + (encoding.suffix if encoding else "")
        directory = os.path.dirname(final)
        make_group_dir(directory)
        tmp = os.path.join(directory, temp_name(checksum_hex))
        async with HeldLock(base + LOCK_SUFFIX):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    await self._consume(body, digest, fd)
                finally:
                    os.close(fd)
                result, length = digest.finish()
                if result != checksum:
                    raise ChecksumMismatch()
                if length is not None:
                    write_sidecar(base, length)
                await self.locks.wait_until_free(self.search_path.global_locks(checksum_hex))
                os.chmod(tmp, BUFFER_MODE)
                published = self._publish(tmp, final)
            finally:
                unlink_quietly(tmp)
        if published:
            self.store.mark_verified(final)
        return Outcome.STORED if published else Outcome.PRESENT

    @staticmethod
    def _publish(tmp: str, final: str) -> bool:
        """Link the verified file into place; False if the buffer got there first."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.exists(final):  # a file system without hard links
                return False
            os.rename(tmp, final)
        return True

    async def _batches(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body in batches of about BATCH bytes, enforcing the maximum size."""
        pending: list[bytes] = []
        pending_size = total = 0
        async for chunk in body:
            total += len(chunk)
            if total > self.max_body_size:
                raise BodyTooLarge()
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= BATCH:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)

    async def _consume(self, body: AsyncIterator[bytes], digest: _Digest, fd: int | None = None) -> None:
        """Hash (and write to ``fd``, if given) the whole body, fsynced.

        Three things overlap: the event loop receives the next batch while one
        thread hashes the previous batch and another writes it (hashing and
        writing each release the GIL, and cost about the same).
        """
        loop = asyncio.get_running_loop()
        hashing: asyncio.Future | None = None
        writing: asyncio.Future | None = None
        offset = 0
        async for batch in self._batches(body):
            if hashing is not None:
                await hashing
            hashing = loop.run_in_executor(None, digest.update, batch)
            if fd is not None:
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, _write_all, fd, batch, offset)
                offset += len(batch)
        for pending in (hashing, writing):
            if pending is not None:
                await pending
        if fd is not None:
            await loop.run_in_executor(None, os.fsync, fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def write_sidecar(base: str, length: int) -> None:
    """``<checksum>.BUFFERLENGTH``, written whole before the compressed file appears."""
    tmp = os.path.join(os.path.dirname(base), temp_name(os.path.basename(base)))
    try:
        with open(tmp, "w") as f:
            f.write(str(length))
        os.chmod(tmp, BUFFER_MODE)
        os.replace(tmp, base + SIDECAR_SUFFIX)
    finally:
        unlink_quietly(tmp)


def remove_leftovers(search_path: SearchPath, lock_timeout: float) -> int:
    """Remove temporary files and per-file locks left by dead writers.

    Those of a dead process on this host go at once; any writer's go once
    older than the lock timeout (a live writer keeps touching its files).
    Returns how many were removed.
    """
    removed = 0
    now = time.time()
    for directory in search_path.main.dirs:
        try:
            names = [n for n in os.listdir(directory) if n.endswith((TEMP_SUFFIX, LOCK_SUFFIX))]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(directory, name)
            if is_temp_name(name):
                tag = name.split(".")[2]
            elif name.endswith(LOCK_SUFFIX) and is_buffer_name(name[: -len(LOCK_SUFFIX)]):
                try:
                    with open(path) as f:
                        tag = f.read(200).strip()
                except OSError:
                    continue
            else:
                continue
            try:
                stale = now - os.stat(path).st_mtime > lock_timeout
            except FileNotFoundError:
                continue
            if stale or pid_is_dead(tag):
                unlink_quietly(path)
                removed += 1
    return removed


def write_prefix_marker(search_path: SearchPath) -> None:
    """A writable prefix-layout directory says so, for servers that use it as an extra dir."""
    if search_path.main.name == "prefix":
        marker = os.path.join(search_path.main.root, PREFIX_MARKER)
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
