"""Every setting of the server, in one object.

The command line (:mod:`hashserver.cli`) and the environment (``HASHSERVER_*``,
for ``sanic hashserver.app`` and containers) both map onto :class:`Config`, and
:meth:`Config.validate` checks the result in one place.  Nothing here runs at
import time and nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping

LAYOUTS = ("prefix", "flat", "vault")
VERIFY_MODES = ("once", "always", "never")
HASH_ALGORITHMS = ("sha3-256", "sha-256")

DEFAULT_LOCK_TIMEOUT = 120.0
DEFAULT_MAX_BODY_SIZE = 64 * 1024**3
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ConfigError(Exception):
    """A setting has a value the server cannot run with.

    The message is one line that names the setting and the value, as the user
    spelled them (``--lock-timeout`` on the command line,
    ``HASHSERVER_LOCK_TIMEOUT`` in the environment).
    """


@dataclass(frozen=True)
class Config:
    directory: str
    writable: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    layout: str = "prefix"
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    extra_dirs: tuple[str, ...] = ()
    workers: int = 1
    verify: str = "once"
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    hash_algorithm: str = "sha3-256"
    status_file: str | None = None  # Seamless's launcher: where to report port and status
    timeout: float | None = None  # exit after this many seconds without requests
    # Where each setting came from, so that errors name it as the user wrote it.
    names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ env
    ENV_NAMES = {
        "directory": "HASHSERVER_DIRECTORY",
        "writable": "HASHSERVER_WRITABLE",
        "host": "HASHSERVER_HOST",
        "port": "HASHSERVER_PORT",
        "layout": "HASHSERVER_LAYOUT",
        "lock_timeout": "HASHSERVER_LOCK_TIMEOUT",
        "extra_dirs": "HASHSERVER_EXTRA_DIRS",
        "workers": "HASHSERVER_WORKERS",
        "verify": "HASHSERVER_VERIFY",
        "max_body_size": "HASHSERVER_MAX_BODY_SIZE",
        "hash_algorithm": "HASHSERVER_HASH_ALGORITHM",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config":
        """Build a validated Config from ``HASHSERVER_*`` variables."""
        kwargs, names = cls.env_settings(environ)
        if not kwargs.get("directory"):
            raise ConfigError(
                "HASHSERVER_DIRECTORY is not set: it must name the buffer directory"
            )
        return cls(names={**cls.ENV_NAMES, **names}, **kwargs).validate()

    @classmethod
    def env_settings(cls, environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
        """The settings the environment gives (parsed, not yet validated), and
        the variable names they came from.  The command line uses them as its
        defaults, so that e.g. ``HASHSERVER_HASH_ALGORITHM`` reaches a server
        that Seamless's launcher starts with its own command line."""
        env = os.environ if environ is None else environ
        names = {}
        kwargs: dict = {}
        if env.get("HASHSERVER_DIRECTORY"):
            kwargs["directory"] = env["HASHSERVER_DIRECTORY"]
            names["directory"] = "HASHSERVER_DIRECTORY"
        writable_name = "HASHSERVER_WRITABLE"
        if writable_name not in env and "HASHSERVER_WRITEABLE" in env:
            writable_name = "HASHSERVER_WRITEABLE"
        if writable_name in env:
            kwargs["writable"] = parse_bool(writable_name, env[writable_name])
            names["writable"] = writable_name
        if env.get("HASHSERVER_HOST"):
            kwargs["host"] = env["HASHSERVER_HOST"]
            names["host"] = "HASHSERVER_HOST"
        simple = {
            "port": parse_int,
            "lock_timeout": parse_float,
            "workers": parse_int,
            "max_body_size": parse_int,
        }
        for attr, parser in simple.items():
            raw = env.get(cls.ENV_NAMES[attr])
            if raw is not None and raw.strip() != "":
                kwargs[attr] = parser(cls.ENV_NAMES[attr], raw)
                names[attr] = cls.ENV_NAMES[attr]
        for attr in ("layout", "verify", "hash_algorithm"):
            raw = env.get(cls.ENV_NAMES[attr])
            if raw:
                kwargs[attr] = raw.strip().lower()
                names[attr] = cls.ENV_NAMES[attr]
        if env.get("HASHSERVER_EXTRA_DIRS"):
            kwargs["extra_dirs"] = split_dirs(env["HASHSERVER_EXTRA_DIRS"])
            names["extra_dirs"] = "HASHSERVER_EXTRA_DIRS"
        return kwargs, names

    def to_env(self) -> dict[str, str]:
        """The environment that :meth:`from_env` turns back into this Config."""
        return {
            "HASHSERVER_DIRECTORY": self.directory,
            "HASHSERVER_WRITABLE": "1" if self.writable else "0",
            "HASHSERVER_HOST": self.host,
            "HASHSERVER_PORT": str(self.port),
            "HASHSERVER_LAYOUT": self.layout,
            "HASHSERVER_LOCK_TIMEOUT": repr(self.lock_timeout),
            "HASHSERVER_EXTRA_DIRS": ";".join(self.extra_dirs),
            "HASHSERVER_WORKERS": str(self.workers),
            "HASHSERVER_VERIFY": self.verify,
            "HASHSERVER_MAX_BODY_SIZE": str(self.max_body_size),
            "HASHSERVER_HASH_ALGORITHM": self.hash_algorithm,
        }

    # ------------------------------------------------------------- validate
    def name(self, attr: str) -> str:
        return self.names.get(attr, "--" + attr.replace("_", "-"))

    def validate(self) -> "Config":
        """Check every setting; raise :class:`ConfigError` on the first bad one.

        Returns a normalised copy (absolute directories).
        """

        def fail(attr: str, value: object, why: str) -> None:
            raise ConfigError(f"{self.name(attr)}={value!r}: {why}")

        directory = self.directory
        if not os.path.exists(directory):
            fail("directory", directory, "directory does not exist")
        if not os.path.isdir(directory):
            fail("directory", directory, "not a directory")
        if self.layout not in LAYOUTS:
            fail("layout", self.layout, "unknown layout; choose one of " + ", ".join(LAYOUTS))
        if self.writable and self.layout == "vault":
            fail("layout", self.layout, "a vault is read-only; it cannot be served writable")
        if self.writable and not os.access(directory, os.W_OK | os.X_OK):
            fail("directory", directory, "writable server, but the directory is not writable")
        if not (self.lock_timeout > 0):
            fail("lock_timeout", self.lock_timeout, "must be a positive number of seconds")
        if not (0 < self.port < 65536):
            fail("port", self.port, "must be between 1 and 65535")
        if self.workers < 1:
            fail("workers", self.workers, "must be at least 1")
        if self.verify not in VERIFY_MODES:
            fail("verify", self.verify, "choose one of " + ", ".join(VERIFY_MODES))
        if self.hash_algorithm not in HASH_ALGORITHMS:
            fail("hash_algorithm", self.hash_algorithm, "choose one of " + ", ".join(HASH_ALGORITHMS))
        if self.timeout is not None and not (self.timeout > 0):
            fail("timeout", self.timeout, "must be a positive number of seconds")
        if self.max_body_size < 1:
            fail("max_body_size", self.max_body_size, "must be a positive number of bytes")
        for extra in self.extra_dirs:
            if not os.path.isdir(extra):
                fail("extra_dirs", extra, "extra directory does not exist or is not a directory")
        return replace(
            self,
            directory=os.path.abspath(directory),
            extra_dirs=tuple(os.path.abspath(d) for d in self.extra_dirs),
        )


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected one of 1, true, 0, false or empty")


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a whole number") from None


def parse_float(name: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None


def split_dirs(raw: str) -> tuple[str, ...]:
    """``"a;b"`` -> ``("a", "b")``; empty parts and quoted-empty parts are dropped."""
    parts = (part.strip() for part in raw.split(";"))
    return tuple(part for part in parts if part and part not in ('""', "''"))
