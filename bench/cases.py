"""The catalogue of figures: what each measures, its unit, its ceiling and target.

One table, so the suite, the report and the chart agree on every figure.
Ratios are always "higher is better": throughput / ceiling, or for times
ceiling / time.
"""

from __future__ import annotations

from dataclasses import dataclass

HAS_PER_WORKER_TARGET = 1_000_000  # checksums/s per worker (issues 3 and 5)


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    unit: str  # "req/s", "MB/s" (10^6 bytes), "checksums/s", "s" or "MiB"
    server: str  # "read": read-only server (and nginx); "write": writable; "none": not a load case
    ceiling: str | None  # a key of CEILING_NAMES
    target: float | None = None  # the ratio to reach
    per_request: int = 1  # checksums per request, for checksums/s
    payload: str | None = None  # "large": MB/s from the large buffer's size


LOAD_CASES: tuple[Case, ...] = (
    Case("get_small", "GET 1 KiB, random", "req/s", "read", "nginx", 0.5),
    Case("get_large", "GET large", "MB/s", "read", "nginx", 0.5, payload="large"),
    Case("head", "HEAD, random", "req/s", "read", "nginx"),
    Case("get_404", "GET missing (404)", "req/s", "read", "nginx"),
    Case("has_1", "/has x1", "checksums/s", "read", "has_target", per_request=1),
    Case("has_100", "/has x100", "checksums/s", "read", "has_target", per_request=100),
    Case("has_1000", "/has x1000", "checksums/s", "read", "has_target", 1.0, per_request=1000),
    Case("has_10000", "/has x10000", "checksums/s", "read", "has_target", per_request=10000),
    Case("buffer_length", "/buffer-length x1000", "checksums/s", "read", "has_target",
         per_request=1000),
    Case("put_small", "PUT 1 KiB, new", "req/s", "write", "small_writes"),
    Case("put_large", "PUT large, new", "MB/s", "write", "sha3_put", 0.85, payload="large"),
)

OTHER_CASES: tuple[Case, ...] = (
    Case("verify_large", "GET large, first (verifies)", "MB/s", "none", "sha3", payload="large"),
    Case("startup", "startup until ready", "s", "none", None),
    # At most 1.5x find (issue 11).
    Case("index_build", "index build (server status)", "s", "none", "find", 1 / 1.5),
    # The main process's anonymous memory less that of a server on an empty
    # directory, against the index file: at most 1.5x its size (issue 11).
    Case("main_memory", "main memory, index built", "MiB", "none", "index_file", 1 / 1.5),
    Case("main_memory_settled", "main memory, sizes measured", "MiB", "none", "index_file", 1 / 1.5),
)

CASES = {case.key: case for case in LOAD_CASES + OTHER_CASES}
NGINX_CASES = tuple(c.key for c in LOAD_CASES if c.ceiling == "nginx")
# Also measured against Sanic answering the same route with a constant body.
FRAMEWORK_CASES = ("get_small", "head", "get_404")
MEMORY_CASES = ("main_memory", "main_memory_settled")
LOWER_IS_BETTER = ("s", "MiB")

CEILING_NAMES = {
    "nginx": "nginx",
    "sha3": "SHA3-256, 1 core",
    "sha3_put": "SHA3-256, 1 core",  # measured again right before the PUT cases
    "small_writes": "write+fsync+link, 1 thread",
    "has_target": "target 1M/s/worker",
    "find": "find -type f",
    "index_file": "index file",
}


def ratio(case: Case, value: float | None, ceiling: float | None) -> float | None:
    """Higher is better: value / ceiling, or ceiling / value for times and memory
    (memory below its baseline counts as 0.1 MiB)."""
    if case.unit == "MiB" and value is not None:
        value = max(value, 0.1)
    if value is None or ceiling is None or value <= 0 or ceiling <= 0:
        return None
    return ceiling / value if case.unit in LOWER_IS_BETTER else value / ceiling
