"""A request's body as it arrives, with one copy.

Sanic's own reading (``Http.read``) copies each piece of a body twice out of
the connection's receive buffer (a slice, then ``bytes``) and dispatches a
signal for it; at a large PUT this is a good part of the event loop's work,
on the core the hashing thread shares.  :func:`request_body` takes whatever
the receive buffer holds in one copy, and leaves Sanic's state as its own
reading would at every step (the rest of a body not read is drained by Sanic
as usual).

Sanic internals used (checked against Sanic 25.12.1;
``tests/test_bodyreader.py`` fails if they change): on ``sanic.http.Http``,
``recv_buffer`` (shared with the protocol: taken from in place, never
replaced), ``request_body`` (``True`` for a ``Content-Length`` body,
``"chunked"`` otherwise, falsy once read), ``request_bytes_left`` and
``_receive_more`` (resumes reading and waits for data), and ``protocol``, whose
reading :class:`BodyWindowMixin` resumes after Sanic paused it.  The first piece is
read by ``Http.read`` itself: it sends ``100 Continue`` when asked, and
checks the declared length against the size limit.  Chunked bodies, and
any other kind of stream, are read by Sanic throughout.  The
``http.lifecycle.read_body`` signal is not dispatched for the pieces read
here (the server registers no handler for it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sanic import Request

_SLOTS = ("recv_buffer", "request_body", "request_bytes_left", "_receive_more", "protocol")
# A body is received this far ahead of its reader.  Sanic pauses a connection once
# REQUEST_BUFFER_SIZE (64 KiB) is buffered, until its reader has taken everything; the
# client then waits on a closed TCP window while the reader hashes and uploads the last
# piece, and each piece costs a pause, a resume and a wake-up.  16 MiB PUTs to SeaweedFS
# with SHA3-256, in 40 interleaved pairs (a scratch script, 2026-11-27): Sanic's threshold
# raised to 4 MiB took 140 ms against 156 (medians; 35 pairs faster), 1 MiB gained about
# half of that, 16 MiB nothing more; this window measured the same as the raised threshold.
# Whatever has arrived is taken at once: taken in pieces of at most 1 MiB, PUTs took 9% longer.
BODY_WINDOW = 4 << 20
# Bodies a worker reads ahead at once; the rest are read as Sanic reads them.  A body read
# ahead comes in pieces of up to BODY_WINDOW, and the hashing and writing stages downstream
# hold a few pieces each: about 18 MB an upload at most, against about 4 MB otherwise.
WINDOWS = 4


class _Windows:
    """The windows open in this worker (a process: each worker counts its own)."""

    open = 0


class BodyWindowMixin:
    """A protocol that keeps reading a body up to :data:`BODY_WINDOW` bytes ahead
    of its reader, while :func:`request_body` reads it (``body_window`` set).

    For a protocol class: ``class P(BodyWindowMixin, SomeHttpProtocol)`` with
    ``__slots__ = (..., *BodyWindowMixin.SLOTS)``.  Sanic pauses reading in
    ``data_received``; here it resumes at once while the window is open and a
    body is still to be read (a window a failed PUT left open until its reader
    is collected reads nothing ahead meanwhile).
    """

    __slots__ = ()
    SLOTS = ("body_window",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body_window = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if len(self.recv_buffer) < self.body_window and self.transport is not None and self._reading_body():
            self.transport.resume_reading()

    def _reading_body(self) -> bool:
        http = getattr(self, "_http", None)
        return http is not None and http.request_body is True


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The body of ``request``, piece by piece (each as much as had arrived).
    Close it (``contextlib.aclosing``) when not read to its end: that closes its window."""
    http = request.stream
    if http is None:
        return
    window = getattr(http, "protocol", None) if http.request_body is True else None
    if not hasattr(window, "body_window") or _Windows.open >= WINDOWS:
        window = None
    if window is not None:
        window.body_window = BODY_WINDOW
        _Windows.open += 1
    try:
        first = await http.read()
        if first:
            yield first
        if http.request_body is not True or not all(hasattr(http, slot) for slot in _SLOTS):
            while (chunk := await http.read()) is not None:  # chunked, or not Sanic's Http
                if chunk:
                    yield chunk
            return
        buffer: bytearray = http.recv_buffer
        while http.request_bytes_left:
            if not buffer:
                await http._receive_more()
                continue
            yield _take(http, buffer)
        http.request_body = None
    finally:
        if window is not None:
            window.body_window = 0
            _Windows.open -= 1


def _take(http, buffer: bytearray) -> bytes:
    """The body's bytes at the start of ``buffer``, removed from it (one copy)."""
    size = min(len(buffer), http.request_bytes_left)
    if size == len(buffer):
        data = bytes(buffer)
        buffer.clear()
    else:
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
    http.request_bytes_left -= size
    return data
