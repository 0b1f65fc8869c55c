"""``python -m bench --soak MINUTES``: a long mixed load with every answer checked.

Two writable hashservers (2 workers each) share one temporary directory, as
two hosts share a buffer directory.  One client process runs asyncio tasks,
each with a keep-alive connection to each server, sending GET, HEAD, PUT
(plain, zstd and gzip bodies), ``/has``, ``/has-now``, ``/buffer-length`` and
promises, and cutting about one upload in ten mid-body (raw socket closed).
One process suffices: unpaced (16 tasks, ``--soak-rate 5000``) on a shared
2-core machine, the two servers answered about 520 operations/s (700 requests/s)
while the client used 15 % of one core, so the servers, not the client, are the
limit.  The load is paced (``--soak-rate``, default 100 operations/s, one
operation being one pick from :data:`MIX`: a promise is six requests, most are
one; a soak looks for drift over time, not for the ceiling), and the report
gives the client's CPU share so that a saturated client would show.

Every answer is checked against what the client knows (the :class:`Ledger`):
a buffer whose PUT got 200 is present on both servers with its bytes and
length; a cut upload's buffer is never there at all; a promised buffer counts
for ``/has`` and ``/buffer-length`` (as 1) but not ``/has-now``, and a GET
waiting on it gets the bytes once they are PUT.  Wrong answers are counted by
kind (:data:`KINDS`: zero expected for each).  After the load, every
acknowledged buffer is looked up on both servers and the directory is scanned
for leftovers and for files that do not hold their checksum's content.

Meanwhile the memory (RSS and anonymous) and open file descriptors of every
server process are read from /proc.  **Flat** means: for every process that
lived through the run, the last minute's memory is within
``FLAT_MEMORY_FRACTION`` (10 %) or ``FLAT_MEMORY_MIB`` (16 MiB), whichever is
larger, of its reading at the end of the first minute (once connections are
open and the code warm), and its descriptors within ``FLAT_FDS`` (16: the
client's connections may move between workers) of it.  A worker may grow
by more: by what its content cache may have taken in meanwhile, by design
(``hashserver.contentcache``: small plain buffers it served, up to
``CACHE_BYTES``).  The client counts, per server, the bytes (plus the cache's
per-entry overhead) of the distinct small plain buffers that server answered
with 200 after the first minute, and allows each of its workers that much
more: an upper bound, since each worker serves only part of them.

Outputs: a table on stdout, the report as JSON (``--soak-report``); the exit
status is 1 if any answer was wrong, else 0.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from hashserver.checksum import Hasher
from hashserver.compression import BY_SUFFIX, InvalidPayload, decode, for_content_encoding, zstd
from hashserver.contentcache import CACHE_BYTES, ENTRY_OVERHEAD
from hashserver.layout import PREFIX_MARKER, SIDECAR_SUFFIX, is_buffer_name
from hashserver.reader import SMALL_BUFFER
from hashserver.testing import stop_all

from .machine import load_average
from .procfs import measure_tree
from .servers import HOST, HashServer

MIB = 1 << 20
REQUEST_TIMEOUT = 90.0  # above the servers' --wait-timeout (30 s): a bound against hangs only
SAMPLE_EVERY = 5.0  # seconds between /proc readings
FLAT_MEMORY_FRACTION = 0.10
FLAT_MEMORY_MIB = 16.0
FLAT_FDS = 16
FINAL_GETS = 2000  # acknowledged buffers fetched from each server after the load (a random sample)
BATCH = 1000  # checksums per /has request of the final check
HASHER = Hasher("sha3-256")

# Operations sent, with their weights in the mix; "cut" is an upload closed mid-body.
MIX = {"get": 20, "head": 8, "has": 8, "has_now": 5, "buffer_length": 6,
       "put": 10, "put_zstd": 3, "put_gzip": 2, "cut": 2, "promise": 2}
TIMED = ["get", "head", "put", "put_zstd", "put_gzip", "has", "has_now", "buffer_length", "promise"]
KINDS = [
    "get_wrong_bytes",       # 200 whose (decoded) body does not hash to the checksum, or has the wrong length
    "get_missing",           # an acknowledged buffer answered 404 (or another non-200)
    "get_cut_present",       # a cut upload's buffer answered 200
    "get_absent_status",     # a cut or never-written buffer answered other than 404
    "head_wrong",            # HEAD status or Content-Length not what GET should give
    "has_wrong", "has_now_wrong", "buffer_length_wrong",  # an element of a batch answer is wrong
    "batch_status",          # a batch route answered other than 200 with a JSON list of the right size
    "put_status",            # a complete PUT answered other than 200
    "promise_status",        # PUT /promise answered other than 202
    "promise_get",           # a GET waiting on a promise did not get the bytes once they were PUT
    "transport",             # connection refused, reset or timed out
    "final_missing",         # after the load, an acknowledged buffer absent or wrong on a server
    "disk_wrong",            # after the load, a file under a checksum name not holding that content
    "disk_cut_present",      # after the load, a file of a cut upload
    "leftover",              # after the load, a lock, temporary or promise file
]


class State(Enum):
    PRESENT = "present"    # its PUT got 200
    ABSENT = "absent"      # never sent
    CUT = "cut"            # only part of its body was ever sent
    PROMISED = "promised"  # promised, not yet PUT


# ------------------------------------------------------------------ the client's knowledge
@dataclass
class Ledger:
    """What the client knows was stored: acknowledged buffers with their lengths,
    cut uploads, and checksums never sent."""

    stored: dict[str, int] = field(default_factory=dict)
    compressed: set[str] = field(default_factory=set)  # stored from a zstd or gzip body
    stored_list: list[str] = field(default_factory=list)  # for uniform random picks
    cut: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def acknowledge(self, checksum: str, length: int, encoding: str = "") -> None:
        if checksum not in self.stored:
            self.stored[checksum] = length
            self.stored_list.append(checksum)
            if encoding:
                self.compressed.add(checksum)

    def cacheable(self, checksum: str) -> bool:
        """Would a worker keep this buffer in its content cache once it served it?"""
        return checksum not in self.compressed and self.stored.get(checksum, SMALL_BUFFER + 1) <= SMALL_BUFFER

    def pick(self, rng: random.Random) -> tuple[str, State, int]:
        """A checksum to read: mostly acknowledged ones, some cut and never-sent ones."""
        roll = rng.random()
        if self.cut and roll < 0.1:
            return rng.choice(self.cut), State.CUT, 0
        if not self.stored_list or roll < 0.2:
            if not self.absent or rng.random() < 0.1:
                self.absent.append(rng.randbytes(32).hex())
            return rng.choice(self.absent), State.ABSENT, 0
        checksum = rng.choice(self.stored_list)
        return checksum, State.PRESENT, self.stored[checksum]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def expected(route: str, state: State, length: int) -> bool | int:
    """What ``/has``, ``/has-now`` or ``/buffer-length`` must say of one checksum."""
    if route == "has":
        return state in (State.PRESENT, State.PROMISED)
    if route == "has_now":
        return state is State.PRESENT
    return length if state is State.PRESENT else 1 if state is State.PROMISED else 0


def decoded(reply: Reply) -> bytes | None:
    """A GET's body with its Content-Encoding undone (None: it does not decode)."""
    try:
        encoding = for_content_encoding(reply.headers.get("content-encoding"))
        if encoding is None:
            return reply.body
        return decode(encoding, reply.body)
    except InvalidPayload:
        return None


class Checker:
    """Counts wrong answers by kind, with a few examples of each."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter({kind: 0 for kind in KINDS})
        self.examples: dict[str, list[str]] = defaultdict(list)

    def wrong(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples[kind]) < self.EXAMPLES:
            self.examples[kind].append(detail)

    @property
    def total(self) -> int:
        return sum(self.errors.values())

    def get(self, server: str, checksum: str, state: State, length: int, reply: Reply,
            kind: str | None = None) -> None:
        """A GET of a buffer in ``state``; ``kind``, if given, counts every wrong answer."""
        wrong = self.wrong if kind is None else lambda _, detail: self.wrong(kind, detail)
        where = f"{server} GET {checksum[:12]}… ({state.value})"
        if state is State.PRESENT:
            if reply.status != 200:
                wrong("get_missing", f"{where}: {reply.status} {reply.body[:120]!r}")
                return
            body = decoded(reply)
            if body is None or len(body) != length or HASHER.digest(body).hex() != checksum:
                wrong("get_wrong_bytes", f"{where}: {len(reply.body)} bytes "
                      f"({reply.headers.get('content-encoding', 'plain')}), expected {length}")
        elif reply.status == 200:
            wrong("get_cut_present" if state is State.CUT else "get_absent_status",
                  f"{where}: 200 with {len(reply.body)} bytes")
        elif reply.status != 404:
            wrong("get_absent_status", f"{where}: {reply.status} {reply.body[:120]!r}")

    def head(self, server: str, checksum: str, state: State, length: int, reply: Reply) -> None:
        """HEAD: the status GET gives, and for a plain answer the buffer's length."""
        want = 200 if state is State.PRESENT else 404
        size = reply.headers.get("content-length")
        plain = "content-encoding" not in reply.headers
        if reply.status != want or (want == 200 and plain and size != str(length)):
            self.wrong("head_wrong", f"{server} HEAD {checksum[:12]}… ({state.value}): "
                       f"{reply.status}, Content-Length {size}, expected {want} and {length}")

    def batch(self, server: str, route: str, items: list[tuple[str, State, int]], reply: Reply,
              kind: str | None = None) -> None:
        """One /has, /has-now or /buffer-length answer, element by element; ``kind``,
        if given, counts every wrong answer."""
        try:
            answer = json.loads(reply.body) if reply.status == 200 else None
        except ValueError:
            answer = None
        if not isinstance(answer, list) or len(answer) != len(items):
            self.wrong(kind or "batch_status", f"{server} {route} of {len(items)}: {reply.status} {reply.body[:120]!r}")
            return
        for (checksum, state, length), got in zip(items, answer, strict=True):
            want = expected(route, state, length)
            if got != want or type(got) is not type(want):
                self.wrong(kind or f"{route}_wrong", f"{server} {route} {checksum[:12]}… ({state.value}): "
                           f"{got!r}, expected {want!r}")

    def status(self, kind: str, what: str, reply: Reply, want: int) -> bool:
        if reply.status != want:
            self.wrong(kind, f"{what}: {reply.status} {reply.body[:120]!r}, expected {want}")
            return False
        return True


# ------------------------------------------------------------------ HTTP over keep-alive
class Connection:
    """One keep-alive HTTP/1.1 connection to one server, reopened when the server closed it."""

    def __init__(self, port: int, reopened: Counter[str] | None = None):
        self.port = port
        self.reopened = reopened if reopened is not None else Counter()  # by exception name, for the report
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> Reply:
        """Send one request; a connection the server closed while idle is reopened once
        (as HTTP clients do), any other failure raises OSError."""
        reused = self.writer is not None
        try:
            return await asyncio.wait_for(self._exchange(method, path, body, headers), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            self.close()
            if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                self.reopened[type(exc).__name__] += 1
                return await asyncio.wait_for(self._exchange(method, path, body, headers), REQUEST_TIMEOUT)
            raise OSError(f"{method} {path[:20]}: {type(exc).__name__} {exc}") from exc

    async def _exchange(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        reply = await read_reply(self.reader, method == "HEAD")
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def read_reply(reader: asyncio.StreamReader, head_only: bool) -> Reply:
    """One response: status, headers, and a Content-Length or chunked body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if head_only or status in (204, 304):
        return Reply(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return Reply(status, headers, b"".join(chunks))
    return Reply(status, headers, await reader.readexactly(int(headers.get("content-length", "0"))))


async def cut_upload(port: int, checksum: str, body: bytes, rng: random.Random) -> None:
    """A PUT that announces the whole body, sends part of it and closes the socket."""
    _, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"PUT /{checksum} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body[:rng.randrange(0, len(body))])
        await writer.drain()
        await asyncio.sleep(rng.random() * 0.2)
    finally:
        writer.close()


# ------------------------------------------------------------------ measurements over time
class Latencies:
    """Seconds per request, by minute of the run and operation."""

    def __init__(self, started: float, minutes: float):
        self.started = started
        self.last = max(1, math.ceil(minutes))
        self.samples: dict[tuple[int, str], list[float]] = defaultdict(list)

    def minute(self, at: float) -> int:
        """1 for the first minute; the last for an operation's request sent after the
        end (the PUT of a promise made just before it)."""
        return min(self.last, int((at - self.started) // 60) + 1)

    def add(self, op: str, began: float, ended: float) -> None:
        self.samples[(self.minute(began), op)].append(ended - began)

    def rows(self) -> list[dict]:
        out = []
        for (minute, op), values in sorted(self.samples.items()):
            values.sort()
            out.append({"minute": minute, "op": op, "count": len(values),
                        "p50_ms": round(_percentile(values, 0.50) * 1000, 2),
                        "p99_ms": round(_percentile(values, 0.99) * 1000, 2)})
        return out


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None


class ProcessSampler:
    """Memory and open descriptors of every process of every server, read from /proc;
    per minute, the last reading of that minute."""

    def __init__(self, servers: dict[str, HashServer], clock: Latencies):
        self.servers = servers
        self.clock = clock
        self.readings: dict[tuple[str, int], dict] = {}  # (server, pid) -> role, minutes
        self.load: dict[int, list[float]] = {}  # the machine's load average, by minute

    def sample(self) -> None:
        minute = self.clock.minute(time.monotonic())
        self.load[minute] = load_average()
        for name, server in self.servers.items():
            for memory in measure_tree(server.pid, server.worker_pids()):
                fds = open_fds(memory.pid)
                if fds is None:
                    continue
                entry = self.readings.setdefault((name, memory.pid), {"role": memory.role, "minutes": {}})
                entry["minutes"][minute] = {"minute": minute, "rss_mib": round(memory.rss / MIB, 1),
                                            "anon_mib": round((memory.anon or 0) / MIB, 1), "fds": fds}

    def load_rows(self, last_minute: int) -> list[dict]:
        return [{"minute": m, "load_average": self.load[m]} for m in sorted(self.load) if m <= last_minute]

    def report(self, last_minute: int, cache_mib: dict[str, float]) -> list[dict]:
        """Per process, its readings by minute and its verdict; ``cache_mib``: by server,
        what each of its workers may have added to its content cache after the first minute."""
        out = []
        for (name, pid), entry in sorted(self.readings.items()):
            minutes = [entry["minutes"][m] for m in sorted(entry["minutes"]) if m <= last_minute]
            cache = cache_mib[name] if entry["role"] == "worker" else 0.0
            out.append({"server": name, "pid": pid, "role": entry["role"], "minutes": minutes,
                        "flat": flat_verdict(minutes, last_minute, cache)})
        return out


def flat_verdict(minutes: list[dict], last_minute: int, cache_mib: float = 0.0) -> dict:
    """Whether the readings stayed flat: last minute against the end of the first
    (see the module's docstring), memory allowed to grow by ``cache_mib`` more (a
    worker's content cache filling).  ``flat`` is None for a process that did not
    live through the whole run (a replaced worker, say)."""
    if not minutes or minutes[0]["minute"] != 1 or minutes[-1]["minute"] != last_minute:
        return {"flat": None, "why": "did not live through the whole run"}
    first, last = minutes[0], minutes[-1]
    grew = []
    for key in ("rss_mib", "anon_mib"):
        allowed = max(first[key] * FLAT_MEMORY_FRACTION, FLAT_MEMORY_MIB) + cache_mib
        if last[key] - first[key] > allowed:
            grew.append(f"{key} {first[key]} -> {last[key]} (allowed +{allowed:.1f})")
    if last["fds"] - first["fds"] > FLAT_FDS:
        grew.append(f"fds {first['fds']} -> {last['fds']} (allowed +{FLAT_FDS})")
    half = minutes[len(minutes) // 2]
    trend = (last["anon_mib"] - half["anon_mib"]) / max(1, last["minute"] - half["minute"])
    return {"flat": not grew, "why": "; ".join(grew) or "within bounds",
            "anon_growth_mib": round(last["anon_mib"] - first["anon_mib"], 1), "allowance_extra_mib": cache_mib,
            "anon_mib_per_minute_second_half": round(trend, 2)}


# ------------------------------------------------------------------ the load
@dataclass
class SoakOptions:
    minutes: float
    report: str = "soak.json"
    connections: int = 8  # client tasks, each with a connection to each server
    rate: float = 100.0  # operations (picks from MIX) per second, all tasks together
    seed: int = 1
    workers: int = 2
    workdir: str | None = None  # where the directory and logs go (default: a new temporary one)
    mix: dict[str, int] = field(default_factory=lambda: dict(MIX))  # weights of the operations


def new_body(rng: random.Random) -> bytes:
    """Mostly small buffers, some tens of KiB, a few up to 1 MiB; half of them compressible."""
    roll = rng.random()
    size = rng.randint(1, 4096) if roll < 0.7 else rng.randint(4097, 65536) if roll < 0.98 \
        else rng.randint(65537, MIB)
    unit = rng.randbytes(size if rng.random() < 0.5 else min(size, 16))
    return (unit * (size // len(unit) + 1))[:size]


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstd.compress(body)
    if encoding == "gzip":
        return gzip.compress(body)
    return body


class Load:
    """The client tasks: each picks an operation from :data:`MIX` and a server,
    sends it, checks the answer and paces itself to its share of the rate."""

    def __init__(self, options: SoakOptions, ports: dict[str, int], ledger: Ledger, checker: Checker,
                 latencies: Latencies):
        self.options = options
        self.ports = ports
        self.ledger = ledger
        self.checker = checker
        self.latencies = latencies
        self.counts: Counter[str] = Counter()
        self.reopened: Counter[str] = Counter()
        self.requests = 0  # sent, cut uploads included
        self.fetched: dict[str, set[str]] = {name: set() for name in ports}  # served 200 by that server
        self.cacheable_bytes = {name: Counter() for name in ports}  # by minute first served
        self.ops, self.weights = list(options.mix), list(options.mix.values())

    async def run(self, deadline: float) -> None:
        await asyncio.gather(*(self.task(i, deadline) for i in range(self.options.connections)))

    async def task(self, index: int, deadline: float) -> None:
        rng = random.Random(self.options.seed * 1000 + index)
        conns = {name: Connection(port, self.reopened) for name, port in self.ports.items()}
        interval = self.options.connections / self.options.rate
        next_at = time.monotonic()
        try:
            while time.monotonic() < deadline:
                op = rng.choices(self.ops, self.weights)[0]
                name = rng.choice(list(conns))
                try:
                    await getattr(self, "op_" + op)(rng, name, conns)
                except OSError as exc:
                    self.checker.wrong("transport", f"{name} {op}: {exc}")
                self.counts[op] += 1
                next_at = max(next_at + interval, time.monotonic() - interval)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            for conn in conns.values():
                conn.close()

    async def timed(self, op: str, conn: Connection, method: str, path: str, body: bytes = b"",
                    headers: dict[str, str] | None = None) -> Reply:
        began = time.monotonic()
        self.requests += 1
        reply = await conn.request(method, path, body, headers)
        self.latencies.add(op, began, time.monotonic())
        return reply

    async def op_get(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        checksum, state, length = self.ledger.pick(rng)
        headers = {"Accept-Encoding": "zstd, gzip"} if rng.random() < 0.3 else None
        await self.get(name, conns[name], checksum, state, length, headers)

    async def get(self, name: str, conn: Connection, checksum: str, state: State, length: int,
                  headers: dict[str, str] | None = None) -> None:
        reply = await self.timed("get", conn, "GET", "/" + checksum, headers=headers)
        self.checker.get(name, checksum, state, length, reply)
        if reply.status == 200:
            self.served(name, checksum)

    def served(self, name: str, checksum: str) -> None:
        """Count what the server's workers may now hold in their content caches."""
        if self.ledger.cacheable(checksum) and checksum not in self.fetched[name]:
            self.fetched[name].add(checksum)
            minute = self.latencies.minute(time.monotonic())
            self.cacheable_bytes[name][minute] += self.ledger.stored[checksum] + ENTRY_OVERHEAD

    async def op_head(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        checksum, state, length = self.ledger.pick(rng)
        reply = await self.timed("head", conns[name], "HEAD", "/" + checksum)
        self.checker.head(name, checksum, state, length, reply)

    async def batch(self, route: str, name: str, conn: Connection, items: list[tuple[str, State, int]]) -> None:
        body = json.dumps([checksum for checksum, _, _ in items]).encode()
        reply = await self.timed(route, conn, "POST", "/" + route.replace("_", "-"), body)
        self.checker.batch(name, route, items, reply)

    async def op_has(self, rng: random.Random, name: str, conns: dict[str, Connection], route: str = "has") -> None:
        items = [self.ledger.pick(rng) for _ in range(rng.randint(1, 50))]
        await self.batch(route, name, conns[name], items)

    async def op_has_now(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        await self.op_has(rng, name, conns, "has_now")

    async def op_buffer_length(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        await self.op_has(rng, name, conns, "buffer_length")

    async def put(self, op: str, name: str, conn: Connection, body: bytes, encoding: str = "") -> bool:
        """A complete PUT; its buffer is acknowledged when it answers 200."""
        checksum = HASHER.digest(body).hex()
        headers = {"Content-Encoding": encoding} if encoding else None
        reply = await self.timed(op, conn, "PUT", "/" + checksum, encode(body, encoding), headers)
        if self.checker.status("put_status", f"{name} PUT {checksum[:12]}… {encoding or 'plain'}", reply, 200):
            self.ledger.acknowledge(checksum, len(body), encoding)
            return True
        return False

    async def op_put(self, rng: random.Random, name: str, conns: dict[str, Connection], encoding: str = "") -> None:
        """A new buffer.  Read your writes across hosts: one in four is read at once from the
        other server (GET or /has-now); one in ten is PUT again there (already present: 200)."""
        body = new_body(rng)
        op = "put_" + encoding if encoding else "put"
        if not await self.put(op, name, conns[name], body, encoding):
            return
        other = next(n for n in conns if n != name)
        checksum, roll = HASHER.digest(body).hex(), rng.random()
        if roll < 0.15:
            await self.get(other, conns[other], checksum, State.PRESENT, len(body))
        elif roll < 0.25:
            await self.batch("has_now", other, conns[other], [(checksum, State.PRESENT, len(body))])
        elif roll < 0.35:
            await self.put(op, other, conns[other], body, encoding)

    async def op_put_zstd(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        await self.op_put(rng, name, conns, "zstd")

    async def op_put_gzip(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        await self.op_put(rng, name, conns, "gzip")

    async def op_cut(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        body = new_body(rng)
        checksum = HASHER.digest(body).hex()
        self.requests += 1
        await cut_upload(self.ports[name], checksum, body, rng)
        self.ledger.cut.append(checksum)

    async def op_promise(self, rng: random.Random, name: str, conns: dict[str, Connection]) -> None:
        """Promise a new buffer on one server; both must then count it for /has and
        /buffer-length (as 1) but not /has-now; a GET on the other, sent before the
        PUT, must get the bytes once they are PUT."""
        body = new_body(rng)
        checksum = HASHER.digest(body).hex()
        reply = await self.timed("promise", conns[name], "PUT", "/promise/" + checksum)
        if not self.checker.status("promise_status", f"{name} PUT /promise/{checksum[:12]}…", reply, 202):
            return
        other = next(n for n in conns if n != name)
        for route in ("has", "has_now", "buffer_length"):
            await self.batch(route, other, conns[other], [(checksum, State.PROMISED, len(body))])
        waiter, times = Connection(self.ports[other]), {"GET sent": time.monotonic()}
        self.requests += 1

        async def get() -> Reply:
            reply = await waiter.request("GET", "/" + checksum)
            times["GET answered"] = time.monotonic()
            return reply

        waiting = asyncio.ensure_future(get())
        try:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            times["PUT sent"] = time.monotonic()
            stored = await self.put("put", name, conns[name], body)
            times["PUT answered"] = time.monotonic()
            try:
                got = await waiting
                if got.status == 200:
                    self.served(other, checksum)
            except OSError as exc:
                self.checker.wrong("promise_get", f"{other} GET {checksum[:12]}… while promised: {exc}")
                return
        finally:
            waiting.cancel()
            waiter.close()
        if stored and (got.status != 200 or decoded(got) != body):
            when = ", ".join(f"{event} {1000 * (at - times['GET sent']):+.0f} ms"
                             for event, at in sorted(times.items(), key=lambda item: item[1]))
            self.checker.wrong("promise_get", f"{other} GET {checksum[:12]}… while promised on {name}: "
                               f"{got.status}, {len(got.body)} bytes, expected {len(body)} ({when})")


# ------------------------------------------------------------------ after the load
async def final_lookups(ports: dict[str, int], ledger: Ledger, checker: Checker, rng: random.Random) -> dict:
    """Every acknowledged buffer on both servers (batch routes), a sample of them by GET,
    and every cut upload absent."""
    present = [(cs, State.PRESENT, length) for cs, length in ledger.stored.items()]
    cut = [(cs, State.CUT, 0) for cs in ledger.cut]
    sample = rng.sample(present, min(FINAL_GETS, len(present)))
    for name, port in ports.items():
        conn = Connection(port)
        try:
            for items, kind in ((present, "final_missing"), (cut, None)):
                for at in range(0, len(items), BATCH):
                    for route in ("has", "has_now", "buffer_length"):
                        body = json.dumps([cs for cs, _, _ in items[at:at + BATCH]]).encode()
                        reply = await conn.request("POST", "/" + route.replace("_", "-"), body)
                        checker.batch(name, route, items[at:at + BATCH], reply, kind)
            for checksum, state, length in sample:
                checker.get(name, checksum, state, length, await conn.request("GET", "/" + checksum),
                            "final_missing")
        except OSError as exc:
            checker.wrong("transport", f"{name} final check: {exc}")
        finally:
            conn.close()
    return {"acknowledged": len(present), "cut": len(cut), "fetched_per_server": len(sample)}


def scan_directory(root: str, ledger: Ledger, checker: Checker) -> dict:
    """Every file of the shared directory: a buffer file must hold its checksum's content
    (decoded for ``.zst``/``.gz``), a cut upload must have no file, and nothing else may be left."""
    cut = set(ledger.cut)
    files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            path = os.path.join(dirpath, name)
            base, suffix = name[:64], name[64:]
            if name == PREFIX_MARKER or (is_buffer_name(base) and suffix == SIDECAR_SUFFIX):
                continue
            if not is_buffer_name(base) or suffix not in ("", *BY_SUFFIX):
                checker.wrong("leftover", path)
            elif base in cut:
                checker.wrong("disk_cut_present", path)
            elif not file_holds(path, base, BY_SUFFIX.get(suffix)):
                checker.wrong("disk_wrong", path)
    return {"files": files}


def file_holds(path: str, checksum: str, encoding) -> bool:
    with open(path, "rb") as f:
        data = f.read()
    if encoding is not None:
        try:
            data = decode(encoding, data)
        except InvalidPayload:
            return False
    return HASHER.digest(data).hex() == checksum


# ------------------------------------------------------------------ one soak, start to end
async def sample_until(sampler: ProcessSampler, deadline: float, progress: Callable[[int], None]) -> None:
    """A reading every SAMPLE_EVERY seconds, and one just before the end; ``progress``
    is told of each minute that has passed (a silent half hour looks like a hang)."""
    minute = 1
    while (now := time.monotonic()) < deadline - 1.0:
        await asyncio.sleep(min(SAMPLE_EVERY, deadline - 1.0 - now))
        sampler.sample()
        if sampler.clock.minute(time.monotonic()) > minute:
            progress(minute)
            minute = sampler.clock.minute(time.monotonic())


async def soak(options: SoakOptions, servers: dict[str, HashServer], directory: str) -> dict:
    """The load, then the final checks; returns the report (without the run's frame)."""
    ports = {name: server.port for name, server in servers.items()}
    started = time.monotonic()
    latencies, ledger, checker = Latencies(started, options.minutes), Ledger(), Checker()
    sampler = ProcessSampler(servers, latencies)
    load = Load(options, ports, ledger, checker, latencies)
    deadline = started + options.minutes * 60
    cpu_before = os.times()
    sampler.sample()

    def progress(minute: int) -> None:
        print(f"soak: minute {minute} of {math.ceil(options.minutes)} done: {sum(load.counts.values())} "
              f"operations, {checker.total} wrong answers so far", file=sys.stderr, flush=True)

    await asyncio.gather(load.run(deadline), sample_until(sampler, deadline, progress))
    cpu_after, load_seconds = os.times(), time.monotonic() - started
    client_cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    final = await final_lookups(ports, ledger, checker, random.Random(options.seed))
    final.update(scan_directory(directory, ledger, checker))
    last_minute = latencies.last
    served_mib = {name: round(sum(n for m, n in by_minute.items() if m > 1) / MIB, 1)
                  for name, by_minute in load.cacheable_bytes.items()}
    cache_mib = {name: min(CACHE_BYTES / MIB, mib) for name, mib in served_mib.items()}
    return {
        "operations": dict(load.counts), "operations_per_s": round(sum(load.counts.values()) / load_seconds, 1),
        "requests_per_s": round(load.requests / load_seconds, 1),
        "client": {"processes": 1, "tasks": options.connections, "cpu_seconds": round(client_cpu, 1),
                   "cpu_share_of_one_core": round(client_cpu / load_seconds, 3),
                   "connections_reopened": dict(load.reopened)},
        "load_average": sampler.load_rows(last_minute),
        "errors": dict(checker.errors), "error_examples": dict(checker.examples),
        "wrong_answers": checker.total, "final_check": final,
        "latency": latencies.rows(), "processes": sampler.report(last_minute, cache_mib),
        "cache_allowance_mib": cache_mib, "cacheable_served_after_first_minute_mib": served_mib,
    }


def run_soak(options: SoakOptions) -> int:
    """Start both servers on one new directory, soak, stop them, write the report."""
    workdir = options.workdir or tempfile.mkdtemp(prefix="hashserver-soak-")
    directory = os.path.join(workdir, "buffers")
    os.makedirs(directory, exist_ok=True)
    servers = {name: HashServer(workdir, directory, "prefix", options.workers, writable=True) for name in "ab"}
    frame = {"command": ["python", "-m", "bench", *sys.argv[1:]], "minutes": options.minutes,
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rate_target": options.rate,
             "load_average_start": load_average(), "flat_rule": FLAT_RULE}
    try:
        for server in servers.values():
            server.start()
        frame["servers"] = {name: {"port": s.port, "pid": s.pid, "workers": sorted(s.worker_pids() or [])}
                            for name, s in servers.items()}
        report = {**frame, **asyncio.run(soak(options, servers, directory))}
    finally:
        for server in servers.values():
            server.stop()
        stop_all()
    report.update(load_average_end=load_average(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  stop_seconds={name: s.stop_s for name, s in servers.items()})
    report["flat"] = all(p["flat"]["flat"] is not False for p in report["processes"])
    with open(options.report, "w") as f:
        json.dump(report, f, indent=1)
    sys.stdout.write(table(report))
    if report["wrong_answers"] and not options.workdir:
        print(f"soak: wrong answers; the directory and server logs are kept in {workdir}", file=sys.stderr)
    elif not options.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"soak: wrote {options.report}", file=sys.stderr)
    return 1 if report["wrong_answers"] else 0


FLAT_RULE = (f"a process's last-minute reading against its reading at the end of the first minute: "
             f"RSS and anonymous memory within max({FLAT_MEMORY_FRACTION:.0%}, {FLAT_MEMORY_MIB:g} MiB), "
             f"for a worker plus the small plain buffers its server first served after the first minute "
             f"(its content cache filling, at most {CACHE_BYTES // MIB} MiB); "
             f"open file descriptors within +{FLAT_FDS}")


# ------------------------------------------------------------------ the table
def table(report: dict) -> str:
    lines = [f"soak: {report['minutes']:g} min, two servers x {len(report['servers']['a']['workers'])} workers "
             f"on one directory, {report['operations_per_s']} operations/s (target {report['rate_target']:g}), "
             f"{report['requests_per_s']} requests/s; "
             f"load average {report['load_average_start']} -> {report['load_average_end']}",
             f"client: one process, {report['client']['tasks']} tasks, "
             f"{report['client']['cpu_share_of_one_core']:.0%} of a core; keep-alive connections found "
             f"closed and reopened: {sum(report['client']['connections_reopened'].values())}",
             "operations: " + ", ".join(f"{op} {n}" for op, n in sorted(report["operations"].items())),
             "", f"wrong answers: {report['wrong_answers']}"]
    lines += [f"  {kind:<22} {count}" for kind, count in report["errors"].items()]
    for kind, examples in report["error_examples"].items():
        lines += [f"  e.g. {kind}: {example}" for example in examples[:2]]
    lines += ["", "latency, ms: p50/p99 per minute"]
    by_minute: dict[int, dict[str, str]] = defaultdict(dict)
    for row in report["latency"]:
        by_minute[row["minute"]][row["op"]] = f"{row['p50_ms']:.1f}/{row['p99_ms']:.0f}"
    load = {row["minute"]: row["load_average"][0] for row in report["load_average"] if row["load_average"]}
    lines.append("min  " + "".join(f"{op:>14}" for op in TIMED) + "   load")
    for minute, cells in sorted(by_minute.items()):
        lines.append(f"{minute:<5}" + "".join(f"{cells.get(op, '-'):>14}" for op in TIMED)
                     + f"{load.get(minute, float('nan')):>7.2f}")
    lines += ["", "server processes: RSS / anonymous MiB, open fds; first minute -> last minute",
              f"{'server':<7}{'pid':>8} {'role':<17}{'first':>22}{'last':>22}  flat"]
    for proc in report["processes"]:
        first, last = proc["minutes"][0], proc["minutes"][-1]
        cells = [f"{m['rss_mib']:.0f}/{m['anon_mib']:.0f} MiB {m['fds']:>3} fd" for m in (first, last)]
        flat = proc["flat"]
        verdict = {True: "yes", False: "NO: ", None: "n/a: "}[flat["flat"]]
        verdict += f" (anon {flat['anon_growth_mib']:+g} MiB, {flat['anon_mib_per_minute_second_half']:+g}/min " \
                   "in the second half)" if flat["flat"] else flat["why"]
        lines.append(f"{proc['server']:<7}{proc['pid']:>8} {proc['role']:<17}{cells[0]:>22}{cells[1]:>22}  {verdict}")
    lines += ["content-cache allowance per worker: " + ", ".join(
        f"{name} {mib:g} MiB" for name, mib in report["cache_allowance_mib"].items()),
        f"flat ({report['flat_rule']}): {'yes' if report['flat'] else 'NO'}",
              f"final check: {report['final_check']}", ""]
    return "\n".join(lines)
