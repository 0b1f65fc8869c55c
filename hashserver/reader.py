"""Reading buffers from a directory: the lock protocol, promises, integrity.

A reader never sends a buffer whose file does not hash to its name, unless
told not to check (``--verify never``).  Small plain buffers are read whole,
hashed and kept in a per-worker cache (keyed by the checksum and the file's
identity, so a replaced, renamed or linked file is never served from it);
larger files are hashed once per version and name (``--verify once``) or on
every read (``always``).

A file that was found (listed by the index, or stat'ed) but cannot be opened
("No such file or directory") is not a corrupt buffer: on a distributed file
system, another host's new file may be listed before this host can open it
(on SeaweedFS mounts, up to the metadata cache's time to live).  The reader
looks again with a growing pause, for :data:`SETTLE_BUDGET` seconds at most,
never blocking the event loop; a file then gone for the stat too is absent
(404, as ``/has`` then says); one still listed but not openable is a
storage fault (503): the buffer may well exist, so "absent" would be a lie
that a later answer contradicts.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from stat import S_ISREG
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from .bufferfile import BufferFile, FileIdentity, identity_of
from .checksum import Hasher
from .contentcache import CACHE_BYTES, ContentCache, VerifiedFiles
from .locks import POLL_MAX, LockProtocol
from .lookup import ExactIndex
from .metrics import Metrics
from .storage import CorruptBuffer, Readable, StillWriting

SMALL_BUFFER = 1 << 20  # read whole into memory (and cacheable) up to this size
SETTLE_BUDGET = 2.0  # seconds a found file that cannot be opened is looked for again
SETTLE_FIRST = 0.05  # the first pause; each next one is twice as long
T = TypeVar("T")


class Settling:
    """Growing pauses while a file system's view settles: :data:`SETTLE_BUDGET` seconds in all."""

    def __init__(self, budget: float = SETTLE_BUDGET):
        self.end = time.monotonic() + budget
        self.interval = SETTLE_FIRST

    async def pause(self) -> bool:
        """Sleep the next pause; False, at once, when the budget is spent."""
        left = self.end - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(self.interval, left))
        self.interval *= 2
        return True

    async def retry(self, attempt: Callable[[], Awaitable[T]], path: str) -> T:
        """``attempt()``, again after each pause while it raises FileNotFoundError."""
        while True:
            try:
                return await attempt()
            except FileNotFoundError:
                if not await self.pause():
                    raise _unopenable(path) from None


def _unopenable(path: str) -> FileNotFoundError:
    """The storage fault of a file found but not openable (the answer is 503, never "absent")."""
    return FileNotFoundError(errno.ENOENT, f"found, but not openable for {SETTLE_BUDGET:g} s", path)


class BufferReader:
    def __init__(self, lookups: ExactIndex, hasher: Hasher, locks: LockProtocol, verify: str = "once",
                 wait_timeout: float = 30.0, metrics: Metrics | None = None, cache_bytes: int = CACHE_BYTES):
        self.metrics = metrics or Metrics.unobserved()
        self.lookups = lookups
        self.hasher = hasher
        self.locks = locks
        self.verify = verify
        self.wait_timeout = wait_timeout
        self.verified = VerifiedFiles()
        self.cache = ContentCache(cache_bytes)
        self._lengths: dict[FileIdentity, int] = {}  # compressed file version -> decoded length

    def cached(self, checksum: bytes, buffer: BufferFile) -> bytes | None:
        """Verified content of a small plain buffer, if this worker holds it."""
        if buffer.encoding is not None or self.verify == "always":
            return None
        return self.cache.get(checksum, buffer.identity)

    def _read_locks(self, checksum: bytes) -> list[str]:
        return self.lookups.search_path.read_locks(checksum.hex())

    async def find_for_reading(self, checksum: bytes, deadline: float) -> BufferFile | None:
        """The buffer's file once no writer holds it and no promise is pending
        (waiting until ``deadline`` at most); None if absent.  Raises
        :class:`StillWriting` if it is absent and still locked or promised then."""
        buffer = self.lookups.find(checksum)
        if buffer is None and self._listed(checksum):
            buffer = await self._find_listed(checksum)
        if buffer is not None:
            return buffer
        locks = self._read_locks(checksum)
        if await self.locks.wait_until_free(locks, deadline):
            buffer = self.lookups.find(checksum)
        if buffer is None:
            buffer = await self._wait_for_promise(checksum, deadline)
        if buffer is None and (self.locks.any_fresh(locks) or self.lookups.is_promised(checksum.hex())):
            raise StillWriting(max(1, round(self.wait_timeout / 3)))
        return buffer

    async def open(self, checksum: bytes, accepted: frozenset[str]) -> Readable | None:
        """Find a buffer for reading, honouring locks and promises and checking its integrity.

        Raises :class:`CorruptBuffer` for a wrong file that no lock explains,
        :class:`StillWriting` when the wait for a writer or a promise ran out.
        """
        deadline = time.monotonic() + self.wait_timeout
        buffer = await self.find_for_reading(checksum, deadline)
        for attempt in range(2):
            if buffer is None:
                return None
            buffer, readable = await self._open_settled(checksum, buffer, accepted)
            if readable is not None:
                return readable
            if buffer is None:
                return None
            if attempt or not await self.locks.wait_until_free(self._read_locks(checksum), deadline):
                break
            buffer = self.lookups.find(checksum)
        raise CorruptBuffer.at(buffer.path, self.hasher.display_name)

    def _listed(self, checksum: bytes) -> bool:
        """Does the lookup ``/has-now`` answers from say the buffer is there?"""
        return bool(self.lookups.lookup(checksum, promised=False, with_lengths=False).present[0])

    async def _find_listed(self, checksum: bytes) -> BufferFile | None:
        """A buffer the lookup lists but no stat finds: looked for again while
        the file system's view settles; absent once the lookup agrees.  Raises
        FileNotFoundError (a storage fault, 503) if both views still disagree."""
        settling = Settling()
        while await settling.pause():
            buffer = self.lookups.find(checksum)
            if buffer is not None or not self._listed(checksum):
                return buffer
        raise _unopenable(self.lookups.search_path.publish_path(checksum.hex()))

    async def _open_settled(self, checksum: bytes, buffer: BufferFile,
                            accepted: frozenset[str]) -> tuple[BufferFile | None, Readable | None]:
        """:meth:`_open_verified`, looking for the file again while it is found but
        not openable.  Returns the buffer as last found (None: gone, absent) and
        the readable (None: its content is wrong).  Raises FileNotFoundError (a
        storage fault, 503) if it is still found and not openable."""
        settling = Settling()
        while True:
            try:
                return buffer, await self._open_verified(checksum, buffer, accepted)
            except FileNotFoundError:
                if not await settling.pause():
                    raise _unopenable(buffer.path) from None
            buffer = self.lookups.find(checksum)
            if buffer is None:
                return None, None

    async def _wait_for_promise(self, checksum: bytes, deadline: float) -> BufferFile | None:
        """While the buffer is promised, wait (until ``deadline``) for it to arrive."""
        checksum_hex = checksum.hex()
        while self.lookups.is_promised(checksum_hex) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_MAX / 5)
            buffer = self.lookups.find(checksum)
            if buffer is not None:
                return buffer
        return self.lookups.find(checksum)

    async def _open_verified(self, checksum: bytes, buffer: BufferFile,
                             accepted: frozenset[str]) -> Readable | None:
        """The buffer in the representation to send, if its content is right; else None."""
        if buffer.encoding is None and buffer.size <= SMALL_BUFFER:
            content = self._read_small_verified(checksum, buffer)
            return None if content is None else Readable(len(content), content=content)
        if not await self._verified(checksum, buffer):
            return None
        if buffer.encoding is None:
            return _opened(buffer, Readable(buffer.size))
        if not buffer.encoding.accepted_by(accepted):
            length = await self.decoded_length(buffer)
            return Readable(length, chunks=lambda: self._decoded(buffer), varies=True)
        encoded = Readable(buffer.size, buffer.encoding.name, variant=buffer.encoding.suffix[1:], varies=True)
        return _opened(buffer, encoded)

    def _read_small(self, checksum: bytes, buffer: BufferFile) -> bytes | None:
        """A small plain buffer's verified content (cached), or None if wrong or gone
        (for a caller whose regular route then looks again)."""
        try:
            return self._read_small_verified(checksum, buffer)
        except FileNotFoundError:
            return None

    def _read_small_verified(self, checksum: bytes, buffer: BufferFile) -> bytes | None:
        """A small plain buffer's verified content (cached), or None if wrong;
        FileNotFoundError if its file cannot be opened."""
        cached = self.cached(checksum, buffer)
        if cached is not None:
            return cached
        loaded = self.load_small(checksum, buffer.path, limit=None)
        return None if loaded is None else loaded[1]

    def load_small(self, checksum: bytes, path: str,
                   limit: int | None = SMALL_BUFFER) -> tuple[FileIdentity, bytes] | None:
        """A plain buffer's file read whole, with no stat before it (the open
        and its ``fstat`` say which version was read): its identity and
        verified content, held in the cache (a version held already is not
        read again).  None when its content is wrong, or when it is not a
        regular file of at most ``limit`` bytes (None: any size).  Raises
        FileNotFoundError if it cannot be opened."""
        # O_NONBLOCK: a FIFO put where the file was must not hold up the worker.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode) or (limit is not None and st.st_size > limit):
                return None
            identity = identity_of(st)
            held = self.cache.get(checksum, identity)
            if held is not None:
                self.metrics.small_buffer(True)
                return identity, held
            content = _read_to_end(fd, st.st_size)
        finally:
            os.close(fd)
        self.metrics.small_buffer(False)
        if self.verify != "never":
            correct = self.hasher.digest(content) == checksum
            self.metrics.verified(correct)
            if not correct:
                return None
        self.cache.put(checksum, identity, content)
        return identity, content

    async def _verified(self, checksum: bytes, buffer: BufferFile) -> bool:
        """Does a large or compressed file hash right?  Once per version, unless ``always``."""
        once = self.verify == "once" and self.verified.holds(buffer.path, buffer.identity)
        if self.verify == "never" or once:
            return True
        digest, length = await asyncio.get_running_loop().run_in_executor(None, buffer.digest, self.hasher)
        self.metrics.verified(digest == checksum)
        if digest != checksum:
            return False
        if buffer.encoding is not None:
            self._lengths[buffer.identity] = length
        self.verified.add(buffer.path, buffer.identity)
        return True

    async def decoded_length(self, buffer: BufferFile) -> int:
        """A buffer's length: its file's, or for a compressed one its sidecar,
        else decoded once and remembered."""
        if buffer.encoding is None:
            return buffer.size
        known = self._lengths.get(buffer.identity)
        if known is None:
            known = await Settling().retry(lambda: self._measured_length(buffer), buffer.path)
        self._lengths[buffer.identity] = known
        return known

    @staticmethod
    async def _measured_length(buffer: BufferFile) -> int:
        known = buffer.sidecar_length()
        if known is None:
            known = await asyncio.get_running_loop().run_in_executor(None, _decoded_size, buffer)
        return known

    async def _decoded(self, buffer: BufferFile) -> AsyncIterator[bytes]:
        """The decoded content, each chunk read and decoded in a thread."""
        loop = asyncio.get_running_loop()
        chunks = buffer.decoded_chunks()
        while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
            yield chunk

    def mark_verified(self, path: str) -> None:
        """A file this server has just published: its content was hashed while written."""
        buffer = BufferFile.at("", path, None)
        if buffer is not None:
            self.verified.add(buffer.path, buffer.identity)


def _opened(buffer: BufferFile, readable: Readable) -> Readable:
    """``readable`` with the buffer's file open to send as it is."""
    readable.file = open(buffer.path, "rb", buffering=0)
    return readable


def _read_to_end(fd: int, size: int) -> bytes:
    """The file's bytes from its start: one ``read`` when ``size`` (its
    ``fstat``) is right, else on to its end (a file that changed meanwhile,
    or a file system that answers short reads)."""
    first = os.read(fd, size + 1)
    if len(first) == size:
        return first
    parts = [first]
    while chunk := os.read(fd, max(size, 1 << 16)):
        parts.append(chunk)
    return b"".join(parts)


def _decoded_size(buffer: BufferFile) -> int:
    return sum(len(chunk) for chunk in buffer.decoded_chunks())
