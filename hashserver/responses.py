"""The response bodies of the wire protocol, byte for byte as the FastAPI
server sends them (clients and their tests compare against them)."""

from __future__ import annotations

import json

from sanic.response import HTTPResponse

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

# Any origin may use the server (as with the FastAPI server), and read the
# headers a client of ranges and caches needs.  Set on each response here
# rather than by a middleware, which would cost every request.
ANY_ORIGIN = {
    "access-control-allow-origin": "*",
    "access-control-expose-headers": "ETag, Content-Range, Accept-Ranges, Content-Encoding, Content-Length",
}
# Every answer that is not a buffer's bytes may change: no cache keeps it.
NOT_CACHED = {**ANY_ORIGIN, "cache-control": "no-store"}
PREFLIGHT = {
    **ANY_ORIGIN,
    "access-control-allow-methods": "GET, HEAD, PUT, POST, OPTIONS",
    # "*" covers any header but Authorization, which must be named.
    "access-control-allow-headers": "*, Authorization, Range, If-None-Match, If-Range",
    "access-control-max-age": "86400",
}


def json_response(payload, status: int = 200) -> HTTPResponse:
    return HTTPResponse(json.dumps(payload), status=status, headers=NOT_CACHED, content_type=JSON)


def text_response(text: str, status: int = 200) -> HTTPResponse:
    return HTTPResponse(text, status=status, headers=NOT_CACHED, content_type=TEXT)


def buffer(content: bytes, headers: dict, status: int = 200) -> HTTPResponse:
    return HTTPResponse(content, status=status, headers={**ANY_ORIGIN, **headers}, content_type=OCTET_STREAM)


def head_only(length: int, headers: dict, status: int = 200) -> HTTPResponse:
    """What GET would answer, without the body."""
    return HTTPResponse(status=status, content_type=OCTET_STREAM,
                        headers={**ANY_ORIGIN, **headers, "content-length": str(length)})


def not_modified(headers: dict) -> HTTPResponse:
    return HTTPResponse(status=304, headers={**ANY_ORIGIN, **headers})


def unsatisfiable(size: int) -> HTTPResponse:
    response = message(416, f"Range Not Satisfiable: the representation has {size} bytes")
    response.headers["content-range"] = f"bytes */{size}"
    return response


def unauthorized(needed: str) -> HTTPResponse:
    response = message(401, f"Unauthorized: this request needs a {needed} token "
                             "(Authorization: Bearer <token>)")
    response.headers["www-authenticate"] = "Bearer"
    return response


def retry_later(text: str, seconds: int) -> HTTPResponse:
    response = message(503, text)
    response.headers["retry-after"] = str(seconds)
    return response


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


def bool_list(values: list[bool]) -> HTTPResponse:
    return json_response(values)


def int_list(values: list[int]) -> HTTPResponse:
    return json_response(values)
