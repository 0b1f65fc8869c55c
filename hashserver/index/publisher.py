"""The main process's side of the index: build it, then keep it fresh.

A background thread watches the buffer directories' modification times;
when one changes it rescans that directory and publishes a new generation.
Lookups never depend on the index alone being fresh: see
:mod:`hashserver.directory` for how they stay exact meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..layout import SearchPath
from .memory import map_large_blocks, release_free_memory
from .merge import Merge
from .records import ABSENT, PLAIN, UNKNOWN_SIZE, IndexData
from .scan import SETTLE_NS, DirectoryScan, scan_all
from .shm import GenerationStore

log = logging.getLogger("hashserver.index")


class IndexPublisher:
    """Main-process side: builds the index, publishes generations, keeps them fresh."""

    def __init__(self, search_path: SearchPath, store: GenerationStore, interval: float = 1.0):
        self.search_path = search_path
        self.store = store
        self.interval = interval
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
            # A huge flat directory that keeps changing must not keep a core busy.
            self._stop.wait(4 * (time.monotonic() - started))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

