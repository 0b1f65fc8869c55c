"""``hashserver DIRECTORY [options]``: the command line, mapped onto :class:`Config`.

Options not given on the command line take their value from the matching
``HASHSERVER_*`` environment variable, then from the built-in default.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from functools import partial

from .config import BY_ATTR, DEFAULT_HOST, SETTINGS, Config, ConfigError, Setting
from .launcher import StatusFile, pick_free_port

PORT_RANGE_HELP = "listen on a random free port between START and END, inclusive (instead of --port)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, like every other startup error (argparse would add the usage)."""
        self.exit(2, f"hashserver: {message} (see hashserver -h)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one argument per row of the settings table, plus
    ``--port-range`` (a way to choose ``--port``, not a setting of its own)."""
    parser = _Parser(
        prog="hashserver",
        description="Serve a directory of buffers named by their checksum over HTTP "
        "(GET /<checksum>, PUT when writable, /has, /buffer-length). Options not given "
        "here are read from the HASHSERVER_* environment variables.",
    )
    ports = parser.add_mutually_exclusive_group()
    for row in SETTINGS:
        target = ports if row.attr == "port" else parser
        flag = row.attr if row.positional else row.option
        target.add_argument(flag, **_argument(row))
        if row.attr == "port":
            ports.add_argument("--port-range", type=int, nargs=2, metavar=("START", "END"),
                               help=PORT_RANGE_HELP)
    return parser


def _argument(row: Setting) -> dict:
    """argparse's keywords for one setting.  Every default is None, so that
    :func:`config_from_namespace` can tell what the command line gave."""
    if row.positional:
        text = f"{row.help} (environment: {env_names(row)})"
        return {"metavar": row.option, "nargs": "?", "help": text.replace("%", "%%")}
    text = f"{row.help} (default: {row.default_text}; environment: {env_names(row)})"
    options: dict = {"help": text.replace("%", "%%")}
    if row.kind.argtype is None:  # on/off; one that is on by default can be turned off (--no-...)
        action = argparse.BooleanOptionalAction if row.default is True else "store_true"
        return {**options, "action": action, "default": None}
    return {**options, "type": row.kind.from_argument, "metavar": row.metavar,
            "choices": row.choices or None}


def env_names(row: Setting, code=str) -> str:
    """``HASHSERVER_X (or HASHSERVER_Y): spellings``; ``code`` marks up each name."""
    text = code(row.env) + "".join(f" (or {code(alias)})" for alias in row.aliases)
    return f"{text}: {row.kind.spellings}" if row.kind.spellings else text


def config_from_args(argv: list[str] | None = None, environ=None) -> Config:
    return config_from_namespace(build_parser().parse_args(argv), environ)


def config_from_namespace(args: argparse.Namespace, environ=None) -> Config:
    """Each setting from the command line, else the environment, else its default."""
    settings, names = Config.env_settings(os.environ if environ is None else environ)
    given = dict(vars(args))
    if given.pop("port_range") is not None:
        start, end = args.port_range
        given["port"] = pick_free_port(given["host"] or settings.get("host", DEFAULT_HOST), start, end)
    for row in SETTINGS:
        if given[row.attr] is not None:
            settings[row.attr] = given[row.attr]
            names[row.attr] = row.option
    if not settings.get("directory"):
        raise ConfigError(f"no {BY_ATTR['directory'].option}: give the buffer directory (or s3://BUCKET[/PREFIX]) "
                          f"on the command line or in {BY_ATTR['directory'].env}")
    return Config(names=names, **settings).validate()


def serve(config: Config) -> None:
    """Run the server; its workers answer simple GETs of small buffers in
    Sanic's protocol itself (:mod:`hashserver.hotpath`, off with ``--no-hot-path``)."""
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from . import create_app, lifecycle

    lifecycle.guard_startup()  # before Sanic starts its state manager: a stop signal must not orphan it
    loader = AppLoader(factory=partial(create_app, config))
    app = loader.load()
    tls = tls_settings(config.tls_cert, config.tls_key) if config.tls_cert else None
    app.prepare(host=config.host, port=config.port, workers=config.workers,
                motd=False, access_log=False, ssl=tls)  # the protocol: server.start_main
    Sanic.serve(primary=app, app_loader=loader)


def tls_settings(cert: str, key: str) -> dict:
    """Sanic's ``ssl`` settings of one certificate.  Sanic reads the names a
    certificate serves from its subjectAltName, and fails on one without (a
    self-signed ``openssl req -subj /CN=host`` has none): its common name then."""
    decoded = ssl._ssl._test_decode_cert(cert)  # what Sanic reads too
    names = [name for kind, name in decoded.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if not names:
        names = [value for rdn in decoded.get("subject", ()) for kind, value in rdn if kind == "commonName"]
    return {"cert": cert, "key": key, "names": names}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = _status_file(args.status_file)
    if status is not None:
        try:
            status.wait()
        except ConfigError as exc:
            print(f"hashserver: {exc}", file=sys.stderr)
            return 1
    try:
        config = config_from_namespace(args)
        check_listening(config)
    except ConfigError as exc:
        print(f"hashserver: {exc}", file=sys.stderr)
        if status is not None:
            status.failed()
        return 2
    serve(config)
    return 0


def check_listening(config: Config) -> None:
    """The address and port can be listened on, said before the index is built
    (Sanic would say it later, in a traceback)."""
    try:
        family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        with socket.create_server((config.host, config.port), family=family):
            pass
    except OSError as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
        raise ConfigError(f"{config.name('host')}={config.host} {config.name('port')}={config.port}: "
                          f"cannot listen there: {why}") from None


def _status_file(given: str | None) -> StatusFile | None:
    """``--status-file``, else ``HASHSERVER_STATUS_FILE``: read before the other
    settings, so that an error in them can still be reported there."""
    if given is None:
        found = BY_ATTR["status_file"].read(os.environ)
        given = found[0] if found else None
    return StatusFile(given) if given else None


# ------------------------------------------------------- the README's table
def settings_markdown() -> str:
    """The README's settings table (between its ``settings-table`` markers)."""
    lines = ["| command line | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for row in SETTINGS:
        default = row.default_text
        if row.shown_default is None and row.default_value is not None:
            default = _code(default)
        lines.append(_markdown_row(_code(_usage(row)), env_names(row, _code), default, row.help))
        if row.attr == "port":
            lines.append(_markdown_row(_code("--port-range START END"), "", "", PORT_RANGE_HELP))
    return "\n".join(lines) + "\n"


def _usage(row: Setting) -> str:
    """The option as written on the command line, with its value."""
    if row.positional or row.kind.argtype is None:
        return row.option
    return f"{row.option} {'|'.join(row.choices) or row.metavar or row.attr.upper()}"


def _code(text: str) -> str:
    return f"`{text}`"


def _markdown_row(*cells: str) -> str:
    """A table row; ``|`` is escaped (GitHub shows ``\\|`` as ``|``, in code too)."""
    escaped = (cell.replace("|", "\\|") for cell in cells)
    return "|" + "|".join(f" {cell} " if cell else " " for cell in escaped) + "|"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m hashserver.cli --markdown  (prints the README's settings "
                 "table; the server is the hashserver command)")
    print(settings_markdown(), end="")
