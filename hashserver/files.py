"""Small file-system steps shared by everything that writes into a buffer directory."""

from __future__ import annotations

import itertools
import os

from .locks import owner_tag

TEMP_SUFFIX = ".tmp"
DIR_MODE = 0o2775

_counter = itertools.count()


def temp_name(checksum_hex: str) -> str:
    """``.<checksum>.<host>-<pid>.<n>.tmp``: never a buffer name, and says whose it is."""
    return f".{checksum_hex}.{owner_tag()}.{next(_counter)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


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
