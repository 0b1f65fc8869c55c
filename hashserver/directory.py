"""The buffer directory as a :class:`~hashserver.storage.Storage`.

One per worker.  It puts together the exact lookups over the shared index
(:mod:`.lookup`), the reader with its lock, promise and integrity rules
(:mod:`.reader`), the writer (:mod:`.writer`) and promises (:mod:`.promises`).
"""

from __future__ import annotations

from typing import AsyncIterator

from .checksum import Hasher
from .compression import for_content_encoding
from .config import Config
from .index import IndexReader
from .layout import SearchPath
from .locks import LockProtocol
from .lookup import ExactIndex
from .promises import Promises
from .reader import BufferReader
from .storage import Fast, PutOutcome, Readable, ReadOnly
from .writer import BufferWriter


class DirectoryStore:
    """Buffers in a directory (and read-only extra directories), exactly, as
    other programs add and remove them."""

    def __init__(self, search_path: SearchPath, index: IndexReader, hasher: Hasher, locks: LockProtocol,
                 verify: str = "once", writable: bool = False, max_body_size: int = 1 << 36):
        self.writable = writable
        self.search_path = search_path
        self.locks = locks
        self.promises = Promises(search_path) if writable else None
        self.lookups = ExactIndex(search_path, index, self.promises)
        self.reader = BufferReader(self.lookups, hasher, locks, verify)
        self.writer = BufferWriter(search_path, hasher, locks, self.promises, max_body_size,
                                   exists=lambda checksum: self.lookups.find(checksum) is not None,
                                   published=self.reader.mark_verified) if writable else None

    @classmethod
    def from_config(cls, config: Config, index: IndexReader) -> "DirectoryStore":
        return cls(SearchPath.from_config(config), index, Hasher(config.hash_algorithm),
                   LockProtocol(config.lock_timeout), config.verify, config.writable, config.max_body_size)

    def peek(self, checksum: bytes) -> bytes | Fast:
        buffer = self.lookups.find(checksum)
        if buffer is not None:
            content = self.reader.cached(buffer)
            return Fast.REGULAR if content is None else content
        checksum_hex = checksum.hex()
        if self.lookups.is_promised(checksum_hex) or self.locks.any_fresh(self.search_path.read_locks(checksum_hex)):
            return Fast.REGULAR
        return Fast.ABSENT

    async def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        return self.lookups.lookup(checksums, promised, with_lengths=False).present.tolist()

    async def lengths(self, checksums: bytes) -> list[int]:
        found = self.lookups.lookup(checksums)
        for i, buffer in found.unmeasured.items():
            found.sizes[i] = await self.reader.decoded_length(buffer)
        return found.sizes.tolist()

    async def open(self, checksum: bytes, accepted: frozenset[str] = frozenset()) -> Readable | None:
        return await self.reader.open(checksum, accepted)

    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  content_encoding: str | None = None) -> PutOutcome:
        if self.writer is None:
            raise ReadOnly.put()
        return await self.writer.put(checksum, body, for_content_encoding(content_encoding))

    async def promise(self, checksum: bytes) -> int:
        if self.promises is None:
            raise ReadOnly.promise()
        if self.lookups.find(checksum) is None:
            self.promises.promise(checksum.hex())
        return int(self.promises.ttl)

    def close(self) -> None:
        self.lookups.close()
