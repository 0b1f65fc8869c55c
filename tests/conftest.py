"""Shared test helpers: buffer directories, and real servers run as users run them.

Servers come from :mod:`hashserver.testing` (the harness the bench uses too).  With
``--no-skips``, or ``CI=true`` in the environment, a skipped test counts as failed:
in CI every test must run.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashserver.testing import POLL, ServerProcess, free_port, stop_all

__all__ = ["BIN", "ServerProcess", "add_buffer", "buffer_path", "free_port", "leftovers", "self_signed", "sha3",
           "wait_for"]

BIN = Path(sys.executable).parent
_names = itertools.count()


def sha3(data: bytes) -> str:
    return hashlib.sha3_256(data).hexdigest()


def self_signed(cert: Path, key: Path, alt_names: str | None = None,
                common_name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and its key (openssl); ``alt_names``: its subjectAltName."""
    extension = ["-addext", f"subjectAltName={alt_names}"] if alt_names else []
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={common_name}", *extension],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def signed_by_a_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """(the CA's certificate, a server certificate for 127.0.0.1 that it signed, the
    server's key): for clients that take no self-signed certificate as a server's
    (rustls, in obstore, takes none that is a CA's)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
                    "-days", "2", "-subj", "/CN=hashserver test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"], check=True, capture_output=True, timeout=60)
    cert, key, request = directory / "server.pem", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)],
                   check=True, capture_output=True, timeout=60)
    return ca, cert, key


def buffer_path(directory, checksum: str, layout: str = "prefix", suffix: str = "") -> Path:
    """Where a buffer file (``suffix``: ``.zst``, ``.gz``, ``.BUFFERLENGTH``...) lives."""
    directory = Path(directory)
    if layout == "prefix":
        return directory / checksum[:2] / (checksum + suffix)
    if layout == "flat":
        return directory / (checksum + suffix)
    raise ValueError(layout)


def add_buffer(directory, data: bytes, layout: str = "prefix", checksum: str | None = None,
               suffix: str = "") -> str:
    """Write a buffer file as another program would (``cp``); returns its checksum."""
    checksum = checksum or sha3(data)
    path = buffer_path(directory, checksum, layout, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return checksum


def wait_for(condition, what, bound: float = 60.0):
    """Poll ``condition`` until it returns something true, and return that; fail after
    ``bound`` seconds (a guard against a hang, not a speed requirement), saying ``what``
    was awaited (a string, or a function called at that moment to describe the state)."""
    deadline = time.monotonic() + bound
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:g} s: {what() if callable(what) else what}")
        time.sleep(POLL)


def leftovers(directory) -> list[str]:
    """Files that are neither buffers nor the prefix marker: what an interrupted or
    refused write may have left behind."""
    found = []
    for dirpath, _, files in os.walk(directory):
        for name in files:
            if name == ".HASHSERVER_PREFIX" or (len(name) == 64 and "." not in name):
                continue
            found.append(os.path.join(dirpath, name))
    return found


# ------------------------------------------------------------------ CI: no skips
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-skips", action="store_true", default=False,
                     help="a skipped test fails (on by default when CI=true)")


def _no_skips(config: pytest.Config) -> bool:
    return config.getoption("--no-skips") or os.environ.get("CI", "").lower() in ("true", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Under --no-skips a skip (marker, fixture or test body) becomes a failure that says why."""
    outcome = yield
    report = outcome.get_result()
    if not hasattr(report, "wasxfail") and _no_skips(item.config):
        _fail_if_skipped(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a whole module skipped at import (``pytest.importorskip``)."""
    outcome = yield
    if _no_skips(collector.config):
        _fail_if_skipped(outcome.get_result())


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and skips fail under --no-skips or CI=true: {reason}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_all()  # servers a test started outside a fixture and left behind


# ---------------------------------------------------------------------- servers
@pytest.fixture
def logs(tmp_path_factory) -> Path:
    """Server logs, kept out of the buffer directories under test."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture
def serve(logs):
    """``serve(directory, *options, workers=1)`` starts ``hashserver`` and waits for it."""
    started: list[ServerProcess] = []

    def start(directory, *options: str, workers: int = 1, wait: bool = True, env=None) -> ServerProcess:
        server = ServerProcess.hashserver(directory, *options, workers=workers, env=env,
                                          log_path=logs / f"server-{next(_names)}.log")
        return _launch(server, started, wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_sanic(logs):
    """``serve_sanic(env, workers=2)`` starts ``sanic hashserver.app`` configured by env."""
    started: list[ServerProcess] = []

    def start(env: dict, workers: int = 2, wait: bool = True) -> ServerProcess:
        server = ServerProcess.sanic(env, workers=workers, log_path=logs / f"sanic-{next(_names)}.log")
        return _launch(server, started, wait)

    yield start
    for server in started:
        server.stop()


def _launch(server: ServerProcess, started: list[ServerProcess], wait: bool) -> ServerProcess:
    started.append(server.start())
    if wait:
        server.wait_ready()
    return server


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


def resident_bytes(path) -> int:
    """Bytes of the file in the page cache (mincore over a private mapping, which faults nothing in)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    if size == 0:
        return 0  # no pages (and nothing to map)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del start
    return sum(page & 1 for page in vector) * mmap.PAGESIZE


def page_cache_dir(tmp_path):
    """A directory whose files' pages the kernel can drop (not tmpfs, where a file is its pages)."""
    import tempfile

    from hashserver.filesystems import file_system_type

    if file_system_type(str(tmp_path)) not in ("tmpfs", "ramfs"):
        return tmp_path
    return tempfile.mkdtemp(prefix=".test-pagecache-", dir=os.path.dirname(__file__))


@pytest.fixture
def page_cache_path(tmp_path) -> Path:
    """:func:`page_cache_dir` as a fixture, removed afterwards when it is not ``tmp_path``."""
    import shutil

    directory = Path(page_cache_dir(tmp_path))
    yield directory
    if directory != tmp_path:
        shutil.rmtree(directory, ignore_errors=True)
