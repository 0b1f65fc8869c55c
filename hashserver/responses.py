"""The response bodies of the wire protocol, byte for byte as the FastAPI
server sends them (clients and their tests compare against them)."""

from __future__ import annotations

import json

from sanic.response import HTTPResponse

from .checksum import InvalidChecksum

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

# Any origin may use the server (as with the FastAPI server).  Set on each
# response here rather than by a middleware, which would cost every request.
ANY_ORIGIN = {"access-control-allow-origin": "*"}
PREFLIGHT = {
    **ANY_ORIGIN,
    "access-control-allow-methods": "GET, HEAD, PUT, POST, OPTIONS",
    "access-control-allow-headers": "*",
    "access-control-max-age": "86400",
}


def json_response(payload, status: int = 200) -> HTTPResponse:
    return HTTPResponse(json.dumps(payload), status=status, headers=ANY_ORIGIN, content_type=JSON)


def text_response(text: str, status: int = 200) -> HTTPResponse:
    return HTTPResponse(text, status=status, headers=ANY_ORIGIN, content_type=TEXT)


def buffer(content: bytes) -> HTTPResponse:
    return HTTPResponse(content, headers=ANY_ORIGIN, content_type=OCTET_STREAM)


def head_only(length: int, headers: dict | None = None) -> HTTPResponse:
    """What GET would answer, without the body."""
    return HTTPResponse(status=200, content_type=OCTET_STREAM,
                        headers={**ANY_ORIGIN, **(headers or {}), "content-length": str(length)})


def preflight() -> HTTPResponse:
    return HTTPResponse(status=204, headers=PREFLIGHT)


def ok() -> HTTPResponse:
    return text_response("OK")


def not_found() -> HTTPResponse:
    return text_response("Not found", 404)


def message(status: int, text: str) -> HTTPResponse:
    return json_response({"message": text}, status)


def invalid_data(error_type: str, loc: list, msg: str, value: object) -> HTTPResponse:
    """``400 {"message": "Invalid data", "exception": {...}}``, pydantic's shape."""
    return json_response(
        {
            "message": "Invalid data",
            "exception": {"type": error_type, "loc": loc, "msg": msg, "input": value},
        },
        400,
    )


def invalid_checksum(exc: InvalidChecksum, loc: list) -> HTTPResponse:
    return invalid_data(exc.kind, loc, str(exc), exc.value)


def bool_list(values: list[bool]) -> HTTPResponse:
    return HTTPResponse(json.dumps(values), headers=ANY_ORIGIN, content_type=JSON)


def int_list(values: list[int]) -> HTTPResponse:
    return HTTPResponse(json.dumps(values), headers=ANY_ORIGIN, content_type=JSON)
