"""The figures of a run as dataclasses, from the options to every measurement.

The suite fills them in, the report formats them, and :meth:`BenchDocument.to_json`
is the one place they become the JSON document (``bench.json``), so the table,
the chart and the JSON cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .cases import CASES, CEILING_NAMES, HAS_PER_WORKER_TARGET, UPLOAD_CASES, Case, ratio
from .load import LoadResult
from .machine import Machine
from .procfs import ProcessMemory

BENCH_FORMAT = 1  # bump when a key of the JSON document changes meaning


@dataclass
class Options:
    """What ``python -m bench`` was asked to do (recorded in the document as given)."""

    buffers: list[int]
    workers: list[int]
    layout: str = "prefix"
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 32
    large_size: int = 64 << 20
    cache_dir: str = "~/.cache/hashserver-bench"
    out: str = "bench-results"
    quick: bool = False
    client: str = "auto"
    client_processes: int | None = None
    nginx: bool = True
    cases: list[str] = field(default_factory=lambda: list(CASES))
    profile: bool = False
    seed: int = 1
    sha3_seconds: float = 1.0
    framework: bool = True  # Sanic with a constant body beside nginx (FRAMEWORK_CASES)
    lookup_sizes: list[int] = field(default_factory=list)  # in-process lookups (bench.lookups)
    lookup_rounds: int = 3
    lookup_seconds: float = 1.0  # per size, kind and round
    cold_buffers: int = 1_000_000  # the dataset the cold GET walks, whatever ``buffers`` says


@dataclass
class Figure:
    """One figure of one run: the server's value against its ceiling.

    The fields after ``problems`` belong to some cases only (None elsewhere):
    load cases record the load and the server's CPU, the nginx cases the
    ceiling's load too, small PUTs their bytes, the index build its counts."""

    label: str
    unit: str
    value: float | None
    ceiling: str | None  # the ceiling's name (CEILING_NAMES)
    ceiling_value: float | None = None
    ratio: float | None = None
    target: float | None = None
    met: bool | None = None
    problems: list[str] = field(default_factory=list)
    load: LoadResult | None = None
    server_cpu_s: dict[str, float] | None = None  # by role: main, worker, other
    server_cpu_us_per_request: float | None = None
    profile: dict | None = None
    ceiling_load: LoadResult | None = None
    ceiling_cpu_s: dict[str, float] | None = None
    mb_s: float | None = None
    stored: int | None = None
    indexed: int | None = None
    find_files: int | None = None
    framework_value: float | None = None  # Sanic, same route, constant body (FRAMEWORK_CASES)
    framework_load: LoadResult | None = None
    framework_cpu_s: dict[str, float] | None = None
    baseline_mib: float | None = None  # memory cases: the same process of a server on an empty directory
    dataset_buffers: int | None = None  # measured on another dataset than the run's (the cold GET)
    walked: dict[str, list[int]] | None = None  # the cold GET: lines of its list each load used, [from, to)
    upload_value: float | None = None  # large PUTs: curl -T of the same body into a plain file
    @classmethod
    def of(cls, case: Case, value: float | None) -> Figure:
        return cls(label=case.label, unit=case.unit, value=value, target=case.target,
                   ceiling=CEILING_NAMES[case.ceiling] if case.ceiling else None)

    def judge(self, case: Case) -> None:
        """The ratio to the ceiling, and whether it meets the case's target."""
        self.ratio = ratio(case, self.value, self.ceiling_value)
        if case.target is not None and self.ratio is not None:
            self.met = self.ratio >= case.target


@dataclass
class Ceilings:
    """The ceilings measured without a server, next to the figures they bound."""

    sha3_mb_s: float
    sha3_mb_s_put: float | None = None  # measured again right before the PUT cases
    sha256_mb_s_put: float | None = None
    small_writes_per_s: float | None = None
    upload_mb_s: float | None = None  # curl -T of the large buffer into a plain file (UPLOAD_CASES)

    def by_name(self, workers: int) -> dict[str, float | None]:
        """These ceilings (and the /has target) by their key in CEILING_NAMES."""
        return {
            "sha3": self.sha3_mb_s,
            "sha3_put": self.sha3_mb_s_put,
            "sha256_put": self.sha256_mb_s_put,
            "small_writes": self.small_writes_per_s,
            "has_target": HAS_PER_WORKER_TARGET * min(workers, os.cpu_count() or 1),
        }


@dataclass
class ServerRun:
    """Every figure of one directory size and one worker count."""

    buffers: int
    layout: str
    workers: int
    buffer_size: int
    large_size: int
    load_average_at_start: list[float]
    ceilings: Ceilings
    figures: dict[str, Figure] = field(default_factory=dict)
    memory: dict[str, list[ProcessMemory]] = field(default_factory=dict)  # "idle", "after_load"
    problems: list[str] = field(default_factory=list)
    stop_s: float | None = None

    def judge(self) -> None:
        """Fill in the ceilings measured without a server, every ratio and verdict, and
        list each figure's problems among the run's."""
        measured = self.ceilings.by_name(self.workers)
        for key, fig in self.figures.items():
            case = CASES[key]
            if case.ceiling in measured:
                fig.ceiling_value = measured[case.ceiling]
            if key in UPLOAD_CASES:
                fig.upload_value = self.ceilings.upload_mb_s
            fig.judge(case)
            self.problems += [f"{key}: {problem}" for problem in fig.problems]


@dataclass
class LookupFigure:
    """In-process lookups in an index of ``entries`` generated checksums
    (:mod:`bench.lookups`): medians of the rounds, each round (batched, single)."""

    entries: int
    index_bytes: int
    fanout_bits: int
    build_s: float
    batch: int  # checksums per batch
    batch_per_s: float  # checksums per second, looked up in batches
    single_per_s: float  # checksums per second, looked up one by one
    rounds: list[list[float]] = field(default_factory=list)


@dataclass
class LoadGeneratorInfo:
    name: str
    description: str
    connections: int


@dataclass
class Outputs:
    json: str
    charts: list[str]
    table: str


@dataclass
class BenchDocument:
    """A whole run of ``python -m bench``."""

    bench_format: int = field(default=BENCH_FORMAT, init=False)
    started: str
    command: list[str]
    options: Options
    machine: Machine
    load_generator: LoadGeneratorInfo
    notes: list[str]
    runs: list[ServerRun] = field(default_factory=list)
    lookups: list[LookupFigure] = field(default_factory=list)
    finished: str | None = None
    outputs: Outputs | None = None

    def to_json(self) -> dict:
        """The JSON document: these dataclasses as nested dicts (None as null)."""
        return asdict(self)
