"""Configuration: the command line and the environment map onto one validated Config."""

from __future__ import annotations

import subprocess

import pytest

from hashserver.cli import config_from_args
from hashserver.config import Config, ConfigError

from conftest import BIN


def test_import_creates_and_starts_nothing():
    out = subprocess.run(
        [str(BIN / "python"), "-c",
         "import hashserver, sanic; print(len(sanic.Sanic._app_registry))"],
        capture_output=True, text=True, env={}, timeout=60,
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
    out = subprocess.run([str(BIN / "hashserver"), "-h"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("--writable", "--host", "--port", "--layout", "--lock-timeout", "--extra-dirs",
                   "--workers", "--verify", "--max-body-size", "--hash-algorithm"):
        assert option in out.stdout
    module = subprocess.run([str(BIN / "python"), "-m", "hashserver", "-h"], capture_output=True,
                            text=True, timeout=60)
    assert module.stdout == out.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["/does/not/exist"], "DIRECTORY='/does/not/exist': directory does not exist"),
        (["{d}", "--layout", "tree"], "--layout"),
        (["{d}", "--lock-timeout", "-1"], "--lock-timeout=-1.0"),
        (["{d}", "--layout", "vault", "--writable"], "--layout='vault'"),
        (["{d}", "--port", "abc"], "--port: invalid int value: 'abc'"),
    ],
)
def test_cli_startup_errors_are_one_line(tmp_path, args, fragment):
    argv = [a.format(d=tmp_path) for a in args]
    out = subprocess.run([str(BIN / "hashserver"), *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert fragment in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
