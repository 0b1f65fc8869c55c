"""Compressed buffers: ``<checksum>.zst`` and ``<checksum>.gz``, the checksum
being that of the uncompressed content, with an optional
``<checksum>.BUFFERLENGTH`` sidecar holding the uncompressed length."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import zstandard

SIDECAR_SUFFIX = ".BUFFERLENGTH"


class InvalidPayload(Exception):
    """Compressed bytes that do not decode."""


@dataclass(frozen=True)
class Encoding:
    code: int  # as stored in the index; 0 is the plain file
    suffix: str  # file name suffix
    tokens: tuple[str, ...]  # Content-Encoding / Accept-Encoding names
    decompressor: Callable[[], object]


def _zstd():
    return zstandard.ZstdDecompressor().decompressobj()


def _gzip():
    return zlib.decompressobj(wbits=31)


ZSTD = Encoding(1, ".zst", ("zstd", "x-zstd"), _zstd)
GZIP = Encoding(2, ".gz", ("gzip", "x-gzip"), _gzip)
ENCODINGS = (ZSTD, GZIP)
BY_CODE = {e.code: e for e in ENCODINGS}
BY_SUFFIX = {e.suffix: e for e in ENCODINGS}
BY_TOKEN = {token: e for e in ENCODINGS for token in e.tokens}


def for_content_encoding(header: str | None) -> Encoding | None:
    """The encoding a PUT body says it has; None for a plain body.

    Raises :class:`InvalidPayload` for an encoding this server cannot decode.
    """
    if not header:
        return None
    token = header.strip().lower()
    if token in ("", "identity"):
        return None
    try:
        return BY_TOKEN[token]
    except KeyError:
        raise InvalidPayload(f"unsupported Content-Encoding {header!r}") from None


def accepts(accept_encoding: str | None, encoding: Encoding) -> bool:
    """Does the request's Accept-Encoding name this encoding (with q > 0)?

    No header at all means the client wants the buffer itself: ``curl``
    without ``--compressed`` must see the real bytes.  ``*`` is not taken as
    naming zstd or gzip for the same reason.
    """
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        token, _, params = item.strip().partition(";")
        if token.strip().lower() not in encoding.tokens:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


class Decoder:
    """Streaming decompression that detects garbage and truncation."""

    def __init__(self, encoding: Encoding):
        self._obj = encoding.decompressor()
        self.length = 0

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._obj.decompress(data)
        except (zlib.error, zstandard.ZstdError, ValueError) as exc:
            raise InvalidPayload(str(exc)) from None
        self.length += len(out)
        return out

    def finish(self) -> bytes:
        try:
            tail = self._obj.flush()
        except (zlib.error, zstandard.ZstdError, ValueError) as exc:
            raise InvalidPayload(str(exc)) from None
        self.length += len(tail)
        if not getattr(self._obj, "eof", True):
            raise InvalidPayload("truncated compressed stream")
        return tail


def read_sidecar(path: str) -> int | None:
    """The uncompressed length recorded beside a compressed buffer, if any."""
    try:
        with open(path + SIDECAR_SUFFIX) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
