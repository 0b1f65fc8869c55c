"""Generation files mapped with huge pages, where the system allows it (Linux).

A lookup in a large index reads a table entry and a record at random, and
with 4 KiB pages each read also misses the TLB: a page walk, which in a
virtual machine walks two page tables.  Shared memory (``/dev/shm``) gets no
transparent huge pages unless the administrator enables them for it
(``shmem_enabled``, ``never`` by default), but ``MADV_COLLAPSE`` (Linux 6.1)
turns a file's pages into 2 MiB pages regardless, and a mapping at a 2 MiB
aligned address then maps them with one TLB entry each.  The main process
collapses each generation before it publishes it (a copy inside the kernel:
about 0.15 s for 10,000,000 entries); every process maps the file at an
aligned address, so that its faults map the huge pages whole.  Where any of
this is refused the mapping is an ordinary one, with 4 KiB pages.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import weakref

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # linux/mman.h (Linux 6.1)
_MAP_FIXED = 0x10
_PROT_NONE = 0
_FAILED = ctypes.c_void_p(-1).value


@functools.cache
def _libc():
    """The C library's mmap, munmap and madvise (None where they cannot be called)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def map_file(fd: int, size: int):
    """The file read-only and shared, at a 2 MiB aligned address where possible:
    a buffer whose mapping lasts as long as the buffer or any view of it."""
    libc = _libc()
    if libc is None or size < HUGE_PAGE or not hasattr(mmap, "MAP_ANONYMOUS"):
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    # Reserve room for an aligned start, then put the file there.
    reserved = libc.mmap(None, size + HUGE_PAGE, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if reserved in (None, _FAILED):
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    start = -(-reserved // HUGE_PAGE) * HUGE_PAGE
    mapped = libc.mmap(start, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
    end = reserved + size + HUGE_PAGE
    if start > reserved:
        libc.munmap(reserved, start - reserved)
    page_end = -(-(start + size) // mmap.PAGESIZE) * mmap.PAGESIZE
    if end > page_end:
        libc.munmap(page_end, end - page_end)
    if mapped != start:
        libc.munmap(start, size)
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    region = (ctypes.c_ubyte * size).from_address(start)
    # Not at exit: a daemon thread may still be reading it; the process's end unmaps it.
    weakref.finalize(region, libc.munmap, start, size).atexit = False
    return region


def collapse(region) -> bool:
    """Turn the whole 2 MiB pages of a mapping from :func:`map_file` into huge
    pages (in the page cache: for every process that maps the file); True if
    the kernel did."""
    libc = _libc()
    if libc is None or not isinstance(region, ctypes.Array):
        return False
    start = ctypes.addressof(region)
    length = len(region) // HUGE_PAGE * HUGE_PAGE
    return length > 0 and libc.madvise(start, length, MADV_COLLAPSE) == 0


def collapse_file(path: str) -> bool:
    """:func:`collapse` a file's pages (the main process, before publishing it)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HUGE_PAGE:
            return False
        region = map_file(f.fileno(), size)
    return collapse(region)
