"""The hot path: ``GET``/``HEAD /<checksum>`` answered inside Sanic's protocol.

Sanic parses HTTP/1 and builds responses in pure Python, so no handler can
answer a small GET at nginx's speed.  :class:`HotPathProtocol`, given to Sanic
as its protocol class, answers the requests it fully understands in
``data_received`` itself, when :meth:`Storage.peek <hashserver.storage.Storage.peek>`
can answer them without waiting (a small plain buffer, held in memory or read
and verified there and then as the regular route would read it, or one
certainly absent), and hands every other byte to Sanic unchanged.  Where
peek sends a GET to :meth:`Storage.fetch <hashserver.storage.Storage.fetch>`
(a small miss of a bucket's local tier), its answer is written once the fetch
is done, from a task of its own; the bytes after that request wait for it
(held, up to :data:`HELD_BYTES`; then reading pauses), and a fetch that cannot
answer hands the request, and all after it, to Sanic.  Where the
directory watch vouches for a buffer's directory, a held buffer and an
absence are decided with no system call but the drain of the watch
(:meth:`DirectoryStore.peek <hashserver.directory.DirectoryStore.peek>`).  Its answers are those
of the regular route byte for byte: their header blocks are rendered once, at a
worker's first connection, from the very response objects of
:mod:`hashserver.responses` and :mod:`hashserver.caching`
(``tests/test_hotpath.py`` compares both paths over real sockets).

A request is served here only when it is complete, is ``GET`` or ``HEAD`` of
``/`` and 64 hex digits over ``HTTP/1.1``, and carries only headers known not to
change the answer (:data:`IGNORED_HEADERS`, ``Connection: keep-alive``, an
``Accept-Encoding`` naming neither zstd nor gzip); anything else (a body,
``Expect``, ``Upgrade``, ``Authorization``, a conditional or a range, HTTP/1.0,
``Connection: close``, malformed or unknown headers) goes to Sanic, and so does
everything after it until Sanic is idle again.

Sanic internals used (checked against Sanic 25.12.1):

- ``HttpProtocol.recv_buffer``, shared with ``sanic.http.Http``: bytes for
  Sanic are appended (``HttpProtocol.data_received``), never replaced;
- ``Http.stage``, ``Http.request_body``, ``Http.keep_alive`` and the
  ``_http``/``_task`` slots of the protocol: an answer is written directly only
  when Sanic has nothing buffered, is idle, is not draining the rest of a
  request body it answered early (those bytes would be parsed as requests:
  request smuggling) and keeps the connection alive; otherwise responses would
  come out of order;
- ``_can_write`` (cleared by ``pause_writing``): nothing is answered while the
  client is not reading, so a client that pipelines without reading cannot
  grow the write buffer without bound;
- ``_time``, the keep-alive clock, and ``check_timeouts`` (a fetch under way
  counts as activity: its own timeouts bound it);
- ``close_if_idle``, which a stopping server calls on each connection (one
  whose GET is being fetched is answered, then closed), and ``connection_lost``
  (a fetch whose client is gone is cancelled, as Sanic cancels a handler);
- how ``Http.http1_response_header`` writes a complete response: the
  response's headers in order, ``content-length`` set, ``connection``, then
  ``content-type`` if missing (no ``Date``: Sanic 25.12.1 sends none; no
  ``alt-svc``: removed by Sanic's touch-up when only HTTP/1.1 is served).

What the regular pipeline does for such a request happens here too: the
inactivity stamp of ``--timeout`` (:func:`hashserver.routes.note_activity`),
Sanic's request count, and, where the worker has metrics, the request counts
(plain running totals, :meth:`HotPath.totals`, folded in by
``Metrics.count_elsewhere``).  A worker whose app has any other middleware or
HTTP signal handler, Sanic's access log, keep-alive turned off, or reads
guarded by a token, runs with the hot path off (and says so once in its log).
"""

from __future__ import annotations

import asyncio
import re
import time
from binascii import unhexlify
from time import perf_counter

from sanic import Sanic
from sanic.compat import Header
from sanic.helpers import STATUS_CODES
from sanic.http import Stage
from sanic.log import error_logger, logger
from sanic.response import HTTPResponse
from sanic.server.protocols.http_protocol import HttpProtocol

from . import caching, responses
from .routes import known_condition
from .storage import CorruptBuffer, Fast, Storage, StorageUnavailable

__all__ = ["HotPath", "HotPathProtocol"]

# Until the settings table has a ``hot_path`` row, the switch is this variable.
MAX_HEAD = 4096  # a longer request head is Sanic's (it has its own limit)
FLUSH_BYTES = 65536  # Sanic's write buffer high-water mark: write, then check for a pause
HELD_BYTES = 65536  # received while a GET is fetched: beyond this, reading pauses until it is answered
REQUEST_STARTS = (b"GET /", b"HEAD /")

# Request headers that cannot change the answer of GET /<checksum>.
IGNORED_HEADERS = (
    "host", "user-agent", "accept", "accept-language", "origin", "referer", "cache-control", "pragma",
    "dnt", "priority", "sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user",
    "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
)
_HEADER = (
    rb"(?:(?i:" + "|".join(IGNORED_HEADERS).encode() + rb"):[^\r\n]*\r\n"
    rb"|(?i:connection):[ \t]*(?i:keep-alive)\r\n"
    rb"|(?i:accept-encoding):(?![^\r\n]*(?i:gzip|zstd))[^\r\n]*\r\n)"
)
# Method and version are case-sensitive, as Sanic's router and parser take them.
SIMPLE_REQUEST = re.compile(rb"(GET|HEAD) /([0-9a-fA-F]{64}) HTTP/1\.1\r\n" + _HEADER + rb"*\r\n")

# Middleware whose work the hot path does itself: the --timeout stamp, and (when
# the worker has metrics) the request counts, through HotPath.totals.
REPLICATED = frozenset({"hashserver.routes.note_activity"})
METRICS_MIDDLEWARE = frozenset({"hashserver.metrics.stamp_request", "hashserver.metrics.record_response"})

_CHECKSUM_MARK = "\x00checksum\x00"
_LENGTH_MARK = "\x00length\x00"


def hot_path_wanted(config) -> bool:
    """The ``hot_path`` setting (``--hot-path``/``--no-hot-path``).  Off whenever
    reads need a token: the hot path checks none."""
    return config.hot_path and config.read_token_file is None


def render_head(response: HTTPResponse, length: int | str) -> bytes:
    """The header block Sanic writes for this complete response on a
    keep-alive connection (``Http.http1_response_header`` and
    ``format_http1_response``), with ``length`` as its Content-Length."""
    headers = Header(response.headers)
    if "date" in headers:
        raise ValueError("a Date header: the hot path would send it frozen")
    headers["content-length"] = length
    headers["connection"] = "keep-alive"
    headers.setdefault("content-type", response.content_type)
    lines = [b"HTTP/1.1 %d %b\r\n" % (response.status, STATUS_CODES[response.status])]
    lines += [b"%b: %b\r\n" % (name.encode("ascii"), str(value).encode(errors="surrogateescape"))
              for name, value in headers.items()]
    return b"".join(lines) + b"\r\n"


def buffer_template(head: bool) -> bytes:
    """The header block of a buffer's 200 as the regular route sends it, to be
    completed with ``% (checksum_hex, length)``."""
    etag = caching.entity_tag(_CHECKSUM_MARK, "")
    headers = caching.representation_headers(etag, False, None)
    response = responses.head_only(0, headers) if head else responses.buffer(b"", headers)
    rendered = render_head(response, _LENGTH_MARK).replace(b"%", b"%%")
    checksum_at, length_at = rendered.find(_CHECKSUM_MARK.encode()), rendered.find(_LENGTH_MARK.encode())
    if not 0 <= checksum_at < length_at:
        raise ValueError("the hot path expects one ETag before the Content-Length")
    return rendered.replace(_CHECKSUM_MARK.encode(), b"%b").replace(_LENGTH_MARK.encode(), b"%d")


def not_found_answer(head: bool) -> bytes:
    response = responses.not_found()
    return render_head(response, len(response.body)) + (b"" if head else response.body)


def bypassed(app: Sanic) -> list[str]:
    """What the regular pipeline would run for GET /<checksum> that the hot
    path does not: middleware other than what it does itself, HTTP signal
    handlers, Sanic's access log, a connection closed after each answer."""
    replicated = REPLICATED | (METRICS_MIDDLEWARE if getattr(app.ctx, "metrics", None) is not None else set())
    chains = [app.request_middleware, app.response_middleware]
    chains += [chain for name, chain in {**app.named_request_middleware, **app.named_response_middleware}.items()
               if name.endswith(".get_buffer")]
    names = [f"{getattr(m.func, '__module__', '')}.{getattr(m.func, '__name__', repr(m.func))}"
             for chain in chains for m in chain]
    found = [name for name in names if name not in replicated]
    found += [f"signal {signal.name}" for signal in app.signal_router.routes if signal.name.startswith("http.")]
    if app.config.ACCESS_LOG:
        found.append("Sanic's access log")
    if not app.config.KEEP_ALIVE:
        found.append("KEEP_ALIVE off")
    return found


class HotPath:
    """One worker's hot path: its storage, the activity stamp, the ready-made
    answers, and running totals of what it answered (for metrics)."""

    _of_app: dict[str, HotPath | None] = {}

    def __init__(self, storage: Storage, stamp=None):
        self.storage = storage
        self.stamp = stamp  # multiprocessing RawValue of --timeout, or None
        self.get_template, self.head_template = buffer_template(False), buffer_template(True)
        self.get_absent, self.head_absent = not_found_answer(False), not_found_answer(True)
        self.absent_body_length = len(responses.not_found().body)
        # (route, status) -> [requests, body bytes sent, seconds spent]
        self.counts = {key: [0, 0, 0.0] for key in (("get", 200), ("get", 404), ("head", 200), ("head", 404),
                                                    ("get", 400), ("get", 503))}

    @classmethod
    def of(cls, app: Sanic) -> HotPath | None:
        """This worker's hot path, None when off; decided at its first connection."""
        if app.name not in cls._of_app:
            cls._of_app[app.name] = cls._for(app)
        return cls._of_app[app.name]

    @classmethod
    def _for(cls, app: Sanic) -> HotPath | None:
        ctx = app.ctx
        if ctx.storage is None or not hot_path_wanted(ctx.config):
            logger.info("hashserver: hot path off")
            return None
        if ctx.config.access_log:
            logger.info("hashserver: hot path off (--access-log: every request goes through the route that logs it)")
            return None
        missing = bypassed(app)
        if missing:
            logger.warning("hashserver: hot path off, it would bypass %s", ", ".join(missing))
            return None
        shared = ctx.shared
        try:
            hot = cls(ctx.storage, shared.last_request if shared is not None else None)
        except Exception as exc:  # answers it cannot reproduce: the regular route gives them
            logger.warning("hashserver: hot path off: %s", exc)
            return None
        logger.info("hashserver: hot path on (GET/HEAD /<checksum> of small plain buffers, and 404s)")
        if getattr(ctx, "metrics", None) is not None:
            ctx.metrics.count_elsewhere(hot.totals)
        return hot

    def answer(self, method: bytes, checksum_hex: bytes) -> bytes | Fast | None:
        """The whole answer; :attr:`Fast.FETCH` where :meth:`fetched` gives it; None
        where the regular route must answer (a HEAD the storage would fetch for
        included: the regular route's looks up the object without reading it)."""
        started = perf_counter()
        found = self.storage.peek(unhexlify(checksum_hex))
        if found is Fast.REGULAR:
            return None
        if found is Fast.FETCH:
            return found if method == b"GET" else None
        return self._complete(method, checksum_hex, found, started)

    async def fetched(self, checksum_hex: bytes) -> bytes | None:
        """The whole answer to a GET that :meth:`answer` left to :meth:`Storage.fetch`,
        or None where the regular route must answer."""
        started = perf_counter()
        try:
            found = await self.storage.fetch(unhexlify(checksum_hex))
        except (CorruptBuffer, StorageUnavailable) as exc:
            response = known_condition(exc, "GET", "/" + checksum_hex.decode())
            self._count(("get", response.status), len(response.body), started)
            return render_head(response, len(response.body)) + response.body
        except Exception:
            error_logger.exception("hashserver: hot path fetch failed; the regular route answers")
            return None
        return None if isinstance(found, Fast) else self._complete(b"GET", checksum_hex, found, started)

    def _complete(self, method: bytes, checksum_hex: bytes, found: bytes | Fast, started: float) -> bytes:
        if method == b"HEAD":
            if found is Fast.ABSENT:
                answer, key, sent = self.head_absent, ("head", 404), 0
            else:
                answer, key, sent = self.head_template % (checksum_hex.lower(), len(found)), ("head", 200), 0
        elif found is Fast.ABSENT:
            answer, key, sent = self.get_absent, ("get", 404), self.absent_body_length
        else:
            answer = self.get_template % (checksum_hex.lower(), len(found)) + found
            key, sent = ("get", 200), len(found)
        self._count(key, sent, started)
        return answer

    def _count(self, key: tuple[str, int], sent: int, started: float) -> None:
        counts = self.counts[key]
        counts[0] += 1
        counts[1] += sent
        counts[2] += perf_counter() - started

    def activity(self, now: float) -> None:
        if self.stamp is not None:
            self.stamp.value = now

    def totals(self) -> list:
        """Running totals by route and status, for ``Metrics.count_elsewhere``."""
        from .metrics import Totals  # only where metrics are on: prometheus_client

        return [Totals(route, status, *counts) for (route, status), counts in self.counts.items()]


class HotPathProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol, answering simple requests for small
    buffers and absent ones in ``data_received`` (see the module's docstring)."""

    __slots__ = ("_hot", "_pending", "_fetch", "_held", "_fetched_length", "_close_after_fetch", "_handed_over")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hot = HotPath.of(self.app)
        self._pending = b""  # the start of a request split across reads, not yet Sanic's
        self._fetch: asyncio.Task | None = None  # a GET answered once its buffer is fetched
        self._held = b""  # while it is: the bytes from that request on (everything after waits for its answer)
        self._fetched_length = 0  # that request's length
        self._close_after_fetch = False  # the server stops: close once the fetched GET is answered
        self._handed_over = False  # ... or once Sanic has answered it, when the fetch handed it over

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception:
            error_logger.exception("hashserver: hot path failed; closing the connection")
            self.close()

    def _receive(self, data: bytes) -> None:
        if self._fetch is not None:
            return self._hold(data)
        if self._pending:
            data, self._pending = self._pending + data, b""
        if not data or self._hot is None or not self._sanic_idle():
            return super().data_received(data)
        self._time = time.monotonic()
        position = self._serve(data)
        if position == len(data):
            return
        if self._may_complete(data, position):
            self._pending = data[position:]
            return
        super().data_received(data[position:])

    def _sanic_idle(self) -> bool:
        """Whether an answer written now comes right after everything Sanic has
        written, and no byte received is Sanic's to parse."""
        if self.recv_buffer or not self._can_write.is_set() or self.transport.is_closing():
            return False
        http = getattr(self, "_http", None)
        if http is None:
            return self._task is not None  # Sanic's connection task has not begun
        return http.stage is Stage.IDLE and not getattr(http, "request_body", None) and http.keep_alive

    def _serve(self, data: bytes) -> int:
        """Answer the complete simple requests at the start of ``data``, in
        batches while the client keeps reading; returns where the first other
        one (or an incomplete one) begins."""
        position = 0
        while position < len(data) and self._can_write.is_set():
            end = self._answer_batch(data, position)
            if end == position:
                break
            position = end
        return position

    def _answer_batch(self, data: bytes, position: int) -> int:
        """Answer requests from ``position`` on, up to a write buffer's worth,
        in one write; returns where it stopped."""
        hot, out, size = self._hot, [], 0
        while position < len(data) and size < FLUSH_BYTES:
            match = SIMPLE_REQUEST.match(data, position, position + MAX_HEAD)
            answer = match and self._answer(hot, match[1], match[2])
            if answer is Fast.FETCH:
                self._start_fetch(match[2], data[position:], match.end() - position)
                position = len(data)
                break
            if not answer:
                break
            out.append(answer)
            size += len(answer)
            position = match.end()
        if out:
            self.transport.write(b"".join(out))
            self.state["requests_count"] += len(out)
            hot.activity(self._time)
        return position

    @staticmethod
    def _answer(hot: HotPath, method: bytes, checksum_hex: bytes) -> bytes | None:
        try:
            return hot.answer(method, checksum_hex)
        except Exception:
            error_logger.exception("hashserver: hot path lookup failed; the regular route answers")
            return None

    def _start_fetch(self, checksum_hex: bytes, held: bytes, length: int) -> None:
        """Answer the GET at the start of ``held`` once its buffer is fetched; the
        bytes after it, and those still to come, wait for its answer."""
        self._held, self._fetched_length = held, length
        self._fetch = self.loop.create_task(self._answer_fetched(checksum_hex))

    def _hold(self, data: bytes) -> None:
        self._held += data
        if len(self._held) > HELD_BYTES:
            self.transport.pause_reading()

    async def _answer_fetched(self, checksum_hex: bytes) -> None:
        try:
            answer = await self._hot.fetched(checksum_hex)
            held, length = self._held, self._fetched_length
            self._fetch, self._held = None, b""
            if self.transport.is_closing():
                return
            self.transport.resume_reading()  # if holding paused it
            if answer is None:  # the regular route answers it, and Sanic what follows
                self._handed_over = self._close_after_fetch
                super().data_received(held)
                return
            if self._close_after_fetch:
                answer = answer.replace(b"\r\nconnection: keep-alive\r\n", b"\r\nconnection: close\r\n", 1)
            self.transport.write(answer)
            self.state["requests_count"] += 1
            self._time = time.monotonic()
            self._hot.activity(self._time)
            if self._close_after_fetch:
                self.close()
            elif len(held) > length:
                HotPathProtocol.data_received(self, held[length:])
        except Exception:
            error_logger.exception("hashserver: hot path failed; closing the connection")
            self.close()

    @property
    def answering(self) -> bool:
        """Whether a GET taken here is not answered yet: being fetched, or handed
        over to Sanic at a stop and not yet taken up by its handler."""
        if self._fetch is not None:
            return True
        http = getattr(self, "_http", None)
        return self._handed_over and http is not None and (http.stage is Stage.REQUEST or bool(self.recv_buffer))

    def close_after_answer(self) -> None:
        """The server stops: close once the request under way is answered."""
        if self._fetch is not None:
            self._close_after_fetch = True
        elif getattr(self, "_http", None) is not None:
            self._http.keep_alive = False

    def close_if_idle(self) -> bool:
        """At a stop: a connection whose GET is being fetched closes once it is answered."""
        if self._fetch is not None:
            self.close_after_answer()
            return False
        return super().close_if_idle()

    def connection_lost(self, exc) -> None:
        if self._fetch is not None:
            self._fetch.cancel()  # as Sanic cancels a handler whose connection is gone
        super().connection_lost(exc)

    @staticmethod
    def _may_complete(data: bytes, position: int) -> bool:
        """Whether the rest may be the start of a simple request still arriving."""
        rest = data[position:position + MAX_HEAD]
        if len(data) - position >= MAX_HEAD or b"\r\n\r\n" in rest:
            return False
        line_end = rest.find(b"\r\n")
        if line_end >= 0:
            return SIMPLE_REQUEST.match(rest[:line_end + 2] + b"\r\n") is not None
        return any(rest[:len(start)] == start[:len(rest)] for start in REQUEST_STARTS)

    def check_timeouts(self) -> None:
        """A request held here past Sanic's request timeout goes to Sanic, which
        answers 408 as it would have, had it held the request itself."""
        if self._pending and time.monotonic() - self._time > self.request_timeout:
            self.hand_over_pending()
        if self._fetch is not None:
            self._time = time.monotonic()  # not idle: the fetch's own timeouts bound it
        super().check_timeouts()

    def hand_over_pending(self) -> None:
        """Give Sanic the start of a request held here (Sanic then answers it, or times it out)."""
        self.recv_buffer += self._pending
        self._pending = b""
        self._data_received.set()
