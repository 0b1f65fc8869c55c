"""The local tier of a server on a bucket, as the README's "The local tier" promises it:
kept across restarts (rescanned at start, its bytes counted toward ``--cache-size``);
least recently used out first; a file being sent is never cut (eviction unlinks it,
and the open descriptor keeps it readable until the response ends).

Real server processes on SeaweedFS, over real HTTP; every wait bounded, no timing asserted.

How the code keeps these (hashserver/eviction.py, hashserver/tiered.py):

- At start the evictor's first check is a full scan (``TierEvictor.scanned_at`` starts at
  -inf): the bytes already held are its base, and anything above the bound is evicted
  then, down to ``LOW_WATER`` of it.  Later fills add to that base.
- A buffer's last use is the later of its file's access time (set when the tier stored
  it) and its slot in the workers' :class:`~hashserver.eviction.Recency` table, stamped
  at each answer from the tier in whole seconds.  The table is in shared memory: after a
  restart only the files' access times remain.  The order is exact to the second (two
  buffers sharing a slot only make one look more recent), so the tests below space the
  uses that must be told apart by a whole second, and pick buffers in distinct slots.
- Eviction unlinks; a response already sending the file keeps reading it through its
  descriptor (sendfile).  So "never evicts a file being sent" means: the response is
  never cut or altered, even though the file leaves the tier meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from seaweedfs import s3_bucket, seaweedfs  # noqa: F401  (fixtures)
from test_s3_reads import calls, tier_hits
from test_s3_server import BOUND, metric, put_object, request, s3_serve, tier_bytes, wait_for  # noqa: F401

from hashserver.eviction import LOW_WATER, SLOTS

from conftest import sha3

pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")

pytestmark = pytest.mark.timeout(300)

KIB, MIB = 1 << 10, 1 << 20


def in_tier(cache: Path, checksum: str) -> Path:
    return cache / checksum[:2] / checksum


def distinct_buffers(count: int, size: int) -> list[bytes]:
    """``count`` random buffers of ``size`` bytes whose recency slots (a table of the
    smallest size, as for the bounds here) all differ: no buffer can look used by another."""
    while True:
        buffers = [os.urandom(size) for _ in range(count)]
        slots = {int(sha3(data)[:8], 16) & (SLOTS[0] - 1) for data in buffers}
        if len(slots) == count:
            return buffers


def next_second() -> None:
    """Sleep into the next whole second of the clock (the Recency table's resolution)."""
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.05)


def read_through(server, cache: Path, checksum: str, data: bytes) -> None:
    """GET a buffer the tier does not hold; wait until the tier stored it."""
    assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(in_tier(cache, checksum).exists, f"{checksum[:8]} in the tier")


def held(cache: Path, checksums: list[str]) -> list[bool]:
    return [in_tier(cache, checksum).exists() for checksum in checksums]


def file_times(cache: Path, checksums: list[str]) -> str:
    """Each tier file's access and modification times (ns, from the first's access): what
    the evictor's scan saw of their last uses, for a failure's message."""
    times = []
    for checksum in checksums:
        try:
            st = in_tier(cache, checksum).stat()
            times.append((st.st_atime_ns, st.st_mtime_ns))
        except FileNotFoundError:
            times.append(None)
    origin = min((t[0] for t in times if t), default=0)
    return "times (atime, mtime): " + ", ".join(
        f"{checksum[:8]} gone" if t is None else f"{checksum[:8]} ({t[0] - origin}, {t[1] - origin})"
        for checksum, t in zip(checksums, times, strict=True))


# ------------------------------------------------------------------ restarts
@pytest.fixture(params=["disk", "tmpfs"])
def tier_place(request, tmp_path):
    """Where a tier goes: beside the test's files, or on a tmpfs (``/dev/shm``), which the
    README allows and which refuses the ``O_DIRECT`` that large fills try first."""
    if request.param == "disk":
        yield tmp_path
        return
    with open("/proc/mounts") as mounts:
        assert any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts), "no tmpfs at /dev/shm"
    place = Path(tempfile.mkdtemp(prefix="hashserver-tier-", dir="/dev/shm"))
    yield place
    shutil.rmtree(place, ignore_errors=True)


def test_tier_is_kept_across_a_restart(s3_serve, seaweedfs, s3_bucket, tier_place):  # noqa: F811
    """Buffers read through a server are answered from the tier by the next server on the
    same --cache-dir, with no object-store GET: small ones (read whole) and a large one
    (sent from its file); on a disk and on a tmpfs."""
    cache = tier_place / "cache"
    buffers = [os.urandom(100 * KIB), os.urandom(300 * KIB), os.urandom(3 * MIB + 5)]
    checksums = [put_object(seaweedfs, s3_bucket, data) for data in buffers]
    first = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "1G")
    for checksum, data in zip(checksums, buffers, strict=True):
        read_through(first, cache, checksum, data)
        assert in_tier(cache, checksum).read_bytes() == data
    assert first.stop() == 0, first.output()[-4000:]

    second = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "1G")
    for checksum, data in zip(checksums, buffers, strict=True):
        assert request(second, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: tier_hits(second) >= len(buffers),
             lambda: f"every read a hit of the tier (hits: {tier_hits(second)}, gets: {calls(second, 'get')})")
    assert calls(second, "get") == 0, "the restarted server read a buffer its tier holds from the bucket"
    assert held(cache, checksums) == [True] * len(buffers)
    assert "Traceback" not in second.output()


def test_tier_held_before_a_restart_counts_toward_the_bound(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """Six buffers stored by a first server; a second one on the same tier with a bound of
    4.5 of them brings it within the bound at start (down to LOW_WATER of it: 4 kept), and
    its next fill counts on top of what it kept: one of the old ones goes, not the new one."""
    size = 256 * KIB
    bound = 4 * size + size // 2
    assert 4 * size <= LOW_WATER * bound < 5 * size  # the arithmetic below
    cache = tmp_path / "cache"
    old = [os.urandom(size) for _ in range(6)]
    newer = os.urandom(size)
    old_sums = [put_object(seaweedfs, s3_bucket, data) for data in old]
    newer_sum = put_object(seaweedfs, s3_bucket, newer)
    first = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "1G")
    for checksum, data in zip(old_sums, old, strict=True):
        read_through(first, cache, checksum, data)
    assert first.stop() == 0, first.output()[-4000:]
    assert tier_bytes(cache) == 6 * size

    second = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", str(bound))
    wait_for(lambda: tier_bytes(cache) <= bound,
             lambda: f"the tier brought within its new bound at start: {tier_bytes(cache)} > {bound}")
    assert sum(held(cache, old_sums)) == 4, held(cache, old_sums)
    wait_for(lambda: metric(second, "hashserver_local_tier_evictions_total") >= 2, "the evictions counted")
    kept = [checksum for checksum in old_sums if in_tier(cache, checksum).exists()]

    read_through(second, cache, newer_sum, newer)  # 5 buffers: over the bound only if the 4 kept count
    wait_for(lambda: sum(held(cache, kept)) < 4,
             lambda: f"an old buffer evicted by the next fill (tier: {tier_bytes(cache)} bytes, "
                     f"held: {held(cache, kept)})")
    assert sum(held(cache, kept)) == 3 and in_tier(cache, newer_sum).exists(), "the newest one is not the one out"
    assert tier_bytes(cache) <= bound
    wait_for(lambda: metric(second, "hashserver_local_tier_evictions_total") >= 3, "the eviction counted")
    for checksum, data in zip(old_sums, old, strict=True):  # every one still served, from the tier or the bucket
        assert request(second, "GET", "/" + checksum) == (200, data)
    assert "Traceback" not in second.output()


def test_eviction_at_start_takes_the_least_recently_used_first(s3_serve, seaweedfs, s3_bucket,  # noqa: F811
                                                               tmp_path):
    """After a restart the Recency table is empty: a buffer's last use is its file's access
    time, set when the tier stored it.  Six buffers stored one after the other, none read
    since; restarted with a bound of 4.5 of them, the two stored first go.

    They are stored in descending order of name, so that an order by name (the evictor's
    tie-break, :func:`hashserver.eviction.scan_tier`) cannot pass for the order of use.

    (Found failing: the startup check of the hash algorithm, hashserver/integrity.py, reads
    up to 8 buffers of the tier, which on a relatime mount sets their access time to the
    start: they look just used, and the ones stored last go first.)"""
    size = 256 * KIB
    bound = 4 * size + size // 2
    cache = tmp_path / "cache"
    old = sorted((os.urandom(size) for _ in range(6)), key=sha3, reverse=True)
    old_sums = [put_object(seaweedfs, s3_bucket, data) for data in old]
    first = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "1G")
    for checksum, data in zip(old_sums, old, strict=True):
        read_through(first, cache, checksum, data)
        time.sleep(0.05)  # a file's times move by the kernel's tick (up to 10 ms): no two alike
    assert first.stop() == 0, first.output()[-4000:]
    stored = [in_tier(cache, checksum).stat().st_atime_ns for checksum in old_sums]
    assert stored == sorted(stored) and len(set(stored)) == len(stored), "stored one after the other"

    second = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", str(bound))
    wait_for(lambda: tier_bytes(cache) <= bound,
             lambda: f"the tier brought within its new bound at start: {tier_bytes(cache)} > {bound}")
    after = [in_tier(cache, checksum).stat().st_atime_ns if in_tier(cache, checksum).exists() else None
             for checksum in old_sums]
    assert held(cache, old_sums) == [False, False, True, True, True, True], (
        f"not the least recently used out first; access times stored {stored}, after the start {after}")
    assert "Traceback" not in second.output()


# ------------------------------------------------------------------ least recently used
def test_least_recently_used_is_evicted_first(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A bound of 3.5 buffers: A, B, C read (stored), A read again from the tier, then D:
    B, the least recently used, goes; A stays though stored first."""
    size = 256 * KIB
    bound = 3 * size + size // 2
    assert 3 * size <= LOW_WATER * bound < 4 * size  # one eviction brings four down to three
    cache = tmp_path / "cache"
    buffers = distinct_buffers(4, size)
    a, b, c, d = sums = [put_object(seaweedfs, s3_bucket, data) for data in buffers]
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", str(bound))
    for checksum, data in zip(sums[:3], buffers[:3], strict=True):
        read_through(server, cache, checksum, data)
    wait_for(lambda: calls(server, "get") >= 3, "the three GETs counted")
    next_second()  # A's use (whole seconds) is then after C's storing
    assert request(server, "GET", "/" + a) == (200, buffers[0])
    wait_for(lambda: tier_hits(server) >= 1, "A's second read answered by the tier")
    assert calls(server, "get") == 3
    assert held(cache, sums) == [True, True, True, False], "evicted though within the bound"

    read_through(server, cache, d, buffers[3])
    wait_for(lambda: not in_tier(cache, b).exists() or not all(held(cache, [a, c, d])),
             lambda: f"an eviction (held: {held(cache, sums)}, tier: {tier_bytes(cache)} bytes)")
    assert held(cache, sums) == [True, False, True, True], \
        f"A, B, C, D: B (least recently used) not the one out; {file_times(cache, sums)}\n{server.output()}"
    wait_for(lambda: metric(server, "hashserver_local_tier_evictions_total") >= 1, "the eviction counted")
    assert metric(server, "hashserver_local_tier_evictions_total") == 1
    assert "Traceback" not in server.output()


# ------------------------------------------------------------------ a file being sent
class SlowClient:
    """A raw HTTP/1.1 GET whose body is read a few KiB at a time, with a small receive
    buffer: the server's sendfile stays blocked on the socket meanwhile."""

    def __init__(self, port: int, checksum: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)  # no autotuning
        self.sock.settimeout(BOUND)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /{checksum} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4 * KIB)
            assert chunk, f"connection closed before the headers: {head!r}"
            head += chunk
        head, self.body_start = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        headers = dict(line.split(":", 1) for line in lines[1:])
        self.length = int({k.strip().lower(): v for k, v in headers.items()}["content-length"])
        self.hash = hashlib.sha3_256(self.body_start)
        self.received = len(self.body_start)

    def read(self, size: int) -> int:
        """Read up to ``size`` more body bytes; returns how many came (0: the connection ended)."""
        chunk = self.sock.recv(min(size, self.length - self.received))
        self.hash.update(chunk)
        self.received += len(chunk)
        return len(chunk)

    def trickle(self, pieces: int, size: int = 4 * KIB, pause: float = 0.02) -> None:
        for _ in range(pieces):
            if self.received >= self.length or not self.read(size):
                return
            time.sleep(pause)

    def finish(self) -> None:
        while self.received < self.length and self.read(256 * KIB):
            pass
        self.sock.close()


def test_a_file_being_sent_is_never_evicted(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """A 12 MiB buffer sent from the tier's file to a slow client while reads of other
    buffers push the tier (bound 16 MiB) past its bound: the large buffer, least recently
    used, is passed over while it is sent, the others go instead, and the tier is back
    within its bound; the client gets every byte right; once sent, the large buffer is
    evicted like any other."""
    cache = tmp_path / "cache"
    large = os.urandom(12 * MIB)
    large_sum = put_object(seaweedfs, s3_bucket, large)
    others = [os.urandom(512 * KIB) for _ in range(12)]  # 6 MiB more: 18 MiB > 16 MiB
    other_sums = [put_object(seaweedfs, s3_bucket, data) for data in others]
    server = s3_serve(s3_bucket, "--cache-dir", str(cache), "--cache-size", "16M")
    read_through(server, cache, large_sum, large)
    wait_for(lambda: calls(server, "get") >= 1, "the first read's GETs counted")
    gets = calls(server, "get")  # (a large object may be read in ranged parts)

    client = SlowClient(server.port, large_sum)
    try:
        assert (client.status, client.length) == (200, len(large))
        client.trickle(16)
        wait_for(lambda: tier_hits(server) >= 1, "the slow read answered by the tier (from its file)")
        assert calls(server, "get") == gets

        for checksum, data in zip(other_sums, others, strict=True):
            assert request(server, "GET", "/" + checksum) == (200, data)
            client.trickle(2)
        wait_for(lambda: metric(server, "hashserver_local_tier_evictions_total") >= 1, "an eviction")
        wait_for(lambda: tier_bytes(cache) <= 16 * MIB, lambda: f"the tier within its bound ({tier_bytes(cache)})")
        assert client.received < client.length, "the response was over before the eviction: nothing tested"
        assert in_tier(cache, large_sum).exists(), "the buffer being sent was evicted"
        assert "spared, being sent" in server.output()
        client.trickle(16)
        client.finish()
    finally:
        client.sock.close()
    assert client.received == len(large), f"the response was cut at {client.received} of {len(large)} bytes"
    assert client.hash.hexdigest() == large_sum, "the slow client got wrong bytes"
    for checksum, data in zip(other_sums, others, strict=True):  # read again: the large buffer is now the oldest
        assert request(server, "GET", "/" + checksum) == (200, data)
    wait_for(lambda: not in_tier(cache, large_sum).exists(), "the large buffer evicted once sent")
    assert request(server, "GET", "/" + large_sum) == (200, large)
    assert "Traceback" not in server.output()
