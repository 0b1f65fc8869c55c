"""Promises: ``PUT /promise/<checksum>`` announces a buffer about to be written.

A promise is a file ``<buffer path>.PROMISE`` in the main directory; its
modification time is when it was made or renewed.  Being a file, it is seen by
every worker and by every hashserver on the same directory, and it survives a
restart.  It lapses after ``ttl`` seconds, or when the buffer is written.
"""

from __future__ import annotations

import os
import time

from .files import make_group_dir, temp_name, unlink_quietly
from .layout import PROMISE_SUFFIX, SearchPath

PROMISE_TTL = 600


class Promises:
    def __init__(self, search_path: SearchPath, ttl: float = PROMISE_TTL):
        self.search_path = search_path
        self.ttl = ttl

    def path(self, checksum_hex: str) -> str:
        return self.search_path.publish_path(checksum_hex) + PROMISE_SUFFIX

    def oldest_fresh_ns(self) -> int:
        """Promises made after this time (ns) are still in force."""
        return time.time_ns() - int(self.ttl * 1e9)

    def is_promised(self, checksum_hex: str) -> bool:
        try:
            return os.stat(self.path(checksum_hex)).st_mtime_ns > self.oldest_fresh_ns()
        except (FileNotFoundError, NotADirectoryError):
            return False

    def promise(self, checksum_hex: str) -> None:
        """Make or renew a promise.  Replaced, not touched, so that the
        directory's modification time moves and index lookups notice."""
        path = self.path(checksum_hex)
        directory = os.path.dirname(path)
        make_group_dir(directory)
        tmp = os.path.join(directory, temp_name(checksum_hex))
        with open(tmp, "wb"):
            pass
        os.replace(tmp, path)

    def resolve(self, checksum_hex: str) -> None:
        unlink_quietly(self.path(checksum_hex))
