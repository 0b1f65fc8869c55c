"""Which main directories hold no lock file, learnt once per epoch of the watch.

Before a buffer is said to be absent, no fresh lock may cover it (a writer
may be about to publish it): its own ``<checksum>.LOCK`` and the global locks
(:meth:`SearchPath.read_locks <hashserver.layout.SearchPath.read_locks>`).
Stat'ing those three files cost a 404 more than everything else it does.
Instead, while the inotify watch vouches for a main directory, one listing
of it says whether it holds any lock file at all, and a stat of each
*sentinel* (a global lock outside it, which the watch guards too) whether
those exist; the answer holds for every checksum of that directory until its
epoch changes (:class:`~hashserver.watch.DirectoryWatch`): a lock file made
or removed there, or a sentinel's, is an event that raises it.

A directory holding any lock file, stale or not, or more than
:data:`LIST_LIMIT` entries (a listing would hold up the worker), is left to
the per-request stats, as before.
"""

from __future__ import annotations

import os

from .layout import LOCK_SUFFIX, PROMISE_SUFFIX, SearchPath
from .watch import DirectoryWatch

LIST_LIMIT = 20_000  # entries listed at most, once per epoch: a few milliseconds
WAIT_SUFFIXES = (LOCK_SUFFIX, PROMISE_SUFFIX)  # files a reader must wait on: not "absent" without a look


def lock_sentinels(search_path: SearchPath) -> dict[int, tuple[str, ...]]:
    """Per main directory number: the lock files outside it that cover its
    buffers (in the prefix layout, the main directory's ``.LOCK``)."""
    found: dict[int, set[str]] = {}
    main = search_path.main
    for first_byte in range(256):
        numbers = main.dir_numbers(first_byte)
        inside = {search_path.dirs[n] for n in numbers}
        outside = {p for p in search_path.read_locks(f"{first_byte:02x}" * 32) if os.path.dirname(p) not in inside}
        for number in numbers:
            found.setdefault(number, set()).update(outside)
    return {number: tuple(sorted(paths)) for number, paths in found.items()}


class LockFreeDirectories:
    """Per main directory: whether it and its sentinels held no lock file, at which epoch."""

    def __init__(self, search_path: SearchPath, watch: DirectoryWatch, limit: int = LIST_LIMIT):
        self.search_path = search_path
        self.watch = watch
        self.limit = limit
        self._main = [search_path.main.dir_numbers(first_byte) for first_byte in range(256)]
        self._known: dict[int, tuple[int, bool]] = {}  # directory number -> (epoch, lock-free)

    def holds(self, first_byte: int) -> bool:
        """No lock file can cover a checksum starting with this byte, and the
        main directory is there.  Call right after the watch was drained and
        found to vouch for the checksum's directories."""
        epochs = self.watch.epochs
        for number in self._main[first_byte]:
            known = self._known.get(number)
            if known is None or known[0] != epochs[number]:
                if not self.watch.vouched[number]:
                    return False
                known = self._known[number] = (epochs[number], self._lock_free(number))
            if not known[1]:
                return False
        return True

    def _lock_free(self, number: int) -> bool:
        """Looked at now: the main directory exists, no sentinel does, and
        this directory holds no lock or promise file (and is small enough to
        list): a promise another server made is not in the index at once."""
        try:
            os.stat(self.search_path.main.root)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if any(_exists(path) for path in self.watch.sentinels.get(number, ())):
            return False
        try:
            with os.scandir(self.search_path.dirs[number]) as entries:
                for count, entry in enumerate(entries):
                    if count >= self.limit or entry.name.endswith(WAIT_SUFFIXES):
                        return False
        except (FileNotFoundError, NotADirectoryError):
            pass  # no directory: no lock file in it
        return True


def _exists(path: str) -> bool:
    """Only "not found" means absent: any other error propagates (the lock may well be there)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True
