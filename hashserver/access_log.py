"""``--access-log``: one line per request, off by default (it costs every request).

``<client> "<METHOD> <path>" <status> <bytes> <seconds>``; the client is the
address forwarded by a trusted proxy where one is configured
(``--proxies-count``, ``--real-ip-header``, ``--forwarded-secret``), else the
peer's.  Bytes are those of the response body (its ``Content-Length``).
"""

from __future__ import annotations

import logging
import sys
import time

from sanic import Request, Sanic
from sanic.response import HTTPResponse

log = logging.getLogger("hashserver.access")


def _configure() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


async def _started(request: Request) -> None:
    request.ctx.started = time.perf_counter()


async def _answered(request: Request, response: HTTPResponse) -> None:
    seconds = time.perf_counter() - getattr(request.ctx, "started", time.perf_counter())
    target = request.path + (f"?{request.query_string}" if request.query_string else "")
    size = response.headers.get("content-length") or (str(len(response.body)) if response.body else "0")
    log.info('%s "%s %s" %d %s %.4f', request.remote_addr or request.ip, request.method, target,
             response.status, size, seconds)


def register(app: Sanic) -> None:
    _configure()
    app.register_middleware(_started, "request")
    app.register_middleware(_answered, "response")
