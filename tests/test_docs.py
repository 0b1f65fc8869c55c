"""The API description and its pages, checked as their users meet them: the
document validated (openapi-spec-validator), held against a live server
(schemathesis), and /docs and /redoc rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests
from openapi_spec_validator import validate
from websockets.sync.client import connect

from hashserver import Config, create_app
from hashserver.compression import zstd
from hashserver.testing import stop_process

from conftest import BIN, add_buffer, sha3

CHROMIUM = "/usr/bin/chromium"
SEED = 20251125
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")
TOKEN = "docs-test-token"
PROMISE = "/promise/{checksum}"
IN_MEMORY = ("blob:", "data:")  # URLs a page makes itself
HTTP_METHODS = ("get", "head", "put", "post", "options")
_names = itertools.count()


# ---------------------------------------------------------------- servers

@pytest.fixture
def start_server(tmp_path, serve):
    """``start_server(*options)``: the base URL of a server on a fresh directory,
    started with these command-line options."""

    def start(*options: str) -> str:
        directory = tmp_path / f"buffers{next(_names)}"
        directory.mkdir()
        # The documents' example checksum, stored compressed: both representations.
        add_buffer(directory, zstd.compress(b"hello"), checksum=sha3(b"hello"), suffix=".zst")
        return serve(directory, *options).url

    return start


def get_document(url: str) -> dict:
    response = requests.get(url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    return response.json()


def operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in HTTP_METHODS}


# ---------------------------------------------------------------- the document

def app_routes() -> set[tuple[str, str]]:
    """Every (method, path) the app answers, from Sanic's router."""
    app = create_app(Config("/tmp", writable=True), name=f"routes_{next(_names)}")
    routes = set()
    for route in app.router.routes:
        path = "/" + re.sub(r"<(\w+)(:\w+)?>", r"{\1}", route.path)
        routes.update((method, path) for method in route.methods)
    return routes


def test_document_is_valid_and_describes_every_route(start_server):
    document = get_document(start_server("--writable"))
    validate(document)
    assert document["openapi"].startswith("3.1")
    missing = app_routes() - operations(document)
    expected_later = {("GET", "/metrics")}  # documented ahead of its handler (issue 12)
    assert missing == set(), f"routes the document does not describe: {missing}"
    assert operations(document) - app_routes() <= expected_later


def test_document_follows_the_server_settings(start_server):
    writable = get_document(start_server("--writable"))
    assert set(writable["paths"]["/{checksum}"]["put"]["responses"]) >= {"200", "400", "413", "507"}
    assert "security" not in writable["paths"]["/{checksum}"]["put"]
    url = start_server()
    read_only = get_document(url)
    assert set(read_only["paths"]["/{checksum}"]["put"]["responses"]) == {"405", "500", "503"}
    response = requests.put(url + "/" + "0" * 64, data=b"x", timeout=10)
    assert response.status_code == 405
    assert set(response.json()) == {"message"}


def test_pages_assets_and_favicon(start_server):
    url = start_server("--writable")
    for page in ("/docs", "/redoc"):
        response = requests.get(url + page, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "/openapi.json" in response.text and "//cdn" not in response.text
        for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', response.text):
            served = requests.get(url + asset, timeout=10)
            assert served.status_code == 200
            expected = "text/css" if asset.endswith(".css") else "text/javascript"
            assert served.headers["content-type"] == expected + "; charset=utf-8"
            assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert len(served.content) > 100_000
    icon = requests.get(url + "/favicon.ico", timeout=10)
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file


# ---------------------------------------------------------------- schemathesis

NO_ZSTD_CLIENT = """import sys
sys.modules["backports.zstd"] = sys.modules["compression.zstd"] = None
"""


def run_schemathesis(url: str, tmp_path: Path, *options: str) -> None:
    """Positive and negative examples against the live server; no failure allowed.

    Its HTTP client (urllib3) decodes any body sent with a ``Content-Encoding`` it knows,
    parts (206) too, which cannot be decoded alone: a part of the zstd example from its
    middle is a "network error" to it. Where a zstd module can be imported (hashserver's
    own dependency), urllib3 knows zstd; here it is hidden from it, so zstd bodies reach
    the checks as sent (gzip is not stored here)."""
    site = tmp_path / "no-zstd-client"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_ZSTD_CLIENT)
    argv = [str(BIN / "schemathesis"), "run", url + "/openapi.json", "--checks", CHECKS,
            "-n", "30", "--seed", str(SEED), "--mode", "all", "--generation-database", "none",
            "--request-timeout", "30", "--no-color", "--report", "junit",
            "--report-dir", str(tmp_path / "schemathesis"), *options]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]


def run_schemathesis_twice(start, tmp_path: Path, server_options: tuple[str, ...], *options: str) -> None:
    """Promises on a server of their own: a GET of a promised buffer waits for
    it (until the promise lapses), and the fuzzer promises the checksums it GETs."""
    run_schemathesis(start(*server_options), tmp_path, "--exclude-path", PROMISE, *options)
    run_schemathesis(start(*server_options), tmp_path, "--include-path", PROMISE, *options)


@pytest.mark.timeout(900)
def test_schemathesis_without_tokens(start_server, tmp_path):
    run_schemathesis_twice(start_server, tmp_path, ("--writable",))


@pytest.mark.timeout(900)
def test_schemathesis_with_write_tokens(start_server, tmp_path):
    tokens = tmp_path / "write-tokens"
    tokens.write_text(f"# writers\n\n{TOKEN}\n")
    server_options = ("--writable", "--write-token-file", str(tokens))
    document = get_document(start_server(*server_options))
    assert document["paths"]["/{checksum}"]["put"]["security"] == [{"bearer": []}]
    run_schemathesis_twice(start_server, tmp_path, server_options, "-H", f"Authorization: Bearer {TOKEN}")


# ---------------------------------------------------------------- the browser

class DevTools:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == method for event in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        return next(event for event in self.events if event.get("method") == method)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        """The expression's value, once truthy (polled; bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"never true within {timeout} s: {expression}")

    def settle(self, quiet: float = 1.0, timeout: float = 30) -> None:
        """Wait until every request the page made has ended and nothing has
        happened for ``quiet`` seconds (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=quiet)))
            except TimeoutError:
                if not self.pending():
                    return
        pending = [self.requests()[request] for request in self.pending()]
        raise AssertionError(f"requests still pending after {timeout} s: {pending}")

    def requests(self) -> dict[str, str]:
        """The URL of each request the page made, by request id."""
        return {event["params"]["requestId"]: event["params"]["request"]["url"]
                for event in self.events if event.get("method") == "Network.requestWillBeSent"}

    def pending(self) -> set[str]:
        """Network requests not ended yet (``blob:`` and ``data:`` are in memory)."""
        ended = {event["params"]["requestId"] for event in self.events
                 if event.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
        return {request for request, url in self.requests().items()
                if request not in ended and not url.startswith(IN_MEMORY)}

    def failed_requests(self) -> list[str]:
        """Requests that failed or got a status >= 400, and uncaught script errors."""
        urls = self.requests()
        failed = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Network.loadingFailed":
                failed.append(f"{params.get('errorText')}: {urls.get(params['requestId'], params['requestId'])}")
            elif event.get("method") == "Network.responseReceived" and params["response"]["status"] >= 400:
                failed.append(f"{params['response']['status']} {params['response']['url']}")
            elif event.get("method") == "Runtime.exceptionThrown":
                failed.append(f"exception: {params['exceptionDetails'].get('text')}")
        return failed


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """A headless Chromium on about:blank; killed by its process group at the end."""
    argv = [CHROMIUM, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,1000", *(["--no-sandbox"] if os.geteuid() == 0 else []), "about:blank"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        port = _devtools_port(profile / "DevToolsActivePort", process)
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(target for target in targets if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        stop_process(process, signal.SIGTERM, 10, group=True)


def _devtools_port(port_file: Path, process: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().split()[0])
        assert process.poll() is None, f"chromium exited with {process.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"chromium gave no DevTools port within {timeout} s")


def load_page(devtools: DevTools, url: str, rendered: str) -> None:
    """Navigate, wait for the load event and for ``rendered`` to be true."""
    for domain in ("Network", "Page", "Runtime"):
        devtools.call(f"{domain}.enable")
    devtools.call("Page.navigate", url=url)
    devtools.wait_event("Page.loadEventFired")
    devtools.wait_for(rendered)
    devtools.settle()
    server = url.rsplit("/", 1)[0]
    elsewhere = [u for u in devtools.requests().values() if not u.startswith((server, *IN_MEMORY))]
    assert elsewhere == [], "the page fetched from elsewhere than the server (no CDN: no internet where it runs)"


SWAGGER_OPERATIONS = """Array.from(document.querySelectorAll('.opblock')).map(block => [
  block.querySelector('.opblock-summary-method').textContent,
  block.querySelector('.opblock-summary-path').getAttribute('data-path')])"""


def test_swagger_ui_renders_every_route(start_server, tmp_path):
    url = start_server("--writable")
    expected = operations(get_document(url))
    with chromium(tmp_path / "profile") as devtools:
        load_page(devtools, url + "/docs", f"document.querySelectorAll('.opblock').length >= {len(expected)}")
        shown = {(method, path) for method, path in devtools.evaluate(SWAGGER_OPERATIONS)}
        screenshot = devtools.call("Page.captureScreenshot", format="png")["data"]
        failed = devtools.failed_requests()
    assert failed == []
    assert shown == expected
    png = base64.b64decode(screenshot)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "docs-screenshot.png").write_bytes(png)
    if os.environ.get("DOCS_SCREENSHOT"):  # to refresh the README's picture
        Path(os.environ["DOCS_SCREENSHOT"]).write_bytes(png)


def test_redoc_renders_every_route(start_server, tmp_path):
    url = start_server("--writable")
    document = get_document(url)
    with chromium(tmp_path / "profile") as devtools:
        load_page(devtools, url + "/redoc", "document.querySelector('.api-content') !== null")
        text = devtools.wait_for("document.querySelector('.api-content').innerText")
        failed = devtools.failed_requests()
    assert failed == []
    assert [path for path in document["paths"] if path not in text] == []
