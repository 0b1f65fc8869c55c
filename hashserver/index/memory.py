"""Giving freed memory back to the system after building a generation.

glibc keeps memory that a process freed in its heaps (one per thread that
allocated: the scanning threads each have one) for later allocations; after
a build of 1,000,000 buffers that was most of the main process's resident
memory, though nothing used it any more.  ``malloc_trim`` returns the free
pages of every heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the free pages of the C heaps to the system; True if it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
