"""Shared test helpers: buffer directories, and real servers run as users run them."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent
_names = itertools.count()


def sha3(data: bytes) -> str:
    return hashlib.sha3_256(data).hexdigest()


def buffer_path(directory, checksum: str, layout: str = "prefix") -> Path:
    directory = Path(directory)
    if layout == "prefix":
        return directory / checksum[:2] / checksum
    if layout == "flat":
        return directory / checksum
    raise ValueError(layout)


def add_buffer(directory, data: bytes, layout: str = "prefix", checksum: str | None = None) -> str:
    """Write a buffer file as another program would (``cp``); returns its checksum."""
    checksum = checksum or sha3(data)
    path = buffer_path(directory, checksum, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return checksum


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started as a user starts it, on a free port of 127.0.0.1."""

    def __init__(self, argv: list[str], env: dict | None = None, port: int | None = None,
                 log_path: Path | None = None, workers: int = 1):
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = argv
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HASHSERVER_")}
        full_env.update(env or {})
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                answered = requests.get(self.url + "/healthcheck", timeout=1).status_code == 200
            except requests.RequestException:
                answered = False
            # Sanic 25.12's main process can hang for good when SIGINT arrives
            # while it still waits for its workers' acknowledgements (the
            # KeyboardInterrupt breaks a multiprocessing.Manager call), so wait
            # for every worker and for the main process's next poll (0.1 s).
            if answered and self.output().count("Worker ready") >= self.workers:
                time.sleep(0.5)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            # The main process stops its workers; signalling the whole group
            # could interrupt a worker that is still starting.
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"server did not stop within {timeout} s; its log:\n{self.output()[-3000:]}")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode


@pytest.fixture
def logs(tmp_path_factory) -> Path:
    """Server logs, kept out of the buffer directories under test."""
    return tmp_path_factory.mktemp("logs")


def _launcher(logs: Path, label: str):
    """A fixture body: start servers from an argv (given the port), stop them all at the end."""
    started: list[ServerProcess] = []

    def launch(argv_for_port, workers: int, wait: bool, env=None) -> ServerProcess:
        port = free_port()
        server = ServerProcess(argv_for_port(port), env=env, port=port,
                               log_path=logs / f"{label}-{next(_names)}.log", workers=workers)
        started.append(server)
        return server.wait_ready() if wait else server

    return launch, started


@pytest.fixture
def serve(logs):
    """``serve(directory, *options, workers=2)`` starts ``hashserver`` and waits for it."""
    launch, started = _launcher(logs, "server")

    def start(directory, *options: str, workers: int = 1, wait: bool = True, env=None) -> ServerProcess:
        return launch(lambda port: [str(BIN / "hashserver"), str(directory), "--port", str(port),
                                    "--workers", str(workers), *options], workers, wait, env)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_sanic(logs):
    """``serve_sanic(env, workers=2)`` starts ``sanic hashserver.app`` configured by env."""
    launch, started = _launcher(logs, "sanic")

    def start(env: dict, workers: int = 2, wait: bool = True) -> ServerProcess:
        return launch(lambda port: [str(BIN / "sanic"), "hashserver.app", "--host", "127.0.0.1",
                                    "--port", str(port), "--workers", str(workers), "--no-motd"],
                      workers, wait, env)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def app_client(tmp_path):
    """An in-process server (sanic-testing) for a Config; ``app_client(config)``.

    Its main-process parts are assembled as a real server's are, in this process."""
    from sanic_testing.reusable import ReusableClient

    from hashserver import create_app
    from hashserver.runtime import MainProcess, attach_main

    clients, mains = [], []

    def make(config):
        config = config.validate()
        app = create_app(config, name=f"test_{next(_names)}")
        mains.append(MainProcess.start(config))
        port = free_port()
        attach_main(app, mains[-1], "127.0.0.1", port, workers=1)
        client = ReusableClient(app, port=port)
        client.run()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()
    for main in mains:
        main.stop()
