"""Buffers in an S3 bucket as a :class:`~hashserver.storage.Storage` (through obstore; the
small GETs and PUTs each request makes through :mod:`.s3lean` where it applies).

The bucket prefix holds what a buffer directory holds (:mod:`.s3keys`).  What a
directory gets from the file system, this store gets from S3's own rules:

- an object appears whole or not at all: a small body is buffered, hashed and
  stored with one conditional PUT (``If-None-Match: *``: "already exists" means
  another writer stored it first); a larger one goes up in a multipart upload
  fed through a bounded queue and completed only once the body hashed right,
  else aborted (also when the request is cut or the task cancelled);
- nothing read is sent unverified: an object up to ``whole_get`` bytes is
  fetched and hashed before :meth:`ObjectStore.open` returns, a larger one is
  streamed with its last chunk held back until the hash is known, so a wrong
  object ends the response early instead of completing it; for a part of a
  larger one (``Range``), the whole object is verified first, through a
  temporary file; a HEAD of a larger one takes its size from a HEAD, no GET;
- any failure of the object store is :class:`StorageUnavailable` (503), never
  "absent"; calls have bounded timeouts and idempotent ones are retried.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import posixpath
import re
import tempfile
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import Any, AsyncIterator, Awaitable, BinaryIO, Callable, Iterator

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from . import s3lean, s3uploads, writer
from .bufferfile import DecodingHash
from .checksum import Hasher
from .compression import ENCODINGS, Decoder, Encoding, InvalidPayload, for_content_encoding
from .config import S3_PART_SIZE, Config, ConfigError
from .layout import FLAT_OVER_PREFIX, is_buffer_name
from .locks import FUTURE_SLACK, POLL_MAX, FileAges
from .metrics import Metrics
from .promises import PROMISE_TTL
from .s3keys import BucketKeys
from .storage import (
    ChecksumMismatch,
    CorruptBuffer,
    Fast,
    PutOutcome,
    Readable,
    ReadOnly,
    StillWriting,
    StorageUnavailable,
    Want,
)
from .writer import BodyPace, SerialStage, hash_parts

log = logging.getLogger("hashserver.objectstore")

SMALL_PUT = 8 << 20  # bodies up to this size: buffered, then one conditional PUT
PART_SIZE = S3_PART_SIZE
UPLOAD_CONCURRENCY = 4  # parts in flight per upload: memory is about this times PART_SIZE
QUEUE_DEPTH = 4  # body batches (about 1 MiB each) waiting for the uploader
PIECES_UNJOINED = 8  # a batch of more pieces than this goes to obstore joined
WHOLE_GET = 64 << 20  # objects up to this size are fetched whole and verified before open() returns
SMALL_GET = 1 << 20  # a read asks for this many bytes first: a shorter object comes whole, in one call
FETCH_MAX = SMALL_GET  # the longest object fetch() hands to the hot path (as the directory's small buffers)
UNFETCHABLE_KEPT = 4096  # buffers remembered as not fetch()'s to answer (absent, longer, compressed), at most
STREAM_CHUNK = 1 << 20
HASH_INLINE = 256 << 10  # hash pieces up to this on the event loop, larger ones in a thread
HASHES_AHEAD = 2  # a body's pieces handed to its hashing thread and not yet hashed, at most
HASH_STEP = 1 << 20  # an object read by the lean client goes to its hashing thread in pieces of this size
LEAN_PUT = 1 << 20  # bodies up to this size go to the lean client (s3lean), which holds them whole
HEAD_CONCURRENCY = 64  # object-store calls in flight for the batches (/has, /buffer-length) of one worker
POOL_IDLE_TIMEOUT = "20s"  # obstore's idle connections close after this (its default: 90 s)
POOL_MAX_IDLE = 2 * HEAD_CONCURRENCY  # idle connections obstore keeps, at most (its default: no bound)
HEALTH_EVERY = 1.0  # a check's result stands this long; meanwhile callers share it
HEALTH_WAIT = 5.0  # /healthcheck's longest wait for a check (it goes on: the next answer has it)
ABORT_WAIT = 10.0  # the longest a failed upload waits for its abort
# A create-only PUT refused as a conflict while no object is there (AWS's 409: another
# conditional write of the key under way, which may yet fail): tried again for this long.
CONFLICT_BUDGET = 10.0
CONFLICT_BACKOFF = (0.05, 1.0)  # first wait, longest wait (doubling)
BULK_DELETE = 1000  # keys in one DeleteObjects request (S3's maximum)
SWEEP_CONCURRENCY = 16  # promise objects read at once by a sweep (remove_lapsed_promises)
PROMISE_GRACE = PROMISE_TTL + FUTURE_SLACK  # past a promise's expiry, before a sweep takes it (see there)
# A resolved promise is deleted this long after its buffer's PUT was answered, not at once:
# a host that found the object absent, then reads the promise, must still find one of the
# two.  A lookup that took longer than this between the two looks again (_look_again).
RESOLVED_KEPT = 30.0
CONNECT_TIMEOUT = "3s"
READ_TIMEOUT = "10s"  # no byte for this long: the call fails (it bounds every call but a long stream)
REQUEST_TIMEOUT = "3600s"  # a whole call, a streamed large object included
RETRIES = {"max_retries": 3, "retry_timeout": timedelta(seconds=10),
           "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=2), "base": 2}}
NOT_FOUND = (NotFoundError, FileNotFoundError)
CONFLICT = (AlreadyExistsError, PreconditionError, FileExistsError)
REFUSED = (PermissionDeniedError, UnauthenticatedError)
METADATA_PATHS = ("/latest/api/token", "/latest/meta-data/")  # the instance's metadata service: credentials, last
NO_BUCKET = "<Code>NoSuchBucket</Code>"  # S3's answer to a list; a HEAD of a key only says 404
RANGE_PAST_END = ("416 Range Not Satisfiable", "<Code>InvalidRange</Code>")  # S3: a range from the object's end
NOT_PARTIAL = "non-partial response"  # object_store's error when a store answered a range with everything
_DONE, _ABANDON, _WHOLE = object(), object(), object()
LIST_MIN = 16  # missing buffers in a batch from which listing their directories is tried
LIST_PAGE = 1000  # keys in a listing page (S3's maximum)
LIST_BACKOFF = 60.0  # seconds of HEADs alone after a batch whose listings did not pay
# Keys a listing may return per checksum it answers and still pay: on SeaweedFS a page of
# 1,000 keys cost about as much as 16 HEADs, and by HEADs a batch half absent costs about two
# per checksum (an absent buffer's compressed forms are two more).  A bucket of 5,000 objects
# listed about 30 keys per checksum of a /has x1000 (listing won); one of 300,000 about 290,
# where listing answered 500 checksums/s and HEADs about four times as many.
LIST_WORTH = 128
RANGE_END = "~"  # sorts after every suffix of a checksum's keys (".zst", ".gz", ".BUFFERLENGTH")
Location = tuple[Encoding | None, int]  # a representation of a buffer in the bucket, and its size
# key, encoding, size; GetResult, bytes or _HashedAsRead (None: no GET yet)
Found = tuple[str, Encoding | None, int, Any]


class _Abandoned(Exception):
    """Raised into obstore's multipart upload so that it aborts instead of completing."""


_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.DOTALL)


def _first_line(exc: BaseException) -> str:
    """The error in one line: its first, and the S3 error's code and message where its
    XML body follows (they say what went wrong, e.g. which of the credentials)."""
    text = str(exc).strip()
    lines = text.splitlines()
    if not lines:
        return type(exc).__name__
    found = _S3_ERROR.search(text)
    if found is None or found.group(1) in lines[0]:
        return lines[0]
    head = lines[0].split("<?xml")[0].rstrip(" :")
    return f"{head}: {found.group(1)}" + (f" ({found.group(2)})" if found.group(2) else "")


def build_store(bucket: str, endpoint: str | None):
    """An obstore S3Store: credentials and region from the standard environment,
    bounded timeouts, retries with backoff (obstore retries what is safe to retry).

    Bodies are signed (their SHA-256 in the signature): a store that checks it refuses
    a body damaged on its way, where one kept would stay damaged (a later PUT of the
    buffer leaves an object of the right length as it is).  ``AWS_UNSIGNED_PAYLOAD=true`` in the environment,
    which obstore reads, leaves that out, for the CPU it costs (README)."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    client = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT, "timeout": REQUEST_TIMEOUT,
              "pool_idle_timeout": POOL_IDLE_TIMEOUT, "pool_max_idle_per_host": str(POOL_MAX_IDLE)}
    if endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True
    extra = {"endpoint": endpoint} if endpoint else {}
    return S3Store(bucket, client_options=client, retry_config=RETRIES, **extra)


class ObjectStore:
    """Buffers under one ``s3://bucket/prefix``, exactly, shared by every host on it."""

    def __init__(self, url: str, *, endpoint: str | None, layout: str, hasher: Hasher, writable: bool,
                 max_body_size: int, wait_timeout: float, lock_timeout: float, pace: BodyPace | None = None,
                 metrics: Metrics | None = None, store=None, whole_get: int | None = None,
                 small_put: int | None = None, part_size: int | None = None, spool_dir: str | None = None,
                 setting_names: tuple[str, str] = ("directory", "s3_endpoint"), lean: bool = True,
                 resolved_kept: float = RESOLVED_KEPT):
        self.keys = BucketKeys.parse(url, layout)
        self.url = self.keys.url
        self.endpoint = endpoint
        self.writable = writable
        self.hasher = hasher
        self.max_body_size = max_body_size
        self.wait_timeout = wait_timeout
        self.lock_timeout = lock_timeout
        self.pace = pace or BodyPace()
        self.metrics = metrics or Metrics.unobserved()
        try:
            self.store = store if store is not None else build_store(self.keys.bucket, endpoint)
        except BaseError as exc:  # a setting obstore cannot take: an AWS_* variable of the environment
            raise ConfigError(f"{setting_names[1]}={endpoint or 'default'!r}: obstore cannot make an S3 client of it "
                              f"and the AWS_* environment variables: {_first_line(exc)}") from None
        self._batch_calls: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        # small GETs and PUTs on the event loop's thread where it can (s3lean); lean=False: obstore alone
        self.lean = s3lean.for_endpoint(self.keys.bucket, endpoint) if lean and store is None else None
        # None: the module's value, read now (a test lowers it for a whole server)
        self.whole_get = WHOLE_GET if whole_get is None else whole_get
        self.small_put = SMALL_PUT if small_put is None else small_put
        self.part_size = PART_SIZE if part_size is None else part_size
        self.spool_dir = spool_dir  # where a large object is verified whole before a part of it is sent
        self.setting_names = setting_names
        self._health: tuple[float, str | None] = (float("-inf"), None)
        self._health_task: asyncio.Task | None = None
        self.resolved_kept = resolved_kept
        self._resolved: deque[tuple[float, str]] = deque()  # (when, promise key) to delete, in order
        self._resolver: asyncio.Task | None = None
        self._promise_ages = FileAges()  # a promise dated ahead (another host's clock) lasts PROMISE_TTL from now
        self._ranges = True  # the store answers a GET of a range with the range
        # Buffers whose fetch() found no small plain object: their GETs go to the regular route
        # at once (which looks further), not through a fetch that would fail again.
        self._unfetchable: OrderedDict[bytes, None] = OrderedDict()
        self._heads_until = float("-inf")  # batches use HEADs alone until then (listings did not pay)

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> "ObjectStore":
        endpoint = getattr(config, "s3_endpoint", None)
        names = (config.name("directory"), _setting_name(config, "s3_endpoint"))
        return cls(config.directory, endpoint=endpoint, layout=config.layout,
                   hasher=Hasher(config.hash_algorithm), writable=config.writable,
                   max_body_size=config.max_body_size, wait_timeout=config.wait_timeout,
                   lock_timeout=config.lock_timeout,
                   pace=BodyPace(config.body_idle_timeout, config.min_body_rate), metrics=metrics,
                   spool_dir=config.cache_dir if config.cache_size > 0 else None, setting_names=names,
                   lean=getattr(config, "s3_lean_client", True))

    # ------------------------------------------------------------- calls
    async def _call(self, operation: str, key: str, awaitable: Awaitable) -> Any:
        """One object-store call, timed and counted by its outcome."""
        started = time.monotonic()
        outcome = "error"
        try:
            with self._failures(operation, key):
                result = await awaitable
            outcome = "ok"
            return result
        except StopAsyncIteration:  # a listing with nothing (more) in it: an answer
            outcome = "ok"
            raise
        except NOT_FOUND:
            outcome = "absent"
            raise
        except CONFLICT:
            outcome = "conflict"
            raise
        except StorageUnavailable:
            raise
        except Exception:
            outcome = "aborted"  # the body or its hash ended the call
            raise
        finally:
            self.metrics.object_store_call(operation, outcome, time.monotonic() - started)

    @contextmanager
    def _failures(self, operation: str, key: str) -> Iterator[None]:
        """A failure of the object store, or no memory for its answer, is StorageUnavailable; not-found and
        already-exists are answers, which the caller decides about."""
        try:
            yield
        except (*NOT_FOUND, *CONFLICT):
            raise
        except MemoryError as exc:  # a large object's buffer, while many are read at once
            raise StorageUnavailable(f"Storage unavailable: no memory on this host for the object store "
                                     f"{operation} of {self.keys.where(key)} now") from exc
        except (BaseError, OSError) as exc:
            if NO_BUCKET in str(exc):
                raise StorageUnavailable(f"Storage unavailable: the bucket of {self.url} does not exist") from exc
            raise StorageUnavailable(f"Storage unavailable: object store {operation} of "
                                     f"{self.keys.where(key)} failed: {_first_line(exc)}") from exc

    async def _head(self, key: str) -> int | None:
        """The object's size, or None if there is none."""
        try:
            meta = await self._call("head", key, obstore.head_async(self.store, key))
        except NOT_FOUND:
            return None
        return meta["size"]

    async def _get(self, key: str, options: dict | None = None):
        """The object's GetResult (body not yet read), or None if there is none."""
        try:
            return await self._call("get", key, obstore.get_async(self.store, key, options=options))
        except NOT_FOUND:
            return None

    async def _read(self, key: str, result) -> bytes:
        return bytes(await self._call("read", key, result.bytes_async()))

    async def _get_small(self, key: str, receiver: _HashedAsRead | None = None):
        """The object's bytes if it is no longer than SMALL_GET (the lean client's: than
        ``whole_get``; in ``receiver`` if it took them), else a GetResult of the whole
        (body not yet read); None if there is none.  A GET of a range hands its bytes over
        in one call of the client, where a GET hands over a stream to read in a second
        call: a 1 KiB object cost obstore 0.11 ms less CPU and came 20% faster (on
        SeaweedFS).  Through obstore a longer object costs a GET of the rest; the lean
        client cuts its one GET off at the answer's headers if the object is longer than
        ``whole_get`` (its GetResult is obstore's then)."""
        async def first_bytes() -> bytes | bytearray | None:
            if self.lean is not None:
                return await self._lean_whole(key, self.whole_get, receiver)
            try:
                return bytes(await obstore.get_range_async(self.store, key, start=0, end=SMALL_GET))
            except BaseError as exc:
                if _starts_at_the_end(exc):
                    return b""  # an empty object
                if self._answered_whole(exc):
                    return None
                raise

        if not self._ranges:
            return await self._get(key)
        try:
            data = await self._call("get", key, first_bytes())
        except NOT_FOUND:
            return None
        if data is None:
            return await self._get(key)
        if self.lean is not None or len(data) < SMALL_GET:
            return data
        rest = await self._get_rest(key)
        if rest is _WHOLE:
            return await self._get_present(key)
        return data if rest is None else _Prefixed(data, rest)

    async def _lean_whole(self, key: str, limit: int, receiver: _HashedAsRead | None) -> bytes | bytearray | None:
        """The object's bytes by the lean client's GET, None if it is longer than ``limit``
        (cut off at the answer's headers).  FileNotFoundError if there is none."""
        status, data = await self.lean.get_range(key, 0, limit, receiver, cut_longer=True)
        if data is None and status == 200:  # the whole object instead of the range, too long to take
            self._ranges = False
        return data

    async def _get_rest(self, key: str):
        """A GET of the object from SMALL_GET on; None if it ends there, _WHOLE if the
        store answered this range with the whole object."""
        async def rest():
            try:
                return await obstore.get_async(self.store, key, options={"range": {"offset": SMALL_GET}})
            except BaseError as exc:
                if _starts_at_the_end(exc):
                    return None
                if self._answered_whole(exc):
                    return _WHOLE
                raise

        try:
            return await self._call("get", key, rest())
        except NOT_FOUND:
            raise self._vanished(key) from None

    def _answered_whole(self, exc: BaseException) -> bool:
        """Whether the store answered a range with the whole object: then whole GETs from now on."""
        if NOT_PARTIAL not in str(exc):
            return False
        self._ranges = False
        return True

    async def _small_object(self, key: str) -> bytes | None:
        result = await self._get_small(key)
        return result if result is None or isinstance(result, bytes) else await self._read(key, result)

    # ------------------------------------------------------------- lookups
    async def _find(self, checksum_hex: str) -> Location | None:
        """Which representation of the buffer the bucket holds (plain first), and its size."""
        size = await self._head(self.keys.buffer(checksum_hex))
        return (None, size) if size is not None else await self._find_compressed(checksum_hex)

    async def _find_compressed(self, checksum_hex: str) -> Location | None:
        sizes = await asyncio.gather(*(self._head(self.keys.buffer(checksum_hex, e)) for e in ENCODINGS))
        for encoding, size in zip(ENCODINGS, sizes, strict=True):
            if size is not None:
                return encoding, size
        return None

    async def _promised(self, checksum_hex: str) -> bool:
        """Whether a promise of the buffer is in force.  Its object holds its expiry by the
        promising host's clock; one made in the future by ours (that clock ahead) lasts
        PROMISE_TTL from when this host first saw it, as a directory's promise file does."""
        key = self.keys.promise(checksum_hex)
        content = await self._small_object(key)
        try:
            made = float(content) - PROMISE_TTL if content is not None else None
        except ValueError:
            return False
        return made is not None and self._promise_ages.age_of((key, content), made) < PROMISE_TTL

    async def _look_again(self, started: float, hexes: list[str]) -> dict[str, Location]:
        """Where those of ``hexes`` are that a lookup begun at ``started`` found neither
        present nor promised, if it took so long that a promise could have been resolved
        and deleted (RESOLVED_KEPT) between its look for the object and its read of the
        promise: else nothing, as they were absent."""
        if not hexes or time.monotonic() - started < self.resolved_kept:
            return {}
        return await self._locate(hexes)

    async def _map(self, items: list, one) -> list:
        """``one(item)`` for each item, at most HEAD_CONCURRENCY at once in this worker,
        whatever the number of batches under way: each call holds a connection (and a
        descriptor) until its answer."""
        limit = self._batch_limit()

        async def bounded(item):
            async with limit:
                return await one(item)

        return list(await asyncio.gather(*(bounded(item) for item in items)))

    def _batch_limit(self) -> asyncio.Semaphore:
        """The worker's bound on the calls of batches (one per event loop: tests run several)."""
        loop = asyncio.get_running_loop()
        if self._batch_calls is None or self._batch_calls[0] is not loop:
            self._batch_calls = (loop, asyncio.Semaphore(HEAD_CONCURRENCY))
        return self._batch_calls[1]

    async def _locate(self, hexes: list[str]) -> dict[str, Location]:
        """Where each buffer of a batch is.  A large batch lists the directories
        involved first (in a bucket of a few thousand objects a directory's one
        page answers for all its buffers), the rest by HEADs; when listings stop
        paying (a large bucket: many pages, or many keys, per checksum), HEADs alone for a while."""
        wanted = sorted(set(hexes))
        if len(wanted) < LIST_MIN or time.monotonic() < self._heads_until:
            return await self._locate_by_heads(wanted)
        listed, unresolved = await self._list_around(wanted, self.keys.buffer)
        if len(unresolved) * 2 > len(wanted) or len(listed) > LIST_WORTH * len(wanted):
            self._heads_until = time.monotonic() + LIST_BACKOFF
        found = {h: where for h in set(wanted) - set(unresolved)
                 if (where := self._listed_location(listed, h)) is not None}
        return found | await self._locate_by_heads(unresolved)

    def _listed_location(self, listed: dict[str, int], checksum_hex: str) -> Location | None:
        for encoding in (None, *ENCODINGS):
            size = listed.get(self.keys.buffer(checksum_hex, encoding))
            if size is not None:
                return encoding, size
        return None

    async def _locate_by_heads(self, hexes: list[str]) -> dict[str, Location]:
        """A HEAD of each plain object, then of the compressed forms of the rest."""
        sizes = await self._map(hexes, lambda h: self._head(self.keys.buffer(h)))
        found: dict[str, Location] = {h: (None, size) for h, size in zip(hexes, sizes, strict=True)
                                      if size is not None}
        rest = [h for h in hexes if h not in found]
        compressed = await self._map(rest, self._find_compressed)
        found.update({h: where for h, where in zip(rest, compressed, strict=True) if where is not None})
        return found

    async def _promised_among(self, hexes: list[str]) -> set[str]:
        """Which of these (absent) buffers are promised: their promise objects read,
        found by listing when there are enough of them."""
        candidates = sorted(set(hexes))
        if len(candidates) >= LIST_MIN:
            listed, unresolved = await self._list_around(candidates, self.keys.promise)
            candidates = sorted({*unresolved, *(h for h in candidates if self.keys.promise(h) in listed)})
        promised = await self._map(candidates, self._promised)
        return {h for h, yes in zip(candidates, promised, strict=True) if yes}

    async def _list_around(self, hexes: list[str], key_of) -> tuple[dict[str, int], list[str]]:
        """The objects (key: size) whose names start with ``key_of(h)`` for the sorted
        ``hexes``, by listing each directory involved over the range they span, within
        a budget of pages (a listing page costs more than a HEAD); and the checksums
        the budget left unresolved."""
        groups: dict[str, list[str]] = {}
        for h in hexes:
            groups.setdefault(posixpath.dirname(key_of(h)), []).append(h)

        async def one(directory: str) -> tuple[dict[str, int], list[str]]:
            group = groups[directory]
            first, last = key_of(group[0])[:-1], key_of(group[-1]) + RANGE_END
            listed, reached = await self._list_range(directory, first, last, max(1, len(group) // 2))
            return listed, [h for h in group if reached is not None and key_of(h) + RANGE_END > reached]

        listed: dict[str, int] = {}
        unresolved: list[str] = []
        for part, left in await self._map(list(groups), one):
            listed.update(part)
            unresolved.extend(left)
        return listed, unresolved

    async def _list_range(self, directory: str, first: str, last: str, pages: int) -> tuple[dict[str, int], str | None]:
        """Keys and sizes of ``directory`` after ``first``, up to ``last``, in at most
        ``pages`` pages; and the last key reached if the pages ran out first (else None)."""
        stream = obstore.list(self.store, prefix=directory or None, offset=first, chunk_size=LIST_PAGE)
        listed: dict[str, int] = {}
        for _ in range(pages):
            try:
                page = await self._call("list", directory, stream.__anext__())
            except StopAsyncIteration:
                return listed, None
            listed.update((entry["path"], entry["size"]) for entry in page)
            if len(page) < LIST_PAGE or page[-1]["path"] > last:  # the end of the listing, or past the range
                return listed, None
        return listed, max(listed, default=first)

    def peek(self, checksum: bytes) -> bytes | Fast:
        """Only a call to the object store could tell: :meth:`fetch` where the lean
        client makes it (one GET, cut off at the headers of a longer object)."""
        fetches = self.lean is not None and self._ranges and checksum not in self._unfetchable
        return Fast.FETCH if fetches else Fast.REGULAR

    async def fetch(self, checksum: bytes) -> bytes | Fast:
        """The buffer's plain object up to FETCH_MAX, once it hashed to ``checksum``;
        REGULAR where there is none (the regular route looks for compressed objects and
        promises) or it is longer: then the next peeks send it to the regular route."""
        if self.lean is None:
            return Fast.REGULAR
        key = self.keys.buffer(checksum.hex())
        receiver = _HashedAsRead(partial(DecodingHash, self.hasher, None))
        try:
            data = await self._call("get", key, self._lean_whole(key, FETCH_MAX, receiver))
        except NOT_FOUND:
            data = None
        if data is None:
            self._unfetchable[checksum] = None
            if len(self._unfetchable) > UNFETCHABLE_KEPT:
                self._unfetchable.popitem(last=False)
            return Fast.REGULAR
        data, digest = await self._fetched(key, receiver if isinstance(data, bytearray) else data, len(data), None)
        self._check(checksum, digest, key)
        return data

    async def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        hexes = _hexes(checksums)
        found, promises = await self._look_up(hexes, promised)
        return [h in found or h in promises for h in hexes]

    async def _look_up(self, hexes: list[str], promised: bool = True) -> tuple[dict[str, Location], set[str]]:
        """Where the buffers of a batch are, and which of the others are promised (with
        ``promised``); "absent" for the rest is said only once the bucket answers."""
        started = time.monotonic()
        found = await self._locate(hexes)
        missing = [h for h in hexes if h not in found]
        promises = await self._promised_among(missing) if promised and missing else set()
        if promised:
            found |= await self._look_again(started, [h for h in missing if h not in promises])
        if any(h not in found for h in hexes):
            await self._bucket_is_there()
        return found, promises

    async def lengths(self, checksums: bytes) -> list[int]:
        hexes = _hexes(checksums)
        found, promises = await self._look_up(hexes)
        compressed = [h for h in set(found) if found[h][0] is not None]
        decoded = dict(zip(compressed, await self._map(
            compressed, lambda h: self._decoded_length(h, found[h][0])), strict=True))
        return [decoded.get(h, found[h][1]) if h in found else int(h in promises) for h in hexes]

    async def _decoded_length(self, checksum_hex: str, encoding: Encoding) -> int:
        """A compressed buffer's length: its sidecar, else decoded once to count (and, on a
        writable store, its sidecar written then: a PUT whose sidecar failed, or another
        program's object, costs a decode once, not at every read)."""
        sidecar = await self._small_object(self.keys.sidecar(checksum_hex))
        try:
            if sidecar is not None:
                return int(sidecar.strip())
        except ValueError:
            pass
        length = await self._count_decoded(checksum_hex, encoding)
        if self.writable and length:
            await self._put_sidecar(checksum_hex, encoding, length)
        return length

    async def _count_decoded(self, checksum_hex: str, encoding: Encoding) -> int:
        key = self.keys.buffer(checksum_hex, encoding)
        result = await self._get(key)
        if result is None:
            return 0
        decoder = Decoder(encoding)
        try:
            async for chunk in self._chunks(key, result):
                for _ in decoder.feed(chunk):
                    pass
            decoder.finish()
        except InvalidPayload:
            raise self._corruption(key) from None
        return decoder.length

    # ------------------------------------------------------------- reading
    async def open(self, checksum: bytes, accepted: frozenset[str] = frozenset(),
                   want: Want = Want.WHOLE) -> Readable | None:
        found = await self._locate_for(checksum.hex(), want)
        if found is None:
            await self._bucket_is_there()
            return None
        key, encoding, size, result = found
        if size <= self.whole_get or isinstance(result, bytes):
            result = await self._get_present(key) if result is None else result
            return await self._whole(checksum, key, encoding, size, result, accepted)
        if isinstance(result, _Prefixed):
            result = None  # sent as it arrives, so read by one GET: see _whole_verified
        if want is Want.PART:
            return await self._spooled(checksum, key, encoding, result, accepted)
        return await self._streamed(checksum, key, encoding, size, result, accepted)

    async def _locate_for(self, checksum_hex: str, want: Want) -> Found | None:
        """The buffer's object, waiting while it is promised.  A HEAD looks by HEADs
        (a large object's size is all it needs); the rest start the GET at once."""
        look = self._find_key if want is Want.HEADERS else self._fetch
        deadline = time.monotonic() + self.wait_timeout
        started = time.monotonic()
        found = await look(checksum_hex)
        while found is None and await self._promised(checksum_hex):
            if time.monotonic() >= deadline:
                raise StillWriting(max(1, round(self.wait_timeout / 3)))
            await asyncio.sleep(POLL_MAX / 5)
            started = time.monotonic()
            found = await look(checksum_hex)
        if found is None and time.monotonic() - started >= self.resolved_kept:  # see _look_again
            found = await look(checksum_hex)
        return found

    async def _fetch(self, checksum_hex: str) -> Found | None:
        """The first representation present, its GET under way."""
        for encoding in (None, *ENCODINGS):
            key = self.keys.buffer(checksum_hex, encoding)
            receiver = _HashedAsRead(partial(DecodingHash, self.hasher, encoding))
            result = await self._get_small(key, receiver)
            if isinstance(result, bytearray):  # in the receiver, hashed as it came
                return key, encoding, len(result), receiver
            if isinstance(result, bytes):
                return key, encoding, len(result), result
            if result is not None:
                return key, encoding, result.meta["size"], result
        return None

    async def _find_key(self, checksum_hex: str) -> Found | None:
        """The first representation present, by HEADs (no GET started)."""
        where = await self._find(checksum_hex)
        if where is None:
            return None
        encoding, size = where
        return self.keys.buffer(checksum_hex, encoding), encoding, size, None

    async def _get_present(self, key: str):
        """The GET of an object found before: objects are never deleted under a running fleet."""
        result = await self._get(key)
        if result is None:
            raise self._vanished(key)
        return result

    def _vanished(self, key: str) -> StorageUnavailable:
        return StorageUnavailable(f"Storage unavailable: {self.keys.where(key)} vanished while read")

    async def _hash(self, digest: DecodingHash, data: bytes) -> None:
        if len(data) <= HASH_INLINE:
            digest.update(data)
        else:
            await asyncio.get_running_loop().run_in_executor(None, digest.update, data)

    def _corruption(self, key: str) -> CorruptBuffer:
        return CorruptBuffer.at(self.keys.where(key), self.hasher.display_name)

    @staticmethod
    def _hashed_to(checksum: bytes, digest: DecodingHash) -> int | None:
        """The decoded length, if the content hashed to ``checksum``; else None."""
        try:
            result, length = digest.finish()
        except InvalidPayload:
            return None
        return length if result == checksum else None

    def _check(self, checksum: bytes, digest: DecodingHash, key: str) -> int:
        """The decoded length, if the content hashed to ``checksum``; else CorruptBuffer."""
        length = self._hashed_to(checksum, digest)
        self.metrics.verified(length is not None)
        if length is None:
            error = self._corruption(key)
            log.error("%s", error)
            raise error
        return length

    async def _whole(self, checksum: bytes, key: str, encoding: Encoding | None, size: int, result,
                     accepted: frozenset[str]) -> Readable:
        """An object up to ``whole_get``, verified before anything is sent."""
        data, length = await self._whole_verified(checksum, key, size, encoding, result)
        if encoding is None:
            return Readable(length, content=data)
        stored = Readable(len(data), encoding.name, content=data, variant=encoding.suffix[1:], varies=True)
        if encoding.accepted_by(accepted):
            return stored
        return Readable(length, chunks=lambda: _decoded(encoding, data), varies=True, as_stored=stored)

    async def _whole_verified(self, checksum: bytes, key: str, size: int, encoding: Encoding | None,
                              result) -> tuple[bytes, int]:
        """The object's bytes and decoded length, once they hashed to ``checksum``.  A read
        joined from two GETs (:class:`_Prefixed`) that does not is read again by one GET
        before the object is called corrupt: between the two, the object may have been
        replaced by another encoding of the same buffer (a compressed object uploaded in
        parts is not created conditionally, and ``aws s3 sync`` overwrites)."""
        if isinstance(result, _Prefixed):
            try:
                data, digest = await self._fetched(key, result, size, encoding)
                length = self._hashed_to(checksum, digest)
            except CorruptBuffer:  # undecodable
                length = None
            if length is not None:
                self.metrics.verified(True)
                return data, length
            log.info("%s: its two GETs did not hash right together; reading it by one", self.keys.where(key))
            result = await self._get_present(key)
            size = result.meta["size"]
        data, digest = await self._fetched(key, result, size, encoding)
        return data, self._check(checksum, digest, key)

    async def _fetched(self, key: str, result, size: int, encoding: Encoding | None) -> tuple[bytes, DecodingHash]:
        """The object's bytes, and their hash so far.  A small one is read, then hashed;
        a larger one hashed in a thread chunk by chunk while the next chunk arrives (so
        that the answer waits for about the longer of the two, not their sum)."""
        digest = DecodingHash(self.hasher, encoding)
        try:
            if isinstance(result, _HashedAsRead):
                return result.buffer, await result.digest()
            if size <= HASH_INLINE or isinstance(result, bytes):
                data = result if isinstance(result, bytes) else await self._read(key, result)
                await self._hash(digest, data)
                return data, digest
            return await self._read_hashing(key, result, digest), digest
        except InvalidPayload:
            raise self._corruption(key) from None

    async def _read_hashing(self, key: str, result, digest: DecodingHash) -> bytes:
        loop = asyncio.get_running_loop()
        parts: list[bytes] = []
        hashing: asyncio.Future | None = None
        try:
            async for chunk in self._chunks(key, result, copied=False):  # copied once, by the join
                if hashing is not None:
                    await hashing
                hashing = loop.run_in_executor(None, digest.update, chunk)
                parts.append(chunk)
        finally:
            if hashing is not None:
                await asyncio.wait({hashing})  # the thread is done with the digest (its error, if any, next)
        if hashing is not None:
            hashing.result()
        return b"".join(parts)

    async def _streamed(self, checksum: bytes, key: str, encoding: Encoding | None, size: int, result,
                        accepted: frozenset[str]) -> Readable:
        """A large object, hashed while it is sent; the last chunk waits for the verdict.
        Its GET starts (if not yet) only when its chunks are read: never for a HEAD."""
        held = [result] if result is not None else []
        decode = None if encoding is None or encoding.accepted_by(accepted) else encoding

        def source() -> AsyncIterator[bytes]:
            return self._verified(checksum, key, held.pop() if held else None, encoding, decode)

        if encoding is None:
            return Readable(size, chunks=source)
        if decode is None:
            return Readable(size, encoding.name, chunks=source, variant=encoding.suffix[1:], varies=True)
        length = await self._decoded_length(checksum.hex(), encoding)
        return Readable(length, chunks=source, varies=True)

    async def _spooled(self, checksum: bytes, key: str, encoding: Encoding | None, result,
                       accepted: frozenset[str]) -> Readable:
        """A large object for a part of it: the whole object written to an unnamed
        temporary file while hashed, and sent from there only once it proved right
        (memory stays bounded; the file is gone when the answer closes it)."""
        decode = None if encoding is None or encoding.accepted_by(accepted) else encoding
        places = [self.spool_dir, None] if self.spool_dir is not None else [None]
        for place in places:
            try:
                spool = await self._spool(checksum, key, result, encoding, decode, place)
                break
            except OSError as exc:
                where = place or tempfile.gettempdir()
                if place is places[-1]:
                    raise StorageUnavailable(f"Storage unavailable: cannot hold {self.keys.where(key)} for a part "
                                             f"of it under {where}: {exc.strerror or exc}") from None
                log.warning("cannot spool %s under %s (%s): under the system's temporary directory",
                            self.keys.where(key), where, exc.strerror or exc)
                result = None  # read again
        length = spool.tell()
        spool.seek(0)
        if encoding is None or decode is not None:
            return Readable(length, file=spool, varies=encoding is not None)
        return Readable(length, encoding.name, file=spool, variant=encoding.suffix[1:], varies=True)

    async def _spool(self, checksum: bytes, key: str, result, encoding: Encoding | None, decode: Encoding | None,
                     place: str | None) -> BinaryIO:
        """The verified object (decoded if ``decode``) in an unnamed temporary file under
        ``place`` (None: the system's temporary directory); OSError if it cannot be."""
        spool = await asyncio.get_running_loop().run_in_executor(None, _spool_file, place)
        try:
            async for chunk in self._verified(checksum, key, result, encoding, decode):
                await writer.done_in_thread(_write_all, spool, chunk)
        except BaseException:
            spool.close()
            raise
        return spool

    async def _chunks(self, key: str, result, copied: bool = True) -> AsyncIterator[bytes]:
        """The object's bytes, chunk by chunk; ``copied=False``: as the client's buffers
        (bytes-like, not bytes: for a caller that copies them anyway)."""
        stream = result.stream(min_chunk_size=STREAM_CHUNK)
        while True:
            try:
                with self._failures("read", key):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            yield bytes(chunk) if copied else chunk

    async def _verified(self, checksum: bytes, key: str, result, encoding: Encoding | None,
                        decode: Encoding | None) -> AsyncIterator[bytes]:
        """The object's bytes (decoded if ``decode``), each chunk sent once the next one
        arrived, the last one only if the whole hashed to ``checksum``.  The hash runs in
        a thread beside the reading and the sending (a chunk may go out before it is
        hashed: only the last one waits for the verdict)."""
        if result is None:
            result = await self._get_present(key)
        decoder = Decoder(decode) if decode else None
        hashing = _BodyHash(DecodingHash(self.hasher, None if decode else encoding))
        pending = b""
        try:
            async for chunk in self._chunks(key, result):
                for out in decoder.feed(chunk) if decoder else (chunk,):
                    await hashing.add(out)
                    if pending:
                        yield pending
                    pending = out
            if decoder is not None:
                tail = decoder.finish()
                await hashing.add(tail)
                pending += tail
            digest = await hashing.done()
        except InvalidPayload:
            raise self._corruption(key) from None
        finally:
            hashing.forget()
        self._check(checksum, digest, key)
        if pending:
            yield pending

    # ------------------------------------------------------------- writing
    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  content_encoding: str | None = None) -> PutOutcome:
        if not self.writable:
            raise ReadOnly.put()
        try:
            outcome = await self._put(checksum, body, for_content_encoding(content_encoding))
        except Exception as exc:
            self.metrics.put_failed(exc)
            raise
        self.metrics.put(outcome.value)
        self._resolve(checksum.hex())
        self._unfetchable.pop(checksum, None)  # it may be a small plain object now
        return outcome

    async def _put(self, checksum: bytes, body: AsyncIterator[bytes], encoding: Encoding | None) -> PutOutcome:
        checksum_hex = checksum.hex()
        key = self.keys.buffer(checksum_hex, encoding)
        digest = DecodingHash(self.hasher, encoding)
        hashing = _BodyHash(digest)
        batches = writer.batch_parts(body, self.pace, self.max_body_size)
        try:
            first, ended = await _read_up_to(batches, self.small_put, hashing.add_parts)
            if ended:
                await hashing.done()
                return await self._put_small(checksum, key, encoding, digest,
                                             b"".join(piece for parts in first for piece in parts))
            if await self._find(checksum_hex) is not None:
                async for parts in batches:
                    await hashing.add_parts(parts)
                await hashing.done()
                self._verify_body(checksum, digest)
                return PutOutcome.PRESENT
            return await self._put_multipart(checksum, key, encoding, hashing, first, batches)
        finally:
            await hashing.settled()

    def _verify_body(self, checksum: bytes, digest: DecodingHash) -> int:
        result, length = digest.finish()
        if result != checksum:
            raise ChecksumMismatch()
        return length

    async def _put_small(self, checksum: bytes, key: str, encoding: Encoding | None, digest: DecodingHash,
                         data: bytes) -> PutOutcome:
        """One create-only PUT.  A compressed body of a buffer the bucket holds in any form
        is not written again, as a directory answers (a plain one's PUT is refused by the
        store itself when the plain object is there: no HEADs for the common case)."""
        length = self._verify_body(checksum, digest)
        if encoding is not None and await self._find(checksum.hex()) is not None:
            return PutOutcome.PRESENT
        if not await self._create(key, data, plain=encoding is None):
            return PutOutcome.PRESENT
        await self._put_sidecar(checksum.hex(), encoding, length)
        return PutOutcome.STORED

    async def _create(self, key: str, data: bytes, plain: bool) -> bool:
        """Create the object unless it exists: True if this call created it.  A conflict
        counts as "exists" only once a HEAD finds the object: a store may refuse a
        create-only PUT while another write of the key is under way (AWS: 409
        ConditionalRequestConflict), and that write may fail.  A ``plain`` buffer's
        object of another length than its verified body (another program's truncated
        copy) is replaced: else every host would answer 400 for it, for ever."""
        deadline = time.monotonic() + CONFLICT_BUDGET
        wait = CONFLICT_BACKOFF[0]
        while True:
            if self.lean is not None and len(data) <= LEAN_PUT:
                call = self.lean.put_if_absent(key, data, hashlib.sha256(data).hexdigest())
            else:
                call = obstore.put_async(self.store, key, data, mode="create")
            try:
                await self._call("put", key, call)
                return True
            except CONFLICT:
                size = await self._head(key)
                if size is not None and plain and size != len(data):
                    log.warning("%s held %d bytes, not the %d of its buffer: replaced by a verified PUT",
                                self.keys.where(key), size, len(data))
                    await self._call("put", key, obstore.put_async(self.store, key, data))
                    return True
                if size is not None:
                    return False
            if time.monotonic() >= deadline:
                raise StorageUnavailable(f"Storage unavailable: {self.keys.where(key)}: the store refused its "
                                         f"create-only PUT as a conflict for {CONFLICT_BUDGET:g} s, and holds no "
                                         f"such object")
            await asyncio.sleep(wait)
            wait = min(wait * 2, CONFLICT_BACKOFF[1])

    async def _put_sidecar(self, checksum_hex: str, encoding: Encoding | None, length: int) -> None:
        """A compressed buffer's decoded length, beside its object once that exists (never
        beside nothing: a PUT that fails leaves no object of its own).  Only a shortcut:
        without it the length is counted by decoding, so a failure is logged, not raised."""
        if encoding is None:
            return
        key = self.keys.sidecar(checksum_hex)
        try:
            await self._call("put", key, obstore.put_async(self.store, key, str(length).encode()))
        except StorageUnavailable as exc:
            log.warning("no length sidecar beside %s: %s", self.keys.where(self.keys.buffer(checksum_hex, encoding)),
                        exc)

    async def _put_multipart(self, checksum: bytes, key: str, encoding: Encoding | None, hashing: _BodyHash,
                             first: list[list[bytes]], batches: AsyncIterator[list[bytes]]) -> PutOutcome:
        """Upload while hashing; complete only once the body hashed right, else abort.
        (``first``: hashed, or being hashed, already.)"""
        queue: asyncio.Queue = asyncio.Queue(QUEUE_DEPTH)
        upload = asyncio.ensure_future(self._call("multipart put", key, obstore.put_async(
            self.store, key, _drain(queue), use_multipart=True, chunk_size=self.part_size,
            max_concurrency=UPLOAD_CONCURRENCY)))
        try:
            for batch in first:
                await self._feed(queue, upload, None, batch)
            async for batch in batches:
                await self._feed(queue, upload, hashing, batch)
            length = self._verify_body(checksum, await hashing.done())
            await self._feed(queue, upload, None, _DONE)
            await asyncio.shield(upload)
        except BaseException:
            await _abandon(queue, upload)
            raise
        await self._put_sidecar(checksum.hex(), encoding, length)
        return PutOutcome.STORED

    async def _feed(self, queue: asyncio.Queue, upload: asyncio.Future, hashing: _BodyHash | None,
                    item: Any) -> None:
        """Hand a batch to the uploader (unless the upload failed meanwhile), and to
        ``hashing``, if given."""
        if hashing is not None:
            await hashing.add_parts(item)
        putting = asyncio.ensure_future(queue.put(item))
        try:
            await asyncio.wait({putting, upload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not putting.done():
                putting.cancel()
        if not putting.done() or putting.cancelled():
            upload.result()  # raises the upload's error
            raise StorageUnavailable(f"Storage unavailable: an upload to {self.url} ended before its body")

    async def promise(self, checksum: bytes) -> int:
        if not self.writable:
            raise ReadOnly.promise()
        checksum_hex = checksum.hex()
        if await self._find(checksum_hex) is None:
            key = self.keys.promise(checksum_hex)
            expiry = f"{time.time() + PROMISE_TTL:.3f}".encode()
            await self._call("put", key, obstore.put_async(self.store, key, expiry))
            self.metrics.promised()
        return PROMISE_TTL

    def _resolve(self, checksum_hex: str) -> None:
        """A stored buffer's promise is kept no longer: deleted RESOLVED_KEPT seconds
        later, in one bulk request with the promises of the PUTs that came due meanwhile
        (a DELETE for each PUT would halve the rate of PUTs).  The PUT is answered without
        waiting for it: an object present answers for its buffer whatever promise is left
        beside it, and a promise left behind (a failure, logged; a stop) only runs out."""
        self._resolved.append((time.monotonic() + self.resolved_kept, self.keys.promise(checksum_hex)))
        if self._resolver is None:
            self._resolver = asyncio.get_running_loop().create_task(self._delete_resolved())

    async def _delete_resolved(self) -> None:
        try:
            while self._resolved:
                await asyncio.sleep(max(0.0, self._resolved[0][0] - time.monotonic()))
                keys: set[str] = set()
                while self._resolved and self._resolved[0][0] <= time.monotonic() and len(keys) < BULK_DELETE:
                    keys.add(self._resolved.popleft()[1])
                if keys:  # (none when the loop's timer fired a hair before the clock reached the first)
                    await self._delete_promises(sorted(keys))
        finally:
            self._resolver = None

    async def remove_lapsed_promises(self) -> int:
        """Delete this prefix's promises that lapsed for every host, as a directory server
        removes its lapsed promise files: no reader counts them any more, and the bucket
        would keep them for ever.  Returns how many expired: those whose buffer did not
        arrive (a promise whose buffer came is its writer's to delete, which a stop may have
        kept it from).

        Lapsed for every host: its expiry (by the promising host's clock, its content)
        passed PROMISE_GRACE ago by this host's clock, so a host whose clock is behind, or
        that first saw a promise dated ahead (which lasts PROMISE_TTL from then), counts it
        no longer either.  Page by page, its promises read a few at a time; each one found
        lapsed is looked at once more right before the deletion, and left if it changed
        since the listing (renewed: ``PUT /promise`` rewrites it)."""
        directory = self.keys.promise("") + "/"
        stream = obstore.list(self.store, prefix=directory, chunk_size=LIST_PAGE)
        reads = asyncio.Semaphore(SWEEP_CONCURRENCY)
        expired = 0
        while True:
            try:
                page = await self._call("list", directory, stream.__anext__())
            except StopAsyncIteration:
                break
            candidates = [entry for entry in page if is_buffer_name(posixpath.basename(entry["path"]))]
            verdicts = await asyncio.gather(*(self._lapsed_as_listed(entry, reads) for entry in candidates))
            keys = [entry["path"] for entry, gone in zip(candidates, verdicts, strict=True) if gone]
            if not keys:
                continue
            await self._call("delete", keys[0], obstore.delete_async(self.store, keys))
            found = await asyncio.gather(*(self._find(posixpath.basename(key)) for key in keys))
            counted = sum(location is None for location in found)
            if counted:
                self.metrics.promises_expired(counted)
                expired += counted
        return expired

    async def _lapsed_as_listed(self, entry: dict, reads: asyncio.Semaphore) -> bool:
        """Whether a listed promise lapsed for every host and is still as listed."""
        async with reads:
            content = await self._small_object(entry["path"])
            try:
                expiry = float(content) if content is not None else None
            except ValueError:
                expiry = 0.0  # not a promise: out with it
            if expiry is None or expiry + PROMISE_GRACE >= time.time():
                return False
            try:
                meta = await self._call("head", entry["path"], obstore.head_async(self.store, entry["path"]))
            except NOT_FOUND:
                return False
            return meta.get("e_tag") == entry.get("e_tag")

    async def _delete_promises(self, keys: list[str]) -> None:
        try:
            await self._call("delete", keys[0], obstore.delete_async(self.store, keys))
        except (StorageUnavailable, *NOT_FOUND) as exc:
            log.warning("could not remove %d resolved promises of %s: %s", len(keys), self.url, exc)

    # ------------------------------------------------------------- health and startup
    async def _list_one(self) -> None:
        """The cheapest call that needs the bucket and the credentials: one key of a listing."""
        prefix = self.keys.prefix or None
        stream = obstore.list(self.store, prefix=prefix, chunk_size=1)
        try:
            await self._call("list", self.keys.prefix, stream.__anext__())
        except StopAsyncIteration:
            pass

    async def health(self) -> str | None:
        """The bucket's state now: a check made within the last second, or one
        made for this call (callers at the same moment share it), waited for
        at most HEALTH_WAIT seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._checked_health()), HEALTH_WAIT)
        except asyncio.TimeoutError:
            problem = f"Storage unavailable: {self.url} did not answer within {HEALTH_WAIT:g} s"
            self.metrics.health(False)
            return problem

    async def _checked_health(self) -> str | None:
        checked, problem = self._health
        if time.monotonic() - checked < HEALTH_EVERY:
            return problem
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._check_health())
        await asyncio.shield(self._health_task)
        return self._health[1]

    async def _check_health(self) -> None:
        try:
            await self._list_one()
            problem = None
        except StorageUnavailable as exc:
            problem = str(exc)
        finally:
            self._health_task = None
        self._health = (time.monotonic(), problem)
        self.metrics.health(problem is None)

    async def _bucket_is_there(self) -> None:
        """Before an answer "absent": the bucket still exists and answers (a HEAD of a key
        in a deleted bucket is a plain 404), checked at most once a second."""
        problem = await self._checked_health()
        if problem is not None:
            raise StorageUnavailable(problem)

    async def check(self) -> None:
        """At startup: the bucket exists and takes the credentials, else ConfigError (one line)."""
        directory, endpoint = self.setting_names
        try:
            await self._list_one()
        except StorageUnavailable as exc:
            if NO_BUCKET in str(exc.__cause__):
                raise ConfigError(f"{directory}={self.url!r}: the bucket does not exist") from None
            if any(path in str(exc.__cause__) for path in METADATA_PATHS):
                raise ConfigError(f"{directory}={self.url!r}: no credentials found (set AWS_ACCESS_KEY_ID and "
                                  f"AWS_SECRET_ACCESS_KEY, or run where the instance's own role gives them: "
                                  f"{_first_line(exc.__cause__)})") from None
            if _refused(exc.__cause__):
                raise ConfigError(f"{directory}={self.url!r}: the object store refused the credentials "
                                  f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): {_first_line(exc.__cause__)}") from None
            raise ConfigError(f"{endpoint}={self.endpoint or 'default'!r}: the object store does not answer "
                              f"for {self.url}: {_first_line(exc.__cause__ or exc)}") from None
        self._health = (time.monotonic(), None)
        if self.writable and self.keys.layout == "prefix":
            await self._write_marker()
        if self.keys.layout == "flat" and await self._marker_is_there():
            log.warning(FLAT_OVER_PREFIX, self.url)

    async def sample(self, count: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
        """(checksum, content) of up to ``count`` plain buffers of at most ``max_bytes``
        among the first page of the prefix's listing: the startup check that the
        buffers are named by the configured hash algorithm reads them."""
        stream = obstore.list(self.store, prefix=self.keys.prefix or None, chunk_size=LIST_PAGE)
        try:
            page = await self._call("list", self.keys.prefix, stream.__anext__())
        except StopAsyncIteration:
            return []
        keys = [entry["path"] for entry in page if entry["size"] <= max_bytes and self._plain_buffer_key(entry["path"])]
        picks = keys[::max(1, len(keys) // count)][:count]
        sample = []
        for key in picks:
            try:
                content = await self._small_object(key)
            except NOT_FOUND:  # gone since the listing
                content = None
            if content is not None:
                sample.append((bytes.fromhex(posixpath.basename(key)), content))
        return sample

    def _plain_buffer_key(self, key: str) -> bool:
        name = posixpath.basename(key)
        return is_buffer_name(name) and key == self.keys.buffer(name)

    async def _marker_is_there(self) -> bool:
        try:
            return await self._head(self.keys.marker()) is not None
        except StorageUnavailable as exc:  # a warning's question: not worth a refusal to start
            log.info("%s: not looked for: %s", self.keys.where(self.keys.marker()), exc)
            return False

    async def _write_marker(self) -> None:
        """As a writable prefix-layout directory holds one (empty, as layout's marker is)."""
        key = self.keys.marker()
        if await self._head(key) is None:
            try:
                await self._call("put", key, obstore.put_async(self.store, key, b"", mode="create"))
            except CONFLICT:
                pass

    async def abort_stale_uploads(self, older_than: float) -> int:
        """Abort this prefix's incomplete multipart uploads of buffers idle (started, and their
        last part sent) for more than ``older_than`` s."""
        config = dict(getattr(self.store, "config", None) or {})
        signer = s3uploads.Signer.from_settings(self.keys.bucket, self.endpoint, config)
        started = time.monotonic()
        try:
            count = await s3uploads.abort_older(signer, self.keys.bucket, self.keys.upload_prefix(), older_than)
        except s3uploads.S3RequestError as exc:
            self.metrics.object_store_call("abort stale uploads", "error", time.monotonic() - started)
            raise StorageUnavailable(f"Storage unavailable: listing the uploads of {self.url} failed: {exc}") from exc
        self.metrics.object_store_call("abort stale uploads", "ok", time.monotonic() - started)
        return count

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()
        for task in (self._resolver, self._health_task):
            if task is not None:
                task.cancel()


def _hexes(checksums: bytes) -> list[str]:
    return [checksums[i:i + 32].hex() for i in range(0, len(checksums), 32)]


def _refused(exc: BaseException | None) -> bool:
    """Credentials refused (a listing's refusal comes as a generic error with its status)."""
    return isinstance(exc, REFUSED) or re.search(r"status code: 40[13]\b", str(exc)) is not None


def _setting_name(config: Config, attr: str) -> str:
    try:
        return config.name(attr)
    except KeyError:
        return "--" + attr.replace("_", "-")


def _spool_file(place: str | None) -> BinaryIO:
    if place is not None:
        os.makedirs(place, exist_ok=True)
    return tempfile.TemporaryFile(dir=place, buffering=0)


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of ``data``: an unbuffered write may take part of it (a disk that fills up
    says so only at the next write)."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


async def _read_up_to(batches: AsyncIterator[list[bytes]], limit: int,
                      each: Callable[[list[bytes]], Awaitable[None]]) -> tuple[list[list[bytes]], bool]:
    """The first batches of a body, until more than ``limit`` bytes, each given to
    ``each`` as it arrives; and whether the body ended."""
    first: list[list[bytes]] = []
    total = 0
    async for batch in batches:
        await each(batch)
        first.append(batch)
        total += sum(map(len, batch))
        if total > limit:
            return first, False
    return first, True


class _HashedAsRead:
    """An object's bytes read by the lean client into one buffer, hashed in a thread while
    the rest arrives (an :class:`s3lean.Receiver`).  A large miss then costs about the
    longer of the read and the hash instead of their sum, and holds the object once, not
    its pieces and then their join: for 16 MiB read from SeaweedFS and hashed with SHA-256,
    24 ms against 30 ms read then hashed and 33 ms through obstore's stream (medians of 18;
    SHA3-256's hash alone takes longer than the read, so it gains little)."""

    def __init__(self, new_digest: Callable[[], DecodingHash]):
        self._new_digest = new_digest
        self.buffer: bytearray | None = None

    def begin(self, length: int) -> memoryview | None:
        if length <= HASH_INLINE:
            return None  # read whole, then hashed on the event loop
        self.buffer = bytearray(length)
        self._view = memoryview(self.buffer)
        self._digest = self._new_digest()
        self._stage = SerialStage(partial(hash_parts, self._digest))
        self._hashes: list[asyncio.Future] = []
        self._hashed = 0
        return self._view

    def arrived(self, end: int) -> None:
        if end - self._hashed >= HASH_STEP or end == len(self.buffer):
            hashed = self._stage.submit([self._view[self._hashed:end]])
            hashed.add_done_callback(writer.retrieve_exception)  # an abandoned read's error is none to report
            self._hashes.append(hashed)
            self._hashed = end

    async def digest(self) -> DecodingHash:
        """The digest of the whole buffer (raises InvalidPayload if it did not decode)."""
        try:
            for hashed in self._hashes:  # the first error is the one raised
                await hashed
        finally:
            await self._stage.settled()
        return self._digest


class _BodyHash:
    """A body's hash, taken as the body arrives.  A piece larger than HASH_INLINE goes
    to a hashing thread and the event loop receives the next one meanwhile (the hash of
    a large PUT no longer waits for the body, nor the body for the hash); a smaller one
    is hashed on the loop, after those before it.  At most HASHES_AHEAD pieces wait
    for the thread, so memory stays bounded."""

    def __init__(self, digest: DecodingHash):
        self.digest = digest
        self._stage = SerialStage(partial(hash_parts, digest))
        self._ahead: deque[asyncio.Future] = deque()

    async def add(self, piece: bytes) -> None:
        """Hash ``piece`` next (raises InvalidPayload for an earlier piece that did not decode)."""
        await self.add_parts([piece])

    async def add_parts(self, pieces: list[bytes]) -> None:
        """Hash ``pieces`` next, in order: a batch of a body, not joined."""
        if sum(map(len, pieces)) <= HASH_INLINE and not self.digest.decodes:  # a small piece may decode to a lot
            await self.done()
            hash_parts(self.digest, pieces)
            return
        while len(self._ahead) >= HASHES_AHEAD:
            await self._ahead.popleft()
        self._ahead.append(self._stage.submit(pieces))

    async def done(self) -> DecodingHash:
        """The digest, once every piece given is hashed."""
        while self._ahead:
            await self._ahead.popleft()
        return self.digest

    async def settled(self) -> None:
        """Until the thread is done with the digest, whatever happened to the body."""
        try:
            await self._stage.settled()
        finally:
            self.forget()

    def forget(self) -> None:
        """Leave the pieces not yet hashed to the thread, their errors unreported: a failed
        or abandoned body's hash is not the error to report."""
        for future in self._ahead:
            future.add_done_callback(writer.retrieve_exception)
        self._ahead.clear()


async def _drain(queue: asyncio.Queue) -> AsyncIterator[bytes]:
    """What obstore uploads: the queue's batches until _DONE, each as its pieces (on a
    machine where new pages fault dearly, a join cost the event loop more than handing
    obstore four pieces for one) unless they are many and small (a slow client's body
    comes in pieces of a few KiB, and each piece handed over costs a call from obstore's
    thread into the event loop); _ABANDON aborts the upload."""
    while True:
        item = await queue.get()
        if item is _DONE:
            return
        if item is _ABANDON:
            raise _Abandoned()
        if len(item) > PIECES_UNJOINED:
            yield b"".join(item)
            continue
        for piece in item:
            yield piece


async def _abandon(queue: asyncio.Queue, upload: asyncio.Future) -> None:
    """Make the upload abort (it takes _ABANDON next) and wait, bounded, until it has."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(_ABANDON)
    await asyncio.wait({upload}, timeout=ABORT_WAIT)
    if upload.done() and not upload.cancelled():
        upload.exception()  # retrieved: the upload's own error is not the one to report


async def _decoded(encoding: Encoding, data: bytes) -> AsyncIterator[bytes]:
    """A small compressed object's content, decoded piece by piece."""
    decoder = Decoder(encoding)
    for start in range(0, len(data), STREAM_CHUNK):
        for out in decoder.feed(data[start:start + STREAM_CHUNK]):
            yield out
    tail = decoder.finish()
    if tail:
        yield tail


def _starts_at_the_end(exc: BaseException) -> bool:
    """Whether the store refused a range because it starts at the object's end (or past it)."""
    return any(sign in str(exc) for sign in RANGE_PAST_END)


class _Prefixed:
    """A GetResult of an object whose first bytes were read already and whose rest is
    under way; read (whole, or as a stream) as the whole object."""

    def __init__(self, first: bytes, rest):
        self.first = first
        self.rest = rest
        self.meta = rest.meta  # the size is the whole object's

    async def bytes_async(self) -> bytes:
        return self.first + bytes(await self.rest.bytes_async())

    def stream(self, min_chunk_size: int) -> AsyncIterator:
        return self._stream(min_chunk_size)

    async def _stream(self, min_chunk_size: int) -> AsyncIterator:
        yield self.first
        async for chunk in self.rest.stream(min_chunk_size=min_chunk_size):
            yield chunk
