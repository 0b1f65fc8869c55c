"""Finding checksums in one generation at a cost that does not grow with it.

The records are sorted by checksum, and checksums are uniformly distributed.
A fan-out table (as in Git's pack index, which fans out on the first byte)
maps the first ``bits`` bits of a checksum to the range of records that start
with them; ``bits`` grows with the index, so that a bucket holds 0.375 to
0.75 records on average.  Each table entry is 8 bytes: the position of the
bucket's first record, and a tag, the next 32 bits of that record's checksum.
A lookup reads two adjacent table entries (one cache line), and most absent
checksums are decided there: the bucket is empty, or its first record's tag
is larger, or differs and the bucket holds only that record.  Only the other
queries read a record (about half of them at the bench's mix of present and
absent checksums).  In a large index every read of the table or of a record
misses the caches (and, with 4 KiB pages, the TLB: :mod:`.hugepages`), so
what a lookup costs at 10,000,000 entries over 10,000 is the number of such
reads: about 1.4 per checksum at the bench's mix, 2.2 before the tags.

A batch is looked up in a fixed number of vectorised steps: the table
entries of all queries, then the first record of the buckets whose tag
matches, compared whole; the few left (a present checksum that is not its
bucket's first) are compared with the bucket's further records at once, on
their first 8 bytes, then the one candidate on all 32.  Queries that cannot
be settled so (a crowded bucket, or several records sharing their first 8
bytes) are looked up one by one, by bisection within the bucket.  Sorting a
batch first did not pay: at 1,000 or 10,000 queries the sort cost more than
the locality it bought.
"""

from __future__ import annotations

import bisect
import sys

import numpy as np

MAX_BITS = 32
TAG_BITS = 32  # of a table entry: the tag; the other 32 are the position
WINDOW = 16  # records of a bucket compared with a query at once
SCAN = 8  # a single lookup walks a bucket up to this size, and bisects a larger one
KEY_BYTES = 32
TABLE_DTYPE = np.dtype(np.uint64)
POSITION_MASK = (1 << TAG_BITS) - 1
_MASK = np.uint64(POSITION_MASK)
_TAG_SHIFT = np.uint64(TAG_BITS)
_TABLE_STEP = 1 << 20  # buckets filled per step, so that building the table needs little memory
_LITTLE = sys.byteorder == "little"
_ALL_EQUAL = np.frombuffer(b"\1\1\1\1", np.uint32)[0]  # four True booleans, as one integer


def fanout_bits(entries: int) -> int:
    """Bits of the checksum that choose a bucket: 0.375 to 0.75 entries per
    bucket.  At up to one per bucket (1,000,000 entries: 0.95), 26% of a
    half-present batch was not settled by its bucket's first record, against
    13% at 0.48, and batched lookups were 13% slower, for a table half the size."""
    return max(1, min(MAX_BITS, (entries * 4 // 3).bit_length()))


def leading(first_words: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as integers that sort like the keys (a new array)."""
    return first_words.byteswap() if _LITTLE else first_words.copy()


def key_words(keys: np.ndarray) -> np.ndarray:
    """32-byte keys as rows of four native 64-bit words (a view where possible)."""
    return np.ascontiguousarray(keys).view(np.uint64).reshape(len(keys), KEY_BYTES // 8)


def tags(lead: np.ndarray, bits: int) -> np.ndarray:
    """The 32 bits of each leading word after the ``bits`` that choose its
    bucket: within a bucket they sort like the checksums."""
    return (lead >> np.uint64(64 - bits - TAG_BITS)) & _MASK


def fanout_table(sorted_leading: np.ndarray, bits: int) -> np.ndarray:
    """For each bucket, the position of its first record and that record's tag
    (of the next record, for an empty bucket); then the number of records."""
    if len(sorted_leading) > POSITION_MASK:
        raise ValueError(f"an index generation holds at most {POSITION_MASK} entries")
    buckets = 1 << bits
    table = np.empty(buckets + 1, TABLE_DTYPE)
    shift = np.uint64(64 - bits)
    last = len(sorted_leading) - 1
    for start in range(0, buckets, _TABLE_STEP):
        stop = min(start + _TABLE_STEP, buckets)
        starts = np.searchsorted(sorted_leading, np.arange(start, stop, dtype=np.uint64) << shift)
        table[start:stop] = starts
        if last >= 0:
            table[start:stop] |= tags(sorted_leading[np.minimum(starts, last)], bits) << _TAG_SHIFT
    table[buckets] = len(sorted_leading)
    return table


class FanOut:
    """Lookups in sorted records (a numpy array of 48-byte records whose first
    32 bytes are the key) through their fan-out table."""

    def __init__(self, records: np.ndarray, table: np.ndarray, bits: int):
        self.bits = bits
        self.table = table
        self.entries = len(records)
        self._stride = records.dtype.itemsize
        self._words = records.view(np.uint64).reshape(len(records), self._stride // 8)
        self._first = self._words[:, 0]
        self._raw = memoryview(records.view(np.uint8))
        self._slots = memoryview(table)
        self._shift = 64 - bits
        self._tag_shift = 64 - bits - TAG_BITS

    @property
    def starts(self) -> np.ndarray:
        """Each bucket's first position, then the number of records (a new array)."""
        return self.table & _MASK

    def _key(self, position: int) -> bytes:
        start = position * self._stride
        return bytes(self._raw[start:start + KEY_BYTES])

    def find_one(self, checksum: bytes) -> int:
        """Position of one checksum (32 bytes), or -1; the first of equal keys."""
        if len(checksum) != KEY_BYTES:
            return -1
        lead = int.from_bytes(checksum[:8], "big")
        bucket = lead >> self._shift
        entry = self._slots[bucket]
        low, high = entry & POSITION_MASK, self._slots[bucket + 1] & POSITION_MASK
        if low == high:
            return -1
        tag, first_tag = (lead >> self._tag_shift) & POSITION_MASK, entry >> TAG_BITS
        if tag < first_tag:
            return -1
        if tag == first_tag:
            start = low * self._stride
            if self._raw[start:start + KEY_BYTES] == checksum:
                return low
        return self._find_in_bucket(checksum, low + 1, high)

    def _find_in_bucket(self, checksum: bytes, low: int, high: int) -> int:
        """The checksum among records ``low`` to ``high`` (excluded) of its bucket, or -1."""
        if high - low > SCAN:
            low += bisect.bisect_left(range(low, high), checksum, key=self._key)
            return low if low < high and self._key(low) == checksum else -1
        raw, stride = self._raw, self._stride
        for position in range(low, high):
            start = position * stride
            if raw[start:start + KEY_BYTES] == checksum:
                return position
        return -1

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query key (``S32``): a position, and whether the key is there.

        Where a key is there, its position is that of its first record; where
        not, some valid position (or 0 in an empty index), so that callers may
        index with it and mask."""
        count = len(queries)
        if self.entries == 0 or count == 0:
            return np.zeros(count, np.intp), np.zeros(count, np.bool_)
        query = key_words(queries)
        lead = leading(query[:, 0])
        buckets = (lead >> np.uint64(self._shift)).astype(np.intp)
        entry = self.table.take(buckets)
        positions = (entry & _MASK).astype(np.intp)
        size = (self.table.take(buckets + 1) & _MASK).astype(np.intp)
        size -= positions
        np.minimum(positions, self.entries - 1, out=positions)  # empty buckets at the end
        tag, first_tag = tags(lead, self.bits), entry >> _TAG_SHIFT
        # The first record, read whole, only where its tag is the query's.
        candidates = np.flatnonzero((tag == first_tag) & (size > 0))
        here = self._equal(self._words.take(positions[candidates], axis=0), query[candidates])
        found = np.zeros(count, np.bool_)
        found[candidates[here]] = True
        rest = np.flatnonzero(~found & (size > 1) & (tag >= first_tag))
        if len(rest):
            self._find_further(queries, query, rest, positions, size, found)
        return positions, found

    @staticmethod
    def _equal(words: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Whether each row of words starts with the query's key (the four
        words' comparisons read as one 32-bit integer: no reduction along a
        short axis, which numpy does slowly)."""
        return (words[:, :4] == query).view(np.uint32)[:, 0] == _ALL_EQUAL

    def _find_further(self, queries: np.ndarray, query: np.ndarray, rest: np.ndarray,
                      positions: np.ndarray, size: np.ndarray, found: np.ndarray) -> None:
        """The queries not at the first record of their bucket: compared with
        the bucket's next records at once (rows: offsets; columns: queries),
        on their first 8 bytes, then the one candidate on all 32."""
        size, low = size[rest], positions[rest]
        window = min(int(size.max()), WINDOW)
        offsets = np.arange(1, window)[:, None]
        candidates = low + offsets
        np.minimum(candidates, self.entries - 1, out=candidates)
        # Indexing, not take(): take() would copy the whole strided column first.
        matches = self._first[candidates] == query[rest, 0]
        matches &= offsets < size
        hits = matches.sum(axis=0, dtype=np.uint8)
        at = low + (matches * offsets).sum(axis=0)
        np.minimum(at, self.entries - 1, out=at)
        here = (hits == 1) & self._equal(self._words.take(at, axis=0), query[rest])
        positions[rest[here]] = at[here]
        found[rest[here]] = True
        self._settle(queries, positions, found, rest[~here & ((hits > 1) | (size > window))])

    def _settle(self, queries: np.ndarray, positions: np.ndarray, found: np.ndarray,
                unsettled: np.ndarray) -> None:
        """Look up one by one the queries the window could not settle: several
        records with their first 8 bytes (a checksum in several places, or
        made-up keys), or a bucket larger than the window."""
        for i in unsettled.tolist():
            position = self.find_one(queries[i:i + 1].tobytes())
            if position >= 0:
                positions[i], found[i] = position, True
