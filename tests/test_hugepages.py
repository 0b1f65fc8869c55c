"""Index generations mapped at 2 MiB aligned addresses, with huge pages where the kernel allows."""

from __future__ import annotations

import ctypes
import gc
import os
import shutil

import numpy as np
import pytest

from hashserver.index import GenerationStore, IndexData
from hashserver.index.hugepages import HUGE_PAGE, collapse_file, map_file


def shm_file(size: int) -> str:
    """A file of ``size`` bytes of a known pattern in /dev/shm (removed by the caller)."""
    store = GenerationStore.create()
    path = os.path.join(store.directory, "pattern")
    with open(path, "wb") as f:
        f.write((np.arange(size, dtype=np.uint64) % 251).astype(np.uint8).tobytes())
    return path


def pmd_mapped_kib() -> int:
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        for line in f:
            if line.startswith("ShmemPmdMapped:"):
                return int(line.split()[1])
    return 0


def test_map_file_is_aligned_and_outlives_its_name_through_views():
    path = shm_file(HUGE_PAGE + 12345)
    try:
        with open(path, "rb") as f:
            region = map_file(f.fileno(), os.fstat(f.fileno()).st_size)
        assert isinstance(region, ctypes.Array) and ctypes.addressof(region) % HUGE_PAGE == 0
        view = np.frombuffer(region, np.uint8)[HUGE_PAGE - 3:]
        del region
        gc.collect()
        with open(path, "rb") as f:
            assert view.tobytes() == f.read()[HUGE_PAGE - 3:]
    finally:
        shutil.rmtree(os.path.dirname(path))


def test_small_files_are_mapped_as_before():
    path = shm_file(4096 * 3)
    try:
        with open(path, "rb") as f:
            region = map_file(f.fileno(), 4096 * 3)
            assert bytes(region[:300]) == f.read(300)
        assert not collapse_file(path)  # no whole huge page in it
    finally:
        shutil.rmtree(os.path.dirname(path))


def test_a_published_generation_is_mapped_with_huge_pages():
    """The main process collapses a generation as it publishes it; a reader's
    aligned mapping then maps whole 2 MiB pages (where the kernel can)."""
    from bench.lookups import generated_index

    store = GenerationStore.create()
    try:
        data, _ = generated_index(200_000, 5, store)  # about 11 MiB
        path = store.path(store.generation)
        before = pmd_mapped_kib()
        reader = IndexData.open(path)
        assert reader.records.tobytes() == data.records.tobytes()  # touches every page
        mapped = pmd_mapped_kib() - before
        assert reader.find(data.keys[::1000])[1].all()
        with pytest.raises(ValueError):  # read-only, as any mapped index: never a SIGSEGV
            reader.sizes[0] = 1
        # Where the kernel collapses shared memory now, publishing did so too, and
        # the reader mapped huge pages; where it refuses (an older kernel, THP
        # denied or disabled, memory too fragmented), the ordinary mapping above
        # answered the same.
        if collapse_file(path):
            assert mapped >= 4 * HUGE_PAGE // 1024
    finally:
        store.remove()
