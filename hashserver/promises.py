"""Promises: ``PUT /promise/<checksum>`` announces a buffer about to be written.

A promise is a file ``<buffer path>.PROMISE`` in the main directory; its
modification time is when it was made or renewed.  Being a file, it is seen by
every worker and by every hashserver on the same directory, and it survives a
restart.  It lapses after ``ttl`` seconds, or when the buffer is written.
A lapsed promise's file is removed by the main process (:meth:`Promises.remove_lapsed`,
called by :class:`~hashserver.index.publisher.IndexPublisher`), which counts it as expired.
"""

from __future__ import annotations

import os
import time

from .files import make_group_dir, unlink_quietly, write_small_file
from .layout import SearchPath, temp_path
from .locks import FileAges

PROMISE_TTL = 600


class Promises:
    def __init__(self, search_path: SearchPath, ttl: float = PROMISE_TTL):
        self.search_path = search_path
        self.ttl = ttl
        self.ages = FileAges()

    def oldest_fresh_s(self) -> int:
        """Promises made after this time (whole seconds since the epoch) are still in force
        (the index dates a promise made in the future as made when scanned)."""
        return int(time.time() - self.ttl)

    def is_promised(self, checksum_hex: str) -> bool:
        path = self.search_path.promise_path(checksum_hex)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return not self._lapsed(path, st)

    def _lapsed(self, path: str, st: os.stat_result) -> bool:
        """The one clock rule: wall time of the file, a future-dated one per :class:`FileAges`."""
        return self.ages.age(path, st) >= self.ttl

    def promise(self, checksum_hex: str) -> None:
        """Make or renew a promise.  Replaced, not touched, so that the
        directory's modification time moves and index lookups notice."""
        path = self.search_path.promise_path(checksum_hex)
        directory = os.path.dirname(path)
        make_group_dir(directory)
        write_small_file(path, temp_path(directory, checksum_hex), b"")

    def resolve(self, checksum_hex: str) -> None:
        unlink_quietly(self.search_path.promise_path(checksum_hex))

    def remove_lapsed(self, checksum_hex: str) -> bool:
        """Remove this checksum's promise if it has lapsed; True if this call removed it.

        A promise renewed at any moment must survive: the file is moved aside
        first (atomic: a renewal after that lands at the promise's path), then
        judged again; one that turns out fresh (renewed before the move) goes
        back.  Resolved or removed by someone else meanwhile: False."""
        path = self.search_path.promise_path(checksum_hex)
        try:
            if not self._lapsed(path, os.stat(path)):
                return False
            aside = temp_path(os.path.dirname(path), checksum_hex)
            os.rename(path, aside)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            lapsed = self._lapsed(path, os.stat(aside))
        except FileNotFoundError:
            return False
        if lapsed:
            unlink_quietly(aside)
        else:
            os.replace(aside, path)  # over a still newer renewal, if any: both are fresh
        return lapsed
