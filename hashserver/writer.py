"""The writer path: stream a body to a temporary file while hashing it, and
publish it under its checksum only once it is verified, atomically.

Guarantees: a reader sees either no file or the whole, correct file under a
checksum's name; an interrupted, wrong or failed upload leaves nothing behind
(after ``kill -9``, the next start removes this host's dead writers'
temporary files and locks, and other readers ignore stale locks).

Publication: on a local file system by hard link, which never replaces a
file (exact "first one wins").  Where other hosts share the directory (NFS,
Lustre, CephFS, GlusterFS, FUSE mounts such as SeaweedFS: :mod:`.filesystems`)
by ``rename``, the one step those honour whole-or-nothing on every mount (a
name published by hard link on one SeaweedFS mount stayed unopenable on
another until it remounted).  ``rename`` replaces, so the writer first checks
that the name is free; two hosts publishing the same buffer at the same moment
may both rename, the second replacing the first's file with the same, verified
bytes: harmless (a reader holding the first open keeps reading it).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .bufferfile import DecodingHash
from .checksum import Hasher
from .compression import Encoding
from .files import BUFFER_MODE, make_group_dir, rename_no_replace, unlink_quietly, write_small_file
from .filesystems import is_network_file_system
from .layout import LOCK_SUFFIX, SearchPath, is_buffer_name, sidecar_path, temp_owner, temp_path
from .locks import HeldLock, LockProtocol
from .owner import pid_is_dead
from .promises import Promises
from .storage import BodyStalled, BodyTooLarge, ChecksumMismatch, DiskFull, PutOutcome

BATCH = 1 << 20  # bytes handed to the hashing/writing thread at a time
IN_FLIGHT = 2  # batches queued for hashing and writing, beyond the one being received
WRITEBACK = 8 << 20  # bytes written between requests to start writing them out
LOCK_ATTEMPTS = 3  # takes of a buffer's lock that another host's writer removed meanwhile
LOCK_RETRY_PAUSE = 0.02  # seconds, times the attempt's number


@dataclass(frozen=True)
class BodyPace:
    """How slow an upload may be before it is aborted: no byte for
    ``idle_timeout`` seconds, or (after its first ``grace`` seconds) fewer
    than ``min_rate`` bytes a second on average.  Otherwise a stalled
    client would hold the buffer's lock, and every reader waiting on it,
    for as long as it likes."""

    idle_timeout: float = 30.0
    min_rate: int = 64 * 1024
    grace: float = 30.0

    async def paced(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        chunks = body.__aiter__()
        started = time.monotonic()
        total = 0
        while True:
            try:
                chunk = await _within(self.idle_timeout, chunks.__anext__())
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise BodyStalled(f"Request Timeout: no byte of the body arrived for "
                                  f"{self.idle_timeout:g} s; nothing was stored") from None
            total += len(chunk)
            elapsed = time.monotonic() - started
            if self.min_rate and elapsed > self.grace and total < self.min_rate * elapsed:
                raise BodyStalled(f"Request Timeout: the body arrived at {total / elapsed:.0f} bytes/s, "
                                  f"below the minimum of {self.min_rate}; nothing was stored")
            yield chunk


async def _within(seconds: float, awaitable):
    """``awaitable``'s result, or TimeoutError after ``seconds``.  In this
    task (``asyncio.timeout``): a ``wait_for`` task reading the request body
    would not end when Sanic cancels the handler at a cut connection."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # Python 3.10


class BufferWriter:
    """Writes into the main directory of ``search_path``.

    ``exists`` says whether a buffer is present already (an exact lookup);
    ``published`` is told the path of each file this writer publishes;
    ``by_rename``: publish by ``rename`` (default: where the main directory is
    on a file system shared with other hosts, looked up once, here).
    """

    def __init__(self, search_path: SearchPath, hasher: Hasher, locks: LockProtocol,
                 promises: Promises | None, max_body_size: int,
                 exists: Callable[[bytes], bool], published: Callable[[str], None],
                 pace: BodyPace | None = None, by_rename: bool | None = None):
        self.search_path = search_path
        self.by_rename = is_network_file_system(search_path.main.root) if by_rename is None else by_rename
        self.hasher = hasher
        self.locks = locks
        self.promises = promises
        self.max_body_size = max_body_size
        self.pace = pace or BodyPace()
        self.exists = exists
        self.published = published

    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  encoding: Encoding | None = None) -> PutOutcome:
        """Store the body under ``checksum`` if it hashes to it.

        A body with an ``encoding`` is stored compressed as it came
        (``<checksum>.zst`` / ``.gz`` with a length sidecar), its checksum being
        that of what it decompresses to.  Raises :class:`ChecksumMismatch`,
        :class:`InvalidPayload`, :class:`BodyTooLarge` or :class:`DiskFull`;
        in every case nothing is left behind.  A stored (or already present)
        buffer resolves its promise.
        """
        try:
            outcome = await self._put(checksum, body, encoding)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull() from exc
            raise
        if self.promises is not None:
            self.promises.resolve(checksum.hex())
        return outcome

    async def _put(self, checksum: bytes, body: AsyncIterator[bytes],
                   encoding: Encoding | None) -> PutOutcome:
        checksum_hex = checksum.hex()
        digest = DecodingHash(self.hasher, encoding)
        if self.exists(checksum):
            await self._consume(body, digest)
            if digest.finish()[0] != checksum:
                raise ChecksumMismatch()
            return PutOutcome.PRESENT
        base = self.search_path.publish_path(checksum_hex)
        final = base + (encoding.suffix if encoding else "")
        directory = os.path.dirname(final)
        make_group_dir(directory)
        tmp = temp_path(directory, checksum_hex)
        async with _held(self.search_path.lock_path(checksum_hex)):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    await self._consume(body, digest, fd)
                finally:
                    os.close(fd)
                result, length = digest.finish()
                if result != checksum:
                    raise ChecksumMismatch()
                if encoding is not None:
                    write_small_file(sidecar_path(base), temp_path(directory, checksum_hex),
                                     str(length).encode(), BUFFER_MODE)
                await self.locks.wait_until_free(self.search_path.global_locks(checksum_hex))
                os.chmod(tmp, BUFFER_MODE)
                published = self.publish(tmp, final)
            finally:
                unlink_quietly(tmp)
        if published:
            self.published(final)
        return PutOutcome.STORED if published else PutOutcome.PRESENT

    def publish(self, tmp: str, final: str) -> bool:
        """Put the complete file ``tmp`` in place as ``final``, unless a file is
        there already (then False): by rename where other hosts share the
        directory, by hard link elsewhere."""
        return publish_file(tmp, final, self.by_rename)

    async def _consume(self, body: AsyncIterator[bytes], digest: DecodingHash, fd: int | None = None) -> None:
        """Hash (and write to ``fd``, if given) the whole body, fsynced.

        Three things overlap: the event loop receives while one thread hashes
        and another writes (both release the GIL).  Each is queued the next
        batch before it is done with the current one, so the hashing thread,
        the slowest, does not wait for the event loop between batches.  At
        most IN_FLIGHT batches wait, so memory stays flat however large the body.
        """
        hashing = SerialStage(lambda parts: hash_parts(digest, parts))
        file = BodyFile(fd) if fd is not None else None
        writing = SerialStage(file.write) if file is not None else None
        in_flight: deque[list[asyncio.Future]] = deque()
        try:
            async for parts in batch_parts(body, self.pace, self.max_body_size):
                in_flight.append([stage.submit(parts) for stage in (hashing, writing) if stage is not None])
                if len(in_flight) > IN_FLIGHT:
                    await _all_of(in_flight.popleft())
        finally:  # a body that fails (cut, too large, stalled, cancelled): the threads end before fd closes
            for stage in (hashing, writing):
                if stage is not None:
                    await stage.settled()
            for future in (future for futures in in_flight for future in futures):
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a failed write after a failed body is no second error
        while in_flight:
            await _all_of(in_flight.popleft())
        if file is not None:
            await asyncio.get_running_loop().run_in_executor(None, file.finish)


async def _all_of(futures: list[asyncio.Future]) -> None:
    for future in futures:
        await future


def retrieve_exception(future: asyncio.Future) -> None:
    """Mark a done future's exception, if any, as seen: its error is reported otherwise
    (or is no error to report), and asyncio would log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def done_in_thread(work: Callable, *args) -> None:
    """``work(*args)`` in a thread; a cancellation meanwhile is raised once the thread
    is done with what it uses (a fill's file and buffer, closed and reused after)."""
    future = asyncio.get_running_loop().run_in_executor(None, work, *args)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # cancelled again meanwhile: still the thread first
            try:
                await asyncio.wait({future})
            except asyncio.CancelledError:
                pass
        retrieve_exception(future)  # the cancellation is what the caller gets
        raise


def hash_parts(digest: DecodingHash, parts: list[bytes]) -> None:
    for part in parts:
        digest.update(part)


class SerialStage:
    """Does ``work`` on each item submitted, in order, one at a time, in the
    event loop's executor.

    A thread takes the next item from the queue as soon as it is done with
    one (handing each item to the executor and awaiting it in turn left the
    hashing thread idle between batches, for the event loop to wake and start
    the next); and no thread is held while the queue is empty, so an upload
    whose client pauses holds none.
    """

    def __init__(self, work: Callable[[list[bytes]], None]):
        self._work = work
        self._queue: deque[tuple[list[bytes], asyncio.Future]] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self._unsettled: set[asyncio.Future] = set()

    def submit(self, item: list[bytes]) -> asyncio.Future:
        """Queue ``item``; the future is done once ``work`` is, with its exception
        if any.  Cancelling it (a cancelled task awaiting it) cancels no work:
        :meth:`settled` still waits for that work."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._unsettled.add(done)
        done.add_done_callback(self._unsettled.discard)
        done.add_done_callback(retrieve_exception)  # a cancelled waiter's shield no longer would
        with self._lock:
            self._queue.append((item, done))
            start, self._draining = not self._draining, True
        if start:
            loop.run_in_executor(None, self._drain, loop)
        return asyncio.shield(done)

    async def settled(self) -> None:
        """Until every item submitted is done with: what the work uses (the
        body's file) may be closed only then.  A cancellation meanwhile is
        raised once the work is done, not before."""
        cancelled = False
        while self._unsettled:
            try:
                await asyncio.wait(list(self._unsettled))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                item, done = self._queue.popleft()
            try:
                self._work(item)
            except Exception as exc:  # handed to the coroutine awaiting the item
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class BodyFile:
    """The temporary file a body is written to (by one thread at a time).

    Every WRITEBACK bytes the kernel is asked to start writing out what came
    before (``POSIX_FADV_DONTNEED`` starts writeback of dirty pages and drops
    those already written), so that the fsync at the end waits for the last
    few megabytes, not for the whole body, and a large body does not fill
    the page cache.  A body of WRITEBACK bytes or more is dropped from the
    page cache once it is on disk; smaller ones stay there, for the next read.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.size = 0
        self._handed = 0  # bytes before this were handed to writeback

    def write(self, parts: list[bytes]) -> None:
        for part in parts:
            write_all(self.fd, part, self.size)
            self.size += len(part)
        if self.size - self._handed >= WRITEBACK:
            # from one step back: those pages are written by now, and dropped
            _drop_cached(self.fd, max(0, self._handed - WRITEBACK), self.size)
            self._handed = self.size

    def finish(self) -> None:
        """Make the written body durable."""
        os.fsync(self.fd)
        if self.size >= WRITEBACK:
            _drop_cached(self.fd, 0, self.size)


def _drop_cached(fd: int, start: int, end: int) -> None:
    """Advice only: a file system that refuses it fails no upload."""
    if hasattr(os, "posix_fadvise"):  # not on macOS
        try:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


@asynccontextmanager
async def _held(path: str) -> AsyncIterator[HeldLock]:
    """The buffer's lock, held.  Taking it over from another writer of the same buffer
    fails now and then on a SeaweedFS mount when that writer, on another host, removes
    it meanwhile (``utime`` of the name: ENOENT, or EIO): taken again after a pause.  A
    full disk, or a directory that is gone, fails at once."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        lock = HeldLock(path)
        try:
            await lock.__aenter__()
            break
        except OSError as exc:
            if (attempt == LOCK_ATTEMPTS or exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    or not os.path.isdir(os.path.dirname(path))):
                raise
        await asyncio.sleep(LOCK_RETRY_PAUSE * attempt)
    try:
        yield lock
    finally:
        await lock.__aexit__(None, None, None)


def publish_file(tmp: str, final: str, by_rename: bool) -> bool:
    """Put the complete file ``tmp`` in place as ``final`` unless a file is there
    (then False): renamed in one step where the system can; else by rename where
    other hosts share the directory, and by hard link elsewhere.  ``tmp`` is gone
    afterwards, whichever way was taken (its name only: the buffer's file stays)."""
    if not by_rename:
        renamed = rename_no_replace(tmp, final)
        if renamed is not None:
            if not renamed:
                unlink_quietly(tmp)
            return renamed
    published = _rename_if_free(tmp, final) if by_rename else _link(tmp, final)
    unlink_quietly(tmp)
    return published


def _link(tmp: str, final: str) -> bool:
    """Link the verified file into place; False if the buffer got there first."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        return _rename_if_free(tmp, final)  # a file system without hard links
    return True


def _rename_if_free(tmp: str, final: str) -> bool:
    """Rename the verified file into place unless the name is taken; False if it is.

    Content-addressed: a file under the name holds these bytes already (or
    will, by its own writer's verification), so the temporary file is dropped.
    The check and the rename are two steps: a writer elsewhere may publish in
    between, and is then replaced by the same bytes."""
    if os.path.lexists(final):
        return False
    os.rename(tmp, final)
    return True


def batch_parts(body: AsyncIterator[bytes], pace: BodyPace,
                max_body_size: int) -> AsyncIterator[list[bytes]]:
    """The body's chunks in lists of about BATCH bytes (fewer, larger steps for
    the threads, without joining them), paced (stalled uploads end) and
    bounded by ``max_body_size``."""
    return gathered(_bounded(pace.paced(body), max_body_size), BATCH)


async def _bounded(chunks: AsyncIterator[bytes], max_body_size: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_body_size:
            raise BodyTooLarge(max_body_size)
        yield chunk


async def gathered(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[list[bytes]]:
    """``chunks`` in lists of about ``size`` bytes, not joined: one step each for a
    thread, not one per chunk as it came off a socket (a 16 MiB PUT: 66 chunks)."""
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield pending
            pending, held = [], 0
    if pending:
        yield pending


def write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def remove_leftovers(search_path: SearchPath, lock_timeout: float) -> int:
    """Remove temporary files and per-file locks left by dead writers.

    Those of a dead process on this host go at once; any writer's go once
    older than the lock timeout (a live writer keeps touching its files).
    Returns how many were removed.
    """
    removed = 0
    now = time.time()
    for directory in search_path.main.dirs:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(directory, name)
            tag = temp_owner(name)
            if tag is None and name.endswith(LOCK_SUFFIX) and is_buffer_name(name[: -len(LOCK_SUFFIX)]):
                tag = _lock_owner(path)
            if tag is None:
                continue
            try:
                stale = now - os.stat(path).st_mtime > lock_timeout
            except FileNotFoundError:
                continue
            if stale or pid_is_dead(tag):
                unlink_quietly(path)
                removed += 1
    return removed


def _lock_owner(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(200).strip()
    except OSError:
        return None


def write_prefix_marker(search_path: SearchPath) -> None:
    """A writable prefix-layout directory says so, for servers that use it as an extra dir."""
    if search_path.main.name == "prefix":
        marker = search_path.marker_path()
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
