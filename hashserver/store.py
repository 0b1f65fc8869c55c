"""The buffer store: exact lookups, and reading buffers with the lock protocol
and integrity checks.  It knows layouts, the index, locks and hashing; it knows
nothing of HTTP.

Exact lookups.  The index was true when each directory was scanned.  Each
lookup stats the directories it depends on: a directory whose modification
time is still the recorded one (and that had settled when scanned) has gained
or lost no file since, so the index is the truth for it.  For a directory that
changed, the one checksum is looked up on disk.  The publisher rescans changed
directories in the background, so the fast path comes back.  Cost: one stat
per distinct directory per request, never one per checksum on the fast path.
"""

from __future__ import annotations

import asyncio
import os
import stat as statmod
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .checksum import Hasher
from .compression import ENCODINGS, Decoder, Encoding, read_sidecar
from .index import ABSENT, KEY_DTYPE, PROMISE, UNKNOWN_SIZE, IndexData, IndexReader
from .layout import SearchPath
from .locks import POLL_MAX, LockProtocol
from .promises import Promises
from .watch import DirectoryWatch

SMALL_BUFFER = 1 << 20  # read whole into memory (and cacheable) up to this size
READ_CHUNK = 1 << 20
SUFFIXES = ("", *(e.suffix for e in ENCODINGS))  # where a buffer may be, in order
CACHE_BYTES = 64 << 20  # per worker: recently served small buffers
VERIFIED_MAX = 1 << 20  # remembered verified files per worker


@dataclass(frozen=True)
class BufferFile:
    """A buffer found on disk, identified as it was when found."""

    checksum: str
    path: str  # the file itself: <checksum>, or <checksum>.zst / .gz
    size: int  # of the file on disk
    identity: tuple[int, int, int, int]  # device, inode, size, modification time
    encoding: Encoding | None = None  # None: the file is the buffer itself

    @classmethod
    def from_stat(cls, checksum: str, path: str, st: os.stat_result,
                  encoding: Encoding | None = None) -> "BufferFile":
        return cls(checksum, path, st.st_size, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                   encoding)


class CorruptBuffer(Exception):
    """A buffer file whose content does not hash to its name (and no writer holds a lock)."""

    def __init__(self, path: str, algorithm_name: str):
        super().__init__(
            f"File corruption: file at path {path} does not have the correct "
            f"{algorithm_name} checksum."
        )
        self.path = path


def _regular_file_stat(path: str) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if statmod.S_ISREG(st.st_mode) else None


class VerifiedFiles:
    """File identities already hashed and found correct (bounded; forgets all when full)."""

    def __init__(self, limit: int = VERIFIED_MAX):
        self._seen: set[int] = set()
        self._limit = limit

    def __contains__(self, identity: tuple) -> bool:
        return hash(identity) in self._seen

    def add(self, identity: tuple) -> None:
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(hash(identity))


class ContentCache:
    """Small buffers by file identity, least recently used out first.

    A hit still needs the file to exist with the same identity, which the
    caller checks with one stat: removed files are never served from here.
    """

    def __init__(self, capacity: int = CACHE_BYTES):
        self.capacity = capacity
        self._used = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, identity: tuple) -> bytes | None:
        data = self._items.get(identity)
        if data is not None:
            self._items.move_to_end(identity)
        return data

    def put(self, identity: tuple, data: bytes) -> None:
        if len(data) > self.capacity // 16 or identity in self._items:
            return
        self._items[identity] = data
        self._used += len(data)
        while self._used > self.capacity:
            _, old = self._items.popitem(last=False)
            self._used -= len(old)


class BufferStore:
    def __init__(self, search_path: SearchPath, index: IndexReader, hasher: Hasher,
                 locks: LockProtocol, verify: str = "once", promises: Promises | None = None):
        self.search_path = search_path
        self.index = index
        self.hasher = hasher
        self.locks = locks
        self.verify = verify
        self.promises = promises
        self.verified = VerifiedFiles()
        self.cache = ContentCache()
        self._lengths: dict[tuple, int] = {}  # compressed file identity -> uncompressed length
        self.watch = DirectoryWatch(search_path.dirs)

    # ------------------------------------------------------------ lookups
    def _clean_dirs(self, data: IndexData, numbers) -> np.ndarray:
        """Per directory number: True where the index is exact for it right now.

        Directories the inotify watch vouches for need no system call; the
        others are stat'ed, and vouched for when found unchanged.
        """
        clean = np.zeros(len(self.search_path.dirs), np.bool_)
        numbers = np.fromiter(numbers, np.intp)
        self.watch.drain()
        vouched = self.watch.vouched[numbers]
        clean[numbers[vouched]] = True
        confirmed = []
        for number in numbers[~vouched].tolist():
            try:
                mtime = os.stat(self.search_path.dirs[number]).st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                mtime = ABSENT
            if data.dir_settled[number] and mtime == data.dir_mtimes[number]:
                clean[number] = True
                confirmed.append(number)
        if confirmed:
            self.watch.vouch(np.array(confirmed, np.intp))
        return clean

    def lookup(self, checksums: bytes, promised: bool = True, with_lengths: bool = True
               ) -> tuple[np.ndarray, np.ndarray, dict[int, BufferFile]]:
        """Presence and length of each checksum (``checksums``: 32 bytes each), exactly.

        ``promised``: count promised buffers as present (length 1).  Returns
        presence, lengths, and (``with_lengths``) the files whose length the
        index does not know yet, by position (see :meth:`uncompressed_length`).
        """
        data = self.index.current()
        queries = np.frombuffer(checksums, KEY_DTYPE)
        positions, found = data.find(queries)
        first_bytes = np.frombuffer(checksums, np.uint8)[::32]
        candidates = self.search_path.candidate_dirs
        used_first_bytes = np.unique(first_bytes).tolist()
        needed = {n for fb in used_first_bytes for n in candidates(fb)}
        clean = self._clean_dirs(data, needed)
        unknown: dict[int, BufferFile] = {}
        if len(data):
            present = found & clean[data.dirs[positions]]
            encodings = data.encodings[positions]
            raw_sizes = data.sizes[positions]
            is_promise = encodings == PROMISE
            if promised and self.promises is not None:
                present &= ~is_promise | (raw_sizes > self.promises.oldest_fresh_ns())
            else:
                present &= ~is_promise
            sizes = np.where(present & ~is_promise & (raw_sizes != UNKNOWN_SIZE), raw_sizes, 0).astype(np.int64)
            sizes[present & is_promise] = 1
            unmeasured = present & (raw_sizes == UNKNOWN_SIZE) & ~is_promise if with_lengths else ()
            for i in np.flatnonzero(unmeasured).tolist():
                buffer = self._indexed_file(data, int(positions[i]))
                if buffer is None:
                    present[i] = False
                else:
                    unknown[i] = buffer
        else:
            present = found.copy()
            sizes = np.zeros(len(queries), np.int64)
        changed_for = np.zeros(256, np.bool_)
        for fb in used_first_bytes:
            changed_for[fb] = not all(clean[n] for n in candidates(fb))
        for i in np.flatnonzero(~present & changed_for[first_bytes]).tolist():
            checksum_hex = checksums[32 * i: 32 * i + 32].hex()
            hit = self._find_on_disk(checksum_hex, clean)
            if hit is not None:
                present[i] = True
                if hit.encoding is None:
                    sizes[i] = hit.size
                else:
                    unknown[i] = hit
            elif promised and self.promises is not None and self.promises.is_promised(checksum_hex):
                present[i] = True
                sizes[i] = 1
        return present, sizes, unknown

    def _indexed_file(self, data: IndexData, position: int) -> BufferFile | None:
        checksum, path, encoding = data.locate(position, self.search_path)
        st = _regular_file_stat(path)
        return None if st is None else BufferFile.from_stat(checksum.hex(), path, st, encoding)

    def _find_on_disk(self, checksum_hex: str, clean: np.ndarray | None = None) -> BufferFile | None:
        """Look in each candidate directory (only the changed ones, if ``clean`` is given)."""
        first = int(checksum_hex[:2], 16)
        for number in self.search_path.candidate_dirs(first):
            if clean is not None and clean[number]:
                continue
            base = self.search_path.path(number, checksum_hex)
            for suffix in SUFFIXES:
                st = _regular_file_stat(base + suffix)
                if st is not None:
                    encoding = ENCODINGS[SUFFIXES.index(suffix) - 1] if suffix else None
                    return BufferFile.from_stat(checksum_hex, base + suffix, st, encoding)
        return None

    def find(self, checksum: bytes) -> BufferFile | None:
        """One buffer, exactly: where it is on disk now (plain or compressed), or None."""
        data = self.index.current()
        position = data.find_one(checksum)
        if position >= 0 and data.encodings[position] != PROMISE:
            # The index knows where it was; one stat says whether it still is.
            buffer = self._indexed_file(data, position)
            return buffer if buffer is not None else self._find_on_disk(checksum.hex())
        candidates = self.search_path.candidate_dirs(checksum[0])
        clean = self._clean_dirs(data, candidates)
        if all(clean[n] for n in candidates):
            return None
        return self._find_on_disk(checksum.hex(), clean)

    def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        return self.lookup(checksums, promised, with_lengths=False)[0].tolist()

    async def lengths(self, checksums: bytes) -> list[int]:
        present, sizes, unknown = self.lookup(checksums)
        for i, buffer in unknown.items():
            sizes[i] = await self.uncompressed_length(buffer)
        return sizes.tolist()

    async def uncompressed_length(self, buffer: BufferFile) -> int:
        """A compressed buffer's length: its sidecar, else decompressed once and remembered."""
        if buffer.encoding is None:
            return buffer.size
        known = self._lengths.get(buffer.identity)
        if known is None:
            known = read_sidecar(buffer.path[: -len(buffer.encoding.suffix)])
        if known is None:
            known = await asyncio.get_running_loop().run_in_executor(None, self._measure, buffer)
        self._lengths[buffer.identity] = known
        return known

    def _measure(self, buffer: BufferFile) -> int:
        decoder = Decoder(buffer.encoding)
        for chunk in _file_chunks(buffer.path):
            decoder.feed(chunk)
        decoder.finish()
        return decoder.length

    # ------------------------------------------------------------- reading
    def lock_paths(self, checksum_hex: str) -> list[str]:
        return [*self.search_path.global_locks(checksum_hex),
                *self.search_path.file_locks(checksum_hex)]

    async def open(self, checksum: bytes) -> tuple[BufferFile, bytes | None] | None:
        """Find a buffer for reading, honouring locks and promises and checking its integrity.

        Returns the file and, for small plain buffers, its verified content;
        None if absent.  Waits while a fresh lock says the buffer is being
        written, or while it is promised.  Raises :class:`CorruptBuffer` for a
        wrong file that no lock explains.
        """
        checksum_hex = checksum.hex()
        buffer = self.find(checksum)
        if buffer is None:
            if await self.locks.wait_until_free(self.lock_paths(checksum_hex)):
                buffer = self.find(checksum)
            if buffer is None:
                buffer = await self._wait_for_promise(checksum)
            if buffer is None:
                return None
        for attempt in range(2):
            ok, content = await self._read_verified(checksum, buffer)
            if ok:
                return buffer, content
            if attempt or not await self.locks.wait_until_free(self.lock_paths(checksum_hex)):
                break
            buffer = self.find(checksum)
            if buffer is None:
                return None
        raise CorruptBuffer(buffer.path, self.hasher.display_name)

    async def _wait_for_promise(self, checksum: bytes) -> BufferFile | None:
        """While the buffer is promised, wait for it to arrive."""
        if self.promises is None:
            return None
        checksum_hex = checksum.hex()
        while self.promises.is_promised(checksum_hex):
            await asyncio.sleep(POLL_MAX / 5)
            buffer = self.find(checksum)
            if buffer is not None:
                return buffer
        return self.find(checksum)

    async def _read_verified(self, checksum: bytes, buffer: BufferFile) -> tuple[bool, bytes | None]:
        """Is the file's content right?  Small plain files are read (and cached) on the way."""
        if buffer.encoding is None and buffer.size <= SMALL_BUFFER:
            cached = self.cache.get(buffer.identity)
            if cached is not None and self.verify != "always":
                return True, cached
            try:
                with open(buffer.path, "rb", buffering=0) as f:
                    st = os.fstat(f.fileno())
                    content = f.read()
            except FileNotFoundError:
                return False, None
            if self.verify != "never" and self.hasher.digest(content) != checksum:
                return False, None
            self.cache.put((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), content)
            return True, content
        if self.verify == "never" or (self.verify == "once" and buffer.identity in self.verified):
            return True, None
        digest = await asyncio.get_running_loop().run_in_executor(None, self._digest, buffer)
        if digest != checksum:
            return False, None
        self.verified.add(buffer.identity)
        return True, None

    def _digest(self, buffer: BufferFile) -> bytes | None:
        """The checksum of the buffer's (uncompressed) content; None if it does not decode."""
        if buffer.encoding is None:
            return self.hasher.digest_file(buffer.path)
        h = self.hasher.new()
        decoder = Decoder(buffer.encoding)
        try:
            for chunk in _file_chunks(buffer.path):
                h.update(decoder.feed(chunk))
            h.update(decoder.finish())
        except Exception:  # undecodable: as wrong as a wrong hash
            return None
        self._lengths[buffer.identity] = decoder.length
        return h.digest()

    async def decompressed(self, buffer: BufferFile):
        """The uncompressed content of a compressed buffer, chunk by chunk."""
        loop = asyncio.get_running_loop()
        decoder = Decoder(buffer.encoding)
        with open(buffer.path, "rb", buffering=0) as f:
            while True:
                chunk = await loop.run_in_executor(None, f.read, READ_CHUNK)
                if not chunk:
                    break
                out = decoder.feed(chunk)
                if out:
                    yield out
        tail = decoder.finish()
        if tail:
            yield tail

    def mark_verified(self, path: str) -> None:
        """A file this server has just published: its content was hashed while written."""
        st = _regular_file_stat(path)
        if st is not None:
            self.verified.add((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def _file_chunks(path: str, size: int = READ_CHUNK):
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(size):
            yield chunk
