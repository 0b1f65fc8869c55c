"""The index's record format: one generation of the checksum -> location index.

A generation is one immutable file: a header, one modification time per
buffer directory as seen when that directory was scanned (and whether it had
settled), the fan-out table (:mod:`.fanout`: 8 bytes per bucket, 11 to 21 per
buffer), then one 48-byte record per buffer file, sorted by checksum.  59 to
69 bytes per buffer, paid once however many workers there are: every worker maps the same
file (see :mod:`hashserver.index.shm`).

A record: the 32 raw checksum bytes; the size as uint64 (of the decoded
buffer; ``UNKNOWN_SIZE`` until measured); the directory number as uint16; the
encoding as uint8 (plain, zstd, gzip, or ``PROMISE``); and, for a promise,
when it was made (uint32 seconds since the epoch).

A checksum found in several places (directories, encodings, a promise) has
one record for each, the one that answers first: a real file before a
promise, then the first directory in search order, then the plain file before
a compressed one.  The others are kept, so that when a rescan drops the first
(its file was deleted) the next one still answers.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import numpy as np

from ..compression import BY_CODE, Encoding
from ..layout import SearchPath
from .fanout import TABLE_DTYPE, FanOut, fanout_bits, fanout_table, leading
from .hugepages import map_file

MAGIC = b"HSIDX007"
# magic, records, distinct checksums, directories, fan-out bits
HEADER = struct.Struct("<8sQQII")
KEY_DTYPE = np.dtype("S32")
RECORD = np.dtype({"names": ["key", "size", "dir", "encoding", "promised_at"],
                   "formats": [KEY_DTYPE, np.uint64, np.uint16, np.uint8, np.uint32],
                   "offsets": [0, 32, 40, 42, 44], "itemsize": 48})
ABSENT = -1  # modification time recorded for a directory that did not exist
PLAIN = 0
PROMISE = 255  # an entry that is a promise, not a buffer
UNKNOWN_SIZE = np.iinfo(np.uint64).max  # not measured yet (or compressed without sidecar)
CACHE_LINE = 64


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
    would promote to a packed dtype without the padding).  Empties ``parts``
    as it goes, so that each part can be freed as soon as it is copied."""
    out = np.empty(sum(len(p) for p in parts), RECORD)
    raw = out.view(np.uint8)  # whole records, padding included: a plain copy, not field by field
    offset = 0
    parts.reverse()
    while parts:
        part = np.ascontiguousarray(parts.pop()).view(np.uint8)
        raw[offset:offset + len(part)] = part
        offset += len(part)
    return out


def record_words(records: np.ndarray) -> np.ndarray:
    """Contiguous records as rows of native 64-bit words (a view): the key is words 0-3."""
    return records.view(np.uint64).reshape(len(records), RECORD.itemsize // 8)


def _sections(records: int, ndirs: int, bits: int) -> list[tuple[int, np.dtype, int]]:
    """(offset, dtype, count) of each array of a generation file, in file order:
    modification times, settled flags, fan-out table, records."""
    sections = []
    offset = HEADER.size
    for dtype, count, align in ((np.dtype(np.int64), ndirs, 8), (np.dtype(np.uint8), ndirs, 8),
                                (TABLE_DTYPE, (1 << bits) + 1, CACHE_LINE), (RECORD, records, CACHE_LINE)):
        offset = -(-offset // align) * align
        sections.append((offset, dtype, count))
        offset += dtype.itemsize * count
    return sections


def write_generation(path: str, distinct: int, dir_mtimes: np.ndarray, dir_settled: np.ndarray,
                     table: np.ndarray, records: int, chunks: Iterable[np.ndarray]) -> None:
    """Write a generation file atomically (temporary file + rename); the
    records come in sorted chunks, so that they never have to be in memory at once."""
    bits = len(table).bit_length() - 1
    sections = _sections(records, len(dir_mtimes), bits)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, records, distinct, len(dir_mtimes), bits))
        arrays = (dir_mtimes.astype(np.int64), dir_settled.astype(np.uint8), table)
        for (offset, _, _), array in zip(sections[:3], arrays, strict=True):
            f.write(bytes(offset - f.tell()))
            f.write(np.ascontiguousarray(array).view(np.uint8))
        f.write(bytes(sections[3][0] - f.tell()))
        written = 0
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk).view(np.uint8))
            written += len(chunk)
    if written != records:
        os.unlink(tmp)
        raise ValueError(f"{written} records written to {path} instead of {records}")
    os.replace(tmp, path)


def count_distinct(records: np.ndarray) -> int:
    """Checksums among sorted records (equal ones are next to each other)."""
    if len(records) == 0:
        return 0
    words = record_words(records)[:, :4]
    return 1 + int(np.count_nonzero((words[1:] != words[:-1]).any(axis=1)))


class IndexData:
    """One generation: records sorted by checksum, their fan-out table, and the
    directories' recorded modification times.  Arrays may be views of a mapping."""

    def __init__(self, records: np.ndarray, dir_mtimes: np.ndarray, dir_settled: np.ndarray,
                 mapping=None, table: np.ndarray | None = None, distinct: int | None = None):
        # One record per buffer, its fields side by side: a lookup's reads of
        # key, size, directory and encoding touch one cache line, not four arrays.
        records = np.ascontiguousarray(records)
        self.records = records
        self.keys: np.ndarray = records["key"]
        self.sizes: np.ndarray = records["size"]
        self.dirs: np.ndarray = records["dir"]
        self.encodings: np.ndarray = records["encoding"]
        self.promised_at: np.ndarray = records["promised_at"]
        if table is None:
            table = fanout_table(leading(record_words(records)[:, 0]), fanout_bits(len(records)))
        self.fanout = FanOut(records, table, len(table).bit_length() - 1)
        self.distinct = count_distinct(records) if distinct is None else distinct
        self.dir_mtimes = dir_mtimes
        self.dir_settled = dir_settled
        self._mapping = mapping

    def __len__(self) -> int:
        """The number of distinct checksums (``len(self.records)`` counts every file)."""
        return self.distinct

    @property
    def size_bytes(self) -> int:
        """What this generation takes: its file (if mapped), else its arrays."""
        if self._mapping is not None:
            return len(self._mapping)
        return self.records.nbytes + self.fanout.table.nbytes

    @classmethod
    def empty(cls, ndirs: int) -> "IndexData":
        # never scanned: never trusted
        return cls(np.empty(0, RECORD), np.full(ndirs, ABSENT, np.int64), np.zeros(ndirs, np.bool_))

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query key: its position in the index, and whether it is there.

        A position is that of the checksum's first record (the one that
        answers); for a key that is not there it is some valid position, or 0
        in an empty index.  See :mod:`.fanout`."""
        return self.fanout.find(queries)

    def find_one(self, checksum: bytes) -> int:
        """Position of one checksum (32 bytes) in the index, or -1: the fast
        path of single-buffer requests, without building query arrays."""
        return self.fanout.find_one(checksum)

    def locate(self, position: int, search_path: SearchPath) -> tuple[bytes, str, Encoding | None]:
        """The checksum at ``position``, the file it was indexed as, and its encoding."""
        # A slice keeps all 32 bytes; a numpy scalar would drop trailing zero bytes.
        checksum = self.keys[position:position + 1].tobytes()
        encoding = BY_CODE.get(int(self.encodings[position]))
        path = search_path.path(int(self.dirs[position]), checksum.hex(),
                                encoding.suffix if encoding else "")
        return checksum, path, encoding

    def merged(self, scans: list) -> "IndexData":
        """A new generation in memory: these directories (:class:`DirectoryScan`)
        replaced by their new scans (which give up their records to it).  The
        publisher writes new generations straight to their file instead
        (:class:`~hashserver.index.merge.Merge`)."""
        from .merge import Merge

        return Merge(self, scans).data()

    # ---------------------------------------------------------------- file
    def write(self, path: str) -> None:
        """Write this generation to ``path`` atomically (temporary file + rename)."""
        write_generation(path, self.distinct, self.dir_mtimes, self.dir_settled, self.fanout.table,
                         len(self.records), [self.records])

    @classmethod
    def open(cls, path: str) -> "IndexData":
        """Map a generation file read-only; the pages are shared between processes."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapping = map_file(f.fileno(), size) if size else None
        if mapping is None or size < HEADER.size:
            raise ValueError(f"{path} is not a hashserver index")
        magic, records, distinct, ndirs, bits = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC:
            raise ValueError(f"{path} is not a hashserver index of this version")
        readonly = memoryview(mapping).toreadonly()  # a stray write raises, as on any mmap, not SIGSEGV
        arrays = [np.frombuffer(readonly, dtype=dtype, count=count, offset=offset)
                  for offset, dtype, count in _sections(records, ndirs, bits)]
        dir_mtimes, settled, table, records_array = arrays
        return cls(records_array, dir_mtimes, settled.astype(np.bool_), mapping, table, distinct)
