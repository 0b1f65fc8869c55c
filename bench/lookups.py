"""In-process lookups in the index alone, up to sizes no bench directory holds.

Each index is built from generated checksums (no buffer files) the way the
server builds one (a merge written to a generation file in shared memory)
and mapped the way workers map it.  Then batches of checksums (half present,
in random order, as ``/has`` x1000 sends them) and single checksums (as a GET
looks one up) are looked up, in alternating rounds over all sizes, so that a
machine busy with other work slows every size alike; each figure is the
median of its rounds, counted per CPU second of this process (time the
machine gave to other programs does not count; what they did to the caches
still does).  The ratio of each size's figure to the smallest
size's says whether lookups stay flat as the index grows (target: 0.8).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from hashserver.index import GenerationStore, IndexData
from hashserver.index.memory import release_free_memory
from hashserver.index.merge import Merge
from hashserver.index.records import PLAIN, UNKNOWN_SIZE, make_records
from hashserver.index.scan import DirectoryScan

from .results import LookupFigure

BATCH = 1000  # checksums per batch, as /has x1000
BATCHES = 64  # distinct batches, cycled
SINGLES = 20_000  # distinct single checksums, cycled
TARGET = 0.8  # at the largest size, of the smallest size's figure
CHECK_EVERY = 16  # lookups between reads of the clock


def generated_index(entries: int, seed: int, store: GenerationStore) -> tuple[IndexData, float]:
    """A generation of ``entries`` random checksums, written and mapped as the
    server does it; (the mapped generation, seconds the merge and write took)."""
    rng = np.random.Generator(np.random.PCG64([seed, 0x10C, entries]))
    records = make_records(rng.bytes(32 * entries), UNKNOWN_SIZE, PLAIN, 0)
    scan = DirectoryScan(0, 0, True, records)
    del records
    started = time.perf_counter()
    generation = store.publish(Merge(IndexData.empty(1), [scan]))
    elapsed = time.perf_counter() - started
    release_free_memory()
    return IndexData.open(store.path(generation)), elapsed


class Workload:
    """The queries of one size: batches and single checksums, half present."""

    def __init__(self, data: IndexData, seed: int):
        rng = np.random.Generator(np.random.PCG64([seed, 0x10C5, len(data)]))
        n = len(data.records)

        def mixed(count: int) -> np.ndarray:
            present = data.keys[rng.integers(0, n, count // 2)]
            absent = np.frombuffer(rng.bytes(32 * (count - count // 2)), data.keys.dtype)
            queries = np.concatenate([present, absent])
            rng.shuffle(queries)
            return queries

        self.batches = [mixed(BATCH) for _ in range(BATCHES)]
        singles = mixed(SINGLES)
        self.singles = [singles[i:i + 1].tobytes() for i in range(len(singles))]


def _rate(step: Callable[[int], int], seconds: float) -> float:
    """Lookups per CPU second of ``step(i)`` (which returns how many it did),
    run for ``seconds`` of CPU time."""
    done = calls = 0
    started = time.process_time()
    while True:
        for _ in range(CHECK_EVERY):
            done += step(calls)
            calls += 1
        elapsed = time.process_time() - started
        if elapsed >= seconds:
            return done / elapsed


def measure_round(data: IndexData, work: Workload, seconds: float) -> tuple[float, float]:
    """(checksums/s in batches, lookups/s one by one), ``seconds`` each."""
    find, find_one = data.find, data.find_one
    batches, singles = work.batches, work.singles

    def batch(i: int) -> int:
        find(batches[i % len(batches)])
        return BATCH

    def single(i: int) -> int:
        find_one(singles[i % len(singles)])
        return 1

    return _rate(batch, seconds), _rate(single, seconds)


def lookup_scaling(sizes: list[int], rounds: int, seconds: float, seed: int,
                   say: Callable[[str], None]) -> list[LookupFigure]:
    """Build every size (each in a generation store of its own), then measure
    them in ``rounds`` alternating rounds."""
    stores: list[GenerationStore] = []
    try:
        prepared = []
        for entries in sizes:
            stores.append(GenerationStore.create())
            data, build_s = generated_index(entries, seed, stores[-1])
            prepared.append((data, Workload(data, seed), build_s))
            say(f"bench: lookups: {entries:,} entries built in {build_s:.2f} s")
        measured: list[list[tuple[float, float]]] = [[] for _ in sizes]
        for round_number in range(rounds):
            for (data, work, _), runs in zip(prepared, measured, strict=True):
                runs.append(measure_round(data, work, seconds))
            say(f"bench: lookups: round {round_number + 1}/{rounds}: " + ", ".join(
                f"{n:,}: {m[-1][0]:,.0f}/s batched, {m[-1][1]:,.0f}/s single"
                for n, m in zip(sizes, measured, strict=True)))
        return [_figure(entries, data, build_s, runs)
                for entries, (data, _, build_s), runs in zip(sizes, prepared, measured, strict=True)]
    finally:
        for store in stores:
            store.remove()


def _figure(entries: int, data: IndexData, build_s: float,
            runs: list[tuple[float, float]]) -> LookupFigure:
    return LookupFigure(
        entries=entries, index_bytes=data.size_bytes, fanout_bits=data.fanout.bits,
        build_s=round(build_s, 3), batch=BATCH,
        batch_per_s=statistics.median(r[0] for r in runs),
        single_per_s=statistics.median(r[1] for r in runs),
        rounds=[list(r) for r in runs])
