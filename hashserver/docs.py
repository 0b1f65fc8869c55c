"""``/openapi.json``, ``/docs`` (Swagger UI), ``/redoc`` (ReDoc), their
JavaScript and CSS, and ``/favicon.ico``: the API described and rendered by
the server itself.

The Swagger UI and ReDoc bundles come from the ``openapi-ui-bundles``
package and are served from here, never from a CDN: these servers often run
where there is no internet.  Their URLs name the package's version, so that
they can be cached for good.  Register with ``app.blueprint(blueprint)``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import openapi_ui_bundles
from openapi_ui_bundles import redoc, swagger_ui
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from .openapi import IMMUTABLE, ApiFacts, document

blueprint = Blueprint("docs")

HTML = "text/html; charset=utf-8"
NO_CACHE = {"cache-control": "no-cache"}  # pages and document follow the server's version and settings
ASSET_PREFIX = f"/docs/assets/{openapi_ui_bundles.__version__}"


@dataclass(frozen=True)
class Asset:
    """A static file: where it is, its media type, how long it may be cached,
    and the URLs in it that must point here instead (``(old, new)`` pairs)."""

    path: Path
    media_type: str
    cache_control: str = IMMUTABLE
    rewrites: tuple[tuple[str, str], ...] = ()

    @property
    def content_type(self) -> str:
        return self.media_type + ("; charset=utf-8" if self.media_type.startswith("text/") else "")


ASSETS = {
    f"{ASSET_PREFIX}/swagger-ui-bundle.js": Asset(swagger_ui.static_path / "swagger-ui-bundle.js",
                                                  "text/javascript"),
    f"{ASSET_PREFIX}/swagger-ui.css": Asset(swagger_ui.static_path / "swagger-ui.css", "text/css"),
    # ReDoc's menu shows Redocly's logo, fetched from a CDN: from here instead
    # (the package ships the logo for this).
    f"{ASSET_PREFIX}/redoc.standalone.js": Asset(
        redoc.static_path / "redoc.standalone.js", "text/javascript",
        rewrites=(("https://cdn.redoc.ly/redoc/logo-mini.svg", f"{ASSET_PREFIX}/logo-mini.svg"),)),
    f"{ASSET_PREFIX}/logo-mini.svg": Asset(redoc.static_path / "logo-mini.svg", "image/svg+xml"),
}
FAVICON = Asset(Path(__file__).parent / "static" / "favicon.ico", "image/x-icon",
                "public, max-age=86400")

SWAGGER_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hashserver API - Swagger UI</title>
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="{ASSET_PREFIX}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSET_PREFIX}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  deepLinking: true,
  displayRequestDuration: true,
  validatorUrl: null
}});
</script>
</body>
</html>
"""

REDOC_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hashserver API - ReDoc</title>
<link rel="icon" href="/favicon.ico">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="{ASSET_PREFIX}/redoc.standalone.js"></script>
</body>
</html>
"""


@lru_cache(maxsize=4)
def document_bytes(facts: ApiFacts) -> bytes:
    """The document as JSON, built once per worker (a server's settings are fixed)."""
    assets = {url: asset.media_type for url, asset in ASSETS.items()}
    return json.dumps(document(facts, assets)).encode()


@blueprint.get("/openapi.json")
async def openapi_json(request: Request) -> HTTPResponse:
    facts = ApiFacts.from_config(request.app.ctx.config)
    return HTTPResponse(document_bytes(facts), content_type="application/json",
                        headers={"access-control-allow-origin": "*", **NO_CACHE})


@blueprint.get("/docs")
async def swagger_page(request: Request) -> HTTPResponse:
    return HTTPResponse(SWAGGER_PAGE, content_type=HTML, headers=NO_CACHE)


@blueprint.get("/redoc")
async def redoc_page(request: Request) -> HTTPResponse:
    return HTTPResponse(REDOC_PAGE, content_type=HTML, headers=NO_CACHE)


@lru_cache(maxsize=None)
def _read(asset: Asset) -> bytes:
    content = asset.path.read_bytes()
    for old, new in asset.rewrites:
        content = content.replace(old.encode(), new.encode())
    return content


async def _send(asset: Asset) -> HTTPResponse:
    """The file, read once per worker (in a thread: the bundles are megabytes)."""
    content = await asyncio.get_running_loop().run_in_executor(None, _read, asset)
    return HTTPResponse(content, content_type=asset.content_type,
                        headers={"cache-control": asset.cache_control})


def _asset_handler(asset: Asset):
    async def asset_handler(request: Request) -> HTTPResponse:
        return await _send(asset)

    return asset_handler


for _number, (_url, _asset) in enumerate(ASSETS.items()):
    blueprint.add_route(_asset_handler(_asset), _url, methods=["GET"], name=f"asset{_number}")


@blueprint.get("/favicon.ico")
async def favicon(request: Request) -> HTTPResponse:
    return await _send(FAVICON)
