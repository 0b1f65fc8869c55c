"""The bound of the local cache tier: least recently used buffers out first.

The main process keeps the tier directory at most ``--cache-size`` bytes
(:class:`TierEvictor`, a thread).  Recency is a file's access time: the
workers set it when they serve a file from the tier (:func:`mark_used`, at
most once a minute per file; the kernel's own updates only make it more
recent).  Not the modification time: a file's identity includes it, and a
new identity would cost a verified buffer its verification.

The size is accounted without scanning: a full scan at the start, then the
bytes the workers report for each file they store in the tier (a counter in
shared memory).  Only when that estimate passes the bound does a scan run,
evicting down to :data:`LOW_WATER` of the bound (so a scan frees a tenth of
the tier at least, and its cost is spread over as many fills), and a scan
every :data:`RESCAN_EVERY` seconds corrects for what others changed (a
second server on the same tier, a user's ``rm``).  A scan holds in memory
only the oldest files worth what is to be evicted.  Temporary files and
locks of fills under way are not counted.

Eviction unlinks the files.  A file being sent stays readable through its
open descriptor until closed (Linux keeps an unlinked open file), so no
response is cut; the next lookup in that directory finds the file gone (its
modification time changed), and the index publisher rescans the directory.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from typing import Any, Iterator, NamedTuple

from .compression import SUFFIXES
from .layout import SIDECAR_SUFFIX, Layout, SearchPath, is_buffer_name
from .metrics import Metrics

log = logging.getLogger("hashserver")

INTERVAL = 1.0  # seconds between two checks of the estimate
RESCAN_EVERY = 300.0  # seconds between two scans that correct the estimate
LOW_WATER = 0.9  # an eviction leaves the tier at this fraction of the bound
TIER_SUFFIXES = (*SUFFIXES, SIDECAR_SUFFIX)


def mark_used(search_path: SearchPath, checksum_hex: str) -> None:
    """Mark the tier's file of this buffer as just used (its access time),
    keeping its modification time.  A file that is not there or not ours to
    mark is left alone: recency is a hint, never a reason to fail."""
    base = search_path.publish_path(checksum_hex)
    for suffix in SUFFIXES:
        path = base + suffix
        try:
            os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
            return
        except FileNotFoundError:
            continue
        except OSError:
            return


class Entry(NamedTuple):
    """One buffer of the tier: when last used, its bytes (its files together)."""

    used_ns: int
    size: int
    paths: tuple[str, ...]


class Scan(NamedTuple):
    total: int  # bytes of every buffer file in the tier
    oldest: list[Entry]  # least recently used first, worth at least the scan's target


def tier_entries(directory: str) -> Iterator[Entry]:
    """The buffers of one tier directory (a buffer's compressed file and
    sidecar are one entry).  Temporary files, locks and markers are skipped."""
    groups: dict[str, list] = {}
    try:
        scanned = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    with scanned:
        for item in scanned:
            name, suffix = item.name[:64], item.name[64:]
            if suffix not in TIER_SUFFIXES or not is_buffer_name(name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            group = groups.setdefault(name, [0, 0, []])
            if suffix != SIDECAR_SUFFIX:
                group[0] = max(group[0], st.st_atime_ns)
            group[1] += st.st_size
            group[2].append(item.path)
    for used, size, paths in groups.values():
        yield Entry(used, size, tuple(paths))


def scan_tier(layout: Layout, target: int) -> Scan:
    """The tier's bytes, and its least recently used buffers worth ``target``
    bytes at least (all of them if the tier holds less)."""
    newest_first: list[tuple[int, int, tuple[str, ...]]] = []  # a heap: the newest candidate on top
    held = total = 0
    for directory in layout.dirs:
        for entry in tier_entries(directory):
            total += entry.size
            if target <= 0 or (held >= target and entry.used_ns >= -newest_first[0][0]):
                continue
            heapq.heappush(newest_first, (-entry.used_ns, entry.size, entry.paths))
            held += entry.size
            while held - newest_first[0][1] >= target:
                held -= heapq.heappop(newest_first)[1]
    oldest = sorted(Entry(-used, size, paths) for used, size, paths in newest_first)
    return Scan(total, oldest)


def evict(entries: list[Entry], excess: int) -> tuple[int, int]:
    """Unlink the oldest entries until ``excess`` bytes are gone; returns
    (buffers, bytes) evicted.  One used since the scan is spared."""
    count = freed = 0
    for entry in entries:
        if freed >= excess:
            break
        if _used_since(entry):
            continue
        for path in entry.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        count += 1
        freed += entry.size
    return count, freed


def _used_since(entry: Entry) -> bool:
    for path in entry.paths:
        if path.endswith(SIDECAR_SUFFIX):
            continue
        try:
            return os.stat(path).st_atime_ns > entry.used_ns
        except FileNotFoundError:
            continue
    return False


class TierEvictor:
    """Keeps the tier (``layout``, its main directory) at most ``limit`` bytes.

    ``added``: a shared counter (multiprocessing Value) of the bytes the
    workers stored in the tier since the start.
    """

    def __init__(self, layout: Layout, limit: int, added: Any, metrics: Metrics | None = None,
                 interval: float = INTERVAL, rescan_every: float = RESCAN_EVERY):
        self.layout = layout
        self.limit = limit
        self.added = added
        self.metrics = metrics or Metrics.unobserved()
        self.interval = interval
        self.rescan_every = rescan_every
        self.base = 0  # bytes at the last scan (after its evictions)
        self.added_at_base = 0
        self.scanned_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def estimate(self) -> int:
        return self.base + self.added.value - self.added_at_base

    def check(self) -> int:
        """One check: scan and evict when the estimate is over the bound (or a
        correcting scan is due); returns the buffers evicted."""
        if self.estimate <= self.limit and time.monotonic() - self.scanned_at < self.rescan_every:
            return 0
        added = self.added.value  # before the scan: what lands meanwhile is counted twice at worst
        low_water = int(self.limit * LOW_WATER)
        scan = scan_tier(self.layout, max(0, self.estimate - low_water))
        count = freed = 0
        if scan.total > self.limit:
            if sum(entry.size for entry in scan.oldest) < scan.total - low_water:
                scan = scan_tier(self.layout, scan.total - low_water)  # the estimate was low
            count, freed = evict(scan.oldest, scan.total - low_water)
        self.base, self.added_at_base, self.scanned_at = scan.total - freed, added, time.monotonic()
        if count:
            self.metrics.local_tier_evicted(count)
            log.info("local tier: evicted %d buffers (%d bytes); %d bytes held", count, freed, self.base)
        return count

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hashserver-evictor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.check()
                self.metrics.set_gauge("hashserver_local_tier_bytes", self.estimate)
                self.metrics.fold()
            except Exception:  # keep bounding; the next check tries again
                log.exception("local tier: eviction failed")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """Stop the thread; its counts are folded, the metrics are closed by their owner."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.metrics.fold()
