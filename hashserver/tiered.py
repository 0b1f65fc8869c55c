"""A local buffer directory in front of another store: the cache tier of an
``s3://`` store (issue 13), in front of any :class:`~hashserver.storage.Storage`.

What the tier holds it answers at local speed; everything else goes to the
store behind it (the back store), which is the truth shared by every host.
A buffer enters the tier only once the back store holds it: after its PUT
there succeeded, or as it is read from there.  The back store hashed it
either way, so a plain buffer is not hashed again: it is written to a
temporary file and put in place only once the stream that carried it ended
whole (a wrong object ends its stream with an error first), so the tier never
holds a wrong or partial file; a compressed one goes through the tier's
writer, which measures its decoded length.  Filling the tier never delays or fails
a request: a failing tier is logged and counted, and the request goes to the
back store.  Its size is bounded by the main process (:mod:`.eviction`),
least recently used out first: the workers stamp each answer from the tier
in a table in shared memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable, Iterable

from .compression import BY_TOKEN, for_content_encoding
from .directory import DirectoryStore
from .directwrite import BufferPool, DirectFile
from .eviction import Recency, hold_for_sending
from .files import BUFFER_MODE, make_group_dir, unlink_quietly
from .layout import sidecar_path, temp_path
from .metrics import Metrics
from .smallfiles import SmallFiles
from .storage import (
    ChecksumMismatch,
    CorruptBuffer,
    DiskFull,
    Fast,
    PutOutcome,
    Readable,
    ReadOnly,
    StillWriting,
    Storage,
    StorageUnavailable,
    Want,
)
from .writer import BATCH, done_in_thread, gathered

log = logging.getLogger("hashserver")

LOCAL_FAILURES = (StorageUnavailable, DiskFull, OSError)
BACK_FAILURES = (StorageUnavailable, CorruptBuffer, StillWriting)  # a fill's own read of the back store
FILL_QUEUE = 8  # chunks on their way from a stream to the tier's writer
HAND_ON_WAIT = 2.0  # seconds a stream waits for the tier's writer, at most, before going on alone
FILE_CHUNK = 1 << 20
SMALL_FILL = 1 << 20  # plain buffers up to this size go into the tier from memory, in one step
MAX_FILLS = 16  # fills of larger buffers under way in one worker; a miss beyond them is not stored
EVERY_ENCODING = frozenset(BY_TOKEN)  # accepted by a fill: a buffer comes as its store holds it
SMALL_PENDING = 32 << 20  # bytes of small fills under way in one worker, at most (then likewise)
LOG_EVERY = 10.0  # seconds between two warnings of a failing tier
MISS_MEMO = 1.0  # seconds a worker takes the tier's "absent" for granted (see TieredStore._missed)
MISS_MEMO_SIZE = 4096  # checksums remembered so, at most (then forgotten all at once)


class Abandoned(Exception):
    """The stream a fill copies ended early or failed: the tier stores nothing."""


class LocalFill:
    """A copy of a stream on its way into the tier.

    The tier's writer reads the chunks as they pass (at most
    :data:`FILL_QUEUE` behind) and publishes the file only once the stream
    ended and :meth:`finish` says it was accepted; after :meth:`abandon`,
    or when the writer fails, nothing is left and the stream goes on alone.
    """

    def __init__(self, tier: "TieredStore", checksum: bytes, encoding: str | None):
        self._queue: asyncio.Queue = asyncio.Queue(FILL_QUEUE)
        self._abandoned = False
        self.encoding = encoding
        self.task = tier.background(checksum, tier.store_proven(checksum, self._chunks(), encoding))

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if self._abandoned:
                raise Abandoned()
            if chunk is None:
                return
            yield chunk

    async def hand_on(self, item: bytes | None) -> None:
        """Queue ``item``, waiting while the writer is behind, but not for long:
        a stream must not stall (and time out) for the tier's sake.  The fill
        is abandoned then; once abandoned or failed, nothing is queued."""
        if self.task.done() or self._abandoned:
            return
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self.task}, timeout=HAND_ON_WAIT, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            if not self.task.done():
                log.info("local tier: its writer fell %g s behind a stream; not stored", HAND_ON_WAIT)
                self.abandon()

    async def tee(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``body``, each chunk handed on to the tier first."""
        async for chunk in body:
            await self.hand_on(chunk)
            yield chunk

    async def finish(self) -> None:
        """The stream was whole and accepted: let the writer publish it."""
        await self.hand_on(None)
        await asyncio.wait({self.task})

    def abandon(self) -> None:
        self._abandoned = True
        if not self._queue.full():
            self._queue.put_nowait(None)  # wakes the writer; it raises Abandoned


class PutCopy:
    """The tier's copy of a PUT's body: kept in memory while small (plain
    bodies up to :data:`SMALL_FILL`), else handed to a :class:`LocalFill`
    as it passes (unless the tier holds the buffer already)."""

    def __init__(self, tier: "TieredStore", checksum: bytes, encoding: str | None):
        self.tier, self.checksum, self.encoding = tier, checksum, encoding
        self.parts: list[bytes] | None = []  # None: the tier holds the buffer already
        self.size = 0
        self.fill: LocalFill | None = None

    async def tee(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            if self.fill is None and self.parts is not None and (
                    self.encoding or self.size + len(chunk) > SMALL_FILL):
                await self._start_fill()
            if self.fill is not None:
                await self.fill.hand_on(chunk)
            elif self.parts is not None:
                self.parts.append(chunk)
                self.size += len(chunk)
            yield chunk

    async def _start_fill(self) -> None:
        """Past the size kept in memory: a fill, unless the tier holds the buffer (looked
        up only now: for a small body, a second copy costs less than the look)."""
        if not self.tier.room_for_large() or self.tier.held_locally(self.checksum):
            self.parts = None
            return
        self.fill = LocalFill(self.tier, self.checksum, self.encoding)
        for part in self.parts:
            await self.fill.hand_on(part)
        self.parts = []

    def finish(self) -> None:
        """The back store holds the buffer: the tier's copy is published in the background."""
        if self.fill is not None:
            self.tier.background(self.checksum, self.fill.finish())
        elif self.parts is not None:
            self.tier.fill_small(self.checksum, b"".join(self.parts))

    def abandon(self) -> None:
        if self.fill is not None:
            self.fill.abandon()


class TieredStore:
    """A local :class:`DirectoryStore` (the tier, always writable; with the
    extra directories) in front of ``back``.

    ``fill``: store what passes in the tier (False: the local directories
    are only read).  ``stored`` is told the bytes of each file the tier
    gains (the main process's evictor counts them).  ``recency``: where
    each answer from the tier is stamped, for the evictor.
    """

    def __init__(self, local: DirectoryStore, back: Storage, metrics: Metrics | None = None, fill: bool = True,
                 stored: Callable[[int], None] | None = None, recency: Recency | None = None):
        self.local = local
        self.back = back
        self.writable = back.writable
        self.metrics = metrics or Metrics.unobserved()
        self.fill = fill
        self.stored = stored or (lambda size: None)
        self.recency = recency
        self.small_files = SmallFiles(local.writer.by_rename)
        self.direct_buffers = BufferPool()  # large fills go past the page cache (directwrite)
        self._has_extra_dirs = len(local.search_path.layouts) > 1
        self._filling: set[bytes] = set()
        self._large_fills = 0
        self._small_bytes = 0
        self._tasks: set[asyncio.Future] = set()
        self._warned = float("-inf")
        # Checksums the tier lacked a moment ago.  A miss is asked of the tier three times
        # (the hot path's peek, the route's, then open), each a few system calls while a
        # fill storm keeps the tier's directories changing; once is enough.  Never wrong:
        # a buffer the tier gains meanwhile is read from the back store a little longer.
        self._missed: dict[bytes, float] = {}

    # ------------------------------------------------------------ reading
    def peek(self, checksum: bytes) -> bytes | Fast:
        """The tier's content when it holds it in memory; where the tier lacks the
        buffer, FETCH if the back store's peek says so (:meth:`fetch` keeps what it
        gets), else REGULAR (never ABSENT: the back store may hold it)."""
        if self._missed_recently(checksum) or (not self.local.cache.may_hold(checksum) and self._lacks(checksum)):
            return self._from_back(checksum)
        try:
            found = self.local.peek(checksum)
        except LOCAL_FAILURES as exc:
            self._local_failed(exc)
            return Fast.REGULAR
        if found is Fast.ABSENT:
            self._remember_miss(checksum)
            return self._from_back(checksum)
        if isinstance(found, bytes):
            self.metrics.local_tier(True)
            self._touch(checksum)
            return found
        return Fast.REGULAR

    def _from_back(self, checksum: bytes) -> Fast:
        return Fast.FETCH if self.back.peek(checksum) is Fast.FETCH else Fast.REGULAR

    async def fetch(self, checksum: bytes) -> bytes | Fast:
        """The back store's fetch, kept in the tier as a miss that :meth:`open` answers is."""
        content = await self.back.fetch(checksum)
        if not isinstance(content, Fast):
            self.metrics.local_tier(False)
            if self._may_fill(checksum, len(content)):
                self.fill_small(checksum, content)
        return content

    def _lacks(self, checksum: bytes) -> bool:
        """Whether the tier lacks the buffer, cheaply: its index does not hold it and
        none of its files is where a fill puts it (a stat each: where the exact
        lookup of a directory that keeps gaining files, as a tier's do under a
        storm of misses, also drains the watch, stats the directory, its lock
        files and the main directory).  A fill under way counts as lacking: the
        back store answers meanwhile.  Extra directories, where other programs
        add files, get the exact lookup."""
        if self._has_extra_dirs or self.local.lookups.index.current().find_one(checksum) >= 0:
            return False
        try:
            if self.local.lookups.find_on_disk(checksum.hex()) is None:
                self._remember_miss(checksum)
                return True
        except OSError:
            pass  # the exact lookup says what is wrong
        return False

    async def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        present = await self._local(self.local.has(checksums, promised=False))
        if present is None:
            return await self.back.has(checksums, promised)
        missing = [i for i, here in enumerate(present) if not here]
        if missing:
            answers = await self.back.has(_select(checksums, missing), promised)
            for i, answer in zip(missing, answers, strict=True):
                present[i] = answer
        return present

    async def lengths(self, checksums: bytes) -> list[int]:
        lengths = await self._local(self.local.lengths(checksums))
        if lengths is None:
            return await self.back.lengths(checksums)
        missing = [i for i, length in enumerate(lengths) if not length]
        if missing:
            answers = await self.back.lengths(_select(checksums, missing))
            for i, answer in zip(missing, answers, strict=True):
                lengths[i] = answer
        return lengths

    async def open(self, checksum: bytes, accepted: frozenset[str] = frozenset(),
                   want: Want = Want.WHOLE) -> Readable | None:
        """From the tier when it holds the buffer; else from the back store,
        filling the tier on the way."""
        readable = await self._open_local(checksum, accepted)
        if readable is not None:
            return readable
        readable = await self.back.open(checksum, accepted, want)
        if readable is None:
            return None
        stored = readable.as_stored or readable
        if stored.decoded:
            return self._stored_form_after(checksum, readable)
        if not self._may_fill(checksum, _small_size(stored)):
            return readable
        filled = self._filled_from(checksum, stored)
        return filled if stored is readable else readable  # (in memory: filled at once)

    def _may_fill(self, checksum: bytes, small: int | None = None) -> bool:
        """One fill of a buffer at a time, and a bounded number of them: under a
        storm of misses the tier's writes must not hold the memory of every
        buffer read, nor take the cores the answers need.  ``small``: the size
        of a small plain buffer in memory (:meth:`fill_small`): those are
        bounded by their bytes (one thread writes them, in batches), the others
        by their number."""
        if not self.fill or checksum in self._filling:
            return False
        return self._small_bytes + small <= SMALL_PENDING if small is not None else self.room_for_large()

    def room_for_large(self) -> bool:
        return self._large_fills < MAX_FILLS

    async def _open_local(self, checksum: bytes, accepted: frozenset[str]) -> Readable | None:
        """The tier's copy, if it has one.  A buffer the tier does not hold is
        no reason to wait for its locks: it may be being filled, slowly."""
        if self._missed_recently(checksum) or self._lacks(checksum):
            self.metrics.local_tier(False)
            return None
        buffer = None
        try:
            buffer = self.local.lookups.find(checksum)
            readable = None if buffer is None else await self.local.open(checksum, accepted)
            if readable is not None and readable.file is not None and not hold_for_sending(readable.file.fileno()):
                readable.close()  # evicted meanwhile
                readable = None
        except CorruptBuffer as exc:
            log.error("local tier: %s; removed, reading from the back store", exc)
            if buffer is not None and buffer.path.startswith(self.local.search_path.main.root + os.sep):
                unlink_quietly(buffer.path)
            readable = None
        except StillWriting:
            readable = None
        except LOCAL_FAILURES as exc:
            self._local_failed(exc)
            readable = None
        self.metrics.local_tier(readable is not None)
        if readable is not None:
            self._touch(checksum)
        return readable

    def _filled_from(self, checksum: bytes, readable: Readable) -> Readable:
        """``readable``, its content also stored in the tier: at once when it
        is in memory or an open file; else as its chunks are sent."""
        if _small_size(readable) is not None:
            self.fill_small(checksum, readable.content)
            return readable
        if readable.content is not None:
            self.background(checksum, self.store_proven(checksum, _aiter((readable.content,)), readable.encoding))
            return readable
        if readable.file is not None:
            self.background(checksum, self._store_file(checksum, os.dup(readable.file.fileno()), readable))
            return readable
        return replace(readable, chunks=self._teed_chunks(checksum, readable))

    def _stored_form_after(self, checksum: bytes, readable: Readable) -> Readable:
        """A compressed buffer's content, decoded as it streams (one too large to be
        decoded from memory).  The tier holds a buffer as the back store holds it, never
        its decoded content: once the stream ended whole, the stored form is read again,
        in the background, into the tier.  (A decoded part's spool file fills nothing.)"""
        source = readable.chunks
        if source is None or not self.fill:
            return readable

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in source():
                yield chunk
            if self._may_fill(checksum) and not self.held_locally(checksum):  # (filled by another read meanwhile)
                self.background(checksum, self._fill_stored_form(checksum))

        return replace(readable, chunks=chunks)

    async def _fill_stored_form(self, checksum: bytes) -> None:
        try:
            readable = await self.back.open(checksum, EVERY_ENCODING)
        except BACK_FAILURES as exc:
            log.warning("local tier: %s not filled: %s", checksum.hex(), exc)
            return
        if readable is None:
            return
        with readable:
            if readable.decoded:
                return
            if readable.file is not None:
                await self._store_file(checksum, os.dup(readable.file.fileno()), readable)
                return
            body = _aiter((readable.content,)) if readable.content is not None else _from_back(readable.chunks())
            await self.store_proven(checksum, body, readable.encoding)

    def _teed_chunks(self, checksum: bytes, readable: Readable) -> Callable[[], AsyncIterator[bytes]]:
        source = readable.chunks
        assert source is not None

        async def chunks() -> AsyncIterator[bytes]:
            if not self._may_fill(checksum):
                async for chunk in source():
                    yield chunk
                return
            fill = LocalFill(self, checksum, readable.encoding)
            try:
                async for chunk in fill.tee(source()):
                    yield chunk
            except BaseException:  # a wrong object, a cut connection, a Range's end: nothing stored
                fill.abandon()
                raise
            self.background(checksum, fill.finish())

        return chunks

    # ------------------------------------------------------------ writing
    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  content_encoding: str | None = None) -> PutOutcome:
        """Into the back store first; the tier's copy is published only once
        the back store answered STORED or PRESENT."""
        if not self.back.writable:
            raise ReadOnly.put()
        if not self.fill or checksum in self._filling:
            return await self.back.put(checksum, body, content_encoding)
        copy = PutCopy(self, checksum, content_encoding)
        try:
            outcome = await self.back.put(checksum, copy.tee(body), content_encoding)
        except BaseException:
            copy.abandon()
            raise
        copy.finish()
        return outcome

    def held_locally(self, checksum: bytes) -> bool:
        try:
            return self.local.lookups.find(checksum) is not None
        except OSError:
            return False

    async def store_local(self, checksum: bytes, body: AsyncIterator[bytes], encoding: str | None) -> None:
        """Write ``body`` into the tier with its writer (hashed, under its lock);
        whatever goes wrong is the tier's problem, never the request's."""
        counted = _Counted(body)
        try:
            outcome = await self.local.writer.put(checksum, counted, for_content_encoding(encoding))
        except (Abandoned, ChecksumMismatch):  # an abandoned copy (or one the back store let through)
            return
        except LOCAL_FAILURES as exc:
            self._write_failed(exc)
            return
        except Exception as exc:  # a stalled reader, a mismatch the back store let through
            log.info("local tier: %s not stored: %s", checksum.hex(), exc or type(exc).__name__)
            return
        if outcome is PutOutcome.STORED:
            self.stored(counted.size + (self._sidecar_size(checksum) if encoding is not None else 0))

    def _sidecar_size(self, checksum: bytes) -> int:
        """The length sidecar the tier's writer put beside a compressed buffer (the
        evictor's scan counts it too)."""
        try:
            return os.stat(sidecar_path(self.local.search_path.publish_path(checksum.hex()))).st_size
        except OSError:
            return 0

    def _temp_for(self, checksum_hex: str) -> tuple[str, str]:
        """A new temporary file's name in the tier, beside the plain buffer's place, and that place."""
        final = self.local.search_path.publish_path(checksum_hex)
        directory = os.path.dirname(final)
        make_group_dir(directory)
        return temp_path(directory, checksum_hex), final

    async def store_proven(self, checksum: bytes, body: AsyncIterator[bytes], encoding: str | None) -> None:
        """Store a body the back store proved right as it passed (it hashed it, and
        the body ended without error): a plain one is written and published without
        hashing it again, as :meth:`fill_small` does.  A compressed one goes
        through the tier's writer, which also measures its decoded length."""
        if encoding is not None:
            return await self.store_local(checksum, body, encoding)
        try:
            size = await self._write_proven(checksum.hex(), body)
        except Abandoned:
            return
        except LOCAL_FAILURES as exc:
            self._write_failed(exc)
            return
        if size is not None:
            self.stored(size)

    async def _write_proven(self, checksum_hex: str, body: AsyncIterator[bytes]) -> int | None:
        """The body's bytes, written in a thread to a temporary file (past the page
        cache where the file system allows: :mod:`.directwrite`) and put in place;
        its size, or None if the tier had the buffer already."""
        loop = asyncio.get_running_loop()
        tmp, final = await loop.run_in_executor(None, self._temp_for, checksum_hex)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, BUFFER_MODE)
            file = None
            try:
                file = DirectFile(fd, self.direct_buffers)
                async for chunks in gathered(body, BATCH):
                    await done_in_thread(file.write_all, chunks)
                await done_in_thread(file.finish)
                size = file.offset
            finally:
                if file is not None:
                    file.release()
                os.close(fd)
            os.chmod(tmp, BUFFER_MODE)
            published = await loop.run_in_executor(None, self.local.writer.publish, tmp, final)
            return size if published else None
        finally:
            unlink_quietly(tmp)

    async def _store_file(self, checksum: bytes, fd: int, readable: Readable) -> None:
        """Store an open file's content (its own descriptor, closed at the end)."""
        try:
            await self.store_proven(checksum, _file_chunks(fd, readable.length), readable.encoding)
        finally:
            os.close(fd)

    def fill_small(self, checksum: bytes, content: bytes) -> None:
        """Store a small plain buffer that the back store holds and verified (it
        answered its PUT, or read and hashed it), in the background, if the small
        fills under way leave room: as :mod:`.smallfiles` writes, without the
        writer's lock and fsync, which cost most of a miss.  No reader of the tier
        waits for a lock (a buffer it lacks is read from the back store), and a
        file that a crash left torn fails its verification when read, is removed
        and read again from the back store.  (No task: a future of the writing
        thread's batch, and a callback.)"""
        size = len(content)
        if self._small_bytes + size > SMALL_PENDING:
            return
        written = self.small_files.submit(self.local.search_path.publish_path(checksum.hex()), content)
        self._track(checksum, written, small=size)
        written.add_done_callback(lambda written: self._small_written(written, size))

    def _small_written(self, written: asyncio.Future, size: int) -> None:
        if written.cancelled():
            return
        exc = written.exception()
        if exc is None:
            if written.result():
                self.stored(size)
        elif isinstance(exc, LOCAL_FAILURES):
            self._write_failed(exc)

    def background(self, checksum: bytes, work: Awaitable[None]) -> asyncio.Future:
        """Fill the tier without holding up the response; one fill of a buffer at a time."""
        task = asyncio.ensure_future(work)
        self._track(checksum, task)
        return task

    def _track(self, checksum: bytes, fill: asyncio.Future, small: int | None = None) -> None:
        """Count a fill under way until it is done.  ``small``: the bytes of a small
        fill (bounded by their sum), else a larger one (bounded by their number: each
        holds a stream, a file or a writer's lock)."""
        self._filling.add(checksum)
        if small is None:
            self._large_fills += 1
        else:
            self._small_bytes += small
        self._tasks.add(fill)

        def done(fill: asyncio.Future) -> None:
            self._tasks.discard(fill)
            if small is None:
                self._large_fills -= 1
            else:
                self._small_bytes -= small
            self._filling.discard(checksum)
            self._missed.pop(checksum, None)  # filled (or not): the tier is worth a look again
            exc = None if fill.cancelled() else fill.exception()
            if exc is not None and not (small is not None and isinstance(exc, LOCAL_FAILURES)):  # else counted
                log.error("local tier: filling %s failed", checksum.hex(), exc_info=exc)

        fill.add_done_callback(done)

    async def settled(self) -> None:
        """Wait for the fills under way (tests; a worker's stop)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def promise(self, checksum: bytes) -> int:
        return await self.back.promise(checksum)

    # ------------------------------------------------------------ the rest
    async def health(self) -> str | None:
        """The back store's: a failing tier is not a failing server (it is logged)."""
        return await self.back.health()

    def close(self) -> None:
        self.local.close()
        self.back.close()
        self.direct_buffers.close()

    async def _local(self, answer: Awaitable[list]) -> list | None:
        """The tier's answer, or None when the tier fails."""
        try:
            return await answer
        except LOCAL_FAILURES as exc:
            self._local_failed(exc)
            return None

    def _write_failed(self, exc: BaseException) -> None:
        """A write into the tier failed: counted here (the tier's writer does
        not count), then handled as any failure of the tier."""
        if isinstance(exc, OSError):
            self.metrics.storage_error(exc)
        self._local_failed(exc)

    def _local_failed(self, exc: BaseException) -> None:
        """Counted where it happened (the storage error metric); logged at most every LOG_EVERY s."""
        now = time.monotonic()
        if now - self._warned >= LOG_EVERY:
            self._warned = now
            log.warning("local tier failing, answering from the back store: %s", exc or type(exc).__name__)

    def _missed_recently(self, checksum: bytes) -> bool:
        until = self._missed.get(checksum)
        return until is not None and time.monotonic() < until

    def _remember_miss(self, checksum: bytes) -> None:
        if len(self._missed) >= MISS_MEMO_SIZE:
            self._missed.clear()
        self._missed[checksum] = time.monotonic() + MISS_MEMO

    def _touch(self, checksum: bytes) -> None:
        if self.recency is not None:
            self.recency.used(checksum)


class _Counted:
    """An async iterator of chunks that counts their bytes."""

    def __init__(self, body: AsyncIterator[bytes]):
        self.body = body
        self.size = 0

    def __aiter__(self) -> "_Counted":
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.body.__anext__()
        self.size += len(chunk)
        return chunk


def _small_size(readable: Readable) -> int | None:
    """The size of a plain buffer held in memory, small enough for :meth:`TieredStore.fill_small`."""
    content = readable.content
    if content is None or readable.encoding is not None or len(content) > SMALL_FILL:
        return None
    return len(content)


def _select(checksums: bytes, positions: list[int]) -> bytes:
    return b"".join(checksums[32 * i: 32 * i + 32] for i in positions)


async def _aiter(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _from_back(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A fill's own stream from the back store: its failure is no failure of the tier."""
    try:
        async for chunk in chunks:
            yield chunk
    except BACK_FAILURES as exc:
        log.warning("local tier: not filled: %s", exc)
        raise Abandoned() from None


async def _file_chunks(fd: int, length: int) -> AsyncIterator[bytes]:
    """The ``length`` bytes of an open file, read in a thread with ``pread``:
    the file's offset is left to its sender."""
    loop = asyncio.get_running_loop()
    offset = 0
    while offset < length:
        chunk = await loop.run_in_executor(None, os.pread, fd, min(FILE_CHUNK, length - offset), offset)
        if not chunk:
            raise Abandoned()
        offset += len(chunk)
        yield chunk
