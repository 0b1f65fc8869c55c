"""The index's record format: one generation of the checksum -> location index.

A generation is one immutable file: a header, one modification time per
buffer directory as seen when that directory was scanned (and whether it had
settled), then one 48-byte record per buffer, sorted by checksum, then each
checksum's first 8 bytes as an integer (the search key).  56 bytes per
buffer, paid once however many workers there are: every worker maps the same
file (see :mod:`hashserver.index.shm`).

A record: the 32 raw checksum bytes; the size as uint64 (of the decoded
buffer; ``UNKNOWN_SIZE`` until measured); the directory number as uint16; the
encoding as uint8 (plain, zstd, gzip, or ``PROMISE``); and, for a promise,
when it was made (uint32 seconds since the epoch).
"""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from ..compression import BY_CODE, Encoding
from ..layout import SearchPath

MAGIC = b"HSIDX005"
HEADER = struct.Struct("<8sQI4x")  # magic, number of buffers, number of directories
KEY_DTYPE = np.dtype("S32")
RECORD = np.dtype({"names": ["key", "size", "dir", "encoding", "promised_at"],
                   "formats": [KEY_DTYPE, np.uint64, np.uint16, np.uint8, np.uint32],
                   "offsets": [0, 32, 40, 42, 44], "itemsize": 48})
ABSENT = -1  # modification time recorded for a directory that did not exist
PLAIN = 0
PROMISE = 255  # an entry that is a promise, not a buffer
UNKNOWN_SIZE = np.iinfo(np.uint64).max  # not measured yet (or compressed without sidecar)


def key_prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as an integer that sorts like the key."""
    return np.ascontiguousarray(keys).view(np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


def make_records(keys: bytes, sizes, encodings, directory: int, promised_at=None) -> np.ndarray:
    """Records for buffers of one directory (``keys``: 32 bytes each)."""
    records = np.zeros(len(keys) // 32, RECORD)
    records["key"] = np.frombuffer(keys, KEY_DTYPE)
    records["size"], records["encoding"], records["dir"] = sizes, encodings, directory
    if promised_at is not None:
        records["promised_at"] = promised_at
    return records


def concat_records(parts: list[np.ndarray]) -> np.ndarray:
    """Records one after another, in the padded record layout (``np.concatenate``
    would promote to a packed dtype without the padding)."""
    out = np.empty(sum(len(p) for p in parts), RECORD)
    offset = 0
    for part in parts:
        out[offset:offset + len(part)] = part
        offset += len(part)
    return out


class IndexData:
    """One generation: sorted records, plus the directories' recorded
    modification times.  Arrays may be views of a mapping."""

    def __init__(self, records: np.ndarray, dir_mtimes: np.ndarray, dir_settled: np.ndarray,
                 mapping=None, prefixes: np.ndarray | None = None):
        # One record per buffer, its fields side by side: a lookup's reads of
        # key, size, directory and encoding touch one cache line, not four
        # arrays (at 1,000,000 buffers that was most of a /has request's time).
        self.records = records
        self.keys: np.ndarray = records["key"]
        self.sizes: np.ndarray = records["size"]
        self.dirs: np.ndarray = records["dir"]
        self.encodings: np.ndarray = records["encoding"]
        self.promised_at: np.ndarray = records["promised_at"]
        self.prefixes: np.ndarray = key_prefixes(self.keys) if prefixes is None else prefixes
        self.dir_mtimes = dir_mtimes
        self.dir_settled = dir_settled
        self._mapping = mapping

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def empty(cls, ndirs: int) -> "IndexData":
        # never scanned: never trusted
        return cls(np.empty(0, RECORD), np.full(ndirs, ABSENT, np.int64), np.zeros(ndirs, np.bool_))

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query key: its position in the index, and whether it is there.

        The search runs on the keys' first 8 bytes as integers (many times
        faster than comparing 32-byte strings); the rare prefix shared by
        several keys is resolved on the full keys.
        """
        if len(self.keys) == 0:
            zeros = np.zeros(len(queries), np.intp)
            return zeros, np.zeros(len(queries), np.bool_)
        query_prefixes = key_prefixes(queries)
        positions = np.searchsorted(self.prefixes, query_prefixes)
        positions[positions == len(self.keys)] = 0
        found = self.keys[positions] == queries
        for i in np.flatnonzero(~found & (self.prefixes[positions] == query_prefixes)).tolist():
            position = self.find_one(queries[i:i + 1].tobytes())
            if position >= 0:
                positions[i], found[i] = position, True
        return positions, found

    def locate(self, position: int, search_path: SearchPath) -> tuple[bytes, str, Encoding | None]:
        """The checksum at ``position``, the file it was indexed as, and its encoding."""
        # A slice keeps all 32 bytes; a numpy scalar would drop trailing zero bytes.
        checksum = self.keys[position:position + 1].tobytes()
        encoding = BY_CODE.get(int(self.encodings[position]))
        path = search_path.path(int(self.dirs[position]), checksum.hex(),
                                encoding.suffix if encoding else "")
        return checksum, path, encoding

    def find_one(self, checksum: bytes) -> int:
        """Position of one checksum (32 bytes) in the index, or -1: the fast
        path of single-buffer requests, without building query arrays."""
        n = len(self.keys)
        prefix = np.uint64(int.from_bytes(checksum[:8], "big"))
        position = int(self.prefixes.searchsorted(prefix))
        while position < n and self.prefixes[position] == prefix:
            if self.keys[position:position + 1].tobytes() == checksum:
                return position
            position += 1
        return -1

    def merged(self, scans: list) -> "IndexData":
        """A new generation: these directories (:class:`DirectoryScan`) replaced by their new scans.

        One entry per checksum: a real file before a promise, then the first
        directory in search order, then the plain file before a compressed one.
        """
        replaced = np.array([s.number for s in scans], np.uint16)
        parts = [self.records[~np.isin(self.dirs, replaced)]]
        dir_mtimes = np.array(self.dir_mtimes, copy=True)
        dir_settled = np.array(self.dir_settled, copy=True)
        for scan in scans:
            parts.append(scan.records)
            dir_mtimes[scan.number] = scan.mtime_ns
            dir_settled[scan.number] = scan.settled
        records = concat_records(parts)
        encodings = records["encoding"]
        records = records[np.lexsort((encodings, records["dir"], encodings == PROMISE, records["key"]))]
        if len(records) > 1:
            keys = records["key"]
            first = np.empty(len(records), np.bool_)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            records = records[first]
        return IndexData(records, dir_mtimes, dir_settled)

    # ---------------------------------------------------------------- file
    def write(self, path: str) -> None:
        """Write this generation to ``path`` atomically (temporary file + rename)."""
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, len(self.keys), len(self.dir_mtimes)))
            for array in (self.dir_mtimes, self.dir_settled.astype(np.uint8),
                          self.records, self.prefixes):
                f.write(_padded(np.ascontiguousarray(array).tobytes()))
        os.replace(tmp, path)

    @classmethod
    def open(cls, path: str) -> "IndexData":
        """Map a generation file read-only; the pages are shared between processes."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapping = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else None
        magic, n, ndirs = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC:
            raise ValueError(f"{path} is not a hashserver index")
        offset = HEADER.size
        arrays = []
        for dtype, count in ((np.int64, ndirs), (np.uint8, ndirs), (RECORD, n), (np.uint64, n)):
            array = np.frombuffer(mapping, dtype=dtype, count=count, offset=offset)
            arrays.append(array)
            offset += _round8(array.nbytes)
        dir_mtimes, settled, records, prefixes = arrays
        return cls(records, dir_mtimes, settled.astype(np.bool_), mapping, prefixes)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (_round8(len(data)) - len(data))

