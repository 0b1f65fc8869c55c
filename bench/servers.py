"""The servers under test, each a real subprocess on a free local port.

Both run under the server harness the tests use (:class:`hashserver.testing.ServerProcess`:
its own session, output to a log file, a signal to stop and a kill of its
process group as a last resort), so there is one copy of that logic.
hashserver is started the way users start it (``hashserver DIR --workers N``)
and is ready when its status file says so; what it reports there (worker pids,
the index build) is read from that file, never from its log.  nginx runs with
a configuration written here and is ready once it answers.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hashserver.index import GenerationStore
from hashserver.testing import ServerProcess, free_port

from . import framework
from .procfs import ProcessMemory, measure_tree, tree

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time

HOST = "127.0.0.1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(framework.__file__)))
READY_TIMEOUT = 600.0  # a 1,000,000-buffer index build on a slow disk must fit
STOP_TIMEOUT = 15.0
POLL = 0.05
NOT_REPORTED = "not reported by this server"


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


class BenchServer:
    """A server under test: a harness process, its log named by server and port,
    and the time it took to start and to stop."""

    name = "server"
    stop_signal = signal.SIGINT

    def __init__(self, workdir: str, workers: int):
        self.workers = workers
        self.port = free_port(HOST)
        self.log_path = os.path.join(workdir, f"{self.name}-{self.port}.log")
        self.process: ServerProcess | None = None
        self.startup_s: float | None = None
        self.stop_s: float | None = None

    def make_process(self) -> ServerProcess:
        raise NotImplementedError

    def wait_ready(self, process: ServerProcess) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self.process is not None:
            raise RuntimeError(f"{self.name} on port {self.port} was already started")
        started = time.monotonic()
        self.process = self.make_process().start()
        try:
            self.wait_ready(self.process)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self.process is None or self.stop_s is not None:
            return
        started = time.monotonic()
        self.process.stop(self.stop_signal, STOP_TIMEOUT)
        self.stop_s = time.monotonic() - started

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} on port {self.port} was not started")
        return self.process.pid

    def pids(self) -> list[int]:
        """The server's processes (main and children), for CPU accounting."""
        return tree(self.pid)

    def role(self, pid: int) -> str:
        return "main" if pid == self.pid else "worker"

    def __enter__(self) -> Self:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HashServer(BenchServer):
    """``hashserver DIR --workers N``; ready when its status file says every worker is."""

    name = "hashserver"

    def __init__(self, workdir: str, directory: str, layout: str, workers: int,
                 writable: bool = False, options: tuple[str, ...] = ()):
        super().__init__(workdir, workers)
        self.directory = directory
        self.layout = layout
        self.writable = writable
        self.options = options  # more command-line options, e.g. ("--hash-algorithm", "sha-256")
        self.status: dict = {}

    def make_process(self) -> ServerProcess:
        options = ["--layout", self.layout, *(["--writable"] if self.writable else []), *self.options]
        return ServerProcess.hashserver(self.directory, *options, workers=self.workers, host=HOST,
                                        port=self.port, log_path=self.log_path)

    def wait_ready(self, process: ServerProcess) -> None:
        self.status = process.wait_ready(READY_TIMEOUT)

    def worker_pids(self) -> set[int] | None:
        """The workers' pids from the status file; None if the server does not report them."""
        workers = self.status.get("workers")
        return None if workers is None else set(workers)

    def index_build(self) -> tuple[int, float] | None:
        """(buffers indexed, seconds) from the status file; None if the server does not say."""
        index = self.status.get("index") or {}
        if index.get("entries") is None or index.get("build_seconds") is None:
            return None
        return int(index["entries"]), float(index["build_seconds"])

    def memory(self) -> list[ProcessMemory]:
        return measure_tree(self.pid, self.worker_pids(), mapped=GenerationStore.PREFIX)

    def role(self, pid: int) -> str:
        """"main", "worker" or "other" (Sanic's helper processes), for CPU accounting;
        "unknown" for every child when the server does not report its workers."""
        workers = self.worker_pids()
        if pid == self.pid:
            return "main"
        if workers is None:
            return "unknown"
        return "worker" if pid in workers else "other"


def _wait_answering(name: str, process: ServerProcess) -> None:
    """Servers without a status file: ready once their health check answers."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not process.answers("/healthcheck"):
        if process.exit_code() is not None:
            raise RuntimeError(f"{name} exited with status {process.exit_code()} before it was "
                               f"ready:\n{_tail(process.output())}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {READY_TIMEOUT:.0f} s:\n"
                               f"{_tail(process.output())}")
        time.sleep(POLL)


class FrameworkCeiling(BenchServer):
    """Sanic alone on the GET route, a constant body (:mod:`bench.framework`),
    with as many workers as the hashserver it is compared with."""

    name = "sanic-constant"

    def __init__(self, workdir: str, workers: int, size: int, missing_targets: str | None):
        super().__init__(workdir, workers)
        self.env = {framework.SIZE_ENV: str(size), framework.MISSING_ENV: missing_targets or "",
                    "PYTHONPATH": REPO}

    def make_process(self) -> ServerProcess:
        argv = [sys.executable, "-m", "sanic", "bench.framework:create_app", "--factory",
                "--host", HOST, "--port", str(self.port), "--workers", str(self.workers),
                "--no-motd", "--no-access-logs"]
        return ServerProcess(argv, env=self.env, port=self.port, workers=self.workers,
                             log_path=self.log_path)

    def wait_ready(self, process: ServerProcess) -> None:
        _wait_answering(self.name, process)


class NginxServer(BenchServer):
    """nginx under the harness, with a configuration written here when it starts:
    master and workers in the foreground, everything it writes (pid, error log,
    temporary files) under a prefix directory of its own.  Subclasses give the
    inside of its ``http`` block (:meth:`http_config`); ready once ``/healthcheck``
    answers."""

    name = "nginx"
    stop_signal = signal.SIGQUIT  # graceful shutdown of master and workers
    connections = 4096  # per worker

    def __init__(self, workdir: str, workers: int):
        super().__init__(workdir, workers)
        self.prefix = os.path.join(workdir, f"{self.name}-{self.port}")
        self.conf_path = os.path.join(self.prefix, "nginx.conf")

    def http_config(self) -> str:
        """The directives inside ``http { }`` (the server listens on ``HOST:self.port``)."""
        raise NotImplementedError

    def config(self) -> str:
        p = self.prefix
        # Workers must read the buffer directory; as root they would otherwise
        # drop to "nobody", who may not (e.g. a cache under /root).
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp_paths = "".join(f"    {kind}_temp_path {p}/{kind}_temp;\n"
                             for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}worker_processes {self.workers};
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {self.connections}; }}
http {{
    access_log off;
{temp_paths}{self.http_config()}}}
"""

    def make_process(self) -> ServerProcess:
        os.makedirs(self.prefix, exist_ok=True)
        with open(self.conf_path, "w") as f:
            f.write(self.config())
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [exe, "-p", self.prefix, "-c", self.conf_path, "-e", f"{self.prefix}/error.log"]
        return ServerProcess(argv, port=self.port, workers=self.workers, log_path=self.log_path)

    def wait_ready(self, process: ServerProcess) -> None:
        """nginx writes no status file: ready once its health check answers."""
        _wait_answering(self.name, process)


class Nginx(NginxServer):
    """nginx serving the same directory: the ceiling for the GET cases.

    Static serving as it is usually deployed (sendfile, no access log), with
    as many worker processes as the hashserver it is compared with, and a
    rewrite from ``/<checksum>`` to the layout's path.
    """

    def __init__(self, workdir: str, directory: str, layout: str, workers: int):
        if layout not in ("prefix", "flat"):
            raise ValueError(f"nginx comparison knows no layout {layout!r}")
        super().__init__(workdir, workers)
        self.directory = directory
        self.layout = layout

    def http_config(self) -> str:
        if self.layout == "prefix":
            mapping = 'rewrite "^/([0-9a-f]{2})([0-9a-f]{62})$" /$1/$1$2 break;'
        else:
            mapping = 'rewrite "^/([0-9a-f]{64})$" /$1 break;'
        return f"""    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{self.port};
        root {self.directory};
        location = /healthcheck {{ return 200 "OK"; }}
        location ~ "^/[0-9a-f]{{64}}$" {{
            {mapping}
        }}
        location / {{ return 404; }}
    }}
"""


class UploadSink(NginxServer):
    """nginx taking ``PUT /upload/NAME`` (its WebDAV module) into a plain file under
    its prefix: the upload ceiling ``curl -T`` is measured against.  Temporary files
    are made in the same directory, so the upload lands where it is renamed to."""

    name = "nginx-upload"

    def __init__(self, workdir: str, workers: int = 1):
        super().__init__(workdir, workers)
        self.uploads = os.path.join(self.prefix, "uploads")

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/upload/{name}"

    def http_config(self) -> str:
        os.makedirs(os.path.join(self.uploads, "upload"), exist_ok=True)
        return f"""    client_max_body_size 0;
    server {{
        listen {HOST}:{self.port};
        root {self.uploads};
        location = /healthcheck {{ return 200 "OK"; }}
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_body_temp_path {self.uploads}/tmp;
        }}
    }}
"""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])
