"""A new file written past the page cache (``O_DIRECT``) where its file system allows.

The local tier writes each large buffer that a miss or a PUT brings.  Through
the page cache that costs a copy into new cache pages for every byte, and a
buffer read once pushes out of the cache what the tier serves often.  On the
machine this was measured on (a virtual machine whose host takes back the
memory the guest frees, so a new page faults on its first write), that copy
cost 38-42 ms of kernel CPU per 16 MiB, more than the miss's own work; written
past the cache from a buffer used again, about 4 ms.  The first read of the
file then comes from the disk, which is what a cache tier is for.

``O_DIRECT`` wants aligned memory, offsets and lengths: the bytes go through
a page-aligned buffer (kept for the next file: a new mapping's pages would
cost their first touch again) in whole blocks, and the last partial block is
written through the cache.  A file system that refuses ``O_DIRECT`` (tmpfs,
which is the page cache itself; some FUSE file systems) gets plain writes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading

from .writer import write_all

ALIGN = 4096  # a multiple of the logical block size of any disk of today
BUFFER = 1 << 20  # bytes written at a time, past the cache
KEEP = 4  # idle buffers kept for the next files, at most


class BufferPool:
    """Page-aligned buffers for :class:`DirectFile`, kept for reuse."""

    def __init__(self, size: int = BUFFER, keep: int = KEEP):
        assert size % ALIGN == 0
        self.size = size
        self.keep = keep
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(buffer)
                return
        buffer.close()

    @property
    def idle(self) -> int:
        """Buffers kept for reuse."""
        return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for buffer in idle:
            buffer.close()


class DirectFile:
    """Appends to a new, empty file open for writing (``fd``, not closed here).
    :meth:`write` and :meth:`finish` block: call them in a thread, one at a
    time; then :meth:`release`, whatever happened.  ``direct`` says whether
    the whole blocks go past the page cache (so far)."""

    def __init__(self, fd: int, pool: BufferPool):
        self.fd = fd
        self.offset = 0  # bytes in the file
        self._pool = pool
        self._buffer: mmap.mmap | None = None
        self._filled = 0  # bytes in the buffer, not yet in the file
        self.direct = _set_direct(fd, True)
        if self.direct:
            self._buffer = pool.take()

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._buffer is None:
            write_all(self.fd, view, self.offset)
            self.offset += len(view)
            return
        while view:
            n = min(len(view), len(self._buffer) - self._filled)
            self._buffer[self._filled:self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == len(self._buffer):
                self._flush()
                if self._buffer is None:  # gone through the cache
                    self.write(view)
                    return

    def write_all(self, pieces: list[bytes | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def finish(self) -> None:
        """Write what the buffer holds: its whole blocks past the cache, the rest through it."""
        if self._buffer is None:
            return
        self._flush()
        if self._buffer is not None:  # still past the cache: the last partial block through it
            _set_direct(self.fd, False)
            self._write_plain_rest(0)

    def release(self) -> None:
        if self._buffer is not None:
            self._pool.give(self._buffer)
            self._buffer = None

    def _flush(self) -> None:
        """Write the buffer's whole blocks past the cache, and move the bytes after them
        to its start.  Where the file system refuses a write past the cache (or writes
        part of a block), the file goes on through the cache: everything held too."""
        assert self._buffer is not None
        blocks = self._filled - self._filled % ALIGN
        done = 0
        with memoryview(self._buffer) as view:
            while done < blocks and self.direct:
                try:
                    n = os.pwrite(self.fd, view[done:blocks], self.offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    n = 0
                if n == 0 or n % ALIGN:
                    self._plain()
                done += n
                self.offset += n
        if not self.direct:
            self._write_plain_rest(done)
            return
        self._buffer.move(0, blocks, self._filled - blocks)
        self._filled -= blocks

    def _write_plain_rest(self, start: int) -> None:
        """Write the buffer's bytes from ``start`` on through the cache, and give the buffer back."""
        assert self._buffer is not None
        rest = self._buffer[start:self._filled]  # a copy: the buffer goes back to the pool
        self._filled = 0
        self.release()
        write_all(self.fd, rest, self.offset)
        self.offset += len(rest)

    def _plain(self) -> None:
        if self.direct:
            _set_direct(self.fd, False)
            self.direct = False


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the file system refuses it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return on
