"""A real HTTP cache in front (nginx ``proxy_cache``), and a real client
resuming a download (``curl -C -``): what the caching headers and ranges
are for."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from bench.servers import HOST, NginxServer
from hashserver.compression import zstd
from hashserver.testing import ServerProcess

from conftest import add_buffer, buffer_path, sha3


class ProxyCache(NginxServer):
    """nginx's ``proxy_cache`` in front of a hashserver, launched as the bench
    launches its nginx."""

    name = "nginx-cache"
    connections = 256

    def __init__(self, workdir: str, backend_port: int):
        super().__init__(workdir, workers=1)
        self.backend_port = backend_port

    def http_config(self) -> str:
        # proxy_cache_valid "any": nginx would keep every answer, errors included,
        # but for what the server's own Cache-Control forbids.
        cache = f"{self.prefix}/cache levels=1:2 keys_zone=buffers:4m max_size=1g inactive=1h use_temp_path=off"
        return f"""    proxy_cache_path {cache};
    server {{
        listen {HOST}:{self.port};
        location / {{
            proxy_pass http://{HOST}:{self.backend_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache buffers;
            proxy_cache_valid any 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
"""


@pytest.fixture
def cached(tmp_path):
    """A writable hashserver (2 workers) behind nginx's proxy cache: (cache url, server, directory)."""
    directory = tmp_path / "buffers"
    directory.mkdir()
    with ServerProcess.hashserver(directory, "--writable", workers=2, log_path=tmp_path / "server.log") as server:
        with ProxyCache(str(tmp_path), server.port) as proxy:
            yield f"http://{HOST}:{proxy.port}", server, directory


def get(url: str, headers: dict | None = None) -> requests.Response:
    # stream=True and .raw: the bytes as sent, never decoded by the client
    response = requests.get(url, headers={"Accept-Encoding": "identity", **(headers or {})}, timeout=30,
                            stream=True)
    response.raw_bytes = response.raw.read()
    return response


def test_second_get_comes_from_the_cache(cached):
    url, server, directory = cached
    data = os.urandom(5000)
    cs = add_buffer(directory, data)
    first = get(f"{url}/{cs}")
    assert (first.status_code, first.raw_bytes, first.headers["X-Cache-Status"]) == (200, data, "MISS")
    os.unlink(buffer_path(directory, cs))  # the server no longer has it: only the cache can answer
    second = get(f"{url}/{cs}")
    assert (second.status_code, second.raw_bytes, second.headers["X-Cache-Status"]) == (200, data, "HIT")
    assert requests.get(f"{server.url}/{cs}", timeout=30).status_code == 404


def test_not_found_and_errors_are_never_cached(cached):
    url, server, directory = cached
    data = b"arrives later"
    cs = sha3(data)
    for _ in range(2):
        missing = get(f"{url}/{cs}")
        assert missing.status_code == 404 and missing.headers.get("X-Cache-Status") != "HIT"
        invalid = get(f"{url}/abc")
        assert invalid.status_code == 400 and invalid.headers.get("X-Cache-Status") != "HIT"
        has = requests.post(f"{url}/has", json=[cs], timeout=30)
        assert has.json() == [False] and has.headers.get("X-Cache-Status") != "HIT"
    assert requests.put(f"{url}/{cs}", data=data, timeout=30).status_code == 200
    assert get(f"{url}/{cs}").raw_bytes == data
    assert requests.post(f"{url}/has", json=[cs], timeout=30).json() == [True]


@pytest.mark.parametrize("first_asks_for_zstd", [True, False])
def test_the_cache_never_hands_encoded_bytes_to_a_client_that_did_not_ask(cached, first_asks_for_zstd):
    url, server, directory = cached
    data = f"compressed, asked first: {first_asks_for_zstd} ".encode() * 2000
    cs = sha3(data)
    path = buffer_path(directory, cs)
    path.parent.mkdir(exist_ok=True)
    encoded = zstd.compress(data)
    Path(str(path) + ".zst").write_bytes(encoded)
    order = [{"Accept-Encoding": "zstd"}, {}] if first_asks_for_zstd else [{}, {"Accept-Encoding": "zstd"}]
    for _ in range(2):  # the second round is served from the cache
        for headers in order:
            response = get(f"{url}/{cs}", headers)
            if headers:
                assert response.headers["Content-Encoding"] == "zstd"
                assert response.raw_bytes == encoded
            else:
                assert "Content-Encoding" not in response.headers
                assert hashlib.sha3_256(response.raw_bytes).hexdigest() == cs
    assert response.headers["X-Cache-Status"] == "HIT"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_curl_resumes_an_interrupted_download_of_1_gib(tmp_path, serve):
    directory = tmp_path / "buffers"
    directory.mkdir()
    digest = hashlib.sha3_256()
    staging = tmp_path / "big"
    with open(staging, "wb") as f:
        for _ in range(64):
            chunk = os.urandom(16 << 20)
            digest.update(chunk)
            f.write(chunk)
    cs = digest.hexdigest()
    buffer_path(directory, cs).parent.mkdir()
    os.rename(staging, buffer_path(directory, cs))
    server = serve(directory, workers=1)
    out = tmp_path / "download"
    url = f"{server.url}/{cs}"
    interrupted = subprocess.Popen(["curl", "-s", "--limit-rate", "100M", "-o", str(out), url])
    deadline = time.monotonic() + 120
    while (not out.exists() or out.stat().st_size < 50 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted.kill()
    interrupted.wait(10)
    partial = out.stat().st_size
    assert 0 < partial < 1 << 30
    resumed = subprocess.run(["curl", "-s", "-S", "-f", "-C", "-", "-o", str(out), url], timeout=300)
    assert resumed.returncode == 0
    assert out.stat().st_size == 1 << 30
    check = hashlib.sha3_256()
    with open(out, "rb") as f:
        while chunk := f.read(16 << 20):
            check.update(chunk)
    assert check.hexdigest() == cs
