"""The main process's side of the index: build it, then keep it fresh.

A background thread watches the buffer directories' modification times;
when one changes it rescans that directory and publishes a new generation.
Lookups never depend on the index alone being fresh: see
:mod:`hashserver.directory` for how they stay exact meanwhile.  In a writable
server the same thread removes lapsed promises (:class:`PromiseExpiry`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..layout import PROMISE_SUFFIX, SearchPath
from ..locks import FUTURE_SLACK
from ..promises import Promises
from .memory import map_large_blocks, release_free_memory
from .merge import Merge
from .records import ABSENT, PLAIN, PROMISE, UNKNOWN_SIZE, IndexData
from .scan import SETTLE_NS, DirectoryScan, scan_all
from .shm import GenerationStore

if TYPE_CHECKING:
    from ..metrics import Metrics  # which imports this package

log = logging.getLogger("hashserver.index")


class IndexedPromise(NamedTuple):
    made: int  # the index's date of the promise file (whole seconds)
    checksum_hex: str
    arrived: bool  # the index holds the buffer too


class PromiseExpiry:
    """Lapsed promises go, each counted as expired unless its buffer arrived.

    Which promises may have lapsed comes from the index (noted at each
    publication: no pass over the records at each sweep); whether one has
    lapsed is decided by its file, by the rule workers use
    (:meth:`Promises.remove_lapsed`).  Only promises where this server makes
    them (the main directory) are removed: extra directories are read-only.
    A promise whose buffer is there is removed without being counted: the
    writer resolves promises, but a buffer copied in by another program
    leaves its promise behind.
    """

    def __init__(self, promises: Promises, metrics: Metrics):
        self.promises = promises
        self.metrics = metrics
        self._indexed: list[IndexedPromise] = []

    def indexed(self, data: IndexData) -> None:
        """Note the promises of a newly published generation."""
        found = []
        search_path = self.promises.search_path
        for position in np.flatnonzero(data.encodings == PROMISE).tolist():
            checksum = data.keys[position:position + 1].tobytes()
            checksum_hex = checksum.hex()
            indexed_as = search_path.path(int(data.dirs[position]), checksum_hex, PROMISE_SUFFIX)
            if indexed_as != search_path.promise_path(checksum_hex):
                continue
            arrived = data.encodings[data.find_one(checksum)] != PROMISE  # a file answers before a promise
            found.append(IndexedPromise(int(data.promised_at[position]), checksum_hex, bool(arrived)))
        self._indexed = found

    def sweep(self) -> int:
        """Remove the lapsed promises; returns how many expired (counted, and folded at once)."""
        oldest_fresh = self.promises.oldest_fresh_s()
        dated_ahead = time.time() + FUTURE_SLACK  # another host's clock: the file decides
        expired = 0
        for promise in self._indexed:
            if oldest_fresh < promise.made <= dated_ahead:
                continue
            if self.promises.remove_lapsed(promise.checksum_hex) and not promise.arrived:
                expired += 1
        if expired:
            self.metrics.promises_expired(expired)
            self.metrics.fold()
        return expired


class IndexPublisher:
    """Main-process side: builds the index, publishes generations, keeps them fresh."""

    def __init__(self, search_path: SearchPath, store: GenerationStore, interval: float = 1.0):
        self.search_path = search_path
        self.store = store
        self.interval = interval
        self.expiry: PromiseExpiry | None = None
        self.data = IndexData.empty(len(search_path.dirs))
        map_large_blocks()  # what a build allocates goes back to the system when freed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def build(self) -> float:
        """Scan everything and publish the first generation; returns the time it took.

        Names only: sizes are measured by the background thread's first pass
        (lookups stat the files meanwhile)."""
        started = time.monotonic()
        self._publish(scan_all(self.search_path, list(range(len(self.search_path.dirs))), with_sizes=False))
        return time.monotonic() - started

    def _publish(self, scans: list[DirectoryScan]) -> None:
        """Write the new generation straight to its file and publish it, then
        keep the published file's mapping rather than a private copy, and give
        the memory the merge used back to the system."""
        generation = self.store.publish(Merge(self.data, scans))
        self.data = IndexData.open(self.store.path(generation))
        release_free_memory()
        if self.expiry is not None:
            self.expiry.indexed(self.data)

    def expire_promises(self, promises: Promises, metrics: Metrics) -> None:
        """A writable server: from now on each refresh also removes lapsed
        promises, counting them in ``metrics`` (the main process's own)."""
        self.expiry = PromiseExpiry(promises, metrics)
        self.expiry.indexed(self.data)

    def log_built(self, elapsed: float) -> None:
        log.info("index: %d buffers in %d directories, built in %.2f s",
                 len(self.data), len(self.search_path.dirs), elapsed)

    def changed_dirs(self) -> list[int]:
        """Directories whose modification time moved, or that were still settling."""
        now = time.time_ns()
        changed = []
        for number, path in enumerate(self.search_path.dirs):
            try:
                mtime = os.stat(path).st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                mtime = ABSENT
            recorded = int(self.data.dir_mtimes[number])
            if mtime != recorded:
                changed.append(number)
            elif not self.data.dir_settled[number] and now - mtime > SETTLE_NS:
                changed.append(number)
        return changed

    def refresh(self) -> bool:
        """Rescan what changed and publish a new generation; True if one was published."""
        changed = self.changed_dirs()
        if not changed:
            return False
        scans = scan_all(self.search_path, changed, with_sizes=False)
        for scan in scans:
            self._known_sizes(scan)
        self._publish(scans)
        return True

    def _known_sizes(self, scan: DirectoryScan) -> None:
        """Sizes for a names-only rescan: a buffer already indexed in the same
        directory keeps its size (same name, same content); only new files
        are stat'ed.  Under steady writes this keeps a rescan as cheap as a
        listing, where stat'ing every file cost most of a core at 1,000,000
        buffers."""
        unknown = scan.unmeasured_plain
        if len(unknown) == 0:
            return
        sizes = scan.records["size"]
        keys = scan.records["key"][unknown]
        positions, found = self.data.find(keys)
        if len(self.data):
            known = (found & (self.data.dirs[positions] == scan.number)
                     & (self.data.encodings[positions] == PLAIN)
                     & (self.data.sizes[positions] != UNKNOWN_SIZE))
            sizes[unknown[known]] = self.data.sizes[positions[known]]
            unknown = unknown[~known]
        for i in unknown.tolist():
            name = scan.records["key"][i:i + 1].tobytes().hex()
            try:
                sizes[i] = os.stat(self.search_path.path(scan.number, name)).st_size
            except OSError:
                pass  # gone again: a lookup stats it, or the next rescan drops it

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hashserver-index", daemon=True)
        self._thread.start()

    def measure_sizes(self) -> None:
        """Rescan everything with sizes; publish that generation."""
        started = time.monotonic()
        self._publish(scan_all(self.search_path, list(range(len(self.search_path.dirs)))))
        log.info("index: sizes of %d buffers measured in %.2f s", len(self.data), time.monotonic() - started)

    def _run(self) -> None:
        try:
            self.measure_sizes()
        except Exception:
            log.exception("measuring buffer sizes failed; lookups stat the files instead")
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                self.refresh()
            except Exception:  # keep refreshing; lookups stay exact meanwhile
                log.exception("index refresh failed")
            self._sweep_promises()
            # A huge flat directory that keeps changing must not keep a core busy.
            self._stop.wait(4 * (time.monotonic() - started))

    def _sweep_promises(self) -> None:
        if self.expiry is None:
            return
        try:
            self.expiry.sweep()
        except Exception:  # a lapsed promise also stops counting as present by itself
            log.exception("removing lapsed promises failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

