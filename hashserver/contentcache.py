"""What a worker keeps of buffers it has read: their verified content, small
ones whole, and which file versions were already hashed.

Both are keyed by a file's identity (device, inode, size, times), so a
removed or replaced file is never answered from here.
"""

from __future__ import annotations

from collections import OrderedDict

from .bufferfile import FileIdentity

CACHE_BYTES = 64 << 20  # per worker: recently served small buffers
VERIFIED_MAX = 1 << 20  # remembered verified file versions per worker


class VerifiedFiles:
    """File identities already hashed and found correct (bounded; forgets all when full)."""

    def __init__(self, limit: int = VERIFIED_MAX):
        self._seen: set[int] = set()
        self._limit = limit

    def __contains__(self, identity: FileIdentity) -> bool:
        return hash(identity) in self._seen

    def add(self, identity: FileIdentity) -> None:
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(hash(identity))


class ContentCache:
    """Small verified buffers by file identity, least recently used out first.

    A hit needs the file to exist with the same identity, which the caller
    checks with one stat: removed or replaced files are never served from here.
    """

    def __init__(self, capacity: int = CACHE_BYTES):
        self.capacity = capacity
        self._used = 0
        self._items: OrderedDict[FileIdentity, bytes] = OrderedDict()

    def get(self, identity: FileIdentity) -> bytes | None:
        data = self._items.get(identity)
        if data is not None:
            self._items.move_to_end(identity)
        return data

    def put(self, identity: FileIdentity, data: bytes) -> None:
        if len(data) > self.capacity // 16 or identity in self._items:
            return
        self._items[identity] = data
        self._used += len(data)
        while self._used > self.capacity:
            _, old = self._items.popitem(last=False)
            self._used -= len(old)
