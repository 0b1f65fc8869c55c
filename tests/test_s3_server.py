"""``hashserver s3://BUCKET[/PREFIX]``: a real server process on a SeaweedFS bucket, bare
(``--cache-size 0``) or with its local cache tier, over real HTTP; and its startup errors.

The multi-host behaviour (cross-host reads, storms, a stopped object store) is
tests/test_s3_fleet.py's."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from seaweedfs import SeaweedFS, s3_bucket, seaweedfs  # noqa: F401  (fixtures)

from hashserver import s3uploads
from hashserver.runtime import PRIVATE_TIER_PREFIX
from hashserver.testing import clean_environ

from conftest import BIN, free_port, sha3
from conftest import wait_for as wait_for_bound

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")

BOUND = 30.0  # seconds: the longest a wait here may take


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ask(server, path: str, checksums: list[str]) -> list:
    status, body = request(server, "POST", path, json.dumps(checksums).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200, body
    return json.loads(body)


def put_object(weed: SeaweedFS, bucket: str, data: bytes) -> str:
    """A buffer written straight into the bucket (as another host would)."""
    checksum = sha3(data)
    obstore.put(weed.s3_store(bucket), f"{checksum[:2]}/{checksum}", data)
    return checksum


def tier_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("??/*") if len(path.name) == 64)


def metric(server, name: str) -> float:
    status, body = request(server, "GET", "/metrics")
    assert status == 200
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.MULTILINE)
    return sum(float(value) for value in found)


@pytest.fixture
def s3_serve(serve, seaweedfs):  # noqa: F811
    """``s3_serve(bucket, *options, workers=1, env=None)``: a server on ``s3://bucket``."""

    def start(bucket: str, *options: str, workers: int = 1, env: dict | None = None):
        return serve(f"s3://{bucket}", "--s3-endpoint", seaweedfs.s3_endpoint, *options, workers=workers,
                     env={**seaweedfs.s3_env(), **(env or {})})

    return start


# ------------------------------------------------------------------ the contract
def test_bare_bucket_answers_the_http_contract(s3_serve, seaweedfs, s3_bucket):  # noqa: F811
    server = s3_serve(s3_bucket, "--writable", "--cache-size", "0", workers=2)
    private = glob.glob(os.path.join(tempfile.gettempdir(), f"{PRIVATE_TIER_PREFIX}{server.pid}-*"))
    assert len(private) == 1 and os.listdir(private[0]) in ([], [".HASHSERVER_PREFIX"])
    data = b"stored in the bucket"
    cs, absent = sha3(data), sha3(b"absent")
    assert request(server, "PUT", "/" + cs, data) == (200, b"OK")
    assert obstore.get(seaweedfs.s3_store(s3_bucket), f"{cs[:2]}/{cs}").bytes() == data
    for _ in range(4):  # fresh connections: each worker answers
        assert request(server, "GET", "/" + cs) == (200, data)
        assert request(server, "GET", "/" + absent)[0] == 404
        assert ask(server, "/has", [cs, absent]) == [True, False]
        assert ask(server, "/has-now", [absent, cs]) == [False, True]
        assert ask(server, "/buffer-length", [cs, absent]) == [len(data), 0]
    promised = sha3(b"promised")
    status, body = request(server, "PUT", "/promise/" + promised)
    assert status == 202 and json.loads(body)["expires_in"] > 0
    assert ask(server, "/has", [promised]) == [True]
    assert ask(server, "/has-now", [promised]) == [False]
    assert ask(server, "/buffer-length", [promised]) == [1]
    assert request(server, "PUT", "/" + promised, b"promised") == (200, b"OK")
    assert request(server, "GET", "/" + promised) == (200, b"promised")
    assert request(server, "GET", "/healthcheck")[0] == 200
    assert server.stop() == 0, server.output()[-4000:]  # the log, if Sanic failed while stopping
    assert not os.path.exists(private[0])  # the private tier goes with the server


def test_tier_fills_from_puts_and_reads_and_keeps_its_bound(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """3x the bound read through a tier of 256 KiB: the tier stays within it, evicting;
    every buffer is still served, from the tier or the bucket."""
    cache = tmp_path / "cache"
    server = s3_serve(s3_bucket, "--writable", "--cache-dir", str(cache), "--cache-size", "256K", workers=2)
    written = os.urandom(1000)
    cs = sha3(written)
    assert request(server, "PUT", "/" + cs, written) == (200, b"OK")
    wait_for(lambda: (cache / cs[:2] / cs).exists(), "the PUT buffer in the tier")
    buffers = {}
    for i in range(48):
        data = i.to_bytes(4, "big") * 4096  # 16 KiB
        buffers[put_object(seaweedfs, s3_bucket, data)] = data
    assert ask(server, "/has", list(buffers)) == [True] * 48
    for checksum, data in buffers.items():
        assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: tier_bytes(cache) <= 256 * 1024, "the tier back within its bound")
    assert 0 < tier_bytes(cache)
    wait_for(lambda: metric(server, "hashserver_local_tier_evictions_total") > 0, "evictions counted")
    wait_for(lambda: metric(server, "hashserver_local_tier_requests_total") >= 48,
             "every read counted (each worker folds its counts every second)")
    for checksum, data in buffers.items():
        assert request(server, "GET", "/" + checksum) == (200, data)
    assert ask(server, "/buffer-length", list(buffers)) == [16384] * 48


def test_read_only_server_fills_its_default_tier(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    data = b"read through a read-only host"
    cs = put_object(seaweedfs, s3_bucket, data)
    server = s3_serve(s3_bucket, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert request(server, "PUT", "/" + cs, data)[0] in (403, 405)
    assert request(server, "GET", "/" + cs) == (200, data)
    name = f"127.0.0.1:{seaweedfs.ports.s3}%2F{s3_bucket}"
    wait_for(lambda: (tmp_path / "hashserver" / name / cs[:2] / cs).exists(), "the buffer in the default tier")


def wait_for(condition, what: str):
    return wait_for_bound(condition, what, BOUND)


# ------------------------------------------------------------------ startup errors
def run_server(seaweedfs: SeaweedFS, url: str, *options: str, env: dict | None = None  # noqa: F811
               ) -> subprocess.CompletedProcess:
    """``hashserver URL`` on SeaweedFS, run to its end (a startup error, or ``--timeout``)."""
    argv = [str(BIN / "hashserver"), url, "--s3-endpoint", seaweedfs.s3_endpoint, "--port", str(free_port()),
            *options]
    return subprocess.run(argv, env=clean_environ({**seaweedfs.s3_env(), **(env or {})}), capture_output=True,
                          text=True, timeout=120, check=False)


def start_failing(seaweedfs: SeaweedFS, url: str, env: dict, *options: str) -> subprocess.CompletedProcess:  # noqa: F811
    return run_server(seaweedfs, url, "--cache-size", "0", *options, env=env)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case, env, fragment", [
    ("missing bucket", {}, "the bucket does not exist"),
    ("refused credentials", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
     "refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): "),
    ("refused credentials", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, ": SignatureDoesNotMatch ("),
])
def test_startup_errors_name_the_setting_and_exit_2(seaweedfs, s3_bucket, case, env, fragment):  # noqa: F811
    bucket = "no-such-bucket" if case == "missing bucket" else s3_bucket
    out = start_failing(seaweedfs, f"s3://{bucket}/prefix", env)
    assert out.returncode == 2, out.stderr
    lines = error_lines(out)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("hashserver: DIRECTORY=") and f"s3://{bucket}/prefix" in lines[0]
    assert fragment in lines[0]


def test_no_credentials_at_all_is_said_so(seaweedfs, s3_bucket):  # noqa: F811
    """Without credentials the client asks the instance's metadata service last (here a
    closed port of this machine's, AWS_METADATA_ENDPOINT): not "refused the credentials"."""
    env = {name: value for name, value in seaweedfs.s3_env().items() if not name.startswith("AWS_ACCESS_KEY")
           and not name.startswith("AWS_SECRET")}
    env["AWS_METADATA_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    argv = [str(BIN / "hashserver"), f"s3://{s3_bucket}", "--s3-endpoint", seaweedfs.s3_endpoint,
            "--port", str(free_port()), "--cache-size", "0"]
    out = subprocess.run(argv, env=clean_environ(env), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(f"hashserver: DIRECTORY='s3://{s3_bucket}': no credentials found "
                                                   f"(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"), out.stderr


def test_buffers_named_by_another_hash_algorithm_are_refused_at_startup(seaweedfs, s3_bucket):  # noqa: F811
    """As a directory is: else every GET would be a "File corruption"."""
    raw = seaweedfs.s3_store(s3_bucket)
    for i in range(3):
        data = b"named by sha-256 %d" % i
        checksum = hashlib.sha256(data).hexdigest()
        obstore.put(raw, f"prefix/{checksum[:2]}/{checksum}", data)
    out = start_failing(seaweedfs, f"s3://{s3_bucket}/prefix", {})
    assert out.returncode == 2, out.stderr
    lines = error_lines(out)
    assert lines == [f"hashserver: --hash-algorithm='sha3-256': the buffers in s3://{s3_bucket}/prefix are named "
                     f"by their sha-256 checksums; start with --hash-algorithm sha-256 (or "
                     f"HASHSERVER_HASH_ALGORITHM=sha-256)"], out.stderr
    agreeing = start_failing(seaweedfs, f"s3://{s3_bucket}/prefix", {}, "--hash-algorithm", "sha-256", "--timeout", "1")
    assert agreeing.returncode == 0, agreeing.stderr


def test_a_local_tier_named_by_another_hash_algorithm_is_one_line_at_startup(seaweedfs, s3_bucket,  # noqa: F811
                                                                               tmp_path):
    cache = tmp_path / "cache"
    data = b"in the tier, named by sha-256"
    checksum = hashlib.sha256(data).hexdigest()
    (cache / checksum[:2]).mkdir(parents=True)
    (cache / checksum[:2] / checksum).write_bytes(data)
    out = run_server(seaweedfs, f"s3://{s3_bucket}", "--cache-dir", str(cache))
    assert out.returncode == 2, out.stderr
    lines = error_lines(out)
    assert len(lines) == 1 and "are named by their sha-256 checksums" in lines[0], out.stderr


def test_a_flat_layout_over_a_prefix_bucket_warns(s3_serve, seaweedfs, s3_bucket):  # noqa: F811
    obstore.put(seaweedfs.s3_store(s3_bucket), "prefix/.HASHSERVER_PREFIX", b"")
    flat = s3_serve(f"{s3_bucket}/prefix", "--layout", "flat", "--cache-size", "0")
    assert (f"s3://{s3_bucket}/prefix holds .HASHSERVER_PREFIX, written by servers in the prefix layout, and this "
            f"one reads the flat layout") in flat.output()
    assert "holds .HASHSERVER_PREFIX" not in s3_serve(f"{s3_bucket}/prefix", "--cache-size", "0").output()


def test_a_flat_bucket_keeps_buffers_at_its_top_over_http(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """``--layout flat`` on a bucket prefix: a PUT lands at ``PREFIX/<checksum>`` (no two-hex
    directory), and a host reads such objects, and reports them, over HTTP."""
    store = seaweedfs.s3_store(s3_bucket)
    put_data, other = b"put through a flat host", b"copied in flat by another program"
    put_cs, other_cs = sha3(put_data), sha3(other)
    obstore.put(store, f"flat/{other_cs}", other)
    server = s3_serve(f"{s3_bucket}/flat", "--layout", "flat", "--writable", "--cache-dir", str(tmp_path / "cache"))
    assert request(server, "PUT", "/" + put_cs, put_data) == (200, b"OK")
    assert bytes(obstore.get(store, f"flat/{put_cs}").bytes()) == put_data
    keys = {entry["path"] for batch in obstore.list(store) for entry in batch}
    assert not [k for k in keys if k.startswith(("flat/" + put_cs[:2] + "/", "flat/" + other_cs[:2] + "/"))], keys
    for cs, data in ((put_cs, put_data), (other_cs, other)):
        assert request(server, "GET", "/" + cs) == (200, data)
    assert ask(server, "/has", [put_cs, other_cs, sha3(b"absent")]) == [True, True, False]


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """A directory no one may write into: immutable for root (whom modes do not stop)."""
    directory.mkdir()
    command = ["chattr", "+i", str(directory)] if os.geteuid() == 0 else ["chmod", "500", str(directory)]
    subprocess.run(command, check=True, timeout=30)
    try:
        yield
    finally:
        undo = ["chattr", "-i", str(directory)] if os.geteuid() == 0 else ["chmod", "700", str(directory)]
        subprocess.run(undo, check=True, timeout=30)


def test_a_cache_dir_that_cannot_be_written_is_one_line(seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    with unwritable(cache):
        out = run_server(seaweedfs, f"s3://{s3_bucket}", "--cache-dir", str(cache))
    assert out.returncode == 2, out.stderr
    assert error_lines(out) == [f"hashserver: --cache-dir='{cache}': the local tier must be writable, and this "
                                f"directory is not"], out.stderr


def test_a_cache_dir_is_the_local_tier_of_one_store(seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A tier answers "present" for what it holds: reused for another prefix (or bucket,
    or endpoint) it would answer for buffers that store does not hold."""
    cache = tmp_path / "cache"
    first = run_server(seaweedfs, f"s3://{s3_bucket}/a", "--cache-dir", str(cache), "--timeout", "1")
    assert first.returncode == 0, first.stderr
    host = f"127.0.0.1:{seaweedfs.ports.s3}"
    assert (cache / ".HASHSERVER_TIER").read_text() == f"s3://{s3_bucket}/a at {host}\n"
    other = run_server(seaweedfs, f"s3://{s3_bucket}/b", "--cache-dir", str(cache), "--timeout", "1")
    assert other.returncode == 2, other.stderr
    assert error_lines(other) == [
        f"hashserver: --cache-dir='{cache}' is the local tier of s3://{s3_bucket}/a at {host}, not of "
        f"s3://{s3_bucket}/b at {host}: each bucket and prefix needs a tier of its own (or remove that directory)"
    ], other.stderr
    again = run_server(seaweedfs, f"s3://{s3_bucket}/a", "--cache-dir", str(cache), "--timeout", "1")
    assert again.returncode == 0, again.stderr
    assert (cache / ".HASHSERVER_TIER").read_text() == f"s3://{s3_bucket}/a at {host}\n"


def test_a_running_server_aborts_uploads_left_idle(s3_serve, seaweedfs, s3_bucket):  # noqa: F811
    """Not only at its start: an upload whose abort could not reach the store (or whose id
    its writer never learned) is aborted by a later sweep, once idle for --lock-timeout."""
    server = s3_serve(s3_bucket, "--writable", "--lock-timeout", "2", "--cache-size", "0")
    signer = s3uploads.Signer.from_settings(s3_bucket, seaweedfs.s3_endpoint, {
        "access_key_id": seaweedfs.s3_env()["AWS_ACCESS_KEY_ID"],
        "secret_access_key": seaweedfs.s3_env()["AWS_SECRET_ACCESS_KEY"]})
    key = f"ab/ab{'0' * 62}"
    s3uploads.send(signer.request("POST", f"/{s3_bucket}/{key}", {"uploads": ""}))  # after the start's sweep
    assert [u.key for u in s3uploads.list_uploads(signer, s3_bucket, "")] == [key]
    wait_for(lambda: not s3uploads.list_uploads(signer, s3_bucket, ""), "the idle upload aborted by a later sweep")
    assert request(server, "GET", "/healthcheck")[0] == 200


def test_bad_url_is_refused_before_starting(seaweedfs):  # noqa: F811
    out = start_failing(seaweedfs, "s3://Not_A_Bucket", {})
    assert out.returncode == 2
    assert out.stderr.strip().startswith("hashserver: DIRECTORY='s3://Not_A_Bucket': not an S3 bucket name")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_large_put_keeps_the_workers_memory_bounded(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A 256 MiB body, sent as fast as the client can, goes up as a multipart upload in
    parts of a few MiB (and into the tier): the worker's peak memory grows by the parts
    in flight, not by the body; the object is the body."""
    from test_bodyreader import large_put_growth

    server = s3_serve(s3_bucket, "--writable", "--cache-dir", str(tmp_path / "cache"))
    [pid] = server.worker_pids()
    assert request(server, "PUT", "/" + sha3(b"warm"), b"warm") == (200, b"OK")
    checksum, grown = large_put_growth(server, pid)
    stored = obstore.get(seaweedfs.s3_store(s3_bucket), f"{checksum[:2]}/{checksum}").bytes()
    assert hashlib.sha3_256(stored).hexdigest() == checksum
    # 78-84 MiB measured: parts of 8 MiB, 4 in flight, the queue, the read-ahead, the tier's copy
    assert grown < 128 << 20, f"the worker's peak memory grew by {grown / (1 << 20):.0f} MiB for a 256 MiB body"


def test_the_http_surfaces_guards_hold_on_a_bucket(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """What a directory server refuses before its storage, a server on a bucket refuses the
    same way, and writes nothing: a PUT or a promise without a write token (401), a batch
    over --max-batch (413 naming the bound), a body over --max-body-size (413); and a GET
    of a buffer promised and not delivered within --wait-timeout is a 503 with Retry-After."""
    tokens = tmp_path / "write-tokens"
    tokens.write_text("team-token\n")
    server = s3_serve(s3_bucket, "--writable", "--write-token-file", str(tokens), "--max-batch", "10",
                      "--max-body-size", "1000", "--wait-timeout", "1", "--cache-dir", str(tmp_path / "cache"))
    store = seaweedfs.s3_store(s3_bucket)

    def objects() -> set[str]:
        return {entry["path"] for batch in obstore.list(store) for entry in batch} - {".HASHSERVER_PREFIX"}

    data = b"guarded on a bucket"
    cs = sha3(data)
    status, body = request(server, "PUT", "/" + cs, data)
    assert status == 401 and "token" in json.loads(body)["message"]
    assert request(server, "PUT", "/promise/" + cs, b"", {"Authorization": "Bearer wrong"})[0] == 401
    assert objects() == set()
    status, body = request(server, "POST", "/has", json.dumps([cs] * 11).encode())
    assert status == 413 and "10 checksums" in json.loads(body)["message"]
    large = os.urandom(1001)
    status, body = request(server, "PUT", "/" + sha3(large), large, {"Authorization": "Bearer team-token"})
    assert status == 413 and "1000" in json.loads(body)["message"]
    assert objects() == set()
    assert request(server, "PUT", "/" + cs, data, {"Authorization": "Bearer team-token"}) == (200, b"OK")
    promised = sha3(b"promised, never delivered")
    assert request(server, "PUT", "/promise/" + promised, b"", {"Authorization": "Bearer team-token"})[0] == 202
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    try:
        connection.request("GET", "/" + promised)
        response = connection.getresponse()
        assert response.status == 503 and int(response.getheader("Retry-After")) >= 1, response.read()
    finally:
        connection.close()
    assert objects() == {f"{cs[:2]}/{cs}", f".promises/{promised}"}


def test_extra_directories_stay_local_read_only_and_are_searched_first(s3_serve, seaweedfs, s3_bucket,  # noqa: F811
                                                                       tmp_path):
    """``--extra-dirs`` beside a bucket: a buffer there is served and reported present from
    it (before the bucket is asked, so a wrong copy in the bucket is never read), a buffer
    only in the bucket is served from the bucket, and nothing is written into the extra
    directory, nor its buffers into the tier.  A PUT of a buffer the extra directory holds
    still puts it into the bucket: what a PUT acknowledged, every host must find."""
    from conftest import add_buffer

    extra = tmp_path / "extra"
    local = b"only in the extra directory"
    cs_local = add_buffer(extra, local, layout="flat")
    shadowed = b"in both: the extra directory's copy is read"
    cs_shadowed = add_buffer(extra, shadowed, layout="flat")
    obstore.put(seaweedfs.s3_store(s3_bucket), f"{cs_shadowed[:2]}/{cs_shadowed}", b"a wrong copy in the bucket")
    remote = b"only in the bucket"
    cs_remote = put_object(seaweedfs, s3_bucket, remote)
    files_before = sorted(p.name for p in extra.rglob("*"))
    cache = tmp_path / "cache"
    server = s3_serve(s3_bucket, "--writable", "--extra-dirs", str(extra), "--cache-dir", str(cache))
    for _ in range(2):
        assert request(server, "GET", "/" + cs_local) == (200, local)
        assert request(server, "GET", "/" + cs_shadowed) == (200, shadowed)
        assert request(server, "GET", "/" + cs_remote) == (200, remote)
        assert ask(server, "/has", [cs_local, cs_shadowed, cs_remote]) == [True, True, True]
        assert ask(server, "/buffer-length", [cs_local, cs_remote]) == [len(local), len(remote)]
    assert not list(cache.rglob(cs_local + "*")) and not list(cache.rglob(cs_shadowed + "*"))
    store = seaweedfs.s3_store(s3_bucket)
    with pytest.raises(FileNotFoundError):
        obstore.head(store, f"{cs_local[:2]}/{cs_local}")
    assert request(server, "PUT", "/" + cs_local, local) == (200, b"OK")
    assert bytes(obstore.get(store, f"{cs_local[:2]}/{cs_local}").bytes()) == local
    assert sorted(p.name for p in extra.rglob("*")) == files_before
