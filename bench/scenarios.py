"""The requests of each case, written once per run (and per dataset) for both
load generators.

Read cases draw on the dataset: random present checksums, random absent ones,
/has bodies that are half present; the cold GET walks a shuffled list of
another (the 1,000,000-buffer) dataset once (:class:`ColdWalk`).  Write cases need buffers the server does
not have yet: pools of new random buffers, a separate pool for the warm-up so
the measured PUTs are all new, and a large buffer that is deleted after each
PUT so every PUT really stores it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np

from hashserver.checksum import Hasher

from .dataset import Dataset, buffer_path, checksum_hex, random_checksums
from .load import LoadResult, Scenario, write_scenario

ABSENT_TARGETS = 100_000
HAS_SIZES = (1, 100, 1000, 10000)
BUFFER_LENGTH_SIZE = 1000
HAS_POOL_CHECKSUMS = 200_000  # total checksums in a /has body pool (bounded memory)
PUT_GUESS_PER_S = 10_000  # new small buffers prepared per second of PUT (counted afterwards)
SHA256 = Hasher("sha-256")  # what Seamless uses: the put_large_sha256 case's server


def _random_bodies(count: int, size: int, seed: int, stream: int) -> list[bytes]:
    blob = np.random.Generator(np.random.PCG64([seed, stream])).bytes(count * size)
    return [blob[i * size:(i + 1) * size] for i in range(count)]


class Scenarios:
    """Scenario files for one dataset, in a work directory of this run."""

    def __init__(self, dataset: Dataset, workdir: str, connections: int, duration: float,
                 warmup: float, large_put_size: int, seed: int):
        self.dataset = dataset
        self.workdir = os.path.join(workdir, f"scenarios-{dataset.spec.name}")
        os.makedirs(self.workdir, exist_ok=True)
        self.connections = connections
        self.duration = duration
        self.warmup = warmup
        self.large_put_size = large_put_size
        self.seed = seed
        self._cache: dict[str, Scenario] = {}
        self._present: list[str] | None = None
        # New buffers the PUT cases may store, by pool; removed again after each run.
        self.put_pools: dict[str, list[str]] = {}
        # The sha-256 server's directory (empty: its buffers are named differently).
        self.sha256_directory = os.path.join(self.workdir, "sha256-buffers")

    # ----------------------------------------------------------- inputs
    def present(self) -> list[str]:
        if self._present is None:
            self._present = self.dataset.checksums()
        return self._present

    def _write(self, name: str, method: str, targets, **options) -> Scenario:
        options.setdefault("connections", self.connections)
        return write_scenario(self.workdir, name, method, targets, **options)

    # -------------------------------------------------------- scenarios
    def get(self, key: str, phase: str = "measure") -> Scenario:
        """The scenario of case ``key`` for its warm-up or its measurement."""
        cache_key = f"{key}:{phase}" if key.startswith("put_small") else key
        if cache_key not in self._cache:
            self._cache[cache_key] = self._make(key, phase)
        return self._cache[cache_key]

    def _make(self, key: str, phase: str) -> Scenario:
        d = self.dataset
        if key == "get_small":
            return Scenario(key, "GET", d.checksums_file, connections=self.connections)
        if key == "head":
            return Scenario(key, "HEAD", d.checksums_file, connections=self.connections)
        if key == "get_large":
            return self._write(key, "GET", [d.large_checksum], connections=min(4, self.connections))
        if key == "get_404":
            return self._write(key, "GET", random_checksums(ABSENT_TARGETS, self.seed),
                               expect_success=False)
        if key.startswith("has_"):
            return self._lookup(key, "/has", int(key.split("_")[1]))
        if key == "buffer_length":
            return self._lookup(key, "/buffer-length", BUFFER_LENGTH_SIZE)
        if key == "put_small":
            return self._put_small(phase)
        if key == "put_large":
            return self._put_large()
        if key == "put_large_sha256":
            return self._put_large_sha256()
        raise KeyError(key)

    def _lookup(self, name: str, path: str, size: int) -> Scenario:
        """POST bodies of ``size`` checksums, half present, in random order."""
        rng = random.Random(f"{self.seed}-{name}")
        present = self.present()
        pool = max(4, min(64, HAS_POOL_CHECKSUMS // size))
        absent = iter(random_checksums(pool * size, self.seed + 1))
        bodies = []
        for b in range(pool):
            # With one checksum per request, alternate present and absent bodies.
            n_present = (b % 2 == 0) if size == 1 else size // 2
            items = rng.sample(present, min(n_present, len(present)))
            items += [next(absent) for _ in range(size - len(items))]
            rng.shuffle(items)
            bodies.append(json.dumps(items).encode())
        return self._write(name, "POST", [path.lstrip("/")] * pool, bodies=bodies, random_order=False)

    def _put_small(self, phase: str) -> Scenario:
        seconds = self.warmup if phase == "warmup" else self.duration
        count = max(1000, int(PUT_GUESS_PER_S * max(seconds, 1)))
        stream = 0xF00D + (phase == "warmup")
        bodies = _random_bodies(count, self.dataset.spec.size, self.seed, stream)
        checksums = [checksum_hex(b) for b in bodies]
        self.put_pools[f"small_{phase}"] = checksums
        return self._write(f"put_small_{phase}", "PUT", checksums, bodies=bodies, random_order=False)

    def large_body(self) -> bytes:
        """The large buffer both large PUT cases store (and curl -T uploads)."""
        return _random_bodies(1, self.large_put_size, self.seed, 0xB16)[0]

    def _put_large(self) -> Scenario:
        """One new large buffer, PUT and then deleted again and again (single connection)."""
        body = self.large_body()
        checksum = checksum_hex(body)
        target = buffer_path(self.dataset.spec.layout, self.dataset.directory, checksum)
        self.put_pools["large"] = [checksum]
        return self._write("put_large", "PUT", [checksum], bodies=[body], removes=[target],
                           random_order=False, connections=1)

    def _put_large_sha256(self) -> Scenario:
        """The same large buffer under its SHA-256 name, into the sha-256 server's directory."""
        body = self.large_body()
        checksum = SHA256.digest(body).hex()
        target = buffer_path(self.dataset.spec.layout, self.sha256_directory, checksum)
        return self._write("put_large_sha256", "PUT", [checksum], bodies=[body], removes=[target],
                           random_order=False, connections=1)

    def remove_put_buffers(self) -> dict[str, int]:
        """Delete what the PUT cases stored from the dataset; how many of each pool were there."""
        stored = {}
        for name, pool in self.put_pools.items():
            count = 0
            for checksum in pool:
                try:
                    os.unlink(buffer_path(self.dataset.spec.layout, self.dataset.directory, checksum))
                    count += 1
                except FileNotFoundError:
                    pass
            stored[name] = count
        return stored


class ColdWalk:
    """The cold GET's targets: a dataset's checksums, shuffled once, walked in order.

    Each measurement continues where the previous one stopped (the server's
    warm-up, its measurement, then nginx's), so no checksum is requested twice
    in a run and neither server gets a buffer the other has just read; each run
    (worker count) walks the list again from the start, against servers started
    anew.  A walk that reaches the end sends requests that fail, so running out is
    a reported problem, never a silent repeat."""

    def __init__(self, dataset: Dataset, workdir: str, connections: int, seed: int):
        self.dataset = dataset
        checksums = dataset.checksums()[1:]  # not the first: the checks before each load read it
        random.Random(f"{seed}-cold").shuffle(checksums)
        self.lines = len(checksums)
        self.base = write_scenario(workdir, f"get_cold-{dataset.spec.name}", "GET", checksums,
                                   connections=connections, random_order=False, walk_once=True)
        self.cursor = 0

    def restart(self) -> None:
        self.cursor = 0

    def next(self) -> Scenario:
        """The walk from where the last measurement stopped."""
        return dataclasses.replace(self.base, start=self.cursor)

    def advance(self, result: LoadResult) -> None:
        self.cursor = self.lines if result.walked_to is None else max(self.cursor, result.walked_to)
