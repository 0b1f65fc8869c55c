"""The catalogue of figures: what each measures, its unit, its ceiling and target.

One table, so the suite, the report and the chart agree on every figure.
Ratios are always "higher is better": throughput / ceiling, or for times
ceiling / time.
"""

from __future__ import annotations

from dataclasses import dataclass

HAS_PER_WORKER_TARGET = 1_000_000  # checksums/s per worker (issues 3 and 5)
# Lookups flat with size (issue 11): at 1,000,000 buffers within 10% of 10,000.
SCALING_TARGETS = {"get_small": 0.9, "has_1000": 0.9}
SCALING_BASE, SCALING_TOP = 10_000, 1_000_000


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    unit: str  # "req/s", "MB/s" (10^6 bytes), "checksums/s", "s" or "MiB"
    # "read": read-only server (and nginx); "cold": read-only server on the cold data set
    # (and nginx); "write": writable; "write_sha256": writable, --hash-algorithm sha-256;
    # "none": not a load case
    server: str
    ceiling: str | None  # a key of CEILING_NAMES
    target: float | None = None  # the ratio to reach
    per_request: int = 1  # checksums per request, for checksums/s
    payload: str | None = None  # "large": MB/s from the large buffer's size


# Targets are issue 11's; a figure it sets none for has none.
LOAD_CASES: tuple[Case, ...] = (
    Case("get_small", "GET 1 KiB, random", "req/s", "read", "nginx", 1.0),
    Case("get_cold", "GET 1 KiB, not read before", "req/s", "cold", "nginx", 0.6),
    Case("get_large", "GET large", "MB/s", "read", "nginx", payload="large"),
    Case("head", "HEAD, random", "req/s", "read", "nginx", 0.9),
    Case("get_404", "GET missing (404)", "req/s", "read", "nginx", 0.7),
    Case("has_1", "/has x1", "checksums/s", "read", "has_target", per_request=1),
    Case("has_100", "/has x100", "checksums/s", "read", "has_target", per_request=100),
    Case("has_1000", "/has x1000", "checksums/s", "read", "has_target", per_request=1000),
    Case("has_10000", "/has x10000", "checksums/s", "read", "has_target", per_request=10000),
    Case("buffer_length", "/buffer-length x1000", "checksums/s", "read", "has_target",
         per_request=1000),
    Case("put_small", "PUT 1 KiB, new", "req/s", "write", "small_writes"),
    Case("put_large", "PUT large, new", "MB/s", "write", "sha3_put", 0.8, payload="large"),
    # Reported, no target (issue 11): what Seamless uses, against its own ceiling.
    Case("put_large_sha256", "PUT large, new, sha-256", "MB/s", "write_sha256", "sha256_put",
         payload="large"),
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
NGINX_CASES = tuple(c.key for c in LOAD_CASES if c.ceiling == "nginx" and c.server == "read")
# Also measured against curl -T of the same body into a plain file (no hashing).
UPLOAD_CASES = ("put_large", "put_large_sha256")
# Also measured against Sanic answering the same route with a constant body.
FRAMEWORK_CASES = ("get_small", "head", "get_404")
MEMORY_CASES = ("main_memory", "main_memory_settled")
LOWER_IS_BETTER = ("s", "MiB")

CEILING_NAMES = {
    "nginx": "nginx",
    "sha3": "SHA3-256, 1 core",
    "sha3_put": "SHA3-256, 1 core",  # measured again right before the PUT cases
    "sha256_put": "SHA-256, 1 core",
    "small_writes": "write+fsync+link, 1 thread",
    "has_target": "target 1M/s/worker",
    "find": "find -type f",
    "index_file": "index file",
}


# What each ceiling is, for the table's legend.
CEILING_DESCRIPTIONS = {
    "nginx": "nginx serving the same directory (sendfile, no access log, as many workers), "
             "the same requests from the same load generator",
    "sha3": "hashlib.sha3_256 over 16 MiB chunks in one thread of the bench, no server",
    "sha3_put": "the same, measured again right before the PUT cases",
    "sha256_put": "hashlib.sha256 over 16 MiB chunks in one thread of the bench, no server, right "
                  "before the PUT cases",
    "small_writes": "temporary file, write, fsync, link into place, one thread, on the buffers' "
                    "file system",
    "has_target": "not a measurement: 1,000,000 checksums/s per worker (up to the CPUs)",
    "find": "find DIR -type f on the same, equally warm, directory",
    "index_file": "the size of the index file the main process maps",
}
UPLOAD_DESCRIPTION = ("curl -T into a plain file: curl uploading the large buffer (a file) to "
                      "nginx's WebDAV PUT on loopback, which writes it into a plain file on the "
                      "buffers' file system: no hashing, no fsync")
FRAMEWORK_DESCRIPTION = ("Sanic, constant body: Sanic answering the same route with a constant "
                         "body of the buffers' size (404 for the missing ones), no file access")


def ratio(case: Case, value: float | None, ceiling: float | None) -> float | None:
    """Higher is better: value / ceiling, or ceiling / value for times and memory
    (memory below its baseline counts as 0.1 MiB)."""
    if case.unit == "MiB" and value is not None:
        value = max(value, 0.1)
    if value is None or ceiling is None or value <= 0 or ceiling <= 0:
        return None
    return ceiling / value if case.unit in LOWER_IS_BETTER else value / ceiling
