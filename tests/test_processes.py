"""Real servers, started as users start them, talked to over HTTP."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hashserver.testing import clean_environ

from conftest import BIN, ServerProcess, add_buffer, buffer_path, free_port, sha3, wait_for

ROUNDS = 40  # new connection each time, so that every worker answers some


def fresh_get(url, **kwargs):
    with requests.Session() as session:  # a new connection: any worker may take it
        return session.get(url, timeout=30, **kwargs)


def check_serves(server, directory, writable: bool):
    cs = add_buffer(directory, b"served")
    missing = sha3(b"missing")
    r = fresh_get(f"{server.url}/{cs}")
    assert (r.status_code, r.content) == (200, b"served")
    assert r.headers["content-type"] == "application/octet-stream"
    h = requests.head(f"{server.url}/{cs}", timeout=30)
    assert (h.status_code, h.headers["content-length"]) == (200, "6")
    assert requests.get(f"{server.url}/has", json=[cs, missing], timeout=30).json() == [True, False]
    assert requests.post(f"{server.url}/has", json=[cs, missing], timeout=30).json() == [True, False]
    assert requests.get(f"{server.url}/buffer-length", json=[cs, missing], timeout=30).json() == [6, 0]
    new = b"put over http"
    r = requests.put(f"{server.url}/{sha3(new)}", data=new, timeout=30)
    if writable:
        assert (r.status_code, r.text) == (200, "OK")
        assert buffer_path(directory, sha3(new)).read_bytes() == new
    else:
        assert r.status_code == 405


def test_hashserver_command(serve, tmp_path):
    server = serve(tmp_path, "--writable", workers=2)
    check_serves(server, tmp_path, writable=True)


def test_the_server_says_where_it_listens_once_its_workers_are_ready(serve, tmp_path):
    server = serve(tmp_path, workers=2)
    wait_for(lambda: "serving" in server.output(), "the line saying where it serves")
    assert f"serving {tmp_path} on http://127.0.0.1:{server.port} (2 workers)" in server.output()


def test_workers_may_open_as_many_files_as_the_hard_limit_allows(tmp_path, logs):
    """A service's usual soft limit, 1024, is a few hundred connections of clients and to
    an object store: the server raises it to the hard limit for itself and its workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 512, "this machine's hard limit leaves nothing to raise"
    server = ServerProcess.hashserver(tmp_path, workers=2, log_path=logs / "limits.log")
    server.argv = ["sh", "-c", 'ulimit -Sn 512 && exec "$@"', "sh", *server.argv]
    server.start()
    try:
        server.wait_ready()
        for pid in [server.pid, *server.worker_pids()]:
            limits = Path(f"/proc/{pid}/limits").read_text()
            soft_now = int(re.search(r"^Max open files\s+(\S+)", limits, re.MULTILINE).group(1))
            assert soft_now > 512, limits
    finally:
        server.stop()


def test_python_dash_m(tmp_path, logs):
    port = free_port()
    with ServerProcess([str(BIN / "python"), "-m", "hashserver", str(tmp_path), "--port", str(port)],
                       port=port, log_path=logs / "python-m.log") as server:
        check_serves(server, tmp_path, writable=False)


@pytest.mark.parametrize("writable_var", ["HASHSERVER_WRITABLE", "HASHSERVER_WRITEABLE"])
def test_sanic_workers_from_environment(serve_sanic, tmp_path, writable_var):
    server = serve_sanic({"HASHSERVER_DIRECTORY": str(tmp_path), writable_var: "true"}, workers=2)
    check_serves(server, tmp_path, writable=True)


def test_sanic_read_only_by_default(serve_sanic, tmp_path):
    server = serve_sanic({"HASHSERVER_DIRECTORY": str(tmp_path)}, workers=2)
    check_serves(server, tmp_path, writable=False)


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({}, "HASHSERVER_DIRECTORY is not set"),
        ({"HASHSERVER_DIRECTORY": "/does/not/exist"}, "HASHSERVER_DIRECTORY='/does/not/exist'"),
        ({"HASHSERVER_WRITABLE": "yes please"}, "HASHSERVER_WRITABLE='yes please'"),
        ({"HASHSERVER_LAYOUT": "vault", "HASHSERVER_WRITABLE": "1"}, "HASHSERVER_LAYOUT='vault'"),
        ({"HASHSERVER_LOCK_TIMEOUT": "-5"}, "HASHSERVER_LOCK_TIMEOUT=-5.0"),
    ],
)
def test_sanic_startup_errors(tmp_path, env, fragment):
    full = dict(env)
    if env and "HASHSERVER_DIRECTORY" not in env:
        full["HASHSERVER_DIRECTORY"] = str(tmp_path)
    out = subprocess.run([str(BIN / "sanic"), "hashserver.app", "--port", str(free_port()), "--no-motd"],
                         env=clean_environ(full), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_read_your_writes_across_workers(serve, tmp_path):
    server = serve(tmp_path, "--writable", workers=2)
    for i in range(10):
        data = f"buffer {i}".encode()
        cs = sha3(data)
        assert requests.put(f"{server.url}/{cs}", data=data, timeout=30).status_code == 200
        for _ in range(4):
            assert fresh_get(f"{server.url}/{cs}").content == data
            assert fresh_get(f"{server.url}/has", json=[cs]).json() == [True]
            assert fresh_get(f"{server.url}/buffer-length", json=[cs]).json() == [len(data)]
            with requests.Session() as s:
                assert s.head(f"{server.url}/{cs}", timeout=30).status_code == 200


def test_read_your_writes_across_servers(serve, tmp_path):
    first = serve(tmp_path, "--writable", workers=2)
    second = serve(tmp_path, "--writable", workers=2)
    data = b"written through the second server"
    cs = sha3(data)
    assert requests.put(f"{second.url}/{cs}", data=data, timeout=30).status_code == 200
    for _ in range(ROUNDS // 4):
        assert fresh_get(f"{first.url}/{cs}").content == data
        assert fresh_get(f"{first.url}/has", json=[cs]).json() == [True]


def test_files_added_and_removed_by_others(serve, tmp_path):
    kept = add_buffer(tmp_path, b"kept")
    doomed = add_buffer(tmp_path, b"doomed")
    server = serve(tmp_path, workers=2)
    source = tmp_path / "elsewhere"
    source.write_bytes(b"copied in")
    copied = sha3(b"copied in")
    target = buffer_path(tmp_path, copied)
    target.parent.mkdir(exist_ok=True)
    shutil.copy(source, target)
    os.unlink(buffer_path(tmp_path, doomed))
    for _ in range(ROUNDS):
        assert fresh_get(f"{server.url}/has", json=[kept, doomed, copied]).json() == [True, False, True]
    for _ in range(ROUNDS // 2):
        assert fresh_get(f"{server.url}/{copied}").content == b"copied in"
        assert fresh_get(f"{server.url}/{doomed}").status_code == 404
        assert fresh_get(f"{server.url}/buffer-length", json=[copied, doomed]).json() == [9, 0]
    # still exact after the background rescan has run
    time.sleep(3)
    os.unlink(target)
    for _ in range(ROUNDS // 2):
        assert fresh_get(f"{server.url}/has", json=[kept, copied]).json() == [True, False]
        assert fresh_get(f"{server.url}/{copied}").status_code == 404


def test_large_directory_starts_and_answers(serve, tmp_path):
    count = 30000
    hexes = []
    for i in range(count):
        data = i.to_bytes(4, "little")
        cs = sha3(data)
        d = tmp_path / cs[:2]
        if not d.exists():
            d.mkdir()
        fd = os.open(d / cs, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
        hexes.append(cs)
    server = serve(tmp_path, workers=2)
    sample = hexes[::10] + [sha3(b"absent %d" % i) for i in range(1000)]
    answer = requests.post(f"{server.url}/has", json=sample, timeout=60).json()
    assert answer == [True] * (count // 10) + [False] * 1000
    lengths = requests.post(f"{server.url}/buffer-length", json=hexes[:500], timeout=60).json()
    assert lengths == [4] * 500
    assert fresh_get(f"{server.url}/{hexes[12345]}").content == (12345).to_bytes(4, "little")
