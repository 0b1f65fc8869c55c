"""``python -m bench.s3`` (``python -m bench --store s3``): hashserver on an S3 bucket,
against the raw S3 client on the same object store, and its local tier against the
directory store.

One run on this machine: a SeaweedFS (``weed server`` with its S3 gateway, the tests'
own harness) gets a bucket filled key-for-key from a bench dataset (as ``aws s3 sync``
would), and fresh objects nobody has read yet.  Then, side by side:

- local-tier hits (GET 1 KiB, GET large, /has x1000 of buffers in the tier) against a
  directory server on the dataset itself: the same work without the bucket;
- misses (GET 1 KiB and large of objects never read), /has x1000 with half of the
  checksums in the bucket and nothing in the local tier, PUT 1 KiB and large, against
  the raw client (obstore, the library the server uses) doing the same calls to the
  same SeaweedFS at its best concurrency: the ceiling.  For /has, the best of one HEAD
  per checksum and a LIST of the prefixes involved.  The server's small misses and PUTs
  likewise get their best of two connection counts (``--connections`` and 128): the
  object store's own cost per call falls as more arrive at once, for both.  Small
  misses and PUTs also report the raw rate of hashserver's own lean client
  (``hashserver.s3lean``), which the server's calls of those cases use, and the
  server's own rate with no local tier (``--cache-size 0``): each puts a file into
  the tier, where the raw client writes nothing, and this shows the two apart;
- a large miss and a large PUT once more on a second server with ``--hash-algorithm
  sha-256`` (today's Seamless), on objects named by SHA-256 under ``sha256/``: SHA3-256's
  hash is what bounds a large miss on this machine (and takes a core from SeaweedFS at
  a large PUT), and these show the rest.  Each large miss is
  also set beside the raw client's GET followed by the hash of the bytes (the least
  that any server must do which verifies an object before its answer's headers, as
  the contract asks up to 64 MiB), and beside the hash alone; each large PUT beside
  the raw client's multipart upload of the body completed once its hash is taken,
  while its copy is written as the tier writes one (the least that any server does
  which verifies a PUT and keeps it in a tier).

The large cases (GET miss and PUT of 16 MiB, one at a time) are measured by pairs,
object after object: a miss is the raw client's GET of a fresh object (then its GET
once more, followed by the hash), then the server's GET of the same object; a PUT is
the raw client's PUT of one fresh object, its multipart upload of another (the
ceiling is the faster of the two ways), its least work on a third, then the server's
PUT of a fourth.  Each figure is the size over the median of its times
(:meth:`S3Bench.large_pairs`).

Each figure is reported as a ratio to its ceiling, in the table format of
:mod:`bench.report`.  Every object a case reads is fresh where it must be (a miss is
read once; a /has body names checksums never asked before), so a case that would run
out of fresh objects says so as a problem instead of measuring hits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from hashserver.index.scan import SETTLE_NS
from hashserver.layout import PREFIX_MARKER
from hashserver.writer import BATCH

from .cases import Case
from .dataset import Dataset, DatasetSpec, checksum_hex, ensure_dataset, random_checksums
from .generators import choose_generator
from .load import LoadGenerator, Scenario, write_scenario
from .machine import load_average
from .report import _figure_row, _ratio
from .results import Figure
from .servers import REPO, HashServer, request

BUCKET = "bench"
SHA256_PREFIX = "sha256/"  # buffers named by SHA-256, for a server with --hash-algorithm sha-256
HAS_SIZE = 1000
RAW_CONCURRENCIES = (8, 32, 128)  # the raw client's sweep for small objects (best counts)
HEAD_CONCURRENCIES = (16, 64, 256)
# Before a large case, unmeasured, this many large misses (or PUTs) per worker of the server,
# over as many connections as workers, and one by the raw client: a worker's first large
# object costs it about half as much again as the next (its threads started, its memory
# first touched: 44-52 ms against 30 for a 16 MiB SHA-256 miss, measured), and the
# SHA-256 server is new when its case begins, where the raw client has long been at work.
LARGE_WARM_UP = 2
# The cases measured by pairs (S3Bench.large_pairs): (the server's objects, their keys' prefix,
# the hash they are named by, the stream of the raw client's own fresh objects for a PUT).
PAIRED = {
    "miss_get_large": ("miss_large", "", "sha3_256", None),
    "miss_get_large_sha256": ("miss_large_sha256", SHA256_PREFIX, "sha256", None),
    "put_large": ("put_large", "", "sha3_256", 0x5500),
    "put_large_sha256": ("put_large_sha256", SHA256_PREFIX, "sha256", 0x5501),
}
LEAST_STREAM = 0x400  # added to a PUT's raw stream: the fresh objects of its least-work calls
PARTS_STREAM = 0x800  # and of its raw multipart uploads
# What the least-work line of a large case measures (RawCalls.get_hashed, RawCalls.put_verified), by "is a PUT".
LEAST_WORK = {
    False: "obstore's GET, then the hash of its bytes (the least a server does that verifies before it answers)",
    True: "obstore's multipart PUT of the body held in memory, completed once its hash is taken in a thread "
          "while another writes its copy past the page cache (the least a server does that verifies a PUT "
          "and keeps it in its tier)",
}
HTTP_TIMEOUT = 120.0
# After the warm-up filled the tier, its directories have changed: until the main process
# rescanned them once they settled (hashserver.index.scan.SETTLE_NS), each hit stats them
# (0.45-0.75x the directory store, measured).  The hit cases measure a tier in its steady
# state, so they start once the index took in the warm-up and published nothing new for
# INDEX_QUIET seconds (more than a refresh's cycle), at most INDEX_WAIT seconds after it.
INDEX_QUIET = SETTLE_NS / 1e9 + 2.0
INDEX_WAIT = 60.0
# Hit cases: each server's best of this many rounds, taken in turns (one round of the same
# server varied by 10-20% on this shared machine, and the first after the warm-up was low).
HIT_ROUNDS = 2
FRESH_MARGIN = 2.0  # fresh objects prepared per expected request (counted afterwards)
# Small misses and PUTs a second the server may reach (with no tier up to 4,457 measured; with the
# tier up to 5,076 over a --quick run's single second), times the duration and the margin.
SMALL_RATE = 3000
NO_TIER = " no tier"  # names the fresh objects of the small cases through a server with --cache-size 0
METRICS_FOLDED = 1.5  # seconds after which a worker's counts are in /metrics (folded at most once a second)

CASES_S3: dict[str, Case] = {c.key: c for c in (
    Case("hit_get_small", "GET 1 KiB, local tier", "req/s", "read", "directory", 0.9),
    Case("hit_get_large", "GET large, local tier", "MB/s", "read", "directory", 0.9, payload="large"),
    Case("hit_has_1000", "/has x1000, local tier", "checksums/s", "read", "directory", 0.9,
         per_request=HAS_SIZE),
    Case("miss_get_small", "GET 1 KiB, miss", "req/s", "read", "raw_get", 0.7),
    Case("miss_get_large", "GET large, miss", "MB/s", "read", "raw_get", 0.7, payload="large"),
    # The same with buffers named by SHA-256 (today's Seamless; --hash-algorithm sha-256), whose
    # hash runs about five times as fast as SHA3-256's on this machine: the large miss apart from it.
    Case("miss_get_large_sha256", "GET large, miss, sha-256", "MB/s", "read", "raw_get", 0.7, payload="large"),
    Case("remote_has_1000", "/has x1000, half in bucket", "checksums/s", "read", "raw_has", 0.8,
         per_request=HAS_SIZE),
    Case("put_small", "PUT 1 KiB, new", "req/s", "write", "raw_put", 0.7),
    Case("put_large", "PUT large, new", "MB/s", "write", "raw_put", 0.7, payload="large"),
    # The same on the SHA-256 server: a large PUT apart from SHA3-256's hash, as for the miss.
    Case("put_large_sha256", "PUT large, sha-256", "MB/s", "write", "raw_put", 0.7, payload="large"),
)}
CEILINGS = {"directory": "directory store", "raw_get": "obstore GET", "raw_has": "obstore HEAD/LIST",
            "raw_put": "obstore PUT"}


@dataclass
class S3Options:
    buffers: int = 5000
    large_size: int = 16 << 20
    large_count: int = 10  # fresh large objects per large case
    workers: int = 2
    duration: float = 3.0
    connections: int = 32
    cache_dir: str = "~/.cache/hashserver-bench"
    out: str = "bench-results-s3"
    seed: int = 1
    client: str = "auto"


@dataclass
class S3Document:
    started: str
    command: list[str]
    options: S3Options
    load_average_at_start: list[float]
    load_generator: str
    figures: dict[str, Figure] = field(default_factory=dict)
    ceiling_detail: dict[str, str] = field(default_factory=dict)  # how each ceiling was reached
    server_detail: dict[str, str] = field(default_factory=dict)  # how hashserver's figure was, where it varied
    problems: list[str] = field(default_factory=list)
    load_average_at_end: list[float] | None = None
    file_creation_us: float | None = None  # CPU per file created beside the tier, before the misses
    large_write_ms: float | None = None  # CPU to write a large buffer into a new file beside the tier, as it does
    large_write_buffered_ms: float | None = None  # the same through the page cache
    # hashserver's own lean S3 client alone, for the cases the server makes its calls with it: the
    # lowest-cost raw client on this machine, reported beside obstore's ceiling (label: rate, how)
    lean_raw: dict[str, tuple[float, str]] = field(default_factory=dict)
    # the small misses and PUTs through a server with no local tier (--cache-size 0), on fresh
    # objects of their own, against the same ceilings (label: rate, connections)
    no_tier: dict[str, tuple[float, str]] = field(default_factory=dict)
    # for the large cases, the least a server does that verifies (LEAST_WORK): for a miss the raw
    # client's GET then the hash, for a PUT its upload beside the hash and the tier's copy; and the
    # hash alone (label: MB/s, how, the hash's MB/s)
    verified_raw: dict[str, tuple[float, str, float]] = field(default_factory=dict)


# ------------------------------------------------------------------ SeaweedFS
def seaweedfs_module():
    """The tests' SeaweedFS harness (tests/seaweedfs.py), loaded from the checkout: one
    copy of how weed is started, on which ports, and stopped."""
    path = Path(REPO) / "tests" / "seaweedfs.py"
    spec = importlib.util.spec_from_file_location("bench_seaweedfs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fresh_bodies(count: int, size: int, seed: int, stream: int, name=checksum_hex) -> dict[str, bytes]:
    """``count`` new random buffers by checksum (``name``: SHA3-256's by default; seeded:
    the same run makes the same ones)."""
    blob = np.random.Generator(np.random.PCG64([seed, stream])).bytes(count * size)
    bodies = (blob[i * size:(i + 1) * size] for i in range(count))
    return {name(b): b for b in bodies}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(checksum: str, prefix: str = "") -> str:
    """The object key of a buffer in the prefix layout (``aws s3 sync`` of a directory)."""
    return f"{prefix}{checksum[:2]}/{checksum}"


async def bounded(items: Sequence, call: Callable[[object], Awaitable], concurrency: int) -> float:
    """Run ``call`` on every item, at most ``concurrency`` at once; the seconds it took."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await call(item)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def upload(store, objects: dict[str, bytes], concurrency: int = 64) -> None:
    import obstore

    await bounded(list(objects.items()), lambda kv: obstore.put_async(store, kv[0], kv[1]), concurrency)


def upload_directory(store, directory: str) -> int:
    """Every file under ``directory`` as the object of the same relative path."""
    objects = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                objects[os.path.relpath(path, directory)] = f.read()
    asyncio.run(upload(store, objects))
    return len(objects)


# -------------------------------------------------------------- raw ceilings
async def _best(items: Sequence, call, concurrencies: Sequence[int]) -> tuple[float, int]:
    """(operations per second, concurrency) of the best of ``concurrencies``."""
    best = (0.0, 0)
    for concurrency in concurrencies:
        seconds = await bounded(items, call, concurrency)
        best = max(best, (len(items) / seconds, concurrency))
    return best


def raw_get_first(store, keys: Sequence[str], concurrencies: Sequence[int], first: int) -> tuple[float, int]:
    """GETs of the first ``first`` bytes of small objects (their whole), as the server
    reads them: the client hands the bytes of a range over in one call, those of a GET
    in two."""
    import obstore

    async def get_first(k: str) -> None:
        await obstore.get_range_async(store, k, start=0, end=first)

    return asyncio.run(_best(keys, get_first, concurrencies))


class RawCalls:
    """The raw client's calls one at a time, each timed: a large case's half of its pairs."""

    def __init__(self, store):
        import obstore

        from hashserver.directwrite import BufferPool

        self.obstore = obstore
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="raw-hash")
        self.copier = ThreadPoolExecutor(1, thread_name_prefix="raw-copy")
        self.buffers = BufferPool()

    def get(self, k: str) -> float:
        """Seconds of one GET, its bytes read whole."""
        async def get() -> None:
            await (await self.obstore.get_async(self.store, k)).bytes_async()

        started = time.perf_counter()
        self.loop.run_until_complete(get())
        return time.perf_counter() - started

    def get_hashed(self, k: str, algorithm: str) -> tuple[float, float]:
        """(seconds, of which hashing) of one GET, then the hash of its bytes (a hashlib
        name) in a thread, as a server does at least before it answers."""
        async def get_hashed() -> float:
            data = await (await self.obstore.get_async(self.store, k)).bytes_async()
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(None, lambda: hashlib.new(algorithm, data))
            return time.perf_counter() - started

        started = time.perf_counter()
        hashing = self.loop.run_until_complete(get_hashed())
        return time.perf_counter() - started, hashing

    def put(self, k: str, body: bytes, in_parts: bool = False) -> float:
        """Seconds of one create-only PUT, as the server creates objects up to 8 MiB; or
        (``in_parts``) of a multipart upload in the server's parts, as many in flight, as it
        uploads larger ones."""
        async def put() -> None:
            if in_parts:
                await self.upload_in_parts(k, body)
            else:
                await self.obstore.put_async(self.store, k, body, mode="create")

        started = time.perf_counter()
        self.loop.run_until_complete(put())
        return time.perf_counter() - started

    def put_verified(self, k: str, body: bytes, algorithm: str, expected: str, directory: str) -> tuple[float, float]:
        """(seconds, of which hashing) of the least a server does for a large PUT that it
        verifies and keeps a copy of, the body already in memory: obstore's multipart upload
        of it (the server's part size and parts in flight), completed only once its hash (a
        hashlib name), taken a MiB at a time in one thread, came out ``expected`` (else the
        upload is aborted and ValueError raised), while another thread writes its copy into
        a new file under ``directory`` as the tier does (past the page cache,
        :mod:`hashserver.directwrite`).  The copy holds nothing back: its writes still
        queued when the upload completes, and its end, are written after the time is
        taken (a server answers before its tier's copy is published)."""
        from hashserver.directwrite import DirectFile

        view = memoryview(body)
        steps = [view[i:i + BATCH] for i in range(0, len(view), BATCH)]  # as the server's batches
        digest = hashlib.new(algorithm)
        hashing = [0.0]
        hashed: list[asyncio.Future] = []
        written: list[asyncio.Future] = []

        def hash_step(step: memoryview) -> None:
            started = time.perf_counter()
            digest.update(step)
            hashing[0] += time.perf_counter() - started

        async def put_verified(copy: DirectFile) -> None:
            loop = asyncio.get_running_loop()

            async def pieces() -> AsyncIterator[memoryview]:
                for step in steps:
                    hashed.append(loop.run_in_executor(self.hasher, hash_step, step))
                    written.append(loop.run_in_executor(self.copier, copy.write, step))
                    yield step
                await asyncio.gather(*hashed)
                if digest.hexdigest() != expected:
                    raise ValueError(f"{k}: the body hashed to {digest.hexdigest()}, not {expected}")

            await self.upload_in_parts(k, pieces())

        fd = os.open(os.path.join(directory, k.replace("/", "-")), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        copy = None
        try:
            copy = DirectFile(fd, self.buffers)
            started = time.perf_counter()
            self.loop.run_until_complete(put_verified(copy))
            seconds = time.perf_counter() - started
            self.loop.run_until_complete(asyncio.gather(*written))
            copy.finish()
        finally:  # no thread may still use the buffer or the descriptor, whatever failed
            self.loop.run_until_complete(asyncio.gather(*hashed, *written, return_exceptions=True))
            if copy is not None:
                copy.release()
            os.close(fd)
        return seconds, hashing[0]

    def upload_in_parts(self, k: str, data) -> Awaitable:
        """obstore's multipart upload of ``data`` (bytes, or an async iterator of pieces) in the
        server's part size, as many parts in flight as the server's."""
        from hashserver.objectstore import PART_SIZE, UPLOAD_CONCURRENCY

        return self.obstore.put_async(self.store, k, data, use_multipart=True, chunk_size=PART_SIZE,
                                      max_concurrency=UPLOAD_CONCURRENCY)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.hasher.shutdown()
        self.copier.shutdown()
        self.buffers.close()
        self.loop.close()


def raw_put(store, objects: Sequence[dict[str, bytes]], concurrencies: Sequence[int]) -> tuple[float, int]:
    """PUTs of new objects, created only if absent as the server creates them; one fresh
    set of objects per concurrency."""
    import obstore

    best = (0.0, 0)
    for batch, concurrency in zip(objects, concurrencies, strict=True):
        seconds = asyncio.run(bounded(
            list(batch.items()), lambda kv: obstore.put_async(store, key(kv[0]), kv[1], mode="create"),
            concurrency))
        best = max(best, (len(batch) / seconds, concurrency))
    return best


def raw_lean(client, work: Sequence[Sequence], call, concurrencies: Sequence[int]) -> tuple[float, int]:
    """hashserver's own lean client (hashserver.s3lean) making ``call`` on each item of
    ``work[n]`` at ``concurrencies[n]``: (calls per second, concurrency) of the best."""
    async def measure(items: Sequence, concurrency: int) -> float:
        try:
            return len(items) / await bounded(items, lambda item: call(client, item), concurrency)
        finally:
            client.close()

    return max((asyncio.run(measure(items, c)), c) for items, c in zip(work, concurrencies, strict=True))


def raw_has(store, batches: Sequence[list[str]]) -> tuple[float, str]:
    """Checksums answered per second: the best of one HEAD each (at the best concurrency)
    and a LIST of every prefix the batch involves."""
    import obstore

    checksums = [c for batch in batches for c in batch]
    heads, concurrency = asyncio.run(_best(checksums, lambda c: _exists(store, c), HEAD_CONCURRENCIES))

    async def listed(batch: list[str]) -> list[bool]:
        prefixes = sorted({c[:2] for c in batch})
        names = set()
        for chunk in await asyncio.gather(*(obstore.list(store, prefix=p + "/").collect_async() for p in prefixes)):
            names.update(entry["path"].rsplit("/", 1)[-1] for entry in chunk)
        return [c in names for c in batch]

    seconds = asyncio.run(bounded(batches, listed, 1))
    lists = len(checksums) / seconds
    if lists > heads:
        return lists, "LIST of the prefixes involved"
    return heads, f"HEAD each, concurrency {concurrency}"


async def _exists(store, checksum: str) -> bool:
    import obstore
    from obstore.exceptions import NotFoundError

    try:
        await obstore.head_async(store, key(checksum))
    except (NotFoundError, FileNotFoundError):
        return False
    return True


# ------------------------------------------------------------ server side
class S3HashServer(HashServer):
    """``hashserver s3://BUCKET --s3-endpoint URL --cache-dir DIR``, credentials from the
    standard environment."""

    name = "hashserver-s3"

    def __init__(self, workdir: str, url: str, endpoint: str, cache_dir: str, env: dict, workers: int,
                 cache_size: str = "10G"):
        super().__init__(workdir, url, "prefix", workers, writable=True)
        self.extra = ["--s3-endpoint", endpoint, "--cache-dir", cache_dir, "--cache-size", cache_size]
        self.env = env

    def make_process(self):
        process = super().make_process()
        process.argv += self.extra
        process.env.update(self.env)
        return process


def http_all(port: int, method: str, items: Sequence[tuple[str, bytes | None]], concurrency: int,
             expect: int = 200) -> tuple[float, list[str]]:
    """Each (path, body) once, over ``concurrency`` keep-alive connections; (seconds, problems)."""
    queue = iter(items)
    problems: list[str] = []

    def connection() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        try:
            for path, body in queue:
                problem = exchange(conn, method, path, body, expect)
                if problem:
                    problems.append(problem)
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(connection) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - started, problems


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
             expect: int = 200) -> str | None:
    """One request on a keep-alive connection, its whole answer read; a problem if
    its status is not ``expect``."""
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    return None if response.status == expect else f"{method} {path[:20]}...: {response.status}"


def timed_request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
                  problems: Callable[[str, list[str]], None], where: str) -> float:
    """Seconds of one request on a keep-alive connection, its whole answer read."""
    started = time.perf_counter()
    problem = exchange(conn, method, path, body)
    seconds = time.perf_counter() - started
    if problem:
        problems(where, [problem])
    return seconds


def index_gauges(port: int) -> tuple[float, float]:
    """(entries, generation) of a server's index, from its /metrics."""
    text = request(port, "GET", "/metrics").body.decode()
    values = dict(line.split(" ", 1) for line in text.splitlines()
                  if line.startswith(("hashserver_index_entries ", "hashserver_index_generation ")))
    return float(values.get("hashserver_index_entries", 0)), float(values.get("hashserver_index_generation", 0))


def tier_reads(port: int) -> float:
    """Reads of the local tier a server counted (hits and misses), from its /metrics."""
    text = request(port, "GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("hashserver_local_tier_requests_total{"))


def wait_for_index(port: int, entries: int) -> list[str]:
    """Until the server's index holds ``entries`` and published no generation for
    :data:`INDEX_QUIET` seconds (bounded by :data:`INDEX_WAIT`); a problem if not."""
    deadline = time.monotonic() + INDEX_WAIT
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        held, generation = index_gauges(port)
        if generation != last:
            last, since = generation, time.monotonic()
        elif held >= entries and time.monotonic() - since >= INDEX_QUIET:
            return []
        time.sleep(0.25)
    return [f"the local tier's index did not settle within {INDEX_WAIT:g} s (hits measured while it changed)"]


# ------------------------------------------------------------------ the run
class S3Bench:
    """One run: SeaweedFS, the bucket, the raw client's ceilings, the servers' figures."""

    def __init__(self, options: S3Options, generator: LoadGenerator, workdir: str):
        self.o = options
        self.generator = generator
        self.workdir = workdir
        self.weed = seaweedfs_module()
        self.seaweedfs = None
        self.store = None
        self.dataset: Dataset | None = None
        self.raw: dict[str, tuple[float, str]] = {}
        self.lean_raw: dict[str, tuple[float, str]] = {}
        self.no_tier: dict[str, tuple[float, str]] = {}
        self.verified_raw: dict[str, tuple[float, str, float]] = {}
        self.fresh: dict[str, dict[str, bytes]] = {}
        self.has_batches: list[list[str]] = []
        # The small misses and PUTs: the server's best of these connection counts, as the raw
        # client's of its concurrencies (the object store's cost per call falls as they rise).
        self.connections = sorted({options.connections, max(RAW_CONCURRENCIES)})
        self.server_detail: dict[str, str] = {}
        self.file_creation_us: float | None = None
        self.large_write_ms: float | None = None
        self.large_write_buffered_ms: float | None = None
        self.found: list[str] = []  # problems of the measurements

    # ------------------------------------------------------------ prepare
    def prepare(self) -> None:
        o = self.o
        self.dataset = ensure_dataset(o.cache_dir, DatasetSpec(o.buffers, "prefix", 1024, o.large_size, o.seed))
        self.seaweedfs = self.weed.SeaweedFS(os.path.join(self.workdir, "seaweedfs")).start()
        self.store = self.seaweedfs.s3_store(self.seaweedfs.create_bucket(BUCKET))
        say(f"bench.s3: SeaweedFS on {self.seaweedfs.s3_endpoint}; uploading {self.dataset.directory}")
        upload_directory(self.store, self.dataset.directory)
        asyncio.run(upload(self.store, {PREFIX_MARKER: b""}))
        small = int(max(1.0, o.duration) * SMALL_RATE * FRESH_MARGIN)
        self.fresh = {
            "miss_large": fresh_bodies(o.large_count, o.large_size, o.seed, 0x5302),
            "has_present": fresh_bodies(12 * HAS_SIZE // 2, 1024, o.seed, 0x5303),
            "put_large": fresh_bodies(o.large_count, o.large_size, o.seed, 0x5305),
            "miss_large_sha256": fresh_bodies(o.large_count, o.large_size, o.seed, 0x5306, sha256_hex),
            "put_large_sha256": fresh_bodies(o.large_count, o.large_size, o.seed, 0x5307, sha256_hex),
        }
        warm = LARGE_WARM_UP * o.workers + 1  # the last for the raw client
        self.fresh.update({
            "warm miss_large": fresh_bodies(warm, o.large_size, o.seed, 0x5702),
            "warm put_large": fresh_bodies(warm, o.large_size, o.seed, 0x5705),
            "warm miss_large_sha256": fresh_bodies(warm, o.large_size, o.seed, 0x5706, sha256_hex),
            "warm put_large_sha256": fresh_bodies(warm, o.large_size, o.seed, 0x5707, sha256_hex),
        })
        for n, connections in enumerate(self.connections):  # a fresh set for each round
            for tier, stream in (("", 0x5301), (NO_TIER, 0x5381)):
                self.fresh[f"miss_small{tier} {connections}"] = fresh_bodies(small, 1024, o.seed, stream + 0x10 * n)
                self.fresh[f"put_small{tier} {connections}"] = fresh_bodies(small, 1024, o.seed, stream + 3 + 0x10 * n)
        for name in ("miss_large", "warm miss_large", "has_present"):  # the small misses' sets: each before its round
            asyncio.run(upload(self.store, {key(c): b for c, b in self.fresh[name].items()}))
        for name in ("miss_large_sha256", "warm miss_large_sha256"):
            asyncio.run(upload(self.store, {key(c, SHA256_PREFIX): b for c, b in self.fresh[name].items()}))
        absent = iter(random_checksums(len(self.fresh["has_present"]), o.seed + 0x53))
        present = list(self.fresh["has_present"])
        for i in range(0, len(present), HAS_SIZE // 2):
            batch = present[i:i + HAS_SIZE // 2] + [next(absent) for _ in range(HAS_SIZE // 2)]
            random.Random(i).shuffle(batch)
            self.has_batches.append(batch)

    # ------------------------------------------------------------ ceilings
    def ceiling(self, name: str) -> None:
        """The raw client's figure for case ``name``, measured right before the server's, so that
        both see the same machine (it is shared, and its load moves)."""
        o = self.o
        if name == "miss_get_small":
            from hashserver.objectstore import SMALL_GET

            keys = [key(c) for c in self.dataset.checksums()]
            rate, best = raw_get_first(self.store, keys, RAW_CONCURRENCIES, SMALL_GET)
            how = f"GET of a range (the first {SMALL_GET >> 10} KiB), concurrency {best}"
            self.lean_ceiling(name, [keys] * len(RAW_CONCURRENCIES),
                              lambda client, k: client.get_range(k, 0, SMALL_GET))
        elif name == "remote_has_1000":
            rate, how = raw_has(self.store, self.has_batches)
        elif name == "put_small":
            sets = [fresh_bodies(2000, 1024, o.seed, 0x5400 + n) for n in range(len(RAW_CONCURRENCIES))]
            rate, how = raw_put(self.store, sets, RAW_CONCURRENCIES)
            lean_sets = [list(fresh_bodies(2000, 1024, o.seed, 0x5600 + n).items()) for n in range(len(sets))]
            self.lean_ceiling(name, lean_sets, lambda client, kv: client.put_if_absent(
                key(kv[0]), kv[1], hashlib.sha256(kv[1]).hexdigest()))
        else:
            raise ValueError(f"{name}: measured by pairs (large_pairs), not here")
        self.raw[name] = (rate, how if isinstance(how, str) else f"concurrency {how}")
        say(f"bench.s3: [raw] {CASES_S3[name].label}: {rate:,.1f} {CASES_S3[name].unit} ({self.raw[name][1]})")

    def lean_ceiling(self, name: str, work: list, call) -> None:
        from hashserver.s3lean import LeanClient
        from hashserver.s3uploads import Signer

        signer = Signer.from_settings(BUCKET, self.seaweedfs.s3_endpoint, {
            "access_key_id": self.weed.ACCESS_KEY, "secret_access_key": self.weed.SECRET_KEY})
        rate, best = raw_lean(LeanClient(signer, BUCKET), work, call, RAW_CONCURRENCIES)
        self.lean_raw[name] = (rate, f"concurrency {best}")
        say(f"bench.s3: [raw, lean client] {CASES_S3[name].label}: {rate:,.1f} {CASES_S3[name].unit}")

    # ------------------------------------------------------------ servers
    def s3_server(self, sha256: bool = False, tier: bool = True) -> S3HashServer:
        """The server on the bucket; ``sha256``: on its SHA-256 prefix, with --hash-algorithm sha-256;
        not ``tier``: with --cache-size 0."""
        env = self.seaweedfs.s3_env()
        if not sha256:
            return S3HashServer(self.workdir, f"s3://{BUCKET}", self.seaweedfs.s3_endpoint,
                                os.path.join(self.workdir, "local-tier"), env, self.o.workers,
                                cache_size="10G" if tier else "0")
        server = S3HashServer(self.workdir, f"s3://{BUCKET}/{SHA256_PREFIX.rstrip('/')}", self.seaweedfs.s3_endpoint,
                              os.path.join(self.workdir, "local-tier-sha256"), env, self.o.workers)
        server.extra += ["--hash-algorithm", "sha-256"]
        return server

    def hits(self, server: HashServer, directory: HashServer) -> tuple[dict[str, float], dict[str, float]]:
        """The local-tier cases, on the s3 server and then on the directory server, case by
        case, after the warm-up: one read of every buffer through each (which fills the tier),
        the wait for the tier's index to take in what it gained (:func:`wait_for_index`), and
        a second read of every buffer (what a worker held while the tier's directories were
        changing is proven again under the settled index, once)."""
        d = self.dataset
        warm = [("/" + c, None) for c in [*d.checksums(), d.large_checksum]]
        for tag, each in (("s3", server), ("directory", directory)):
            _, problems = http_all(each.port, "GET", warm, 8)
            self.problems(f"{tag} warm-up", problems)
        self.problems("s3 warm-up", wait_for_index(server.port, len(warm)))
        for tag, each in (("s3", server), ("directory", directory)):  # held again, under the settled index
            _, problems = http_all(each.port, "GET", warm, 8)
            self.problems(f"{tag} second warm-up", problems)
        scenarios = {
            "hit_get_small": Scenario("hit_get_small", "GET", d.checksums_file, connections=self.o.connections),
            "hit_get_large": write_scenario(self.workdir, "hit-large", "GET", [d.large_checksum], connections=4),
            "hit_has_1000": self._has_scenario(d.checksums()),
        }
        values, ceilings = {}, {}
        for name, scenario in scenarios.items():
            for _ in range(HIT_ROUNDS):
                values[name] = max(values.get(name, 0.0), self.load(name, scenario, server.port, "s3"))
                ceilings[name] = max(ceilings.get(name, 0.0), self.load(name, scenario, directory.port, "directory"))
        return values, ceilings

    def _has_scenario(self, present: list[str]) -> Scenario:
        rng = random.Random(self.o.seed)
        bodies = [json.dumps(rng.sample(present, HAS_SIZE)).encode() for _ in range(16)]
        return write_scenario(self.workdir, "hit-has", "POST", ["has"] * len(bodies), bodies=bodies,
                              random_order=False, connections=self.o.connections)

    def misses_and_puts(self, server: HashServer) -> dict[str, float]:
        """Each case right after its raw ceiling; /has first, in a bucket of the dataset and
        its own objects (the small misses' objects are uploaded after it: listings, which
        /has uses, cost more as the bucket's directories fill)."""
        cases = {
            "remote_has_1000": lambda: self.counted(
                "remote_has_1000", server.port, "POST", [("/has", json.dumps(b).encode()) for b in self.has_batches],
                4),
            "miss_get_small": lambda: self.with_connections("miss_get_small", "GET", "miss_small", server.port),
            "miss_get_large": lambda: self.large_pairs("miss_get_large", server.port),
            "put_small": lambda: self.with_connections("put_small", "PUT", "put_small", server.port),
            "put_large": lambda: self.large_pairs("put_large", server.port),
        }
        values = {}
        self.file_creation_us = file_creation_cost(self.workdir)
        say(f"bench.s3: creating a file beside the tier: {self.file_creation_us:,.0f} us of CPU")
        self.large_write_ms, self.large_write_buffered_ms = large_write_cost(self.workdir, self.o.large_size)
        say(f"bench.s3: writing a large buffer into a file beside the tier: {self.large_write_ms:,.1f} ms of CPU "
            f"({self.large_write_buffered_ms:,.1f} through the page cache)")
        for name, measure in cases.items():
            if name == "miss_get_small":
                self.upload_small_misses("")
            if name not in PAIRED:
                self.ceiling(name)
            values[name] = measure()
        return values

    def upload_small_misses(self, tier: str) -> None:
        for connections in self.connections:
            objects = self.fresh[f"miss_small{tier} {connections}"]
            asyncio.run(upload(self.store, {key(c): b for c, b in objects.items()}))

    def without_tier(self, server: HashServer) -> None:
        """The small misses and PUTs once more, through ``server`` with no local tier
        (which reads none: its metrics say so, once they were folded)."""
        self.upload_small_misses(NO_TIER)
        for name, method, fresh in (("miss_get_small", "GET", "miss_small"), ("put_small", "PUT", "put_small")):
            value, connections = self.best_of_connections(name, method, fresh + NO_TIER, server.port, "s3, no tier")
            self.no_tier[name] = (value, f"{connections} connections")
        time.sleep(METRICS_FOLDED)
        if reads := tier_reads(server.port):
            self.problems("s3, no tier", [f"the server without a local tier counted {reads:,.0f} reads of one"])

    def sha256_cases(self, server: HashServer) -> dict[str, float]:
        return {name: self.large_pairs(name, server.port) for name in ("miss_get_large_sha256", "put_large_sha256")}

    def with_connections(self, name: str, method: str, fresh: str, port: int) -> float:
        """:meth:`best_of_connections`, the count that gave it noted for the table."""
        value, connections = self.best_of_connections(name, method, fresh, port, "s3")
        self.server_detail[name] = f"{connections} connections"
        return value

    def best_of_connections(self, name: str, method: str, fresh: str, port: int, tag: str) -> tuple[float, int]:
        """The server's best over :attr:`connections`, each round on its own fresh objects:
        (value, connections)."""
        rounds = []
        for connections in self.connections:
            bodies = self.fresh[f"{fresh} {connections}"]
            scenario = write_scenario(self.workdir, f"{fresh.replace(' ', '-')}-{connections}", method, list(bodies),
                                      bodies=list(bodies.values()) if method == "PUT" else None,
                                      random_order=False, connections=connections)
            rounds.append((self.load(name, scenario, port, tag, fresh=len(bodies)), connections))
        return max(rounds)

    # ------------------------------------------------------------ measuring
    def load(self, name: str, scenario: Scenario, port: int, tag: str, fresh: int | None = None) -> float:
        """A duration-bound case through the load generator; with ``fresh``, how many of its
        targets are new (a run that used more measured some twice)."""
        case = CASES_S3[name]
        result = self.generator.run(scenario, port, self.o.duration)
        self.problems(f"{tag} {name}", result.problems(True))
        if fresh is not None and result.requests > fresh:
            self.problems(f"{tag} {name}", [f"{result.requests} requests for {fresh} fresh targets"])
        value = result.rate * (self.o.large_size / 1e6 if case.payload else case.per_request)
        say(f"bench.s3: [{tag}] {case.label}: {value:,.1f} {case.unit}")
        return value

    def counted(self, name: str, port: int, method: str, items: list, concurrency: int) -> float:
        """A case of a fixed set of requests, each made once (large bodies, fresh /has batches)."""
        case = CASES_S3[name]
        seconds, problems = http_all(port, method, items, concurrency)
        self.problems(f"s3 {name}", problems[:5])
        value = len(items) / seconds * (self.o.large_size / 1e6 if case.payload else case.per_request)
        say(f"bench.s3: [s3] {case.label}: {value:,.1f} {case.unit}")
        return value

    def large_pairs(self, name: str, port: int) -> float:
        """A large case by pairs, object after object (see the module's docstring): the raw
        client's calls (a PUT's both ways, one PUT and in parts, its ceiling the faster; and
        the least work), then the server's; each figure is the size over the median of its times.  Both
        sides so meet the machine in the same state: its load drifts over seconds, and a
        case measured as ten raw calls and then ten of the server's put the SHA-256 miss at
        0.49-0.76 of the raw GET over five runs.  Before the pairs, unmeasured, the
        server's workers get LARGE_WARM_UP calls each and the raw client one."""
        o = self.o
        objects, prefix, algorithm, raw_stream = PAIRED[name]
        put = raw_stream is not None
        method = "PUT" if put else "GET"
        served = [("/" + c, b if put else None) for c, b in self.fresh[objects].items()]
        warm = [("/" + c, b if put else None) for c, b in self.fresh[f"warm {objects}"].items()]
        _, problems = http_all(port, method, warm[:LARGE_WARM_UP * o.workers], o.workers)
        self.problems(f"s3 {name} warm-up", problems[:5])
        raw = RawCalls(self.store)
        server = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        raw_bodies = list(fresh_bodies(o.large_count, o.large_size, o.seed, raw_stream).items()) if put else []
        parts_bodies = list(fresh_bodies(o.large_count + 1, o.large_size, o.seed, raw_stream + PARTS_STREAM).items()) \
            if put else []
        least_bodies = list(fresh_bodies(o.large_count + 1, o.large_size, o.seed, raw_stream + LEAST_STREAM,
                                         sha256_hex if algorithm == "sha256" else checksum_hex).items()) if put else []
        copies = tempfile.mkdtemp(prefix="raw-copies-", dir=self.workdir) if put else ""
        times: dict[str, list[float]] = {"raw": [], "raw in parts": [], "server": [], "hashed": [], "hash": []}
        try:
            warm_checksum, warm_body = warm[-1]
            if put:
                raw.put(key(warm_checksum[1:], prefix), warm_body)
                in_parts, in_parts_body = parts_bodies.pop()
                raw.put(key(in_parts, prefix), in_parts_body, in_parts=True)
                least, least_body = least_bodies.pop()
                raw.put_verified(key(least, prefix), least_body, algorithm, least, copies)
            else:
                raw.get(key(warm_checksum[1:], prefix))
            for i, (path, body) in enumerate(served):
                if put:
                    times["raw"].append(raw.put(key(raw_bodies[i][0], prefix), raw_bodies[i][1]))
                    in_parts, in_parts_body = parts_bodies[i]
                    times["raw in parts"].append(raw.put(key(in_parts, prefix), in_parts_body, in_parts=True))
                    least, least_body = least_bodies[i]
                    seconds, hashing = raw.put_verified(key(least, prefix), least_body, algorithm, least, copies)
                else:
                    times["raw"].append(raw.get(key(path[1:], prefix)))
                    seconds, hashing = raw.get_hashed(key(path[1:], prefix), algorithm)
                times["hashed"].append(seconds)
                times["hash"].append(hashing)
                times["server"].append(timed_request(server, method, path, body, self.problems, f"s3 {name}"))
        finally:
            server.close()
            raw.close()
        size = o.large_size / 1e6
        rate = {side: size / float(np.median(t)) for side, t in times.items() if t}
        how = f"concurrency 1, in turns with hashserver's ({o.large_count} each, medians)"
        if put:  # the raw client's faster way: one PUT, or an upload in parts as the server's
            one, parts = rate["raw"], rate["raw in parts"]
            self.raw[name] = (max(one, parts), f"the faster of one PUT ({one:,.0f} MB/s) and a multipart upload "
                                               f"of the server's parts ({parts:,.0f} MB/s), {how}")
        else:
            self.raw[name] = (rate["raw"], how)
        say(f"bench.s3: [raw] {CASES_S3[name].label}: {self.raw[name][0]:,.1f} MB/s ({self.raw[name][1]})")
        self.verified_raw[name] = (rate["hashed"], how, rate["hash"])
        say(f"bench.s3: [raw, {'hashed and copied' if put else 'then hashed'}] {CASES_S3[name].label}: "
            f"{rate['hashed']:,.1f} MB/s ({algorithm} alone {rate['hash']:,.0f} MB/s)")
        say(f"bench.s3: [s3] {CASES_S3[name].label}: {rate['server']:,.1f} MB/s")
        return rate["server"]

    def problems(self, where: str, found: list[str]) -> None:
        self.found += [f"{where}: {p}" for p in found]

    def stop(self) -> None:
        if self.seaweedfs is not None:
            self.seaweedfs.stop()


def file_creation_cost(parent: str, count: int = 500) -> float:
    """Microseconds of CPU (the kernel's included) per 1 KiB file created in a new directory
    under ``parent``.  On ext4 without a journal a file created near recent deletions costs
    tens of times more than elsewhere, for minutes (README): what the tier's fills pay in
    this run.  The files stay (a deletion would raise the cost it measures); the run's
    work directory goes at its end."""
    directory = tempfile.mkdtemp(prefix="file-creation-", dir=parent)
    started = time.process_time()
    for n in range(count):
        fd = os.open(os.path.join(directory, str(n)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, bytes(1024))
        finally:
            os.close(fd)
    return (time.process_time() - started) / count * 1e6


def large_write_cost(parent: str, size: int, count: int = 2) -> tuple[float, float]:
    """Milliseconds of CPU (the kernel's included) to write ``size`` bytes into a new file
    under ``parent``: as the tier writes a large fill (past the page cache where the file
    system allows, :mod:`hashserver.directwrite`), and through the page cache.  On a
    virtual machine whose host lends memory only once the guest first touches it (and
    takes back what the guest frees), new page-cache pages cost several times more than
    pages used before (README).  The files stay, as the tier's would."""
    from hashserver.directwrite import BufferPool, DirectFile

    directory = tempfile.mkdtemp(prefix="large-write-", dir=parent)
    data = os.urandom(size)
    pool = BufferPool()
    costs = []
    for direct in (True, False):
        started = time.process_time()
        for n in range(count):
            fd = os.open(os.path.join(directory, f"{direct}-{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                if direct:
                    file = DirectFile(fd, pool)
                    file.write(data)
                    file.finish()
                    file.release()
                else:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        costs.append((time.process_time() - started) / count * 1e3)
    pool.close()
    return costs[0], costs[1]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def work_parent(cache_dir: str) -> str:
    """Where a run's SeaweedFS and the server's local tier go: beside the bench's datasets,
    as a server's tier goes under ``$XDG_CACHE_HOME`` by default, not in ``/tmp``, which
    every test run fills and empties.  On ext4 without a journal each file created skips
    every inode freed nearby in the last minutes: in a new directory under that /tmp
    each cost 340 us of CPU against 12-18 us where nothing was deleted nearby (measured
    on the 2-core machine; the bench's own runs churn this directory too, see README)."""
    parent = os.path.expanduser(cache_dir)
    os.makedirs(parent, exist_ok=True)
    return parent


def run(options: S3Options) -> S3Document:
    """The whole run; every process it starts is stopped, whatever happens."""
    generator, note = choose_generator(options.client, None)
    doc = S3Document(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), sys.argv, options, load_average(),
                     generator.describe())
    if note:
        doc.problems.append(note)
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir=work_parent(options.cache_dir)) as workdir:
        bench = S3Bench(options, generator, workdir)
        try:
            bench.prepare()
            with bench.s3_server() as server:
                with HashServer(workdir, bench.dataset.directory, "prefix", options.workers) as directory:
                    values, ceilings = bench.hits(server, directory)
                values.update(bench.misses_and_puts(server))  # the directory server stopped
            with bench.s3_server(tier=False) as server:
                bench.without_tier(server)
            with bench.s3_server(sha256=True) as server:
                values.update(bench.sha256_cases(server))
        finally:
            bench.stop()
    ceilings.update({k: v for k, (v, _) in bench.raw.items()})
    doc.ceiling_detail = {k: how for k, (_, how) in bench.raw.items()}
    doc.server_detail = bench.server_detail
    doc.file_creation_us = bench.file_creation_us
    doc.large_write_ms = bench.large_write_ms
    doc.large_write_buffered_ms = bench.large_write_buffered_ms
    doc.lean_raw = bench.lean_raw
    doc.no_tier = bench.no_tier
    doc.verified_raw = bench.verified_raw
    doc.figures = {k: figure(CASES_S3[k], values[k], ceilings[k]) for k in CASES_S3}
    doc.problems += bench.found
    doc.load_average_at_end = load_average()
    return doc


def figure(case: Case, value: float, ceiling: float) -> Figure:
    fig = Figure(label=case.label, unit=case.unit, value=value, ceiling=CEILINGS[case.ceiling],
                 ceiling_value=ceiling, target=case.target)
    fig.ratio = value / ceiling if value and ceiling else None
    fig.met = fig.ratio is not None and fig.ratio >= case.target
    return fig


def table(doc: S3Document) -> str:
    """The figures in :mod:`bench.report`'s row format, then how each raw ceiling was reached."""
    o = doc.options
    header = (f"{'figure':<28} {'hashserver':>28}   {'ceiling':<40} {'ratio':>6}  {'target':<13}")
    lines = [f"hashserver on S3 (SeaweedFS), workers={o.workers}, {o.buffers:,} buffers of 1 KiB, large "
             f"{o.large_size >> 20} MiB -- load: {doc.load_generator}, {o.connections} connections, "
             f"{o.duration:g} s per case; load average at start {doc.load_average_at_start}, "
             f"at end {doc.load_average_at_end}", header, "-" * len(header)]
    lines += [_figure_row(fig) for fig in doc.figures.values()]
    lines += [f"  {CASES_S3[k].label}: ceiling by {how}"
              + (f"; hashserver's best at {doc.server_detail[k]}" if k in doc.server_detail else "")
              for k, how in doc.ceiling_detail.items()]
    lines.append(f"  large cases: {o.large_count} fresh objects each, one at a time, the raw client's call and "
                 f"hashserver's in turns, each figure the size over the median time; after {LARGE_WARM_UP} unmeasured "
                 f"per worker of the server (over {o.workers} connections) and one of each of the raw client's calls")
    for k, (rate, how) in doc.lean_raw.items():
        fig = doc.figures.get(k)
        against = f", hashserver {_ratio(fig.value / rate)} of it" if fig is not None and fig.value and rate else ""
        lines.append(f"  {CASES_S3[k].label}: hashserver's own lean S3 client alone (which the server's calls of this "
                     f"case use): {rate:,.0f} {CASES_S3[k].unit} at {how}{against}")
    for k, (rate, how) in doc.no_tier.items():
        fig = doc.figures.get(k)
        against = f", {_ratio(rate / fig.ceiling_value)} of its ceiling" if fig and fig.ceiling_value else ""
        lines.append(f"  {CASES_S3[k].label}: hashserver with no local tier (--cache-size 0), each miss or PUT then "
                     f"writing no file: {rate:,.0f} {CASES_S3[k].unit} at {how}{against}")
    for k, (rate, how, hashing) in doc.verified_raw.items():
        fig = doc.figures.get(k)
        against = f", hashserver {_ratio(fig.value / rate)} of it" if fig is not None and fig.value and rate else ""
        lines.append(f"  {CASES_S3[k].label}: {LEAST_WORK[PAIRED[k][3] is not None]}: {rate:,.0f} MB/s at "
                     f"{how}{against}; the hash alone {hashing:,.0f} MB/s")
    if doc.file_creation_us is not None:
        lines.append(f"  creating a 1 KiB file beside the tier, before the misses: "
                     f"{doc.file_creation_us:,.0f} us of CPU (each small miss and PUT creates one in the tier)")
    if doc.large_write_ms is not None:
        lines.append(f"  writing a large buffer into a new file beside the tier, before the misses: "
                     f"{doc.large_write_ms:,.1f} ms of CPU as the tier writes it, past the page cache "
                     f"({doc.large_write_buffered_ms:,.1f} ms through it; each large miss and PUT writes one)")
    worst = min((f.ratio for f in doc.figures.values() if f.ratio is not None), default=None)
    lines.append(f"lowest ratio {_ratio(worst)}")
    lines += [f"problem: {p}" for p in doc.problems]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n\n")[0])
    p.add_argument("--buffers", type=int, default=S3Options.buffers, help="small buffers (default %(default)s)")
    p.add_argument("--large-mib", type=int, default=S3Options.large_size >> 20,
                   help="size of each large buffer in MiB (default %(default)s)")
    p.add_argument("--large-count", type=int, default=S3Options.large_count,
                   help="fresh large objects per large case (default %(default)s)")
    p.add_argument("--workers", type=int, default=S3Options.workers, help="Sanic workers (default %(default)s)")
    p.add_argument("--duration", type=float, default=S3Options.duration,
                   help="seconds per load-generator case (default %(default)s)")
    p.add_argument("--connections", type=int, default=S3Options.connections)
    p.add_argument("--cache-dir", default=S3Options.cache_dir, help="where bench datasets are kept")
    p.add_argument("--out", default=S3Options.out, help="where bench-s3.json and table-s3.txt go")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--seed", type=int, default=S3Options.seed)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1,000 buffers, 4 MiB, 1 s per case")
    return p


QUICK = {"buffers": 1000, "large_size": 4 << 20, "large_count": 3, "duration": 1.0}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.s3``."""
    args = build_parser().parse_args(argv)
    options = S3Options(args.buffers, args.large_mib << 20, args.large_count, args.workers, args.duration,
                        args.connections, args.cache_dir, args.out, args.seed, args.client)
    if args.quick:
        options = replace(options, **QUICK)
    return run_and_report(options)


def main_from_bench(args: argparse.Namespace) -> int:
    """``python -m bench --store s3``: the suite's options that mean the same here (the first
    of --buffers and --workers; its default output directory gets an ``-s3`` suffix)."""
    options = replace(S3Options(), **QUICK) if args.quick else S3Options()
    given = {"buffers": args.buffers[0] if args.buffers else None,
             "workers": args.workers[0] if args.workers else None,
             "large_size": args.large_mib << 20 if args.large_mib else None, "duration": args.duration}
    options = replace(options, **{k: v for k, v in given.items() if v is not None},
                      connections=args.connections, cache_dir=args.cache_dir, out=args.out + "-s3",
                      seed=args.seed, client=args.client)
    return run_and_report(options)


def run_and_report(options: S3Options) -> int:
    """Run, write table-s3.txt and bench-s3.json, print the table; 1 if anything went wrong."""
    try:
        doc = run(options)
    except KeyboardInterrupt:
        say("bench.s3: interrupted")
        return 130
    os.makedirs(options.out, exist_ok=True)
    text = table(doc)
    with open(os.path.join(options.out, "table-s3.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(options.out, "bench-s3.json"), "w") as f:
        json.dump(asdict(doc), f, indent=1)
    sys.stdout.write(text)
    return 1 if doc.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
