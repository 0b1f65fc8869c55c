"""Compressed buffers: ``<checksum>.zst`` and ``<checksum>.gz``, the checksum
being that of the uncompressed content (the length sidecar beside them is
:mod:`hashserver.bufferfile`'s concern).  This module knows the encodings,
their names on the wire, and how to decode a stream."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

try:
    from compression import zstd  # the standard library's, from Python 3.14
except ImportError:
    from backports import zstd

DECODED_PIECE = 1 << 20
"""The most decoded bytes one step of a :class:`Decoder` hands over. A small
body may decode to a great deal (zstd reaches 32,000:1, gzip 1,000:1), so
decoding goes piece by piece and never holds more than this."""

_ERRORS = (zlib.error, zstd.ZstdError, EOFError, ValueError)


class InvalidPayload(Exception):
    """Compressed bytes that do not decode."""


@dataclass(frozen=True)
class Encoding:
    code: int  # as stored in the index; 0 is the plain file
    suffix: str  # file name suffix
    tokens: tuple[str, ...]  # Content-Encoding / Accept-Encoding names
    decompressor: Callable[[], _Frame]

    @property
    def name(self) -> str:
        """The ``Content-Encoding`` this server sends for it."""
        return self.tokens[0]

    def accepted_by(self, codings: frozenset[str]) -> bool:
        """Does a client that accepts these content-codings accept this one?"""
        return not codings.isdisjoint(self.tokens)


class _Frame:
    """The decoder of one zstd frame or gzip member, its output bounded per call."""

    def __init__(self, obj) -> None:
        self._obj = obj

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        """What came after the frame's end."""
        return self._obj.unused_data

    padding = b""  # bytes that may follow a frame before the next one (or the end)

    def pieces(self, data: bytes, limit: int) -> Iterator[bytes]:
        """The output of ``data``, in pieces of at most ``limit`` bytes."""
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""


class _ZstdFrame(_Frame):
    def __init__(self) -> None:
        super().__init__(zstd.ZstdDecompressor())

    def pieces(self, data: bytes, limit: int) -> Iterator[bytes]:
        while True:
            out = self._obj.decompress(data, limit)
            if out:
                yield out
            if self._obj.eof or self._obj.needs_input:
                return
            data = b""


class _GzipMember(_Frame):
    padding = b"\0"  # zeros after a member, as gzip and Python's gzip module skip them

    def __init__(self) -> None:
        super().__init__(zlib.decompressobj(wbits=31))

    def pieces(self, data: bytes, limit: int) -> Iterator[bytes]:
        while True:
            out = self._obj.decompress(data, limit)
            if out:
                yield out
            data = self._obj.unconsumed_tail
            if self._obj.eof or (not data and len(out) < limit):
                return

    def flush(self) -> bytes:
        return self._obj.flush()


ZSTD = Encoding(1, ".zst", ("zstd", "x-zstd"), _ZstdFrame)
GZIP = Encoding(2, ".gz", ("gzip", "x-gzip"), _GzipMember)
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
    """Streaming decompression that detects garbage and truncation.

    A stream may hold several zstd frames or gzip members, one after the other
    (as ``pzstd`` and ``cat a.gz b.gz`` make them): they decode to their
    contents, one after the other, as the command-line tools decode them.
    """

    def __init__(self, encoding: Encoding):
        self._new_frame = encoding.decompressor
        self._frame = self._new_frame()
        self.length = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of this part of the stream, in pieces of at most
        :data:`DECODED_PIECE` (nothing is decoded until they are iterated)."""
        try:
            while data:
                if self._frame.eof:
                    if self._frame.padding:
                        data = bytes(data).lstrip(self._frame.padding)
                        if not data:
                            return
                    self._frame = self._new_frame()
                for out in self._frame.pieces(data, DECODED_PIECE):
                    self.length += len(out)
                    yield out
                data = self._frame.unused_data if self._frame.eof else b""
        except _ERRORS as exc:
            raise InvalidPayload(str(exc)) from None

    def finish(self) -> bytes:
        """The last decoded bytes (few); raises :class:`InvalidPayload` if the stream is cut short."""
        try:
            tail = self._frame.flush()
        except _ERRORS as exc:
            raise InvalidPayload(str(exc)) from None
        self.length += len(tail)
        if not self._frame.eof:
            raise InvalidPayload("truncated compressed stream")
        return tail


def decode(encoding: Encoding, data: bytes) -> bytes:
    """All of ``data`` decoded, at once (for bytes already held whole, and known to be small
    or trusted: the result is held whole too).  Raises :class:`InvalidPayload`."""
    decoder = Decoder(encoding)
    return b"".join(decoder.feed(data)) + decoder.finish()
