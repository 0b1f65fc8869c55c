"""The framework ceiling: Sanic answering the bench's GET route with a constant body.

The same route as hashserver's (``GET``/``HEAD /<checksum>``), a constant
body of the buffers' size, no file access, and for the checksums the 404
case asks for, the 404 hashserver sends (``Not found``).  No handler inside
Sanic's request pipeline can be faster than this, so the column next to
nginx shows how much of the gap is Sanic's and what a hot path beside its
pipeline buys.  Started like hashserver's container (``sanic
bench.framework:create_app --factory --workers N``), configured by the
environment, each worker building the same app.
"""

from __future__ import annotations

import os

from sanic import Request, Sanic, response

SIZE_ENV = "BENCH_FRAMEWORK_SIZE"  # bytes of the constant body
MISSING_ENV = "BENCH_FRAMEWORK_MISSING"  # a targets file of checksums to answer 404 for


def _missing(path: str | None) -> frozenset[str]:
    if not path:
        return frozenset()
    with open(path) as f:
        return frozenset(line.split()[0] for line in f if line.strip())


def create_app() -> Sanic:
    body = b"\x5a" * int(os.environ.get(SIZE_ENV, "1024"))
    missing = _missing(os.environ.get(MISSING_ENV))
    app = Sanic("bench_framework_ceiling")
    app.config.ACCESS_LOG = False

    @app.get("/healthcheck")
    async def healthcheck(request: Request):
        return response.text("OK")

    @app.route("/<checksum:str>", methods=["GET", "HEAD"])
    async def buffer(request: Request, checksum: str):
        if checksum in missing:
            return response.text("Not found", 404)
        return response.raw(body, content_type="application/octet-stream")

    return app
