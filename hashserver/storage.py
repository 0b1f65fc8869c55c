"""The one interface between the HTTP side and storage.

The HTTP handlers (:mod:`hashserver.routes`) know storage only through
:class:`Storage` and the types and exceptions of this module; each kind of
storage (today the buffer directory, :mod:`hashserver.directory`) implements
it.  What a handler needs to answer is here and nothing more: presence and
lengths of a batch, one buffer opened for sending (in memory, as an open
file to send zero-copy, or as a stream of decoded chunks), storing one from a
stream of chunks, promising one; and, for a hot path under Sanic's
protocol, :meth:`Storage.peek`, which answers without awaiting, and
:meth:`Storage.fetch`, which a peek sends to the object store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import AsyncIterator, BinaryIO, Callable, Protocol

from .compression import InvalidPayload

__all__ = ["BodyStalled", "BodyTooLarge", "ChecksumMismatch", "CorruptBuffer", "DiskFull", "Fast",
           "InvalidPayload", "PutOutcome", "Readable", "ReadOnly", "StillWriting", "Storage",
           "StorageUnavailable", "Want"]


class CorruptBuffer(Exception):
    """A stored buffer whose content does not hash to its name (and no
    writer explains it).  ``str()`` is the message for the client."""

    @classmethod
    def at(cls, where: str, algorithm: str) -> "CorruptBuffer":
        """The old server's message, naming the file (or object) and the hash algorithm."""
        return cls(f"File corruption: file at path {where} does not have the correct {algorithm} checksum.")


class ChecksumMismatch(Exception):
    """A body that does not hash to the checksum it is stored under."""


class BodyTooLarge(Exception):
    """A body larger than the configured maximum (``.limit`` bytes)."""

    def __init__(self, limit: int):
        super().__init__(f"Request body larger than the maximum of {limit} bytes")
        self.limit = limit


class DiskFull(Exception):
    """No space (or quota) left to store the buffer; nothing was stored."""


class StorageUnavailable(Exception):
    """The storage failed (an I/O error, a vanished or unreachable directory,
    a refused permission): the buffer may well exist, so the answer is 503,
    never "absent".  ``str()`` names the problem."""


class StillWriting(Exception):
    """The buffer is still being written or promised after the longest wait
    (``--wait-timeout``): the client may ask again (503 with Retry-After)."""

    def __init__(self, retry_after: int):
        super().__init__("The buffer is still being written or is promised; ask again later")
        self.retry_after = retry_after


class BodyStalled(Exception):
    """An upload that stopped or crawled (``--body-idle-timeout``,
    ``--min-body-rate``); nothing was stored."""


class ReadOnly(Exception):
    """This storage does not accept writes or promises; ``str()`` says which."""

    @classmethod
    def put(cls) -> "ReadOnly":
        return cls("This server is read-only: PUT is not allowed")

    @classmethod
    def promise(cls) -> "ReadOnly":
        return cls("This server is read-only: promises are not accepted")


class Fast(enum.Enum):
    """What :meth:`Storage.peek` answers when it has no content to give."""

    ABSENT = "absent"  # certainly absent: no lock, no promise, no file
    REGULAR = "regular"  # not decidable without waiting or reading: take the regular path
    FETCH = "fetch"  # not held here, but :meth:`Storage.fetch` may get it (a GET of its one plain object)


class Want(enum.Enum):
    """What an answer takes of the buffer it opens.  A directory serves each
    alike; an object store must know: a HEAD needs no GET of a large object,
    and a part must not go out before the whole object was verified (a stream
    verified as it is sent holds back only its last chunk, which a part may
    not reach)."""

    HEADERS = "headers"  # HEAD: the length and headers, never a body
    PART = "part"  # a Range request: some bytes, verified before they go out
    WHOLE = "whole"  # the whole body (verified as it streams)


class PutOutcome(enum.Enum):
    STORED = "stored"
    PRESENT = "present"  # it was there already (or another writer got there first)


@dataclass
class Readable:
    """One buffer opened for sending, in the representation to send.

    Exactly one of ``content``, ``file`` and ``chunks`` is set.  ``length`` is
    the number of bytes of this representation; ``encoding`` the
    ``Content-Encoding`` of those bytes (None: the buffer itself).  The
    receiver closes it (an open file is released).
    """

    length: int
    encoding: str | None = None
    content: bytes | None = None
    file: BinaryIO | None = None  # may be sent zero-copy
    chunks: Callable[[], AsyncIterator[bytes]] | None = None
    variant: str = ""  # names the stored encoding ("zst", "gz") when the bytes are sent encoded
    varies: bool = False  # stored compressed: what is sent depends on Accept-Encoding
    as_stored: "Readable | None" = None  # when decoded from bytes in memory: those, as stored

    @property
    def decoded(self) -> bool:
        """A compressed buffer's content, decoded: not what its store holds."""
        return self.varies and not self.variant

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> "Readable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Storage(Protocol):
    """Buffers by checksum (32 raw bytes; batches are the checksums concatenated).

    Every method raises :class:`StorageUnavailable` when the storage itself
    fails, and :class:`DiskFull` when it has no room."""

    writable: bool

    def peek(self, checksum: bytes) -> bytes | Fast:
        """Without awaiting: the verified content of a small plain buffer (held
        in memory, or read and verified now as the regular route reads it),
        :attr:`Fast.ABSENT`, :attr:`Fast.REGULAR`, or :attr:`Fast.FETCH`."""

    async def fetch(self, checksum: bytes) -> bytes | Fast:
        """After a peek answered :attr:`Fast.FETCH`: the verified content of a
        small plain buffer, fetched (and kept where the storage keeps what it
        fetched), or :attr:`Fast.REGULAR` for anything else (absent, larger,
        stored compressed, promised: the regular route looks further).  Raises
        :class:`CorruptBuffer`, :class:`StorageUnavailable`."""

    async def has(self, checksums: bytes, promised: bool = True) -> list[bool]:
        """Presence of each checksum, exactly; ``promised``: a pending promise counts."""

    async def lengths(self, checksums: bytes) -> list[int]:
        """Length of each buffer (of its decoded content); 0 if absent, 1 if only promised."""

    async def open(self, checksum: bytes, accepted: frozenset[str] = frozenset(),
                   want: Want = Want.WHOLE) -> Readable | None:
        """The buffer for sending, or None if absent.  ``accepted``: the
        content-codings the client accepts (a buffer stored compressed in one
        of them is sent as it is stored); ``want``: what the answer takes of it.  Waits while the buffer is being
        written or is promised, at most ``--wait-timeout``.  Raises
        :class:`CorruptBuffer`, :class:`StillWriting`."""

    async def put(self, checksum: bytes, body: AsyncIterator[bytes],
                  content_encoding: str | None = None) -> PutOutcome:
        """Store ``body`` if it hashes to ``checksum`` (decoded, if it has a
        ``content_encoding``).  Raises :class:`ReadOnly`, :class:`ChecksumMismatch`,
        :class:`InvalidPayload`, :class:`BodyTooLarge`, :class:`BodyStalled` or
        :class:`DiskFull`; whatever the outcome, nothing partial is left behind."""

    async def promise(self, checksum: bytes) -> int:
        """Announce that this buffer is about to be stored, unless it is
        present; returns how long the promise holds (s).  Raises :class:`ReadOnly`."""

    async def health(self) -> str | None:
        """None while the storage works; else what is wrong, as checked now
        (cheaply: a check stands for about a second, shared by the calls meanwhile)."""

    def close(self) -> None:
        """Release what the storage holds (watches, files)."""
