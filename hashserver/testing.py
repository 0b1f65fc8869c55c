"""Run a real hashserver in a subprocess, the way users run it: for tests and benchmarks.

A :class:`ServerProcess` is ready when the server's status file says so
(``HASHSERVER_STATUS_FILE``, which the harness points at a file of its own):
the server writes ``"status": "running"`` there once every worker has started
and ``/healthcheck`` answers, or ``"status": "failed"`` when it cannot start.
The log is for people to read, never parsed.

Each server runs in a session of its own, so that a Ctrl-C meant for the test
runner does not reach it and, as a last resort, its whole process group can be
killed.  Every started server is remembered until stopped, for :func:`stop_all`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

STATUS_ENV = "HASHSERVER_STATUS_FILE"
POLL = 0.05
FAILED_EXIT_WAIT = 10.0  # a server that reported "failed" is about to exit


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0,
                 group: bool = False, kill_wait: float = 5.0) -> int | None:
    """Signal a process started with ``start_new_session=True`` (its whole group
    if ``group``) and wait; after ``timeout``, SIGKILL its group.  Its exit status."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, kill_wait)):
        try:
            if group or signum == signal.SIGKILL:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def clean_environ(extra: dict | None = None) -> dict[str, str]:
    """This process's environment without its ``HASHSERVER_*`` settings, plus ``extra``:
    a server under test is configured by its caller only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHSERVER_")}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def console_script(name: str, module: str, python: str | None = None) -> list[str]:
    """How a user starts ``name``: the console script next to the Python, else ``python -m``."""
    python = python or sys.executable
    script = Path(python).parent / name
    return [str(script)] if script.exists() else [python, "-m", module]


class ServerProcess:
    """One server process, started from a full command line, on 127.0.0.1."""

    running: ClassVar[set[ServerProcess]] = set()

    def __init__(self, argv: list[str], *, env: dict | None = None, log_path: str | Path | None = None,
                 port: int | None = None, workers: int = 1, status_path: str | Path | None = None,
                 host: str = "127.0.0.1"):
        self.argv = [str(a) for a in argv]
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.port = port or free_port()
        self.workers = workers
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self.status_path = Path(status_path) if status_path else None
        self.proc: subprocess.Popen | None = None
        self._status: dict = {}
        self._log = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    @classmethod
    def hashserver(cls, directory, *options: str, workers: int = 1, host: str = "127.0.0.1",
                   python: str | None = None, **kw) -> ServerProcess:
        """``hashserver DIRECTORY --host H --port P --workers N OPTIONS...``."""
        port = kw.pop("port", None) or free_port()
        argv = [*console_script("hashserver", "hashserver", python), str(directory), "--host", host,
                "--port", str(port), "--workers", str(workers), *options]
        return cls(argv, port=port, workers=workers, host=host, **kw)

    @classmethod
    def sanic(cls, env: dict, *, workers: int = 2, python: str | None = None, **kw) -> ServerProcess:
        """``sanic hashserver.app`` configured by ``env`` (``HASHSERVER_*``), as in a container.

        Sanic's ``--host``/``--port`` are also given as ``HASHSERVER_HOST``/``HASHSERVER_PORT``,
        as the Dockerfile's CMD does: the server reports the port of its settings."""
        port = kw.pop("port", None) or free_port()
        argv = [*console_script("sanic", "sanic", python), "hashserver.app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--no-motd"]
        env = {**env, "HASHSERVER_HOST": "127.0.0.1", "HASHSERVER_PORT": str(port)}
        return cls(argv, env=env, port=port, workers=workers, **kw)

    # ------------------------------------------------------------------ start
    def start(self) -> ServerProcess:
        if self.proc is not None:
            raise RuntimeError(f"{self} was already started")
        env = clean_environ({**self.env, STATUS_ENV: str(self._status_file())})
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        ServerProcess.running.add(self)
        return self

    def _status_file(self) -> Path:
        """The status file, holding a JSON object as the server expects it: the caller's
        (``status_path``, or ``HASHSERVER_STATUS_FILE`` in ``env``), created if missing and
        otherwise kept as it is; else a new one beside the log, or in a directory removed
        on stop."""
        given = self.status_path or self.env.get(STATUS_ENV)
        if given:
            self.status_path = Path(given)
            if not self.status_path.exists():
                self.status_path.write_text("{}\n")
            return self.status_path
        if self.log_path is not None:
            self.status_path = self.log_path.with_name(self.log_path.name + ".status.json")
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="hashserver-status-")
            self.status_path = Path(self._scratch.name) / "status.json"
        self.status_path.write_text("{}\n")
        return self.status_path

    def wait_ready(self, timeout: float = 60) -> dict:
        """Wait until the status file says "running" (with every worker, where it lists them);
        returns its contents.  Raises RuntimeError, with the log's end, when the server
        exits, reports "failed", or is not ready within ``timeout`` seconds."""
        if self.proc is None:
            raise RuntimeError(f"{self} was not started")
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._status.get("status") == "failed":
                self._exits_within(FAILED_EXIT_WAIT)  # so that its last words are in the log
                raise RuntimeError(f"{self} reported a failed start:\n{self._tail()}")
            if self.exit_code() is not None:
                raise RuntimeError(f"{self} exited with status {self.exit_code()} before it was ready:\n"
                                   f"{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} not ready after {timeout:g} s (status {self._status}):\n"
                                   f"{self._tail()}")
            time.sleep(POLL)
        return self._status

    def _ready(self) -> bool:
        status = self._read_status()
        if status.get("status") != "running":
            return False
        workers = status.get("workers")
        return workers is None or len(workers) == self.workers

    def _read_status(self) -> dict:
        """The status file's contents; the last good ones while it cannot be read."""
        try:
            contents = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return self._status
        if isinstance(contents, dict):
            self._status = contents
        return self._status

    # ---------------------------------------------------------------- queries
    @property
    def status(self) -> dict:
        """The status file's contents as last read."""
        return self._status

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self} was not started")
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The worker processes the status file lists ([] while it lists none)."""
        return list(self._read_status().get("workers") or [])

    def answers(self, path: str = "/healthcheck", timeout: float = 1.0) -> bool:
        """Whether ``GET path`` answers 200 now."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def exit_code(self) -> int | None:
        """The main process's exit status, None while it runs.  Does not reap it, so
        that its pid (its process group's id) stays reserved until :meth:`stop`."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind Popen's back
            return self.proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def output(self) -> str:
        """The log so far ("" without a log file)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:] or "(no output)"

    def __repr__(self) -> str:
        return f"<server {' '.join(self.argv[:2])}... on port {self.port}>"

    # ------------------------------------------------------------------- stop
    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int | None:
        """Signal the main process (it stops its workers) and wait; after ``timeout``
        SIGKILL the whole process group.  Whatever is left of the group after the main
        process has gone is killed too.  Returns the exit status."""
        ServerProcess.running.discard(self)
        if self.proc is None:
            return None
        if self.exit_code() is None:
            self.proc.send_signal(sig)
            if not self._exits_within(timeout):
                print(f"{self} did not stop within {timeout:g} s after signal {sig}; killing its process "
                      f"group. Its log:\n{self._tail(3000)}", file=sys.stderr)
        if self.proc.returncode is None:  # not reaped: the group id is still ours
            self._kill_group()
            self.proc.wait(timeout)
        self._close()
        return self.proc.returncode

    def _exits_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.exit_code() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _close(self) -> None:
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every server started and not yet stopped (after an error or an interrupt)."""
    for server in list(ServerProcess.running):
        server.stop()
