"""Sending a buffer's bytes: in memory, zero-copy from a file, or streamed.

This is the only module that touches Sanic's internals (checked against
Sanic 25.12.1; ``tests/test_sending.py`` fails if they change):

- A response with a ``Content-Length`` keeps count of the body bytes still
  due in ``request.stream.response_bytes_left`` (a slot of
  ``sanic.http.Http``); bytes sent with ``os.sendfile`` bypass Sanic, so the
  count is lowered by as much, and the last byte goes through Sanic to end
  the response.
- After a response, Sanic reads and discards what is left of the request's
  body (while ``request.stream.request_body``), within
  ``request.stream.request_max_size``, and keeps the connection only while
  ``request.stream.keep_alive``: :func:`refuse_body` sets these so that a
  refused upload is not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
from typing import AsyncIterator

from sanic import Request
from sanic.response import HTTPResponse

from . import caching, responses
from .storage import CorruptBuffer, Readable, StorageUnavailable

log = logging.getLogger("hashserver")

STREAM_CHUNK = 1 << 20
SENDFILE_MIN = 256 << 10
SEND_STALL_TIMEOUT = 60.0  # a client that takes nothing for this long is dropped
LINGER_SECONDS = 1.0  # the longest a refused body is drained before the connection closes
SANIC_BYTES_LEFT = "response_bytes_left"  # the Http slot zero-copy sending adjusts
SANIC_REQUEST_MAX_SIZE = "request_max_size"  # the body bound Sanic drains a request's rest within
SANIC_REQUEST_BODY = "request_body"  # true while a request's body is still to be read
SANIC_RESPONSE_FUNC = "response_func"  # the Http slot sending the response; None: nothing more to send


def refuse_body(request: Request, linger: int = 0) -> None:
    """Answer without reading the rest of the request's body.

    Sanic would read all of it after the answer (to reach the next request on
    the connection); instead at most ``linger`` more bytes, for at most
    LINGER_SECONDS, are read and discarded, then the connection closes (the
    answer says ``Connection: close``).  Lingering a little lets a client that
    is still sending read the answer: closing with unread bytes makes the
    kernel reset the connection, and the client may lose the answer.
    """
    http = request.stream
    if http is None or not hasattr(http, SANIC_REQUEST_MAX_SIZE):
        return
    http.keep_alive = False
    if linger:
        setattr(http, SANIC_REQUEST_MAX_SIZE, getattr(http, "request_bytes", 0) + linger)
        asyncio.get_running_loop().call_later(LINGER_SECONDS, request.transport.close)
    else:  # nothing to drain: the connection ends with the answer
        setattr(http, SANIC_REQUEST_BODY, None)


async def send(request: Request, readable: Readable, checksum_hex: str, head: bool) -> HTTPResponse | None:
    """Answer with the buffer, or the part of it asked for (or, for HEAD,
    the headers).  A streamed response is sent here and None returned
    (Sanic would complain of a second response)."""
    with readable:
        etag = caching.entity_tag(checksum_hex, readable.variant)
        headers = caching.representation_headers(etag, readable.varies, readable.encoding)
        if caching.none_match(request.headers.get("if-none-match"), etag):
            return responses.not_modified(headers)
        try:
            part = caching.requested_range(request.headers.get("range"), request.headers.get("if-range"),
                                           etag, readable.length)
        except caching.Unsatisfiable:
            return responses.unsatisfiable(readable.length)
        status, start, length = 200, 0, readable.length
        if part is not None:
            status, start, length = 206, part.start, part.length
            headers["content-range"] = part.content_range(readable.length)
        if head:
            return responses.head_only(length, headers, status)
        if readable.content is not None and length <= STREAM_CHUNK:
            return responses.buffer(readable.content[start:start + length], headers, status)
        return await _stream(request, readable, headers, status, start, length)


async def _stream(request: Request, readable: Readable, headers: dict, status: int,
                  start: int, length: int) -> None:
    response = await request.respond(
        status=status, content_type=responses.OCTET_STREAM,
        headers={**responses.ANY_ORIGIN, **headers, "content-length": str(length)})
    try:
        if readable.file is not None:
            await _send_file(request, response, readable.file, start, length)
        elif readable.content is not None:  # in pieces: Sanic would copy it whole behind the headers
            view = memoryview(readable.content)[start:start + length]
            for offset in range(0, length, STREAM_CHUNK):
                await response.send(view[offset:offset + STREAM_CHUNK])
        else:
            async with contextlib.aclosing(_part(readable.chunks(), start, length, readable.length)) as part:
                async for chunk in part:
                    await response.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        request.transport.close()  # the client went away
        return None
    except (CorruptBuffer, StorageUnavailable) as exc:  # found while streaming: the headers are out already
        (log.error if isinstance(exc, CorruptBuffer) else log.warning)("%s: response cut short", exc)
        request.transport.abort()  # never a complete 200 whose body is wrong
        setattr(request.stream, SANIC_RESPONSE_FUNC, None)  # Sanic would end it again, and log an error
        return None
    await response.eof()
    return None


async def _part(chunks: AsyncIterator[bytes], start: int, length: int, total: int) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``start + length`` of a stream of ``total`` bytes in chunks.

    A part that reaches the end reads the stream to its end, past its last
    byte: the stream's own ending then runs (a tier keeps what it filled from
    a stream only once the stream ended: ``TieredStore._teed_chunks``). Any
    other part closes the stream where it ends.
    """
    position, end = 0, start + length
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            lo, hi = max(start - position, 0), min(end - position, len(chunk))
            position += len(chunk)
            if hi > lo:
                yield chunk[lo:hi]
            if position >= end and end < total:
                break


async def _send_file(request: Request, response, file, start: int, length: int) -> None:
    loop = asyncio.get_running_loop()
    sent = await _zero_copy(request, response, file.fileno(), start, length - 1)
    file.seek(start + sent)
    remaining = length - sent
    while remaining > 0:
        chunk = await loop.run_in_executor(None, file.read, min(STREAM_CHUNK, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        await response.send(chunk)


async def _zero_copy(request: Request, response, file_fd: int, offset: int, count: int) -> int:
    """Send ``count`` bytes of the file from ``offset`` straight from the page cache to the
    socket, in a thread; returns how many were sent (0 where not possible:
    TLS, a test transport, a small file, a header still in the send buffer).

    Sanic sends a response's header with its first body bytes, so the header
    is sent on its own first.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket")
    if count < SENDFILE_MIN or sock is None or transport.get_extra_info("sslcontext"):
        return 0
    await response.send(b"", end_stream=False)
    http = request.stream
    if transport.get_write_buffer_size() or not hasattr(http, SANIC_BYTES_LEFT):
        return 0
    owned = _OwnedDescriptors(sock.fileno(), file_fd)
    try:
        sent = await asyncio.get_running_loop().run_in_executor(None, owned.sendfile, offset, count)
    except BaseException:  # cancelled, or the job refused: the copies are closed unless the thread has them
        owned.abandon()
        raise
    setattr(http, SANIC_BYTES_LEFT, getattr(http, SANIC_BYTES_LEFT) - sent)
    return sent


class _OwnedDescriptors:
    """Copies of the socket's and the file's descriptors, the sending thread's own.

    A request cancelled mid-send (its client gone) closes its file and its
    connection while the thread may still be in ``sendfile``: with the raw
    numbers, a number reused meanwhile (the next file opened, the next
    connection accepted) would have the thread send one buffer's bytes on
    another client's connection.  The copies keep the thread on what it
    started with (and a tier file's lock, which keeps the evictor off it, for
    as long), and are closed by whichever comes last: the thread's end, or
    the cancellation of a send that never started."""

    def __init__(self, sock_fd: int, file_fd: int):
        sock_copy = os.dup(sock_fd)
        try:
            self.fds = (sock_copy, os.dup(file_fd))
        except OSError:
            os.close(sock_copy)
            raise
        self._claim = threading.Lock()
        self._started = self._abandoned = False

    def sendfile(self, offset: int, count: int) -> int:
        with self._claim:
            if self._abandoned:
                return 0
            self._started = True
        try:
            return _sendfile_blocking(*self.fds, offset, count)
        finally:
            self._close()

    def abandon(self) -> None:
        with self._claim:
            if self._started:
                return  # the thread closes them when it is done
            self._abandoned = True
        self._close()

    def _close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _sendfile_blocking(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """os.sendfile on the event loop's non-blocking socket, waiting (bounded)
    whenever the socket buffer is full."""
    sent = 0
    writable = select.poll()  # not select.select: it takes no descriptor past 1023
    writable.register(sock_fd, select.POLLOUT)
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not writable.poll(SEND_STALL_TIMEOUT * 1000):
                raise ConnectionResetError("client stopped reading") from None
            continue
        if n == 0:
            break
        sent += n
    return sent
