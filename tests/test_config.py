"""Configuration: the command line and the environment map onto one validated Config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from hashserver.cli import config_from_args, settings_markdown
from hashserver.config import SETTINGS, Config, ConfigError
from hashserver.testing import clean_environ

from conftest import BIN, free_port, self_signed


def test_import_creates_and_starts_nothing():
    out = subprocess.run(
        [str(BIN / "python"), "-c",
         "import hashserver, sanic; print(len(sanic.Sanic._app_registry))"],
        check=False, capture_output=True, text=True, env={}, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_env_defaults(tmp_path):
    config = Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path)})
    assert config.directory == str(tmp_path)
    assert (config.writable, config.layout, config.lock_timeout) == (False, "prefix", 120.0)
    assert (config.host, config.port, config.verify) == ("127.0.0.1", 8000, "once")


@pytest.mark.parametrize("name", ["HASHSERVER_WRITABLE", "HASHSERVER_WRITEABLE"])
@pytest.mark.parametrize("raw, expected", [("1", True), ("TRUE", True), ("true", True),
                                           ("0", False), ("False", False), ("", False)])
def test_env_writable_spellings(tmp_path, name, raw, expected):
    config = Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), name: raw})
    assert config.writable is expected


def test_env_everything(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    config = Config.from_env({
        "HASHSERVER_DIRECTORY": str(tmp_path), "HASHSERVER_LAYOUT": "flat",
        "HASHSERVER_LOCK_TIMEOUT": "2.5", "HASHSERVER_EXTRA_DIRS": f"{extra};",
        "HASHSERVER_HOST": "0.0.0.0", "HASHSERVER_PORT": "9000", "HASHSERVER_WORKERS": "3",
    })
    assert config.layout == "flat" and config.lock_timeout == 2.5
    assert config.extra_dirs == (str(extra),)
    assert (config.host, config.port, config.workers) == ("0.0.0.0", 9000, 3)
    assert Config.from_env(config.to_env()) == config


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({}, "HASHSERVER_DIRECTORY is not set"),
        ({"HASHSERVER_DIRECTORY": "/does/not/exist"}, "HASHSERVER_DIRECTORY='/does/not/exist'"),
        ({"HASHSERVER_WRITABLE": "maybe"}, "HASHSERVER_WRITABLE='maybe'"),
        ({"HASHSERVER_LAYOUT": "tree"}, "HASHSERVER_LAYOUT='tree'"),
        ({"HASHSERVER_LOCK_TIMEOUT": "0"}, "HASHSERVER_LOCK_TIMEOUT=0.0"),
        ({"HASHSERVER_LOCK_TIMEOUT": "soon"}, "HASHSERVER_LOCK_TIMEOUT='soon'"),
        ({"HASHSERVER_PORT": "http"}, "HASHSERVER_PORT='http'"),
        ({"HASHSERVER_LAYOUT": "vault", "HASHSERVER_WRITABLE": "1"}, "read-only"),
    ],
)
def test_env_errors_name_setting_and_value(tmp_path, env, fragment):
    full = {"HASHSERVER_DIRECTORY": str(tmp_path), **env} if env != {} else {}
    with pytest.raises(ConfigError) as info:
        Config.from_env(full)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        config_from_args([str(f)])


def test_cli_maps_every_option(tmp_path):
    extra = tmp_path / "e"
    extra.mkdir()
    config = config_from_args([str(tmp_path), "--writable", "--host", "0.0.0.0", "--port", "1234",
                               "--layout", "flat", "--lock-timeout", "3", "--extra-dirs", str(extra),
                               "--workers", "2", "--verify", "never"])
    assert config == Config(str(tmp_path), writable=True, host="0.0.0.0", port=1234, layout="flat",
                            lock_timeout=3.0, extra_dirs=(str(extra),), workers=2, verify="never")


def test_help_documents_every_option():
    out = subprocess.run([str(BIN / "hashserver"), "-h"], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("--writable", "--host", "--port", "--layout", "--lock-timeout", "--extra-dirs",
                   "--workers", "--verify", "--max-body-size", "--hash-algorithm"):
        assert option in out.stdout
    module = subprocess.run([str(BIN / "python"), "-m", "hashserver", "-h"], check=False, capture_output=True,
                            text=True, timeout=60)
    assert module.stdout == out.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["/does/not/exist"], "DIRECTORY='/does/not/exist': directory does not exist"),
        (["{d}", "--layout", "tree"], "--layout"),
        (["{d}", "--lock-timeout", "-1"], "--lock-timeout=-1.0"),
        (["{d}", "--layout", "vault", "--writable"], "--layout='vault'"),
        (["{d}", "--port", "abc"], "--port: 'abc' is not a whole number"),
        (["{d}", "--lock-timeout", "soon"], "--lock-timeout: 'soon' is not a number"),
        (["{d}", "--memory-cache", "10X"], "--memory-cache: '10X' is not a size (bytes, or with a K, M, G or T"),
        (["{d}", "--max-body-size", "-1"], "--max-body-size: '-1' is not a size"),
        ([], "no DIRECTORY: give the buffer directory (or s3://BUCKET[/PREFIX]) on the command line or in "
             "HASHSERVER_DIRECTORY"),
        (["S3://bucket/prefix"], "directory does not exist (a bucket is spelled s3://BUCKET[/PREFIX])"),
    ],
)
def test_cli_startup_errors_are_one_line(tmp_path, args, fragment):
    argv = [a.format(d=tmp_path) for a in args]
    out = subprocess.run([str(BIN / "hashserver"), *argv], check=False, capture_output=True, text=True, timeout=60,
                         env=clean_environ())
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert fragment in lines[0]
    assert "Traceback" not in out.stderr + out.stdout


def test_a_port_in_use_is_one_line_before_the_index_is_built(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = subprocess.run([str(BIN / "hashserver"), str(tmp_path), "--port", str(port)], capture_output=True,
                             text=True, timeout=60, env=clean_environ(), check=False)
    assert out.returncode == 2
    assert out.stderr == f"hashserver: --host=127.0.0.1 --port={port}: cannot listen there: Address already in use\n"


def test_a_flat_layout_over_a_prefix_directory_warns(serve, tmp_path):
    prefixed, flat = tmp_path / "prefixed", tmp_path / "flat"
    for directory in (prefixed, flat):
        directory.mkdir()
    (prefixed / ".HASHSERVER_PREFIX").write_bytes(b"")
    warning = f"{prefixed} holds .HASHSERVER_PREFIX, written by servers in the prefix layout, and this one reads " \
              f"the flat layout: buffers in its two-hex directories are not found"
    assert warning in serve(prefixed, "--layout", "flat").output()
    assert "holds .HASHSERVER_PREFIX" not in serve(prefixed).output() + serve(flat, "--layout", "flat").output()


def test_listening_is_checked_for_ipv6_hosts_too(tmp_path):
    from hashserver.cli import check_listening

    check_listening(config_from_args([str(tmp_path), "--host", "::1", "--port", str(free_port())], {}))
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as taken:
        port = taken.getsockname()[1]
        in_use = rf"^--host=::1 --port={port}: cannot listen there: Address already in use$"
        with pytest.raises(ConfigError, match=in_use):
            check_listening(config_from_args([str(tmp_path), "--host", "::1", "--port", str(port)], {}))
    with pytest.raises(ConfigError, match="cannot listen there: Cannot assign requested address$"):
        check_listening(config_from_args([str(tmp_path), "--host", "10.255.255.1"], {}))


def test_the_command_takes_its_directory_from_the_environment(tmp_path):
    config = config_from_args(["--port", "1234"], {"HASHSERVER_DIRECTORY": str(tmp_path)})
    assert (config.directory, config.port) == (str(tmp_path), 1234)
    other = tmp_path / "other"
    other.mkdir()
    assert config_from_args([str(other)], {"HASHSERVER_DIRECTORY": str(tmp_path)}).directory == str(other)
    port = free_port()
    server = subprocess.Popen([str(BIN / "hashserver"), "--port", str(port), "--timeout", "30"],
                              env=clean_environ({"HASHSERVER_DIRECTORY": str(tmp_path)}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.1)
        else:
            pytest.fail("the server did not answer within 30 s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_body_sizes_take_suffixes():
    assert config_from_args(["/", "--max-body-size", "1G"], {}).max_body_size == 1 << 30
    assert Config.from_env({"HASHSERVER_DIRECTORY": "/", "HASHSERVER_MAX_BODY_SIZE": "512M"}).max_body_size == 512 << 20
    assert Config.from_env({"HASHSERVER_DIRECTORY": "/", "HASHSERVER_MAX_BODY_SIZE": "1000"}).max_body_size == 1000


# ------------------------------------------------------------ the settings table
README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_START, TABLE_END = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"


def test_table_rows_are_the_config_fields():
    attrs = [f.name for f in fields(Config) if f.name != "names"]
    assert [row.attr for row in SETTINGS] == attrs
    defaults = {f.name: f.default for f in fields(Config)}
    assert all(row.default == defaults[row.attr] for row in SETTINGS)
    for row in SETTINGS:
        assert row.env == "HASHSERVER_" + row.attr.upper()
        assert row.help and "%" not in row.help
    assert [row.attr for row in SETTINGS if row.default is MISSING] == ["directory"]


def non_default_values(tmp_path) -> dict:
    """A value other than the default for every setting (extend it for a new setting)."""
    extra = tmp_path / "extra"
    extra.mkdir(exist_ok=True)
    tokens = tmp_path / "tokens"
    tokens.write_text("# writers\nsecret\n")
    self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    return {"directory": "s3://bucket/prefix", "s3_endpoint": "http://127.0.0.1:8333",
            "cache_dir": str(tmp_path / "cache"), "cache_size": 1024**2, "writable": True,
            "host": "0.0.0.0", "port": 9001,
            "layout": "flat", "lock_timeout": 2.5, "extra_dirs": (str(extra), str(tmp_path)),
            "workers": 3, "verify": "always", "max_body_size": 12345, "hash_algorithm": "sha-256",
            "status_file": str(tmp_path / "s.json"), "timeout": 7.25, "max_batch": 17,
            "write_token_file": str(tokens), "read_token_file": str(tokens), "access_log": True,
            "proxies_count": 1, "real_ip_header": "X-Real-IP", "forwarded_secret": "s3cret",
            "tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem"),
            "wait_timeout": 5.5, "body_idle_timeout": 7.5, "min_body_rate": 1000, "keep_alive_timeout": 9.5,
            "header_timeout": 4.5, "shutdown_grace": 2.5, "hot_path": False,
            "memory_cache": 12345, "s3_lean_client": False}


def test_env_round_trip_of_every_setting(tmp_path):
    values = non_default_values(tmp_path)
    assert set(values) == {row.attr for row in SETTINGS}, "give every setting a test value"
    config = Config(**values)
    env = config.to_env()
    assert set(env) == {row.env for row in SETTINGS}
    assert Config.from_env(env) == config
    for row in SETTINGS:
        assert getattr(config, row.attr) != row.default, row.attr
    plain = Config(str(tmp_path))
    assert plain.to_env()["HASHSERVER_STATUS_FILE"] == plain.to_env()["HASHSERVER_TIMEOUT"] == ""
    assert Config.from_env(plain.to_env()) == plain


def test_env_blank_means_unset(tmp_path):
    blank = {row.env: " " for row in SETTINGS if row.attr != "directory"}
    assert Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), **blank}) == Config(str(tmp_path))


def test_env_status_file_and_timeout(tmp_path):
    config = Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), "HASHSERVER_TIMEOUT": " 2.5",
                              "HASHSERVER_STATUS_FILE": str(tmp_path / "status.json")})
    assert (config.timeout, config.status_file) == (2.5, str(tmp_path / "status.json"))


@pytest.mark.parametrize("raw, message", [
    ("0", "HASHSERVER_TIMEOUT=0.0: must be a positive number of seconds"),
    ("-1", "HASHSERVER_TIMEOUT=-1.0: must be a positive number of seconds"),
    ("soon", "HASHSERVER_TIMEOUT='soon': not a number"),
])
def test_env_timeout_errors(tmp_path, raw, message):
    with pytest.raises(ConfigError) as info:
        Config.from_env({"HASHSERVER_DIRECTORY": str(tmp_path), "HASHSERVER_TIMEOUT": raw})
    assert str(info.value) == message


def test_cli_over_environment_over_default(tmp_path):
    env = {"HASHSERVER_PORT": "9001", "HASHSERVER_TIMEOUT": "4", "HASHSERVER_VERIFY": "Never"}
    config = config_from_args([str(tmp_path)], env)
    assert (config.port, config.timeout, config.verify, config.workers) == (9001, 4.0, "never", 1)
    config = config_from_args([str(tmp_path), "--port", "9002", "--timeout", "5"], env)
    assert (config.port, config.timeout) == (9002, 5.0)
    with pytest.raises(ConfigError, match=r"^HASHSERVER_TIMEOUT=0\.0: "):
        config_from_args([str(tmp_path)], {"HASHSERVER_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match=r"^--timeout=0\.0: "):
        config_from_args([str(tmp_path), "--timeout", "0"], {"HASHSERVER_TIMEOUT": "4"})


def test_help_names_every_setting_and_variable():
    out = subprocess.run([str(BIN / "hashserver"), "-h"], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for row in SETTINGS:
        assert row.option in text and row.env in text, row.attr
    assert "HASHSERVER_WRITEABLE" in text and "--port-range START END" in text


def test_readme_settings_table_is_generated():
    readme = README.read_text(encoding="utf-8")
    assert readme.count(TABLE_START) == 1 and readme.count(TABLE_END) == 1
    table = readme.split(TABLE_START)[1].split(TABLE_END)[0]
    assert table == settings_markdown(), "regenerate it: python -m hashserver.cli --markdown"
    generated = subprocess.run([str(BIN / "python"), "-m", "hashserver.cli", "--markdown"],
                               check=False, capture_output=True, text=True, timeout=60)
    assert generated.stdout == table, generated.stderr


def wait_until_running(status_file: Path, server: subprocess.Popen, bound: float = 40) -> dict:
    deadline = time.monotonic() + bound
    status: dict = {}
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited early with {server.returncode}"
        try:
            status = json.loads(status_file.read_text())
        except ValueError:
            status = {}
        if status.get("status") == "running":
            return status
        time.sleep(0.1)
    raise AssertionError(f"the status file never said running: {status}")


@pytest.mark.parametrize("command", ["hashserver", "sanic"])
def test_status_file_and_timeout_from_environment(tmp_path, command):
    """``HASHSERVER_STATUS_FILE`` and ``HASHSERVER_TIMEOUT`` reach a real server, under both
    commands: it reports "running" and its port, then ends itself (status 0) when idle."""
    port = free_port()
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps({"keep": "me"}))
    env = {"HASHSERVER_DIRECTORY": str(tmp_path), "HASHSERVER_PORT": str(port),
           "HASHSERVER_STATUS_FILE": str(status_file), "HASHSERVER_TIMEOUT": "8"}
    argv = ([str(BIN / "hashserver"), str(tmp_path)] if command == "hashserver" else
            [str(BIN / "sanic"), "hashserver.app", "--host", "127.0.0.1", "--port", str(port),
             "--no-motd"])
    # Not the test harness: it points HASHSERVER_STATUS_FILE at a file of its own.
    with open(tmp_path / "log", "wb") as log:
        server = subprocess.Popen(argv, env=clean_environ(env), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        status = wait_until_running(status_file, server)
        assert {key: status[key] for key in ("keep", "port", "status")} == {"keep": "me", "port": port,
                                                                            "status": "running"}
        assert server.wait(40) == 0, (tmp_path / "log").read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
