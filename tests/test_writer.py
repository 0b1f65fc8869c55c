"""The writer path and read integrity, against real server processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import add_buffer, buffer_path, leftovers, page_cache_dir, resident_bytes, sha3, wait_for

LOCK_TIMEOUT = "2"


def partial_put(url: str, checksum: str, total: int, sent: int) -> socket.socket:
    """Start a PUT of ``total`` bytes, send only ``sent`` of them, keep the socket open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"PUT /{checksum} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n".encode())
    sock.sendall(b"\0" * sent)
    return sock


@pytest.fixture
def writable(serve, tmp_path):
    directory = tmp_path / "buffers"
    directory.mkdir()
    server = serve(directory, "--writable", "--lock-timeout", LOCK_TIMEOUT, workers=2)
    return server, directory


# ------------------------------------------------------------------ writer


def test_published_buffer_is_read_only_and_prefix_dir_group_shared(writable):
    server, directory = writable
    data = b"mode bits"
    cs = sha3(data)
    assert requests.put(f"{server.url}/{cs}", data=data, timeout=30).status_code == 200
    path = buffer_path(directory, cs)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o2775
    assert (directory / ".HASHSERVER_PREFIX").exists()
    assert leftovers(directory) == []


def test_wrong_body_leaves_nothing(writable):
    server, directory = writable
    cs = sha3(b"expected")
    r = requests.put(f"{server.url}/{cs}", data=b"x" * 100000, timeout=30)
    assert (r.status_code, r.text) == (400, "Incorrect checksum")
    assert not buffer_path(directory, cs).exists()
    wait_for(lambda: leftovers(directory) == [], lambda: f"no leftovers, but {leftovers(directory)}")


def test_wrong_body_for_present_buffer_is_still_rejected(writable):
    server, directory = writable
    cs = add_buffer(directory, b"present")
    r = requests.put(f"{server.url}/{cs}", data=b"not it", timeout=30)
    assert (r.status_code, r.text) == (400, "Incorrect checksum")
    assert buffer_path(directory, cs).read_bytes() == b"present"


def test_large_streamed_put(writable):
    server, directory = writable
    data = os.urandom(40 << 20)
    cs = sha3(data)

    def chunks():
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    r = requests.put(f"{server.url}/{cs}", data=chunks(), timeout=120)  # chunked encoding
    assert (r.status_code, r.text) == (200, "OK")
    assert buffer_path(directory, cs).read_bytes() == data
    got = requests.get(f"{server.url}/{cs}", timeout=120)
    assert got.content == data


def test_body_over_maximum_is_413_and_nothing_stored(serve, tmp_path):
    server = serve(tmp_path, "--writable", "--max-body-size", "1000")
    data = b"y" * 5000
    cs = sha3(data)
    r = requests.put(f"{server.url}/{cs}", data=data, timeout=30)
    assert r.status_code == 413
    r = requests.put(f"{server.url}/{cs}", data=iter([data[:2500], data[2500:]]), timeout=30)  # chunked
    assert r.status_code == 413
    assert "message" in r.json()
    assert not buffer_path(tmp_path, cs).exists()
    wait_for(lambda: leftovers(tmp_path) == [], lambda: f"no leftovers, but {leftovers(tmp_path)}")
    small = b"fits"
    assert requests.put(f"{server.url}/{sha3(small)}", data=small, timeout=30).status_code == 200


def test_concurrent_puts_of_the_same_buffer(writable):
    server, directory = writable
    data = os.urandom(3 << 20)
    cs = sha3(data)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: requests.put(f"{server.url}/{cs}", data=data, timeout=60), range(6)))
    assert [(r.status_code, r.text) for r in results] == [(200, "OK")] * 6
    assert buffer_path(directory, cs).read_bytes() == data
    wait_for(lambda: leftovers(directory) == [], lambda: f"no leftovers, but {leftovers(directory)}")


def test_many_concurrent_puts_and_gets_lose_nothing(writable):
    server, directory = writable
    buffers = [os.urandom(1000 + 997 * i) for i in range(60)]

    def work(i):
        data = buffers[i % len(buffers)]
        cs = sha3(data)
        with requests.Session() as s:
            put = s.put(f"{server.url}/{cs}", data=data, timeout=60)
            assert (put.status_code, put.text) == (200, "OK")
            got = s.get(f"{server.url}/{cs}", timeout=60)
            assert (got.status_code, got.content == data) == (200, True)
            assert s.post(f"{server.url}/has", json=[cs], timeout=60).json() == [True]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(3 * len(buffers))))
    hexes = [sha3(b) for b in buffers]
    assert requests.post(f"{server.url}/has", json=hexes, timeout=30).json() == [True] * len(buffers)
    for data, cs in zip(buffers, hexes, strict=True):
        assert buffer_path(directory, cs).read_bytes() == data
    wait_for(lambda: leftovers(directory) == [], lambda: f"no leftovers, but {leftovers(directory)}")


def test_cut_connection_leaves_no_file_and_no_lock(writable):
    server, directory = writable
    cs = sha3(b"never completed")
    sock = partial_put(server.url, cs, total=4 << 20, sent=2 << 20)
    lock = buffer_path(directory, cs).with_name(cs + ".LOCK")
    wait_for(lock.exists, "the writer holds the per-file lock while it writes")
    sock.close()
    wait_for(lambda: leftovers(directory) == [], lambda: f"no leftovers, but {leftovers(directory)}")
    assert not buffer_path(directory, cs).exists()
    assert requests.get(f"{server.url}/{cs}", timeout=30).status_code == 404


def test_sigkill_mid_upload_then_restart_serves_nothing_partial(serve, tmp_path):
    server = serve(tmp_path, "--writable", "--lock-timeout", "60", workers=2)
    cs = sha3(b"interrupted by kill -9")
    sock = partial_put(server.url, cs, total=4 << 20, sent=2 << 20)
    wait_for(lambda: any(p.endswith(".tmp") for p in leftovers(tmp_path)), "the upload's temporary file")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    sock.close()
    assert not buffer_path(tmp_path, cs).exists()
    restarted = serve(tmp_path, "--writable", "--lock-timeout", "60", workers=2)
    assert leftovers(tmp_path) == [], "the restart removes a dead writer's temporary file and lock"
    from hashserver.index import GenerationStore
    from hashserver.owner import owner_tag

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    dead_index = f"{GenerationStore.PREFIX}{owner_tag().rpartition('-')[0]}-{server.proc.pid}-"
    assert not [n for n in os.listdir(base) if n.startswith(dead_index)], \
        "the restart removes the killed server's shared index"
    assert requests.get(f"{restarted.url}/{cs}", timeout=30).status_code == 404
    assert requests.post(f"{restarted.url}/has", json=[cs], timeout=30).json() == [False]


def test_disk_full_is_507_and_leaves_nothing(serve, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()}); "
                    "test_disk_full_injected covers the error path")
    try:
        server = serve(mount, "--writable")
        data = os.urandom(3 << 20)
        cs = sha3(data)
        r = requests.put(f"{server.url}/{cs}", data=data, timeout=60)
        assert r.status_code == 507
        assert "full" in r.json()["message"]
        assert not buffer_path(mount, cs).exists()
        wait_for(lambda: leftovers(mount) == [], lambda: f"no leftovers, but {leftovers(mount)}")
        small = b"still fits"
        assert requests.put(f"{server.url}/{sha3(small)}", data=small, timeout=30).status_code == 200
        server.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("call", ["pwrite", "write"])  # the body's writes; the lock file's
def test_disk_full_injected(app_client, tmp_path, monkeypatch, call):
    """The same path without a small file system: ENOSPC from a write call."""
    from hashserver import Config, writer

    client = app_client(Config(str(tmp_path), writable=True))

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, call, no_space)
    data = b"z" * 10000
    _, r = client.request(f"/{sha3(data)}", http_method="PUT", content=data)
    assert r.status == 507
    assert "full" in json.loads(r.body)["message"]
    assert not buffer_path(tmp_path, sha3(data)).exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ readers


def test_lock_on_missing_buffer_waits_for_timeout_then_404(writable):
    server, directory = writable
    cs = sha3(b"never arrives")
    lock = buffer_path(directory, cs).with_name(cs + ".LOCK")
    lock.parent.mkdir(exist_ok=True)
    lock.write_bytes(b"")
    started = time.monotonic()
    r = requests.get(f"{server.url}/{cs}", timeout=30)
    waited = time.monotonic() - started
    assert r.status_code == 404
    assert waited >= 1.0, "a fresh lock makes the reader wait until it turns stale"


def test_global_lock_then_buffer_arrives(writable):
    server, directory = writable
    data = b"arrives while the reader waits"
    cs = sha3(data)
    global_lock = directory / ".LOCK"
    global_lock.write_bytes(b"")

    def writer():
        time.sleep(0.5)
        add_buffer(directory, data)
        global_lock.unlink()

    thread = threading.Thread(target=writer)
    thread.start()
    r = requests.get(f"{server.url}/{cs}", timeout=30)
    thread.join()
    assert (r.status_code, r.content) == (200, data)


def test_waiting_reader_does_not_block_others(serve, tmp_path):
    server = serve(tmp_path, "--lock-timeout", "3", workers=1)
    cs = sha3(b"locked")
    (tmp_path / ".LOCK").write_bytes(b"")
    result = {}

    def slow():
        result["status"] = requests.get(f"{server.url}/{cs}", timeout=30).status_code

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    assert requests.get(f"{server.url}/healthcheck", timeout=30).text == "OK"
    assert thread.is_alive(), "the healthcheck answered while the locked reader still waited"
    thread.join()
    assert result["status"] == 404


def test_slow_in_place_writer_with_lock_is_served_whole(writable):
    server, directory = writable
    data = os.urandom(200000)
    cs = sha3(data)
    path = buffer_path(directory, cs)
    path.parent.mkdir(exist_ok=True)
    lock = path.with_name(cs + ".LOCK")
    lock.write_bytes(b"")
    started = threading.Event()

    def write_slowly():
        with open(path, "wb") as f:
            for i in range(0, len(data), 20000):
                f.write(data[i:i + 20000])
                f.flush()
                started.set()
                time.sleep(0.05)
        lock.unlink()

    thread = threading.Thread(target=write_slowly)
    thread.start()
    started.wait(5)
    r = requests.get(f"{server.url}/{cs}", timeout=30)
    thread.join()
    assert r.status_code == 200
    assert r.content == data


def test_corrupt_file_without_lock_is_400(writable):
    server, directory = writable
    cs = sha3(b"the right content")
    add_buffer(directory, b"the wrong content", checksum=cs)
    r = requests.get(f"{server.url}/{cs}", timeout=30)
    assert r.status_code == 400
    path = buffer_path(directory, cs)
    assert r.json() == {"message": f"File corruption: file at path {path} does not have the correct "
                                   "SHA3-256 checksum."}
    assert requests.head(f"{server.url}/{cs}", timeout=30).status_code == 400


def test_corrupt_large_file_is_400(writable):
    server, directory = writable
    cs = sha3(b"big right content")
    add_buffer(directory, os.urandom(3 << 20), checksum=cs)
    r = requests.get(f"{server.url}/{cs}", timeout=30)
    assert r.status_code == 400
    assert "File corruption" in r.json()["message"]


def test_simulated_save_vault_never_serves_wrong_bytes(writable):
    server, directory = writable
    buffers = [os.urandom(5000 + 1000 * i) for i in range(20)]
    hexes = [sha3(b) for b in buffers]
    global_lock = directory / ".LOCK"
    done = threading.Event()

    def save_vault():
        global_lock.write_bytes(b"")
        for data, cs in zip(buffers, hexes, strict=True):
            path = buffer_path(directory, cs)
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as f:  # in place, in two steps
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.02)
                f.write(data[len(data) // 2:])
        global_lock.unlink()
        done.set()

    thread = threading.Thread(target=save_vault)
    thread.start()
    served = 0
    with requests.Session() as s:
        for _ in range(200):
            for data, cs in zip(buffers[::3], hexes[::3], strict=True):
                r = s.get(f"{server.url}/{cs}", timeout=30)
                assert r.status_code in (200, 404)
                if r.status_code == 200:
                    assert r.content == data, "a 200 must carry the whole, correct buffer"
                    served += 1
            if done.is_set():
                break
    thread.join()
    assert served > 0
    for data, cs in zip(buffers, hexes, strict=True):
        assert requests.get(f"{server.url}/{cs}", timeout=30).content == data


def test_verify_modes(serve, tmp_path):
    cs = sha3(b"original")
    path = buffer_path(tmp_path, cs)
    add_buffer(tmp_path, b"original")
    never = serve(tmp_path, "--verify", "never")
    once = serve(tmp_path, "--verify", "once")
    always = serve(tmp_path, "--verify", "always")
    for server in (never, once, always):
        assert requests.get(f"{server.url}/{cs}", timeout=30).content == b"original"
    # Corrupt the file in place (same size): a new modification time, a new version.
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"ORIGINAL")
    assert requests.get(f"{never.url}/{cs}", timeout=30).content == b"ORIGINAL"
    assert requests.get(f"{once.url}/{cs}", timeout=30).status_code == 400
    assert requests.get(f"{always.url}/{cs}", timeout=30).status_code == 400


def test_large_get_is_whole_and_a_client_leaving_midway_harms_nothing(serve, tmp_path):
    data = os.urandom(24 << 20)
    cs = add_buffer(tmp_path, data)
    server = serve(tmp_path, workers=1)
    with requests.Session() as session:  # one kept-alive connection: responses must not bleed
        for _ in range(3):  # the first request also verifies the file
            got = session.get(f"{server.url}/{cs}", timeout=60)
            assert got.headers["content-length"] == str(len(data))
            assert got.content == data
            assert session.get(f"{server.url}/healthcheck", timeout=60).text == "OK"
    for _ in range(3):
        with requests.get(f"{server.url}/{cs}", stream=True, timeout=60) as r:
            assert len(r.raw.read(1 << 20)) == 1 << 20
        # leaving the block closes the connection with most of the body unsent
    assert requests.get(f"{server.url}/healthcheck", timeout=30).text == "OK"
    assert requests.get(f"{server.url}/{cs}", timeout=60).content == data
    assert "unexpected error" not in server.output()


@pytest.fixture
def slow_writer(tmp_path, monkeypatch):
    """A BufferWriter on tmp_path whose writes take 0.3 s each, and the list of
    whether each write found its file still open (False: closed under the thread)."""
    from hashserver import writer
    from hashserver.checksum import Hasher
    from hashserver.layout import SearchPath, make_layout
    from hashserver.locks import LockProtocol

    written: list[bool] = []
    real_write_all = writer.write_all

    def slow_write_all(fd: int, data: bytes, offset: int) -> None:
        time.sleep(0.3)
        try:
            os.fstat(fd)
        except OSError:
            written.append(False)
            raise
        real_write_all(fd, data, offset)
        written.append(True)

    monkeypatch.setattr(writer, "write_all", slow_write_all)
    buffer_writer = writer.BufferWriter(SearchPath(make_layout("prefix", str(tmp_path))), Hasher("sha3-256"),
                                        LockProtocol(60), None, 1 << 30, exists=lambda checksum: False,
                                        published=lambda path: None)
    return buffer_writer, written


def test_a_failing_body_waits_for_the_write_in_flight_before_the_file_is_closed(tmp_path, slow_writer):
    """A body that fails while a batch is being written: the writing thread
    finishes with the temporary file still open (closing it under the thread
    would write into whatever file reuses the descriptor), and nothing is kept."""
    import asyncio

    from hashserver import writer

    buffer_writer, written = slow_writer

    async def body():
        yield b"x" * writer.BATCH
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(buffer_writer.put(bytes.fromhex(sha3(b"anything")), body()))
    assert written == [True]
    assert leftovers(tmp_path) == []


def test_an_upload_cancelled_twice_still_waits_for_its_threads(tmp_path, slow_writer):
    """A second cancellation (a cut connection, then the response timeout) while
    the writer waits for its threads must not close the temporary file under
    them: the descriptor's number may already be another upload's file."""
    import asyncio

    from hashserver import writer

    buffer_writer, written = slow_writer

    async def body():
        for _ in range(4):
            yield b"x" * writer.BATCH
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(buffer_writer.put(bytes.fromhex(sha3(b"anything")), body()))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)

    asyncio.run(main())
    assert written and all(written)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ the body's stages


def test_a_stage_takes_its_next_item_without_waiting_for_the_event_loop():
    """Items queued while one is worked on are done one after another by the
    thread, in order, while the event loop is busy (blocked here): the hashing
    thread does not wait for the loop between batches."""
    import asyncio

    from hashserver.writer import SerialStage

    done: list[bytes] = []
    all_done = threading.Event()
    release = threading.Event()

    def work(parts: list[bytes]) -> None:
        release.wait(30)
        done.extend(parts)
        if len(done) == 3:
            all_done.set()

    async def main() -> bool:
        stage = SerialStage(work)
        futures = [stage.submit([bytes([i])]) for i in range(3)]
        release.set()
        finished = all_done.wait(30)  # blocks the event loop
        await asyncio.gather(*futures)
        return finished

    assert asyncio.run(main())
    assert done == [b"\0", b"\1", b"\2"]


def test_a_stage_hands_an_items_error_to_its_future_and_goes_on():
    import asyncio

    from hashserver.writer import SerialStage

    done: list[bytes] = []

    def work(parts: list[bytes]) -> None:
        if parts == [b"bad"]:
            raise OSError(errno.EIO, "bad")
        done.extend(parts)

    async def main() -> list:
        stage = SerialStage(work)
        futures = [stage.submit([item]) for item in (b"a", b"bad", b"b")]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], OSError)
    assert done == [b"a", b"b"]


def test_a_large_body_file_is_whole_on_disk_and_leaves_the_page_cache(tmp_path):
    """Written in parts across several writeback steps: the bytes are all there,
    and once durable, none of them hold page cache (a large upload does not
    push other buffers out of it)."""
    import shutil

    from hashserver.writer import WRITEBACK, BodyFile

    directory = page_cache_dir(tmp_path)
    path = os.path.join(directory, "body")
    data = os.urandom(3 * WRITEBACK + 12345)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            body = BodyFile(fd)
            for start in range(0, len(data), 700_000):
                body.write([data[start:start + 300_000], data[start + 300_000:start + 700_000]])
            body.finish()
        finally:
            os.close(fd)
        assert resident_bytes(path) < WRITEBACK
        with open(path, "rb") as f:
            assert f.read() == data
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


def test_a_small_body_file_stays_in_the_page_cache(tmp_path):
    from hashserver.writer import BodyFile

    directory = page_cache_dir(tmp_path)
    path = os.path.join(directory, "small")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        body = BodyFile(fd)
        body.write([b"x" * 100_000])
        body.finish()
    finally:
        os.close(fd)
    import mmap

    assert resident_bytes(path) == -(-100_000 // mmap.PAGESIZE) * mmap.PAGESIZE
    if directory != tmp_path:
        os.unlink(path)
        os.rmdir(directory)


def test_a_stage_items_error_is_retrieved_when_its_waiter_was_cancelled():
    """A waiter cancelled (a client gone) while its item is worked on, and the work then
    fails: no "Future exception was never retrieved" in the log (its shield dropped the
    callback that would have retrieved it)."""
    import asyncio
    import gc

    from hashserver.writer import SerialStage

    release = threading.Event()

    def work(parts: list[bytes]) -> None:
        release.wait(30)
        raise OSError(errno.EIO, "bad")

    async def main() -> list[str]:
        reported: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context["message"]))
        stage = SerialStage(work)
        waiter = asyncio.ensure_future(_await(stage.submit([b"x"])))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await stage.settled()
        del waiter, stage
        gc.collect()
        await asyncio.sleep(0.01)
        return reported

    assert asyncio.run(main()) == []


async def _await(future):
    await future
