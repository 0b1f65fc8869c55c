"""Signals and process faults, on real servers (``hashserver.lifecycle``).

Stop signals at any moment of a server's life; a rolling restart (SIGTERM)
that drains; the main process or a worker killed with ``kill -9``; a
``/dev/shm`` too small for the index; idle keep-alive connections and
slow-loris clients.  Every process is signalled by its pid; every wait is
bounded (a hang guard, never a timing assertion).
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from sanic.worker.manager import WorkerManager
from sanic.worker.process import ProcessState

from hashserver.lifecycle import Supervisor

from conftest import BIN, ServerProcess, add_buffer, buffer_path, free_port, sha3, wait_for

STOP_BOUND = 30.0  # hang guard: a stopped server has exited by then
WAIT_BOUND = 60.0  # hang guard for anything else awaited
SHM = Path("/dev/shm")


# ------------------------------------------------------------------ helpers

def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session: a server runs in a session of its own."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, sid = stat.rpartition(")")[2].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(int(entry))
    return found


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port (as Sanic binds: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def index_dirs(pid: int, base: Path = SHM) -> list[Path]:
    """The shared-memory index directories of the server whose main process is ``pid``."""
    return [p for p in base.glob("hashserver-index-*") if p.name.rpartition("-")[0].endswith(f"-{pid}")]


def assert_gone(server: ServerProcess) -> None:
    """Nothing of a server remains: no process of its session, its port free, no index left."""
    wait_for(lambda: not session_processes(server.pid), f"every process of {server} ends")
    assert port_is_free(server.port)
    assert index_dirs(server.pid) == []


def exit_code(server: ServerProcess) -> int:
    """The exit status of a server that was told to stop (fails if it does not end)."""
    wait_for(lambda: server.exit_code() is not None, f"{server} exits", STOP_BOUND)
    return server.exit_code()


def stop_exits(server: ServerProcess, sig: int) -> int:
    """Send ``sig`` to the main process; its exit status."""
    os.kill(server.pid, sig)
    return exit_code(server)


# What Sanic's way out of a signal it mishandles writes to the log.
STOP_PROBLEMS = ("KeyboardInterrupt", "while trying to serve", "BrokenPipeError", "EOFError", "Killing")


def stop_problems(server: ServerProcess) -> list[str]:
    return [line for line in server.output().splitlines() if any(p in line for p in STOP_PROBLEMS)]


def fill(directory: Path, count: int) -> list[str]:
    return [add_buffer(directory, b"buffer %d" % i) for i in range(count)]


def get(url: str, path: str, timeout: float = 30) -> requests.Response:
    with requests.Session() as session:  # a new connection: any worker may take it
        return session.get(f"{url}{path}", timeout=timeout)


# ------------------------------------------------- stop signals at any moment
def _moment_index(server: ServerProcess) -> None:
    """The main process is building the index (its directory exists)."""
    wait_for(lambda: index_dirs(server.pid), "the index directory appears")


def _moment_state_manager(server: ServerProcess) -> None:
    """Sanic has started its state manager, a child of the main process."""
    wait_for(lambda: children_of(server.pid), "Sanic's state manager starts", STOP_BOUND)


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


MOMENTS = {
    "at once": lambda server: None,
    "state manager": _moment_state_manager,
    "index": _moment_index,
    "index+0.2s": lambda server: (_moment_index(server), time.sleep(0.2)),
    "index+0.6s": lambda server: (_moment_index(server), time.sleep(0.6)),
    "index+1.2s": lambda server: (_moment_index(server), time.sleep(1.2)),
    "first healthcheck": lambda server: wait_for(lambda: server.answers(timeout=0.2), "a first answer"),
    "running": lambda server: wait_for(lambda: len(server.worker_pids()) == 2, "status running"),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_at_any_moment(tmp_path, logs, sig, moment):
    """The server ends promptly and completely, whenever the signal comes.  Only
    one that arrives before Python runs hashserver's code ends it the signal's
    default way."""
    fill(tmp_path, 2000)  # an index that takes a moment to build
    rounds = 4 if moment == "first healthcheck" else 1  # where Sanic hung one time in eight
    for attempt in range(rounds):
        server = ServerProcess.hashserver(tmp_path, "--writable", workers=2,
                                          log_path=logs / f"{moment}-{attempt}.log").start()
        try:
            MOMENTS[moment](server)
            code = stop_exits(server, sig)
            assert code == 0 or (moment == "at once" and code == -sig), server.output()
            assert_gone(server)
            problems = stop_problems(server)
            # Known and left: stopped while its state manager starts, that process may print an
            # EOFError (its connection to the main process cut); nothing is left behind.
            assert problems == [] or moment == "state manager" and all("EOFError" in p for p in problems)
        finally:
            server.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_to_the_process_group(serve, tmp_path, sig):
    """Ctrl-C in a terminal, ``systemd`` and ``timeout`` signal every process of
    the group, Sanic's state manager too, which then ends first: the server
    still ends cleanly (Sanic fails with a traceback where it next touches that
    state, two runs in four)."""
    for _ in range(3):
        server = serve(tmp_path, workers=2)
        os.killpg(server.pid, sig)
        assert exit_code(server) == 0, server.output()
        assert stop_problems(server) == []
        assert_gone(server)


# ------------------------------------------------------------ rolling restart
def answer_of(server: ServerProcess, path: str, status: int) -> list[requests.Response]:
    """The answer to ``GET path`` on a new connection if it has this status (in a
    list: a Response of an error status is false); none otherwise, or if the
    connection is closed unanswered: a worker that has finished draining closes
    the connections it accepted and has not read from."""
    try:
        response = get(server.url, path)
    except requests.ConnectionError:
        return []
    return [response] if response.status_code == status else []


class SlowUpload:
    """A PUT whose body is sent in two parts, on a raw socket."""

    def __init__(self, server: ServerProcess, data: bytes):
        self.data = data
        self.checksum = sha3(data)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_BOUND)
        head = f"PUT /{self.checksum} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        self.sock.sendall(head.encode() + data[: len(data) // 2])

    def finish(self) -> tuple[int, bytes]:
        self.sock.sendall(self.data[len(self.data) // 2:])
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        return response.status, response.read()


def test_sigterm_drains_then_exits(serve, tmp_path):
    """SIGTERM: /healthcheck answers 503 at once, the server keeps serving while an
    upload in flight completes, then exits 0 without waiting for idle keep-alive
    connections (the grace is far longer than the hang guard)."""
    known = add_buffer(tmp_path, b"known")
    server = serve(tmp_path, "--writable", "--shutdown-grace", "100", workers=2)
    idle = requests.Session()
    assert idle.get(f"{server.url}/healthcheck", timeout=30).status_code == 200  # stays open, idle
    upload = SlowUpload(server, os.urandom(300_000))
    lock = Path(str(buffer_path(tmp_path, upload.checksum)) + ".LOCK")
    wait_for(lock.exists, "the upload is being received (its lock file exists)")

    os.kill(server.pid, signal.SIGTERM)
    health, = wait_for(lambda: answer_of(server, "/healthcheck", 503), "/healthcheck answers 503")
    assert "shutting down" in health.json()["message"]
    assert get(server.url, f"/{known}").content == b"known"  # still serving, while draining
    assert server.exit_code() is None

    assert upload.finish() == (200, b"OK")
    assert exit_code(server) == 0  # once the upload is done
    assert buffer_path(tmp_path, upload.checksum).read_bytes() == upload.data
    assert_gone(server)
    idle.close()


# ------------------------------------------------------- main process killed
def test_main_process_killed(serve, tmp_path, logs):
    """kill -9 of the main process: its workers (and Sanic's state manager) end
    within seconds, the port is free, and a new server starts on it."""
    known = add_buffer(tmp_path, b"known")
    server = serve(tmp_path, "--writable", workers=2)
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not session_processes(server.pid), "the workers of a killed main process end")
    assert port_is_free(server.port)
    with ServerProcess.hashserver(tmp_path, "--writable", workers=2, port=server.port,
                                  log_path=logs / "after-kill.log") as again:
        assert get(again.url, f"/{known}").content == b"known"
        assert index_dirs(server.pid) == []  # the dead server's index, removed by the new one
    assert_gone(again)


# --------------------------------------------------------- a worker killed
def serving_worker(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of the connection from ``client_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(address.rpartition(":")[2], 16) for address in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


class WrongAnswer(AssertionError):
    pass


class LoadClient(threading.Thread):
    """One keep-alive connection at a time: GET a known buffer, PUT a new one,
    GET it back.  Records, per round, the worker that served its connection and
    the outcome; after a failure it connects again."""

    def __init__(self, server: ServerProcess, number: int, known: dict[str, bytes], stop: threading.Event):
        super().__init__(daemon=True)
        self.server, self.number, self.known, self.stop = server, number, known, stop
        self.results: list[tuple[int | None, str]] = []
        self.stored: dict[str, bytes] = {}

    def run(self) -> None:
        conn, worker = None, None
        for round_ in range(100_000):
            if self.stop.is_set():
                break
            if conn is None:
                conn, worker = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30), None
            try:
                self._round(conn, round_)
                if worker is None:
                    worker = serving_worker(self.server.port, conn.sock.getsockname()[1], self.pids())
                self.results.append((worker, "ok"))
            except WrongAnswer as exc:
                self.results.append((worker, f"wrong: {exc}"))
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((worker, f"connection: {exc!r}"))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def pids(self) -> list[int]:
        return self.server.worker_pids()

    def _round(self, conn: http.client.HTTPConnection, round_: int) -> None:
        checksum, data = next(iter(self.known.items()))
        self._expect(conn, "GET", f"/{checksum}", None, data)
        data = b"load %d %d" % (self.number, round_)
        self._expect(conn, "PUT", f"/{sha3(data)}", data, b"OK")
        self.stored[sha3(data)] = data
        self._expect(conn, "GET", f"/{sha3(data)}", None, data)

    @staticmethod
    def _expect(conn, method: str, path: str, body: bytes | None, expected: bytes) -> None:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        content = response.read()
        if (response.status, content) != (200, expected):
            raise WrongAnswer(f"{method} {path}: {response.status} {content[:100]!r}")


def successes(clients: list[LoadClient]) -> int:
    return min(sum(outcome == "ok" for _, outcome in client.results) for client in clients)


@pytest.mark.timeout(180)
def test_worker_killed_under_load(serve, tmp_path):
    """kill -9 of a worker under load: only its own connections fail (and only
    with a broken connection); the other worker keeps answering; a replacement
    starts and serves, from the shared index, buffers stored before."""
    known = {add_buffer(tmp_path, b"known"): b"known"}
    server = serve(tmp_path, "--writable", workers=2)
    stop = threading.Event()
    clients = [LoadClient(server, n, known, stop) for n in range(6)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: successes(clients) >= 3, "every client is served")
        workers = server.worker_pids()
        served = [worker for client in clients for worker, _ in client.results[-1:]]
        victim = max(workers, key=served.count)
        survivor = next(pid for pid in workers if pid != victim)
        before = successes(clients)
        os.kill(victim, signal.SIGKILL)
        replacement = wait_for(lambda: [pid for pid in server.worker_pids() if pid not in workers],
                               "a replacement worker is listed")[0]
        wait_for(lambda: successes(clients) >= before + 3, "every client is served after the kill")
    finally:
        stop.set()
        for client in clients:
            client.join(WAIT_BOUND)
    results = [result for client in clients for result in client.results]
    assert [r for r in results if r[1].startswith("wrong")] == []
    failures = [(worker, outcome) for worker, outcome in results if outcome != "ok"]
    assert all(worker in (victim, None) for worker, _ in failures), failures
    assert len([f for f in failures if f[0] is None]) <= len(clients), failures
    assert replacement != victim and survivor in server.worker_pids()
    stored = {cs: data for client in clients for cs, data in client.stored.items()}
    assert_replacement_serves(server, survivor, stored)


def assert_replacement_serves(server: ServerProcess, survivor: int, stored: dict[str, bytes]) -> None:
    """With the surviving worker stopped (SIGSTOP), every new connection is the
    replacement's: it answers what the others stored, and stores."""
    os.kill(survivor, signal.SIGSTOP)
    try:
        sample = list(stored.items())[:: max(1, len(stored) // 20)]
        for checksum, data in sample:
            assert get(server.url, f"/{checksum}", timeout=10).content == data
        assert requests.post(f"{server.url}/has", json=[cs for cs, _ in sample], timeout=10).json() == \
            [True] * len(sample)
        new = b"stored through the replacement"
        assert requests.put(f"{server.url}/{sha3(new)}", data=new, timeout=10).status_code == 200
        assert get(server.url, f"/{sha3(new)}", timeout=10).content == new
    finally:
        os.kill(survivor, signal.SIGCONT)


# ------------------------------------- a stopping worker's state, emptied
class EmptiedAfterRead(dict):
    """Sanic's shared worker state, where a stopping worker's entry is emptied
    (None) right after the manager has read it: the race that made a stopped
    server exit 1 (the manager's next write, ``{**None}``, raises TypeError)."""

    def __init__(self, *args, name: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.name, self.reads = name, 0

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if key == self.name:
            self.reads += 1
            if self.reads > 1:
                return None
        return value


@pytest.fixture
def supervised():
    """A Supervisor (Sanic's manager, adopted) over one real worker process that has
    ended: (supervisor, process).  The signal handlers it installs are put back after."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        manager = WorkerManager(1, os.getpid, {}, multiprocessing.get_context("spawn"), multiprocessing.Pipe(), {})
        supervisor = Supervisor.adopt(manager, grace=1.0)
        for worker in supervisor.transient.values():
            for process in worker.processes:
                process.start()
        process, = supervisor.processes
        wait_for(lambda: not process.is_alive(), "the worker process ended")
        yield supervisor, process
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("race, error", [("emptied", AttributeError), ("emptied after the read", TypeError)])
def test_a_stopping_workers_emptied_state_ends_the_supervisor_cleanly(supervised, race, error):
    """Sanic's own ``_sync_states`` over a real worker process that has ended,
    with its state entry emptied: tolerated while shutting down, raised otherwise
    (a fault of a serving server stays visible)."""
    supervisor, process = supervised
    state_before = process.state
    if race == "emptied":
        supervisor.worker_state[process.name] = None  # AttributeError on Sanic's read
    else:
        supervisor.worker_state = EmptiedAfterRead(supervisor.worker_state, name=process.name)
        process.worker_state = supervisor.worker_state  # TypeError on Sanic's write
    with pytest.raises(error):
        supervisor._sync_states()
    if race != "emptied":  # the same race again
        supervisor.worker_state.reads, process.state = 0, state_before
    supervisor._shutting_down = True
    supervisor._sync_states()  # no exception: the stop goes on
    supervisor.join()  # Sanic's join writes the state too
    assert process.state in (ProcessState.JOINED, ProcessState.COMPLETED, ProcessState.FAILED)


class CountedState(dict):
    """Sanic's shared worker state (a proxy of the state manager), its calls counted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __getitem__(self, key):
        self.calls += 1
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.calls += 1
        super().__setitem__(key, value)

    def get(self, key, default=None):
        self.calls += 1
        return super().get(key, default)


def test_a_stop_signal_leaves_the_state_manager_to_the_monitor_loop(supervised):
    """The handler of a stop signal makes no call to the state manager: it runs between
    two steps of the main thread, which may be halfway through one on the same
    connection (a container's server died so of an UnpicklingError, its workers left
    running).  The monitor loop ends and stops the workers instead."""
    supervisor, process = supervised
    state = supervisor.worker_state = process.worker_state = CountedState(supervisor.worker_state)
    supervisor._serving = True
    supervisor.shutdown_signal(signal.SIGTERM, None)
    assert state.calls == 0 and not supervisor._shutting_down
    assert supervisor.monitor_subscriber.poll(0)  # the monitor loop is woken
    supervisor._sync_states = lambda: pytest.fail("the loop went on after the stop signal")
    supervisor.wait_for_ack = lambda: None  # started long ago
    supervisor.monitor()  # its loop's first step reads the wake-up and ends; then the stop
    assert supervisor._shutting_down


# ------------------------------------------------------- a small /dev/shm
def _small_shm_available() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_index_falls_back_when_dev_shm_is_full(tmp_path, logs):
    """A /dev/shm of 64 KiB (a tmpfs mounted in a user namespace) cannot hold the
    index of 3,000 buffers: the index goes to the temporary directory, one log
    line says so, and the server serves, stores and republishes as usual."""
    if not _small_shm_available():
        pytest.skip("needs user and mount namespaces (unshare -Urm) to give the server a small /dev/shm")
    directory, temporary = tmp_path / "buffers", tmp_path / "tmp"
    directory.mkdir()
    temporary.mkdir()
    checksums = fill(directory, 3000)
    port = free_port()
    argv = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec "$@"', "sh",
            str(BIN / "hashserver"), str(directory), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2", "--writable"]
    with ServerProcess(argv, port=port, workers=2, env={"TMPDIR": str(temporary)},
                       log_path=logs / "small-shm.log") as server:
        first = wait_for(lambda: list(temporary.glob("hashserver-index-*/index-*")), "an index in TMPDIR")
        for i in range(0, 3000, 150):
            assert get(server.url, f"/{checksums[i]}").content == b"buffer %d" % i
        for i in range(20):
            data = b"new %d" % i
            assert requests.put(f"{server.url}/{sha3(data)}", data=data, timeout=30).status_code == 200
            assert get(server.url, f"/{sha3(data)}").content == data
        wait_for(lambda: (found := list(temporary.glob("hashserver-index-*/index-*"))) and found != first,
                 "a new generation replaces the first")
        wait_for(lambda: len(list(temporary.glob("hashserver-index-*/index-*"))) == 1,
                 "one generation left in TMPDIR (each new one replaces the one before)")
        assert get(server.url, f"/{sha3(b'new 7')}").content == b"new 7"
        assert server.output().count("is full") == 1, server.output()
        # prometheus_client maps its files sparsely: in a nearly full tmpfs a first touch is a SIGBUS
        assert f"figures kept in {temporary}" in server.output()
        assert "hashserver_puts_total" in requests.get(f"{server.url}/metrics", timeout=30).text
    assert server.proc.returncode == 0
    assert list(temporary.glob("hashserver-index-*")) == []


# ------------------------------------------ idle connections and slow clients
class SlowLoris(threading.Thread):
    """Sends a request line, then one header byte every 0.3 s, until the server
    closes the connection (or ``bound`` seconds pass)."""

    def __init__(self, port: int, path: str = "/healthcheck", bound: float = WAIT_BOUND):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        self.start_line = f"GET {path} HTTP/1.1\r\nX-Slow: ".encode()
        self.bound = bound
        self.sent = 0
        self.closed_by_server = False
        self.answer = b""

    def run(self) -> None:
        self.sock.sendall(self.start_line)
        deadline = time.monotonic() + self.bound
        while time.monotonic() < deadline:
            try:
                self.sock.sendall(b"a")
                self.sent += 1
                self.sock.settimeout(0.3)
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                self.closed_by_server = True
                return
            self.answer += chunk
            if not chunk:
                self.closed_by_server = True
                return
        self.sock.close()


def open_idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each having had one answered request, kept open."""
    sockets = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthcheck")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"OK")
        sockets.append(conn.sock)
    return sockets


def all_closed_by_server(sockets: list[socket.socket], bound: float) -> bool:
    """Whether the server closes every one of these connections within ``bound`` seconds."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_ = len(sockets)
    deadline = time.monotonic() + bound
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            try:
                data = key.fileobj.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                open_ -= 1
    selector.close()
    return open_ == 0


@pytest.mark.timeout(180)
def test_idle_connections_and_slow_loris(serve, tmp_path):
    """1,000 idle keep-alive connections and slow-loris clients: others are served
    meanwhile; the slow-loris ones are closed while still trickling (Sanic alone
    would wait forever: its request timeout counts from the last byte), the idle
    ones after the keep-alive timeout."""
    known = add_buffer(tmp_path, b"known")
    server = serve(tmp_path, "--keep-alive-timeout", "8", "--header-timeout", "2", workers=2)
    idle = open_idle_connections(server.port, 1000)
    # Two with requests Sanic parses, two with GETs of a buffer that the hot path holds while they arrive.
    lorises = [SlowLoris(server.port, path) for path in ("/healthcheck", "/healthcheck", f"/{known}", f"/{known}")]
    for loris in lorises:
        loris.start()
    try:
        for _ in range(20):
            assert get(server.url, f"/{known}", timeout=10).content == b"known"
        for loris in lorises:
            loris.join(WAIT_BOUND + 5)
        for loris in lorises:
            assert loris.closed_by_server, f"a slow-loris connection still open after {loris.sent} bytes"
            assert loris.answer == b"" or loris.answer.startswith(b"HTTP/1.1 408"), loris.answer
        assert all_closed_by_server(idle, WAIT_BOUND), "idle keep-alive connections left open"
        assert get(server.url, f"/{known}", timeout=10).content == b"known"
        assert "hot path on" in server.output()
    finally:
        for sock in idle:
            sock.close()
        for loris in lorises:
            loris.sock.close()
