"""Where index generations live, shared by the main process and every worker.

Generation files go to a directory on ``/dev/shm`` (shared memory, not disk)
named after the server's host and pid; a memory-mapped 8-byte counter names
the newest generation, so a worker checks for a new one with a memory read,
not a system call.  The main process writes (:class:`GenerationStore`);
workers map the newest generation (:class:`IndexReader`).
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from ..owner import owner_tag, pid_is_dead
from .records import IndexData

if TYPE_CHECKING:
    from .merge import Merge


class GenerationStore:
    """The directory of generation files and the shared counter naming the newest.

    The counter is an 8-byte memory-mapped file, so a worker checks for a new
    generation with a memory read, not a system call.
    """

    COUNTER = "generation"

    def __init__(self, directory: str):
        self.directory = directory
        fd = os.open(os.path.join(directory, self.COUNTER), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._counter = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._view = np.frombuffer(self._counter, np.uint64, 1)

    PREFIX = "hashserver-index-"

    @classmethod
    def create(cls) -> "GenerationStore":
        """A new directory, named after this process; those of dead servers go."""
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        cls.remove_orphans(base)
        return cls(tempfile.mkdtemp(prefix=f"{cls.PREFIX}{owner_tag()}-", dir=base))

    @classmethod
    def remove_orphans(cls, base: str) -> int:
        """Remove the index directories of servers on this host that died
        without cleaning up (``kill -9``): they would hold shared memory until
        the next reboot."""
        removed = 0
        try:
            names = os.listdir(base)
        except OSError:
            return 0
        for name in names:
            if not name.startswith(cls.PREFIX):
                continue
            tag = name[len(cls.PREFIX):].rpartition("-")[0]
            if tag and pid_is_dead(tag):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
                removed += 1
        return removed

    @property
    def generation(self) -> int:
        return int(self._view[0])

    def path(self, generation: int) -> str:
        return os.path.join(self.directory, f"index-{generation}")

    def publish(self, data: IndexData | Merge) -> int:
        """Write a new generation (anything with ``write(path)``) and make it the newest."""
        generation = self.generation + 1
        data.write(self.path(generation))
        np.frombuffer(self._counter, np.uint64, 1)[0] = generation
        # Older generations may still be mapped by workers; unlinking is safe.
        for name in os.listdir(self.directory):
            if name.startswith("index-") and name != f"index-{generation}":
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
        return generation

    def open_current(self) -> tuple[int, IndexData]:
        while True:
            generation = self.generation
            try:
                return generation, IndexData.open(self.path(generation))
            except FileNotFoundError:
                continue  # a newer generation replaced it meanwhile: read the counter again

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class IndexReader:
    """Worker side: the newest published generation, re-mapped when it changes."""

    def __init__(self, store: GenerationStore):
        self.store = store
        self._generation, self._data = store.open_current()

    def current(self) -> IndexData:
        if self.store.generation != self._generation:
            self._generation, self._data = self.store.open_current()
        return self._data
