"""Startup check that the directory's buffers are named by the configured
hash algorithm, so that a wrong ``--hash-algorithm`` cannot go unnoticed."""

from __future__ import annotations


import numpy as np

from .checksum import HASH_CONSTRUCTORS
from .compression import Decoder
from .config import ConfigError
from .index import PROMISE, IndexData
from .layout import SearchPath

SAMPLE = 8
SAMPLE_MAX_BYTES = 1 << 20


def _content(path: str, encoding) -> bytes | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(SAMPLE_MAX_BYTES + 1)
    except OSError:
        return None
    if len(raw) > SAMPLE_MAX_BYTES:
        return None
    if encoding is None:
        return raw
    try:
        decoder = Decoder(encoding)
        return decoder.feed(raw) + decoder.finish()
    except Exception:
        return None


def check_hash_algorithm(data: IndexData, search_path: SearchPath, algorithm: str, name: str) -> None:
    """Hash a few small buffers under each algorithm; if they match another one
    and not the configured one, refuse with a line that says which to use."""
    # Sizes may not be measured yet at startup; big files are skipped when read.
    candidates = np.flatnonzero(data.encodings != PROMISE)
    if len(candidates) == 0:
        return
    picks = candidates[np.linspace(0, len(candidates) - 1, min(SAMPLE, len(candidates))).astype(int)]
    votes = {a: 0 for a in HASH_CONSTRUCTORS}
    for position in picks.tolist():
        checksum, path, encoding = data.locate(position, search_path)
        content = _content(path, encoding)
        if content is None:
            continue
        for candidate, constructor in HASH_CONSTRUCTORS.items():
            if constructor(content).digest() == checksum:
                votes[candidate] += 1
    if votes[algorithm]:
        return
    others = [a for a, n in votes.items() if n and a != algorithm]
    if others:
        raise ConfigError(
            f"{name}={algorithm!r}: the buffers in {search_path.main.root} are named by their "
            f"{others[0]} checksums; start with --hash-algorithm {others[0]} "
            f"(or HASHSERVER_HASH_ALGORITHM={others[0]})"
        )
