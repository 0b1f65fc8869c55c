"""Exact lookups: the shared index, corrected by what changed since.

The index was true when each directory was scanned.  Each lookup checks the
directories it depends on: a directory whose modification time is still the
recorded one (and that had settled when scanned) has gained or lost no file
since, so the index is the truth for it.  For a directory that changed, the
one checksum is looked up on disk.  The worker's inotify watch vouches for
directories confirmed unchanged, so that on the fast path a lookup makes no
system call at all for them; the others are stat'ed once per request.  The
publisher rescans changed directories in the background, so the fast path
comes back.  For single requests, :meth:`ExactIndex.stamp` gives the watch's
epochs of a checksum's directories while it vouches for all of them: what
the store learnt under a stamp (a held buffer's file, that no lock file
exists) holds while the stamp is the same (:mod:`hashserver.directory`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .bufferfile import BufferFile
from .compression import SUFFIXES, for_suffix
from .index import ABSENT, KEY_DTYPE, PROMISE, UNKNOWN_SIZE, IndexData, IndexReader
from .layout import SearchPath
from .lockfree import lock_sentinels
from .locks import FUTURE_SLACK
from .metrics import Metrics
from .promises import Promises
from .watch import DirectoryWatch


@dataclass
class BatchLookup:
    """Per checksum of a batch: present, its length where known, and the
    files whose decoded length is not known yet (by position)."""

    present: np.ndarray
    sizes: np.ndarray
    unmeasured: dict[int, BufferFile]


def candidate_table(search_path: SearchPath) -> np.ndarray:
    """Per first byte, its candidate directories as a row (short rows padded by
    repeating their last number): a batch's directories in one indexing, not a
    Python loop over the first bytes it uses (a third of a /has x1000)."""
    rows = [search_path.candidate_dirs(first_byte) for first_byte in range(256)]
    width = max(len(row) for row in rows)
    return np.array([row + row[-1:] * (width - len(row)) for row in rows], np.intp)


class ExactIndex:
    def __init__(self, search_path: SearchPath, index: IndexReader, promises: Promises | None,
                 metrics: Metrics | None = None):
        self.metrics = metrics or Metrics.unobserved()
        self.search_path = search_path
        self.index = index
        self.promises = promises
        self.watch = DirectoryWatch(search_path.dirs, lock_sentinels(search_path))
        self._candidates = candidate_table(search_path)

    def close(self) -> None:
        self.watch.close()

    def _clean_dirs(self, data: IndexData, numbers) -> np.ndarray:
        """Per directory number: True where the index is exact for it right now
        (and ``self._stat_needed``: True where that took a stat).

        Directories the inotify watch vouches for need no system call; the
        others are stat'ed, and vouched for when found unchanged.
        """
        clean = np.zeros(len(self.search_path.dirs), np.bool_)
        numbers = np.asarray(numbers, np.intp)
        self.watch.drain()
        vouched = self.watch.vouched[numbers]
        clean[numbers[vouched]] = True
        self._stat_needed = np.zeros(len(self.search_path.dirs), np.bool_)
        self._stat_needed[numbers[~vouched]] = True
        confirmed = [number for number in numbers[~vouched].tolist() if self._unchanged(data, number)]
        clean[confirmed] = True
        if confirmed:
            self.watch.vouch(np.array(confirmed, np.intp))
        return clean

    def _unchanged(self, data: IndexData, number: int) -> bool:
        """One stat: whether the directory is as the index recorded it (and had settled)."""
        try:
            mtime = os.stat(self.search_path.dirs[number]).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            mtime = ABSENT
        return bool(data.dir_settled[number]) and mtime == data.dir_mtimes[number]

    def stamp(self, checksum: bytes) -> int | tuple[int, ...] | None:
        """The epochs of the checksum's candidate directories when the watch
        vouches for all of them now, else None (after draining the watch, and
        stat'ing and vouching for those it does not vouch for yet).

        While the stamp stays the same, no file of those directories was
        added, removed, replaced, rewritten or touched, and the index is exact
        for them: what was learnt under it still holds, with no system call.
        """
        watch = self.watch
        watch.drain()
        candidates = self.search_path.candidate_dirs(checksum[0])
        vouched = watch.vouched
        for number in candidates:
            if not vouched[number] and not self._confirm(number):
                return None
        epochs = watch.epochs
        if len(candidates) == 1:
            return epochs[candidates[0]]
        return tuple([epochs[number] for number in candidates])

    def _confirm(self, number: int) -> bool:
        """Stat a directory the watch does not vouch for; vouched for if unchanged."""
        if not self.watch.active or not self._unchanged(self.index.current(), number):
            return False
        self.watch.vouch(np.array([number], np.intp))
        return bool(self.watch.vouched[number])

    def _promised_in_index(self, data: IndexData, positions: np.ndarray) -> np.ndarray:
        """Which index entries are promises still in force."""
        is_promise = data.encodings[positions] == PROMISE
        if self.promises is None:
            return np.zeros(len(positions), np.bool_)
        made = data.promised_at[positions]
        in_force = is_promise & (made > self.promises.oldest_fresh_s())
        # dated in the future (another host's clock ahead): its file says how long it holds
        for i in np.flatnonzero(is_promise & (made > time.time() + FUTURE_SLACK)).tolist():
            in_force[i] = self.promises.is_promised(data.keys[positions[i]:positions[i] + 1].tobytes().hex())
        return in_force

    def lookup(self, checksums: bytes, promised: bool = True, with_lengths: bool = True) -> BatchLookup:
        """Presence and length of each checksum (32 bytes each), exactly.

        ``promised``: count promised buffers as present (length 1).
        """
        data = self.index.current()
        queries = np.frombuffer(checksums, KEY_DTYPE)
        positions, found = data.find(queries)
        first_bytes = np.frombuffer(checksums, np.uint8)[::32]
        used = np.flatnonzero(np.bincount(first_bytes, minlength=256))
        used_dirs = self._candidates[used]  # rows: first bytes used; columns: their candidate directories
        clean = self._clean_dirs(data, np.unique(used_dirs))
        result = BatchLookup(np.zeros(len(queries), np.bool_), np.zeros(len(queries), np.int64), {})
        if len(data):
            self._from_index(data, positions, found & clean[data.dirs[positions]], promised, with_lengths, result)
        changed_for = np.zeros(256, np.bool_)
        stat_for = np.zeros(256, np.bool_)
        changed_for[used] = ~clean[used_dirs].all(axis=1)
        stat_for[used] = self._stat_needed[used_dirs].any(axis=1)
        on_disk = np.flatnonzero(~result.present & changed_for[first_bytes])
        for i in on_disk.tolist():
            self._from_disk(checksums[32 * i: 32 * i + 32].hex(), i, clean, promised, result)
        stat_confirmed = int(np.count_nonzero(stat_for[first_bytes])) - len(on_disk)
        self.metrics.lookups(index=len(queries) - len(on_disk) - stat_confirmed,
                             directory=stat_confirmed, disk=len(on_disk))
        return result

    def _from_index(self, data: IndexData, positions: np.ndarray, trusted: np.ndarray, promised: bool,
                    with_lengths: bool, result: BatchLookup) -> None:
        """Fill in what the index answers for entries in directories it is exact for."""
        is_promise = data.encodings[positions] == PROMISE
        in_force = self._promised_in_index(data, positions) & promised
        present = trusted & (~is_promise | in_force)
        raw_sizes = data.sizes[positions]
        known = present & ~is_promise & (raw_sizes != UNKNOWN_SIZE)
        result.sizes[known] = raw_sizes[known].astype(np.int64)
        result.sizes[present & is_promise] = 1
        if with_lengths:
            for i in np.flatnonzero(present & ~is_promise & (raw_sizes == UNKNOWN_SIZE)).tolist():
                buffer = self._indexed_file(data, int(positions[i]))
                if buffer is None:
                    present[i] = False
                else:
                    result.unmeasured[i] = buffer
        result.present[:] = present

    def _from_disk(self, checksum_hex: str, i: int, clean: np.ndarray, promised: bool,
                   result: BatchLookup) -> None:
        """One checksum of a changed directory, looked up on disk."""
        hit = self.find_on_disk(checksum_hex, clean)
        if hit is not None:
            result.present[i] = True
            if hit.encoding is None:
                result.sizes[i] = hit.size
            else:
                result.unmeasured[i] = hit
        elif promised and self.is_promised(checksum_hex):
            result.present[i] = True
            result.sizes[i] = 1

    def is_promised(self, checksum_hex: str) -> bool:
        return self.promises is not None and self.promises.is_promised(checksum_hex)

    def _indexed_file(self, data: IndexData, position: int) -> BufferFile | None:
        checksum, path, encoding = data.locate(position, self.search_path)
        return BufferFile.at(checksum.hex(), path, encoding)

    def find_on_disk(self, checksum_hex: str, clean: np.ndarray | None = None) -> BufferFile | None:
        """Look in each candidate directory (only the changed ones, if ``clean`` is given)."""
        for number in self.search_path.candidate_dirs(int(checksum_hex[:2], 16)):
            if clean is not None and clean[number]:
                continue
            for suffix in SUFFIXES:
                found = BufferFile.at(checksum_hex, self.search_path.path(number, checksum_hex, suffix),
                                      for_suffix(suffix))
                if found is not None:
                    return found
        return None

    def find(self, checksum: bytes) -> BufferFile | None:
        """One buffer, exactly: where it is on disk now (plain or compressed), or None."""
        data = self.index.current()
        position = data.find_one(checksum)
        if position >= 0 and data.encodings[position] != PROMISE:
            # The index knows where it was; one stat says whether it still is.
            buffer = self._indexed_file(data, position)
            return buffer if buffer is not None else self.find_on_disk(checksum.hex())
        candidates = self.search_path.candidate_dirs(checksum[0])
        clean = self._clean_dirs(data, candidates)
        if all(clean[n] for n in candidates):
            return None
        return self.find_on_disk(checksum.hex(), clean)
