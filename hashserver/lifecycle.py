"""Signals and process faults: how a server starts, stops and survives its
own processes dying.

Main process:

- until Sanic's worker manager exists (the index is being built),
  ``SIGINT``/``SIGTERM`` end the process at once and quietly, with what it
  has made (:func:`guard_startup`);
- :class:`Supervisor` is Sanic's worker manager, fixed where Sanic 25.12.1
  hangs, gives up or fails: a stop signal that arrives while it waits for
  its workers to start, a worker that dies while serving (Sanic only marks
  it failed; here a replacement is started), workers still draining when
  Sanic stops waiting for them, and a signal sent to the whole process
  group, which ends Sanic's state manager first.

Each worker (:class:`WorkerLifecycle`):

- a stop signal drains it: ``app.ctx.stopping`` turns on (``/healthcheck``
  answers 503), it keeps accepting while requests in flight finish within
  ``--shutdown-grace``, then stops; a signal that arrives while it is still
  starting is acted upon once it serves;
- it notices the death of the main process (``kill -9``) at once, through
  the pipe multiprocessing keeps to its parent, and stops, so that the port
  is free for a new start; the last worker out ends Sanic's state manager,
  which would otherwise outlive them all.

Each connection (:class:`HeaderDeadlineMixin`): request headers must be
complete ``--header-timeout`` after their first byte.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from contextlib import suppress
from signal import Signals
from typing import Callable, NoReturn

from sanic.exceptions import RequestTimeout, ServerKilled
from sanic.http import Stage
from sanic.log import error_logger, logger
from sanic.server.protocols.http_protocol import HttpProtocol
from sanic.worker.constants import ProcessState
from sanic.worker.manager import WorkerManager
from sanic.worker.process import Worker, WorkerProcess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHILD_EXIT_WAIT = 5.0  # for Sanic's state manager to end, when the main process ends early
DRAIN_POLL = 0.05
PARENT_GONE_GRACE = 5.0  # requests in flight when the main process died have this long at most
JOIN_MARGIN = 10.0  # the main process waits this long for stopping workers, beyond their grace
RESEND_INTERVAL = 1.0  # while workers stop, the main process repeats its signal this often
HAND_OVER_WAIT = 0.01  # for Sanic to take a request start handed over, before its 408
# What touching Sanic's shared worker state raises once its manager process has ended.
STATE_MANAGER_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError, EOFError, FileNotFoundError)
STATE_MANAGER_GONE_REASON = "Sanic's state manager has ended"
# A stopping worker's entry in that state, emptied (None) or removed under Sanic's read
# (``manager.py`` 444: AttributeError, KeyError) or its next write (``process.py`` 58-61,
# ``{**None}``: TypeError).
STATE_EMPTIED = (AttributeError, TypeError, KeyError)
SERVER_PREFIX = f"{Worker.WORKER_PREFIX}-{WorkerProcess.SERVER_LABEL}-"  # Sanic's server processes' names


# ------------------------------------------------------------ main process, starting
_startup_cleanups: list[Callable[[], None]] | None = None


def guard_startup() -> None:
    """Until :func:`supervise`, ``SIGINT`` and ``SIGTERM`` end the main process
    at once (status 0).  Without this, ``SIGTERM`` would kill it without
    removing what it made, and ``SIGINT`` would print a traceback."""
    global _startup_cleanups
    if _startup_cleanups is None:
        _startup_cleanups = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_while_starting)


def on_startup_exit(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` if the main process is stopped while starting (only
    where :func:`guard_startup` is in force: a real server's main process)."""
    if _startup_cleanups is not None:
        _startup_cleanups.append(cleanup)


def _stop_while_starting(signum: int, frame) -> None:
    print(f"hashserver: {Signals(signum).name} while starting: stopped", file=sys.stderr, flush=True)
    end_main_process(0)


def end_main_process(status: int) -> NoReturn:
    """End the main process now, with what it has made and the helper processes
    Sanic has started (its state manager): before the workers exist, nothing
    else needs to be stopped, and Sanic's own way out would print tracebacks."""
    for cleanup in reversed(_startup_cleanups or []):
        with suppress(Exception):
            cleanup()
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(CHILD_EXIT_WAIT)
    os._exit(status)


def use_protocol(app, protocol: type) -> None:
    """Serve with ``protocol`` where the protocol chosen is one it extends
    (Sanic's default, or one given to ``app.prepare``).  For a
    ``main_process_start`` listener: Sanic hands the server settings to its
    workers after those listeners have run, and its command line has no
    option for a protocol class."""
    for info in app.state.server_info:
        chosen = info.settings.get("protocol") or HttpProtocol
        if issubclass(protocol, chosen):
            info.settings["protocol"] = protocol


def sanic_state_manager_pid() -> int:
    """The pid of the process that holds Sanic's shared worker state (a
    ``multiprocessing`` manager, started before our listeners run); 0 if none."""
    return next((child.pid for child in multiprocessing.active_children()
                 if child.name.startswith("SyncManager")), 0)


# ------------------------------------------------------------ main process, serving
def supervise(app) -> None:
    """For a ``main_process_ready`` listener: Sanic's worker manager exists and
    has not started any worker.  A stop signal that came meanwhile ends the
    server here; otherwise the manager becomes a :class:`Supervisor`."""
    manager = Supervisor.adopt(app.manager, app.ctx.config.shutdown_grace)
    if manager._shutting_down:  # Sanic's handler took a signal: no worker has started
        if app.ctx.main is not None:
            app.ctx.main.stop()
        end_main_process(0)
    global _startup_cleanups
    _startup_cleanups = None


class Supervisor(WorkerManager):
    """Sanic 25.12.1's worker manager, with its faults fixed.

    - A stop signal while it waits for its workers to acknowledge that they
      started: Sanic's handler sends itself a message that ``wait_for_ack``
      puts back and re-reads (``sanic/worker/manager.py`` 322-327) while the
      workers it stopped can never acknowledge, so the main process spins
      until killed.  Here the signal is held until every worker has started
      or died (so that none is stopped halfway through its startup), then
      acted upon.
    - A worker that dies while serving is only marked ``FAILED``
      (``_sync_states``, 451-454).  Here a replacement is started, at most one
      per worker every :attr:`RESTART_INTERVAL` seconds (a worker that cannot
      start does not turn into a busy loop).
    - Its state lives in a ``multiprocessing`` manager process, which a signal
      sent to the whole process group (``systemd``, ``timeout``, ``kill --
      -PGID``) ends too; Sanic then fails with a traceback wherever it next
      touches that state (``_sync_states``, ``join``).  Here that ends the
      server as a stop signal would.

    A second stop signal kills every process at once (Sanic's ``kill``).
    Sanic builds its manager itself, with no way to choose its class; the
    ``main_process_ready`` listener turns the instance into this class
    (:meth:`adopt`) before it starts any worker.
    """

    RESTART_INTERVAL = 5.0

    @classmethod
    def adopt(cls, manager: WorkerManager, grace: float) -> "Supervisor":
        manager.__class__ = cls
        manager.grace = grace
        manager._signalled = False
        manager._stop_reason = None  # a stop a signal asked for, acted upon outside its handler
        manager._serving = False
        manager._last_start = {}
        for signum in STOP_SIGNALS:  # Sanic registered the method of its own class
            signal.signal(signum, manager.shutdown_signal)
        return manager

    def shutdown_signal(self, signal, frame) -> None:
        if self._signalled:
            logger.info("Shutdown interrupted. Killing.")
            with suppress(ServerKilled):
                self.kill()
            return
        self._signalled = True
        self._stop_reason = f"Received signal {Signals(signal).name}"
        if self._serving:  # the monitor loop ends, then stops the workers (monitor)
            self.monitor_publisher.send(None)
        else:
            logger.info("%s while starting: stopping once every worker has started", self._stop_reason)

    def monitor(self) -> None:
        """Sanic's, and then the stop a signal asked for.  Not in the signal's handler:
        it runs between two steps of this thread, which may be halfway through a call
        to the state manager (``_sync_states``); a call of its own on that connection
        (stopping a worker sets its state) took the other's answer, and the main
        process died of an ``UnpicklingError`` without stopping its workers."""
        super().monitor()
        if self._stop_reason is not None:
            self._stop(self._stop_reason)

    def _stop(self, reason: str) -> None:
        """Stop every worker (gracefully: each drains), then end (:meth:`monitor`)."""
        if self._shutting_down:
            return
        logger.info("%s. Shutting down.", reason)
        self.monitor_publisher.send(None)
        self.shutdown()

    def wait_for_ack(self) -> None:
        """Sanic's, ending also when a stop was asked for and every worker has
        started or died.  Messages from workers meanwhile are kept for
        :meth:`monitor` (Sanic re-sends them to itself, re-reading them at once)."""
        misses, kept = 0, []
        while not self._acknowledged():
            if self.monitor_subscriber.poll(0.1):
                message = self.monitor_subscriber.recv()
                if message != "__TERMINATE_EARLY__":
                    kept.append(message)
                    continue
                misses = self.THRESHOLD
            misses += 1
            if misses > self.THRESHOLD:
                error_logger.error("Not all workers acknowledged a successful startup. Shutting down.")
                self.kill()
        self._serving = True
        for message in kept:
            self.monitor_publisher.send(message)
        if self._stop_reason is not None:
            self._stop(self._stop_reason)

    def _acknowledged(self) -> bool:
        """Every worker has started, or (when a stop was asked for) has started or died."""
        try:
            if self._stop_reason is None:
                return self._all_workers_ack()
            return all(not process.is_alive()
                       or self.worker_state.get(process.name, {}).get("state") == ProcessState.ACKED.name
                       for process in self._server_processes())
        except STATE_MANAGER_GONE:
            self._stop_reason = self._stop_reason or STATE_MANAGER_GONE_REASON
            return True

    def _server_processes(self) -> list[WorkerProcess]:
        return [process for process in self.transient_processes if process.name.startswith(SERVER_PREFIX)]

    def _sync_states(self) -> None:
        try:
            super()._sync_states()
            if not self._shutting_down:
                self._replace_dead_workers()
        except STATE_MANAGER_GONE:
            self._stop(STATE_MANAGER_GONE_REASON)
        except STATE_EMPTIED:
            if not self._shutting_down:
                raise

    def _replace_dead_workers(self) -> None:
        now = time.monotonic()
        for process in self._server_processes():
            if process.state not in (ProcessState.FAILED, ProcessState.COMPLETED) or process.is_alive():
                continue
            if now - self._last_start.get(process.name, 0.0) < self.RESTART_INTERVAL:
                continue
            logger.warning("Worker %s [%s] ended (%s); starting a replacement", process.name, process.pid,
                           _exit_reason(process.exitcode))
            self._last_start[process.name] = now
            process.restart()

    @staticmethod
    def _resend_stop(processes: list[WorkerProcess]) -> None:
        """Send the stop signal again.  A worker can lose the first: Sanic
        ignores both signals for a moment while it installs its handlers
        (``sanic/server/runners.py`` 165-176), and its own handler, if called
        while the ``after_server_start`` listeners run, stops a loop that the
        next ``run_forever`` starts again.  A worker that is stopping ignores it
        (:meth:`WorkerLifecycle.stop`, :meth:`WorkerLifecycle.stopping`)."""
        for process in processes:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)

    def join(self) -> None:
        """Wait for the workers while they drain, up to the grace and a margin.

        Sanic's ``join`` skips the processes it has terminated (``TERMINATED``
        ranks above ``JOINED``, ``manager.py`` 223), so its ``cleanup`` gives
        each 10 s, after which the main process shuts the listening socket
        down (``sanic/mixins/startup.py`` 1176) under workers still draining.
        Where the state manager is gone, or a process's entry in it emptied,
        Sanic's ``join`` fails on each such process in turn: each failed attempt
        has marked one more process joined.
        """
        deadline = time.monotonic() + self.grace + JOIN_MARGIN
        resend = time.monotonic() + RESEND_INTERVAL
        while (alive := [p for p in self.processes if p.is_alive()]) and time.monotonic() < deadline:
            if time.monotonic() > resend:
                self._resend_stop(alive)
                resend = time.monotonic() + RESEND_INTERVAL
            time.sleep(DRAIN_POLL)
        for _ in range(len(list(self.processes))):
            try:
                return super().join()
            except (*STATE_MANAGER_GONE, *STATE_EMPTIED):  # the process is marked joined all the same
                continue


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with suppress(ValueError):
            return f"killed by {Signals(-code).name}"
    return f"exit status {code}"


# ------------------------------------------------------------------------ workers
def in_worker_process() -> bool:
    """Whether this process is a server worker started by Sanic's manager (not
    an in-process test server, which must leave the signals alone)."""
    return os.environ.get("SANIC_WORKER_NAME", "").startswith(SERVER_PREFIX)


class WorkerLifecycle:
    """A worker's stop: on a signal, by draining; when the main process dies,
    at once.  ``connections`` is the set of the worker's open connections
    (Sanic's; the protocol puts it in ``app.ctx.connections``)."""

    def __init__(self, app, grace: float):
        self.app = app
        self.grace = grace
        self.early_signal: int | None = None
        self.parent_gone = False
        self._drain: asyncio.Task | None = None
        self._stopped = False

    @classmethod
    def begin(cls, app, grace: float) -> "WorkerLifecycle | None":
        """For ``before_server_start``: until Sanic installs its signal handlers
        (after the server has started), a stop signal is noted, not acted upon
        (by default ``SIGINT`` would raise in the middle of the startup)."""
        if not in_worker_process():
            return None
        life = cls(app, grace)
        for signum in STOP_SIGNALS:
            signal.signal(signum, life._note_signal)
        app.ctx.lifecycle = life
        return life

    def _note_signal(self, signum: int, frame) -> None:
        self.early_signal = signum

    def serving(self) -> None:
        """For ``after_server_start``: our handlers replace Sanic's (which stop
        at once), the main process is watched, and an early signal is acted upon."""
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.stop)
        parent = multiprocessing.parent_process()
        if parent is not None:
            loop.add_reader(parent.sentinel, self._parent_died, loop, parent.sentinel)
        if self.early_signal is not None:
            self.stop()

    def stop(self) -> None:
        """Drain (a repeated signal changes nothing: Ctrl-C reaches every process,
        and the main process forwards it; a second one to the main process kills).

        Except after the server was told to stop: this handler still runs only
        if the loop is still serving (Sanic's ``before_server_stop`` would have
        made the process ignore the signal).  That happens when the stop came
        while the ``after_server_start`` listeners ran: ``app.stop`` then ends
        their ``run_until_complete`` and the ``run_forever`` that follows serves
        on.  The main process repeats its signal every second while it waits
        (:meth:`Supervisor.join`), so the stop is made again."""
        if self.app.ctx.stopping:
            if self._stopped:  # the stop was lost: see below
                self.app.stop(terminate=False)
            return
        self.app.ctx.stopping = True
        logger.info("Stopping: requests in flight have %g s to finish", self.grace)
        self._drain = asyncio.get_running_loop().create_task(self._drained())

    async def _drained(self) -> None:
        """Keep serving (``/healthcheck`` answers 503, so that a balancer turns
        away) while requests are in flight, at most ``grace`` seconds; then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        connections = self.app.ctx.connections
        if connections is not None:
            while _close_after_response(connections) and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL)
        self._stop_server(max(0.0, deadline - loop.time()))

    def _parent_died(self, loop: asyncio.AbstractEventLoop, sentinel: int) -> None:
        loop.remove_reader(sentinel)
        self.parent_gone = True
        logger.warning("The main process is gone: stopping")
        self.app.ctx.stopping = True
        if self._drain is not None:
            self._drain.cancel()
        self._stop_server(min(self.grace, PARENT_GONE_GRACE))

    def _stop_server(self, grace: float) -> None:
        """Stop Sanic's server: it closes the listening socket and idle
        connections, and gives the others ``grace`` seconds."""
        if self._stopped:
            return
        self._stopped = True
        connections = self.app.ctx.connections
        if connections is not None:
            _close_after_response(connections)
            for connection in [c for c in connections if not _handling(c)]:
                connection.close()
        self.app.config.GRACEFUL_SHUTDOWN_TIMEOUT = grace
        self.app.stop(terminate=False)

    @staticmethod
    def stopping() -> None:
        """For ``before_server_stop``: Sanic has removed its signal handlers, which
        restores the defaults (``SIGINT`` raises, ``SIGTERM`` kills): the stop is
        under way, and a repeated signal must not cut it short."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def stopped(self, shared) -> None:
        """For ``after_server_stop``: if the main process died, the last worker
        out ends Sanic's state manager (which only the main process would end)."""
        if self.parent_gone and shared is not None and shared.leave(os.getpid()):
            pid = shared.sanic_manager.value if shared.sanic_manager is not None else 0
            if pid:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


def _handling(connection) -> bool:
    """Whether a request is being handled or answered on this connection (the
    hot path's included: :attr:`HotPathProtocol.answering <hashserver.hotpath.HotPathProtocol.answering>`)."""
    if getattr(connection, "answering", False):
        return True
    http = getattr(connection, "_http", None)
    return http is not None and http.stage in (Stage.HANDLER, Stage.RESPONSE, Stage.FAILED)


def _close_after_response(connections: set) -> bool:
    """Connections handling a request close after their answer (which says so,
    if not yet sent); whether there are any."""
    busy = False
    for connection in connections:
        if _handling(connection):
            close_after_answer = getattr(connection, "close_after_answer", None)
            if close_after_answer is not None:
                close_after_answer()
            else:
                connection._http.keep_alive = False
            busy = True
    return busy


# ---------------------------------------------------------------- connections
class HeaderDeadlineMixin:
    """A connection whose request headers are not complete ``request_timeout``
    (``--header-timeout``) after their first byte is answered 408 and closed.

    Sanic counts its request timeout from the last byte received
    (``HttpProtocol.data_received`` sets ``_time``; ``check_timeouts``), so a
    client that sends a header byte now and then (slow-loris) holds a
    connection, and its memory, forever.

    For a protocol class: ``class P(HeaderDeadlineMixin, SomeHttpProtocol)``
    with ``__slots__ = (..., *HeaderDeadlineMixin.SLOTS)``.  A protocol that
    holds the start of a request itself, outside Sanic's ``recv_buffer``,
    says so in :meth:`_header_pending` and hands it to Sanic in
    :meth:`_hand_over_header` (Sanic then answers the 408).  The mixin also
    puts the worker's set of connections in ``app.ctx.connections``, for
    draining on stop.
    """

    __slots__ = ()
    SLOTS = ("_header_since",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_since: float | None = None
        self.app.ctx.connections = self.connections

    def _stage(self) -> Stage:
        http = getattr(self, "_http", None)
        return Stage.IDLE if http is None else http.stage

    def _header_pending(self) -> bool:
        """Whether received bytes of a request whose headers are incomplete are held."""
        return bool(self.recv_buffer)

    def data_received(self, data: bytes) -> None:
        stage = self._stage()
        if stage is Stage.IDLE and not self._header_pending():
            self._header_since = time.monotonic()  # the first byte of a request
        elif stage is Stage.IDLE or stage is Stage.REQUEST:
            if self._header_since is None:
                self._header_since = time.monotonic()
        else:  # a body, or requests sent ahead: their own first bytes set the time
            self._header_since = None
        super().data_received(data)

    def _in_header(self) -> bool:
        stage = self._stage()
        return stage is Stage.REQUEST or (stage is Stage.IDLE and self._header_pending())

    def _hand_over_header(self) -> bool:
        """Give Sanic the start of a request held elsewhere, so that Sanic answers
        its timeout; whether there was any."""
        return False

    def check_timeouts(self) -> None:
        since = self._header_since
        if since is not None and self._task is not None and self._in_header():
            left = since + self.request_timeout - time.monotonic()
            if left <= 0:
                if self._stage() is Stage.IDLE and self._hand_over_header():
                    self._callback_check_timeouts = self.loop.call_later(HAND_OVER_WAIT, self.check_timeouts)
                else:
                    self._end_slow_header()
                return
            super().check_timeouts()
            self._check_again_within(left)
            return
        super().check_timeouts()

    def _end_slow_header(self) -> None:
        logger.debug("Request header timeout. Closing connection.")
        http = getattr(self, "_http", None)
        if http is not None:
            http.exception = RequestTimeout("Request Timeout")
        self._task.cancel()

    def _check_again_within(self, left: float) -> None:
        """Sanic checks every half of its shortest timeout: check at the deadline
        if that comes first."""
        handle = self._callback_check_timeouts
        if handle is not None and not handle.cancelled() and handle.when() - self.loop.time() > left:
            handle.cancel()
            self._callback_check_timeouts = self.loop.call_later(left + 0.01, self.check_timeouts)
