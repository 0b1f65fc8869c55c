"""What a worker keeps of buffers it has read: their verified content, small
ones whole, and which file versions were already hashed.

Both are keyed by a file's identity (device, inode, size, times), so a
removed or replaced file is never answered from here.

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

from collections import OrderedDict

from .bufferfile import FileIdentity
from .config import DEFAULT_MEMORY_CACHE

CACHE_BYTES = DEFAULT_MEMORY_CACHE  # per worker: recently served small buffers (--memory-cache)
ENTRY_OVERHEAD = 448  # bytes of Python objects per entry besides its content (identity, checksum, dictionaries, proof)
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
    checks with one stat (:meth:`get`), or a proof under the same stamp
    (:meth:`proven`): removed or replaced files are never served from here.
    """

    def __init__(self, capacity: int = CACHE_BYTES):
        self.capacity = capacity
        self._used = 0
        self._items: OrderedDict[FileIdentity, bytes] = OrderedDict()
        self._proofs: dict[bytes, tuple[object, FileIdentity, bytes]] = {}  # checksum -> stamp, identity, content
        self._proven: dict[FileIdentity, bytes] = {}  # identity -> checksum, to drop the proof with the content

    def __len__(self) -> int:
        return len(self._items)

    def get(self, identity: FileIdentity) -> bytes | None:
        data = self._items.get(identity)
        if data is not None:
            self._items.move_to_end(identity)
        return data

    def put(self, identity: FileIdentity, data: bytes) -> None:
        if len(data) > self.capacity // 16 or identity in self._items:
            return
        self._items[identity] = data
        self._used += len(data) + ENTRY_OVERHEAD
        while self._used > self.capacity:
            old_identity, old = self._items.popitem(last=False)
            self._used -= len(old) + ENTRY_OVERHEAD
            checksum = self._proven.pop(old_identity, None)
            if checksum is not None:
                del self._proofs[checksum]

    def prove(self, checksum: bytes, identity: FileIdentity, stamp: object) -> None:
        """The file answering for ``checksum`` was found with this identity
        under ``stamp`` (checked after the stamp was taken); kept if its
        content is held."""
        data = self._items.get(identity)
        if data is None:
            return
        old = self._proofs.get(checksum)
        if old is not None and old[1] != identity:
            del self._proven[old[1]]
        previous = self._proven.get(identity)
        if previous is not None and previous != checksum:
            del self._proofs[previous]
        self._proofs[checksum] = (stamp, identity, data)
        self._proven[identity] = checksum

    def proven(self, checksum: bytes, stamp: object) -> bytes | None:
        """The content of ``checksum``, if proven under this very stamp."""
        proof = self._proofs.get(checksum)
        if proof is None or proof[0] != stamp:
            return None
        self._items.move_to_end(proof[1])
        return proof[2]
