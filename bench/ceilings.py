"""Ceilings measured on this machine, in this run, without any server.

PUT has to hash every byte it receives, and a first GET of a large buffer
hashes it to verify it, so single-core SHA3-256 (or SHA-256) speed bounds them
both, and a PUT can be no faster than ``curl -T`` of the same body into a plain file; a
small PUT has to store a file durably, so fsync'd file creation bounds it; the
index build has to list the directory, so ``find`` bounds it.  Measured here,
they turn the server's figures into ratios that mean the same on any machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time

CHUNK = 16 << 20


def _repeat_for(seconds: float, step) -> tuple[int, float]:
    """Call ``step`` until ``seconds`` have passed (at least once); (calls, elapsed)."""
    calls = 0
    started = time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls, elapsed


def hash_mb_per_s(algorithm: str, seconds: float = 1.0) -> float:
    """Single-core hashlib throughput of ``algorithm`` (e.g. "sha3_256", "sha256") on
    large data, in 10^6 bytes per second."""
    data = os.urandom(CHUNK)
    h = hashlib.new(algorithm)
    calls, elapsed = _repeat_for(seconds, lambda: h.update(data))
    return calls * CHUNK / elapsed / 1e6


def sha3_mb_per_s(seconds: float = 1.0) -> float:
    """Single-core SHA3-256 (the server's default algorithm), 10^6 bytes per second."""
    return hash_mb_per_s("sha3_256", seconds)


def sha256_mb_per_s(seconds: float = 1.0) -> float:
    """Single-core SHA-256 (what Seamless uses), 10^6 bytes per second."""
    return hash_mb_per_s("sha256", seconds)


def curl_upload_mb_per_s(source: str, url: str, seconds: float = 1.0) -> float:
    """``curl -T SOURCE URL`` again and again (at least once): 10^6 bytes per second.

    With ``url`` a sink that writes the body into a plain file (bench.servers.UploadSink),
    this is what an upload costs without hashing: the ceiling of a PUT whatever its
    algorithm.  A failed upload raises (a ceiling that did not upload is no ceiling)."""
    argv = [shutil.which("curl") or "curl", "-sS", "--fail", "-o", os.devnull, "-T", source, url]

    def step() -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=600)

    calls, elapsed = _repeat_for(seconds, step)
    return calls * os.path.getsize(source) / elapsed / 1e6


def find_seconds(directory: str) -> tuple[int, float]:
    """``find DIR -type f | wc -l``: (files, seconds) -- what listing the directory costs."""
    started = time.perf_counter()
    out = subprocess.run(["find", directory, "-type", "f"], capture_output=True, timeout=3600,
                         check=False)
    elapsed = time.perf_counter() - started
    return out.stdout.count(b"\n"), elapsed


def small_writes_per_s(directory: str, size: int = 1024, seconds: float = 1.0) -> float:
    """Durable small-file stores per second from one thread, the way the writer stores one:
    temporary file, write, fsync, close, link into place, unlink the temporary.

    Small PUTs are bounded by this, not by hashing; measured on the file system
    of the buffer directory."""
    data = os.urandom(size)
    work = tempfile.mkdtemp(prefix="fsync-", dir=directory)
    counter = iter(range(1 << 62))

    def step() -> None:
        i = next(counter)
        tmp = os.path.join(work, f".{i}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, os.path.join(work, str(i)))
        os.unlink(tmp)

    try:
        calls, elapsed = _repeat_for(seconds, step)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return calls / elapsed
