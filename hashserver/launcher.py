"""What Seamless's launcher needs: a port picked from a range, a status file
that reports the port and whether the server runs, and an exit after a time
without requests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from typing import Callable

from .config import ConfigError

STATUS_FILE_WAIT = 20.0  # the launcher writes the file just after starting the server
POLL = 0.1
WORKERS_POLL = 0.5


def pick_free_port(host: str, start: int, end: int) -> int:
    """A random free port in ``start..end`` (inclusive)."""
    if not (0 < start <= end < 65536):
        raise ConfigError(f"--port-range={start} {end}: need 1 <= START <= END <= 65535")
    ports = list(range(start, end + 1))
    random.shuffle(ports)
    for port in ports:
        try:
            with socket.create_server((host, port)):
                return port
        except OSError:
            continue
    raise ConfigError(f"--port-range={start} {end}: no free port in that range on {host}")


class StatusFile:
    """The launcher's JSON status file: read, then rewritten atomically with
    our keys added and every other key kept."""

    def __init__(self, path: str):
        self.path = path

    def wait(self, timeout: float = STATUS_FILE_WAIT) -> dict:
        """Wait for the file to exist and hold a JSON object."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.path, encoding="utf-8") as f:
                    contents = json.load(f)
                if isinstance(contents, dict):
                    return contents
                problem = "does not hold a JSON object"
            except FileNotFoundError:
                problem = "does not exist"
            except (json.JSONDecodeError, UnicodeDecodeError):
                problem = "is not valid JSON"
            if time.monotonic() >= deadline:
                raise ConfigError(f"--status-file={self.path!r}: {problem} after {timeout:g} s")
            time.sleep(POLL)

    def update(self, **values) -> None:
        try:
            contents = self.wait(timeout=0)
        except ConfigError:
            contents = {}
        contents.update(values)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(contents, f)
            f.write("\n")
        os.replace(tmp, self.path)

    def failed(self) -> None:
        try:
            self.update(status="failed")
        except OSError as exc:
            print(f"hashserver: cannot write the status file: {exc}", file=sys.stderr)

    def report_running_when_ready(self, host: str, port: int, ready_workers: Callable[[], list[int] | None],
                                  facts: dict, tls: bool = False, timeout: float = 120.0) -> None:
        """In a thread: once every worker has acknowledged (``ready_workers``
        gives their pids) and /healthcheck answers, write the port, ``"running"``,
        the pids and ``facts``; ``"failed"`` if that does not happen in time.
        Then keep ``"workers"`` up to date when a worker is replaced."""

        def running(workers: list[int]) -> None:
            self.update(port=port, status="running", pid=os.getpid(), workers=workers, **facts)
            self._follow_workers(ready_workers, workers)

        when_ready(ready_workers, running, self.failed, timeout, probe=lambda: _answers(host, port, tls))

    def _follow_workers(self, ready_workers: Callable[[], list[int] | None], reported: list[int]) -> None:
        """For the server's life: rewrite ``"workers"`` once a replacement for a
        dead worker serves (while one is missing, the last full list stays)."""
        while True:
            time.sleep(WORKERS_POLL)
            workers = ready_workers()
            if workers is not None and sorted(workers) != sorted(reported):
                try:
                    self.update(workers=workers)
                except OSError:
                    continue
                reported = workers


def when_ready(ready_workers: Callable[[], list[int] | None], then: Callable[[list[int]], None],
               otherwise: Callable[[], None] | None = None, timeout: float = 120.0,
               probe: Callable[[], bool] | None = None) -> None:
    """In a thread: ``then(pids)`` once every worker has acknowledged (and ``probe()``
    holds, if given); ``otherwise()`` if that does not happen within ``timeout``."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = ready_workers()
            if workers is not None and (probe is None or probe()):
                then(workers)
                return
            time.sleep(POLL)
        if otherwise is not None:
            otherwise()

    threading.Thread(target=run, name="hashserver-ready", daemon=True).start()


def listening_url(host: str, port: int, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def _answers(host: str, port: int, tls: bool) -> bool:
    """Does /healthcheck answer 200 on this address?  (Over TLS the server's
    own certificate is not checked: this asks our own server.)"""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    if ":" in probe_host:
        probe_host = f"[{probe_host}]"
    context = ssl._create_unverified_context() if tls else None
    url = f"{'https' if tls else 'http'}://{probe_host}:{port}/healthcheck"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except OSError:
        return False


class InactivityWatch:
    """Ends the server (as SIGTERM would, exit status 0) after ``timeout``
    seconds without requests.  ``last_request`` is shared memory that every
    worker stamps on each request."""

    def __init__(self, timeout: float, last_request):
        self.timeout = timeout
        self.last_request = last_request
        self.last_request.value = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._run, name="hashserver-timeout", daemon=True).start()

    def _run(self) -> None:
        while True:
            idle = time.monotonic() - self.last_request.value
            if idle >= self.timeout:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(min(1.0, self.timeout - idle))
