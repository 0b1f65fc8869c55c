"""The Sanic application: lifecycle (index in the main process, store in each
worker) and the HTTP handlers, which only parse, call the store and format."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import select
import sys
import time
from typing import NoReturn

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from . import responses
from .checksum import Hasher, InvalidChecksum, parse_checksum, parse_checksum_list
from .compression import InvalidPayload, accepts, for_content_encoding
from .config import Config, ConfigError
from .index import GenerationStore, IndexPublisher, IndexReader
from .integrity import check_hash_algorithm
from .launcher import InactivityWatch, StatusFile
from .layout import SearchPath
from .locks import LockProtocol
from .promises import Promises
from .store import BufferFile, BufferStore, CorruptBuffer
from .writer import (BodyTooLarge, BufferWriter, ChecksumMismatch, DiskFull,
                     remove_leftovers, write_prefix_marker)

log = logging.getLogger("hashserver")

STREAM_CHUNK = 1 << 20
SENDFILE_MIN = 256 << 10
SEND_STALL_TIMEOUT = 60.0  # a client that takes nothing for this long is dropped


def configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def resolve_config(app: Sanic) -> Config:
    """The Config given to :func:`create_app`, else the one the environment describes.

    A bad setting ends the process with one line naming it (no traceback).
    """
    config = app.ctx.given_config
    if config is None:
        try:
            config = Config.from_env()
        except ConfigError as exc:
            exit_at_startup(str(exc))
    return config


def exit_at_startup(message: str, config: Config | None = None) -> NoReturn:
    """End a server that cannot start with one line and status 2.

    Sanic turns an exception in a main-process listener into a traceback (and,
    in 25.12, a second one of its own), so the process ends here instead, with
    the helper processes Sanic has already started.
    """
    print(f"hashserver: {message}", file=sys.stderr, flush=True)
    if config is not None and config.status_file:
        StatusFile(config.status_file).failed()
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    os._exit(2)


def _start_index(config: Config) -> tuple[IndexPublisher, GenerationStore]:
    """Main-process start: clean up after dead writers, scan, publish, check the
    algorithm (:class:`ConfigError` if the buffers are named by another one)."""
    configure_logging()
    search_path = SearchPath.from_config(config)
    if config.writable:
        write_prefix_marker(search_path)
        removed = remove_leftovers(search_path, config.lock_timeout)
        if removed:
            log.info("removed %d leftovers of interrupted writers", removed)
    generations = GenerationStore.create()
    publisher = IndexPublisher(search_path, generations)
    elapsed = publisher.build()
    try:
        check_hash_algorithm(publisher.data, search_path, config.hash_algorithm,
                             config.name("hash_algorithm"))
    except ConfigError:
        generations.remove()
        raise
    publisher.log_built(elapsed)
    publisher.start()
    return publisher, generations


def create_app(config: Config | None = None, name: str = "hashserver") -> Sanic:
    """A hashserver app.  With ``config=None`` it is configured from the
    environment when the server starts (``sanic hashserver.app``)."""
    app = Sanic(name)
    app.ctx.given_config = config
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.KEEP_ALIVE_TIMEOUT = 75

    @app.main_process_start
    async def build_index(app: Sanic) -> None:
        config = resolve_config(app)
        try:
            publisher, generations = _start_index(config)
        except ConfigError as exc:
            exit_at_startup(str(exc), config)
        app.ctx.publisher, app.ctx.generations = publisher, generations
        app.shared_ctx.index_directory = multiprocessing.RawArray(
            "c", generations.directory.encode())
        if config.timeout:
            app.shared_ctx.last_request = multiprocessing.RawValue("d", 0.0)
            InactivityWatch(config.timeout, app.shared_ctx.last_request).start()
        if config.status_file:
            StatusFile(config.status_file).report_running_when_ready(config.host, config.port)

    @app.main_process_stop
    async def remove_index(app: Sanic) -> None:
        if not hasattr(app.ctx, "publisher"):
            return  # startup failed before the index was built
        app.ctx.publisher.stop()
        app.ctx.generations.remove()

    @app.before_server_start
    async def open_store(app: Sanic) -> None:
        config = resolve_config(app)
        app.ctx.config = config
        app.config.REQUEST_MAX_SIZE = config.max_body_size
        shared = getattr(app.shared_ctx, "index_directory", None)
        if shared is not None:
            generations = GenerationStore(shared.value.decode())
            app.ctx.local_index = None
        else:  # single process (tests): this process is its own main process
            publisher, generations = _start_index(config)
            app.ctx.local_index = (publisher, generations)
        search_path = SearchPath.from_config(config)
        hasher = Hasher(config.hash_algorithm)
        locks = LockProtocol(config.lock_timeout)
        promises = Promises(search_path) if config.writable else None
        store = BufferStore(search_path, IndexReader(generations), hasher, locks, config.verify, promises)
        app.ctx.store = store
        app.ctx.promises = promises
        app.ctx.writer = BufferWriter(store, config.max_body_size)
        app.ctx.last_request = getattr(app.shared_ctx, "last_request", None)

    @app.after_server_stop
    async def close_store(app: Sanic) -> None:
        app.ctx.store.watch.close()
        if getattr(app.ctx, "local_index", None):
            publisher, generations = app.ctx.local_index
            publisher.stop()
            generations.remove()

    if config is not None and config.timeout:  # only the command line has --timeout

        @app.on_request
        async def note_activity(request: Request) -> None:
            stamp = request.app.ctx.last_request
            if stamp is not None:
                stamp.value = time.monotonic()

    @app.exception(Exception)
    async def error_response(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException):
            return responses.message(exc.status_code, str(exc) or "Error")
        log.exception("unexpected error in %s %s", request.method, request.path)
        return responses.message(500, f"Internal server error: {type(exc).__name__}")

    async def preflight(request: Request, **_) -> HTTPResponse:
        return responses.preflight()

    for uri in ("/<checksum>", "/has", "/has-now", "/buffer-length", "/healthcheck",
                "/promise/<checksum>"):
        app.add_route(preflight, uri, methods=["OPTIONS"], name=f"preflight{uri}")

    @app.get("/healthcheck")
    async def healthcheck(request: Request) -> HTTPResponse:
        return responses.ok()

    @app.route("/has", methods=["GET", "POST"], ignore_body=False)
    async def has(request: Request) -> HTTPResponse:
        checksums = _checksum_list(request)
        if isinstance(checksums, HTTPResponse):
            return checksums
        return responses.bool_list(request.app.ctx.store.has(checksums))

    @app.route("/has-now", methods=["GET", "POST"], ignore_body=False)
    async def has_now(request: Request) -> HTTPResponse:
        checksums = _checksum_list(request)
        if isinstance(checksums, HTTPResponse):
            return checksums
        return responses.bool_list(request.app.ctx.store.has(checksums, promised=False))

    @app.route("/buffer-length", methods=["GET", "POST"], ignore_body=False)
    async def buffer_length(request: Request) -> HTTPResponse:
        checksums = _checksum_list(request)
        if isinstance(checksums, HTTPResponse):
            return checksums
        return responses.int_list(await request.app.ctx.store.lengths(checksums))

    @app.put("/promise/<checksum>")
    async def promise(request: Request, checksum: str) -> HTTPResponse:
        promises: Promises | None = request.app.ctx.promises
        if promises is None:
            return responses.message(405, "This server is read-only: promises are not accepted")
        try:
            raw = parse_checksum(checksum)
        except InvalidChecksum as exc:
            return responses.invalid_checksum(exc, ["path", "checksum"])
        if request.app.ctx.store.find(raw) is None:
            promises.promise(raw.hex())
        return responses.json_response({"checksum": raw.hex(), "expires_in": int(promises.ttl)}, 202)

    @app.route("/<checksum>", methods=["GET", "HEAD"])
    async def get_buffer(request: Request, checksum: str) -> HTTPResponse | None:
        try:
            raw = parse_checksum(checksum)
        except InvalidChecksum as exc:
            return responses.invalid_checksum(exc, ["path", "checksum"])
        store: BufferStore = request.app.ctx.store
        try:
            found = await store.open(raw)
        except CorruptBuffer as exc:
            return responses.message(400, str(exc))
        if found is None:
            return responses.not_found()
        buffer, content = found
        head = request.method == "HEAD"
        if buffer.encoding is not None:
            if accepts(request.headers.get("accept-encoding"), buffer.encoding):
                headers = {"content-encoding": buffer.encoding.tokens[0]}
                return await _send_file(request, buffer, headers, head)
            length = await store.uncompressed_length(buffer)
            return await _send_stream(request, store.decompressed(buffer), length, head)
        if content is not None:
            return responses.head_only(len(content)) if head else responses.buffer(content)
        return await _send_file(request, buffer, {}, head)

    @app.put("/<checksum>", stream=True)
    async def put_buffer(request: Request, checksum: str) -> HTTPResponse:
        if not request.app.ctx.config.writable:
            return responses.message(405, "This server is read-only: PUT is not allowed")
        try:
            raw = parse_checksum(checksum)
        except InvalidChecksum as exc:
            return responses.invalid_checksum(exc, ["path", "checksum"])
        try:
            encoding = for_content_encoding(request.headers.get("content-encoding"))
            await request.app.ctx.writer.put(raw, request.stream, encoding)
        except ChecksumMismatch:
            return responses.text_response("Incorrect checksum", 400)
        except InvalidPayload:
            return responses.text_response("Invalid compressed payload", 400)
        except DiskFull:
            return responses.message(507, "Insufficient storage: the disk is full; nothing was stored")
        except BodyTooLarge:
            return responses.message(
                413, f"Request body larger than the maximum of {request.app.ctx.config.max_body_size} bytes")
        return responses.ok()

    return app


def _checksum_list(request: Request) -> bytes | HTTPResponse:
    """The request body as a checksum batch, or the 400 that says what is wrong."""
    body = request.body
    if not body:
        return responses.invalid_data("missing", ["body"], "Field required", None)
    try:
        values = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return responses.invalid_data("json_invalid", ["body"], f"JSON decode error: {exc}",
                                      body[:200].decode("utf-8", "replace"))
    if not isinstance(values, list):
        return responses.invalid_data("list_type", ["body"], "Input should be a valid list", values)
    try:
        return parse_checksum_list(values)
    except InvalidChecksum as exc:
        return responses.invalid_checksum(exc, ["body", exc.position])


async def _send_file(request: Request, buffer: BufferFile, headers: dict, head: bool) -> HTTPResponse | None:
    """A file as it is on disk: zero-copy (``sendfile``) where the connection
    allows it, else in chunks read by a thread.  A streamed response is sent
    here, so None is returned (Sanic would complain of a second response)."""
    if head:
        return responses.head_only(buffer.size, headers)
    loop = asyncio.get_running_loop()
    response = await request.respond(
        content_type=responses.OCTET_STREAM,
        headers={**responses.ANY_ORIGIN, **headers, "content-length": str(buffer.size)})
    with open(buffer.path, "rb", buffering=0) as f:
        try:
            sent = await _zero_copy(request, response, f.fileno(), buffer.size - 1)
            f.seek(sent)
            remaining = buffer.size - sent
            while remaining > 0:
                chunk = await loop.run_in_executor(None, f.read, min(STREAM_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                await response.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            request.transport.close()  # the client went away
            return None
    await response.eof()
    return None


async def _zero_copy(request: Request, response, file_fd: int, count: int) -> int:
    """Send ``count`` bytes of the file straight from the page cache to the
    socket, in a thread; returns how many were sent (0 where not possible:
    TLS, a test transport, a small file, a header still in the send buffer).

    Sanic sends a response's header with its first body bytes, so the header
    is sent on its own first.  Sanic keeps count of the body bytes still due
    on a response with a Content-Length; what is sent here bypasses it, so the
    count is lowered by as much, and the last byte goes through Sanic to end
    the response.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket")
    if count < SENDFILE_MIN or sock is None or transport.get_extra_info("sslcontext"):
        return 0
    await response.send(b"", end_stream=False)
    http = request.stream
    if transport.get_write_buffer_size() or not hasattr(http, "response_bytes_left"):
        return 0
    loop = asyncio.get_running_loop()
    sent = await loop.run_in_executor(None, _sendfile_blocking, sock.fileno(), file_fd, count)
    http.response_bytes_left -= sent
    return sent


def _sendfile_blocking(sock_fd: int, file_fd: int, count: int) -> int:
    """os.sendfile on the event loop's non-blocking socket, waiting (bounded)
    whenever the socket buffer is full."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, sent, count - sent)
        except BlockingIOError:
            if not select.select([], [sock_fd], [], SEND_STALL_TIMEOUT)[1]:
                raise ConnectionResetError("client stopped reading") from None
            continue
        if n == 0:
            break
        sent += n
    return sent


async def _send_stream(request: Request, chunks, length: int, head: bool) -> HTTPResponse | None:
    """Generated content of a known length (a decompressed buffer)."""
    if head:
        return responses.head_only(length)
    response = await request.respond(content_type=responses.OCTET_STREAM,
                                     headers={**responses.ANY_ORIGIN, "content-length": str(length)})
    async for chunk in chunks:
        await response.send(chunk)
    await response.eof()
    return None
