"""What load is sent (a :class:`Scenario`), what came back (a :class:`LoadResult`),
and what sends it (a :class:`LoadGenerator`): the types both load generators
share, so that neither imports the other.

A scenario lives in files: a targets file (one request per line:
``target [body_length [file_to_remove_after_the_response]]``) and an optional
bodies file (the bodies, concatenated in line order).  Both load generators,
wrk and the built-in client, read the same files, so they send exactly the
same requests, and a million random GET targets cost no Python memory in the
bench while wrk runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    targets_file: str
    bodies_file: str | None = None
    random_order: bool = True  # else requests go through the file in order, cycling
    connections: int = 32
    path_prefix: str = "/"  # prepended to each target (checksum lists are bare hex)
    expect_success: bool = True  # False: every response should be non-2xx (404 cases)
    removes: bool = False  # some lines name a file to remove after their response
    # In order from line ``start`` (0-based), each line at most once: past the last line,
    # requests go to EXHAUSTED (non-2xx, so counted as a problem) -- the cold-GET case.
    start: int = 0
    walk_once: bool = False


EXHAUSTED = "target-list-exhausted"  # the target of every request after a walk_once list ran out


@dataclass
class LoadResult:
    requests: int
    bytes: int  # bytes received, headers included
    duration_s: float
    non_2xx: int  # non-2xx/3xx responses
    errors: dict[str, int] = field(default_factory=dict)  # connect/read/write/timeout
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    generator: str = ""
    walked_to: int | None = None  # walk_once: the line after the last one requested

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def problems(self, expect_success: bool) -> list[str]:
        """What makes this measurement suspect (errors, wrong statuses, nothing done)."""
        found = []
        if self.requests == 0:
            found.append("no request completed")
        bad = self.non_2xx if expect_success else self.requests - self.non_2xx
        if bad:
            found.append(f"{bad} of {self.requests} responses had an unexpected status")
        errors = {k: v for k, v in self.errors.items() if v}
        if errors:
            found.append("socket errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
        return found


class LoadGenerator(Protocol):
    name: str

    def describe(self) -> str: ...

    def run(self, scenario: Scenario, port: int, duration: float) -> LoadResult: ...


def write_scenario(directory: str, name: str, method: str, targets: Iterable[str],
                   bodies: list[bytes] | None = None, removes: list[str] | None = None,
                   **options) -> Scenario:
    """Write a scenario's files; ``bodies`` and ``removes``, if given, match ``targets``."""
    targets_file = os.path.join(directory, f"{name}.targets")
    bodies_file = os.path.join(directory, f"{name}.bodies") if bodies is not None else None
    with open(targets_file, "w") as out:
        for i, target in enumerate(targets):
            line = target
            if bodies is not None:
                line += f" {len(bodies[i])}"
                if removes is not None:
                    line += f" {removes[i]}"
            out.write(line + "\n")
    if bodies is not None:
        with open(bodies_file, "wb") as out:
            out.writelines(bodies)
    return Scenario(name, method, targets_file, bodies_file, removes=removes is not None, **options)


def read_scenario(scenario: Scenario) -> list[tuple[str, bytes | None, str | None]]:
    """The requests of a scenario as (path, body, file to remove) -- for the built-in client."""
    requests: list[tuple[str, bytes | None, str | None]] = []
    blob = b""
    if scenario.bodies_file:
        with open(scenario.bodies_file, "rb") as f:
            blob = f.read()
    offset = 0
    with open(scenario.targets_file) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            body = None
            if len(parts) > 1:
                length = int(parts[1])
                body = blob[offset:offset + length]
                offset += length
            remove = parts[2] if len(parts) > 2 else None
            requests.append((scenario.path_prefix + parts[0], body, remove))
    return requests
