"""What the HTTP request being answered will take of the buffer it opens.

:meth:`Storage.open <hashserver.storage.Storage.open>` is not told whether the
answer is a HEAD (no body), a part (``Range``) or the whole buffer, and an
object store must know: a HEAD needs no GET of a large object, and a part
must not be sent before the whole object was verified (a stream verified as
it is sent holds back only its last chunk, which a part may not reach).
Until ``open`` takes it as a parameter, the object store reads it here from
Sanic's current request (a context variable Sanic sets for each request);
outside a request (tests, tools) the whole buffer is assumed, which is
always safe.
"""

from __future__ import annotations

import enum


class Want(enum.Enum):
    HEADERS = "headers"  # HEAD: the length and headers, never a body
    PART = "part"  # a Range request: some bytes, which must be verified before they go out
    WHOLE = "whole"  # the whole body (verified as it streams)


def current_want() -> Want:
    """What the request being answered (if any) takes of the buffer."""
    try:
        from sanic import Request

        request = Request.get_current()
    except Exception:  # no request (or no Sanic): the whole buffer
        return Want.WHOLE
    if request.method == "HEAD":
        return Want.HEADERS
    if request.headers.get("range"):
        return Want.PART
    return Want.WHOLE
