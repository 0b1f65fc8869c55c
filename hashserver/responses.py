"""The response bodies of the wire protocol, byte for byte as the FastAPI
server sends them (clients and their tests compare against them)."""

from __future__ import annotations

import json

from sanic.response import HTTPResponse

from .checksum import InvalidChecksum

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def json_response(payload, status: int = 200) -> HTTPResponse:
    return HTTPResponse(json.dumps(payload), status=status, content_type=JSON)


def text_response(text: str, status: int = 200) -> HTTPResponse:
    return HTTPResponse(text, status=status, content_type=TEXT)


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
    return HTTPResponse(json.dumps(values), content_type=JSON)


def int_list(values: list[int]) -> HTTPResponse:
    return HTTPResponse(json.dumps(values), content_type=JSON)
