"""``hashserver DIRECTORY [options]``: the command line, mapped onto :class:`Config`."""

from __future__ import annotations

import argparse
import sys
from functools import partial

from .config import (DEFAULT_HOST, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_BODY_SIZE, DEFAULT_PORT,
                     HASH_ALGORITHMS, LAYOUTS, VERIFY_MODES, Config, ConfigError, split_dirs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, like every other startup error (argparse would add the usage)."""
        self.exit(2, f"hashserver: {message} (see hashserver -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hashserver",
        description="Serve a directory of buffers named by their checksum over HTTP "
        "(GET /<checksum>, PUT when writable, /has, /buffer-length).",
    )
    parser.add_argument("directory", help="the buffer directory")
    parser.add_argument("--writable", action="store_true",
                        help="accept PUT requests that store buffers (default: read-only)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument("--layout", default="prefix", choices=LAYOUTS,
                        help="prefix: DIR/<2 hex chars>/<checksum>; flat: DIR/<checksum>; "
                        "vault: a Seamless vault, read-only (default: %(default)s)")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS",
                        help="a lock file older than this is stale and ignored (default: %(default)s)")
    parser.add_argument("--extra-dirs", default="", metavar='"A;B"',
                        help="read-only directories searched after DIRECTORY, separated by ';' "
                        "(flat, or prefix if they hold a .HASHSERVER_PREFIX file)")
    parser.add_argument("--workers", type=int, default=1, help="Sanic worker processes (default: %(default)s)")
    parser.add_argument("--verify", default="once", choices=VERIFY_MODES,
                        help="check that a buffer hashes to its name before serving it: once per "
                        "file version, always, or never (default: %(default)s)")
    parser.add_argument("--max-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE, metavar="BYTES",
                        help="largest PUT body accepted (default: %(default)s, 64 GiB)")
    parser.add_argument("--hash-algorithm", default="sha3-256", choices=HASH_ALGORITHMS,
                        help="the checksum algorithm of buffer names (default: %(default)s)")
    return parser


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(
        directory=args.directory,
        writable=args.writable,
        host=args.host,
        port=args.port,
        layout=args.layout,
        lock_timeout=args.lock_timeout,
        extra_dirs=split_dirs(args.extra_dirs),
        workers=args.workers,
        verify=args.verify,
        max_body_size=args.max_body_size,
        hash_algorithm=args.hash_algorithm,
        names={"directory": "DIRECTORY"},
    ).validate()


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
    try:
        config = config_from_args(argv)
    except ConfigError as exc:
        print(f"hashserver: {exc}", file=sys.stderr)
        return 2
    serve(config)
    return 0
