"""The settings of an ``s3://BUCKET[/PREFIX]`` store: the URL, --s3-endpoint (or
AWS_ENDPOINT_URL), --cache-dir and --cache-size; and what they mean for a plain directory."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading

import pytest

from hashserver.cli import config_from_args
from hashserver.config import DEFAULT_CACHE_SIZE, Config, ConfigError, format_size, parse_s3_url, size_in_bytes
from hashserver.testing import clean_environ

from conftest import BIN


def s3(url: str = "s3://bucket", **env: str) -> Config:
    return Config.from_env({"HASHSERVER_DIRECTORY": url, **env})


def test_s3_url_is_a_store_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = s3("s3://my-bucket/some/prefix/", HASHSERVER_WRITABLE="1")
    assert config.object_store and not Config(str(tmp_path)).object_store
    assert config.directory == "s3://my-bucket/some/prefix"  # no directory checks, no abspath
    assert (config.cache_size, config.s3_endpoint) == (DEFAULT_CACHE_SIZE, None)
    assert config.cache_dir == str(tmp_path / "hashserver" / "my-bucket%2Fsome%2Fprefix")
    assert Config.from_env(config.to_env()) == config
    assert parse_s3_url(config.directory) == ("my-bucket", "some/prefix")
    assert parse_s3_url("s3://my.bucket") == ("my.bucket", "")


@pytest.mark.parametrize("url, why", [
    ("s3://", "not an S3 bucket name"),
    ("s3://Upper", "not an S3 bucket name"),
    ("s3://b", "not an S3 bucket name"),
    ("s3://bucket_name", "not an S3 bucket name"),
    ("s3://a..b", "not an S3 bucket name"),
    ("s3://bucket/a//b", "the prefix must be names separated by single slashes"),
    ("s3://bucket/a/../b", "the prefix must be names separated by single slashes"),
    ("s3://bucket/a?b", "the prefix may not hold '?', '#' or '\\'"),
    ("s3://bucket//a", "the prefix must be names separated by single slashes"),
])
def test_bad_s3_urls_name_the_setting(url, why):
    with pytest.raises(ConfigError) as info:
        s3(url)
    assert str(info.value).startswith(f"HASHSERVER_DIRECTORY={url!r}: {why}")
    with pytest.raises(ConfigError, match=r"^DIRECTORY="):
        config_from_args([url])


def test_vault_layout_is_a_directory_only():
    with pytest.raises(ConfigError, match=r"^--layout='vault': a vault is a directory"):
        config_from_args(["s3://bucket", "--layout", "vault"])
    assert config_from_args(["s3://bucket", "--layout", "flat"]).layout == "flat"


def test_a_writable_s3_store_takes_bodies_s3_can_upload():
    """S3 takes at most 10,000 parts in an upload: a larger body would fail after 78 GiB."""
    assert config_from_args(["s3://bucket", "--writable", "--max-body-size", "80000M"]).max_body_size == 80000 << 20
    with pytest.raises(ConfigError) as info:
        config_from_args(["s3://bucket", "--writable", "--max-body-size", "100G"])
    assert str(info.value) == ("--max-body-size=107374182400: at most 80000M on an s3:// store: an upload takes "
                               "at most 10,000 parts of 8 MiB")
    assert config_from_args(["s3://bucket", "--max-body-size", "100G"]).max_body_size == 100 << 30  # (read-only)
    assert config_from_args(["/tmp", "--writable", "--max-body-size", "100G"]).max_body_size == 100 << 30


# ------------------------------------------------------------------ cache size
@pytest.mark.parametrize("raw, expected", [
    ("0", 0), ("4096", 4096), ("1K", 1024), ("1k", 1024), ("512M", 512 * 1024**2), ("10G", 10 * 1024**3),
    ("2T", 2 * 1024**4), ("1.5G", 3 * 1024**3 // 2), ("64KiB", 64 * 1024), ("3 MB", 3 * 1024**2),
])
def test_cache_size_spellings(raw, expected):
    assert s3(HASHSERVER_CACHE_SIZE=raw).cache_size == expected
    assert config_from_args(["s3://bucket", "--cache-size", raw]).cache_size == expected


def test_cache_size_formats_back():
    for value in (0, 1023, 1024, 10 * 1024**3, 3 * 1024**2 + 1):
        assert size_in_bytes(format_size(value)) == value
    assert format_size(DEFAULT_CACHE_SIZE) == "10G"


@pytest.mark.parametrize("raw", ["lots", "10X", "-1", "1.5.5G", ""])
def test_bad_cache_size_names_the_setting(raw):
    if raw == "":
        assert s3(HASHSERVER_CACHE_SIZE=raw).cache_size == DEFAULT_CACHE_SIZE  # blank: unset
        return
    with pytest.raises(ConfigError, match=rf"^HASHSERVER_CACHE_SIZE={raw!r}: not a size"):
        s3(HASHSERVER_CACHE_SIZE=raw)


def test_bad_cache_size_on_the_command_line_is_one_line():
    out = subprocess.run([str(BIN / "hashserver"), "s3://bucket", "--cache-size", "lots"], env=clean_environ(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--cache-size" in out.stderr and "'lots'" in out.stderr


def test_without_the_s3_extra_an_s3_store_is_one_line_naming_it(tmp_path):
    """A server installed without the ``s3`` extra (here: its client library hidden by a
    module that cannot be imported) refuses an ``s3://`` store with one line that says
    which extra to install, exit status 2; a directory still serves."""
    hidden = tmp_path / "hidden"
    (hidden / "obstore").mkdir(parents=True)
    (hidden / "obstore" / "__init__.py").write_text('raise ImportError("No module named \'obstore\'")\n')
    env = clean_environ({"PYTHONPATH": str(hidden), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    out = subprocess.run([str(BIN / "hashserver"), "s3://bucket", "--s3-endpoint", "http://127.0.0.1:9"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "DIRECTORY='s3://bucket'" in out.stderr and "pip install 'hashserver-sanic[s3]'" in out.stderr
    out = subprocess.run([str(BIN / "hashserver"), str(tmp_path), "--timeout", "0.5"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_an_aws_variable_obstore_cannot_take_is_one_line():
    """Credentials and the like come from the AWS_* environment, which obstore parses: a
    value it refuses stops the start with one line, not a traceback."""
    env = clean_environ({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "us-east-1",
                         "AWS_UNSIGNED_PAYLOAD": "maybe"})
    out = subprocess.run([str(BIN / "hashserver"), "s3://bucket", "--s3-endpoint", "http://127.0.0.1:9"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("hashserver: --s3-endpoint='http://127.0.0.1:9': obstore cannot make an S3 client")
    assert 'failed to parse "maybe" as boolean' in out.stderr


# ------------------------------------------------------------------ cache dir
def test_default_cache_dir_is_one_per_store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dirs = {s3(url).cache_dir for url in ("s3://bucket", "s3://bucket/ab", "s3://bucket/a/b", "s3://other")}
    dirs.add(s3("s3://bucket", AWS_ENDPOINT_URL="http://127.0.0.1:8333").cache_dir)
    assert len(dirs) == 5  # and none inside another: each is one name under the same directory
    assert {os.path.dirname(d) for d in dirs} == {str(tmp_path / "xdg" / "hashserver")}
    assert s3("s3://bucket", AWS_ENDPOINT_URL="http://127.0.0.1:8333").cache_dir == str(
        tmp_path / "xdg" / "hashserver" / "127.0.0.1:8333%2Fbucket")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert s3("s3://bucket").cache_dir == str(tmp_path / "home" / ".cache" / "hashserver" / "bucket")


def test_given_cache_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_from_args(["s3://bucket", "--cache-dir", "tier"]).cache_dir == str(tmp_path / "tier")
    assert s3(HASHSERVER_CACHE_DIR=str(tmp_path / "t")).cache_dir == str(tmp_path / "t")


# ------------------------------------------------------------------ endpoint
def test_endpoint_from_the_option_then_hashserver_then_aws_variable():
    assert s3(AWS_ENDPOINT_URL="http://aws:1").s3_endpoint == "http://aws:1"
    both = {"AWS_ENDPOINT_URL": "http://aws:1", "HASHSERVER_S3_ENDPOINT": "https://ours:2"}
    assert s3(**both).s3_endpoint == "https://ours:2"
    assert config_from_args(["s3://bucket", "--s3-endpoint", "http://cli:3"], both).s3_endpoint == "http://cli:3"
    with pytest.raises(ConfigError, match=r"^HASHSERVER_S3_ENDPOINT='ftp://x': not an http:// or https:// URL"):
        s3(HASHSERVER_S3_ENDPOINT="ftp://x")


# ------------------------------------------------------------------ a plain directory
@pytest.mark.parametrize("option, value", [("--cache-dir", "/tmp/tier"), ("--cache-size", "1G"),
                                           ("--s3-endpoint", "http://127.0.0.1:8333")])
def test_s3_settings_for_a_plain_directory_are_a_mistake(tmp_path, option, value):
    with pytest.raises(ConfigError) as info:
        config_from_args([str(tmp_path), option, value], {})
    assert str(info.value).startswith(f"{option}=") and "applies to an s3://BUCKET[/PREFIX] directory only" in str(
        info.value)
    variable = "HASHSERVER_" + option[2:].upper().replace("-", "_")
    with pytest.raises(ConfigError, match=rf"^{variable}="):
        Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), variable: value})


@pytest.mark.parametrize("options", [["--cache-dir", "/tmp/tier"], ["--cache-size", "1G"], ["--no-s3-lean-client"]])
def test_s3_settings_for_a_plain_directory_are_a_mistake_with_an_aws_endpoint_too(tmp_path, options):
    """The environment's AWS_ENDPOINT_URL excuses itself only, not the other settings of an s3:// store."""
    with pytest.raises(ConfigError, match="applies to an s3://BUCKET"):
        config_from_args([str(tmp_path), *options], {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"})


def test_a_plain_directory_ignores_the_environments_aws_endpoint(tmp_path):
    """AWS_ENDPOINT_URL is for every S3 client of an environment: not a mistake of the server's."""
    config = config_from_args([str(tmp_path)], {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"})
    assert not config.object_store and config.cache_dir is None
    assert Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), "AWS_ENDPOINT_URL": "http://x:1"}).directory == str(
        tmp_path)
    assert config_from_args([str(tmp_path), "--cache-size", "10G"], {}).cache_size == DEFAULT_CACHE_SIZE



class RecordingStore:
    """A listener on 127.0.0.1 that answers every request 404 (the first ``failures`` with
    503 instead) and keeps each request's head."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.heads: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := connection.recv(65536)):
                    head += chunk
                self.heads.append(head.decode("latin-1").lower())
                status = b"503 Slow Down" if len(self.heads) <= self.failures else b"404 Not Found"
                connection.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def test_a_session_token_and_the_default_region_reach_both_clients(monkeypatch):
    """Temporary credentials (``AWS_SESSION_TOKEN``) and a region given only as
    ``AWS_DEFAULT_REGION`` (as the AWS CLI writes it): obstore's calls and the lean client's
    both sign with that region and send the token in the ``x-amz-security-token`` header,
    signed, as AWS requires of temporary credentials (seen by a listener standing in for
    the store)."""
    obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
    from hashserver.objectstore import build_store
    from hashserver.s3lean import for_endpoint

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
                        "AWS_SESSION_TOKEN": "the-session-token", "AWS_DEFAULT_REGION": "eu-north-1"}.items():
        monkeypatch.setenv(name, value)
    store = RecordingStore()
    try:
        with pytest.raises(FileNotFoundError):
            obstore.head(build_store("bucket", store.url), "some/key")
        lean = for_endpoint("bucket", store.url)
        assert lean is not None  # these variables are all the lean client's own
        try:
            status, _ = asyncio.run(lean.get_range("some/key", 0, 10))
        except FileNotFoundError:
            status = 404
        assert status == 404
        lean.close()
    finally:
        store.close()
    assert len(store.heads) == 2, store.heads
    for head in store.heads:
        assert "\r\nx-amz-security-token: the-session-token\r\n" in head, head
        authorization = next(line for line in head.split("\r\n") if line.startswith("authorization:"))
        assert "/eu-north-1/s3/aws4_request" in authorization
        assert "x-amz-security-token" in authorization.split("signedheaders=")[1].split(",")[0].split(";")


def test_obstores_calls_are_retried_after_a_5xx(monkeypatch):
    """The store's client as the server builds it retries an idempotent call that got a
    503 (S3's "slow down"), with backoff, and takes the answer that follows: two 503s, then
    the real answer (here 404: absent)."""
    obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
    from hashserver.objectstore import build_store

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    store = RecordingStore(failures=2)
    try:
        with pytest.raises(FileNotFoundError):
            obstore.head(build_store("bucket", store.url), "some/key")
    finally:
        store.close()
    assert len(store.heads) == 3, store.heads
