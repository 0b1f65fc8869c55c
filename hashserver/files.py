"""Small file-system steps shared by everything that writes into a buffer directory."""

from __future__ import annotations

import ctypes
import errno
import os

DIR_MODE = 0o2775
BUFFER_MODE = 0o444


def make_group_dir(path: str) -> None:
    """Create a buffer directory shared by a Unix group: mode 2775, whatever the umask."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_small_file(path: str, tmp: str, content: bytes, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` whole or not at all: into ``tmp``, then renamed."""
    try:
        with open(tmp, "wb") as f:
            f.write(content)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)


RENAME_NOREPLACE = 1  # linux/fs.h
AT_FDCWD = -100
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
_renameat2 = None  # resolved at the first call: nothing happens at import time


def rename_no_replace(src: str, dst: str) -> bool | None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists, in one step (Linux's
    ``renameat2(RENAME_NOREPLACE)``): True if renamed, False if ``dst`` was
    there; None where the system or the file system cannot do it (the caller
    falls back).  One system call where a link, then the unlink of the
    temporary name, take two: the local tier stores thousands of small files a
    second.  (Neither frees an inode: what made creating files costly on this
    project's test machine, ext4 without a journal skipping recently freed
    inodes, comes from deletions elsewhere.)"""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = _find_renameat2()
    if _renameat2 is False:
        return None
    if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code in _UNSUPPORTED:
        return None
    raise OSError(code, os.strerror(code), src, None, dst)


def _find_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or a C library older than glibc 2.28
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
