"""Assembling a server: the main process's parts, and each worker's.

The main process cleans up after dead writers, builds and publishes the
index and keeps it fresh, reports to the status file, and watches for
inactivity.  For an ``s3://`` store it first checks the bucket, and the
index is that of the local cache tier, whose size the main process bounds
(:mod:`hashserver.eviction`).  Each worker opens its storage over the published index.  What
the main process shares with its workers lives in shared memory
(:class:`Shared`), the only state that crosses processes.  Sanic's
listeners (:mod:`hashserver.server`) call these few functions; an in-process
test calls the same ones (:func:`attach_main`), so it runs the same assembly.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from . import lifecycle
from .config import Config, ConfigError, endpoint_host
from .directory import DirectoryStore
from .files import write_small_file
from .index import GenerationStore, IndexPublisher, IndexReader
from .integrity import SAMPLE, SAMPLE_MAX_BYTES, check_hash_algorithm, check_sample
from .launcher import InactivityWatch, StatusFile, listening_url, when_ready
from .layout import FLAT_OVER_PREFIX, PREFIX_MARKER, SearchPath, temp_path
from .metrics import Metrics, index_facts, prepare_directory, remove_directory
from .promises import Promises
from .storage import Storage, StorageUnavailable
from .tokens import Guard
from .writer import remove_leftovers, write_prefix_marker

log = logging.getLogger("hashserver")

MAX_WORKER_SLOTS = 1024
SWEEPER_STOP_WAIT = 30.0  # seconds a stop waits for a sweep under way (its calls are bounded)
TIER_MARKER = ".HASHSERVER_TIER"  # in a --cache-dir: the store it is the local tier of (claim_tier)
PRIVATE_TIER_PREFIX = "hashserver-tier-"  # + main pid: the empty tier of --cache-size 0, in the temp dir


def configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass
class MainProcess:
    """The main process's parts: the published index and its publisher (and
    for an ``s3://`` store, the local tier and its evictor)."""

    config: Config
    generations: GenerationStore
    publisher: IndexPublisher
    build_seconds: float
    metrics_dir: str  # prometheus_client's multiprocess directory, shared with the workers
    tier: "LocalTier | None" = None
    metrics: Metrics | None = None  # the main process's own counts (expired promises, evictions)
    sweeper: "BucketSweeper | None" = None  # a writable s3:// store's

    @classmethod
    def start(cls, config: Config) -> "MainProcess":
        """Clean up, build and publish the index, check the hash algorithm.

        Raises :class:`ConfigError` (nothing left behind) when the buffers
        are named by another algorithm than the configured one, and for an
        ``s3://`` store when the bucket is missing or refuses the credentials.
        """
        configure_logging()
        raise_open_files_limit()
        tier = LocalTier.prepare(config) if config.object_store else None
        try:
            main = cls._index(config, tier.config if tier else config)
        except BaseException:
            if tier is not None:
                tier.remove()
            raise
        main.tier, main.metrics = tier, Metrics(main.metrics_dir)
        if tier is not None:
            tier.added = multiprocessing.Value("q", 0)  # (a semaphore: made once no startup error can follow)
            if config.writable:
                abort_idle_uploads(config, main.metrics)
                main.sweeper = BucketSweeper(config, main.metrics)
                main.sweeper.start()
            tier.start_evictor(main.metrics)
        elif config.writable:
            main.publisher.expire_promises(Promises(main.publisher.search_path), main.metrics)
        if config.writable and config.write_token_file is None and not config.loopback_only:
            log.warning("writable on %s without --write-token-file: anyone who reaches it can write",
                        config.host)
        return main

    @classmethod
    def _index(cls, config: Config, directory: Config) -> "MainProcess":
        """Clean up after dead writers of ``directory`` (the buffer directory,
        or the local tier), then build and publish its index."""
        search_path = SearchPath.from_config(directory)
        if directory.layout == "flat" and os.path.exists(os.path.join(search_path.main.root, PREFIX_MARKER)):
            log.warning(FLAT_OVER_PREFIX, search_path.main.root)
        if directory.writable:
            write_prefix_marker(search_path)
            removed = remove_leftovers(search_path, config.lock_timeout)
            if removed:
                log.info("removed %d leftovers of interrupted writers", removed)
        generations = GenerationStore.create()
        lifecycle.on_startup_exit(generations.remove)
        publisher = IndexPublisher(search_path, generations)
        try:
            elapsed = publisher.build()
            check_hash_algorithm(publisher.data, search_path, config.hash_algorithm,
                                 config.name("hash_algorithm"))
        except BaseException:
            generations.remove()
            raise
        publisher.log_built(elapsed)
        publisher.start()
        return cls(config, generations, publisher, elapsed, prepare_directory(None))

    def index_facts(self) -> dict:
        """What the status file reports of the index (read by ``python -m bench``)."""
        return {"entries": len(self.publisher.data), "build_seconds": round(self.build_seconds, 4)}

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.tier is not None:
            self.tier.stop()
        self.publisher.stop()
        self.generations.remove()
        if self.metrics is not None:
            self.metrics.close()
        remove_directory(self.metrics_dir)


def raise_open_files_limit() -> None:
    """The soft limit of open files up to the hard one, for this process and the
    workers it starts (as nginx's worker_rlimit_nofile): each connection of a client
    or to an object store is a descriptor, and the usual soft limit of services,
    1024, is reached by a few hundred of each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # not a value setrlimit takes: the kernel's own bound is
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            return
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError) as exc:
        log.info("open files limit left at %d: %s", soft, exc)


def tier_config(config: Config, directory: str) -> Config:
    """The local tier of an ``s3://`` store as a buffer directory: always
    writable (a read-only server fills it too), in the prefix layout, with
    the extra directories searched after it."""
    return replace(config, directory=directory, layout="prefix", writable=True)


def object_store_class(config: Config):
    """:class:`hashserver.objectstore.ObjectStore`, imported only for an
    ``s3://`` store (its client library is the optional ``s3`` extra)."""
    try:
        from .objectstore import ObjectStore
    except ImportError as exc:
        raise ConfigError(f"{config.name('directory')}={config.directory!r}: an S3 store needs the s3 "
                          f"extra (pip install 'hashserver-sanic[s3]'): {exc}") from None
    return ObjectStore


def check_object_store(config: Config) -> None:
    """At startup: the bucket exists and takes the credentials, and its buffers are
    named by the configured hash algorithm (else :class:`ConfigError`)."""
    async def check(store) -> None:
        await store.check()
        try:
            sample = await store.sample(SAMPLE, SAMPLE_MAX_BYTES)
        except StorageUnavailable as exc:
            log.warning("the hash algorithm of the buffers in %s not checked: %s", store.url, exc)
            return
        check_sample(sample, config.hash_algorithm, config.name("hash_algorithm"), store.url)

    _with_object_store(config, None, check)


def abort_idle_uploads(config: Config, metrics: Metrics, idle: float | None = None) -> None:
    """At the start of a writable server on a bucket, once its metrics are kept (and then
    every ``--lock-timeout``: :class:`BucketSweeper`): abort the multipart uploads of
    buffers that writers left idle for more than ``idle`` s (``--lock-timeout``)."""
    idle = config.lock_timeout if idle is None else idle
    _with_object_store(config, metrics, lambda store: abort_stale_uploads(store, idle))
    metrics.fold()  # in /metrics from the first answer (with --cache-size 0 no evictor folds them)


class BucketSweeper(threading.Thread):
    """Every ``--lock-timeout`` while the server runs:

    - the same abort: a writer whose abort could not reach the store (it was down, or
      cut off), or whose upload the store began only after the writer had given up on
      it (so it never learned its id), leaves an incomplete upload that no writer will
      abort.  These take uploads idle for twice ``--lock-timeout``: a part sent at the
      lowest rate accepted (``--min-body-rate``) may take longer than ``--lock-timeout``
      (8 MiB at 64 KiB/s: 128 s), and a sweep runs at any moment, not once at a start;
    - the removal of lapsed promises (:meth:`ObjectStore.remove_lapsed_promises`),
      counted as expired unless their buffer arrived, as a directory server's index
      thread removes its lapsed promise files.  Every writable host sweeps: a promise
      two hosts remove at once may be counted by both."""

    def __init__(self, config: Config, metrics: Metrics):
        super().__init__(name="hashserver-bucket-sweeper", daemon=True)
        self.config = config
        self.metrics = metrics
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.config.lock_timeout):
            try:
                abort_idle_uploads(self.config, self.metrics, 2 * self.config.lock_timeout)
            except Exception as exc:  # a store that cannot even be made now: the next round
                log.warning("stale uploads not aborted: %s", exc)
            try:
                _with_object_store(self.config, self.metrics, remove_lapsed_promises)
                self.metrics.fold()
            except Exception as exc:
                log.warning("lapsed promises not removed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        self.join(SWEEPER_STOP_WAIT)


def _with_object_store(config: Config, metrics: Metrics | None, work: Callable[[Any], Awaitable[None]]) -> None:
    """``work(store)`` on a store of its own, in a thread with its own event loop:
    Sanic's main process calls :meth:`MainProcess.start` from its running loop."""
    store_class = object_store_class(config)

    async def run() -> None:
        store = store_class.from_config(config, metrics)
        try:
            await work(store)
        finally:
            store.close()

    with ThreadPoolExecutor(1, thread_name_prefix="hashserver-s3-check") as pool:
        pool.submit(asyncio.run, run()).result()


async def remove_lapsed_promises(store) -> None:
    """Lapsed promises cost storage, not correctness: readers do not count them."""
    try:
        expired = await store.remove_lapsed_promises()
    except StorageUnavailable as exc:
        log.warning("lapsed promises not removed: %s", exc)
        return
    if expired:
        log.info("removed lapsed promises, %d of them expired (their buffer never came)", expired)


async def abort_stale_uploads(store, older_than: float) -> None:
    """Incomplete uploads of interrupted writers cost storage, not correctness:
    when they cannot be listed the server starts all the same (and says so)."""
    try:
        aborted = await store.abort_stale_uploads(older_than)
    except StorageUnavailable as exc:
        log.warning("stale uploads not aborted: %s", exc)
        return
    if aborted:
        log.info("aborted %d incomplete uploads of interrupted writers", aborted)


@dataclass
class LocalTier:
    """The local cache tier of an ``s3://`` store, in the main process: its
    directory (``--cache-dir``; with ``--cache-size 0`` a private empty one,
    removed at the stop) and the evictor that bounds it."""

    config: Config  # the tier as a buffer directory (tier_config)
    private: bool  # a temporary directory of this server's
    added: Any = None  # multiprocessing Value: bytes the workers stored in the tier (once the tier is indexed)
    recency: Any = None  # eviction.Recency: the workers' answers from the tier, with --cache-size > 0
    evictor: Any = None  # eviction.TierEvictor, with --cache-size > 0

    @classmethod
    def prepare(cls, config: Config) -> "LocalTier":
        check_object_store(config)
        private = config.cache_size == 0
        if private:
            directory = tempfile.mkdtemp(prefix=f"{PRIVATE_TIER_PREFIX}{os.getpid()}-")
        else:
            directory = config.cache_dir
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{config.name('cache_dir')}={directory!r}: cannot create it: "
                                  f"{exc.strerror or exc}") from None
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ConfigError(f"{config.name('cache_dir')}={directory!r}: the local tier must be writable, "
                                  f"and this directory is not")
            claim_tier(config, directory)
        tier = cls(tier_config(config, directory), private)
        if not private:
            from .eviction import Recency

            tier.recency = Recency.create(config.cache_size)
        lifecycle.on_startup_exit(tier.remove)
        return tier

    def start_evictor(self, metrics: Metrics) -> None:
        if self.private:
            return
        from .eviction import TierEvictor

        self.evictor = TierEvictor(SearchPath.from_config(self.config).main, self.config.cache_size,
                                   self.added, self.recency, metrics)
        self.evictor.start()

    def stop(self) -> None:
        if self.evictor is not None:
            self.evictor.stop()
        self.remove()

    def remove(self) -> None:
        if self.private:
            shutil.rmtree(self.config.directory, ignore_errors=True)


def tier_owner(config: Config) -> str:
    """The store a local tier caches, as its marker names it: the bucket and prefix, and
    the endpoint's host where one is given (the default: AWS)."""
    endpoint = config.s3_endpoint
    host = endpoint_host(endpoint) if endpoint else "the default endpoint"
    return f"{config.directory} at {host}"


def claim_tier(config: Config, directory: str) -> None:
    """Mark ``directory`` as the local tier of this server's store, or refuse it if it is
    another store's: a tier answers "present" for what it holds, which another bucket (or
    prefix) may not hold.  A tier without a marker (the first start, or an earlier
    version's) is claimed as it is."""
    owner = tier_owner(config)
    marker = os.path.join(directory, TIER_MARKER)
    try:
        with open(marker, encoding="utf-8", errors="replace") as f:
            claimed = f.read().strip()
    except FileNotFoundError:
        write_small_file(marker, temp_path(directory, TIER_MARKER.lstrip(".")), f"{owner}\n".encode())
        return
    except OSError as exc:
        raise ConfigError(f"{config.name('cache_dir')}={directory!r}: cannot read {TIER_MARKER}: "
                          f"{exc.strerror or exc}") from None
    if claimed != owner:
        raise ConfigError(f"{config.name('cache_dir')}={directory!r} is the local tier of {claimed}, not of "
                          f"{owner}: each bucket and prefix needs a tier of its own (or remove that directory)")


@dataclass
class Shared:
    """What the main process shares with its workers, in shared memory."""

    index_directory: Any  # multiprocessing RawArray of chars
    ready: Any  # multiprocessing Array of worker pids, 0 where free
    last_request: Any = None  # multiprocessing RawValue: monotonic time of the last request
    sanic_manager: Any = None  # multiprocessing RawValue: pid of Sanic's state manager, 0 if none
    tier_directory: Any = None  # multiprocessing RawArray of chars: the local tier (s3:// stores)
    tier_added: Any = None  # multiprocessing Value: bytes stored in the local tier (LocalTier.added)
    tier_recency: Any = None  # multiprocessing RawArray: the table of eviction.Recency, if any

    @classmethod
    def create(cls, main: MainProcess) -> "Shared":
        tier = main.tier
        return cls(
            multiprocessing.RawArray("c", main.generations.directory.encode()),
            multiprocessing.Array("q", MAX_WORKER_SLOTS),
            multiprocessing.RawValue("d", time.monotonic()) if main.config.timeout else None,
            multiprocessing.RawValue("q", lifecycle.sanic_state_manager_pid()),
            multiprocessing.RawArray("c", tier.config.directory.encode()) if tier else None,
            tier.added if tier else None,
            tier.recency.table if tier and tier.recency else None,
        )

    def acknowledge(self, pid: int) -> None:
        """A worker is serving (a restarted one takes the slot of a dead one).
        With ``--timeout``, time without requests counts from here: a slow
        start is not idleness."""
        if self.last_request is not None:
            self.last_request.value = time.monotonic()
        with self.ready.get_lock():
            for slot, value in enumerate(self.ready):
                if value == 0 or not _alive(value):
                    self.ready[slot] = pid
                    return

    def leave(self, pid: int) -> bool:
        """A worker is ending; True if no other worker is alive (it was the last)."""
        with self.ready.get_lock():
            others = False
            for slot, value in enumerate(self.ready):
                if value == pid:
                    self.ready[slot] = 0
                elif value and _alive(value):
                    others = True
            return not others

    def ready_workers(self, expected: int) -> list[int] | None:
        """The pids of the serving workers once there are ``expected`` of them."""
        with self.ready.get_lock():
            pids = [pid for pid in self.ready if pid and _alive(pid)]
        return pids if len(pids) >= expected else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass
class AppContext:
    """``app.ctx``: the given settings, and what each process has assembled."""

    given_config: Config | None = None  # None: from HASHSERVER_* when the server starts
    config: Config | None = None
    main: MainProcess | None = None  # in the main process
    shared: Shared | None = None
    storage: Storage | None = None  # in each worker
    metrics: Metrics | None = None  # in each worker
    guard: Guard | None = None  # in each worker, when token files are given
    stopping: bool = False  # in each worker, from the start of its shutdown: /healthcheck answers 503
    connections: set | None = None  # in each worker: its open connections (set by the protocol)
    lifecycle: Any = None  # in each worker: its lifecycle.WorkerLifecycle


def resolve_config(ctx: AppContext) -> Config:
    """The Config given to the app, else the one the environment describes
    (raises :class:`ConfigError`)."""
    if ctx.config is None:
        ctx.config = ctx.given_config if ctx.given_config is not None else Config.from_env()
    return ctx.config


def attach_main(app, main: MainProcess, host: str, port: int, workers: int) -> None:
    """Share the main process's index with the workers to come, and start
    the status report and the inactivity watch."""
    shared = Shared.create(main)
    app.ctx.main, app.ctx.shared = main, shared
    app.shared_ctx.index_directory = shared.index_directory
    app.shared_ctx.ready = shared.ready
    app.shared_ctx.sanic_manager = shared.sanic_manager
    if shared.tier_directory is not None:
        app.shared_ctx.tier_directory = shared.tier_directory
        app.shared_ctx.tier_added = shared.tier_added
    if shared.tier_recency is not None:
        app.shared_ctx.tier_recency = shared.tier_recency
    if shared.last_request is not None:
        app.shared_ctx.last_request = shared.last_request
        InactivityWatch(main.config.timeout, shared.last_request).start()
    tls = main.config.tls_cert is not None
    when_ready(lambda: shared.ready_workers(max(1, workers)),
               lambda pids: log.info("serving %s on %s (%d worker%s)", main.config.directory,
                                     listening_url(host, port, tls), len(pids), "" if len(pids) == 1 else "s"))
    if main.config.status_file:
        StatusFile(main.config.status_file).report_running_when_ready(
            host, port, lambda: shared.ready_workers(max(1, workers)), {"index": main.index_facts()},
            tls=main.config.tls_cert is not None)


def shared_of(app) -> Shared:
    """In a worker: what the main process shared (see :func:`attach_main`)."""
    ctx = app.shared_ctx
    return Shared(ctx.index_directory, ctx.ready, getattr(ctx, "last_request", None),
                  getattr(ctx, "sanic_manager", None), getattr(ctx, "tier_directory", None),
                  getattr(ctx, "tier_added", None), getattr(ctx, "tier_recency", None))


def open_storage(config: Config, shared: Shared, metrics: Metrics | None = None) -> Storage:
    """A worker's storage over the index the main process publishes: the
    buffer directory; or for an ``s3://`` store, the bucket behind the local
    tier (the bare bucket with ``--cache-size 0`` and no extra directories)."""
    reader = IndexReader(GenerationStore(shared.index_directory.value.decode()))
    metrics = metrics or Metrics.unobserved()
    metrics.observe_index(lambda: index_facts(reader))
    if not config.object_store:
        return DirectoryStore.from_config(config, reader, metrics)
    back = object_store_class(config).from_config(config, metrics)
    if config.cache_size == 0 and not config.extra_dirs:
        return back
    from .eviction import Recency
    from .tiered import TieredStore

    local = DirectoryStore.from_config(tier_config(config, shared.tier_directory.value.decode()), reader, metrics)
    added = shared.tier_added

    def stored(size: int) -> None:
        with added.get_lock():
            added.value += size

    recency = Recency(shared.tier_recency) if shared.tier_recency is not None else None
    return TieredStore(local, back, metrics, fill=config.cache_size > 0, stored=stored, recency=recency)
