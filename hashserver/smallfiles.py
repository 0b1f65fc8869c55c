"""Small buffers that are known to be right, put into a buffer directory cheaply.

The local tier stores every small buffer it reads from the object store or
takes in a PUT, after the object store vouched for it.  Under a storm of
misses that is thousands of files a second, and the per-file cost of the
writer's way (lock, fsync) and of a thread hand-off each made a miss with a
tier cost twice as much as one without.  So here:

- a temporary file, written and linked into place (by rename where the
  directory is shared with other hosts), as :mod:`.writer` publishes: a
  file under the buffer's name is always complete;
- the directory is created only when the open finds it missing;
- written on the event loop (right after the step that asked, which sends
  the answer first) while writes are quick, as nginx writes its
  proxy cache: on tmpfs a write on the loop cost a miss 0.08-0.09 ms of CPU
  where a hand-off to a thread cost 0.18-0.25 ms (the thread and the loop pass
  the GIL back and forth at each system call);
- once writes on the loop take longer than :data:`SLOW_WRITE` on average (a
  disk stalled, a file system that has to look far for a free inode), by one
  thread for :data:`THREAD_SPELL` seconds, those already waiting for the loop
  included, in batches: while a batch is being written, the next one gathers.
  Then on the loop again, its average measured afresh.  (The thread's own
  times are no measure: under load they include waits for the GIL.)

Nothing is fsynced: a file that a crash left torn fails its verification
when first read, is removed, and is read again from the back store; a
temporary file it left is removed at the next start.  (An unnamed
``O_TMPFILE`` linked through ``/proc/self/fd`` would save the temporary
name, but the kernels this was measured on refuse that link with EXDEV.)
"""

from __future__ import annotations

import asyncio
import os
import time

from .files import BUFFER_MODE, make_group_dir, unlink_quietly
from .layout import temp_path
from .writer import publish_file, write_all

BATCH = 64  # files written by one hand-off to the thread, at most
SLOW_WRITE = 0.002  # seconds: writes that take longer, on a moving average, go to the thread
THREAD_SPELL = 10.0  # seconds the thread writes before the loop tries again
RECENT_WEIGHT = 0.2  # of the last write in the moving average
NO_SPELL = float("-inf")


class SmallFiles:
    """Writes ``content`` as the file ``final``, unless a file is there already."""

    def __init__(self, by_rename: bool = False):
        self.by_rename = by_rename
        self._chmod = _umask_hides(BUFFER_MODE)
        self._pending: list[tuple[str, bytes, asyncio.Future]] = []
        self._busy = False
        self._thread_until = NO_SPELL  # time.monotonic() until which the thread writes
        self._write_seconds = 0.0  # a write's time, on a moving average

    async def write(self, final: str, content: bytes) -> bool:
        """True if the file was written, False if one was there; raises OSError."""
        return await self.submit(final, content)

    def submit(self, final: str, content: bytes) -> asyncio.Future:
        """:meth:`write`, as a future (of the running loop) that is done when it is."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if self._on_loop():
            loop.call_soon(self._write_on_loop, loop, final, content, done)  # once the answer is on its way
        else:
            self._to_thread(loop, final, content, done)
        return done

    def _on_loop(self) -> bool:
        """Whether a write goes on the loop now: not while the thread writes, nor during its spell."""
        if self._busy:
            return False
        if self._thread_until != NO_SPELL:
            if time.monotonic() < self._thread_until:
                return False
            self._thread_until, self._write_seconds = NO_SPELL, 0.0  # over: the loop measures afresh
        return True

    def _write_on_loop(self, loop: asyncio.AbstractEventLoop, final: str, content: bytes,
                       done: asyncio.Future) -> None:
        if done.done():
            return  # its writer gave up on it
        if not self._on_loop():  # asked for before the writes turned slow
            self._to_thread(loop, final, content, done)
            return
        started = time.monotonic()
        try:
            done.set_result(self.write_now(final, content))
        except Exception as exc:  # an OSError is this write's own; any other reaches its writer too
            done.set_exception(exc)
        finished = time.monotonic()
        # An average: a write that the loop's other work held up once is not the disk's fault.
        self._write_seconds += RECENT_WEIGHT * (finished - started - self._write_seconds)
        if self._write_seconds > SLOW_WRITE:
            self._thread_until = finished + THREAD_SPELL

    def _to_thread(self, loop: asyncio.AbstractEventLoop, final: str, content: bytes, done: asyncio.Future) -> None:
        self._pending.append((final, content, done))
        if not self._busy:
            self._next_batch(loop)

    def _next_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
        self._busy = True
        job = loop.run_in_executor(None, self._write_batch, [(final, content) for final, content, _ in batch])
        job.add_done_callback(lambda job: self._batch_done(loop, batch, job))

    def _batch_done(self, loop: asyncio.AbstractEventLoop, batch: list, job: asyncio.Future) -> None:
        self._busy = False
        if job.cancelled():
            outcomes: list = [None] * len(batch)
        else:  # an error that is not an OSError (those are each write's own): every writer gets it
            outcomes = job.result() if job.exception() is None else [job.exception()] * len(batch)
        for (_, _, done), outcome in zip(batch, outcomes, strict=True):
            if done.done():
                continue  # its waiter was cancelled
            if outcome is None:
                done.cancel()
            elif isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
        if self._pending:
            self._next_batch(loop)

    def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[bool | OSError]:
        outcomes: list[bool | OSError] = []
        for final, content in batch:
            try:
                outcomes.append(self.write_now(final, content))
            except OSError as exc:
                outcomes.append(exc)
        return outcomes

    def write_now(self, final: str, content: bytes) -> bool:
        """:meth:`write`, in the calling thread."""
        directory, name = os.path.split(final)
        tmp = temp_path(directory, name)
        try:
            fd = _create(tmp, directory)
            try:
                write_all(fd, content, 0)
                if self._chmod:
                    os.fchmod(fd, BUFFER_MODE)
            finally:
                os.close(fd)
            return publish_file(tmp, final, self.by_rename)
        except BaseException:
            unlink_quietly(tmp)
            raise


def _umask_hides(mode: int) -> bool:
    """Whether this process's umask takes bits of ``mode`` away (then files get an
    fchmod after their creation); read from /proc, which changes nothing (setting
    the umask to read it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return bool(int(line.split()[1], 8) & mode)
    except (OSError, ValueError, IndexError):
        pass
    return True


def _create(path: str, directory: str) -> int:
    """A new file; its directory made first if it is missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(path, flags, BUFFER_MODE)
    except FileNotFoundError:
        make_group_dir(directory)
        return os.open(path, flags, BUFFER_MODE)
