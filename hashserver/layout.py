"""Directory layouts: which directories may hold a buffer, and where.

This is the only module that turns a checksum into a path: buffer files,
their compressed forms and length sidecars, locks, promises and a writer's
temporary files.  A :class:`Layout` describes one buffer directory; a
:class:`SearchPath` is the main directory followed by the read-only extra
directories, with every buffer directory numbered once (the index stores that
number as a buffer's location).
"""

from __future__ import annotations

import itertools
import os
import re

from .owner import owner_tag

PREFIX_MARKER = ".HASHSERVER_PREFIX"
FLAT_OVER_PREFIX = (f"%s holds {PREFIX_MARKER}, written by servers in the prefix layout, and this one reads "
                    "the flat layout: buffers in its two-hex directories are not found")
LOCK_SUFFIX = ".LOCK"
PROMISE_SUFFIX = ".PROMISE"
SIDECAR_SUFFIX = ".BUFFERLENGTH"
GLOBAL_LOCK = ".LOCK"
TEMP_SUFFIX = ".tmp"

_temp_counter = itertools.count()

_BUFFER_NAME = re.compile(r"[0-9a-f]{64}")


def is_buffer_name(name: str) -> bool:
    """Only canonical checksum names are buffers; locks, temporaries, markers are not."""
    return len(name) == 64 and _BUFFER_NAME.fullmatch(name) is not None


def temp_path(directory: str, checksum_hex: str) -> str:
    """``DIR/.<checksum>.<host>-<pid>.<n>.tmp``: never a buffer name, and says whose it is."""
    return os.path.join(directory, f".{checksum_hex}.{owner_tag()}.{next(_temp_counter)}{TEMP_SUFFIX}")


def temp_owner(name: str) -> str | None:
    """The owner tag in a temporary file's name; None if ``name`` is not one."""
    if name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3:
        return name.split(".")[2]
    return None


def sidecar_path(buffer_path: str) -> str:
    """The uncompressed length of ``<checksum>.zst``/``.gz``, beside it: ``<checksum>.BUFFERLENGTH``."""
    return buffer_path + SIDECAR_SUFFIX


class Layout:
    """One buffer directory.  ``dirs`` lists every directory that may hold buffers."""

    name = ""

    def __init__(self, root: str):
        self.root = root
        self.dirs: tuple[str, ...] = ()

    def dir_numbers(self, first_byte: int) -> tuple[int, ...]:
        """Positions in ``dirs`` where a checksum starting with ``first_byte`` may be."""
        raise NotImplementedError

    def write_dir(self, checksum_hex: str) -> str:
        """The directory a writer publishes this checksum into."""
        raise NotImplementedError

    def global_locks(self, checksum_hex: str) -> tuple[str, ...]:
        """Lock files that, while fresh, cover every buffer of this checksum's directory."""
        return (os.path.join(self.root, GLOBAL_LOCK),)


class FlatLayout(Layout):
    """``DIR/<checksum>``."""

    name = "flat"

    def __init__(self, root: str):
        super().__init__(root)
        self.dirs = (root,)

    def dir_numbers(self, first_byte: int) -> tuple[int, ...]:
        return (0,)

    def write_dir(self, checksum_hex: str) -> str:
        return self.root


class PrefixLayout(Layout):
    """``DIR/<first two hex characters>/<checksum>``."""

    name = "prefix"

    def __init__(self, root: str):
        super().__init__(root)
        self.dirs = tuple(os.path.join(root, f"{i:02x}") for i in range(256))

    def dir_numbers(self, first_byte: int) -> tuple[int, ...]:
        return (first_byte,)

    def write_dir(self, checksum_hex: str) -> str:
        return self.dirs[int(checksum_hex[:2], 16)]

    def global_locks(self, checksum_hex: str) -> tuple[str, ...]:
        return (
            os.path.join(self.root, GLOBAL_LOCK),
            os.path.join(self.write_dir(checksum_hex), GLOBAL_LOCK),
        )


class VaultLayout(Layout):
    """A directory written by Seamless ``ctx.save_vault`` (read-only)."""

    name = "vault"
    SUBDIRS = ("independent/small", "independent/big", "dependent/small", "dependent/big")

    def __init__(self, root: str):
        super().__init__(root)
        self.dirs = tuple(os.path.join(root, *sub.split("/")) for sub in self.SUBDIRS)

    def dir_numbers(self, first_byte: int) -> tuple[int, ...]:
        return (0, 1, 2, 3)

    def write_dir(self, checksum_hex: str) -> str:
        raise PermissionError("a vault is read-only")


LAYOUT_CLASSES = {cls.name: cls for cls in (FlatLayout, PrefixLayout, VaultLayout)}


def make_layout(name: str, root: str) -> Layout:
    return LAYOUT_CLASSES[name](root)


def extra_dir_layout(root: str) -> Layout:
    """Extra directories are flat unless they hold the prefix marker file."""
    if os.path.exists(os.path.join(root, PREFIX_MARKER)):
        return PrefixLayout(root)
    return FlatLayout(root)


class SearchPath:
    """The main directory's layout, then each extra directory's, in search order.

    Every buffer directory gets one number (its position in :attr:`dirs`);
    lower numbers are searched first.
    """

    def __init__(self, main: Layout, extras: list[Layout] | tuple[Layout, ...] = ()):
        self.main = main
        self.layouts: tuple[Layout, ...] = (main, *extras)
        dirs: list[str] = []
        offsets = []
        for layout in self.layouts:
            offsets.append(len(dirs))
            dirs.extend(layout.dirs)
        self.dirs: tuple[str, ...] = tuple(dirs)
        self._candidates: tuple[tuple[int, ...], ...] = tuple(
            tuple(
                offset + number
                for layout, offset in zip(self.layouts, offsets, strict=True)
                for number in layout.dir_numbers(first_byte)
            )
            for first_byte in range(256)
        )

    @classmethod
    def from_config(cls, config) -> "SearchPath":
        main = make_layout(config.layout, config.directory)
        return cls(main, [extra_dir_layout(d) for d in config.extra_dirs])

    def candidate_dirs(self, first_byte: int) -> tuple[int, ...]:
        """Numbers of the directories that may hold a checksum, in search order."""
        return self._candidates[first_byte]

    def path(self, number: int, checksum_hex: str, suffix: str = "") -> str:
        """The file for a checksum in directory ``number`` (``suffix``: ``.zst``, ...)."""
        return os.path.join(self.dirs[number], checksum_hex + suffix)

    def publish_path(self, checksum_hex: str) -> str:
        """Where a writable server stores this buffer (plain; add an encoding's suffix)."""
        return os.path.join(self.main.write_dir(checksum_hex), checksum_hex)

    def lock_path(self, checksum_hex: str) -> str:
        """The per-file lock a writer holds while it writes this buffer."""
        return self.publish_path(checksum_hex) + LOCK_SUFFIX

    def promise_path(self, checksum_hex: str) -> str:
        return self.publish_path(checksum_hex) + PROMISE_SUFFIX

    def marker_path(self) -> str:
        return os.path.join(self.main.root, PREFIX_MARKER)

    def global_locks(self, checksum_hex: str) -> tuple[str, ...]:
        return self.main.global_locks(checksum_hex)

    def file_locks(self, checksum_hex: str) -> list[str]:
        """Per-file locks of the main directory's candidate paths."""
        first = int(checksum_hex[:2], 16)
        return [
            os.path.join(self.main.dirs[n], checksum_hex + LOCK_SUFFIX)
            for n in self.main.dir_numbers(first)
        ]

    def read_locks(self, checksum_hex: str) -> list[str]:
        """Every lock that, while fresh, means this buffer may be being written."""
        return [*self.global_locks(checksum_hex), *self.file_locks(checksum_hex)]
