"""The checksum -> location index, built once and shared read-only by all workers.

An index *generation* is one immutable file: a header, one modification time
per buffer directory as seen when that directory was scanned, then one
48-byte record per buffer, sorted by checksum (the 32 raw bytes, the size as
uint64, the directory number as uint16, the encoding as uint8: plain, zstd,
gzip, or a promise), then each checksum's first 8 bytes as an integer (the
search key).  56 bytes per buffer: 56 MB per million, paid once however many
workers there are, because every worker memory-maps the same file (on
``/dev/shm`` when it exists, so it lives in shared memory, not on disk).

The main process (:class:`IndexPublisher`) scans the directories, writes a
generation, and keeps watching the directories' modification times; when one
changes it rescans that directory in a background thread and publishes a new
generation.  Workers (:class:`IndexReader`) map the newest generation; a shared
counter tells them when there is a newer one.

The index itself never decides that a buffer is present on its own: see
:mod:`hashserver.store` for how lookups stay exact while other programs add
and remove files.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .compression import BY_CODE, BY_SUFFIX, Encoding, read_sidecar
from .layout import PROMISE_SUFFIX, SearchPath, is_buffer_name
from .locks import owner_tag, pid_is_dead

log = logging.getLogger("hashserver.index")

MAGIC = b"HSIDX004"
HEADER = struct.Struct("<8sQI4x")  # magic, number of buffers, number of directories
KEY_DTYPE = np.dtype("S32")
RECORD = np.dtype({"names": ["key", "size", "dir", "encoding"],
                   "formats": [KEY_DTYPE, np.uint64, np.uint16, np.uint8],
                   "offsets": [0, 32, 40, 42], "itemsize": 48})
ABSENT = -1  # modification time recorded for a directory that did not exist
# A directory modified less than this before its scan may still change within
# the same timestamp tick; it is treated as changed until a later rescan.
SETTLE_NS = 2_000_000_000
PROGRESS_EVERY = 2.0
PLAIN = 0
PROMISE = 255  # an entry that is a promise: its "size" is the promise file's mtime (ns)
UNKNOWN_SIZE = np.iinfo(np.uint64).max  # compressed, no sidecar: measured when asked
_SUFFIX_CODES = {suffix: e.code for suffix, e in BY_SUFFIX.items()}


@dataclass
class DirectoryScan:
    """What one directory held when it was scanned."""

    number: int
    mtime_ns: int  # ABSENT if the directory did not exist
    settled: bool
    keys: bytes
    sizes: np.ndarray  # uint64; UNKNOWN_SIZE where not measured
    encodings: np.ndarray  # uint8

    @classmethod
    def absent(cls, number: int) -> "DirectoryScan":
        return cls(number, ABSENT, True, b"", np.empty(0, np.uint64), np.empty(0, np.uint8))


def _entry(path: str, name: str, st: os.stat_result) -> tuple[int, int] | None:
    """(encoding, size) of a compressed buffer or a promise; None for anything else."""
    suffix = name[64:]
    if suffix == PROMISE_SUFFIX:
        return PROMISE, st.st_mtime_ns
    code = _SUFFIX_CODES.get(suffix)
    if code is None:
        return None
    length = read_sidecar(os.path.join(path, name[:64]))
    return code, UNKNOWN_SIZE if length is None else length


_HEX_RUN = re.compile(r"[0-9a-f]*")


def _plain_keys(names: list[str]) -> tuple[bytes, list[str]]:
    """Checksums of 64-character names, decoded in one call when all are valid."""
    joined = "".join(names)
    if _HEX_RUN.fullmatch(joined):
        return bytes.fromhex(joined), names
    valid = [n for n in names if is_buffer_name(n)]
    return bytes.fromhex("".join(valid)), valid


def scan_directory(number: int, path: str, with_sizes: bool = True) -> DirectoryScan:
    """List one buffer directory.  The modification time is read *before*
    listing, so a change during the listing shows up as a changed directory.

    Without ``with_sizes`` plain buffers are not stat'ed (the file type comes
    with the listing), which is what makes the startup scan about as fast as
    ``find``; their sizes are measured by a later scan.
    """
    started = time.time_ns()
    try:
        mtime = os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return DirectoryScan.absent(number)
    plain: list[str] = []
    plain_sizes: list[int] = []
    other_keys: list[bytes] = []
    other_sizes: list[int] = []
    other_encodings: list[int] = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                name = entry.name
                if len(name) == 64:
                    if not with_sizes:
                        if entry.is_file():
                            plain.append(name)
                        continue
                elif len(name) <= 64 or not is_buffer_name(name[:64]):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if st.st_mode & 0o170000 != 0o100000:  # regular files only
                    continue
                if len(name) == 64:
                    plain.append(name)
                    plain_sizes.append(st.st_size)
                    continue
                found = _entry(path, name, st)
                if found is not None:
                    other_keys.append(bytes.fromhex(name[:64]))
                    other_encodings.append(found[0])
                    other_sizes.append(found[1])
    except (FileNotFoundError, NotADirectoryError):
        return DirectoryScan.absent(number)
    keys, valid = _plain_keys(plain)
    if with_sizes:
        if len(valid) != len(plain):
            keep = set(valid)
            plain_sizes = [size for name, size in zip(plain, plain_sizes) if name in keep]
        sizes = np.array(plain_sizes, np.uint64)
    else:
        sizes = np.full(len(valid), UNKNOWN_SIZE, np.uint64)
    settled = started - mtime > SETTLE_NS
    return DirectoryScan(
        number, mtime, settled, keys + b"".join(other_keys),
        np.concatenate([sizes, np.array(other_sizes, np.uint64)]),
        np.concatenate([np.zeros(len(valid), np.uint8), np.array(other_encodings, np.uint8)]),
    )


def key_prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as an integer that sorts like the key."""
    return np.ascontiguousarray(keys).view(np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8").ravel().astype(np.uint64)


class IndexData:
    """One generation: sorted keys with sizes and directory numbers, plus the
    directories' recorded modification times.  Arrays may be views of a mapping."""

    def __init__(self, keys, sizes, dirs, encodings, dir_mtimes, dir_settled, mapping=None,
                 prefixes=None, records=None):
        if records is None:
            records = np.empty(len(keys), RECORD)
            records["key"], records["size"] = keys, sizes
            records["dir"], records["encoding"] = dirs, encodings
        # One record per buffer, its fields side by side: a lookup's reads of
        # key, size, directory and encoding touch one cache line, not four
        # arrays (at 1,000,000 buffers that was most of a /has request's time).
        self.records: np.ndarray = records
        self.keys: np.ndarray = records["key"]
        self.sizes: np.ndarray = records["size"]
        self.dirs: np.ndarray = records["dir"]
        self.encodings: np.ndarray = records["encoding"]
        self.prefixes: np.ndarray = key_prefixes(self.keys) if prefixes is None else prefixes
        self.dir_mtimes: np.ndarray = dir_mtimes
        self.dir_settled: np.ndarray = dir_settled
        self._mapping = mapping

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def empty(cls, ndirs: int) -> "IndexData":
        return cls(
            np.empty(0, KEY_DTYPE),
            np.empty(0, np.uint64),
            np.empty(0, np.uint16),
            np.empty(0, np.uint8),
            np.full(ndirs, ABSENT, np.int64),
            np.zeros(ndirs, np.bool_),  # never scanned: never trusted
        )

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query key: its position in the index, and whether it is there.

        The search runs on the keys' first 8 bytes as integers (many times
        faster than comparing 32-byte strings); the rare prefix shared by
        several keys is resolved on the full keys.
        """
        if len(self.keys) == 0:
            zeros = np.zeros(len(queries), np.intp)
            return zeros, np.zeros(len(queries), np.bool_)
        query_prefixes = key_prefixes(queries)
        positions = np.searchsorted(self.prefixes, query_prefixes)
        positions[positions == len(self.keys)] = 0
        found = self.keys[positions] == queries
        for i in np.flatnonzero(~found & (self.prefixes[positions] == query_prefixes)).tolist():
            position = self.find_one(queries[i:i + 1].tobytes())
            if position >= 0:
                positions[i], found[i] = position, True
        return positions, found

    def locate(self, position: int, search_path: SearchPath) -> tuple[bytes, str, Encoding | None]:
        """The checksum at ``position``, the file it was indexed as, and its encoding."""
        # A slice keeps all 32 bytes; a numpy scalar would drop trailing zero bytes.
        checksum = self.keys[position:position + 1].tobytes()
        encoding = BY_CODE.get(int(self.encodings[position]))
        path = search_path.path(int(self.dirs[position]), checksum.hex(),
                                encoding.suffix if encoding else "")
        return checksum, path, encoding

    def find_one(self, checksum: bytes) -> int:
        """Position of one checksum (32 bytes) in the index, or -1: the fast
        path of single-buffer requests, without building query arrays."""
        n = len(self.keys)
        prefix = np.uint64(int.from_bytes(checksum[:8], "big"))
        position = int(self.prefixes.searchsorted(prefix))
        while position < n and self.prefixes[position] == prefix:
            if self.keys[position:position + 1].tobytes() == checksum:
                return position
            position += 1
        return -1

    def merged(self, scans: list[DirectoryScan]) -> "IndexData":
        """A new generation: these directories replaced by their new scans.

        One entry per checksum: a real file before a promise, then the first
        directory in search order, then the plain file before a compressed one.
        """
        replaced = np.array([s.number for s in scans], np.uint16)
        keep = ~np.isin(self.dirs, replaced)
        key_parts = [self.keys[keep]]
        size_parts = [self.sizes[keep]]
        dir_parts = [self.dirs[keep]]
        encoding_parts = [self.encodings[keep]]
        dir_mtimes = np.array(self.dir_mtimes, copy=True)
        dir_settled = np.array(self.dir_settled, copy=True)
        for scan in scans:
            key_parts.append(np.frombuffer(scan.keys, KEY_DTYPE))
            size_parts.append(scan.sizes)
            dir_parts.append(np.full(len(scan.sizes), scan.number, np.uint16))
            encoding_parts.append(scan.encodings)
            dir_mtimes[scan.number] = scan.mtime_ns
            dir_settled[scan.number] = scan.settled
        keys = np.concatenate(key_parts)
        sizes = np.concatenate(size_parts)
        dirs = np.concatenate(dir_parts)
        encodings = np.concatenate(encoding_parts)
        order = np.lexsort((encodings, dirs, encodings == PROMISE, keys))
        keys, sizes, dirs, encodings = keys[order], sizes[order], dirs[order], encodings[order]
        if len(keys) > 1:
            first = np.empty(len(keys), np.bool_)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            keys, sizes, dirs, encodings = keys[first], sizes[first], dirs[first], encodings[first]
        return IndexData(keys, sizes, dirs, encodings, dir_mtimes, dir_settled)

    # ---------------------------------------------------------------- file
    def write(self, path: str) -> None:
        """Write this generation to ``path`` atomically (temporary file + rename)."""
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, len(self.keys), len(self.dir_mtimes)))
            for array in (self.dir_mtimes, self.dir_settled.astype(np.uint8),
                          self.records, self.prefixes):
                f.write(_padded(np.ascontiguousarray(array).tobytes()))
        os.replace(tmp, path)

    @classmethod
    def open(cls, path: str) -> "IndexData":
        """Map a generation file read-only; the pages are shared between processes."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapping = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else None
        magic, n, ndirs = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC:
            raise ValueError(f"{path} is not a hashserver index")
        offset = HEADER.size
        arrays = []
        for dtype, count in ((np.int64, ndirs), (np.uint8, ndirs), (RECORD, n), (np.uint64, n)):
            array = np.frombuffer(mapping, dtype=dtype, count=count, offset=offset)
            arrays.append(array)
            offset += _round8(array.nbytes)
        dir_mtimes, settled, records, prefixes = arrays
        return cls(None, None, None, None, dir_mtimes, settled.astype(np.bool_), mapping, prefixes,
                   records)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (_round8(len(data)) - len(data))


def scan_all(search_path: SearchPath, numbers: list[int], with_sizes: bool = True,
             threads: int | None = None) -> list[DirectoryScan]:
    """Scan directories in parallel (listing and stat release the GIL), logging progress."""
    if threads is None:
        threads = min(16, 4 * (os.cpu_count() or 1))
    started = last = time.monotonic()
    count = 0
    scans = []
    with ThreadPoolExecutor(threads, thread_name_prefix="hashserver-scan") as pool:
        futures = [pool.submit(scan_directory, n, search_path.dirs[n], with_sizes) for n in numbers]
        for future in futures:
            scan = future.result()
            scans.append(scan)
            count += len(scan.sizes)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                log.info("index: %d buffers scanned (%.0f/s)", count, count / (now - started))
    return scans


class GenerationStore:
    """The directory of generation files and the shared counter naming the newest.

    The counter is an 8-byte memory-mapped file, so a worker checks for a new
    generation with a memory read, not a system call.
    """

    COUNTER = "generation"

    def __init__(self, directory: str):
        self.directory = directory
        fd = os.open(os.path.join(directory, self.COUNTER), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._counter = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._view = np.frombuffer(self._counter, np.uint64, 1)

    PREFIX = "hashserver-index-"

    @classmethod
    def create(cls) -> "GenerationStore":
        """A new directory, named after this process; those of dead servers go."""
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        cls.remove_orphans(base)
        return cls(tempfile.mkdtemp(prefix=f"{cls.PREFIX}{owner_tag()}-", dir=base))

    @classmethod
    def remove_orphans(cls, base: str) -> int:
        """Remove the index directories of servers on this host that died
        without cleaning up (``kill -9``): they would hold shared memory until
        the next reboot."""
        removed = 0
        try:
            names = os.listdir(base)
        except OSError:
            return 0
        for name in names:
            if not name.startswith(cls.PREFIX):
                continue
            tag = name[len(cls.PREFIX):].rpartition("-")[0]
            if tag and pid_is_dead(tag):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
                removed += 1
        return removed

    @property
    def generation(self) -> int:
        return int(self._view[0])

    def path(self, generation: int) -> str:
        return os.path.join(self.directory, f"index-{generation}")

    def publish(self, data: IndexData) -> int:
        generation = self.generation + 1
        data.write(self.path(generation))
        np.frombuffer(self._counter, np.uint64, 1)[0] = generation
        # Older generations may still be mapped by workers; unlinking is safe.
        for name in os.listdir(self.directory):
            if name.startswith("index-") and name != f"index-{generation}":
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
        return generation

    def open_current(self) -> tuple[int, IndexData]:
        while True:
            generation = self.generation
            try:
                return generation, IndexData.open(self.path(generation))
            except FileNotFoundError:
                continue  # a newer generation replaced it meanwhile: read the counter again

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class IndexPublisher:
    """Main-process side: builds the index, publishes generations, keeps them fresh."""

    def __init__(self, search_path: SearchPath, store: GenerationStore, interval: float = 1.0):
        self.search_path = search_path
        self.store = store
        self.interval = interval
        self.data = IndexData.empty(len(search_path.dirs))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def build(self) -> float:
        """Scan everything and publish the first generation; returns the time it took.

        Names only: sizes are measured by the background thread's first pass
        (lookups stat the files meanwhile)."""
        started = time.monotonic()
        scans = scan_all(self.search_path, list(range(len(self.search_path.dirs))), with_sizes=False)
        self._publish(self.data.merged(scans))
        return time.monotonic() - started

    def _publish(self, data: IndexData) -> None:
        """Publish, then keep the published file's mapping rather than a private copy."""
        generation = self.store.publish(data)
        self.data = IndexData.open(self.store.path(generation))

    def log_built(self, elapsed: float) -> None:
        log.info("index: %d buffers in %d directories, built in %.2f s",
                 len(self.data), len(self.search_path.dirs), elapsed)

    def changed_dirs(self) -> list[int]:
        """Directories whose modification time moved, or that were still settling."""
        now = time.time_ns()
        changed = []
        for number, path in enumerate(self.search_path.dirs):
            try:
                mtime = os.stat(path).st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                mtime = ABSENT
            recorded = int(self.data.dir_mtimes[number])
            if mtime != recorded:
                changed.append(number)
            elif not self.data.dir_settled[number] and now - mtime > SETTLE_NS:
                changed.append(number)
        return changed

    def refresh(self) -> bool:
        """Rescan what changed and publish a new generation; True if one was published."""
        changed = self.changed_dirs()
        if not changed:
            return False
        scans = scan_all(self.search_path, changed, with_sizes=False)
        for scan in scans:
            self._known_sizes(scan)
        self._publish(self.data.merged(scans))
        return True

    def _known_sizes(self, scan: DirectoryScan) -> None:
        """Sizes for a names-only rescan: a buffer already indexed in the same
        directory keeps its size (same name, same content); only new files
        are stat'ed.  Under steady writes this keeps a rescan as cheap as a
        listing, where stat'ing every file cost most of a core at 1,000,000
        buffers."""
        unknown = np.flatnonzero((scan.sizes == UNKNOWN_SIZE) & (scan.encodings == PLAIN))
        if len(unknown) == 0:
            return
        keys = np.frombuffer(scan.keys, KEY_DTYPE)[unknown]
        positions, found = self.data.find(keys)
        if len(self.data):
            known = (found & (self.data.dirs[positions] == scan.number)
                     & (self.data.encodings[positions] == PLAIN)
                     & (self.data.sizes[positions] != UNKNOWN_SIZE))
            scan.sizes[unknown[known]] = self.data.sizes[positions[known]]
            unknown = unknown[~known]
        for i in unknown.tolist():
            name = scan.keys[32 * i: 32 * i + 32].hex()
            try:
                scan.sizes[i] = os.stat(self.search_path.path(scan.number, name)).st_size
            except OSError:
                pass  # gone again: a lookup stats it, or the next rescan drops it

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hashserver-index", daemon=True)
        self._thread.start()

    def measure_sizes(self) -> None:
        """Rescan everything with sizes; publish that generation."""
        started = time.monotonic()
        self._publish(self.data.merged(scan_all(self.search_path, list(range(len(self.search_path.dirs))))))
        log.info("index: sizes of %d buffers measured in %.2f s", len(self.data), time.monotonic() - started)

    def _run(self) -> None:
        try:
            self.measure_sizes()
        except Exception:
            log.exception("measuring buffer sizes failed; lookups stat the files instead")
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                self.refresh()
            except Exception:  # keep refreshing; lookups stay exact meanwhile
                log.exception("index refresh failed")
            # A huge flat directory that keeps changing must not keep a core busy.
            self._stop.wait(4 * (time.monotonic() - started))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class IndexReader:
    """Worker side: the newest published generation, re-mapped when it changes."""

    def __init__(self, store: GenerationStore):
        self.store = store
        self._generation, self._data = store.open_current()

    def current(self) -> IndexData:
        if self.store.generation != self._generation:
            self._generation, self._data = self.store.open_current()
        return self._data
