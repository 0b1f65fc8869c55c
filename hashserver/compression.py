"""Compressed buffers: ``<checksum>.zst`` and ``<checksum>.gz``, the checksum
being that of the uncompressed content (the length sidecar beside them is
:mod:`hashserver.bufferfile`'s concern).  This module knows the encodings,
their names on the wire, and how to decode a stream."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import zstandard


class InvalidPayload(Exception):
    """Compressed bytes that do not decode."""


@dataclass(frozen=True)
class Encoding:
    code: int  # as stored in the index; 0 is the plain file
    suffix: str  # file name suffix
    tokens: tuple[str, ...]  # Content-Encoding / Accept-Encoding names
    decompressor: Callable[[], object]

    @property
    def name(self) -> str:
        """The ``Content-Encoding`` this server sends for it."""
        return self.tokens[0]

    def accepted_by(self, codings: frozenset[str]) -> bool:
        """Does a client that accepts these content-codings accept this one?"""
        return not codings.isdisjoint(self.tokens)


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
SUFFIXES = ("", *BY_SUFFIX)  # where a buffer may be, in the order it is looked for


def for_suffix(suffix: str) -> Encoding | None:
    """The encoding of a file with this suffix ('' for the plain file)."""
    return BY_SUFFIX.get(suffix)


def for_content_encoding(header: str | None) -> Encoding | None:
    """The encoding a body says it has (a ``Content-Encoding`` value); None for plain.

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

