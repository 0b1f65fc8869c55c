"""The servers under test, each a real subprocess on a free local port.

hashserver is started the way users start it (``python -m hashserver DIR
--workers N``, the same entry point as the ``hashserver`` command), nginx with
a configuration written here, so the figures are those of the real programs.
Both are stopped with a signal and waited for; a server that will not stop is
killed by its own process group, never by name.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .procfs import ProcessMemory, measure_tree, tree

HOST = "127.0.0.1"
READY_TIMEOUT = 600.0  # a 1,000,000-buffer index build on a slow disk must fit
STOP_TIMEOUT = 15.0
POLL = 0.05
# Sanic's main process logs "Worker ready" before it has collected the
# workers' acknowledgements; a SIGINT inside that window makes its signal
# handler re-enter a multiprocessing proxy call and the main process hangs
# (seen with Sanic 25.12.1).  Nothing is measured this soon after startup.
SETTLE = 0.5
# The index generation files every worker maps (hashserver.index.GenerationStore).
INDEX_FILE_MARK = "hashserver-index-"


def free_port() -> int:
    """A port nobody listens on now: the kernel's choice for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 60.0) -> Reply:
    """One HTTP request on a fresh connection (for checks, not for load)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


class ServerProcess:
    """A subprocess with its output in a log file, ready once ``ready_path`` answers 200.

    Every started server is remembered until it is stopped, so that
    :func:`stop_all` can end them whatever interrupted the bench."""

    name = "server"
    ready_path = "/healthcheck"
    running: set["ServerProcess"] = set()

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{self.name}-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.stop_s: float | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        try:
            return request(self.port, "GET", self.ready_path, timeout=5).status == 200
        except OSError:
            return False

    def start(self) -> "ServerProcess":
        if self.proc is not None:
            raise RuntimeError(f"{self.name} on port {self.port} was already started")
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C meant for the bench does not reach the server
            # half-way through a case, and the group can be killed as a last resort.
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        ServerProcess.running.add(self)
        deadline = started + READY_TIMEOUT
        while not self.is_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} "
                                   f"before it was ready:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL)
        self.startup_s = time.monotonic() - started
        time.sleep(SETTLE)
        return self

    def stop(self, sig: int = signal.SIGINT) -> None:
        ServerProcess.running.discard(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"bench: {self.name} (pid {self.proc.pid}) did not stop in {STOP_TIMEOUT:.0f} s "
                  "after the signal; killing its process group", file=sys.stderr)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self.stop_s = time.monotonic() - started

    def pids(self) -> list[int]:
        """The server's processes (main and children), for CPU accounting."""
        return tree(self.proc.pid) if self.proc is not None else []

    def role(self, pid: int) -> str:
        return "main" if self.proc is not None and pid == self.proc.pid else "worker"

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "ServerProcess":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every server still running (after an error or an interrupt)."""
    for server in list(ServerProcess.running):
        server.stop()


class HashServer(ServerProcess):
    """``hashserver DIR --workers N``; ready when every worker has said so."""

    name = "hashserver"
    WORKER_STARTED = re.compile(r"Starting worker \[(\d+)\]")
    WORKER_READY = re.compile(r"Worker ready \[(\d+)\]")
    INDEX_BUILT = re.compile(r"index: (\d+) buffers in \d+ directories, built in ([\d.]+) s")

    def __init__(self, workdir: str, directory: str, layout: str, workers: int,
                 writable: bool = False):
        super().__init__(workdir)
        self.directory = directory
        self.layout = layout
        self.workers = workers
        self.writable = writable

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "hashserver", self.directory, "--host", HOST,
                "--port", str(self.port), "--workers", str(self.workers), "--layout", self.layout]
        return argv + (["--writable"] if self.writable else [])

    def is_ready(self) -> bool:
        # /healthcheck answers as soon as one worker listens; a figure taken
        # while the others still start would not be the N-worker figure.
        ready = len(set(self.WORKER_READY.findall(self.log_text())))
        return ready >= self.workers and super().is_ready()

    def worker_pids(self) -> set[int]:
        return {int(p) for p in self.WORKER_STARTED.findall(self.log_text())}

    def index_build(self) -> tuple[int, float] | None:
        """(buffers indexed, seconds) as the server logged them, if it did."""
        match = self.INDEX_BUILT.search(self.log_text())
        return (int(match.group(1)), float(match.group(2))) if match else None

    def memory(self) -> list[ProcessMemory]:
        assert self.proc is not None
        return measure_tree(self.proc.pid, self.worker_pids(), mapped=INDEX_FILE_MARK)

    def role(self, pid: int) -> str:
        """"main", "worker" or "other" (Sanic's helper processes), for CPU accounting."""
        if self.proc is not None and pid == self.proc.pid:
            return "main"
        return "worker" if pid in self.worker_pids() else "other"


def nginx_version() -> str | None:
    exe = shutil.which("nginx")
    if exe is None:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=30)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ") or None


class Nginx(ServerProcess):
    """nginx serving the same directory: the ceiling for the GET cases.

    Static serving as it is usually deployed (sendfile, no access log), with
    as many worker processes as the hashserver it is compared with, and a
    rewrite from ``/<checksum>`` to the layout's path.
    """

    name = "nginx"

    def __init__(self, workdir: str, directory: str, layout: str, workers: int):
        super().__init__(workdir)
        self.directory = directory
        self.layout = layout
        self.workers = workers
        self.prefix = os.path.join(workdir, f"nginx-{self.port}")
        os.makedirs(self.prefix, exist_ok=True)
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(self.config())

    def config(self) -> str:
        p = self.prefix
        if self.layout == "prefix":
            mapping = 'rewrite "^/([0-9a-f]{2})([0-9a-f]{62})$" /$1/$1$2 break;'
        elif self.layout == "flat":
            mapping = 'rewrite "^/([0-9a-f]{64})$" /$1 break;'
        else:
            raise ValueError(f"nginx comparison knows no layout {self.layout!r}")
        # Workers must read the buffer directory; as root they would otherwise
        # drop to "nobody", who may not (e.g. a cache under /root).
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp_paths = "".join(f"    {kind}_temp_path {p}/{kind}_temp;\n"
                             for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}worker_processes {self.workers};
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
{temp_paths}    server {{
        listen {HOST}:{self.port};
        root {self.directory};
        location = /healthcheck {{ return 200 "OK"; }}
        location ~ "^/[0-9a-f]{{64}}$" {{
            {mapping}
        }}
        location / {{ return 404; }}
    }}
}}
"""

    def command(self) -> list[str]:
        exe = shutil.which("nginx") or "nginx"
        return [exe, "-p", self.prefix, "-c", self.conf_path, "-e", f"{self.prefix}/error.log"]

    def stop(self, sig: int = signal.SIGQUIT) -> None:
        super().stop(sig)  # SIGQUIT: graceful shutdown of master and workers
