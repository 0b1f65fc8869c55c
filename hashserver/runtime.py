"""Assembling a server: the main process's parts, and each worker's.

The main process cleans up after dead writers, builds and publishes the
index and keeps it fresh, reports to the status file, and watches for
inactivity.  Each worker opens its storage over the published index.  What
the main process shares with its workers lives in shared memory
(:class:`Shared`), the only state that crosses processes.  Sanic's
listeners (:mod:`hashserver.server`) call these few functions; an in-process
test calls the same ones (:func:`attach_main`), so it runs the same assembly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

from . import lifecycle
from .config import Config
from .directory import DirectoryStore
from .index import GenerationStore, IndexPublisher, IndexReader
from .integrity import check_hash_algorithm
from .launcher import InactivityWatch, StatusFile
from .layout import SearchPath
from .metrics import Metrics, index_facts, prepare_directory, remove_directory
from .storage import Storage
from .tokens import Guard
from .writer import remove_leftovers, write_prefix_marker

log = logging.getLogger("hashserver")

MAX_WORKER_SLOTS = 1024


def configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass
class MainProcess:
    """The main process's parts: the published index and its publisher."""

    config: Config
    generations: GenerationStore
    publisher: IndexPublisher
    build_seconds: float
    metrics_dir: str  # prometheus_client's multiprocess directory, shared with the workers

    @classmethod
    def start(cls, config: Config) -> "MainProcess":
        """Clean up, build and publish the index, check the hash algorithm.

        Raises :class:`ConfigError` (nothing left behind) when the buffers
        are named by another algorithm than the configured one.
        """
        configure_logging()
        search_path = SearchPath.from_config(config)
        if config.writable:
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
        if config.writable and config.write_token_file is None and not config.loopback_only:
            log.warning("writable on %s without --write-token-file: anyone who reaches it can write",
                        config.host)
        return cls(config, generations, publisher, elapsed, prepare_directory(None))

    def index_facts(self) -> dict:
        """What the status file reports of the index (read by ``python -m bench``)."""
        return {"entries": len(self.publisher.data), "build_seconds": round(self.build_seconds, 4)}

    def stop(self) -> None:
        self.publisher.stop()
        self.generations.remove()
        remove_directory(self.metrics_dir)


@dataclass
class Shared:
    """What the main process shares with its workers, in shared memory."""

    index_directory: Any  # multiprocessing RawArray of chars
    ready: Any  # multiprocessing Array of worker pids, 0 where free
    last_request: Any = None  # multiprocessing RawValue: monotonic time of the last request
    sanic_manager: Any = None  # multiprocessing RawValue: pid of Sanic's state manager, 0 if none

    @classmethod
    def create(cls, main: MainProcess) -> "Shared":
        return cls(
            multiprocessing.RawArray("c", main.generations.directory.encode()),
            multiprocessing.Array("q", MAX_WORKER_SLOTS),
            multiprocessing.RawValue("d", time.monotonic()) if main.config.timeout else None,
            multiprocessing.RawValue("q", lifecycle.sanic_state_manager_pid()),
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
    if shared.last_request is not None:
        app.shared_ctx.last_request = shared.last_request
        InactivityWatch(main.config.timeout, shared.last_request).start()
    if main.config.status_file:
        StatusFile(main.config.status_file).report_running_when_ready(
            host, port, lambda: shared.ready_workers(max(1, workers)), {"index": main.index_facts()},
            tls=main.config.tls_cert is not None)


def shared_of(app) -> Shared:
    """In a worker: what the main process shared (see :func:`attach_main`)."""
    ctx = app.shared_ctx
    return Shared(ctx.index_directory, ctx.ready, getattr(ctx, "last_request", None),
                  getattr(ctx, "sanic_manager", None))


def open_storage(config: Config, shared: Shared, metrics: Metrics | None = None) -> Storage:
    """A worker's storage over the index the main process publishes."""
    reader = IndexReader(GenerationStore(shared.index_directory.value.decode()))
    metrics = metrics or Metrics.unobserved()
    metrics.observe_index(lambda: index_facts(reader))
    return DirectoryStore.from_config(config, reader, metrics)
