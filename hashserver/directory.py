"""The buffer directory as a :class:`~hashserver.storage.Storage`.

One per worker.  It puts together the exact lookups over the shared index
(:mod:`.lookup`), the reader with its lock, promise and integrity rules
(:mod:`.reader`), the writer (:mod:`.writer`) and promises (:mod:`.promises`).
"""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from typing import AsyncIterator, Iterator

from .bufferfile import BufferFile
from .checksum import Hasher
from .compression import for_content_encoding
from .config import Config
from .contentcache import CACHE_BYTES
from .index import PLAIN, PROMISE, IndexReader
from .layout import SearchPath
from .lockfree import LockFreeDirectories
from .locks import LockProtocol
from .lookup import ExactIndex
from .metrics import Metrics
from .promises import Promises
from .reader import SMALL_BUFFER, BufferReader
from .storage import DiskFull, Fast, PutOutcome, Readable, ReadOnly, StorageUnavailable, Want
from .writer import BodyPace, BufferWriter

HEALTH_EVERY = 1.0  # seconds between two checks of the main directory


@contextmanager
def storage_errors(metrics: Metrics) -> Iterator[None]:
    """An ``OSError`` of the buffer directory is a storage failure (503), or
    a full disk (507): never an answer that a buffer is absent."""
    try:
        yield
    except ConnectionError:
        raise  # the client's connection, not the storage
    except OSError as exc:
        raise storage_failure(metrics, exc) from exc


def storage_failure(metrics: Metrics, exc: OSError) -> DiskFull | StorageUnavailable:
    """What an ``OSError`` of the buffer directory is to the HTTP side (counted)."""
    metrics.storage_error(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull()
    return StorageUnavailable(describe(exc))


def describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    where = f": {exc.filename}" if exc.filename else ""
    return f"Storage unavailable: {exc.strerror or exc} ({name}){where}"


class DirectoryStore:
    """Buffers in a directory (and read-only extra directories), exactly, as
    other programs add and remove them."""

    def __init__(self, search_path: SearchPath, index: IndexReader, hasher: Hasher, locks: LockProtocol,
                 verify: str = "once", writable: bool = False, max_body_size: int = 1 << 36,
                 wait_timeout: float = 30.0, pace: BodyPace | None = None, metrics: Metrics | None = None,
                 cache_bytes: int = CACHE_BYTES):
        self.metrics = metrics = metrics or Metrics.unobserved()
        self.writable = writable
        self.search_path = search_path
        self.locks = locks
        self.promises = Promises(search_path) if writable else None
        self.lookups = ExactIndex(search_path, index, self.promises, metrics)
        self.reader = BufferReader(self.lookups, hasher, locks, verify, wait_timeout, metrics, cache_bytes)
        self.cache = self.reader.cache
        self.lock_free = LockFreeDirectories(search_path, self.lookups.watch)
        self.writer = BufferWriter(search_path, hasher, locks, self.promises, max_body_size,
                                   exists=lambda checksum: self.lookups.find(checksum) is not None,
                                   published=self.reader.mark_verified, pace=pace) if writable else None
        self._health: tuple[float, str | None] = (float("-inf"), None)

    @classmethod
    def from_config(cls, config: Config, index: IndexReader, metrics: Metrics | None = None) -> "DirectoryStore":
        return cls(SearchPath.from_config(config), index, Hasher(config.hash_algorithm),
                   LockProtocol(config.lock_timeout), config.verify, config.writable, config.max_body_size,
                   config.wait_timeout, BodyPace(config.body_idle_timeout, config.min_body_rate), metrics,
                   config.memory_cache)

    def _main_is_there(self) -> None:
        """Before saying "absent": the main directory is still there (else 503)."""
        os.stat(self.search_path.main.root)

    def peek(self, checksum: bytes) -> bytes | Fast:
        """Answers what needs no wait.  Where the watch vouches for the
        checksum's directories (:meth:`ExactIndex.stamp`), a held buffer
        proven under the same stamp, and an absence where no lock file can
        exist (:class:`LockFreeDirectories`), take no system call but the
        drain; a small plain buffer not held yet is read where the index
        says it is, verified and held (:meth:`_peek_vouched`).
        (``storage_errors`` inline: a context manager costs a hit a fifth more.)"""
        try:
            stamp = self.lookups.stamp(checksum)
            if stamp is not None:
                held = self.cache.proven(checksum, stamp)
                if held is not None:
                    self.metrics.small_buffer(True)
                    return held
                found = self._peek_vouched(checksum, stamp)
                if found is not None:
                    return found
            return self._peek_stat(checksum, stamp)
        except ConnectionError:
            raise
        except OSError as exc:
            raise storage_failure(self.metrics, exc) from exc

    def _peek_vouched(self, checksum: bytes, stamp) -> bytes | Fast | None:
        """:meth:`peek` of a buffer not held, under a stamp: the index is exact
        for its directories, so its record says where the file is, and the
        open finds the version to read (no stat before it: a miss costs
        little more than the read and the hash).  None where the record is a
        promise, or the file is gone (a change the watch has not reported
        yet): :meth:`_peek_stat` looks then."""
        data = self.lookups.index.current()
        position = data.find_one(checksum)
        if position < 0:
            return Fast.ABSENT if self.lock_free.holds(checksum[0]) else None
        encoding = int(data.encodings[position])
        if encoding == PROMISE:
            return None
        if encoding != PLAIN or self.reader.verify == "always":
            return Fast.REGULAR
        path = self.search_path.path(int(data.dirs[position]), checksum.hex())  # a plain file's (IndexData.locate)
        try:
            loaded = self.reader.load_small(checksum, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if loaded is None:
            return Fast.REGULAR  # large, or wrong: the regular route's stream, lock and corruption rules
        identity, content = loaded
        self.cache.prove(checksum, identity, stamp)
        return content

    def _peek_stat(self, checksum: bytes, stamp) -> bytes | Fast:
        """:meth:`peek` where the watch does not vouch, or has not learnt enough: with stats."""
        buffer = self.lookups.find(checksum)
        if buffer is not None:
            return self._small(checksum, buffer, stamp)
        checksum_hex = checksum.hex()
        locks = self.search_path.read_locks(checksum_hex)
        if self.lookups.is_promised(checksum_hex) or self.locks.any_fresh(locks):
            return Fast.REGULAR
        self._main_is_there()
        return Fast.ABSENT

    def _small(self, checksum: bytes, buffer: BufferFile, stamp) -> bytes | Fast:
        """A small plain buffer's verified content (held, or read now as the
        regular route would), proven under ``stamp`` if given; else REGULAR
        (and always with ``--verify always``: every read is hashed on the regular path)."""
        if buffer.encoding is not None or buffer.size > SMALL_BUFFER or self.reader.verify == "always":
            return Fast.REGULAR
        content = self.reader.cached(checksum, buffer)
        if content is not None:
            self.metrics.small_buffer(True)
        else:
            content = self.reader._read_small(checksum, buffer)
            if content is None:
                return Fast.REGULAR  # wrong or gone: the regular route's lock and corruption rules
        if stamp is not None:
            self.cache.prove(checksum, buffer.identity, stamp)
        return content

    async def fetch(self, checksum: bytes) -> bytes | Fast:
        return Fast.REGULAR  # peek never sends here: it reads what a directory holds itself

    async def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        with storage_errors(self.metrics):
            present = self.lookups.lookup(checksums, promised, with_lengths=False).present
            if not present.all():
                self._main_is_there()
            return present.tolist()

    async def lengths(self, checksums: bytes) -> list[int]:
        with storage_errors(self.metrics):
            found = self.lookups.lookup(checksums)
            for i, buffer in found.unmeasured.items():
                found.sizes[i] = await self.reader.decoded_length(buffer)
            if not found.present.all():
                self._main_is_there()
            return found.sizes.tolist()

    async def open(self, checksum: bytes, accepted: frozenset[str] = frozenset(),
                   want: Want = Want.WHOLE) -> Readable | None:
        with storage_errors(self.metrics):
            readable = await self.reader.open(checksum, accepted)
            if readable is None:
                self._main_is_there()
            return readable

    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  content_encoding: str | None = None) -> PutOutcome:
        if self.writer is None:
            raise ReadOnly.put()
        try:
            with storage_errors(self.metrics):
                outcome = await self.writer.put(checksum, body, for_content_encoding(content_encoding))
        except Exception as exc:
            self.metrics.put_failed(exc)
            raise
        self.metrics.put(outcome.value)
        return outcome

    async def promise(self, checksum: bytes) -> int:
        if self.promises is None:
            raise ReadOnly.promise()
        with storage_errors(self.metrics):
            if self.lookups.find(checksum) is None:
                self.promises.promise(checksum.hex())
                self.metrics.promised()
        return int(self.promises.ttl)

    async def health(self) -> str | None:
        checked, problem = self._health
        if time.monotonic() - checked < HEALTH_EVERY:
            return problem
        try:
            with os.scandir(self.search_path.main.root) as entries:
                next(entries, None)
            problem = None
        except OSError as exc:
            problem = describe(exc)
        self._health = (time.monotonic(), problem)
        self.metrics.health(problem is None)
        return problem

    def close(self) -> None:
        self.lookups.close()
