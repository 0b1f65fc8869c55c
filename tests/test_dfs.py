"""Several hosts on one distributed file system: two SeaweedFS mounts of one filer
directory (tests/seaweedfs.py, with its recommended mount options), one real
hashserver on each, 2 workers each.  Host a serves the directory through mount a,
host b through mount b.

What is checked: the HTTP contract on a mount; that a buffer stored through one
host reads back through the other (PUT, promises, compressed buffers); the lock
protocol across hosts; a storm over both hosts with cut uploads; a dead mount
answering 503.  And, in process: reading mountinfo, the writer's choice of
publication, the reader's second look at a file it found but could not open.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from seaweedfs import (
    SeaweedFS,
    SharedDir,
    fuse_unavailable,
    seaweedfs,  # noqa: F401  (fixtures)
    seaweedfs_mounts,  # noqa: F401
    shared_dir,  # noqa: F401
    wait_visible,
)
from test_writer import partial_put

from hashserver.bufferfile import BufferFile
from hashserver.checksum import Hasher
from hashserver.compression import zstd
from hashserver.filesystems import file_system_type, is_network_type, mount_of, parse_mountinfo
from hashserver.layout import LOCK_SUFFIX, PROMISE_SUFFIX, SearchPath, make_layout, temp_owner
from hashserver.locks import LockProtocol
from hashserver.lookup import BatchLookup
from hashserver.reader import SETTLE_BUDGET, BufferReader
from hashserver.storage import PutOutcome
from hashserver.writer import BufferWriter

from conftest import ServerProcess, buffer_path, sha3, wait_for

HTTP_TIMEOUT = 60.0  # a bound against hangs: a reader may wait on a lock or a promise
VISIBLE_WITHIN = 10.0  # bound on waiting for one host to see what the other stored
SAME_BUFFER_ROUNDS = 60


# ---------------------------------------------------------------------- helpers
def call(server: ServerProcess, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: status, headers (lower-case names), body as sent
    (nothing decoded)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def put(server: ServerProcess, checksum: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    status, _, answer = call(server, "PUT", f"/{checksum}", body, headers)
    return status, answer


def get(server: ServerProcess, checksum: str, headers: dict | None = None) -> tuple[int, bytes]:
    status, _, answer = call(server, "GET", f"/{checksum}", headers=headers)
    return status, answer


def batch(server: ServerProcess, route: str, checksums: list[str]) -> list:
    status, _, answer = call(server, "POST", route, json.dumps(checksums).encode(),
                             {"Content-Type": "application/json"})
    assert status == 200, (route, status, answer)
    return json.loads(answer)


def debris(directory: Path) -> list[str]:
    """What a write leaves only while it runs: locks, temporary files, promises."""
    return sorted(os.path.join(d, name) for d, _, names in os.walk(directory) for name in names
                  if name.endswith((LOCK_SUFFIX, PROMISE_SUFFIX)) or temp_owner(name) is not None)


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Hosts:
    """Two hashservers on one directory, each through its own mount."""

    a: ServerProcess
    b: ServerProcess
    dirs: SharedDir


@pytest.fixture
def hosts(shared_dir: SharedDir, serve) -> Hosts:  # noqa: F811
    options = ("--writable", "--lock-timeout", "60")
    return Hosts(serve(shared_dir.a, *options, workers=2), serve(shared_dir.b, *options, workers=2), shared_dir)


def visible(server: ServerProcess, checksum: str) -> float:
    """Seconds until ``server`` says the buffer is there (bounded)."""
    started = time.monotonic()
    wait_for(lambda: batch(server, "/has-now", [checksum]) == [True],
             f"{checksum} visible through {server.url}", VISIBLE_WITHIN)
    return time.monotonic() - started


# ---------------------------------------------------------------- 1. contract
def test_the_http_contract_on_a_mount(hosts: Hosts):
    a, directory = hosts.a, hosts.dirs.a
    data = os.urandom(3000)
    cs, missing = sha3(data), sha3(b"missing")
    assert put(a, cs, data) == (200, b"OK")
    status, headers, body = call(a, "GET", f"/{cs}")
    assert (status, headers["content-length"], body) == (200, str(len(data)), data)
    status, headers, body = call(a, "HEAD", f"/{cs}")
    assert (status, headers["content-length"], body) == (200, str(len(data)), b"")
    assert get(a, missing) == (404, b"Not found")
    assert stat.S_IMODE(os.stat(buffer_path(directory, cs)).st_mode) == 0o444

    promised = b"promised, then stored"
    pcs = sha3(promised)
    status, _, body = call(a, "PUT", f"/promise/{pcs}")
    assert status == 202 and json.loads(body)["checksum"] == pcs
    assert batch(a, "/has", [cs, pcs, missing]) == [True, True, False]
    assert batch(a, "/has-now", [cs, pcs, missing]) == [True, False, False]
    assert batch(a, "/buffer-length", [cs, pcs, missing]) == [len(data), 1, 0]
    assert put(a, pcs, promised) == (200, b"OK")
    assert batch(a, "/has-now", [pcs]) == [True]

    text = b"compressible text " * 4000
    ccs, packed = sha3(text), zstd.compress(text)
    assert put(a, ccs, packed, {"Content-Encoding": "zstd"}) == (200, b"OK")
    assert buffer_path(directory, ccs, suffix=".zst").read_bytes() == packed
    assert batch(a, "/buffer-length", [ccs]) == [len(text)]
    status, headers, body = call(a, "GET", f"/{ccs}", headers={"Accept-Encoding": "zstd"})
    assert (status, headers.get("content-encoding"), body) == (200, "zstd", packed)
    assert get(a, ccs) == (200, text)

    assert put(a, missing, b"not it") == (400, b"Incorrect checksum")
    assert not buffer_path(directory, missing).exists()
    wait_for(lambda: debris(directory) == [], lambda: f"no debris, but {debris(directory)}")


# ---------------------------------------------------- 2. cross-host visibility
def test_a_buffer_stored_through_one_host_reads_through_the_other(hosts: Hosts):
    """PUT on a returns 200; b sees the buffer (after the mounts' propagation delay), and
    from then on serves it whole: a listed name is never a 404 or a corruption."""
    lags = []
    for i in range(12):
        data = content(i, 500 + 150_000 * (i % 4))  # small, and over the small-buffer size
        cs = sha3(data)
        writer, reader = (hosts.a, hosts.b) if i % 2 == 0 else (hosts.b, hosts.a)
        assert put(writer, cs, data) == (200, b"OK")
        lags.append(visible(reader, cs))
        assert get(reader, cs) == (200, data)
        assert batch(reader, "/buffer-length", [cs]) == [len(data)]
        assert batch(reader, "/has", [cs]) == [True]
    print(f"cross-host visibility after PUT: max {max(lags):.3f} s, median {sorted(lags)[len(lags) // 2]:.3f} s")


def test_a_promise_on_one_host_keeps_the_other_waiting_until_stored(hosts: Hosts):
    data = content(7, 200_000)
    cs = sha3(data)
    assert call(hosts.a, "PUT", f"/promise/{cs}")[0] == 202
    wait_for(lambda: batch(hosts.b, "/has", [cs]) == [True], "b has what a stored", VISIBLE_WITHIN)
    assert batch(hosts.b, "/has-now", [cs]) == [False]
    answer: list = []
    reader = threading.Thread(target=lambda: answer.append(get(hosts.b, cs)))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive(), "b waits on a's promise"
    assert put(hosts.a, cs, data) == (200, b"OK")
    reader.join(HTTP_TIMEOUT)
    assert answer == [(200, data)]
    wait_for(lambda: debris(hosts.dirs.b) == [], lambda: f"no debris, but {debris(hosts.dirs.b)}")


def test_a_compressed_buffer_stored_through_one_host_reads_through_the_other(hosts: Hosts):
    text = b"".join(b"line %d of a compressible buffer\n" % i for i in range(30_000))
    cs, packed = sha3(text), zstd.compress(text)
    assert put(hosts.a, cs, packed, {"Content-Encoding": "zstd"}) == (200, b"OK")
    visible(hosts.b, cs)
    assert batch(hosts.b, "/buffer-length", [cs]) == [len(text)]
    assert get(hosts.b, cs) == (200, text)
    status, headers, body = call(hosts.b, "GET", f"/{cs}", headers={"Accept-Encoding": "zstd"})
    assert (status, headers.get("content-encoding"), body) == (200, "zstd", packed)


def test_a_host_that_saw_the_temporary_file_reads_the_published_buffer(hosts: Hosts):
    """Mount b lists the writer's finished temporary file before host a publishes it (a
    directory lock holds the writer there): the case where a hard link stays unopenable on
    b until it remounts, while a rename reads whole at once."""
    data = content(11, 2 << 20)
    cs = sha3(data)
    directory_lock = hosts.dirs.a / LOCK_SUFFIX
    directory_lock.write_text("another-host-4242")
    answer: list = []
    writer = threading.Thread(target=lambda: answer.append(put(hosts.a, cs, data)))
    writer.start()
    try:
        where = buffer_path(hosts.dirs.b, cs).parent
        wait_for(lambda: where.is_dir() and any(temp_owner(n) for n in os.listdir(where)),
                 "b lists a's temporary file", VISIBLE_WITHIN)
    finally:
        directory_lock.unlink()
        writer.join(HTTP_TIMEOUT)
    assert answer == [(200, b"OK")]
    visible(hosts.b, cs)
    assert get(hosts.b, cs) == (200, data)


def test_the_same_buffer_put_through_both_hosts_at_once(hosts: Hosts):
    """Both hosts' writers take over, refresh and remove the one lock file of the buffer:
    across mounts, creating it fails now and then (ENOENT, EIO) as the other removes it."""
    for i in range(SAME_BUFFER_ROUNDS):
        data = content(1000 + i, 20_000)
        cs = sha3(data)
        start = threading.Barrier(2)
        answers: list = []

        def store(server: ServerProcess, data=data, cs=cs, start=start, answers=answers) -> None:
            start.wait(HTTP_TIMEOUT)
            answers.append(put(server, cs, data))

        writers = [threading.Thread(target=store, args=(server,)) for server in (hosts.a, hosts.b)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(HTTP_TIMEOUT)
        assert answers == [(200, b"OK")] * 2, (i, answers)
    for server in (hosts.a, hosts.b):
        assert get(server, cs) == (200, data)


# ------------------------------------------------------- 3. locks across hosts
@pytest.mark.parametrize("how", ["renamed", "in place"])
def test_a_lock_held_through_one_mount_keeps_readers_on_the_other_waiting(hosts: Hosts, how: str):
    """Another program on host a holds ``<path>.LOCK`` while it writes the buffer (as
    hashserver's writer does, into a temporary file then renamed; or in place, as Seamless's
    save_vault does): a GET on host b waits, then serves the right bytes."""
    data = content(3, 300_000)
    cs = sha3(data)
    path = buffer_path(hosts.dirs.a, cs)
    path.parent.mkdir(exist_ok=True)
    lock = path.with_name(cs + LOCK_SUFFIX)
    lock.write_text("another-host-4242")  # locks.py's owner tag: <host>-<pid>
    wait_visible(buffer_path(hosts.dirs.b, cs).with_name(lock.name))
    answer: list = []
    reader = threading.Thread(target=lambda: answer.append(get(hosts.b, cs)))
    reader.start()
    time.sleep(1.0)
    assert reader.is_alive(), "b's reader waits while a's writer holds the lock"
    if how == "renamed":
        tmp = path.with_name(f".{cs}.another-host-4242.0.tmp")
        tmp.write_bytes(data)
        os.rename(tmp, path)
    else:
        with open(path, "wb") as f:
            for half in (data[: len(data) // 2], data[len(data) // 2:]):
                f.write(half)
                f.flush()
                os.fsync(f.fileno())
                time.sleep(0.3)
    lock.unlink()
    reader.join(HTTP_TIMEOUT)
    assert answer == [(200, data)]
    assert get(hosts.a, cs) == (200, data)
    assert get(hosts.b, cs) == (200, data)


# -------------------------------------------------------------------- 4. storm
STORM_BUFFERS = 120
STORM_PUTS_EACH = 3  # PUTs per buffer, on either host: about 360 in all
STORM_READS_EACH = 4  # GET, HEAD, /has or /buffer-length, on either host
STORM_CUT = 0.1  # of the PUTs, cut mid-body
STORM_THREADS = 8
SETTLE = 30.0  # bound on the run settling (locks and temporary files of cut uploads gone)


@dataclass
class Answer:
    """One request of the storm, as the client saw it."""

    host: str
    checksum: str
    op: str
    sent: float
    received: float
    present: bool | None  # what it said of the buffer (None: nothing, e.g. a cut upload)
    problem: str | None = None  # what was wrong with it


class Storm:
    """Buffers PUT, cut, read and asked about through both hosts at once; every answer kept."""

    def __init__(self, hosts: Hosts, seed: int = 14):
        self.hosts = {"a": hosts.a, "b": hosts.b}
        rng = random.Random(seed)
        sizes = [rng.choice((rng.randint(100, 64 << 10), rng.randint(64 << 10, 1 << 20),
                             rng.randint(1 << 20, 2 << 20) if rng.random() < 0.3 else 4096))
                 for _ in range(STORM_BUFFERS)]
        self.data = {sha3(body): body for body in (content(seed * 1000 + i, n) for i, n in enumerate(sizes))}
        tasks = [(op, cs) for cs in self.data
                 for op in ["put"] * STORM_PUTS_EACH + [rng.choice(("get", "head", "has", "length"))
                                                        for _ in range(STORM_READS_EACH)]]
        rng.shuffle(tasks)
        self.tasks = [(op if op != "put" or rng.random() >= STORM_CUT else "cut", cs, rng.choice("ab"))
                      for op, cs in tasks]
        self.answers: list[Answer] = []

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(STORM_THREADS) as pool:
            self.answers = list(pool.map(lambda task: self.one(*task), self.tasks))

    def one(self, op: str, cs: str, host: str) -> Answer:
        server, data = self.hosts[host], self.data[cs]
        sent = time.monotonic()
        present, problem = getattr(self, f"_{op}")(server, cs, data)
        return Answer(host, cs, op, sent, time.monotonic(), present, problem)

    @staticmethod
    def _put(server, cs, data):
        status, body = put(server, cs, data)
        return (True, None) if (status, body) == (200, b"OK") else (None, f"PUT answered {status} {body[:200]!r}")

    @staticmethod
    def _cut(server, cs, data):
        sock = partial_put(server.url, cs, total=len(data), sent=len(data) // 2)
        sock.close()
        return None, None

    @staticmethod
    def _get(server, cs, data):
        status, body = get(server, cs)
        if status == 200:
            return True, None if body == data else f"GET 200 with wrong bytes ({len(body)} of {len(data)})"
        return (False, None) if status == 404 else (None, f"GET answered {status} {body[:200]!r}")

    @staticmethod
    def _head(server, cs, data):
        status, headers, _ = call(server, "HEAD", f"/{cs}")
        if status == 200:
            return True, None if headers["content-length"] == str(len(data)) else "HEAD: wrong length"
        return (False, None) if status == 404 else (None, f"HEAD answered {status}")

    @staticmethod
    def _has(server, cs, data):
        return batch(server, "/has", [cs])[0], None

    @staticmethod
    def _length(server, cs, data):
        length = batch(server, "/buffer-length", [cs])[0]
        return length != 0, None if length in (0, len(data)) else f"/buffer-length said {length}"

    def stored(self) -> set[str]:
        return {a.checksum for a in self.answers if a.op == "put" and a.present}

    def went_back(self) -> list[Answer]:
        """Answers "absent" from a host to a request sent after that host had said "present"
        (a PUT's 200 included) for the same buffer."""
        first: dict[tuple[str, str], float] = {}
        for a in self.answers:
            if a.present:
                key = (a.host, a.checksum)
                first[key] = min(first.get(key, a.received), a.received)
        return [a for a in self.answers
                if a.present is False and a.sent > first.get((a.host, a.checksum), float("inf"))]


def unreadable(directory: Path) -> list[str]:
    """Files under a checksum name that do not hash to it (or cannot be read)."""
    hasher, bad = Hasher("sha3-256"), []
    for d, _, names in os.walk(directory):
        for name in names:
            if len(name) == 64 and "." not in name:
                try:
                    right = hasher.digest(Path(d, name).read_bytes()).hex() == name
                except OSError as exc:
                    right = False
                    name = f"{name} ({exc.strerror})"
                if not right:
                    bad.append(os.path.join(d, name))
    return bad


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_storm_over_both_hosts_with_cut_uploads(hosts: Hosts):
    storm = Storm(hosts)
    started = time.monotonic()
    storm.run()
    elapsed = time.monotonic() - started
    problems = [a for a in storm.answers if a.problem]
    assert problems == [], problems[:10]
    assert storm.went_back() == [], storm.went_back()[:10]
    stored = storm.stored()
    assert stored, "some PUTs were acknowledged"
    for directory in hosts.dirs:
        wait_for(lambda d=directory: debris(d) == [], lambda d=directory: f"no debris, but {debris(d)}", SETTLE)
    for server in (hosts.a, hosts.b):
        for cs in stored:
            visible(server, cs)
            assert get(server, cs) == (200, storm.data[cs])
    for directory in hosts.dirs:
        assert unreadable(directory) == []
    counts = {op: sum(1 for t in storm.tasks if t[0] == op) for op in ("put", "cut", "get", "head", "has", "length")}
    print(f"storm: {counts} in {elapsed:.1f} s; {len(stored)} buffers stored")


# ------------------------------------------------------------ 5. a dead mount
def test_a_dead_mount_answers_503_until_it_is_mounted_again(seaweedfs: SeaweedFS, serve):  # noqa: F811
    """The FUSE daemon of a running server's directory killed (ENOTCONN): every request
    that needs the directory answers 503 and /healthcheck says so; once it is mounted
    again, everything answers as before, without a restart."""
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    mount = seaweedfs.mount(filer_path=f"/dead-mount-{os.getpid()}")
    try:
        server = serve(mount.path, "--writable", workers=2)
        data, later = b"stored before the mount died", b"stored once it is back"
        cs, missing = sha3(data), sha3(b"missing")
        assert put(server, cs, data) == (200, b"OK")
        mount.kill()
        for _ in range(4):  # reaching both workers
            assert get(server, cs)[0] == 503
            assert get(server, missing)[0] == 503
            for route in ("/has", "/buffer-length"):
                status, _, body = call(server, "POST", route, json.dumps([cs, missing]).encode())
                assert status == 503 and "Storage unavailable" in json.loads(body)["message"]
            assert put(server, sha3(later), later)[0] == 503
        wait_for(lambda: all(call(server, "GET", "/healthcheck")[0] == 503 for _ in range(6)), "/healthcheck 503")
        mount.start()
        wait_for(lambda: all(call(server, "GET", "/healthcheck")[0] == 200 for _ in range(6)), "/healthcheck 200")
        assert get(server, cs) == (200, data)
        assert batch(server, "/has", [cs, missing]) == [True, False]
        assert put(server, sha3(later), later) == (200, b"OK")
    finally:
        mount.stop()


# ------------------------------------------------------------------ in process
MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:30 / /data rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
36 35 0:31 / /data/local\040disk rw - ext4 /dev/sdb1 rw
40 22 0:39 / /mnt/weed rw,nosuid,nodev,relatime - fuse.seaweedfs 127.0.0.1:8888.18888:/dfs rw,user_id=0
41 22 0:40 / /mnt/usb rw,relatime - fuseblk /dev/sdc1 rw
42 22 0:41 / /data rw,relatime shared:21 - lustre 10.0.0.1@tcp:/fs rw
not a mountinfo line
"""


def test_mountinfo_is_read_as_the_kernel_writes_it():
    entries = parse_mountinfo(MOUNTINFO)
    assert [(e.mount_point, e.fs_type) for e in entries] == [
        ("/", "ext4"), ("/data", "nfs4"), ("/data/local disk", "ext4"), ("/mnt/weed", "fuse.seaweedfs"),
        ("/mnt/usb", "fuseblk"), ("/data", "lustre")]

    def fs_type(path: str) -> str:
        return mount_of(path, entries).fs_type

    assert fs_type("/home/user") == "ext4"
    assert fs_type("/data/local disk/buffers") == "ext4"
    assert fs_type("/data/buffers") == "lustre"  # mounted over the NFS mount: it hides it
    assert fs_type("/datasets") == "ext4"  # a prefix of the name is not a parent directory
    assert fs_type("/mnt/weed/buffers/ab") == "fuse.seaweedfs"
    assert [is_network_type(t) for t in ("fuse.seaweedfs", "fuse", "nfs4", "nfs", "lustre", "ceph", "glusterfs")] \
        == [True] * 7
    assert [is_network_type(t) for t in ("ext4", "xfs", "tmpfs", "overlay", "fuseblk", "")] == [False] * 6


def writer_on(directory: Path, **options) -> BufferWriter:
    return BufferWriter(SearchPath(make_layout("prefix", str(directory))), Hasher("sha3-256"), LockProtocol(60),
                        None, 1 << 30, exists=lambda checksum: False, published=lambda path: None, **options)


def test_the_writer_publishes_by_rename_on_a_shared_mount_only(shared_dir: SharedDir, tmp_path):  # noqa: F811
    assert file_system_type(str(shared_dir.a)) == "fuse.seaweedfs"
    assert writer_on(shared_dir.a).by_rename
    assert not is_network_type(file_system_type(str(tmp_path)))
    assert not writer_on(tmp_path).by_rename


@pytest.mark.parametrize("by_rename", [True, False])
def test_publication_never_replaces_a_buffer_already_there(tmp_path, by_rename: bool):
    """Publication by either step: a name already taken (by an earlier copy of the same
    buffer) is left as it is, and the temporary file is dropped."""
    data = os.urandom(5000)
    checksum = bytes.fromhex(sha3(data))
    writer = writer_on(tmp_path, by_rename=by_rename)

    async def body():
        yield data

    assert asyncio.run(writer.put(checksum, body())) is PutOutcome.STORED
    path = buffer_path(tmp_path, checksum.hex())
    first = os.stat(path)
    assert asyncio.run(writer.put(checksum, body())) is PutOutcome.PRESENT  # its lookup said absent
    assert (os.stat(path).st_ino, os.stat(path).st_nlink, path.read_bytes()) == (first.st_ino, 1, data)
    assert debris(tmp_path) == []


class LaggingView:
    """The lookups of a host whose view of the file system lags: the buffer is found (by a
    stat, or listed by the index) before its file can be opened, then ``change`` happens."""

    def __init__(self, root: Path, data: bytes, found_by_stat: bool):
        self.search_path = SearchPath(make_layout("prefix", str(root)))
        self.data, self.checksum = data, sha3(data)
        self.path = buffer_path(root, self.checksum)
        self.found_by_stat, self.listed = found_by_stat, True

    def find(self, checksum: bytes) -> BufferFile | None:
        if self.path.exists():
            return BufferFile.at(self.checksum, str(self.path), None)
        if not self.found_by_stat:
            return None
        return BufferFile(self.checksum, str(self.path), len(self.data), (0, 0, len(self.data), 0))

    def lookup(self, checksums: bytes, promised: bool = True, with_lengths: bool = True) -> BatchLookup:
        return BatchLookup(np.array([self.listed]), np.array([len(self.data) if self.listed else 0]), {})

    def is_promised(self, checksum_hex: str) -> bool:
        return False

    def change(self, what: str) -> None:
        if what == "appears":
            self.path.parent.mkdir(exist_ok=True)
            self.path.write_bytes(self.data)
        elif what == "vanishes":
            self.found_by_stat = self.listed = False


@pytest.mark.parametrize("found_by_stat", [True, False], ids=["stat", "index"])
@pytest.mark.parametrize("change, answer", [("appears", "served"), ("vanishes", "absent"), ("nothing", "503")])
def test_a_found_file_that_cannot_be_opened_is_looked_for_again(tmp_path, found_by_stat, change, answer):
    """Found but not openable: the reader looks again for a while (never a corruption);
    served once it opens, absent once nothing finds it, else a storage fault (503)."""
    view = LaggingView(tmp_path, os.urandom(5000), found_by_stat)
    reader = BufferReader(view, Hasher("sha3-256"), LockProtocol(60))

    async def scenario():
        later = asyncio.get_running_loop().call_later(SETTLE_BUDGET / 5, view.change, change)
        try:
            readable = await reader.open(bytes.fromhex(view.checksum), frozenset())
        except FileNotFoundError as exc:
            return exc
        finally:
            later.cancel()
        return readable.content if readable is not None else None

    result = asyncio.run(scenario())
    if answer == "served":
        assert result == view.data
    elif answer == "absent":
        assert result is None
    else:
        assert isinstance(result, FileNotFoundError) and "not openable" in str(result)
