"""HTTP semantics of a buffer's representations: validators, caching, ranges.

A buffer never changes (its name is the hash of its content), so every
representation of it can be cached for good.  A buffer stored compressed has
two representations, the decoded bytes (``ETag: "<checksum>"``) and the
stored encoded bytes (``ETag: "<checksum>.zst"``), chosen by
``Accept-Encoding``; their responses say ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

from dataclasses import dataclass

IMMUTABLE = "public, max-age=31536000, immutable"


def entity_tag(checksum_hex: str, variant: str) -> str:
    return f'"{checksum_hex}.{variant}"' if variant else f'"{checksum_hex}"'


def representation_headers(etag: str, varies: bool, encoding: str | None) -> dict[str, str]:
    headers = {"etag": etag, "cache-control": IMMUTABLE, "accept-ranges": "bytes"}
    if varies:
        headers["vary"] = "Accept-Encoding"
    if encoding:
        headers["content-encoding"] = encoding
    return headers


def _tags(header: str) -> list[str]:
    """The entity tags of an ``If-None-Match``/``If-Range`` list, weak markers dropped."""
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Does ``If-None-Match`` name this representation (or ``*``)?  Then the answer is 304."""
    if not if_none_match:
        return False
    tags = _tags(if_none_match)
    return "*" in tags or etag in tags


@dataclass(frozen=True)
class ByteRange:
    start: int
    length: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{size}"


class Unsatisfiable(Exception):
    """A range that lies wholly beyond the representation: the answer is 416."""


def requested_range(range_header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange | None:
    """The one byte range to send, or None for the whole representation.

    Several ranges, a malformed header, or an ``If-Range`` that does not
    name this representation's entity tag (a date included: there is no
    Last-Modified to compare with) all mean the whole representation, as
    RFC 9110 allows.  Raises :class:`Unsatisfiable`.
    """
    if not range_header:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    unit, _, spec = range_header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:  # the last n bytes
        length = min(int(last), size)
        if length == 0:
            raise Unsatisfiable()
        return ByteRange(size - length, length)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable()
    return ByteRange(start, end - start + 1)
