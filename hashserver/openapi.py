"""The OpenAPI description of the HTTP API: the one place that says what each
route takes and gives.

Parameters, request bodies, every status with its exact body, and the headers
a client or a cache relies on.  The document is built from a few facts of the
running server (:class:`ApiFacts`: writable or not, hash algorithm, batch
bound, tokens), so that it lists the statuses this server can give and no
others.  :mod:`hashserver.docs` serves it as ``/openapi.json``; the tests
validate it and run schemathesis against a live server to keep it true.
Schemas, headers and responses are written once, under ``components``, and
referenced from the operations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

from .checksum import HASH_DISPLAY_NAMES, Hasher
from .config import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_SIZE, Config
from .promises import PROMISE_TTL

OPENAPI_VERSION = "3.1.0"
IMMUTABLE = "public, max-age=31536000, immutable"
JSON = "application/json"
TEXT = "text/plain"
OCTETS = "application/octet-stream"

# Statuses any operation can give: an unexpected failure (logged), and a
# storage failure or Sanic's response timeout.
COMMON_RESPONSES = {"500": "ServerError", "503": "Unavailable"}


@dataclass(frozen=True)
class ApiFacts:
    """What the document depends on, taken from the running server's Config."""

    writable: bool = True
    hash_algorithm: str = "sha3-256"
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    write_tokens: bool = False
    read_tokens: bool = False
    promise_ttl: int = PROMISE_TTL
    wait_timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> "ApiFacts":
        """The facts of a :class:`hashserver.Config`."""
        return cls(
            writable=config.writable,
            hash_algorithm=config.hash_algorithm,
            max_batch=config.max_batch,
            max_body_size=config.max_body_size,
            write_tokens=config.write_token_file is not None,
            read_tokens=config.read_token_file is not None,
            wait_timeout=config.wait_timeout,
        )

    @property
    def max_batch_bytes(self) -> int:
        return 70 * self.max_batch + 1024

    @property
    def example_checksum(self) -> str:
        return Hasher(self.hash_algorithm).digest(b"hello").hex()


def document(facts: ApiFacts, assets: Mapping[str, str] | None = None) -> dict:
    """The OpenAPI document of a server with these facts; ``assets`` maps the
    URL of each static file that ``/docs`` and ``/redoc`` load to its media type."""
    paths = {
        **_buffer_paths(facts),
        **_batch_paths(facts),
        **_service_paths(facts),
        **_docs_paths(assets or {}),
    }
    components = {
        "schemas": _schemas(facts),
        "parameters": PARAMETERS,
        "requestBodies": _request_bodies(facts),
        "headers": HEADERS,
        "responses": RESPONSES,
    }
    if facts.write_tokens or facts.read_tokens:  # else Swagger UI would offer to "Authorize"
        components["securitySchemes"] = SECURITY_SCHEMES
    return copy.deepcopy({"openapi": OPENAPI_VERSION, "info": _info(facts), "tags": TAGS,
                          "paths": paths, "components": components})


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _info(facts: ApiFacts) -> dict:
    from . import __version__  # here: the package imports this module while it initialises

    algorithm = HASH_DISPLAY_NAMES[facts.hash_algorithm]
    mode = "writable" if facts.writable else "read-only: `PUT` answers 405"
    guards = [what for what, on in (("writes", facts.write_tokens), ("reads", facts.read_tokens)) if on]
    tokens = (f"a bearer token is required for {' and '.join(guards)}" if guards
              else "no token is required")
    return {
        "title": "hashserver",
        "version": __version__,
        "summary": "Checksum-named buffers over HTTP (Seamless)",
        "description": (
            "Serves a directory of buffers named by their checksum.\n\n"
            f"This server: {mode}; checksums are {algorithm}; batches hold at most "
            f"{facts.max_batch:,} checksums ({facts.max_batch_bytes:,} bytes); {tokens}.\n\n"
            "Every answer of the API carries `Access-Control-Allow-Origin: *`; only a buffer's "
            "bytes may be cached (every other answer says `Cache-Control: no-store`). Errors are JSON "
            "`{\"message\": ...}`, or pydantic's shape for invalid input "
            "(`{\"message\": \"Invalid data\", \"exception\": {...}}`), except the plain-text "
            "`Not found`, `Incorrect checksum` and `Invalid compressed payload` that "
            "existing clients compare against. Any route may answer 500 (an unexpected "
            "failure, logged) or 503 (a storage failure, or no response within Sanic's "
            "response timeout)."
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    }


TAGS = [
    {"name": "buffers", "description": "One buffer, named by its checksum"},
    {"name": "batches", "description": "Questions about many checksums at once"},
    {"name": "service", "description": "Health and metrics"},
    {"name": "documentation", "description": "This document and the pages that render it"},
]

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`, a token listed in the server's "
                       "`--write-token-file` (writes) or `--read-token-file` (reads).",
    },
}


def _schemas(facts: ApiFacts) -> dict:
    algorithm = HASH_DISPLAY_NAMES[facts.hash_algorithm]
    return {
        "Checksum": {
            "type": "string", "pattern": "^[0-9a-fA-F]{64}$",
            "description": f"The {algorithm} of the buffer's content: 64 hexadecimal "
                           "characters; uppercase means the same buffer.",
            "examples": [facts.example_checksum],
        },
        "ChecksumList": {
            "type": "array", "items": _ref("schemas", "Checksum"), "maxItems": facts.max_batch,
            "examples": [[facts.example_checksum]],
        },
        "PresenceList": {"type": "array", "items": {"type": "boolean"},
                         "description": "One boolean per checksum asked, in the same order."},
        "LengthList": {"type": "array", "items": {"type": "integer", "minimum": 0},
                       "description": "One length in bytes per checksum asked, in the same order: "
                                      "0 where absent, 1 where promised but not yet written."},
        "Buffer": {"type": "string", "format": "binary"},
        "Message": MESSAGE_SCHEMA,
        "InvalidData": INVALID_DATA_SCHEMA,
        "Promise": {
            "type": "object", "required": ["checksum", "expires_in"], "additionalProperties": False,
            "properties": {
                "checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "expires_in": {"type": "integer", "minimum": 0,
                               "description": "Seconds until the promise lapses unless renewed."},
            },
            "examples": [{"checksum": facts.example_checksum, "expires_in": facts.promise_ttl}],
        },
    }


MESSAGE_SCHEMA = {
    "type": "object", "required": ["message"], "additionalProperties": False,
    "properties": {"message": {"type": "string"}},
}

INVALID_DATA_SCHEMA = {
    "description": "pydantic's error shape, as the FastAPI hashserver sends it.",
    "type": "object", "required": ["message", "exception"], "additionalProperties": False,
    "properties": {
        "message": {"const": "Invalid data"},
        "exception": {
            "type": "object", "required": ["type", "loc", "msg", "input"], "additionalProperties": False,
            "properties": {
                "type": {"enum": ["value_error", "string_type", "list_type", "json_invalid", "missing"]},
                "loc": {"type": "array", "minItems": 1, "items": {"type": ["string", "integer"]},
                        "description": "`[\"path\", \"checksum\"]`, `[\"body\"]`, or "
                                       "`[\"body\", i]` for the i-th checksum of a batch."},
                "msg": {"type": "string", "examples": ["Value error, Wrong length"]},
                "input": {"description": "The value received (null for a missing body)."},
            },
        },
    },
}


def _request_bodies(facts: ApiFacts) -> dict:
    return {
        "ChecksumList": {
            "required": True,
            "description": f"A JSON list of checksums: at most {facts.max_batch:,} of them, "
                           f"in at most {facts.max_batch_bytes:,} bytes (else 413).",
            "content": {JSON: {"schema": _ref("schemas", "ChecksumList")}},
        },
        "Buffer": {
            "required": True,
            "description": "The buffer's bytes (or their zstd or gzip encoding, said by "
                           f"`Content-Encoding`), at most {facts.max_body_size:,} bytes.",
            "content": {OCTETS: {"schema": _ref("schemas", "Buffer"),
                                 "examples": {"hello": {"value": "hello"}}}},
        },
    }


def _header_param(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


PARAMETERS = {
    "Checksum": {"name": "checksum", "in": "path", "required": True,
                 "schema": _ref("schemas", "Checksum"),
                 "description": "Anything else is a 400 (`Wrong length`, or `bytes.fromhex`'s message)."},
    "AcceptEncoding": _header_param(
        "Accept-Encoding", "Naming `zstd` or `gzip` (q > 0): a buffer stored in that encoding is "
        "sent as stored, with `Content-Encoding`; otherwise it is sent decoded.",
        {"examples": ["zstd", "gzip"]}),
    "IfNoneMatch": _header_param(
        "If-None-Match", "The buffer's ETag (or `*`): 304 with no body when it matches.", {"examples": ["*"]}),
    "Range": _header_param(
        "Range", "One range (`bytes=a-b`, `a-`, `-n`) of the representation sent: 206; "
        "unsatisfiable: 416. Several ranges, or a malformed one: the whole buffer (200).",
        {"pattern": "^bytes=([0-9]+-[0-9]*|-[0-9]+)(, *([0-9]+-[0-9]*|-[0-9]+))*$",
         "examples": ["bytes=0-1", "bytes=2-", "bytes=-3"]}),
    "IfRange": _header_param(
        "If-Range", "Honour `Range` only if this is the representation's ETag (a date never "
                    "matches: there is no Last-Modified).", {}),
    "ContentEncoding": _header_param(
        "Content-Encoding", "The body is zstd or gzip encoded: the checksum is that of the "
                            "decoded bytes, and the encoded bytes are stored.",
        {"enum": ["zstd", "x-zstd", "gzip", "x-gzip", "identity"]}),
}


def _header(description: str, schema: dict, required: bool = True) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string", **schema}}


# Keyed by HTTP name; a variant's key adds ".<what>" (a component key may hold dots).
HEADERS = {
    "Access-Control-Allow-Origin": _header("Any origin may use the server.", {"const": "*"}),
    "Access-Control-Expose-Headers": _header(
        "The headers a browser script may read (ETag, Content-Range, Accept-Ranges, "
        "Content-Encoding, Content-Length).", {}, required=False),
    "ETag": _header("`\"<checksum>\"` for the buffer's bytes; `\"<checksum>.zst\"` (or `.gz`) "
                    "for a buffer sent as stored, encoded.",
                    {"pattern": "^\"[0-9a-f]{64}(\\.zst|\\.gz)?\"$"}),
    "Cache-Control.immutable": _header("The content of a name never changes.", {"const": IMMUTABLE}),
    "Cache-Control.no-store": _header("Not to be cached: only a buffer's bytes never change "
                                      "(a buffer absent now may arrive).", {"const": "no-store"}),
    "Cache-Control.no-cache": _header("Revalidate: the document follows the server's settings.",
                                      {"const": "no-cache"}),
    "Accept-Ranges": _header("Ranges of buffers are served.", {"const": "bytes"}),
    "Content-Length": {"description": "The length of the body in bytes.", "required": True,
                       "schema": {"type": "integer", "minimum": 0}},
    "Content-Encoding": _header("Present when the buffer is sent as stored, compressed "
                                "(the request's Accept-Encoding named it).",
                                {"enum": ["zstd", "gzip"]}, required=False),
    "Vary": _header("`Accept-Encoding`, for a buffer stored compressed (two representations).",
                    {}, required=False),
    "Content-Range": _header("The range sent, and the representation's full length.",
                             {"pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}),
    "Content-Range.unsatisfied": _header("The representation's full length.",
                                         {"pattern": "^bytes \\*/[0-9]+$"}),
    "WWW-Authenticate": _header("The scheme to use.", {"pattern": "^Bearer"}),
    "Connection.close": _header("A rejected write's body is not read: the connection is closed.",
                                {"const": "close"}, required=False),
    "Retry-After": _header("Seconds to wait before retrying.", {}, required=False),
    "Access-Control-Allow-Methods": _header("Methods allowed from any origin.", {}),
    "Access-Control-Allow-Headers": _header(
        "Request headers allowed from any origin, naming Authorization, Range, "
        "If-None-Match and If-Range.", {}),
    "Access-Control-Max-Age": _header("Seconds a preflight answer may be cached.", {"pattern": "^[0-9]+$"}),
}


def _headers(*components: str) -> dict:
    """Response headers, each a reference to its component (named as in :data:`HEADERS`)."""
    return {component.partition(".")[0]: _ref("headers", component) for component in components}


def _content(media_type: str, schema: dict) -> dict:
    return {media_type: {"schema": schema}}


def _json(name: str) -> dict:
    return _content(JSON, _ref("schemas", name))


def _text(*values: str) -> dict:
    return _content(TEXT, {"type": "string", "enum": list(values)})


_CORS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")
# Only a buffer's bytes may be cached: every other answer may change.
_NOT_CACHED = ("Cache-Control.no-store", *_CORS)
_REPRESENTATION = ("ETag", "Cache-Control.immutable", "Content-Length", "Content-Encoding", "Vary", *_CORS)

RESPONSES = {
    "Buffer": {"description": "The buffer (HEAD: its headers only).",
               "headers": _headers(*_REPRESENTATION, "Accept-Ranges"),
               "content": _content(OCTETS, _ref("schemas", "Buffer"))},
    "PartialBuffer": {"description": "The range asked of the representation sent.",
                      "headers": _headers(*_REPRESENTATION, "Content-Range"),
                      "content": _content(OCTETS, _ref("schemas", "Buffer"))},
    "NotModified": {"description": "The client's copy (If-None-Match) is this buffer: no body.",
                    "headers": _headers("ETag", "Cache-Control.immutable", "Vary", "Content-Encoding", *_CORS)},
    "BufferNotFound": {"description": "No such buffer (nor a promise of it that is kept).",
                       "headers": _headers(*_NOT_CACHED),
                       "content": _text("Not found")},
    "RangeNotSatisfiable": {"description": "No byte of the range is in the representation.",
                            "headers": _headers("Content-Range.unsatisfied", *_NOT_CACHED),
                            "content": _json("Message")},
    "InvalidChecksumOrCorrupt": {
        "description": "An invalid checksum (pydantic's shape), or a file whose content does not "
                       "hash to its name (`File corruption: ...`).",
        "headers": _headers(*_NOT_CACHED),
        "content": _content(JSON, {"oneOf": [_ref("schemas", "InvalidData"), _ref("schemas", "Message")]})},
    "InvalidData": {"description": "An invalid checksum, or a body that is not a JSON list of them.",
                    "headers": _headers(*_NOT_CACHED), "content": _json("InvalidData")},
    "PutRejected": {
        "description": "Nothing was stored: an invalid checksum (JSON), a body that does not hash "
                       "to the checksum, or a compressed body that does not decode (plain text).",
        "headers": _headers(*_NOT_CACHED),
        "content": {**_json("InvalidData"), **_text("Incorrect checksum", "Invalid compressed payload")}},
    "OK": {"description": "`OK`.", "headers": _headers(*_NOT_CACHED), "content": _text("OK")},
    "Presence": {"description": "Presence of each buffer.", "headers": _headers(*_NOT_CACHED),
                 "content": _json("PresenceList")},
    "Lengths": {"description": "Length of each buffer.", "headers": _headers(*_NOT_CACHED),
                "content": _json("LengthList")},
    "PromiseMade": {"description": "Promised (or already present): `/has` says true until the "
                                   "buffer arrives or the promise lapses.",
                    "headers": _headers(*_NOT_CACHED), "content": _json("Promise")},
    "Preflight": {"description": "CORS preflight: any origin, never token-guarded.",
                  "headers": _headers(*_CORS, "Access-Control-Allow-Methods",
                                      "Access-Control-Allow-Headers", "Access-Control-Max-Age")},
    "Unauthorized": {"description": "No valid `Authorization: Bearer <token>`; nothing was read "
                                    "beyond the headers, nothing stored.",
                     "headers": _headers("WWW-Authenticate", "Connection.close", *_NOT_CACHED),
                     "content": _json("Message")},
    "ReadOnly": {"description": "This server is read-only.", "headers": _headers(*_NOT_CACHED),
                 "content": _json("Message")},
    "TooLarge": {"description": "The body is over the limit named in the message.",
                 "headers": _headers(*_NOT_CACHED), "content": _json("Message")},
    "DiskFull": {"description": "The disk is full; nothing was stored.", "headers": _headers(*_NOT_CACHED),
                 "content": _json("Message")},
    "Stalled": {"description": "The body stopped arriving (--body-idle-timeout) or crawled below "
                               "--min-body-rate; nothing was stored.",
                "headers": _headers(*_NOT_CACHED, "Connection"), "content": _json("Message")},
    "ServerError": {"description": "An unexpected failure (logged).", "headers": _headers(*_NOT_CACHED),
                    "content": _json("Message")},
    "Unavailable": {"description": "A storage failure (named in the message); a buffer still being "
                                   "written or promised after the longest wait (with Retry-After); or "
                                   "no response within Sanic's response timeout.",
                    "headers": _headers(*_NOT_CACHED, "Retry-After"), "content": _json("Message")},
    "Metrics": {"description": "Prometheus text exposition format, all workers together.",
                "headers": _headers(*_NOT_CACHED), "content": _content(TEXT, {"type": "string"})},
    "OpenAPI": {"description": "This document.",
                "headers": _headers(*_CORS, "Cache-Control.no-cache"),
                "content": _content(JSON, {"type": "object"})},
    "Page": {"description": "An HTML page that renders `/openapi.json` with assets served here.",
             "content": _content("text/html", {"type": "string"})},
    "Favicon": {"description": "The server's icon.",
                "content": _content("image/x-icon", {"type": "string", "format": "binary"})},
}


def _operation(op_id: str, summary: str, tag: str, responses: Mapping[str, str | dict], *,
               guarded: bool = False, parameters: tuple[str, ...] = (), body: str | None = None,
               description: str | None = None) -> dict:
    """One operation; ``responses`` maps each status to a response component's
    name (or a response), to which the token check's 401 and
    :data:`COMMON_RESPONSES` are added."""
    operation: dict = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if body:
        operation["requestBody"] = _ref("requestBodies", body)
    statuses = {**responses, **COMMON_RESPONSES}
    if guarded:
        operation["security"] = [{"bearer": []}]
        statuses["401"] = "Unauthorized"
    operation["responses"] = {
        code: _ref("responses", value) if isinstance(value, str) else value
        for code, value in sorted(statuses.items())}
    return operation


def _preflight(op_id: str) -> dict:
    return _operation(op_id, "CORS preflight", "service", {"204": "Preflight"})


_READ_HEADERS = ("AcceptEncoding", "IfNoneMatch", "Range", "IfRange")
_READ_STATUSES = {"200": "Buffer", "206": "PartialBuffer", "304": "NotModified",
                  "400": "InvalidChecksumOrCorrupt", "404": "BufferNotFound",
                  "416": "RangeNotSatisfiable"}


def _write_statuses(facts: ApiFacts, stored: dict[str, str], rejected: str) -> dict[str, str]:
    if not facts.writable:
        return {"405": "ReadOnly"}
    return {**stored, "400": rejected, "413": "TooLarge"}


def _buffer_paths(facts: ApiFacts) -> dict:
    reads = {"guarded": facts.read_tokens, "parameters": _READ_HEADERS}
    put = _write_statuses(facts, {"200": "OK", "507": "DiskFull", "408": "Stalled"}, "PutRejected")
    promise = _write_statuses(facts, {"202": "PromiseMade"}, "InvalidData")
    return {
        "/{checksum}": {
            "parameters": [_ref("parameters", "Checksum")],
            "get": _operation("getBuffer", "Get a buffer", "buffers", _READ_STATUSES, **reads,
                              description="A buffer being written (a fresh lock) or promised is "
                                          f"waited for, {facts.wait_timeout:g} s at most: 200 when it "
                                          "arrives, 404 when the lock or promise lapses, else 503 with "
                                          "Retry-After."),
            "head": _operation("headBuffer", "A buffer's headers", "buffers", _READ_STATUSES, **reads),
            "put": _operation("putBuffer", "Store a buffer", "buffers", put, guarded=facts.write_tokens,
                              parameters=("ContentEncoding",), body="Buffer",
                              description="Stored once: a buffer already present is not rewritten "
                                          "(200 all the same). A completed PUT resolves a promise."),
            "options": _preflight("preflightBuffer"),
        },
        "/promise/{checksum}": {
            "parameters": [_ref("parameters", "Checksum")],
            "put": _operation("promiseBuffer", "Promise a buffer about to be written", "buffers",
                              promise, guarded=facts.write_tokens,
                              description=f"The promise lapses after {facts.promise_ttl} s; "
                                          "PUT again to renew it."),
            "options": _preflight("preflightPromise"),
        },
    }


_BATCHES = {
    "/has": ("has", "Which buffers are present (or promised)", "Presence"),
    "/has-now": ("hasNow", "Which buffers are on disk now (promises not counted)", "Presence"),
    "/buffer-length": ("bufferLength", "The length of each buffer", "Lengths"),
}


def _batch_paths(facts: ApiFacts) -> dict:
    paths = {}
    for path, (op_id, summary, answer) in _BATCHES.items():
        statuses = {"200": answer, "400": "InvalidData", "413": "TooLarge"}
        common = {"guarded": facts.read_tokens, "body": "ChecksumList"}
        paths[path] = {
            "get": _operation(op_id + "Get", summary, "batches", statuses, **common,
                              description="GET with a body, as existing clients send it "
                                          "(`requests.get(url, json=[...])`). Browsers and some "
                                          "proxies drop a GET body: POST is the same."),
            "post": _operation(op_id, summary, "batches", statuses, **common),
            "options": _preflight(op_id + "Preflight"),
        }
    return paths


def _service_paths(facts: ApiFacts) -> dict:
    return {
        "/healthcheck": {
            "get": _operation("healthcheck", "Is the server up", "service", {"200": "OK"}),
            "options": _preflight("healthcheckPreflight"),
        },
        "/metrics": {
            "get": _operation("metrics", "Prometheus metrics", "service", {"200": "Metrics"},
                              guarded=facts.read_tokens),
        },
    }


def _docs_paths(assets: Mapping[str, str]) -> dict:
    paths = {
        "/openapi.json": {"get": _operation("openapi", "This document", "documentation",
                                            {"200": "OpenAPI"})},
        "/docs": {"get": _operation("swaggerUI", "Swagger UI", "documentation", {"200": "Page"})},
        "/redoc": {"get": _operation("redoc", "ReDoc", "documentation", {"200": "Page"})},
        "/favicon.ico": {"get": _operation("favicon", "The server's icon", "documentation",
                                           {"200": "Favicon"})},
    }
    for number, (url, media_type) in enumerate(sorted(assets.items())):
        asset = {"description": "The file; its URL names the bundle's version.",
                 "headers": _headers("Cache-Control.immutable"),
                 "content": _content(media_type, {"type": "string"})}
        paths[url] = {"get": _operation(f"asset{number}", "A static file of the documentation pages",
                                        "documentation", {"200": asset})}
    return paths
