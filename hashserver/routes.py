"""The HTTP handlers: parse the request, ask the storage, format the answer.

They know storage only through :mod:`hashserver.storage`.  Errors are
raised, not returned: :func:`error_response` is the one place that turns an
exception into its response, with the FastAPI server's status and body.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import aclosing
from typing import Callable
from urllib.parse import unquote

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from . import docs, responses, sending
from .bodyreader import request_body
from .checksum import InvalidChecksum, parse_checksum, parse_checksum_list
from .metrics import Metrics, metrics_handler, record_response, stamp_request
from .storage import (
    BodyStalled,
    BodyTooLarge,
    ChecksumMismatch,
    CorruptBuffer,
    DiskFull,
    Fast,
    InvalidPayload,
    Readable,
    ReadOnly,
    StillWriting,
    Storage,
    StorageUnavailable,
    Want,
)

log = logging.getLogger("hashserver")

PREFLIGHT_URIS = ("/<checksum>", "/has", "/has-now", "/buffer-length", "/healthcheck", "/promise/<checksum>")


class InvalidInput(Exception):
    """A request whose path or body is not what the route takes: the
    pydantic-shaped 400 of the FastAPI server."""

    def __init__(self, error_type: str, loc: list, msg: str, value: object):
        super().__init__(msg)
        self.error_type, self.loc, self.msg, self.value = error_type, loc, msg, value

    @classmethod
    def checksum(cls, exc: InvalidChecksum, loc: list) -> "InvalidInput":
        return cls(exc.kind, loc, str(exc), exc.value)


class Unauthorized(Exception):
    """A request without one of the tokens its route needs."""


class BatchTooLarge(Exception):
    """A batch body over the configured bound (``--max-batch``); ``announced``:
    known from its Content-Length, before any of it was read."""

    def __init__(self, max_batch: int, announced: bool = False):
        super().__init__(f"Batch too large: at most {max_batch} checksums, in a body of at most "
                         f"{batch_body_limit(max_batch)} bytes (--max-batch)")
        self.announced = announced


def batch_body_limit(max_batch: int) -> int:
    """The largest batch body: 64 hex digits, quotes, a comma and a space per checksum, and slack."""
    return 70 * max_batch + 1024


def storage_of(request: Request) -> Storage:
    return request.app.ctx.storage


_UNOBSERVED = Metrics.unobserved()


def metrics_of(request: Request) -> Metrics:
    return request.app.ctx.metrics or _UNOBSERVED


async def metrics(request: Request) -> HTTPResponse:
    """``GET /metrics``, for Prometheus (which sends a bearer token where reads need one)."""
    check_token(request, writes=False)
    return await metrics_handler(request)


def check_token(request: Request, writes: bool) -> None:
    """Raise :class:`Unauthorized` unless the request carries a token this
    route needs (a write token for writes; a read token, if any, for the rest)."""
    guard = request.app.ctx.guard
    if guard is not None and not guard.allows(writes, request.headers.get("authorization")):
        raise Unauthorized("write" if writes else "read")


def path_checksum(checksum: str) -> bytes:
    try:
        return parse_checksum(checksum)
    except InvalidChecksum as exc:
        exc.value = unquote(checksum)  # as the client meant it (percent-decoded)
        raise InvalidInput.checksum(exc, ["path", "checksum"]) from None


async def batch_body(request: Request, max_batch: int) -> bytes:
    """The body of a batch request, read no further than its bound: a body
    announced larger is refused before any of it is read."""
    limit = batch_body_limit(max_batch)
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise BatchTooLarge(max_batch, announced=True)
    body = bytearray()
    while (chunk := await request.stream.read()) is not None:
        body += chunk
        if len(body) > limit:
            raise BatchTooLarge(max_batch)
    return bytes(body)


async def checksum_batch(request: Request) -> bytes:
    """The request body as a batch of checksums (32 bytes each)."""
    check_token(request, writes=False)
    max_batch = request.app.ctx.config.max_batch
    body = await batch_body(request, max_batch)
    if not body:
        raise InvalidInput("missing", ["body"], "Field required", None)
    try:
        values = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput("json_invalid", ["body"], f"JSON decode error: {exc}",
                           body[:200].decode("utf-8", "replace")) from None
    if not isinstance(values, list):
        raise InvalidInput("list_type", ["body"], "Input should be a valid list", values)
    if len(values) > max_batch:
        raise BatchTooLarge(max_batch)
    try:
        return parse_checksum_list(values)
    except InvalidChecksum as exc:
        raise InvalidInput.checksum(exc, ["body", exc.position]) from None


def _no_constant(name: str) -> float:
    """NaN and Infinity are not JSON (and could not be echoed back as JSON)."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def accepted_codings(accept_encoding: str | None) -> frozenset[str]:
    """The content-codings an ``Accept-Encoding`` header names with q > 0.

    No header at all means the client wants the buffer itself: ``curl``
    without ``--compressed`` must see the real bytes.  ``*`` is not taken as
    naming zstd or gzip for the same reason.
    """
    codings = set()
    for item in (accept_encoding or "").split(","):
        token, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if token.strip() and q > 0:
            codings.add(token.strip().lower())
    return frozenset(codings)


async def healthcheck(request: Request) -> HTTPResponse:
    """200 while this worker can serve: not shutting down, and its storage works."""
    if getattr(request.app.ctx, "stopping", False):
        return responses.message(503, "Service unavailable: shutting down")
    problem = await storage_of(request).health()
    return responses.ok() if problem is None else responses.message(503, problem)


async def preflight(request: Request, **_) -> HTTPResponse:
    return responses.preflight()


async def has(request: Request) -> HTTPResponse:
    return responses.bool_list(await storage_of(request).has(await checksum_batch(request)))


async def has_now(request: Request) -> HTTPResponse:
    return responses.bool_list(await storage_of(request).has(await checksum_batch(request), promised=False))


async def buffer_length(request: Request) -> HTTPResponse:
    return responses.int_list(await storage_of(request).lengths(await checksum_batch(request)))


def write_target(request: Request, checksum: str, refusal: Callable[[], ReadOnly]) -> tuple[Storage, bytes]:
    """The storage and checksum of a write, once the token and the server's
    writability allow it (a read-only server refuses before the checksum is parsed)."""
    check_token(request, writes=True)
    storage = storage_of(request)
    if not storage.writable:
        raise refusal()
    return storage, path_checksum(checksum)


async def promise(request: Request, checksum: str) -> HTTPResponse:
    storage, raw = write_target(request, checksum, ReadOnly.promise)
    expires_in = await storage.promise(raw)
    return responses.json_response({"checksum": raw.hex(), "expires_in": expires_in}, 202)


async def get_buffer(request: Request, checksum: str) -> HTTPResponse | None:
    check_token(request, writes=False)
    raw = path_checksum(checksum)
    storage = storage_of(request)
    head = request.method == "HEAD"
    fast = storage.peek(raw)
    if fast is Fast.ABSENT:
        return responses.not_found()
    if isinstance(fast, bytes):
        readable = Readable(len(fast), content=fast)
    else:
        want = Want.HEADERS if head else Want.PART if request.headers.get("range") else Want.WHOLE
        readable = await storage.open(raw, accepted_codings(request.headers.get("accept-encoding")), want)
    if readable is None:
        return responses.not_found()
    return await sending.send(request, readable, raw.hex(), head)


async def put_buffer(request: Request, checksum: str) -> HTTPResponse:
    try:
        storage, raw = write_target(request, checksum, ReadOnly.put)
    except (Unauthorized, ReadOnly) as exc:  # storage.put counts the refusals it makes
        metrics_of(request).put_rejected("unauthorized" if isinstance(exc, Unauthorized) else "read-only")
        raise
    async with aclosing(request_body(request)) as body:
        await storage.put(raw, body, request.headers.get("content-encoding"))
    return responses.ok()


async def note_activity(request: Request) -> None:
    """With ``--timeout``: every request stamps the time the server last had one."""
    stamp = request.app.ctx.shared.last_request if request.app.ctx.shared else None
    if stamp is not None:
        stamp.value = time.monotonic()


_ERRORS = {
    CorruptBuffer: lambda exc: responses.message(400, str(exc)),
    ChecksumMismatch: lambda exc: responses.text_response("Incorrect checksum", 400),
    InvalidPayload: lambda exc: responses.text_response("Invalid compressed payload", 400),
    ReadOnly: lambda exc: responses.message(405, str(exc)),
    BodyTooLarge: lambda exc: responses.message(413, str(exc)),
    DiskFull: lambda exc: responses.message(507, "Insufficient storage: the disk is full; nothing was stored"),
    InvalidInput: lambda exc: responses.invalid_data(exc.error_type, exc.loc, exc.msg, exc.value),
    Unauthorized: lambda exc: responses.unauthorized(str(exc)),
    BatchTooLarge: lambda exc: responses.message(413, str(exc)),
    StorageUnavailable: lambda exc: responses.message(503, str(exc)),
    StillWriting: lambda exc: responses.retry_later(str(exc), exc.retry_after),
    BodyStalled: lambda exc: responses.message(408, str(exc)),
}
LINGER = 1 << 20  # of a body too large, read (and discarded) before closing


def known_condition(exc: Exception, method: str, path: str) -> HTTPResponse | None:
    """The answer to an exception of a known condition (a storage failure is
    logged), None for any other; the hot path's errors are answered here too."""
    for kind, respond in _ERRORS.items():
        if isinstance(exc, kind):
            if isinstance(exc, StorageUnavailable):
                log.warning("%s %s: %s", method, path, exc)
            return respond(exc)
    return None


async def error_response(request: Request, exc: Exception) -> HTTPResponse:
    """The one place where an exception becomes a response."""
    if isinstance(exc, (Unauthorized, BodyStalled)) or getattr(exc, "announced", False):
        sending.refuse_body(request)  # nothing more of the body is read
    elif isinstance(exc, (BatchTooLarge, BodyTooLarge)):
        sending.refuse_body(request, LINGER)
    response = known_condition(exc, request.method, request.path)
    if response is not None:
        return response
    if isinstance(exc, SanicException):
        return responses.message(exc.status_code, str(exc) or "Error")
    log.exception("unexpected error in %s %s", request.method, request.path)
    return responses.message(500, f"Internal server error: {type(exc).__name__}")


def register(app: Sanic, stamp_activity: bool) -> None:
    """Every route of the server, in one place."""
    for uri in PREFLIGHT_URIS:
        app.add_route(preflight, uri, methods=["OPTIONS"], name=f"preflight{uri}")
    app.add_route(healthcheck, "/healthcheck", methods=["GET"])
    for handler, uri in ((has, "/has"), (has_now, "/has-now"), (buffer_length, "/buffer-length")):
        app.add_route(handler, uri, methods=["GET", "POST"], stream=True)  # read within its bound
    app.add_route(promise, "/promise/<checksum>", methods=["PUT"])
    app.add_route(get_buffer, "/<checksum>", methods=["GET", "HEAD"])
    app.add_route(put_buffer, "/<checksum>", methods=["PUT"], stream=True)
    app.add_route(metrics, "/metrics", methods=["GET"], name="metrics")
    app.blueprint(docs.blueprint)
    app.register_middleware(stamp_request, "request")
    app.register_middleware(record_response, "response")
    app.exception(Exception)(error_response)
    if stamp_activity:
        app.register_middleware(note_activity, "request")
