"""Startup check that the directory's buffers are named by the configured
hash algorithm, so that a wrong ``--hash-algorithm`` cannot go unnoticed."""

from __future__ import annotations

import numpy as np

from .bufferfile import BufferFile
from .checksum import HASH_ALGORITHMS, Hasher
from .compression import InvalidPayload
from .config import ConfigError
from .index import PROMISE, IndexData
from .layout import SearchPath

SAMPLE = 8
SAMPLE_MAX_BYTES = 1 << 20


def _sample(data: IndexData, search_path: SearchPath) -> list[tuple[bytes, bytes]]:
    """(checksum, content) of up to SAMPLE small buffers spread over the index."""
    # Sizes may not be measured yet at startup; big files are skipped when read.
    candidates = np.flatnonzero(data.encodings != PROMISE)
    if len(candidates) == 0:
        return []
    picks = candidates[np.linspace(0, len(candidates) - 1, min(SAMPLE, len(candidates))).astype(int)]
    sample = []
    for position in picks.tolist():
        checksum, path, encoding = data.locate(position, search_path)
        buffer = BufferFile.at(checksum.hex(), path, encoding)
        try:
            content = None if buffer is None else buffer.read_decoded(SAMPLE_MAX_BYTES, unused=True)
        except (OSError, InvalidPayload):
            content = None
        if content is not None:
            sample.append((checksum, content))
    return sample


def check_hash_algorithm(data: IndexData, search_path: SearchPath, algorithm: str, name: str) -> None:
    """Hash a few small buffers under each algorithm; if they match another one
    and not the configured one, refuse with a line that says which to use."""
    check_sample(_sample(data, search_path), algorithm, name, search_path.main.root)


def check_sample(sample: list[tuple[bytes, bytes]], algorithm: str, name: str, where: str) -> None:
    """:func:`check_hash_algorithm` of a sample of (checksum, content) from ``where``."""
    votes = dict.fromkeys(HASH_ALGORITHMS, 0)
    for checksum, content in sample:
        for candidate in HASH_ALGORITHMS:
            if Hasher(candidate).digest(content) == checksum:
                votes[candidate] += 1
    if votes[algorithm]:
        return
    others = [a for a, n in votes.items() if n and a != algorithm]
    if others:
        raise ConfigError(
            f"{name}={algorithm!r}: the buffers in {where} are named by their "
            f"{others[0]} checksums; start with --hash-algorithm {others[0]} "
            f"(or HASHSERVER_HASH_ALGORITHM={others[0]})"
        )
