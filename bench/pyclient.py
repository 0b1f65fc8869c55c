"""The built-in load generator, for machines without wrk.

Several processes (one Python process cannot saturate even a single server
worker), each running asyncio connections over raw keep-alive HTTP/1.1, so the
client costs as little per request as Python allows.  It is still slower than
wrk; results say which generator produced them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from dataclasses import dataclass

from .load import EXHAUSTED, LoadResult, Scenario, read_scenario

HOST = "127.0.0.1"
START_TIMEOUT = 120.0  # for every process to load its scenario
READ_CHUNK = 1 << 20
LATENCY_SAMPLES = 200_000


@dataclass
class _Tally:
    requests: int = 0
    bytes: int = 0
    non_2xx: int = 0
    connect: int = 0
    read: int = 0
    write: int = 0
    latencies: list | None = None
    walked_to: int = 0  # walk_once: the line after the last one this process requested


def _encode(scenario: Scenario, port: int, path: str, body: bytes | None) -> bytes:
    head = f"{scenario.method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def _read_response(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, int, bool]:
    """(status, bytes read, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    length = 0
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        length = int(lower[at + 17:lower.index(b"\r\n", at + 2)])
    elif b"transfer-encoding: chunked" in lower:
        raise ValueError("chunked responses are not supported by the built-in client")
    received = len(head)
    if not head_only and status not in (204, 304):
        remaining = length
        while remaining > 0:
            chunk = await reader.read(min(remaining, READ_CHUNK))
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(chunk)
        received += length
    return status, received, b"\r\nconnection: close" in lower


async def _connection(scenario: Scenario, port: int, requests: list, pick, deadline: float,
                      tally: _Tally) -> None:
    head_only = scenario.method == "HEAD"
    exhausted = scenario.path_prefix + EXHAUSTED
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
            except OSError:
                tally.connect += 1
                await asyncio.sleep(0.01)
                continue
        i = pick()
        path, body, remove = requests[i] if i is not None else (exhausted, None, None)
        started = time.monotonic()
        try:
            writer.write(_encode(scenario, port, path, body))
            await writer.drain()
        except OSError:
            tally.write += 1
            writer = None
            continue
        try:
            status, received, close = await _read_response(reader, head_only)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.read += 1
            writer.close()
            writer = None
            continue
        finished = time.monotonic()
        if remove:
            try:
                os.remove(remove)
            except FileNotFoundError:
                pass
        if finished > deadline:
            break  # completed after the measured period: not counted
        tally.requests += 1
        tally.bytes += received
        tally.non_2xx += not 200 <= status < 400
        if len(tally.latencies) < LATENCY_SAMPLES:
            tally.latencies.append(finished - started)
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _drive(scenario: Scenario, port: int, requests: list, connections: int, duration: float,
                 process: int, processes: int) -> _Tally:
    tally = _Tally(latencies=[])
    n = len(requests)
    rng = random.Random(process)
    if scenario.walk_once:
        # Disjoint slices again, from ``start``, each line once; None: the list ran out.
        position = iter(range(scenario.start + process, n, processes))

        def pick() -> int | None:
            i = next(position, None)
            if i is not None:
                tally.walked_to = max(tally.walked_to, i + 1)
            return i
    elif scenario.random_order:
        def pick() -> int:
            return rng.randrange(n)
    else:
        # Processes take disjoint slices, so a pool of new buffers is not sent twice.
        position = iter(range(process, 1 << 62, processes))

        def pick() -> int:
            return next(position) % n
    deadline = time.monotonic() + duration
    tasks = [asyncio.ensure_future(_connection(scenario, port, requests, pick, deadline, tally))
             for _ in range(connections)]
    _, pending = await asyncio.wait(tasks, timeout=duration + 5)
    for task in pending:  # a request that outlives the period is abandoned
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return tally


def _process_main(scenario: Scenario, port: int, connections: int, duration: float, process: int,
                  processes: int, ready, go, results) -> None:
    requests = read_scenario(scenario)
    ready.put(process)
    if not go.wait(START_TIMEOUT):
        results.put(None)
        return
    tally = asyncio.run(_drive(scenario, port, requests, connections, duration, process, processes))
    results.put(tally)


class PythonClient:
    name = "python"

    def __init__(self, processes: int | None = None):
        self.processes = processes or max(1, min(4, (os.cpu_count() or 1) // 2))

    def describe(self) -> str:
        return f"built-in asyncio client, {self.processes} process(es)"

    def run(self, scenario: Scenario, port: int, duration: float) -> LoadResult:
        processes = 1 if scenario.removes else min(self.processes, scenario.connections)
        shares = [scenario.connections // processes + (p < scenario.connections % processes)
                  for p in range(processes)]
        ctx = multiprocessing.get_context("spawn")
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_process_main, daemon=True,
                             args=(scenario, port, shares[p], duration, p, processes, ready, go, results))
                 for p in range(processes)]
        for proc in procs:
            proc.start()
        try:
            for _ in procs:
                ready.get(timeout=START_TIMEOUT)
            go.set()
            tallies = [results.get(timeout=duration + 60) for _ in procs]
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
        tallies = [t for t in tallies if t is not None]
        latencies = sorted(x for t in tallies for x in t.latencies)

        def percentile(q: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None

        return LoadResult(
            requests=sum(t.requests for t in tallies), bytes=sum(t.bytes for t in tallies),
            duration_s=duration, non_2xx=sum(t.non_2xx for t in tallies),
            errors={k: sum(getattr(t, k) for t in tallies) for k in ("connect", "read", "write")},
            latency_p50_ms=percentile(0.5), latency_p99_ms=percentile(0.99), generator=self.name,
            walked_to=max([scenario.start, *(t.walked_to for t in tallies)]) if scenario.walk_once else None)
