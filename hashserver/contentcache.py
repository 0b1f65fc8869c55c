"""What a worker keeps of buffers it has read: their verified content, small
ones whole, and which file versions were already hashed.

Both are keyed by a file's identity (device, inode, size, times), so a
removed or replaced file is never answered from here, and by its name (the
checksum): a file renamed or linked to another name keeps its identity.

The content cache also keeps *proofs*: that the file answering for a checksum
had a given identity under a stamp of the directory watch
(:meth:`ExactIndex.stamp <hashserver.lookup.ExactIndex.stamp>`).  While the
stamp is the same, no file of those directories changed, so the content is
served by checksum with no ``stat`` at all.

Sizing (``CACHE_BYTES``, per worker, counting each entry's bookkeeping
too): 256 MiB hold about 180,000 buffers of 1 KiB, the bench's 100,000 with
room to spare, in each worker.  Held per worker rather than shared, so a hit
is a dictionary lookup; the price is that each worker holds its own copy of
what it served: at most 256 MiB times the workers.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from .bufferfile import FileIdentity
from .config import DEFAULT_MEMORY_CACHE

CACHE_BYTES = DEFAULT_MEMORY_CACHE  # per worker: recently served small buffers (--memory-cache)
ENTRY_OVERHEAD = 448  # bytes of Python objects per entry besides its content (identity, checksum, dictionaries, proof)
VERIFIED_MAX = 1 << 20  # remembered verified file versions per worker
Key = tuple[bytes, FileIdentity]  # checksum, file identity


class VerifiedFiles:
    """File versions already hashed and found correct, by file name and
    identity (a rename or hard link keeps the identity, not the name);
    bounded: forgets all when full.  Only hashes are kept (randomized per
    process for ``str``), to stay small."""

    def __init__(self, limit: int = VERIFIED_MAX):
        self._seen: set[int] = set()
        self._limit = limit

    def holds(self, path: str, identity: FileIdentity) -> bool:
        return hash((os.path.basename(path), identity)) in self._seen

    def add(self, path: str, identity: FileIdentity) -> None:
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(hash((os.path.basename(path), identity)))


class ContentCache:
    """Small verified buffers by checksum and file identity, least recently used out first.

    A hit needs the file to exist with the same identity, which the caller
    checks with one stat or ``fstat`` (:meth:`get`), or a proof under the
    same stamp (:meth:`proven`): removed or replaced files are never served
    from here.  The checksum is part of the key because a rename or a hard
    link keeps the identity: content verified for one checksum says nothing
    of the same file under another name.
    """

    def __init__(self, capacity: int = CACHE_BYTES):
        self.capacity = capacity
        self._used = 0
        self._items: OrderedDict[Key, bytes] = OrderedDict()
        self._proofs: dict[bytes, tuple[object, Key, bytes]] = {}  # checksum -> stamp, key, content

    def __len__(self) -> int:
        return len(self._items)

    def get(self, checksum: bytes, identity: FileIdentity) -> bytes | None:
        key: Key = (checksum, identity)
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, checksum: bytes, identity: FileIdentity, data: bytes) -> None:
        key = (checksum, identity)
        if len(data) > self.capacity // 16 or key in self._items:
            return
        self._items[key] = data
        self._used += len(data) + ENTRY_OVERHEAD
        while self._used > self.capacity:
            old_key, old = self._items.popitem(last=False)
            self._used -= len(old) + ENTRY_OVERHEAD
            proof = self._proofs.get(old_key[0])
            if proof is not None and proof[1] == old_key:
                del self._proofs[old_key[0]]

    def prove(self, checksum: bytes, identity: FileIdentity, stamp: object) -> None:
        """The file answering for ``checksum`` was found with this identity
        under ``stamp`` (checked after the stamp was taken); kept if its
        content is held."""
        key = (checksum, identity)
        data = self._items.get(key)
        if data is not None:
            self._proofs[checksum] = (stamp, key, data)

    def may_hold(self, checksum: bytes) -> bool:
        """Whether some content of ``checksum`` was proven (under any stamp): a
        look that costs less than finding out that it is not held."""
        return checksum in self._proofs

    def proven(self, checksum: bytes, stamp: object) -> bytes | None:
        """The content of ``checksum``, if proven under this very stamp."""
        proof = self._proofs.get(checksum)
        if proof is None or proof[0] != stamp:
            return None
        self._items.move_to_end(proof[1])
        return proof[2]
