"""A new generation from the current one and fresh scans, written straight to its file.

The main process builds every generation, and what it allocates meanwhile
tends to stay with it, so the sorted records are never built in memory: the
order is computed on 8-byte integers (each checksum's first 8 bytes, and its
rank among records of the same checksum), and the records are copied into
the file in chunks, from where they are: the current generation's mapping
and the scans.
"""

from __future__ import annotations

import numpy as np

from .fanout import fanout_bits, fanout_table, leading
from .records import PROMISE, RECORD, IndexData, concat_records, record_words, write_generation

CHUNK = 1 << 16  # records copied into the file at a time


def _rank(dirs: np.ndarray, encodings: np.ndarray) -> np.ndarray:
    """Which record of a checksum answers first: a real file before a promise,
    then the first directory in search order, then the plain file (code 0)
    before a compressed one."""
    encodings = encodings.astype(np.uint32)
    return ((encodings == PROMISE).astype(np.uint32) << 24) | (dirs.astype(np.uint32) << 8) | encodings


class Merge:
    """The records of the current generation that stay (those of directories
    not rescanned) and those of the scans, in the order of the new generation."""

    def __init__(self, base: IndexData, scans: list):
        replaced = np.array([s.number for s in scans], np.uint16)
        self.base = base.records
        self.dir_mtimes = np.array(base.dir_mtimes, copy=True)
        self.dir_settled = np.array(base.dir_settled, copy=True)
        for scan in scans:
            self.dir_mtimes[scan.number] = scan.mtime_ns
            self.dir_settled[scan.number] = scan.settled
        self.fresh = concat_records([scan.take_records() for scan in scans])
        kept = np.flatnonzero(~np.isin(base.dirs, replaced))
        lead = np.concatenate([leading(record_words(self.base)[kept, 0]),
                               leading(record_words(self.fresh)[:, 0])])
        # Stable: records of one checksum in the current generation are in rank order already.
        by_lead = np.argsort(lead, kind="stable")
        self.sorted_lead = lead[by_lead]
        del lead
        self.order = np.concatenate([kept, np.arange(len(self.base), len(self.base) + len(self.fresh))])[by_lead]
        del kept, by_lead
        self.duplicates = self._order_ties()

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Records by their number: the current generation's first, then the scans'."""
        # take() copies whole records, padding included (indexing would leave
        # the padding of its new array as it found it); both sources are
        # contiguous, so take() copies nothing else.
        split = len(self.base)
        if split == 0:
            return self.fresh.take(indices)
        out = np.zeros(len(indices), RECORD)
        from_base = indices < split
        out[from_base] = self.base.take(indices[from_base])
        out[~from_base] = self.fresh.take(indices[~from_base] - split)
        return out

    def _order_ties(self) -> int:
        """Put records whose first 8 bytes are equal in order of their whole
        checksum, then of their rank; returns how many records repeat the
        checksum of the one before (those sharing a checksum: rarely more)."""
        same = np.flatnonzero(self.sorted_lead[1:] == self.sorted_lead[:-1])
        if len(same) == 0:
            return 0
        slots = np.union1d(same, same + 1)
        members = self.order[slots]
        records = self.take(members)
        words = [leading(record_words(records)[:, i]) for i in range(4)]
        by_key = np.lexsort((_rank(records["dir"], records["encoding"]), *words[::-1]))
        self.order[slots] = members[by_key]
        keys = record_words(records[by_key])[:, :4]
        repeats = (slots[1:] == slots[:-1] + 1) & (keys[1:] == keys[:-1]).all(axis=1)
        return int(np.count_nonzero(repeats))

    def __len__(self) -> int:
        return len(self.order)

    def table(self) -> np.ndarray:
        return fanout_table(self.sorted_lead, fanout_bits(len(self.order)))

    def chunks(self):
        """The records in order, a chunk at a time (the scans' records as they
        are when they came sorted and nothing else stays: a fresh build)."""
        if len(self.base) == 0 and (np.diff(self.order) == 1).all():
            yield self.fresh
            return
        for start in range(0, len(self.order), CHUNK):
            yield self.take(self.order[start:start + CHUNK])

    def write(self, path: str) -> None:
        """Write the new generation to ``path`` atomically, then give up the
        scans' records and the order (a merge is written once): the main
        process's memory drops before the file is published, not when the
        caller lets go of the merge."""
        write_generation(path, len(self) - self.duplicates, self.dir_mtimes, self.dir_settled,
                         self.table(), len(self), self.chunks())
        self.fresh = np.empty(0, RECORD)
        self.order = np.empty(0, self.order.dtype)
        self.sorted_lead = np.empty(0, self.sorted_lead.dtype)

    def data(self) -> IndexData:
        """The new generation in memory."""
        records = self.take(self.order)
        return IndexData(records, self.dir_mtimes, self.dir_settled, table=self.table(),
                         distinct=len(self) - self.duplicates)
