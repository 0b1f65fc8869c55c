"""Small file-system steps shared by everything that writes into a buffer directory."""

from __future__ import annotations

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
