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
import itertools
import os
import time
from enum import Enum
from typing import AsyncIterator

from .checksum import Hasher
from .layout import LOCK_SUFFIX, PREFIX_MARKER, SearchPath, is_buffer_name
from .locks import HeldLock, LockProtocol, owner_tag, pid_is_dead
from .store import BufferStore

BATCH = 1 << 20  # bytes handed to the hashing/writing thread at a time
TEMP_SUFFIX = ".tmp"
DIR_MODE = 0o2775
BUFFER_MODE = 0o444

_counter = itertools.count()


class Outcome(Enum):
    STORED = "stored"
    PRESENT = "present"


class ChecksumMismatch(Exception):
    """The body does not hash to the checksum in the URL."""


class DiskFull(Exception):
    """No space (or quota) left to store the buffer."""


class BodyTooLarge(Exception):
    """The body is larger than the configured maximum."""


def temp_name(checksum_hex: str) -> str:
    """``.<checksum>.<host>-<pid>.<n>.tmp``: never a buffer name, and says whose it is."""
    return f".{checksum_hex}.{owner_tag()}.{next(_counter)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


def make_group_dir(path: str) -> None:
    """Create a buffer directory shared by a Unix group: mode 2775, whatever the umask."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


class BufferWriter:
    def __init__(self, store: BufferStore, search_path: SearchPath, hasher: Hasher,
                 locks: LockProtocol, max_body_size: int):
        self.store = store
        self.search_path = search_path
        self.hasher = hasher
        self.locks = locks
        self.max_body_size = max_body_size

    async def put(self, checksum: bytes, body: AsyncIterator[bytes]) -> Outcome:
        """Store the body under ``checksum`` if it hashes to it.

        Raises :class:`ChecksumMismatch`, :class:`BodyTooLarge` or
        :class:`DiskFull`; in every case nothing is left behind.
        """
        try:
            return await self._put(checksum, body)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull() from exc
            raise

    async def _put(self, checksum: bytes, body: AsyncIterator[bytes]) -> Outcome:
        checksum_hex = checksum.hex()
        if self.store.find(checksum) is not None:
            if await self._drain(body) != checksum:
                raise ChecksumMismatch()
            return Outcome.PRESENT
        final = self.search_path.publish_path(checksum_hex)
        directory = os.path.dirname(final)
        make_group_dir(directory)
        tmp = os.path.join(directory, temp_name(checksum_hex))
        async with HeldLock(final + LOCK_SUFFIX):
            try:
                if await self._stream_to(tmp, body) != checksum:
                    raise ChecksumMismatch()
                await self.locks.wait_until_free(self.search_path.global_locks(checksum_hex))
                os.chmod(tmp, BUFFER_MODE)
                published = self._publish(tmp, final)
            finally:
                _unlink_quietly(tmp)
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

    async def _drain(self, body: AsyncIterator[bytes]) -> bytes:
        h = self.hasher.new()
        loop = asyncio.get_running_loop()
        async for batch in self._batches(body):
            await loop.run_in_executor(None, h.update, batch)
        return h.digest()

    async def _stream_to(self, tmp: str, body: AsyncIterator[bytes]) -> bytes:
        """Write the body to ``tmp`` and hash it; the next batch is received
        while a thread hashes and writes the previous one."""
        h = self.hasher.new()
        loop = asyncio.get_running_loop()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            in_flight: asyncio.Future | None = None
            async for batch in self._batches(body):
                if in_flight is not None:
                    await in_flight
                in_flight = loop.run_in_executor(None, _absorb, fd, h, batch)
            if in_flight is not None:
                await in_flight
            await loop.run_in_executor(None, os.fsync, fd)
        finally:
            os.close(fd)
        return h.digest()


def _absorb(fd: int, h, data: bytes) -> None:
    h.update(data)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
                _unlink_quietly(path)
                removed += 1
    return removed


def write_prefix_marker(search_path: SearchPath) -> None:
    """A writable prefix-layout directory says so, for servers that use it as an extra dir."""
    if search_path.main.name == "prefix":
        marker = os.path.join(search_path.main.root, PREFIX_MARKER)
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
