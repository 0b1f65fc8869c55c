"""Where index generations live, shared by the main process and every worker.

Generation files go to a directory on ``/dev/shm`` (shared memory, not disk)
named after the server's host and pid; a memory-mapped 8-byte counter names
the newest generation, so a worker checks for a new one with a memory read,
not a system call.  The main process writes (:class:`GenerationStore`);
workers map the newest generation (:class:`IndexReader`).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from ..owner import owner_tag, pid_is_dead
from .hugepages import collapse_file
from .records import IndexData

if TYPE_CHECKING:
    from .merge import Merge

log = logging.getLogger("hashserver.index")


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

    SHM = "/dev/shm"
    _elsewhere: str | None = None  # where generations go once /dev/shm was full (publish)

    @classmethod
    def create(cls) -> "GenerationStore":
        """A new directory, named after this process, on /dev/shm, else in the
        temporary directory; those of dead servers go."""
        fallback = tempfile.gettempdir()
        if os.access(cls.SHM, os.W_OK):
            cls.remove_orphans(cls.SHM)
            try:
                return cls(cls._new_directory(cls.SHM))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                _log_full(exc, fallback)
        cls.remove_orphans(fallback)
        return cls(cls._new_directory(fallback))

    @classmethod
    def _new_directory(cls, base: str) -> str:
        """A directory with the counter's page allocated: on a full tmpfs this is
        ENOSPC now, where a first write through the mapping would be SIGBUS."""
        directory = tempfile.mkdtemp(prefix=f"{cls.PREFIX}{owner_tag()}-", dir=base)
        try:
            fd = os.open(os.path.join(directory, cls.COUNTER), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, bytes(8))
            finally:
                os.close(fd)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return directory

    @classmethod
    def remove_orphans(cls, base: str) -> int:
        """Remove the index directories of servers on this host that died
        without cleaning up (``kill -9``): they would hold shared memory until
        the next reboot."""
        return remove_orphans(base, cls.PREFIX)

    @property
    def generation(self) -> int:
        return int(self._view[0])

    def path(self, generation: int) -> str:
        return os.path.join(self.directory, f"index-{generation}")

    def publish(self, data: IndexData | Merge) -> int:
        """Write a new generation (anything with ``write(path)``) and make it the newest."""
        generation = self.generation + 1
        self._write(data, generation)
        if self._elsewhere is None:
            collapse_file(self.path(generation))  # huge pages for every process that maps it
        np.frombuffer(self._counter, np.uint64, 1)[0] = generation
        # Older generations may still be mapped by workers; unlinking is safe.
        for name in os.listdir(self.directory):
            if name.startswith("index-") and name != f"index-{generation}":
                self._unlink(os.path.join(self.directory, name))
        return generation

    def _write(self, data: IndexData, generation: int) -> None:
        """Write a generation under :meth:`path`.  Once /dev/shm has been full,
        the file goes to a directory in the temporary directory, and a symbolic
        link (no data page on tmpfs, for a short target) stands at :meth:`path`, so that
        readers open it as before."""
        if self._elsewhere is None:
            try:
                data.write(self.path(generation))
                return
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self._go_elsewhere(exc, generation)
        target = os.path.join(self._elsewhere, f"index-{generation}")
        data.write(target)
        os.symlink(target, self.path(generation))

    def _go_elsewhere(self, exc: OSError, generation: int) -> None:
        for name in os.listdir(self.directory):  # what the failed write left
            if name.startswith(f"index-{generation}."):
                self._unlink(os.path.join(self.directory, name))
        base = tempfile.gettempdir()
        self.remove_orphans(base)
        self._elsewhere = tempfile.mkdtemp(prefix=f"{self.PREFIX}{owner_tag()}-", dir=base)
        _log_full(exc, self._elsewhere)

    @staticmethod
    def _unlink(path: str) -> None:
        """Remove a generation file, and its target if it is a symbolic link."""
        try:
            if os.path.islink(path):
                target = os.readlink(path)
                os.unlink(path)
                os.unlink(target)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def open_current(self) -> tuple[int, IndexData]:
        while True:
            generation = self.generation
            try:
                return generation, IndexData.open(self.path(generation))
            except FileNotFoundError:
                continue  # a newer generation replaced it meanwhile: read the counter again

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._elsewhere is not None:
            shutil.rmtree(self._elsewhere, ignore_errors=True)


def remove_orphans(base: str, prefix: str) -> int:
    """Remove the directories in ``base`` named ``<prefix><owner tag>-<random>``
    (as :func:`tempfile.mkdtemp` names them after :func:`owner_tag`) whose
    owner, a process on this host, is dead; returns how many went."""
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        tag = name[len(prefix):].rpartition("-")[0]
        if tag and pid_is_dead(tag):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed += 1
    return removed


def _log_full(exc: OSError, elsewhere: str) -> None:
    log.warning("index: %s is full (%s): index generations go to %s instead, shared through the page cache",
                GenerationStore.SHM, exc.strerror, elsewhere)


class IndexReader:
    """Worker side: the newest published generation, re-mapped when it changes."""

    def __init__(self, store: GenerationStore):
        self.store = store
        self._generation, self._data = store.open_current()

    def current(self) -> IndexData:
        if self.store.generation != self._generation:
            self._generation, self._data = self.store.open_current()
        return self._data
