"""The status file as the runtime writes it: "running" only once every
worker serves, with what a harness or the bench needs to know."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import requests

from hashserver.testing import stop_process

from conftest import BIN, add_buffer, free_port


def start_and_read_status(argv, env, status_path, timeout=60):
    status_path.write_text("{}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HASHSERVER_")}
    proc = subprocess.Popen(argv, env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = json.loads(status_path.read_text() or "{}")
            if status.get("status") in ("running", "failed"):
                return proc, status
            assert proc.poll() is None, "server exited"
            time.sleep(0.1)
        raise AssertionError("no status in time")
    except BaseException:
        stop(proc)
        raise


def stop(proc):
    stop_process(proc)


def check_status(status, proc, port, workers, entries):
    assert status["status"] == "running"
    assert status["port"] == port
    assert status["pid"] == proc.pid
    assert len(status["workers"]) == workers and proc.pid not in status["workers"]
    assert status["index"]["entries"] == entries
    assert status["index"]["build_seconds"] >= 0
    for pid in status["workers"]:  # each a live process serving
        os.kill(pid, 0)
    assert requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=10).text == "OK"


@pytest.mark.parametrize("workers", [1, 3])
def test_status_file_of_the_hashserver_command(tmp_path, workers):
    directory = tmp_path / "buffers"
    directory.mkdir()
    for i in range(5):
        add_buffer(directory, b"buffer %d" % i)
    port = free_port()
    argv = [str(BIN / "hashserver"), str(directory), "--port", str(port), "--workers", str(workers),
            "--status-file", str(tmp_path / "status.json")]
    proc, status = start_and_read_status(argv, {}, tmp_path / "status.json")
    try:
        check_status(status, proc, port, workers, 5)
    finally:
        stop(proc)


def test_status_file_under_sanic_from_the_environment(tmp_path):
    directory = tmp_path / "buffers"
    directory.mkdir()
    add_buffer(directory, b"one")
    port = free_port()
    argv = [str(BIN / "sanic"), "hashserver.app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2", "--no-motd"]
    env = {"HASHSERVER_DIRECTORY": str(directory), "HASHSERVER_STATUS_FILE": str(tmp_path / "status.json")}
    proc, status = start_and_read_status(argv, env, tmp_path / "status.json")
    try:
        check_status(status, proc, port, 2, 1)
    finally:
        stop(proc)
