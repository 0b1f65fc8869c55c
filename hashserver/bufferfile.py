"""A buffer file on disk: where it is, which version of it, how to read it.

A buffer is stored as ``<checksum>`` (its bytes) or ``<checksum>.zst`` /
``<checksum>.gz`` (compressed; the checksum is that of the decoded bytes, and
an optional ``<checksum>.BUFFERLENGTH`` sidecar holds their length).  Every
reading of a buffer file's decoded content, and every digest of it, goes
through this module.
"""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .checksum import Hasher
from .compression import Decoder, Encoding, InvalidPayload
from .layout import sidecar_path

READ_CHUNK = 1 << 20

# device, inode, size, modification time: a new version of a file (rewritten,
# replaced, touched) has another identity, so what was learnt of one version
# (verified, its length, its content) is never applied to another.
FileIdentity = tuple[int, int, int, int]


def identity_of(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def regular_file_stat(path: str) -> os.stat_result | None:
    """The file's stat if it is a regular file; None if there is none.

    Only "not found" means absent: any other error (EIO, ENOTCONN, EACCES...)
    propagates, since the buffer may well exist.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if statmod.S_ISREG(st.st_mode) else None


@dataclass(frozen=True)
class BufferFile:
    """A buffer found on disk, identified as it was when found."""

    checksum: str
    path: str  # the file itself: <checksum>, or <checksum>.zst / .gz
    size: int  # of the file on disk
    identity: FileIdentity
    encoding: Encoding | None = None  # None: the file is the buffer itself

    @classmethod
    def at(cls, checksum_hex: str, path: str, encoding: Encoding | None) -> "BufferFile | None":
        """The buffer file at ``path`` now, or None if there is none."""
        st = regular_file_stat(path)
        if st is None:
            return None
        return cls(checksum_hex, path, st.st_size, identity_of(st), encoding)

    @property
    def plain_path(self) -> str:
        """``<checksum>`` beside this file (where a compressed file's sidecar is named from)."""
        return self.path[: len(self.path) - len(self.encoding.suffix)] if self.encoding else self.path

    def sidecar_length(self) -> int | None:
        """The decoded length recorded beside a compressed file, if any."""
        return read_sidecar(self.plain_path)

    def decoded_chunks(self, chunk_size: int = READ_CHUNK, unused: bool = False) -> Iterator[bytes]:
        """The buffer's bytes (decoded if compressed), chunk by chunk (blocking);
        ``unused``: read without marking the file used (see :func:`_open_unused`).

        Raises :class:`InvalidPayload` if compressed content does not decode.
        """
        decoder = Decoder(self.encoding) if self.encoding else None
        with _open_unused(self.path) if unused else open(self.path, "rb", buffering=0) as f:
            while chunk := f.read(chunk_size):
                if decoder is None:
                    yield chunk
                else:
                    yield from decoder.feed(chunk)
        if decoder is not None:
            tail = decoder.finish()
            if tail:
                yield tail

    def read_decoded(self, limit: int, unused: bool = False) -> bytes | None:
        """The whole decoded content if it is at most ``limit`` bytes; else None."""
        parts, total = [], 0
        for chunk in self.decoded_chunks(unused=unused):
            total += len(chunk)
            if total > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    def digest(self, hasher: Hasher) -> tuple[bytes | None, int]:
        """The checksum of the decoded content and its length (blocking);
        None as checksum if compressed content does not decode."""
        digest = DecodingHash(hasher, None)
        try:
            for chunk in self.decoded_chunks():
                digest.update(chunk)
        except InvalidPayload:
            return None, 0
        return digest.finish()


class DecodingHash:
    """Hashes a stream as it is decoded: a body as sent, or the file of a
    compressed buffer, hashes to the checksum of the decoded bytes."""

    def __init__(self, hasher: Hasher, encoding: Encoding | None):
        self._hash = hasher.new()
        self._decoder = Decoder(encoding) if encoding else None
        self.length = 0

    @property
    def decodes(self) -> bool:
        """Whether the stream is decoded as it is hashed (a short piece may then be long)."""
        return self._decoder is not None

    def update(self, data: bytes) -> None:
        if self._decoder is None:
            self.update_decoded(data)
        else:
            for out in self._decoder.feed(data):
                self.update_decoded(out)

    def finish(self) -> tuple[bytes, int]:
        """The checksum and length of the decoded stream (raises InvalidPayload if truncated)."""
        if self._decoder is not None:
            self.update_decoded(self._decoder.finish())
        return self._hash.digest(), self.length

    def update_decoded(self, data: bytes) -> None:
        """Hash bytes already decoded."""
        self.length += len(data)
        self._hash.update(data)


def read_sidecar(plain_path: str) -> int | None:
    """The decoded length recorded in ``<checksum>.BUFFERLENGTH``, if any."""
    try:
        with open(sidecar_path(plain_path)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _open_unused(path: str) -> BinaryIO:
    """Open for reading without updating the file's access time (``O_NOATIME``, allowed
    to its owner and to root; else a plain open).  A local tier takes a file's access
    time for its last use: a look at a file (the startup sample of integrity.py) is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    return os.fdopen(fd, "rb", buffering=0)
