"""The Sanic application: its settings, its routes, and the listeners that
assemble each process (:mod:`hashserver.runtime`)."""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

from sanic import Sanic

from . import access_log, lifecycle, routes
from .bodyreader import BodyWindowMixin
from .config import Config, ConfigError
from .hotpath import HotPathProtocol
from .launcher import StatusFile
from .lifecycle import HeaderDeadlineMixin, WorkerLifecycle
from .metrics import Metrics
from .runtime import AppContext, MainProcess, attach_main, open_storage, resolve_config, shared_of
from .tokens import Guard


class ServerProtocol(HeaderDeadlineMixin, BodyWindowMixin, HotPathProtocol):
    """Every worker's protocol: the hot path's, with the request-header deadline
    (``--header-timeout`` from a request's first byte) and the connections known
    for draining (:mod:`hashserver.lifecycle`), reading a PUT's body ahead of its
    reader (:mod:`hashserver.bodyreader`).  With the hot path off, Sanic's
    protocol with the deadline and the body's window."""

    __slots__ = (*HeaderDeadlineMixin.SLOTS, *BodyWindowMixin.SLOTS)

    def _header_pending(self) -> bool:
        return bool(self._pending) or super()._header_pending()

    def _hand_over_header(self) -> bool:
        if not self._pending:
            return False
        self.hand_over_pending()
        return True


def create_app(config: Config | None = None, name: str = "hashserver") -> Sanic:
    """A hashserver app.  With ``config=None`` it is configured from the
    environment (``sanic hashserver.app``); a bad setting there is reported
    in one line when the server starts."""
    app = Sanic(name, ctx=AppContext(given_config=config))
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.KEEP_ALIVE_TIMEOUT = 75
    known = config if config is not None else _env_config()
    routes.register(app, stamp_activity=known is None or bool(known.timeout))
    if known is not None and known.access_log:
        access_log.register(app)
    app.main_process_start(start_main)
    app.main_process_ready(supervise_workers)
    app.main_process_stop(stop_main)
    app.before_server_start(open_worker)
    app.after_server_start(worker_ready)
    app.before_server_stop(stop_worker)
    app.after_server_stop(close_worker)
    return app


def _env_config() -> Config | None:
    try:
        return Config.from_env()
    except ConfigError:
        return None  # said in one line by start_main


def config_or_exit(app: Sanic) -> Config:
    try:
        return resolve_config(app.ctx)
    except ConfigError as exc:
        exit_at_startup(str(exc))


def exit_at_startup(message: str, config: Config | None = None) -> NoReturn:
    """End a server that cannot start with one line and status 2.

    Sanic turns an exception in a main-process listener into a traceback (and,
    in 25.12, a second one of its own), so the process ends here instead, with
    the helper processes Sanic has already started.
    """
    print(f"hashserver: {message}", file=sys.stderr, flush=True)
    if config is not None and config.status_file:
        StatusFile(config.status_file).failed()
    lifecycle.end_main_process(2)


async def start_main(app: Sanic) -> None:
    lifecycle.guard_startup()
    lifecycle.use_protocol(app, ServerProtocol)
    config = config_or_exit(app)
    try:
        if config.status_file:
            StatusFile(config.status_file).wait()
        main = MainProcess.start(config)
    except ConfigError as exc:
        exit_at_startup(str(exc), config)
    attach_main(app, main, app.state.host or config.host, app.state.port or config.port, app.state.workers)


async def supervise_workers(app: Sanic) -> None:
    lifecycle.supervise(app)


async def stop_main(app: Sanic) -> None:
    if app.ctx.main is not None:
        app.ctx.main.stop()


async def open_worker(app: Sanic) -> None:
    config = config_or_exit(app)
    WorkerLifecycle.begin(app, config.shutdown_grace)
    app.config.REQUEST_MAX_SIZE = config.max_body_size
    app.config.update(proxy_settings(config))
    app.config.update(timeouts(config))
    app.ctx.shared = shared_of(app)
    app.ctx.metrics = Metrics.for_worker()
    app.ctx.storage = open_storage(config, app.ctx.shared, app.ctx.metrics)
    app.ctx.guard = Guard.from_files(config.write_token_file, config.read_token_file)


def timeouts(config: Config) -> dict:
    """Sanic's timeouts, from ours.  Sanic's response timeout counts from a
    connection's last activity: it must outlast every wait of ours, which
    end with an answer of their own."""
    return {"KEEP_ALIVE_TIMEOUT": config.keep_alive_timeout, "REQUEST_TIMEOUT": config.header_timeout,
            "GRACEFUL_SHUTDOWN_TIMEOUT": config.shutdown_grace,
            "RESPONSE_TIMEOUT": max(60.0, 2 * max(config.wait_timeout, config.body_idle_timeout))}


def proxy_settings(config: Config) -> dict:
    """Sanic's settings for trusting forwarded client addresses, as configured."""
    settings = {"PROXIES_COUNT": config.proxies_count, "REAL_IP_HEADER": config.real_ip_header,
                "FORWARDED_SECRET": config.forwarded_secret}
    return {key: value for key, value in settings.items() if value is not None}


async def worker_ready(app: Sanic) -> None:
    # What start-up built lives as long as the worker; moved out of the cyclic
    # collector's generations, it is no longer traversed by each collection
    # (2.8-6% of a worker's samples under cold GETs, py-spy).
    gc.collect()  # start-up's own garbage first: frozen, it would never be freed
    gc.freeze()
    app.ctx.metrics.start_folding()
    app.ctx.shared.acknowledge(os.getpid())
    if app.ctx.lifecycle is not None:
        app.ctx.lifecycle.serving()


async def stop_worker(app: Sanic) -> None:
    if app.ctx.lifecycle is not None:
        app.ctx.lifecycle.stopping()


async def close_worker(app: Sanic) -> None:
    app.ctx.storage.close()
    app.ctx.metrics.close()
    if app.ctx.lifecycle is not None:
        app.ctx.lifecycle.stopped(app.ctx.shared)
