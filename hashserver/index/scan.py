"""Listing buffer directories into index records.

The startup scan lists names only (no per-file ``stat``): that is what makes
it about as fast as ``find``.  Sizes are measured by a later pass of the
publisher's thread; until then lookups stat the files they answer for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..bufferfile import read_sidecar
from ..compression import BY_SUFFIX
from ..layout import PROMISE_SUFFIX, SearchPath, is_buffer_name
from .fanout import leading
from .records import ABSENT, PLAIN, PROMISE, RECORD, UNKNOWN_SIZE, concat_records, make_records, record_words

log = logging.getLogger("hashserver.index")

# A directory modified less than this before its scan may still change within
# the same timestamp tick; it is treated as changed until a later rescan.
SETTLE_NS = 2_000_000_000
PROGRESS_EVERY = 2.0
_SUFFIX_CODES = {suffix: e.code for suffix, e in BY_SUFFIX.items()}


@dataclass
class DirectoryScan:
    """What one directory held when it was scanned."""

    number: int
    mtime_ns: int  # ABSENT if the directory did not exist
    settled: bool
    records: np.ndarray = field(default_factory=lambda: np.empty(0, RECORD))

    @property
    def sizes(self) -> np.ndarray:
        return self.records["size"]

    def take_records(self) -> np.ndarray:
        """The records, given up to a merge (this scan keeps none), so that
        the memory of each scan is freed as soon as it is merged."""
        records, self.records = self.records, np.empty(0, RECORD)
        return records

    @property
    def unmeasured_plain(self) -> np.ndarray:
        """Positions of plain buffers whose size this scan did not measure."""
        return np.flatnonzero((self.records["size"] == UNKNOWN_SIZE) & (self.records["encoding"] == PLAIN))


class _Listing:
    """Entries of one directory as they are listed, turned into records at the end."""

    def __init__(self, path: str, with_sizes: bool):
        self.path = path
        self.with_sizes = with_sizes
        self.plain: list[str] = []
        self.plain_sizes: list[int] = []
        self.other_keys: list[bytes] = []
        self.other: list[tuple[int, int, int]] = []  # encoding, size, promised_at

    def read(self, entries: Iterable[os.DirEntry]) -> None:
        """Every entry of a directory.  Plain buffers listed by name only take
        the short path: no stat, no call per entry (this loop is most of an
        index build's own time)."""
        plain, add = self.plain, self.add
        names_only = not self.with_sizes
        for entry in entries:
            name = entry.name
            if names_only and len(name) == 64:
                if entry.is_file():
                    plain.append(name)
            elif len(name) >= 64:
                add(entry)

    def add(self, entry: os.DirEntry) -> None:
        name = entry.name
        if len(name) == 64:
            if not self.with_sizes:
                if entry.is_file():
                    self.plain.append(name)
                return
        elif len(name) <= 64 or not is_buffer_name(name[:64]):
            return
        try:
            st = entry.stat()
        except FileNotFoundError:
            return
        if st.st_mode & 0o170000 != 0o100000:  # regular files only
            return
        if len(name) == 64:
            self.plain.append(name)
            self.plain_sizes.append(st.st_size)
        else:
            self._add_other(name, st)

    def _add_other(self, name: str, st: os.stat_result) -> None:
        """A compressed buffer (size from its sidecar, if any) or a promise."""
        suffix = name[64:]
        if suffix == PROMISE_SUFFIX:
            found = (PROMISE, 0, int(st.st_mtime))
        elif suffix in _SUFFIX_CODES:
            length = read_sidecar(os.path.join(self.path, name[:64]))
            found = (_SUFFIX_CODES[suffix], UNKNOWN_SIZE if length is None else length, 0)
        else:
            return
        self.other_keys.append(bytes.fromhex(name[:64]))
        self.other.append(found)

    def records(self, number: int) -> np.ndarray:
        keys, valid = _plain_keys(self.plain)
        if self.with_sizes:
            if len(valid) != len(self.plain):
                keep = set(valid)
                self.plain_sizes = [s for n, s in zip(self.plain, self.plain_sizes, strict=True) if n in keep]
            sizes = np.array(self.plain_sizes, np.uint64)
        else:
            sizes = np.full(len(valid), UNKNOWN_SIZE, np.uint64)
        plain = make_records(keys, sizes, PLAIN, number)
        if not self.other:
            return _sorted(plain)
        other = np.array(self.other, np.uint64).reshape(-1, 3)
        others = make_records(b"".join(self.other_keys), other[:, 1], other[:, 0], number, other[:, 2])
        return _sorted(concat_records([plain, others]))


def _sorted(records: np.ndarray) -> np.ndarray:
    """Records sorted by their checksum's first 8 bytes.  Sorting here, in the
    scanning threads (numpy sorts without the GIL), leaves the merge runs of
    sorted records, in the prefix layout already in order: its sort is one pass."""
    return records.take(np.argsort(leading(record_words(records)[:, 0]), kind="stable"))


def _plain_keys(names: list[str]) -> tuple[bytes, list[str]]:
    """Checksums of 64-character names, decoded in one call when all are valid
    (lowercase hex: what decodes and encodes back to the same text; several
    times faster than matching a pattern)."""
    joined = "".join(names)
    try:
        keys = bytes.fromhex(joined)
    except ValueError:
        keys = b""
    if keys.hex() == joined:
        return keys, names
    valid = [n for n in names if is_buffer_name(n)]
    return bytes.fromhex("".join(valid)), valid


def scan_directory(number: int, path: str, with_sizes: bool = True) -> DirectoryScan:
    """List one buffer directory.  The modification time is read *before*
    listing, so a change during the listing shows up as a changed directory.

    Without ``with_sizes`` plain buffers are not stat'ed (the file type comes
    with the listing); their sizes are measured by a later scan.
    """
    started = time.time_ns()
    try:
        mtime = os.stat(path).st_mtime_ns
        listing = _Listing(path, with_sizes)
        with os.scandir(path) as entries:
            listing.read(entries)
    except (FileNotFoundError, NotADirectoryError):
        return DirectoryScan(number, ABSENT, True)
    return DirectoryScan(number, mtime, started - mtime > SETTLE_NS, listing.records(number))


def scan_all(search_path: SearchPath, numbers: list[int], with_sizes: bool = True,
             threads: int | None = None) -> list[DirectoryScan]:
    """Scan directories in parallel (listing and stat release the GIL), logging progress."""
    if threads is None:
        threads = min(16, 4 * (os.cpu_count() or 1))
    started = last = time.monotonic()
    count = 0
    scans = []
    with ThreadPoolExecutor(threads, thread_name_prefix="hashserver-scan") as pool:
        futures = [pool.submit(scan_directory, n, search_path.dirs[n], with_sizes) for n in numbers]
        for future in futures:
            scan = future.result()
            scans.append(scan)
            count += len(scan.records)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                log.info("index: %d buffers scanned (%.0f/s)", count, count / (now - started))
    return scans
