"""Prometheus metrics of all workers together.

Each process counts in plain Python numbers (:class:`Metrics`): nothing on a
request's path calls prometheus_client.  At most once a second, and at each
``/metrics`` request, a process folds what it counted into its own files in
the multiprocess directory, laid out as prometheus_client's multiprocess mode
lays them out (``counter_<pid>.db``, ``histogram_<pid>.db``,
``gauge_<mode>_<pid>.db``); ``/metrics`` reads them all with
:class:`~prometheus_client.multiprocess.MultiProcessCollector`.

The directory belongs to the server: the main process creates (or empties) it
and names it in ``PROMETHEUS_MULTIPROC_DIR`` before its workers start
(:func:`prepare_directory`); spawned workers inherit the variable
(:meth:`Metrics.for_worker`).  Totals never go backwards while the server
runs: a dead worker's counter and histogram files stay and keep counting in
the sums, while its live gauges go (:func:`mark_process_dead`, by
:func:`worker_stopped` or :func:`reap_dead_processes`).  Nothing happens when
this module is imported.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from time import perf_counter
from typing import Callable, Iterable, Iterator, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString
from sanic import Request
from sanic.response import HTTPResponse

from . import responses
from .index import IndexReader
from .index.shm import remove_orphans
from .owner import owner_tag, pid_is_dead
from .storage import BodyTooLarge, ChecksumMismatch, DiskFull, InvalidPayload, ReadOnly

__all__ = ["CONTENT_TYPE_LATEST", "ENV", "FAMILIES", "IndexFacts", "Metrics", "ROUTES", "Totals", "index_facts",
           "metrics_handler", "prepare_directory", "reap_dead_processes", "record_response", "rejection_reason",
           "remove_directory", "render", "route_label", "stamp_request", "worker_stopped"]

log = logging.getLogger("hashserver")

ENV = "PROMETHEUS_MULTIPROC_DIR"
DIRECTORY_PREFIX = "hashserver-metrics-"
FOLD_INTERVAL = 1.0  # seconds between folds of a process's counts into its files

ROUTES = ("get", "head", "put", "has", "has-now", "buffer-length", "promise", "healthcheck", "preflight",
          "metrics", "docs", "other")
REJECTIONS = ("checksum", "payload", "too-large", "disk-full", "unauthorized", "read-only")
LOOKUP_SOURCES = ("index", "directory", "disk")
INF = float("inf")
# Requests take from tens of microseconds (a small buffer from memory) to minutes (a large upload).
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, INF)
OBJECT_STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        30.0, 60.0, INF)


# ------------------------------------------------------------------ families
@dataclass(frozen=True)
class Family:
    """One metric as prometheus_client's multiprocess files hold it.

    ``mode``: a gauge's multiprocess mode (only ``live*`` ones: a gauge of a
    dead process must not linger).  ``known``: label values exported, as 0,
    before anything is counted, so that a rate over them exists from the start.
    """

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    mode: str = ""
    buckets: tuple[float, ...] = ()
    known: tuple[tuple[str, ...], ...] = ()

    @property
    def file_prefix(self) -> str:
        return f"gauge_{self.mode}" if self.kind == "gauge" else self.kind

    def samples(self, labels: tuple, value) -> Iterator[tuple[str, tuple, tuple, float]]:
        """(sample name, label names, label values, value) of one series, as the files key them."""
        if self.kind == "counter":
            yield f"{self.name}_total", self.labels, labels, value
        elif self.kind == "gauge":
            yield self.name, self.labels, labels, value
        else:
            names = (*self.labels, "le")
            for bound, count in zip(self.buckets, value[:-1], strict=True):
                yield f"{self.name}_bucket", names, (*labels, floatToGoString(bound)), count
            yield f"{self.name}_sum", self.labels, labels, value[-1]


def _counter(name: str, help: str, labels: tuple[str, ...] = (), known=((),)) -> Family:
    return Family(name, "counter", help, labels, known=tuple(known))


def _gauge(name: str, help: str, mode: str = "livemostrecent") -> Family:
    return Family(name, "gauge", help, mode=mode)


FAMILIES = (
    _counter("hashserver_requests", "Requests answered, by route and status.", ("route", "status"), ()),
    Family("hashserver_request_duration_seconds", "histogram",
           "Time from a request's headers to its response's headers, by route.", ("route",),
           buckets=REQUEST_BUCKETS),
    _counter("hashserver_sent_bytes", "Bytes of response bodies (as announced), by route.", ("route",), ()),
    _counter("hashserver_received_bytes", "Bytes of request bodies (as announced), by route.", ("route",), ()),
    _counter("hashserver_small_buffers", "Small buffers served, from this worker's memory or read from disk.",
             ("source",), (("memory",), ("disk",))),
    _counter("hashserver_verifications", "Stored files hashed to check that they hold their buffer."),
    _counter("hashserver_corruptions", "Stored files found not to hash to their name."),
    _counter("hashserver_puts", "Buffer PUTs accepted: stored, or already present.", ("outcome",),
             (("stored",), ("present",))),
    _counter("hashserver_puts_rejected", "Buffer PUTs refused, by reason.", ("reason",),
             tuple((reason,) for reason in REJECTIONS)),
    _counter("hashserver_promises", "Promises made."),
    _counter("hashserver_promises_expired", "Promises that expired before their buffer arrived."),
    _counter("hashserver_lookups", "Checksums looked up, by what answered: the index as it is, the index "
             "after a directory check, or the files on disk.", ("source",),
             tuple((source,) for source in LOOKUP_SOURCES)),
    _counter("hashserver_storage_errors", "Storage operations failed, by errno.", ("errno",), ()),
    _gauge("hashserver_storage_healthy", "1 while the storage answers its health check, 0 while it fails."),
    _gauge("hashserver_workers", "Worker processes running.", "livesum"),
    _gauge("hashserver_index_entries", "Entries of the shared index's current generation."),
    _gauge("hashserver_index_generation", "Number of the shared index's current generation."),
    _gauge("hashserver_index_age_seconds", "Seconds since the current index generation was published."),
    _counter("hashserver_object_store_requests", "Object-store calls, by operation and outcome.",
             ("operation", "outcome"), ()),
    Family("hashserver_object_store_request_duration_seconds", "histogram",
           "Latency of object-store calls, by operation.", ("operation",), buckets=OBJECT_STORE_BUCKETS),
    _counter("hashserver_local_tier_requests", "Reads of the local tier: hit or miss.", ("result",),
             (("hit",), ("miss",))),
    _counter("hashserver_local_tier_evictions", "Buffers evicted from the local tier."),
    _gauge("hashserver_local_tier_bytes", "Bytes held in the local tier."),
)


# ------------------------------------------------------------------ files
# This process's files, opened once per process and path: two MmapedDicts on
# one file would each append entries where the other has.  Every Metrics of a
# process shares them (an in-process test runs a main process and a worker in
# one), and counts are written as increments of what the file holds, so a
# restarted process that reuses a dead one's pid adds to its totals.
_open_files: dict[str, MmapedDict] = {}
_files_lock = threading.Lock()


@dataclass(frozen=True)
class _Update:
    prefix: str
    key: str
    value: float
    timestamp: float = 0.0
    increment: bool = True


def _write(directory: str, updates: list[_Update]) -> None:
    pid = os.getpid()
    with _files_lock:
        for update in updates:
            path = os.path.join(directory, f"{update.prefix}_{pid}.db")
            file = _open_files.get(path)
            if file is None:
                file = _open_files[path] = MmapedDict(path)
            value = update.value + (file.read_value(update.key)[0] if update.increment else 0.0)
            file.write_value(update.key, value, update.timestamp)


def _close_files(directory: str) -> None:
    """Close this process's files in ``directory`` (they are reopened when written again)."""
    with _files_lock:
        for path in [p for p in _open_files if os.path.dirname(p) == directory]:
            _open_files.pop(path).close()


# ------------------------------------------------------------------ one process
class Totals(NamedTuple):
    """Running totals of requests answered outside :meth:`Metrics.request` (see
    :meth:`Metrics.count_elsewhere`); ``seconds`` None: not timed."""

    route: str
    status: int
    requests: int
    sent: int = 0
    seconds: float | None = None


@dataclass(frozen=True)
class IndexFacts:
    entries: int
    generation: int
    published_at: float  # wall-clock time


class Metrics:
    """One process's counts, folded into its files in ``directory``.

    Record from the event loop's thread (or any single thread): an increment
    is a plain ``+=``.  ``directory=None`` (:meth:`unobserved`) counts but
    never writes, for storage used outside a server.
    """

    def __init__(self, directory: str | None):
        self.directory = directory
        self._values: dict[str, dict] = {
            f.name: (defaultdict(int, dict.fromkeys(f.known, 0)) if f.kind == "counter" else {}) for f in FAMILIES}
        self._written: dict[tuple, list] = {}  # (sample, label values) -> [mmap key, value written]
        self._fold_lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._index_probe: Callable[[], IndexFacts] | None = None
        self._elsewhere: list[tuple[Callable[[], Iterable[Totals]], dict]] = []
        self._requests = self._values["hashserver_requests"]
        self._durations = self._values["hashserver_request_duration_seconds"]
        self._sent = self._values["hashserver_sent_bytes"]
        self._received = self._values["hashserver_received_bytes"]

    @classmethod
    def for_worker(cls, directory: str | None = None) -> "Metrics":
        """A worker's metrics, in the directory the main process prepared
        (``PROMETHEUS_MULTIPROC_DIR``, inherited), counted as a live worker."""
        directory = directory or os.environ.get(ENV)
        if not directory:
            raise RuntimeError(f"{ENV} is not set: the main process prepares it (prepare_directory)")
        metrics = cls(directory)
        metrics.set_gauge("hashserver_workers", 1)
        metrics.fold()
        return metrics

    @classmethod
    def unobserved(cls) -> "Metrics":
        return cls(None)

    # ---------------------------------------------------------- recording
    def request(self, route: str, status: int, seconds: float | None, sent: int = 0, received: int = 0) -> None:
        """One answered request (``seconds`` None: its start is unknown, no duration)."""
        self._requests[(route, status)] += 1
        if seconds is not None:
            _observe(self._durations, REQUEST_BUCKETS, (route,), seconds)
        if sent:
            self._sent[(route,)] += sent
        if received:
            self._received[(route,)] += received

    def count_elsewhere(self, totals: Callable[[], Iterable[Totals]]) -> None:
        """Requests answered where even :meth:`request` costs too much (the hot
        path keeps its own plain counts): ``totals()`` gives their running
        totals, read at each fold.  Their durations are counted in the
        histogram at the mean of each fold's new ones (count and sum exact)."""
        self._elsewhere.append((totals, {}))

    def _pull_elsewhere(self) -> None:
        for totals, seen in self._elsewhere:
            for row in list(totals()):
                key = (row.route, row.status)
                before = seen.get(key) or Totals(row.route, row.status, 0, 0, 0.0)
                new = row.requests - before.requests
                if new <= 0:
                    continue
                seen[key] = row
                self._requests[key] += new
                if row.sent > before.sent:
                    self._sent[(row.route,)] += row.sent - before.sent
                if row.seconds is not None:
                    spent = row.seconds - (before.seconds or 0.0)
                    _observe(self._durations, REQUEST_BUCKETS, (row.route,), spent / new, new)

    def count(self, name: str, labels: tuple = (), amount: float = 1) -> None:
        """Add to a counter of :data:`FAMILIES` (the named methods below say where)."""
        self._values[name][labels] += amount

    def small_buffer(self, from_memory: bool) -> None:
        self.count("hashserver_small_buffers", ("memory" if from_memory else "disk",))

    def verified(self, correct: bool) -> None:
        """A stored file hashed to check it; ``correct``: it held its buffer."""
        self.count("hashserver_verifications")
        if not correct:
            self.count("hashserver_corruptions")

    def put(self, outcome: str) -> None:
        """A PUT accepted: ``"stored"`` or ``"present"`` (:class:`~hashserver.storage.PutOutcome` values)."""
        self.count("hashserver_puts", (outcome,))

    def put_rejected(self, reason: str) -> None:
        """A PUT refused: one of :data:`REJECTIONS` (see :func:`rejection_reason`)."""
        self.count("hashserver_puts_rejected", (reason,))

    def put_failed(self, exc: BaseException) -> None:
        """A PUT that raised: counted as rejected if ``exc`` is one of the refusals."""
        reason = rejection_reason(exc)
        if reason is not None:
            self.put_rejected(reason)

    def promised(self) -> None:
        self.count("hashserver_promises")

    def promises_expired(self, count: int = 1) -> None:
        self.count("hashserver_promises_expired", amount=count)

    def lookups(self, index: int = 0, directory: int = 0, disk: int = 0) -> None:
        """Checksums answered by the index alone, by the index after a directory's stat, or from disk."""
        counts = self._values["hashserver_lookups"]
        counts[("index",)] += index
        counts[("directory",)] += directory
        counts[("disk",)] += disk

    def storage_error(self, exc: OSError) -> None:
        self.count("hashserver_storage_errors", (errno.errorcode.get(exc.errno, str(exc.errno)),))

    def health(self, healthy: bool) -> None:
        self.set_gauge("hashserver_storage_healthy", 1 if healthy else 0)

    def object_store_call(self, operation: str, outcome: str, seconds: float) -> None:
        self.count("hashserver_object_store_requests", (operation, outcome))
        _observe(self._values["hashserver_object_store_request_duration_seconds"], OBJECT_STORE_BUCKETS,
                 (operation,), seconds)

    def local_tier(self, hit: bool) -> None:
        self.count("hashserver_local_tier_requests", ("hit" if hit else "miss",))

    def local_tier_evicted(self, count: int = 1) -> None:
        self.count("hashserver_local_tier_evictions", amount=count)

    def set_gauge(self, name: str, value: float) -> None:
        """Set a gauge (stamped now: for ``mostrecent`` gauges the latest setting wins across processes)."""
        self._values[name][()] = (value, time.time())

    def index(self, facts: IndexFacts) -> None:
        self.set_gauge("hashserver_index_entries", facts.entries)
        self.set_gauge("hashserver_index_generation", facts.generation)
        self.set_gauge("hashserver_index_age_seconds", max(0.0, time.time() - facts.published_at))

    def observe_index(self, probe: Callable[[], IndexFacts]) -> None:
        """Read the index's facts at each fold (e.g. ``lambda: index_facts(reader)``)."""
        self._index_probe = probe

    # ---------------------------------------------------------- folding
    def fold(self) -> None:
        """Write what changed since the last fold into this process's files."""
        if self.directory is None:
            return
        with self._fold_lock:
            self._pull_elsewhere()
            if self._index_probe is not None:
                try:
                    self.index(self._index_probe())
                except OSError as exc:
                    log.warning("metrics: cannot read the index's facts: %s", exc)
            updates = [update for family in FAMILIES for update in self._changes(family)]
            if updates:
                _write(self.directory, updates)

    def _changes(self, family: Family) -> Iterator[_Update]:
        """Counts as increments since the last fold; gauges whenever set again
        (a newer setting of the same value still wins over other processes')."""
        gauge = family.kind == "gauge"
        for labels, value in list(self._values[family.name].items()):
            value, timestamp = value if gauge else (value, 0.0)
            for sample, names, label_values, current in family.samples(labels, value):
                seen = self._written.get((sample, label_values))
                if seen is None:
                    key = mmap_key(family.name, sample, names, [str(v) for v in label_values], family.help)
                    seen = self._written[(sample, label_values)] = [key, None]
                state = (current, timestamp)
                if seen[1] == state:
                    continue
                amount = current if gauge or seen[1] is None else current - seen[1][0]
                seen[1] = state
                yield _Update(family.file_prefix, seen[0], amount, timestamp, not gauge)

    def start_folding(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Fold every :data:`FOLD_INTERVAL` seconds on the event loop (a worker's
        other folds happen at each ``/metrics`` request it answers)."""
        loop = loop or asyncio.get_running_loop()
        self._timer = loop.call_later(FOLD_INTERVAL, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.fold()
        except Exception:  # counting must never stop a worker
            log.exception("metrics: folding failed")
        self._timer = loop.call_later(FOLD_INTERVAL, self._tick, loop)

    def close(self) -> None:
        """A process that stops: fold the last counts, close its files, drop its live gauges."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.fold()
        if self.directory is not None:
            _close_files(self.directory)
            worker_stopped(os.getpid(), self.directory)

    def exposition(self) -> bytes:
        """The Prometheus text of every process's figures, this one's folded first."""
        if self.directory is None:
            return b""
        self.fold()
        return render(self.directory)


def _observe(histogram: dict, bounds: tuple[float, ...], labels: tuple, value: float, times: int = 1) -> None:
    """Count ``value`` in its bucket (not cumulative, as the files hold them); the sum goes last."""
    counts = histogram.get(labels)
    if counts is None:
        counts = histogram[labels] = [0] * (len(bounds) + 1)
    counts[bisect_left(bounds, value)] += times
    counts[-1] += value * times


def index_facts(reader: IndexReader) -> IndexFacts:
    """The facts of the index generation a worker reads (its file's time is when it was published)."""
    generation = reader.store.generation
    entries = len(reader.current())
    try:
        published_at = os.stat(reader.store.path(generation)).st_mtime
    except FileNotFoundError:  # replaced by a newer one meanwhile
        published_at = time.time()
    return IndexFacts(entries, generation, published_at)


# ------------------------------------------------------------------ lifecycle
SHM = "/dev/shm"
SHM_ROOM = 64 << 20  # free bytes /dev/shm needs for the figures: each process maps a file of 1 MiB and more


def _shared_memory_with_room() -> str:
    """/dev/shm, unless it is not writable or nearly full: prometheus_client
    maps its files sparsely, and a page it first touches in a full tmpfs is a
    SIGBUS, not an error.  Else the temporary directory (the page cache shares it)."""
    try:
        if os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free >= SHM_ROOM:
            return SHM
    except OSError:
        pass
    fallback = tempfile.gettempdir()
    log.warning("metrics: %s is not writable or has less than %d MiB free: figures kept in %s", SHM,
                SHM_ROOM >> 20, fallback)
    return fallback


def prepare_directory(path: str | None = None) -> str:
    """Main process, before its workers start: the multiprocess directory,
    created (``None``: a new one in shared memory, those of dead servers
    removed) or emptied of earlier figures, and named in ``PROMETHEUS_MULTIPROC_DIR``
    for the workers to inherit.  The variable is read from nowhere else: a
    value inherited from our own environment is replaced."""
    if path is None:
        base = _shared_memory_with_room()
        remove_orphans(base, DIRECTORY_PREFIX)  # of servers on this host killed with -9
        path = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{owner_tag()}-", dir=base)
    else:
        path = os.path.abspath(path)
        os.makedirs(path, exist_ok=True)
        _close_files(path)
        for old in glob.glob(os.path.join(path, "*.db")):
            os.unlink(old)
    _previous_env.setdefault(path, os.environ.get(ENV))
    os.environ[ENV] = path
    return path


_previous_env: dict[str, str | None] = {}


def remove_directory(path: str) -> None:
    """Main process, at its stop: remove the directory if :func:`prepare_directory`
    made it (a given one is kept, figures and all); give ``PROMETHEUS_MULTIPROC_DIR``
    back its earlier value."""
    _close_files(path)
    if os.path.basename(path).startswith(f"{DIRECTORY_PREFIX}{owner_tag()}-"):
        shutil.rmtree(path, ignore_errors=True)
    previous = _previous_env.pop(path, None)
    if os.environ.get(ENV) == path:
        if previous is None or not os.path.isdir(previous):  # gone with a server stopped before this one
            del os.environ[ENV]
        else:
            os.environ[ENV] = previous


def worker_stopped(pid: int, directory: str | None = None) -> None:
    """A process has stopped: its live gauges go; its counts stay in the totals."""
    mark_process_dead(pid, directory or os.environ.get(ENV))


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def reap_dead_processes(directory: str) -> list[int]:
    """Drop the live gauges of processes that died without saying so (``kill -9``);
    returns their pids.  Cheap enough for every ``/metrics`` request."""
    host = owner_tag().rpartition("-")[0]
    pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _LIVE_FILE.match(name))}
    dead = sorted(pid for pid in pids if pid_is_dead(f"{host}-{pid}"))
    for pid in dead:
        worker_stopped(pid, directory)
    return dead


def render(directory: str) -> bytes:
    """The Prometheus text of the figures folded into ``directory`` so far, by every process."""
    reap_dead_processes(directory)
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


# ------------------------------------------------------------------ HTTP side
async def metrics_handler(request: Request) -> HTTPResponse:
    """``GET /metrics``: all processes' figures (files are read in a thread)."""
    body = await asyncio.get_running_loop().run_in_executor(None, request.app.ctx.metrics.exposition)
    return HTTPResponse(body, headers=responses.NOT_CACHED, content_type=CONTENT_TYPE_LATEST)


_ROUTE_LABELS = {"get_buffer": "get", "put_buffer": "put", "has": "has", "has_now": "has-now",
                 "buffer_length": "buffer-length", "promise": "promise", "healthcheck": "healthcheck",
                 "metrics": "metrics", "metrics_handler": "metrics"}


def route_label(request: Request) -> str:
    """The ``route`` label of a request, from the name of the route it took
    (``<app>.<handler>``, ``<app>.preflight/...``, ``<app>.docs.<...>``)."""
    route = request.route
    if route is None:
        return "other"
    name = route.name.partition(".")[2]
    if name.startswith("preflight"):
        return "preflight"
    if name.startswith("docs."):
        return "docs"
    label = _ROUTE_LABELS.get(name, "other")
    return "head" if label == "get" and request.method == "HEAD" else label


async def stamp_request(request: Request) -> None:
    """Request middleware: when the request reached its handler.  Sanic runs
    request middleware again for a request whose handler raised: the first
    stamp stays."""
    if not hasattr(request.ctx, "metrics_started"):
        request.ctx.metrics_started = perf_counter()


async def record_response(request: Request, response: HTTPResponse) -> None:
    """Response middleware: count the request (it runs when the headers are
    ready, so a streamed body's bytes are those its ``Content-Length`` announces)."""
    started = getattr(request.ctx, "metrics_started", None)
    request.app.ctx.metrics.request(route_label(request), response.status,
                                    None if started is None else perf_counter() - started,
                                    _sent_bytes(request, response), _announced(request.headers))


def _sent_bytes(request: Request, response: HTTPResponse) -> int:
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    return len(response.body) if response.body else _announced(response.headers)


def _announced(headers) -> int:
    """A body's ``Content-Length`` (0 where there is none: chunked or no body)."""
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0


_REJECTION_REASONS = {ChecksumMismatch: "checksum", InvalidPayload: "payload", BodyTooLarge: "too-large",
                      DiskFull: "disk-full", ReadOnly: "read-only"}


def rejection_reason(exc: BaseException) -> str | None:
    """The :data:`REJECTIONS` reason of a storage error that refused a PUT (None for others)."""
    for kind, reason in _REJECTION_REASONS.items():
        if isinstance(exc, kind):
            return reason
    return None
