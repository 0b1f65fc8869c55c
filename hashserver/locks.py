"""The lock-file protocol shared with other hashservers and Seamless ``save_vault``.

* ``DIR/.LOCK`` (and, in the prefix layout, ``DIR/<prefix>/.LOCK``) marks a
  directory being written as a whole;
* ``<buffer path>.LOCK`` marks one buffer being written in place.

A lock whose modification time is older than the lock timeout is stale: its
writer is taken to be dead and the lock is ignored.  Writers that run longer
than that refresh their lock's modification time.

Clocks: file times are written by other hosts' clocks, so a lock's age is
wall time; but a lock dated in the future (a clock ahead of ours) would stay
fresh for as long as that clock is ahead, so it counts as fresh for at most
the lock timeout from when this process first saw it (:class:`FileAges`).
Local waits are measured on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Hashable

from .owner import owner_tag

POLL_FIRST = 0.05
POLL_MAX = 0.5
REFRESH_EVERY = 5.0


FUTURE_SLACK = 2.0  # seconds a file may be dated ahead of our clock and still count as dated now
SEEN_MAX = 100_000  # future-dated file versions remembered, at most


class FileAges:
    """The age of a file from its modification time, in seconds; a file
    dated in the future ages from when this process first saw that version."""

    def __init__(self):
        self._first_seen: dict[Hashable, float] = {}

    def age(self, path: str, st: os.stat_result) -> float:
        return self.age_of((path, st.st_mtime_ns), st.st_mtime)

    def age_of(self, version: Hashable, made: float) -> float:
        """The age of a thing made at wall time ``made``; ``version`` names it, and
        changes when it is made again."""
        age = time.time() - made
        if age >= -FUTURE_SLACK:
            return max(age, 0.0)
        if len(self._first_seen) >= SEEN_MAX:
            self._first_seen.clear()
        first = self._first_seen.setdefault(version, time.monotonic())
        return time.monotonic() - first


class LockProtocol:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.ages = FileAges()

    def is_fresh(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return self.ages.age(path, st) < self.timeout

    def any_fresh(self, paths) -> bool:
        return any(self.is_fresh(p) for p in paths)

    async def wait_until_free(self, paths, deadline: float = float("inf")) -> bool:
        """Wait while any of ``paths`` is a fresh lock, until ``deadline``
        (monotonic); True if there was one.  Polls with a growing interval;
        other requests are served meanwhile."""
        waited = False
        interval = POLL_FIRST
        while self.any_fresh(paths) and time.monotonic() < deadline:
            waited = True
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(POLL_MAX, interval * 2)
        return waited


class HeldLock:
    """A per-file lock held by this process while it writes one buffer.

    Created (or taken over, if another writer of the same buffer holds it: the
    content is the same) on enter, its modification time refreshed every few
    seconds by a task, removed on exit.
    """

    def __init__(self, path: str):
        self.path = path
        self._task: asyncio.Task | None = None

    def _touch(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o664)
        try:
            os.write(fd, owner_tag().encode())
        finally:
            os.close(fd)
        os.utime(self.path)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                self._touch()
            except OSError:
                pass

    async def __aenter__(self) -> "HeldLock":
        try:
            self._touch()
        except OSError:  # e.g. a full disk: leave no empty lock behind
            self._remove()
            raise
        self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
        self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
