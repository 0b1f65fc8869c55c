"""``hashserver DIRECTORY [options]``: the command line, mapped onto :class:`Config`.

Options not given on the command line take their value from the matching
``HASHSERVER_*`` environment variable, then from the built-in default.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from functools import partial

from .config import (DEFAULT_HOST, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_BODY_SIZE, DEFAULT_PORT,
                     HASH_ALGORITHMS, LAYOUTS, VERIFY_MODES, Config, ConfigError, split_dirs)
from .launcher import StatusFile, pick_free_port


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, like every other startup error (argparse would add the usage)."""
        self.exit(2, f"hashserver: {message} (see hashserver -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hashserver",
        description="Serve a directory of buffers named by their checksum over HTTP "
        "(GET /<checksum>, PUT when writable, /has, /buffer-length). Options not given "
        "here are read from the HASHSERVER_* environment variables.",
    )
    parser.add_argument("directory", help="the buffer directory")
    parser.add_argument("--writable", action="store_true", default=None,
                        help="accept PUT requests that store buffers (default: read-only)")
    parser.add_argument("--host", help=f"address to listen on (default: {DEFAULT_HOST})")
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--port", type=int, help=f"port to listen on (default: {DEFAULT_PORT})")
    ports.add_argument("--port-range", type=int, nargs=2, metavar=("START", "END"),
                       help="listen on a random free port between START and END, inclusive")
    parser.add_argument("--layout", choices=LAYOUTS,
                        help="prefix: DIR/<2 hex chars>/<checksum>; flat: DIR/<checksum>; "
                        "vault: a Seamless vault, read-only (default: prefix)")
    parser.add_argument("--lock-timeout", type=float, metavar="SECONDS",
                        help=f"a lock file older than this is stale and ignored (default: {DEFAULT_LOCK_TIMEOUT:g})")
    parser.add_argument("--extra-dirs", metavar='"A;B"',
                        help="read-only directories searched after DIRECTORY, separated by ';' "
                        "(flat, or prefix if they hold a .HASHSERVER_PREFIX file)")
    parser.add_argument("--workers", type=int, help="Sanic worker processes (default: 1)")
    parser.add_argument("--verify", choices=VERIFY_MODES,
                        help="check that a buffer hashes to its name before serving it: once per "
                        "file version, always, or never (default: once)")
    parser.add_argument("--max-body-size", type=int, metavar="BYTES",
                        help=f"largest PUT body accepted (default: {DEFAULT_MAX_BODY_SIZE}, 64 GiB)")
    parser.add_argument("--hash-algorithm", choices=HASH_ALGORITHMS,
                        help="the checksum algorithm of buffer names (default: sha3-256; "
                        "today's Seamless uses sha-256)")
    parser.add_argument("--status-file", metavar="FILE",
                        help="wait for FILE to hold a JSON object, then add \"port\" and "
                        "\"status\": \"running\" (or \"failed\") to it (Seamless's launcher)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="exit (status 0) after this long without requests")
    return parser


def config_from_args(argv: list[str] | None = None, environ=None) -> Config:
    return config_from_namespace(build_parser().parse_args(argv), environ)


def config_from_namespace(args: argparse.Namespace, environ=None) -> Config:
    settings, names = Config.env_settings(os.environ if environ is None else environ)
    given = dict(vars(args))
    if given.pop("port_range") is not None:
        start, end = args.port_range
        given["port"] = pick_free_port(given["host"] or settings.get("host", DEFAULT_HOST), start, end)
    if given["extra_dirs"] is not None:
        given["extra_dirs"] = split_dirs(given["extra_dirs"])
    known = {f.name for f in fields(Config)}
    for attr, value in given.items():
        if value is not None and attr in known:
            settings[attr] = value
            names[attr] = "DIRECTORY" if attr == "directory" else "--" + attr.replace("_", "-")
    return Config(names=names, **settings).validate()


def serve(config: Config) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from .server import create_app

    loader = AppLoader(factory=partial(create_app, config))
    app = loader.load()
    app.prepare(host=config.host, port=config.port, workers=config.workers,
                motd=False, access_log=False)
    Sanic.serve(primary=app, app_loader=loader)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = StatusFile(args.status_file) if args.status_file else None
    if status is not None:
        try:
            status.wait()
        except ConfigError as exc:
            print(f"hashserver: {exc}", file=sys.stderr)
            return 1
    try:
        config = config_from_namespace(args)
    except ConfigError as exc:
        print(f"hashserver: {exc}", file=sys.stderr)
        if status is not None:
            status.failed()
        return 2
    serve(config)
    return 0
