"""A lean S3 client on the event loop's own thread, for the calls a request makes.

obstore runs each call on a thread of its own (tokio) and hands the result back to
the event loop: for a GET of 1 KiB from SeaweedFS that hand-over cost the caller
about 0.2 ms of CPU, five times what this client costs (0.04 ms; both measured at
concurrency 32 and 128 in one process against one SeaweedFS, 3,000 GETs each).
A small miss or a small PUT is one such call, so this client makes them: a GET of
a range (an object's first 64 MiB, all of any object read whole; cut off at the
answer's headers when they say the object is longer) and a conditional PUT
(``If-None-Match: *``) of a body already in memory.  A long body goes into the
caller's buffer as it arrives (a :class:`Receiver`), which hashes it meanwhile.
Everything else (HEADs, listings, multipart uploads, streamed reads) stays with obstore.

It speaks HTTP/1.1 over plain TCP with keep-alive connections (httptools, already
Sanic's parser, reads the answers) and signs with AWS Signature Version 4 from
static credentials.  :func:`for_endpoint` says when it applies: an ``http://``
endpoint (an object store inside the cluster: SeaweedFS, MinIO, Ceph RGW), static
credentials, no proxy and no ``AWS_*`` setting that only obstore follows
(:data:`LEAN_AWS_VARIABLES` are those it follows); otherwise every call goes through obstore.

Failures are as obstore's: a bounded connect time, an answer given up when no byte of
it came for ANSWER_TIMEOUT or the whole took longer than that plus its length at
SLOWEST_RATE (10 s for a small answer, 43 s for 64 MiB: under Sanic's response
timeout), idempotent calls (both
of these are: a repeated conditional PUT answers "exists") retried with backoff on a
lost connection or a 5xx (at once on a kept-alive connection the store had closed),
a GET's 404 as :class:`FileNotFoundError`, "exists" as :class:`FileExistsError`,
anything else as :class:`S3Error` (an :class:`OSError`).  A call that ends without its
whole answer aborts its connection, so that no late answer reaches another call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.parse
from typing import Protocol

import httptools

from .s3uploads import EMPTY_SHA256, Signer, quote_path

CONNECT_TIMEOUT = 3.0
ANSWER_TIMEOUT = 10.0  # one attempt: no byte for this long, or no whole answer in this plus its length at:
SLOWEST_RATE = 2_000_000  # bytes/s
RETRIES = 3
RETRY_BUDGET = 10.0  # no new attempt that would start later than this after the first
BACKOFF = (0.05, 2.0)  # first wait, longest wait (doubling)
IDLE_CONNECTIONS = 256  # kept open for the next calls; more are closed after their answer
RETRIED_STATUS = frozenset({409, 429, 500, 502, 503, 504})  # 409: a concurrent conditional write (AWS)
ERROR_BODY = 64 << 10  # the most of an error answer kept, for its message
READ_SIZE = 256 << 10  # bytes read at once into a client's scratch buffer (as uvloop reads)
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
# The AWS_* variables this client follows as obstore does (AWS_ALLOW_HTTP and AWS_CA_BUNDLE:
# it only speaks http://), and those obstore does not read (the AWS CLI's, the shared files').
LEAN_AWS_VARIABLES = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_CA_BUNDLE",
    "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_OUTPUT", "AWS_PAGER",
})


class S3Error(OSError):
    """The object store failed or refused a call; ``status`` 0: no answer."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class _Lost(Exception):
    """The connection ended or timed out before the whole answer: worth another attempt.
    ``stale``: a kept-alive connection that ended before any of the answer came (the store
    closed it while idle), retried at once."""

    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale


class _Unreadable(Exception):
    """The store's answer was not HTTP/1.1 as asked for."""


class Receiver(Protocol):
    """Where a GET's body goes as it arrives, instead of into the answer's pieces (then
    joined): the caller may work on what came while the rest comes (hash it).  An
    exception from either method ends the call with it, unchanged and not tried again."""

    def begin(self, length: int) -> memoryview | None:
        """A buffer of ``length`` bytes for a successful answer's body, or None (not worth
        it: the body is collected as usual).  Called again if the call is tried again."""

    def arrived(self, end: int) -> None:
        """The body's bytes up to ``end`` are in the buffer."""


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; one call at a time.  Every way a call ends without its
    whole answer aborts the connection: an answer still on its way must reach no other call.

    What arrives is read into ``scratch`` and parsed there (the client's connections share
    it: each read is parsed before the next), except the rest of a body a receiver took,
    which is read straight into the receiver's buffer but for its last 128 KiB (see
    :meth:`get_buffer`): for 16 MiB from SeaweedFS, 6.1 ms of the client's CPU against
    11.8 ms through the parser's copies (medians of 14)."""

    def __init__(self, scratch: bytearray | None = None) -> None:
        self.scratch = memoryview(bytearray(READ_SIZE) if scratch is None else scratch)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.generation = 0  # the client's, when this connection was made
        self.calls = 0
        self.last_byte = 0.0  # time.monotonic() of the connection's last read
        self.reusable = True
        self._reset(0)

    def _reset(self, limit: int, receiver: Receiver | None = None, cut_longer: bool = False) -> None:
        self.limit = limit
        self.receiver = receiver
        self.into: memoryview | None = None  # the receiver's buffer, once it took the body
        self.direct = False  # the rest of the body is read into ``into``, not parsed
        self.straight = False  # the last read went straight into ``into``
        self.cut_longer = cut_longer
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.interim = False  # a 1xx answer, which a final one follows
        self.body: list[bytes] = []
        self.received = 0
        self.content_range: bytes | None = None

    # --------------------------------------------------------- the call
    def ask(self, request: bytes, limit: int, receiver: Receiver | None = None,
            cut_longer: bool = False) -> asyncio.Future:
        """Send ``request``; a future of (status, body, Content-Range), body None if longer
        than ``limit`` (an error answer's body: longer than ERROR_BODY), or if ``cut_longer``
        and the answer is a range of an object longer than ``limit``."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.calls += 1
        self._reset(limit, receiver, cut_longer)
        try:
            self.transport.write(request)
        except RuntimeError as exc:  # uvloop: closed under us, its connection_lost not yet run
            self.reusable, self.waiter = False, None
            raise _Lost(f"the connection ended: {exc}", stale=self.calls > 1) from None
        return self.waiter

    def close(self) -> None:
        """Abort: nothing more is sent or read (a close would wait for a stalled store to
        take what is buffered)."""
        self.reusable, self.direct = False, False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def give_up(self, why: str) -> None:
        self.close()
        self._answer(exc=_Lost(why))

    def _answer(self, result=None, exc: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(result)

    # ---------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        """The receiver's buffer, but for the body's last bytes (half of READ_SIZE): those
        come through ``scratch``, where a read has room for whatever follows the body
        (bytes the store should not have sent: they end the connection, as parsed ones do)."""
        self.straight = False
        if self.direct and self.into is not None:
            end = len(self.into) - READ_SIZE // 2
            if self.received < end:
                self.straight = True
                return self.into[self.received:end]
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.last_byte = time.monotonic()
        data = self.scratch[:nbytes]
        if self.direct:
            data = self._read_into(nbytes)
            if not data:
                return
        if self.waiter is None:  # an answer nobody asked for: the connection is out of step
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.close()
            self._answer(exc=_Unreadable(str(exc) or type(exc).__name__))
            return
        self.direct = self.into is not None and self.waiter is not None  # a body under way, taken

    def _read_into(self, nbytes: int) -> memoryview:
        """``nbytes`` more of the body were read (into the receiver's buffer, or into
        ``scratch``: then copied there); at its end, the answer is complete (and the
        parser, which did not see the body, begins anew).  What came after the body."""
        if self.straight:
            taken, after = nbytes, self.scratch[:0]
        else:
            taken = min(nbytes, len(self.into) - self.received)
            self.into[self.received:self.received + taken] = self.scratch[:taken]
            after = self.scratch[taken:nbytes]
        self.received += taken
        self._arrived()
        if self.received == len(self.into) and self.waiter is not None:
            self.direct = False
            self.parser = httptools.HttpResponseParser(self)
            self.on_message_complete()
        return after

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is None:
            return
        if exc is None and self.status >= 300 and self.length is None and not self.chunked:
            self._answer(self._result())  # an error's message, whose end is the connection's
            return  # (a 2xx so framed could be cut short unseen: lost, below, and retried)
        stale = self.calls > 1 and self.status == 0
        self._answer(exc=_Lost(f"the connection ended{f': {exc}' if exc else ''}", stale))

    # ----------------------------------------------------- httptools calls
    def on_message_begin(self) -> None:
        if self.waiter is None:
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        elif name == b"content-range":
            self.content_range = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # interim (100 Continue, unasked for): the final answer follows
            self.interim = True
            self.length, self.chunked = None, False
            return
        self.reusable = self.parser.should_keep_alive()
        if self.length is not None and self.length > self._limit() or self._of_a_longer_object():
            self._too_long()
        elif self.receiver is not None and 200 <= self.status < 300 and self.length is not None:
            try:
                self.into = self.receiver.begin(self.length)
                if self.into is not None and len(self.into) != self.length:
                    raise ValueError(f"a receiver's buffer of {len(self.into)} bytes for {self.length}")
            except Exception as exc:
                self._receiver_failed(exc)

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return
        start = self.received
        self.received += len(body)
        if self.received > self._limit():  # chunked, or till the end: cut off at the limit too
            self._too_long()
            return
        if self.into is not None:  # no further than its length: httptools ends the body there
            self.into[start:self.received] = body
            self._arrived()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim, self.status, self.content_range = False, 0, None
            return
        if self.waiter is None:
            return
        self._answer(self._result())
        if not self.reusable:
            self.close()

    # ------------------------------------------------------------- inside
    def _limit(self) -> int:
        return self.limit if self.status < 300 else ERROR_BODY

    def _of_a_longer_object(self) -> bool:
        """A range of an object longer than the limit, or of one whose size it does not say."""
        if not self.cut_longer or self.status != 206:
            return False
        size = _object_size(self.content_range)
        return size is None or size > self.limit

    def _arrived(self) -> None:
        try:
            self.receiver.arrived(self.received)
        except Exception as exc:
            self._receiver_failed(exc)

    def _receiver_failed(self, exc: Exception) -> None:
        """The caller's own failure (no memory for the body): the call's, as it is, not an
        unreadable answer of the store's, and not tried again."""
        self.close()
        self._answer(exc=exc)

    def _too_long(self) -> None:
        """Too long to read for this call: not read, and the connection dropped."""
        self.close()
        self._answer((self.status, None, self.content_range))

    def _result(self) -> tuple[int, bytes | bytearray, bytes | None]:
        body = self.into.obj if self.into is not None else b"".join(self.body)
        self.body, self.into, self.receiver, self.direct = [], None, None, False  # an idle connection holds no answer
        return self.status, body, self.content_range

class LeanClient:
    """GETs of a range and conditional PUTs on one bucket, over keep-alive connections."""

    def __init__(self, signer: Signer, bucket: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 answer_timeout: float = ANSWER_TIMEOUT, retry_budget: float = RETRY_BUDGET):
        url = urllib.parse.urlsplit(signer.endpoint)
        self.signer = signer
        self.host = url.hostname or "localhost"
        self.port = url.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        self.host_header = host if url.port is None else f"{host}:{url.port}"
        self.base = quote_path(f"{urllib.parse.unquote(url.path).rstrip('/')}/{bucket}/")
        self.where = f"{signer.endpoint}/{bucket}"
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self.retry_budget = retry_budget
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0  # a close() ends every connection made before it, idle or busy
        self._scratch = bytearray(READ_SIZE)  # where its connections read (one thread: one at a time)

    async def get_range(self, key: str, start: int, end: int, receiver: Receiver | None = None,
                        cut_longer: bool = False) -> tuple[int, bytes | bytearray | None]:
        """(status, body) of a GET of bytes ``start`` to ``end`` (exclusive): 206 with the
        range (shorter at the object's end; its body None if ``cut_longer`` and the object
        goes on past ``end``, cut off at the answer's headers); 200 if the store sent the
        whole object instead (its body None if longer than the range); 416 (body b"") if
        the object ends before ``start``.  FileNotFoundError if there is no such object.
        A ``receiver`` may take the body as it arrives (then it is the receiver's buffer)."""
        status, body, content_range = await self._call("GET", key, {"range": f"bytes={start}-{end - 1}"}, b"",
                                                       end - start, receiver=receiver, cut_longer=cut_longer)
        if status == 416:
            return 416, b""
        if status == 206:
            if body is None and cut_longer:
                return status, None
            cut_short = cut_longer and body is not None and _object_size(content_range) != start + len(body)
            if body is None or not _is_range(content_range, start, len(body)) or cut_short:
                size = f"{len(body)} bytes" if body is not None else "longer than that"
                raise S3Error(f"GET of {self.where}/{key}: the answer to bytes={start}-{end - 1} was {size} "
                              f"(Content-Range: {(content_range or b'none').decode(errors='replace')})", status)
            return status, body
        if status == 200:
            return status, body
        raise S3Error(f"GET of {self.where}/{key}: an unexpected answer, HTTP {status}", status)

    async def put_if_absent(self, key: str, data: bytes, payload_sha256: str) -> None:
        """PUT ``data`` unless the object exists: FileExistsError if it does (412)."""
        await self._call("PUT", key, {"content-length": str(len(data)), "if-none-match": "*"}, data,
                         ERROR_BODY, payload_sha256)

    def close(self) -> None:
        """Close the idle connections; those of calls under way close when their call ends."""
        self._generation += 1
        self._drop_idle()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                connection.close()
            except RuntimeError:  # its event loop is closed: end the TCP connection at least
                try:
                    connection.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass

    # ------------------------------------------------------------- inside
    async def _call(self, method: str, key: str, headers: dict[str, str], body: bytes, limit: int,
                    payload_sha256: str = EMPTY_SHA256, **answer) -> tuple[int, bytes | None, bytes | None]:
        path = self.base + quote_path(key)
        started = time.monotonic()
        wait = BACKOFF[0]
        for attempt in range(RETRIES + 1):
            try:
                result = await self._attempt(method, path, headers, body, limit, payload_sha256, **answer)
            except _Unreadable as exc:
                raise S3Error(f"{method} of {self.where}/{key}: an unreadable answer: {exc}") from None
            except _Lost as exc:
                if exc.stale and attempt == 0:
                    self._drop_idle()  # the store closed it while idle, and likely its fellows:
                    continue  # at once, on a new connection
                if attempt == RETRIES or time.monotonic() + wait - started > self.retry_budget:
                    raise S3Error(f"{method} of {self.where}/{key}: {exc}") from None
            else:
                if (result[0] not in RETRIED_STATUS or attempt == RETRIES
                        or time.monotonic() + wait - started > self.retry_budget):
                    return self._judged(method, key, result)
            await asyncio.sleep(wait)
            wait = min(wait * 2, BACKOFF[1])
        raise AssertionError("unreachable")

    def _judged(self, method: str, key: str, answer: tuple) -> tuple[int, bytes | None, bytes | None]:
        status, body = answer[0], answer[1]
        if 200 <= status < 300 or status == 416:
            return answer
        text = (body or b"").decode(errors="replace")
        if status == 404 and method == "GET" and "<Code>NoSuchBucket</Code>" not in text:
            raise FileNotFoundError(f"{self.where}/{key}")
        if status == 412:
            raise FileExistsError(f"{self.where}/{key}")
        detail = " ".join(text.split())[:300]
        raise S3Error(f"{method} of {self.where}/{key}: HTTP {status}{f' {detail}' if detail else ''}", status)

    async def _attempt(self, method: str, path: str, headers: dict[str, str], body: bytes, limit: int,
                       payload_sha256: str, **answer_options) -> tuple[int, bytes | None, bytes | None]:
        connection = await self._connection()
        signed = self.signer.signed(method, path, "", {"host": self.host_header, **headers}, payload_sha256)
        head = "".join(f"{name}: {value}\r\n" for name, value in signed.items())
        answer = connection.ask(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body, limit,
                                **answer_options)
        watch = _Watch(connection, self.answer_timeout, limit)
        try:
            result = await answer
        except BaseException:  # lost, timed out, or the caller cancelled: its answer may still come
            connection.close()
            raise
        finally:
            watch.cancel()
        if (connection.reusable and connection.generation == self._generation
                and len(self._idle) < IDLE_CONNECTIONS):
            self._idle.append(connection)
        else:
            connection.close()
        return result

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to the loop that made them
            self.close()
            self._loop = loop
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable and not connection.transport.is_closing():
                return connection
        generation = self._generation
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self._scratch), self.host, self.port),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise _Lost(f"cannot connect to {self.host_header}: {exc or 'timed out'}") from None
        connection.generation = generation
        return connection


class _Watch:
    """Gives a call up when no byte of its answer came for ``idle`` seconds, or when the
    whole answer took longer than ``idle`` plus its length at SLOWEST_RATE (its length:
    the answer's Content-Length once its headers came, till then the call's ``limit``).
    A long answer that keeps coming is not cut off at the first bound, a short one that
    trickles is not kept for a long one's second."""

    def __init__(self, connection: _Connection, idle: float, limit: int):
        self.connection, self.idle, self.limit = connection, idle, limit
        self.loop = asyncio.get_running_loop()
        self.started = connection.last_byte = time.monotonic()
        self.timer = self.loop.call_later(idle, self._check)

    def _whole(self) -> float:
        length = self.connection.length if self.connection.status else None
        if length is None or length > self.limit:
            length = self.limit
        return self.idle + length / SLOWEST_RATE

    def _check(self) -> None:
        now = time.monotonic()
        whole = self._whole()
        deadline = self.started + whole
        if now - self.connection.last_byte >= self.idle - 0.001:
            self.connection.give_up(f"no byte of the answer in {self.idle:g} s")
        elif now >= deadline - 0.001:
            self.connection.give_up(f"no whole answer in {whole:.3g} s")
        else:
            self.timer = self.loop.call_later(min(self.connection.last_byte + self.idle, deadline) - now, self._check)

    def cancel(self) -> None:
        self.timer.cancel()


def _is_range(content_range: bytes | None, start: int, length: int) -> bool:
    """Whether ``Content-Range: bytes FIRST-LAST/SIZE`` says the ``length`` bytes from ``start``."""
    if content_range is None or not content_range.startswith(b"bytes "):
        return False
    span = content_range[6:].split(b"/", 1)[0]
    first, _, last = span.partition(b"-")
    try:
        return int(first) == start and int(last) - int(first) + 1 == length
    except ValueError:
        return False


def _object_size(content_range: bytes | None) -> int | None:
    """The object's size that ``Content-Range: bytes FIRST-LAST/SIZE`` states, None if none."""
    size = (content_range or b"").rpartition(b"/")[2]
    return int(size) if size.isdigit() else None


def for_endpoint(bucket: str, endpoint: str | None, config: dict | None = None) -> LeanClient | None:
    """The lean client for ``bucket`` where it applies (see the module's docstring), else None."""
    signer = Signer.from_settings(bucket, endpoint, config or {})
    if not signer.endpoint.startswith("http://") or not signer.access_key_id or not signer.secret_access_key:
        return None
    if any(os.environ.get(name) for name in PROXY_VARIABLES) or obstore_settings_beyond_lean(os.environ):
        return None
    return LeanClient(signer, bucket)


def obstore_settings_beyond_lean(environ) -> list[str]:
    """The ``AWS_*`` variables set that this client does not follow (obstore reads many:
    server-side encryption, request payer, virtual-hosted style, ``AWS_TOKEN``...): with any
    of them, every call goes through obstore, which follows them all."""
    return sorted(name for name, value in environ.items()
                  if name.startswith("AWS_") and value and name not in LEAN_AWS_VARIABLES)
