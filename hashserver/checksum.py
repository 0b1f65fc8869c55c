"""Checksums: parsing what clients send, and the one place that hashes.

Checksums travel as 64 hex characters; inside the server they are the 32 raw
bytes (compact in the index) and the lowercase hex string (file names).
"""

from __future__ import annotations

import hashlib
from typing import Callable

CHECKSUM_BYTES = 32

_CONSTRUCTORS: dict[str, Callable[..., "hashlib._Hash"]] = {
    "sha3-256": hashlib.sha3_256,
    "sha-256": hashlib.sha256,
}
HASH_ALGORITHMS = tuple(_CONSTRUCTORS)

# The names messages use for each algorithm ("SHA3-256 checksum").
HASH_DISPLAY_NAMES = {"sha3-256": "SHA3-256", "sha-256": "SHA-256"}


class InvalidChecksum(ValueError):
    """A checksum that is not 32 bytes of hex; ``str()`` is the client message."""

    def __init__(self, message: str, value: object, kind: str = "value_error"):
        super().__init__(message)
        self.value = value
        self.kind = kind  # pydantic's error type, as the FastAPI server reports it
        self.position: int | None = None


def parse_checksum(value: object) -> bytes:
    """Decode a hex checksum as clients send it; uppercase is accepted.

    The messages are those of the FastAPI server (``bytes.fromhex``'s own text,
    or ``Wrong length``), which clients and their tests compare against.
    """
    if not isinstance(value, str):
        raise InvalidChecksum("Input should be a valid string", value, "string_type")
    if len(value) % 2:
        raise InvalidChecksum("Value error, Wrong length", value)
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise InvalidChecksum(f"Value error, {exc}", value) from None
    if len(raw) != CHECKSUM_BYTES:
        raise InvalidChecksum("Value error, Wrong length", value)
    return raw


def parse_checksum_list(values: list) -> bytes:
    """All checksums of a batch, concatenated (32 bytes each).

    The common case (every item a 64-character hex string) is decoded in one
    call; anything else falls back to item-by-item parsing, which raises
    :class:`InvalidChecksum` with ``.position`` set for the first bad item.
    """
    try:
        joined = "".join(values)
        if len(joined) == 64 * len(values) and {len(v) for v in values} <= {64}:
            raw = bytes.fromhex(joined)
            if len(raw) == CHECKSUM_BYTES * len(values):
                return raw
    except (TypeError, ValueError):
        pass
    parts = []
    for position, value in enumerate(values):
        try:
            parts.append(parse_checksum(value))
        except InvalidChecksum as exc:
            exc.position = position
            raise
    return b"".join(parts)


class Hasher:
    """The configured hash algorithm: the only code that computes checksums."""

    def __init__(self, algorithm: str = "sha3-256"):
        self.algorithm = algorithm
        self.display_name = HASH_DISPLAY_NAMES[algorithm]
        self._constructor = _CONSTRUCTORS[algorithm]

    def new(self):
        return self._constructor()

    def digest(self, data: bytes) -> bytes:
        return self._constructor(data).digest()
