"""Buffer directories to benchmark against, made once and cached.

A dataset is ``count`` small buffers of random bytes plus one large buffer,
each stored under its real SHA3-256 checksum in the chosen layout, exactly as
a hashserver (or Seamless) would have stored them; checksums come from the
server's own :class:`hashserver.checksum.Hasher` and paths from its
:mod:`hashserver.layout`, so the bench cannot drift from either.

Making a million files has to be fast, so chunks of buffers are written by a
process pool with bare ``os.open``/``os.write`` calls, their content drawn from
a seeded generator (the same seed gives the same directory).  A directory is
reused only if its manifest matches the request and a cheap file count finds
every file (more is allowed: a run's PUT cases store buffers there for a
while), so an interrupted generation is never mistaken for a complete one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from hashserver.checksum import Hasher
from hashserver.layout import Layout, make_layout

from .progress import Progress

FORMAT = 1  # bump when the way a dataset is generated changes
CHUNK = 5000  # buffers per task of the generating pool
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.txt"
LINE = 65  # 64 hex characters and a newline
LARGE_STREAM = 1 << 32  # generator stream of the large buffer (chunks use 0, 1, ...)
HASHER = Hasher()  # the server's default algorithm, under which a default server stores


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds; two equal specs always give the same files."""

    count: int
    layout: str = "prefix"
    size: int = 1024
    large_size: int = 64 << 20
    seed: int = 1

    @property
    def name(self) -> str:
        return (f"{self.layout}-{self.count}x{self.size}B-large{self.large_size}B"
                f"-seed{self.seed}")


@dataclass(frozen=True)
class Dataset:
    """A complete dataset on disk."""

    spec: DatasetSpec
    root: str  # holds the manifest and the checksum list
    large_checksum: str

    @property
    def directory(self) -> str:
        """The buffer directory the servers serve."""
        return os.path.join(self.root, "buffers")

    @property
    def checksums_file(self) -> str:
        """The small buffers' checksums, one per line (load generators read it directly)."""
        return os.path.join(self.root, CHECKSUMS)

    def checksums(self) -> list[str]:
        with open(self.checksums_file) as f:
            return f.read().split()

    def first_checksum(self) -> str:
        with open(self.checksums_file) as f:
            return f.readline().strip() or self.large_checksum

    def path(self, checksum: str) -> str:
        return buffer_path(self.spec.layout, self.directory, checksum)

    def read_into_page_cache(self) -> float:
        """Read every file once (``find -exec cat``): seconds it took.  Both servers
        then find the same files in the page cache, and the disk's speed, which
        changes with whatever else the machine does (and with what it evicted
        since the last run), is not what a case measures."""
        started = time.perf_counter()
        subprocess.run(f"find {shlex.quote(self.directory)} -type f -exec cat {{}} + > /dev/null",
                       shell=True, check=True, timeout=3600)
        return time.perf_counter() - started


@lru_cache(maxsize=16)
def _layout(layout: str, directory: str) -> Layout:
    return make_layout(layout, directory)  # builds 256 paths for prefix: once, not per file


def buffer_path(layout: str, directory: str, checksum: str) -> str:
    """Where a buffer lives in a directory of this layout (the server's own rule)."""
    return os.path.join(_layout(layout, directory).write_dir(checksum), checksum)


def checksum_hex(data: bytes | memoryview) -> str:
    """The name the server stores ``data`` under (its own hashing code)."""
    return HASHER.digest(data).hex()


def random_checksums(count: int, seed: int) -> list[str]:
    """Checksums of buffers that nobody has (for 404s and the absent half of /has)."""
    raw = np.random.Generator(np.random.PCG64([seed, 0xAB5E27])).bytes(32 * count)
    text = raw.hex()
    return [text[64 * i: 64 * i + 64] for i in range(count)]


def _chunk_content(seed: int, chunk: int, count: int, size: int) -> bytes:
    return np.random.Generator(np.random.PCG64([seed, chunk])).bytes(count * size)


def _write_chunk(task: tuple[str, str, int, int, int, int]) -> str:
    """Write one chunk of buffers; return their checksums as lines."""
    layout, directory, seed, chunk, count, size = task
    content = _chunk_content(seed, chunk, count, size)
    view = memoryview(content)
    lines = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(count):
        data = view[i * size:(i + 1) * size]
        checksum = checksum_hex(data)
        fd = os.open(buffer_path(layout, directory, checksum), flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        lines.append(checksum)
    return "\n".join(lines) + "\n"


def count_files(layout: str, directory: str) -> int:
    """Entries in the layout's buffer directories: one listdir each, no stat."""
    total = 0
    for sub in _layout(layout, directory).dirs:
        try:
            total += len(os.listdir(sub))
        except FileNotFoundError:
            pass
    return total


def _load_complete(root: str, spec: DatasetSpec) -> Dataset | None:
    """The dataset at ``root`` if its manifest matches ``spec`` and its files are all there."""
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("spec") != asdict(spec):
        return None
    dataset = Dataset(spec, root, manifest["large_checksum"])
    try:
        listed = os.path.getsize(dataset.checksums_file) // LINE
    except OSError:
        return None
    # More files than made is complete: another bench run on this cache stores new
    # buffers here during its PUT cases, and remaking the directory under its servers
    # made them answer 404 for buffers that were there.
    if listed != spec.count or count_files(spec.layout, dataset.directory) < spec.count + 1:
        return None
    return dataset


def ensure_dataset(cache_dir: str, spec: DatasetSpec, processes: int | None = None) -> Dataset:
    """The dataset for ``spec`` under ``cache_dir``: reused when complete, else made anew."""
    root = os.path.join(os.path.expanduser(cache_dir), spec.name)
    existing = _load_complete(root, spec)
    if existing is not None:
        return existing
    shutil.rmtree(root, ignore_errors=True)
    directory = os.path.join(root, "buffers")
    for sub in make_layout(spec.layout, directory).dirs:
        os.makedirs(sub, exist_ok=True)

    large = _chunk_content(spec.seed, LARGE_STREAM, 1, spec.large_size)
    large_checksum = checksum_hex(large)
    with open(buffer_path(spec.layout, directory, large_checksum), "wb") as f:
        f.write(large)
    del large

    tasks = [(spec.layout, directory, spec.seed, chunk, min(CHUNK, spec.count - start), spec.size)
             for chunk, start in enumerate(range(0, spec.count, CHUNK))]
    progress = Progress(f"making {spec.name}", spec.count)
    tmp_list = os.path.join(root, CHECKSUMS + ".tmp")
    processes = processes or os.cpu_count() or 1
    # fork: no thread runs yet, and workers need not re-import the caller's main module.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with open(tmp_list, "w") as out, context.Pool(processes) as pool:
        for task, lines in zip(tasks, pool.imap(_write_chunk, tasks), strict=True):
            out.write(lines)
            progress.advance(task[4])
    progress.close()
    os.replace(tmp_list, os.path.join(root, CHECKSUMS))
    manifest = {"format": FORMAT, "spec": asdict(spec), "large_checksum": large_checksum}
    with open(os.path.join(root, MANIFEST + ".tmp"), "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(os.path.join(root, MANIFEST + ".tmp"), os.path.join(root, MANIFEST))
    dataset = _load_complete(root, spec)
    if dataset is None:
        raise RuntimeError(f"dataset {root} is incomplete right after making it")
    return dataset
