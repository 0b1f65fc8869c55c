"""The lock-file protocol shared with other hashservers and Seamless ``save_vault``.

* ``DIR/.LOCK`` (and, in the prefix layout, ``DIR/<prefix>/.LOCK``) marks a
  directory being written as a whole;
* ``<buffer path>.LOCK`` marks one buffer being written in place.

A lock whose modification time is older than the lock timeout is stale: its
writer is taken to be dead and the lock is ignored.  Writers that run longer
than that refresh their lock's modification time.
"""

from __future__ import annotations

import asyncio
import os
import time

from .owner import owner_tag

POLL_FIRST = 0.05
POLL_MAX = 0.5
REFRESH_EVERY = 5.0


class LockProtocol:
    def __init__(self, timeout: float):
        self.timeout = timeout

    def is_fresh(self, path: str) -> bool:
        try:
            mtime = os.stat(path).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return False
        return time.time() - mtime < self.timeout

    def any_fresh(self, paths) -> bool:
        return any(self.is_fresh(p) for p in paths)

    async def wait_until_free(self, paths) -> bool:
        """Wait while any of ``paths`` is a fresh lock; True if there was one.

        Polls with a growing interval; other requests are served meanwhile.
        """
        waited = False
        interval = POLL_FIRST
        while self.any_fresh(paths):
            waited = True
            await asyncio.sleep(interval)
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
