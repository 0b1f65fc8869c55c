"""Today's Seamless against this server (issue 7).

Two kinds of tests:

* The real clients, from PyPI: ``seamless-remote==0.4.0`` (with ``seamless-core==0.1.4``) is
  installed in a separate virtual environment (session fixture ``seamless_python``; skipped with
  a message when it cannot be installed, which fails the run in CI; these tests are marked
  ``network``) and small driver scripts run there against a real
  ``hashserver DIR --writable --hash-algorithm sha-256 --workers 2``: ``BufferClient``
  (healthcheck, promise, write, buffer_lengths, get), ``Buffer.write()`` (promise + PUT),
  ``seamless.caching.buffer_writer`` (its ``/has-now`` check and its flush), and the real
  launcher (``remote-http-launcher`` via ``BufferLaunchedClient``), which starts ``hashserver``
  with ``--port-range/--status-file/--timeout`` exactly as Seamless does.
* Plain HTTP (``http.client``, so that no client adds or decodes an encoding behind our back)
  for each point of issue 7: promises, ``/has-now``, compressed buffers, PUT with
  ``Content-Encoding``, the launcher's options, the hash-algorithm checks.

Facts these tests rely on, read from the client packages' source:
``BufferClient.buffer_lengths`` asks ``GET /has`` (not ``/buffer-length``) and returns the
booleans; aiohttp sends ``Accept-Encoding: gzip, deflate`` and cannot decode zstd on
Python < 3.14 without ``backports.zstd``; ``buffer_writer`` sends ``GET /has-now`` with a JSON
body through ``http.client`` and silently treats any error as "nothing present"; the launcher
writes the status file only *after* starting the server, and passes no ``--hash-algorithm``.

Servers run on free ports of 127.0.0.1 only. Every wait and loop here is bounded.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hashserver.testing import ServerProcess, clean_environ, console_script

from conftest import BIN, add_buffer, buffer_path, free_port, sha3

SEAMLESS_REMOTE_VERSION = "0.4.0"
SEAMLESS_CORE_VERSION = "0.1.4"
PROMISE_TTL = 600
HOST = "127.0.0.1"
# The tests with the real clients install them from PyPI on first use (minutes on a
# cold cache), within the first such test's time bound.
INSTALL_BOUND = 900

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_blob(seed: str, lines: int = 4000) -> bytes:
    """A few hundred KB of compressible, unique content."""
    return b"".join(
        b"%s line %d %s\n" % (seed.encode(), i, hashlib.sha256(b"%s%d" % (seed.encode(), i)).hexdigest().encode())
        for i in range(lines)
    )


def zstd_compress(data: bytes) -> bytes:
    from hashserver.compression import zstd

    return zstd.compress(data)


# --------------------------------------------------------------------------- HTTP
@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.headers.items()
                 if k in ("content-type", "content-encoding", "content-length", "transfer-encoding")}
        return f"<HTTP {self.status} {shown} {len(self.body)} bytes: {self.body[:300]!r}>"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 15.0) -> Reply:
    """One request on a fresh connection (so that, over repeats, every worker answers).

    ``http.client`` adds no ``Accept-Encoding`` here (skip_accept_encoding) and decodes nothing:
    what the test sends and sees is exactly what is on the wire.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def json_request(port: int, method: str, path: str, payload) -> Reply:
    return request(port, method, path, json.dumps(payload).encode(),
                   {"Content-Type": "application/json"})


REPEATS = 8  # fresh connections per check: with 2 workers, both answer


def assert_every_worker(port: int, method: str, path: str, payload, expected, what: str) -> None:
    for attempt in range(REPEATS):
        reply = json_request(port, method, path, payload)
        assert reply.status == 200, f"{what}: {method} {path} gave {reply!r} (attempt {attempt + 1})"
        assert reply.json() == expected, (
            f"{what}: {method} {path} {payload} answered {reply.json()} instead of {expected} "
            f"(attempt {attempt + 1} of {REPEATS} on fresh connections: a worker disagrees?)")


# ------------------------------------------------------------------------ servers
def start_server(directory: Path, *options: str, log_dir: Path, workers: int = 2,
                 env: dict | None = None) -> ServerProcess:
    port = free_port()
    server = ServerProcess.hashserver(directory, *options, workers=workers, env=env, port=port,
                                      log_path=log_dir / f"hashserver-{port}.log")
    try:
        server.start().wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def expect_startup_failure(args: list[str], log_dir: Path, port: int | None = None,
                           env: dict | None = None, timeout: float = 40.0) -> tuple[int, str]:
    """Start a server that must refuse to start; returns (exit status, its output)."""
    server = ServerProcess([*console_script("hashserver", "hashserver"), *args], env=env, port=port,
                           log_path=log_dir / f"failing-{time.monotonic_ns()}.log").start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.exit_code() is not None:
                break
            if port is not None and server.answers(timeout=0.5):
                raise AssertionError(
                    f"{' '.join(server.argv)} started and answers on port {port}; it must refuse to "
                    f"start.\n{server.output()}")
            time.sleep(0.1)
        else:
            raise AssertionError(f"{' '.join(server.argv)} neither served nor exited within {timeout} s:\n"
                                 f"{server.output()}")
    finally:
        code = server.stop()
    return code, server.output()


# ------------------------------------------------------- the sha-256 server (module)
@dataclass
class Compressed:
    name: str
    data: bytes
    checksum: str
    suffix: str  # ".zst" or ".gz"
    stored: bytes  # the file's bytes
    sidecar: bool


@dataclass
class Sha256Server:
    server: ServerProcess
    directory: Path
    compressed: dict[str, Compressed] = field(default_factory=dict)
    plain: dict[str, bytes] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url


def make_compressed(directory: Path, name: str, suffix: str, sidecar: bool) -> Compressed:
    data = text_blob(name)
    checksum = sha256(data)
    stored = zstd_compress(data) if suffix == ".zst" else gzip.compress(data)
    add_buffer(directory, stored, checksum=checksum, suffix=suffix)
    if sidecar:
        add_buffer(directory, str(len(data)).encode(), checksum=checksum, suffix=".BUFFERLENGTH")
    return Compressed(name, data, checksum, suffix, stored, sidecar)


@pytest.fixture(scope="module")
def sha256_server(tmp_path_factory) -> Sha256Server:
    """``hashserver DIR --writable --hash-algorithm sha-256 --workers 2`` on a directory that
    already holds plain buffers and compressed ones (``.zst``/``.gz``, with and without the
    ``.BUFFERLENGTH`` sidecar), prefix layout."""
    directory = tmp_path_factory.mktemp("sha256-buffers")
    logs = tmp_path_factory.mktemp("sha256-logs")
    plain = {}
    for i in range(4):
        data = b"plain sha-256 buffer %d\n" % i
        add_buffer(directory, data, checksum=sha256(data))
        plain[sha256(data)] = data
    compressed = {
        c.name: c for c in (
            make_compressed(directory, "zst-sidecar", ".zst", True),
            make_compressed(directory, "gz-sidecar", ".gz", True),
            make_compressed(directory, "zst-bare", ".zst", False),
            make_compressed(directory, "gz-bare", ".gz", False),
        )
    }
    server = start_server(directory, "--writable", "--hash-algorithm", "sha-256", log_dir=logs)
    yield Sha256Server(server, directory, compressed, plain)
    server.stop()


# ------------------------------------------------------------- the Seamless venv
IMPORT_CHECK = ("import seamless_remote.buffer_client, seamless_remote.buffer_remote, "
                "seamless.caching.buffer_writer, seamless_config.tools, remote_http_launcher")


def _cached_venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = (f"seamless-remote-{SEAMLESS_REMOTE_VERSION}-core-{SEAMLESS_CORE_VERSION}"
           f"-py{sys.version_info[0]}.{sys.version_info[1]}")
    return cache / "hashserver-sanic-tests" / tag


def _run_step(step: list[str], what: str) -> None:
    try:
        result = subprocess.run(step, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{what}: {' '.join(step[:5])}: {exc}")
    if result.returncode != 0:
        pytest.skip(f"{what}: {' '.join(step[:5])} exited {result.returncode}: "
                    f"{(result.stderr or result.stdout)[-1500:]}")


@pytest.fixture(scope="session")
def seamless_python() -> Path:
    """The Python of a virtual environment holding the real Seamless clients from PyPI.

    Made once and kept between runs (keyed by the versions and this Python's version) under
    ``~/.cache/hashserver-sanic-tests/``; a half-made one is rebuilt. ``HASHSERVER_TEST_SEAMLESS_VENV``
    names a ready-made environment to use instead (never modified). Skips, saying why, when the
    clients cannot be installed.
    """
    override = os.environ.get("HASHSERVER_TEST_SEAMLESS_VENV")
    if override:
        python = Path(override) / "bin" / "python"
        _run_step([str(python), "-c", IMPORT_CHECK],
                  f"HASHSERVER_TEST_SEAMLESS_VENV={override} lacks the Seamless clients")
        return python
    venv = _cached_venv_dir()
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)
            what = f"cannot install seamless-remote=={SEAMLESS_REMOTE_VERSION} in {venv}"
            _run_step([sys.executable, "-m", "venv", str(venv)], what)
            _run_step([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                       f"seamless-remote=={SEAMLESS_REMOTE_VERSION}",
                       f"seamless-core=={SEAMLESS_CORE_VERSION}"], what)
            _run_step([str(python), "-c", IMPORT_CHECK], what)
            ready.write_text(f"seamless-remote=={SEAMLESS_REMOTE_VERSION} seamless-core=={SEAMLESS_CORE_VERSION}\n")
    return python


DRIVER_PRELUDE = r'''
import asyncio, json, os, sys, time, traceback
OUT = {}

def finish(code):
    try:
        import seamless
        seamless.close()
    except Exception:
        pass
    sys.stderr.flush()
    print(json.dumps(OUT, default=repr), flush=True)
    os._exit(code)

def run(main):
    try:
        asyncio.run(main())
    except BaseException as exc:
        OUT["error"] = f"{type(exc).__name__}: {exc}"
        OUT["traceback"] = traceback.format_exc()[-4000:]
        finish(1)

async def close_sessions(*clients):
    for client in clients:
        for session in list(client._sessions.values()):
            await session.close()
'''


def run_driver(python: Path, tmp_path: Path, name: str, body: str, *args: str,
               env: dict | None = None, timeout: float = 180.0) -> dict:
    """Run a driver script with the Seamless venv's Python; returns the JSON it prints last."""
    script = tmp_path / f"{name}.py"
    script.write_text(DRIVER_PRELUDE + textwrap.dedent(body))
    full_env = clean_environ({
        # keep a broken server from hanging a test for the clients' default 20 minutes
        "SEAMLESS_REMOTE_CONNECT_TIMEOUT": "10",
        "SEAMLESS_REMOTE_READ_TIMEOUT": "60",
        "SEAMLESS_REMOTE_HEALTHCHECK_TIMEOUT": "10",
    })
    full_env.update(env or {})
    try:
        result = subprocess.run([str(python), str(script), *args], capture_output=True, text=True,
                                timeout=timeout, env=full_env, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"driver {name} did not finish within {timeout} s:\n"
                             f"stdout: {exc.stdout}\nstderr: {exc.stderr}") from None
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"driver {name} exited {result.returncode} without its JSON:\n"
                             f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}") from None
    out["_stderr"] = result.stderr[-3000:]
    assert result.returncode == 0, (
        f"driver {name} failed (exit {result.returncode}) at step {out.get('step')!r}: {out.get('error')}\n"
        f"{out.get('traceback', '')}\nstderr: {result.stderr[-2000:]}")
    return out


# ================================================================ the real clients
ROUNDTRIP = r'''
url = sys.argv[1]

async def main():
    from seamless import Buffer
    from seamless.caching import buffer_writer
    from seamless_remote.buffer_client import BufferClient

    client = BufferClient(readonly=False)
    client.url = url
    OUT["step"] = "healthcheck"
    await client.healthcheck()
    data = b"seamless BufferClient buffer " + os.urandom(16)
    buf = Buffer(data)
    cs = buf.get_checksum()
    absent = Buffer(b"never written " + os.urandom(16)).get_checksum()
    OUT["checksum"], OUT["absent"] = cs.hex(), absent.hex()

    OUT["step"] = "promise"
    await client.promise(cs)
    OUT["step"] = "buffer_lengths while promised"
    OUT["lengths_promised"] = await client.buffer_lengths([cs, absent])
    OUT["step"] = "buffer_writer /has-now while promised"
    OUT["has_now_promised"] = sorted(buffer_writer._has_sync(url, [cs.hex(), absent.hex()], 10.0, now=True))
    OUT["has_promised"] = sorted(buffer_writer._has_sync(url, [cs.hex(), absent.hex()], 10.0, now=False))

    OUT["step"] = "write"
    OUT["write"] = await client.write(cs, buf)
    OUT["step"] = "buffer_lengths after write"
    OUT["lengths_written"] = await client.buffer_lengths([cs, absent])
    OUT["step"] = "get"
    got = await client.get(cs)
    OUT["get_ok"] = got is not None and got.content == data
    OUT["step"] = "get absent"
    OUT["get_absent_is_none"] = (await client.get(absent)) is None
    OUT["step"] = "buffer_writer /has-now after write"
    OUT["has_now_written"] = sorted(buffer_writer._has_sync(url, [cs.hex(), absent.hex()], 10.0, now=True))

    OUT["step"] = "buffer_writer._put_sync"
    data2 = b"buffer_writer flush path " + os.urandom(16)
    buf2 = Buffer(data2)
    cs2 = buf2.get_checksum()
    OUT["checksum2"] = cs2.hex()
    OUT["put_sync"] = buffer_writer._put_sync(url, cs2, buf2, 10.0)
    OUT["has_now_put_sync"] = sorted(buffer_writer._has_sync(url, [cs2.hex()], 10.0, now=True))
    got2 = await client.get(cs2)
    OUT["get2_ok"] = got2 is not None and got2.content == data2
    OUT["step"] = "done"
    await close_sessions(client)

run(main)
finish(0)
'''


@pytest.mark.network
@pytest.mark.timeout(INSTALL_BOUND)
def test_bufferclient_roundtrip(seamless_python, sha256_server, tmp_path):
    """BufferClient: healthcheck, promise, buffer_lengths, write, get; buffer_writer's /has-now."""
    out = run_driver(seamless_python, tmp_path, "roundtrip", ROUNDTRIP, sha256_server.url)
    cs, cs2 = out["checksum"], out["checksum2"]
    assert out["lengths_promised"] == [True, False], (
        "BufferClient.buffer_lengths (it asks GET /has) must report a promised buffer as present "
        f"and an unknown one as absent: {out['lengths_promised']}")
    assert out["has_promised"] == [cs], f"buffer_writer's /has check must count the promise: {out['has_promised']}"
    assert out["has_now_promised"] == [], (
        f"/has-now must not count a promise (buffer_writer would never upload it): {out['has_now_promised']}")
    assert out["write"] is True
    assert out["lengths_written"] == [True, False], out["lengths_written"]
    assert out["get_ok"], "BufferClient.get did not return the buffer just written"
    assert out["get_absent_is_none"], "BufferClient.get of an unknown buffer must give None (404)"
    assert out["has_now_written"] == [cs], (
        "buffer_writer's GET /has-now must report the written buffer (it silently treats any error, "
        f"e.g. a missing /has-now route, as 'nothing present'): {out['has_now_written']}")
    assert out["put_sync"] is True, "buffer_writer._put_sync (/has-now, then PUT) failed"
    assert out["has_now_put_sync"] == [cs2], out["has_now_put_sync"]
    assert out["get2_ok"]
    # Seen the same from every worker, over plain HTTP.
    assert_every_worker(sha256_server.port, "GET", "/has-now", [cs, cs2, out["absent"]], [True, True, False],
                        "buffers written by the Seamless clients")


WRITE_PATHS = r'''
url = sys.argv[1]

async def main():
    from seamless import Buffer
    from seamless_remote import buffer_remote

    OUT["step"] = "define_extern_client/activate"
    buffer_remote.define_extern_client("hashserver-under-test", "hashserver", url=url, readonly=False)
    buffer_remote.activate(no_main=True, extern_clients=["hashserver-under-test"])
    OUT["has_write_server"] = buffer_remote.has_write_server()
    data = b"Buffer.write() path " + os.urandom(16)
    buf = Buffer(data)
    cs = await buf.get_checksum_async()
    OUT["checksum"] = cs.hex()
    OUT["step"] = "Buffer.write()"
    OUT["buffer_write"] = await buf.write()
    OUT["step"] = "buffer_remote.get_buffer"
    got = await buffer_remote.get_buffer(cs)
    OUT["get_ok"] = got is not None and got.content == data
    OUT["step"] = "buffer_remote.get_buffer_lengths"
    OUT["lengths"] = await buffer_remote.get_buffer_lengths([cs])

run(main)

OUT["step"] = "buffer_writer.register + flush"
from seamless import Buffer
from seamless.caching import buffer_writer
data2 = b"buffer_writer.flush path " + os.urandom(16)
buf2 = Buffer(data2)
cs2 = buf2.get_checksum()
OUT["checksum2"] = cs2.hex()
buffer_writer.register(buf2)
buffer_writer.flush(timeout=30.0)
OUT["flushed_has_now"] = sorted(buffer_writer._has_sync(url, [cs2.hex()], 10.0, now=True))
OUT["step"] = "done"
finish(0)
'''


@pytest.mark.network
@pytest.mark.timeout(INSTALL_BOUND)
def test_buffer_write_and_background_flush(seamless_python, sha256_server, tmp_path):
    """``Buffer.write()`` (promise, then PUT) and ``buffer_writer.register`` + ``flush``."""
    out = run_driver(seamless_python, tmp_path, "write_paths", WRITE_PATHS, sha256_server.url)
    assert out["has_write_server"] is True
    assert out["buffer_write"] is True, f"Buffer.write() returned {out['buffer_write']!r}"
    assert out["get_ok"], "buffer_remote.get_buffer did not return the buffer Buffer.write() stored"
    assert out["lengths"] == [True], out["lengths"]
    assert out["flushed_has_now"] == [out["checksum2"]], (
        f"after buffer_writer.flush, /has-now must report the buffer: {out['flushed_has_now']}")
    for cs in (out["checksum"], out["checksum2"]):
        for _ in range(4):
            reply = request(sha256_server.port, "GET", "/" + cs)
            assert reply.status == 200 and sha256(reply.body) == cs, f"GET /{cs}: {reply!r}"


GET_COMPRESSED = r'''
url = sys.argv[1]
checksums = sys.argv[2:]

async def main():
    import hashlib
    from seamless import Checksum
    from seamless_remote.buffer_client import BufferClient

    client = BufferClient(readonly=True)
    client.url = url
    results = {}
    for cs in checksums:
        OUT["step"] = "get " + cs
        try:
            buf = await client.get(Checksum(cs))
        except Exception as exc:
            results[cs] = f"{type(exc).__name__}: {exc}"[:400]
            continue
        results[cs] = None if buf is None else hashlib.sha256(buf.content).hexdigest()
    OUT["results"] = results
    OUT["step"] = "buffer_lengths"
    OUT["lengths"] = await client.buffer_lengths([Checksum(cs) for cs in checksums])
    OUT["step"] = "done"
    await close_sessions(client)

run(main)
finish(0)
'''


@pytest.mark.network
@pytest.mark.timeout(INSTALL_BOUND)
def test_bufferclient_reads_compressed_buffers(seamless_python, sha256_server, tmp_path):
    """``.zst``/``.gz`` buffers reach today's BufferClient intact.

    It sends ``Accept-Encoding: gzip, deflate`` and cannot decode zstd (aiohttp on Python < 3.14
    without backports.zstd), so a ``.zst`` buffer must come decompressed: the FastAPI server
    1.1.0 sends raw zstd and the client fails there."""
    items = list(sha256_server.compressed.values())
    out = run_driver(seamless_python, tmp_path, "get_compressed", GET_COMPRESSED, sha256_server.url,
                     *[c.checksum for c in items])
    for c in items:
        assert out["results"][c.checksum] == c.checksum, (
            f"BufferClient.get of the {c.name} buffer ({c.suffix}, sidecar={c.sidecar}) gave "
            f"{out['results'][c.checksum]!r} instead of the buffer")
    assert out["lengths"] == [True] * len(items), out["lengths"]


PROMISE_WAIT = r'''
url = sys.argv[1]

async def main():
    from seamless import Buffer
    from seamless_remote.buffer_client import BufferClient

    reader = BufferClient(readonly=True)
    reader.url = url
    writer = BufferClient(readonly=False)
    writer.url = url
    data = b"promised, then written " + os.urandom(16)
    buf = Buffer(data)
    cs = buf.get_checksum()
    OUT["step"] = "promise"
    await writer.promise(cs)
    OUT["step"] = "get while promised"
    await reader.healthcheck()
    task = asyncio.ensure_future(reader.get(cs))
    await asyncio.sleep(1.5)
    OUT["get_done_before_write"] = task.done()
    OUT["step"] = "write"
    OUT["write"] = await writer.write(cs, buf)
    OUT["step"] = "await get"
    got = await asyncio.wait_for(task, 30)
    OUT["get_ok"] = got is not None and got.content == data
    OUT["step"] = "done"
    await close_sessions(reader, writer)

run(main)
finish(0)
'''


@pytest.mark.network
@pytest.mark.timeout(INSTALL_BOUND)
def test_bufferclient_get_waits_for_promised_buffer(seamless_python, sha256_server, tmp_path):
    """One Seamless client promises, another GETs before the buffer exists: it gets the buffer."""
    out = run_driver(seamless_python, tmp_path, "promise_wait", PROMISE_WAIT, sha256_server.url)
    assert out["get_done_before_write"] is False, (
        "GET of a promised, absent buffer returned before the PUT (it must wait for the buffer)")
    assert out["write"] is True
    assert out["get_ok"], "the waiting BufferClient.get did not receive the buffer once it was written"


LAUNCH = r'''
bufferdir, port_start, port_end, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def main():
    import importlib.resources
    import yaml
    from seamless import Buffer
    import seamless_config.cluster as cluster_module
    import seamless_config.tools as tools
    from seamless_remote.buffer_client import BufferLaunchedClient

    OUT["step"] = "launch config"
    # seamless_config.tools.configure_hashserver, minus the cluster files: the package's own
    # tools.yaml, a local cluster (no SSH), mode "rw".
    tools.define_tools(yaml.safe_load(
        importlib.resources.files("seamless_config").joinpath("tools.yaml").read_text()))
    cluster_module._local_cluster = "testcluster"
    injected = tools._build_injected("rw", "testcluster", "testproject", None, None, None)
    injected["BUFFERDIR"] = bufferdir
    added = {"tunnel": False, "hostname": "localhost", "network_interface": None, "conda": None,
             "port_start": port_start, "port_end": port_end}
    conf = tools._configure_tool("hashserver", added=added, injected=injected)
    for key in ("network_interface", "conda", "port_start", "port_end"):
        if conf.get(key) is None:
            conf.pop(key, None)
    conf["timeout"] = timeout
    OUT["launch_config"] = conf

    client = BufferLaunchedClient(readonly=False)
    client.launch_config = conf
    client.local = True
    data = b"written through a launched hashserver " + os.urandom(16)
    buf = Buffer(data)
    cs = buf.get_checksum()
    OUT["checksum"] = cs.hex()
    OUT["step"] = "launch + promise"
    await client.promise(cs)
    OUT["url"] = client.url
    OUT["step"] = "write"
    OUT["write"] = await client.write(cs, buf)
    OUT["step"] = "get"
    got = await client.get(cs)
    OUT["get_ok"] = got is not None and got.content == data
    OUT["lengths"] = await client.buffer_lengths([cs])
    OUT["step"] = "done"
    await close_sessions(client)

run(main)
finish(0)
'''


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _end_launched(pid: int) -> None:
    """End the server the launcher started (its own session: our grandchild, not our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _pid_running(pid):
            return
        try:
            os.killpg(pid, sig)  # the server leads its own session: this reaches its workers too
        except ProcessLookupError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _pid_running(pid):
            time.sleep(0.1)


def _processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is ``directory`` (the launcher starts the
    server there): the ones this test started, found even when the launcher lost track of them."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(directory):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.network
@pytest.mark.timeout(INSTALL_BOUND)
def test_seamless_launcher_starts_hashserver(seamless_python, tmp_path):
    """Seamless's launcher (remote-http-launcher, as BufferLaunchedClient runs it) starts this
    ``hashserver`` with its own command line and the clients then use it.

    The launcher passes no ``--hash-algorithm``; Seamless hashes with SHA-256, so the user
    selects it with ``HASHSERVER_HASH_ALGORITHM=sha-256`` in the environment the launcher passes on.
    """
    script = BIN / "hashserver"
    if not script.exists():
        pytest.skip(f"no hashserver console script next to {sys.executable}: the launcher runs `hashserver`")
    home = tmp_path / "home"
    home.mkdir()
    bufferdir = tmp_path / "buffers"
    bufferdir.mkdir()
    start = free_port()
    start = min(start, 65535 - 20)
    env = {
        "HOME": str(home),
        "PATH": os.pathsep.join([str(seamless_python.parent), str(BIN), os.environ.get("PATH", "")]),
        "HASHSERVER_HASH_ALGORITHM": "sha-256",
    }
    status_files: list[Path] = []
    server_dir = home / ".remote-http-launcher" / "server"

    def server_logs() -> str:
        logs = sorted(server_dir.glob("*.log")) if server_dir.exists() else []
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in logs)

    try:
        try:
            out = run_driver(seamless_python, tmp_path, "launch", LAUNCH, str(bufferdir), str(start),
                             str(start + 20), "60", env=env, timeout=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nhashserver output, as the launcher logged it:\n{server_logs()}") from None
        finally:
            status_files = sorted(server_dir.glob("*.json")) if server_dir.exists() else []
        logs = server_logs()
        assert out["write"] is True and out["get_ok"], f"launched server did not store/serve: {out}"
        assert out["lengths"] == [True]
        assert len(status_files) == 1, f"expected one launcher status file, found {status_files}"
        status = json.loads(status_files[0].read_text())
        assert status.get("status") == "running", f"status file: {status}\nserver log: {logs}"
        assert isinstance(status.get("port"), int) and start <= status["port"] <= start + 20, (
            f"port {status.get('port')!r} not in --port-range {start} {start + 20}: {status}")
        for key in ("workdir", "log", "command", "uid", "pid"):
            assert key in status, f"the server dropped the launcher's key {key!r} from the status file: {status}"
        assert status["command"].startswith(f"hashserver --port-range {start} {start + 20} --status-file "), status
        assert out["url"].endswith(f":{status['port']}"), (out["url"], status)
    finally:
        pids = set(_processes_in(bufferdir / "testproject"))
        for path in status_files:
            try:
                pid = json.loads(path.read_text()).get("pid")
            except (OSError, ValueError):
                continue
            if isinstance(pid, int):
                pids.add(pid)
        for pid in sorted(pids):
            _end_launched(pid)


# ============================================================ launcher options, raw
def _write_atomically(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".writing")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


@pytest.mark.parametrize("workers", [1, 2])
def test_status_file_port_range_and_inactivity_timeout(tmp_path, workers):
    """``hashserver DIR --port-range P P --status-file F --timeout 3`` as the launcher runs it:
    F appears only after the server started; the server fills in "port" and "status": "running"
    (keeping F's other keys) once it answers; requests keep it alive; 3 s without requests end it
    with exit status 0."""
    directory = tmp_path / "buffers"
    directory.mkdir()
    status_file = tmp_path / "status.json"
    port = free_port()  # --port-range P P: inclusive, so P it must be
    argv = [*console_script("hashserver", "hashserver"), str(directory), "--port-range", str(port), str(port),
            "--status-file", str(status_file), "--timeout", "3", *(["--workers", "2"] if workers > 1 else [])]
    server = ServerProcess(argv, log_path=tmp_path / "server.log", port=port).start()
    try:
        time.sleep(0.5)  # the launcher writes the file after starting the process
        _write_atomically(status_file, {"workdir": str(directory), "pid": server.proc.pid,
                                        "extra": "keep me", "status": "starting"})
        deadline = time.monotonic() + 40
        status = {}
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, f"server exited with {server.proc.returncode}:\n{server.output()}"
            try:
                status = json.loads(status_file.read_text())
            except ValueError:
                raise AssertionError("the status file was caught half-written: rewrite it atomically "
                                     "(temporary file + rename)") from None
            if status.get("status") == "running":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"status file never said running: {status}\n{server.output()}")
        assert status.get("port") == port, f"--port-range {port} {port} must give port {port}: {status}"
        assert status.get("extra") == "keep me" and status.get("pid") == server.proc.pid, (
            f"the other keys of the status file must be kept: {status}")
        assert server.answers(timeout=5), "status says running, but the server does not answer /healthcheck"

        # Requests reset the inactivity clock (whichever worker answers): 6 s > --timeout 3.
        for _ in range(12):
            time.sleep(0.5)
            assert server.answers(timeout=5), f"server stopped answering while in use:\n{server.output()}"
        assert server.proc.poll() is None, "server exited although requests kept arriving"

        idle_start = time.monotonic()
        try:
            code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running 30 s after its last request (--timeout 3):\n"
                                 f"{server.output()}") from None
        assert time.monotonic() - idle_start >= 2.0, "server exited before --timeout seconds without requests"
        assert code == 0, f"exit after --timeout must be status 0, got {code}:\n{server.output()}"
    finally:
        server.stop()


def test_status_file_failed_on_startup_error(tmp_path):
    """A startup error with --status-file: "status": "failed", other keys kept, non-zero exit,
    one clear line (no traceback)."""
    status_file = tmp_path / "status.json"
    _write_atomically(status_file, {"extra": "keep me", "status": "starting"})
    port = free_port()
    code, output = expect_startup_failure(
        [str(tmp_path / "no-such-directory"), "--port-range", str(port), str(port), "--status-file",
         str(status_file), "--timeout", "3"], tmp_path, port=port)
    assert code not in (0, None), f"exit status {code} for a missing directory:\n{output}"
    status = json.loads(status_file.read_text())
    assert status.get("status") == "failed", f"status file must say failed: {status}\n{output}"
    assert status.get("extra") == "keep me", f"the other keys of the status file must be kept: {status}"
    assert "Traceback" not in output, output
    assert "no-such-directory" in output, f"the error must name the bad directory:\n{output}"


def test_port_and_port_range_are_exclusive(tmp_path):
    port = free_port()
    code, output = expect_startup_failure(
        [str(tmp_path), "--port", str(port), "--port-range", str(port), str(port)], tmp_path, port=port)
    assert code not in (0, None), output
    assert "--port-range" in output, f"the error must name --port-range:\n{output}"


# ========================================================================= promises
def test_promise_answer(sha256_server):
    port = sha256_server.port
    data = b"promise answer " + os.urandom(16)
    cs = sha256(data)
    for attempt in range(2):  # the second one renews
        reply = request(port, "PUT", "/promise/" + cs)
        assert reply.status == 202, f"PUT /promise/<cs> (attempt {attempt + 1}): {reply!r}"
        assert reply.headers.get("content-type", "").startswith("application/json"), reply
        assert reply.json() == {"checksum": cs, "expires_in": PROMISE_TTL}, reply
    upper = request(port, "PUT", "/promise/" + cs.upper())
    assert upper.status == 202 and upper.json()["checksum"] == cs, f"uppercase checksum: {upper!r}"
    bad = request(port, "PUT", "/promise/xyz")
    assert bad.status == 400, bad
    assert bad.json() == {"message": "Invalid data", "exception": {
        "type": "value_error", "loc": ["path", "checksum"], "msg": "Value error, Wrong length",
        "input": "xyz"}}, bad


def test_promised_buffer_is_present_for_has_but_not_has_now(sha256_server):
    port = sha256_server.port
    data = b"promised buffer " + os.urandom(16)
    cs, absent = sha256(data), sha256(os.urandom(32))
    assert request(port, "PUT", "/promise/" + cs).status == 202
    for method in ("GET", "POST"):
        assert_every_worker(port, method, "/has", [cs, absent], [True, False], "promised buffer")
        assert_every_worker(port, method, "/has-now", [cs, absent], [False, False], "promised buffer")
        assert_every_worker(port, method, "/buffer-length", [cs, absent], [1, 0], "promised buffer")

    put = request(port, "PUT", "/" + cs, data)
    assert put.status == 200, f"PUT of a promised buffer: {put!r}"
    for method in ("GET", "POST"):
        assert_every_worker(port, method, "/has-now", [cs], [True], "written buffer")
        assert_every_worker(port, method, "/buffer-length", [cs], [len(data)], "written buffer")

    # The PUT resolved the promise: once the file is gone, nothing claims the buffer any more.
    buffer_path(sha256_server.directory, cs).unlink()
    assert_every_worker(port, "GET", "/has", [cs], [False], "written buffer deleted after its promise resolved")
    assert_every_worker(port, "GET", "/buffer-length", [cs], [0], "written buffer deleted after its promise resolved")


def test_get_of_promised_buffer_waits_for_put(sha256_server):
    port = sha256_server.port
    data = b"waited for " + os.urandom(16)
    cs = sha256(data)
    assert request(port, "PUT", "/promise/" + cs).status == 202
    results: list = []
    lock = threading.Lock()

    def get():
        try:
            reply = request(port, "GET", "/" + cs, timeout=30)
        except Exception as exc:  # reported below
            reply = exc
        with lock:
            results.append((time.monotonic(), reply))

    threads = [threading.Thread(target=get) for _ in range(4)]  # fresh connections: both workers wait
    for t in threads:
        t.start()
    time.sleep(1.5)
    put_time = time.monotonic()
    with lock:
        early = list(results)
    put = request(port, "PUT", "/" + cs, data, timeout=10)
    assert put.status == 200, f"PUT of a promised buffer must not wait on the promise: {put!r}"
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads), "a GET of the promised buffer is still waiting after the PUT"
    assert not early, f"GETs of a promised, absent buffer answered before the PUT arrived: {early}"
    for finished, reply in results:
        assert isinstance(reply, Reply) and reply.status == 200 and reply.body == data, (
            f"a GET waiting for the promised buffer got {reply!r}")
        assert finished >= put_time

    # An unpromised absent buffer is still a 404 that does not wait for any
    # promise (a wait would outlast the request's timeout and fail here).
    missing = request(port, "GET", "/" + sha256(os.urandom(32)), timeout=10)
    assert missing.status == 404 and missing.body == b"Not found", missing


def test_readonly_server_rejects_promises(tmp_path):
    directory = tmp_path / "buffers"
    directory.mkdir()
    server = start_server(directory, "--hash-algorithm", "sha-256", log_dir=tmp_path)
    try:
        cs = sha256(os.urandom(32))
        reply = request(server.port, "PUT", "/promise/" + cs)
        assert reply.status == 405, f"a read-only server must refuse promises with 405: {reply!r}"
        assert_every_worker(server.port, "GET", "/has", [cs], [False], "refused promise")
    finally:
        server.stop()


def test_has_now_rejects_what_has_rejects(sha256_server):
    for method in ("GET", "POST"):
        reply = json_request(sha256_server.port, method, "/has-now", {"a": 1})
        assert reply.status == 400 and reply.json()["message"] == "Invalid data", reply
        reply = json_request(sha256_server.port, method, "/has-now", ["abc"])
        assert reply.status == 400 and reply.json()["exception"]["loc"] == ["body", 0], reply
        empty = json_request(sha256_server.port, method, "/has-now", [])
        assert empty.status == 200 and empty.body.strip() == b"[]", f"{method} /has-now []: {empty!r}"


# =============================================================== compressed buffers
def test_compressed_buffers_are_present(sha256_server):
    items = list(sha256_server.compressed.values())
    checksums = [c.checksum for c in items] + [sha256(b"absent")]
    for method in ("GET", "POST"):
        assert_every_worker(sha256_server.port, method, "/has", checksums, [True] * len(items) + [False],
                            "compressed buffers")
        assert_every_worker(sha256_server.port, method, "/has-now", checksums, [True] * len(items) + [False],
                            "compressed buffers")
        assert_every_worker(sha256_server.port, method, "/buffer-length", checksums,
                            [len(c.data) for c in items] + [0],
                            "uncompressed lengths (sidecar, else by decompressing)")


@pytest.mark.parametrize("name,accept", [
    ("zst-sidecar", "zstd"), ("zst-bare", "zstd"), ("zst-sidecar", "gzip, zstd"),
    ("gz-sidecar", "gzip"), ("gz-bare", "gzip, deflate"),
])
def test_get_sends_compressed_file_when_accepted(sha256_server, name, accept):
    c = sha256_server.compressed[name]
    encoding = {".zst": "zstd", ".gz": "gzip"}[c.suffix]
    for _ in range(4):
        reply = request(sha256_server.port, "GET", "/" + c.checksum, headers={"Accept-Encoding": accept})
        assert reply.status == 200, f"GET of the {c.name} buffer, Accept-Encoding {accept!r}: {reply!r}"
        assert reply.headers.get("content-encoding") == encoding, (
            f"Accept-Encoding: {accept} on a {c.suffix} buffer: expected Content-Encoding {encoding}, "
            f"got {reply.headers}")
        assert reply.body == c.stored, "the compressed file must be sent as it is"
    head = request(sha256_server.port, "HEAD", "/" + c.checksum, headers={"Accept-Encoding": accept})
    assert head.status == 200 and head.headers.get("content-encoding") == encoding, head
    assert head.headers.get("content-length") == str(len(c.stored)), head


@pytest.mark.parametrize("name", ["zst-sidecar", "zst-bare", "gz-sidecar", "gz-bare"])
@pytest.mark.parametrize("accept", [None, "identity", "zstd;q=0, identity", "br"])
def test_get_decompresses_when_encoding_not_accepted(sha256_server, name, accept):
    """No Accept-Encoding at all (``curl`` without ``--compressed``) gets the buffer itself."""
    c = sha256_server.compressed[name]
    headers = {} if accept is None else {"Accept-Encoding": accept}
    for _ in range(4):
        reply = request(sha256_server.port, "GET", "/" + c.checksum, headers=headers)
        assert reply.status == 200, f"GET of the {c.name} buffer, Accept-Encoding {accept!r}: {reply!r}"
        assert reply.headers.get("content-encoding") in (None, "identity"), (
            f"Accept-Encoding {accept!r}: must not get Content-Encoding {reply.headers.get('content-encoding')}")
        assert reply.body == c.data, (
            f"Accept-Encoding {accept!r} on a {c.suffix} buffer: expected the decompressed buffer "
            f"({len(c.data)} bytes), got {len(reply.body)} bytes")
        if "content-length" in reply.headers:
            assert reply.headers["content-length"] == str(len(c.data)), reply.headers
    head = request(sha256_server.port, "HEAD", "/" + c.checksum, headers=headers)
    assert head.status == 200 and head.headers.get("content-encoding") in (None, "identity"), head
    if "content-length" in head.headers:
        assert head.headers["content-length"] == str(len(c.data)), head.headers


@pytest.mark.parametrize("name", ["zst-bare", "gz-bare"])
def test_get_compressed_as_aiohttp_and_requests_ask(sha256_server, name):
    """``Accept-Encoding: gzip, deflate`` (aiohttp, requests): a .zst buffer comes decompressed;
    a .gz one may come as gzip, which those clients decode."""
    c = sha256_server.compressed[name]
    reply = request(sha256_server.port, "GET", "/" + c.checksum, headers={"Accept-Encoding": "gzip, deflate"})
    assert reply.status == 200, f"GET of the {c.name} buffer, Accept-Encoding 'gzip, deflate': {reply!r}"
    encoding = reply.headers.get("content-encoding")
    body = gzip.decompress(reply.body) if encoding == "gzip" else reply.body
    assert encoding in (None, "identity", "gzip"), f"{name}: a client that accepts gzip, deflate got {encoding}"
    assert body == c.data
    requests = pytest.importorskip("requests")
    assert requests.get(f"{sha256_server.url}/{c.checksum}", timeout=15).content == c.data


def test_compressed_file_added_while_running(sha256_server):
    data = text_blob("added-later")
    cs = sha256(data)
    add_buffer(sha256_server.directory, zstd_compress(data), checksum=cs, suffix=".zst")
    assert_every_worker(sha256_server.port, "GET", "/has", [cs], [True], "a .zst copied in while running")
    assert_every_worker(sha256_server.port, "GET", "/has-now", [cs], [True], "a .zst copied in while running")
    assert_every_worker(sha256_server.port, "GET", "/buffer-length", [cs], [len(data)],
                        "a .zst copied in while running")
    for _ in range(4):
        reply = request(sha256_server.port, "GET", "/" + cs)
        assert reply.status == 200 and reply.body == data, (
            f"GET without Accept-Encoding of a .zst copied in while running must give the buffer itself: "
            f"{reply.status}, {len(reply.body)} bytes, Content-Encoding {reply.headers.get('content-encoding')}")


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_put_compressed(sha256_server, encoding):
    suffix = {"zstd": ".zst", "gzip": ".gz"}[encoding]
    data = text_blob("put-" + encoding + os.urandom(4).hex())
    cs = sha256(data)
    body = zstd_compress(data) if encoding == "zstd" else gzip.compress(data)
    reply = request(sha256_server.port, "PUT", "/" + cs, body, {"Content-Encoding": encoding})
    assert reply.status == 200 and reply.body == b"OK", f"PUT with Content-Encoding: {encoding}: {reply!r}"
    stored = buffer_path(sha256_server.directory, cs, suffix=suffix)
    sidecar = buffer_path(sha256_server.directory, cs, suffix=".BUFFERLENGTH")
    assert stored.exists(), f"the compressed bytes must be stored as {stored.name}: " \
        f"{sorted(p.name for p in stored.parent.iterdir())}"
    assert stored.read_bytes() == body
    assert sidecar.exists() and sidecar.read_text().strip() == str(len(data)), "sidecar with the uncompressed length"
    assert not buffer_path(sha256_server.directory, cs).exists(), "no uncompressed copy expected"

    assert_every_worker(sha256_server.port, "GET", "/has-now", [cs], [True], f"PUT {encoding}")
    assert_every_worker(sha256_server.port, "GET", "/buffer-length", [cs], [len(data)], f"PUT {encoding}")
    for _ in range(4):
        plain = request(sha256_server.port, "GET", "/" + cs)
        assert plain.status == 200 and plain.body == data, (
            f"GET without Accept-Encoding after PUT {encoding} must give the buffer itself: {plain.status}, "
            f"{len(plain.body)} bytes, Content-Encoding {plain.headers.get('content-encoding')}")
        raw = request(sha256_server.port, "GET", "/" + cs, headers={"Accept-Encoding": encoding})
        assert raw.status == 200 and raw.headers.get("content-encoding") == encoding and raw.body == body, raw
    again = request(sha256_server.port, "PUT", "/" + cs, body, {"Content-Encoding": encoding})
    assert again.status == 200, f"PUT of a present buffer: {again!r}"


def _leftovers(directory: Path, cs: str) -> list[str]:
    sub = buffer_path(directory, cs).parent
    return sorted(p.name for p in sub.iterdir() if p.name.startswith(cs)) if sub.exists() else []


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_put_compressed_with_wrong_checksum(sha256_server, encoding):
    data = b"compressed, but not what the URL says " + os.urandom(8)
    cs = sha256(b"something else " + os.urandom(8))
    body = zstd_compress(data) if encoding == "zstd" else gzip.compress(data)
    reply = request(sha256_server.port, "PUT", "/" + cs, body, {"Content-Encoding": encoding})
    assert reply.status == 400 and reply.body == b"Incorrect checksum", reply
    assert _leftovers(sha256_server.directory, cs) == [], "nothing may be stored for a wrong checksum"
    has_now = json_request(sha256_server.port, "GET", "/has-now", [cs])
    assert has_now.status == 200 and has_now.json() == [False], f"/has-now after a refused PUT: {has_now!r}"


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_put_undecodable_payload(sha256_server, encoding):
    cs = sha256(b"never stored " + os.urandom(8))
    reply = request(sha256_server.port, "PUT", "/" + cs, b"this is not compressed data at all " * 10,
                    {"Content-Encoding": encoding})
    assert reply.status == 400 and reply.body == b"Invalid compressed payload", (
        f"undecodable {encoding} body: {reply!r}")
    assert _leftovers(sha256_server.directory, cs) == [], "nothing may be stored for an undecodable body"
    has_now = json_request(sha256_server.port, "GET", "/has-now", [cs])
    assert has_now.status == 200 and has_now.json() == [False], f"/has-now after a refused PUT: {has_now!r}"


# ====================================================================== hash algorithm
def _sample_directory(directory: Path, hasher) -> None:
    directory.mkdir()
    for i in range(5):
        data = b"sample buffer %d " % i + os.urandom(8)
        add_buffer(directory, data, checksum=hasher(data))


@pytest.mark.parametrize("named_by,option,expected", [
    (sha256, [], "--hash-algorithm sha-256"),
    (sha3, ["--hash-algorithm", "sha-256"], "--hash-algorithm sha3-256"),
])
def test_refuses_directory_of_the_other_algorithm(tmp_path, named_by, option, expected):
    directory = tmp_path / "buffers"
    _sample_directory(directory, named_by)
    port = free_port()
    code, output = expect_startup_failure([str(directory), "--port", str(port), *option], tmp_path, port=port)
    assert code not in (0, None), output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"refusal must be one line, got {len(lines)}:\n{output}"
    assert expected in lines[0], f"the refusal must say which option to use ({expected!r}): {lines[0]}"
    assert "Traceback" not in output


def test_matching_algorithm_starts(tmp_path):
    directory = tmp_path / "buffers"
    _sample_directory(directory, sha3)
    server = start_server(directory, log_dir=tmp_path, workers=1)  # default sha3-256
    server.stop()


def test_hash_algorithm_from_environment(tmp_path):
    """``HASHSERVER_HASH_ALGORITHM=sha-256`` selects SHA-256 for ``hashserver`` without the
    option: the launcher's command line has no --hash-algorithm, so this is how a user gets a
    launched server that accepts Seamless's SHA-256 buffers."""
    directory = tmp_path / "buffers"
    directory.mkdir()
    server = start_server(directory, "--writable", log_dir=tmp_path, workers=1,
                          env={"HASHSERVER_HASH_ALGORITHM": "sha-256"})
    try:
        data = b"sha-256 via the environment"
        reply = request(server.port, "PUT", "/" + sha256(data), data)
        assert reply.status == 200, f"PUT of a SHA-256 buffer with HASHSERVER_HASH_ALGORITHM=sha-256: {reply!r}"
    finally:
        server.stop()


def test_corruption_message_names_sha256(sha256_server):
    cs = sha256(b"what the name promises " + os.urandom(8))
    add_buffer(sha256_server.directory, b"something else entirely", checksum=cs)
    path = buffer_path(sha256_server.directory, cs)
    try:
        for _ in range(4):
            reply = request(sha256_server.port, "GET", "/" + cs)
            assert reply.status == 400, reply
            assert reply.json() == {"message": f"File corruption: file at path {path} does not have the "
                                               f"correct SHA-256 checksum."}, reply
    finally:
        path.unlink()


def test_corrupt_compressed_buffer_is_refused(sha256_server):
    """Integrity checks hash the uncompressed content."""
    cs = sha256(b"what the name promises, compressed " + os.urandom(8))
    add_buffer(sha256_server.directory, zstd_compress(b"other content " * 100), checksum=cs, suffix=".zst")
    path = buffer_path(sha256_server.directory, cs, suffix=".zst")
    try:
        for accept in (None, "zstd"):
            reply = request(sha256_server.port, "GET", "/" + cs,
                            headers={} if accept is None else {"Accept-Encoding": accept})
            assert reply.status == 400, f"corrupt .zst, Accept-Encoding {accept!r}: {reply!r}"
            message = reply.json()["message"]
            assert message.startswith("File corruption: file at path ") and "SHA-256 checksum" in message, message
    finally:
        path.unlink()
