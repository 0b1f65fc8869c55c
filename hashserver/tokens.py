"""Bearer tokens: who may write (``--write-token-file``), who may read
(``--read-token-file``).

A token file holds one token per line (blank lines and ``#`` comments
ignored).  It is reread when it changes (checked at most once a second), so
tokens are added and revoked without a restart.  Tokens are compared in
constant time: every configured token is compared, whatever matches.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from .config import read_tokens

log = logging.getLogger("hashserver")

RECHECK_EVERY = 1.0


class TokenFile:
    def __init__(self, path: str):
        self.path = path
        self._version: tuple | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._checked = float("-inf")
        self._refresh()

    def _refresh(self) -> None:
        """Reread the file if it changed; keep the tokens in force if it cannot be read."""
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            version = (st.st_ino, st.st_size, st.st_mtime_ns)
            if version == self._version:
                return
            tokens = read_tokens(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("token file %s cannot be read (%s); the tokens read before stay in force",
                        self.path, exc)
            return
        self._version = version
        self._tokens = tuple(t.encode() for t in sorted(tokens))

    def allows(self, authorization: str | None) -> bool:
        """Does this ``Authorization`` header carry one of the tokens?"""
        if time.monotonic() - self._checked >= RECHECK_EVERY:
            self._refresh()
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        given = credentials.strip().encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(token, given)
        return matched and scheme.lower() == "bearer"


class Guard:
    """Which requests need a token: writes, and (with read tokens) reads."""

    def __init__(self, write: TokenFile | None, read: TokenFile | None):
        self.write, self.read = write, read

    @classmethod
    def from_files(cls, write_path: str | None, read_path: str | None) -> Guard | None:
        if write_path is None and read_path is None:
            return None
        return cls(TokenFile(write_path) if write_path else None, TokenFile(read_path) if read_path else None)

    def allows(self, writes: bool, authorization: str | None) -> bool:
        tokens = self.write if writes else self.read
        return tokens is None or tokens.allows(authorization)
