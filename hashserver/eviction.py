"""The bound of the local cache tier: least recently used buffers out first.

The main process keeps the tier directory at most ``--cache-size`` bytes
(:class:`TierEvictor`, a thread).  A buffer's last use is the later of its
file's access time (set when the tier stored it) and its slot of the
:class:`Recency` table in shared memory, which the workers stamp at each
answer from the tier: a store to memory, no system call.  Not a file's
times: a ``utime`` is an inotify ``IN_ATTRIB`` event, which voids what the
workers' directory watches proved of the file's whole directory (and the
modification time is part of a file's identity, which would cost a
verified buffer its verification).

The size is accounted without scanning: a full scan at the start, then the
bytes the workers report for each file they store in the tier (a counter in
shared memory).  Only when that estimate passes the bound does a scan run,
evicting down to :data:`LOW_WATER` of the bound (so a scan frees a tenth of
the tier at least, and its cost is spread over as many fills), and a scan
every :data:`RESCAN_EVERY` seconds corrects for what others changed (a
second server on the same tier, a user's ``rm``).  A scan holds in memory
only the oldest files worth what is to be evicted.  Temporary files and
locks of fills under way are not counted.

Eviction unlinks the files, but never a file being sent: a worker sending a
tier file holds a shared ``flock`` on it for the send (:func:`hold_for_sending`),
and the evictor unlinks a buffer's file only under an exclusive one, taken
without waiting (:func:`evict`); a file it cannot lock is passed over for the
next oldest.  A worker that got its lock after an eviction finds the file
unlinked and reads the buffer from the back store.  The next lookup in a
directory that lost a file finds it gone (its modification time changed), and
the index publisher rescans the directory.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import multiprocessing
import os
import threading
import time
from typing import Any, Iterator, NamedTuple

from .compression import SUFFIXES
from .layout import SIDECAR_SUFFIX, Layout, is_buffer_name
from .metrics import Metrics

log = logging.getLogger("hashserver")

INTERVAL = 1.0  # seconds between two checks of the estimate
RESCAN_EVERY = 300.0  # seconds between two scans that correct the estimate
LOW_WATER = 0.9  # an eviction leaves the tier at this fraction of the bound
TIER_SUFFIXES = (*SUFFIXES, SIDECAR_SUFFIX)
BYTES_PER_SLOT = 16 * 1024  # of the bound: one recency slot each (4 bytes)...
SLOTS = (1 << 16, 1 << 22)  # ...within these (256 KiB to 16 MiB of shared memory)


class Recency:
    """When each buffer was last answered from the tier, in whole seconds, in a
    table shared by the main process and its workers.

    A buffer's slot is named by the first bytes of its checksum, so buffers
    may share a slot; one that shares it with a more recently used buffer
    only looks more recent than it is (it is evicted later, never wrongly).
    The table has one slot per :data:`BYTES_PER_SLOT` of the bound, within
    :data:`SLOTS`.
    """

    def __init__(self, table: Any):
        self.table = table  # multiprocessing RawArray("I"), its length a power of two
        self.mask = len(table) - 1
        self._slots = memoryview(table).cast("B").cast("I")  # a store costs half the ctypes array's

    @classmethod
    def create(cls, cache_size: int) -> "Recency":
        wanted = max(SLOTS[0], min(SLOTS[1], cache_size // BYTES_PER_SLOT))
        return cls(multiprocessing.RawArray("I", 1 << (wanted - 1).bit_length()))

    def used(self, checksum: bytes) -> None:
        self._slots[int.from_bytes(checksum[:4], "big") & self.mask] = int(time.time())

    def last_used_ns(self, checksum_hex: str) -> int:
        return self._slots[int(checksum_hex[:8], 16) & self.mask] * 1_000_000_000


class Entry(NamedTuple):
    """One buffer of the tier: when last used, its bytes (its files together)."""

    used_ns: int
    size: int
    paths: tuple[str, ...]


class Scan(NamedTuple):
    total: int  # bytes of every buffer file in the tier
    oldest: list[Entry]  # least recently used first, worth at least the scan's target


def tier_entries(directory: str, recency: Recency | None = None) -> Iterator[Entry]:
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
    for name, (used, size, paths) in groups.items():
        if recency is not None:
            used = max(used, recency.last_used_ns(name))
        yield Entry(used, size, tuple(paths))


def scan_tier(layout: Layout, target: int, recency: Recency | None = None) -> Scan:
    """The tier's bytes, and its least recently used buffers worth ``target``
    bytes at least (all of them if the tier holds less)."""
    newest_first: list[tuple[int, int, tuple[str, ...]]] = []  # a heap: the newest candidate on top
    held = total = 0
    for directory in layout.dirs:
        for entry in tier_entries(directory, recency):
            total += entry.size
            if target <= 0 or (held >= target and entry.used_ns >= -newest_first[0][0]):
                continue
            heapq.heappush(newest_first, (-entry.used_ns, entry.size, entry.paths))
            held += entry.size
            while held - newest_first[0][1] >= target:
                held -= heapq.heappop(newest_first)[1]
    oldest = sorted(Entry(-used, size, paths) for used, size, paths in newest_first)
    return Scan(total, oldest)


class Evicted(NamedTuple):
    entries: list[Entry]  # unlinked
    spared: int  # bytes of the entries passed over: used since the scan, or being sent


def evict(entries: list[Entry], excess: int, recency: Recency | None = None) -> Evicted:
    """Unlink the oldest entries until ``excess`` bytes are gone.  One used since the
    scan is spared, and so is one being sent."""
    evicted: list[Entry] = []
    freed = spared = 0
    for entry in entries:
        if freed >= excess:
            break
        if _used_since(entry, recency):
            log.info("local tier: %s spared, used since the scan", _name(entry))
        elif not _unlinked_unless_sent(entry):
            log.info("local tier: %s spared, being sent", _name(entry))
        else:
            evicted.append(entry)
            freed += entry.size
            continue
        spared += entry.size
    return Evicted(evicted, spared)


def _unlinked_unless_sent(entry: Entry) -> bool:
    """Unlink the entry's files, holding an exclusive lock on each buffer file meanwhile;
    False (nothing unlinked) if a worker holds one to send it."""
    held: list[int] = []
    try:
        for path in entry.paths:
            if path.endswith(SIDECAR_SUFFIX):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError:  # not a file one can open (a link, no permission): unlinked as before
                continue
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError:  # a file system without flock: as before it, the open file stays readable
                pass
        for path in entry.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return True
    finally:
        for fd in held:
            os.close(fd)


def hold_for_sending(fd: int) -> bool:
    """A shared lock on a tier file about to be sent, kept until the file is closed, which
    keeps the evictor from it; False if the file was evicted before the lock was had
    (then the buffer is read from the back store).  Where the file system has no flock,
    True: the open file stays readable whatever happens to its name."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # the evictor holds it, to unlink it
        return False
    except OSError:
        return True
    return os.fstat(fd).st_nlink > 0


def _name(entry: Entry) -> str:
    return os.path.basename(entry.paths[0])[:64]


def _described(entries: list[Entry], shown: int = 3) -> str:
    """The first few entries evicted and how long ago each was last used, for the log."""
    now = time.time_ns()
    named = ", ".join(f"{_name(e)[:12]} ({(now - e.used_ns) / 1e9:.1f} s)" for e in entries[:shown])
    return named + (", ..." if len(entries) > shown else "")


def _used_since(entry: Entry, recency: Recency | None) -> bool:
    name = _name(entry)
    if recency is not None and recency.last_used_ns(name) > entry.used_ns:
        return True
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
    workers stored in the tier since the start; ``recency``: the table of
    their answers from the tier.
    """

    def __init__(self, layout: Layout, limit: int, added: Any, recency: Recency | None = None,
                 metrics: Metrics | None = None, interval: float = INTERVAL, rescan_every: float = RESCAN_EVERY):
        self.layout = layout
        self.recency = recency
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
        scan = scan_tier(self.layout, max(0, self.estimate - low_water), self.recency)
        evicted: list[Entry] = []
        if scan.total > self.limit:
            excess = scan.total - low_water
            if sum(entry.size for entry in scan.oldest) < excess:
                scan = scan_tier(self.layout, excess, self.recency)  # the estimate was low
            evicted, spared = evict(scan.oldest, excess, self.recency)
            short = excess - sum(entry.size for entry in evicted)
            if short > 0 and spared:  # the scan held too few candidates past those spared: once more
                evicted += evict(scan_tier(self.layout, short + spared, self.recency).oldest, short,
                                 self.recency).entries
        freed = sum(entry.size for entry in evicted)
        self.base, self.added_at_base, self.scanned_at = scan.total - freed, added, time.monotonic()
        if evicted:
            self.metrics.local_tier_evicted(len(evicted))
            log.info("local tier: evicted %d buffers (%d bytes), last used: %s; %d bytes held",
                     len(evicted), freed, _described(evicted), self.base)
        return len(evicted)

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
