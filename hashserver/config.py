"""Every setting of the server, in one table.

Each field of :class:`Config` is one row of the settings table, declared with
:func:`setting`: its type, default and help text, and how the environment and
the command line spell its values.  Everything else is generated from these
rows (:data:`SETTINGS`): the command line and ``hashserver -h``
(:mod:`hashserver.cli`), the environment parsing (:meth:`Config.env_settings`),
:meth:`Config.to_env`, and the README's settings table
(``python -m hashserver.cli --markdown``).

**Adding a setting is one field here** (plus a rule in :meth:`Config.validate`
if some values are wrong).  Its environment variable is ``HASHSERVER_`` and the
name in capitals, its option ``--`` and the name with dashes; then regenerate
the README table (a test fails until it agrees with the code).

Nothing here runs at import time and nothing else in the package reads
``os.environ``.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, NoReturn

LAYOUTS = ("prefix", "flat", "vault")
VERIFY_MODES = ("once", "always", "never")
HASH_ALGORITHMS = ("sha3-256", "sha-256")

DEFAULT_LOCK_TIMEOUT = 120.0
DEFAULT_MAX_BODY_SIZE = 64 * 1024**3
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 1_000_000
DEFAULT_MEMORY_CACHE = 256 * 1024**2  # per worker: about 180,000 buffers of 1 KiB with their bookkeeping
DEFAULT_CACHE_SIZE = 10 * 1024**3
S3_PART_SIZE = 8 << 20  # a multipart upload's part (S3's least is 5 MiB): bounds a PUT's memory
S3_MAX_PARTS = 10_000  # S3's most parts in one multipart upload
S3_SCHEME = "s3://"
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
ENDPOINT_ALIAS = "AWS_ENDPOINT_URL"

FLAG_SPELLINGS = "1, true, 0, false or empty"


class ConfigError(Exception):
    """A setting has a value the server cannot run with.

    The message is one line that names the setting and the value, as the user
    spelled them (``--lock-timeout`` on the command line,
    ``HASHSERVER_LOCK_TIMEOUT`` in the environment).
    """


# ------------------------------------------------------------------ value kinds
def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected one of {FLAG_SPELLINGS}")


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


def parse_text(name: str, raw: str) -> str:
    return raw


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def size_in_bytes(raw: str) -> int:
    """``"10G"`` -> 10 GiB: a number of bytes, with an optional K, M, G or T
    suffix (powers of 1024; ``KiB``/``KB`` spellings too).  Raises ValueError,
    so that argparse says which option is wrong."""
    found = _SIZE.fullmatch(raw.strip())
    if found is None:
        raise ValueError(raw)
    return int(float(found[1]) * SIZE_UNITS[found[2].upper()])


def parse_size(name: str, raw: str) -> int:
    try:
        return size_in_bytes(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a size (bytes, or with a K, M, G or T suffix)") from None


def format_size(value: int) -> str:
    """The largest suffix that writes ``value`` exactly (``10G``), for help texts and :meth:`Config.to_env`."""
    for suffix, unit in reversed(SIZE_UNITS.items()):
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def parse_choice(name: str, raw: str) -> str:
    """Environment values of a choice are case-insensitive; membership is checked
    by :meth:`Config.validate`, whose messages differ per setting."""
    return raw.strip().lower()


def parse_dirs(name: str, raw: str) -> tuple[str, ...]:
    return split_dirs(raw)


def split_dirs(raw: str) -> tuple[str, ...]:
    """``"a;b"`` -> ``("a", "b")``; empty parts and quoted-empty parts are dropped."""
    parts = (part.strip() for part in raw.split(";"))
    return tuple(part for part in parts if part and part not in ('""', "''"))


def format_flag(on: bool) -> str:
    return "1" if on else "0"


@dataclass(frozen=True)
class Kind:
    """How the values of one type are spelled as text.

    ``parse`` reads an environment variable (its name is passed so that errors
    can name it) and reads back what ``format`` writes; ``argtype`` is
    argparse's ``type`` for the option, None for an on/off flag.
    """

    parse: Callable[[str, str], Any]
    format: Callable[[Any], str]
    argtype: Callable[[str], Any] | None
    spellings: str = ""  # the accepted environment values, where not obvious
    expected: str = "a value"  # what a value is, for the command line's errors

    def from_argument(self, raw: str) -> Any:
        """argparse's ``type``: a bad value is an error that says what a good one is
        (argparse would name the parsing function instead)."""
        assert self.argtype is not None
        try:
            return self.argtype(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {self.expected}") from None


TEXT = Kind(parse_text, str, str)
FLAG = Kind(parse_bool, format_flag, None, FLAG_SPELLINGS)
WHOLE = Kind(parse_int, str, int, expected="a whole number")
NUMBER = Kind(parse_float, repr, float, expected="a number")
CHOICE = Kind(parse_choice, str, str)
DIRS = Kind(parse_dirs, ";".join, split_dirs)
SIZE = Kind(parse_size, format_size, size_in_bytes, "bytes, or with a K, M, G or T suffix (powers of 1024)",
            expected="a size (bytes, or with a K, M, G or T suffix)")


# ------------------------------------------------------------ s3:// locations
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_s3_url(directory: str) -> bool:
    return directory.startswith(S3_SCHEME)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> ``(bucket, prefix)``, the prefix without
    slashes at either end (``""``: the whole bucket).  Raises ValueError saying
    what is wrong."""
    bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError("not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)")
    if any(c in prefix for c in "?#\\"):
        raise ValueError("the prefix may not hold '?', '#' or '\\'")
    if prefix.startswith("/"):
        raise ValueError("the prefix must be names separated by single slashes")
    prefix = prefix.rstrip("/")
    parts = prefix.split("/") if prefix else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("the prefix must be names separated by single slashes")
    return bucket, prefix


def endpoint_host(endpoint: str) -> str:
    """``host[:port]`` of an endpoint URL: what names its store (the scheme and path do not)."""
    return endpoint.split("://", 1)[-1].split("/", 1)[0]


def default_cache_dir(url: str, endpoint: str | None, environ: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/hashserver/<name>`` (``~/.cache`` if unset), one per
    store: the name is the endpoint's host (when given), the bucket and the
    prefix, slashes escaped, so that no store's tier lies inside another's."""
    bucket, prefix = parse_s3_url(url)
    host = endpoint_host(endpoint) if endpoint else ""
    name = "/".join(part for part in (host, bucket, prefix) if part).replace("%", "%25").replace("/", "%2F")
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hashserver", name)


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Setting:
    """One row of the settings table: a :class:`Config` field, and how users
    give it in the environment and on the command line."""

    attr: str
    kind: Kind
    help: str
    default: Any = MISSING  # MISSING: the setting is required
    metavar: str | None = None  # the option's value in usage texts (argparse's default if None)
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # the default as help texts show it, instead of its value
    aliases: tuple[str, ...] = ()  # further environment variables read when ``env`` is absent
    positional: bool = False  # a positional argument (DIRECTORY) instead of an --option

    @property
    def env(self) -> str:
        return "HASHSERVER_" + self.attr.upper()

    @property
    def option(self) -> str:
        """The name on the command line, as error messages spell it."""
        return self.attr.upper() if self.positional else "--" + self.attr.replace("_", "-")

    @property
    def default_value(self) -> str | None:
        """The default written as a value (``8000``); None when there is none."""
        if self.default is MISSING or self.default is None or self.default == ():
            return None
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    @property
    def default_text(self) -> str:
        """The default as help texts show it."""
        if self.shown_default is not None:
            return self.shown_default
        if self.default_value is not None:
            return self.default_value
        return "(required)" if self.default is MISSING else "none"

    def read(self, environ: Mapping[str, str]) -> tuple[Any, str] | None:
        """The value the environment gives and the variable it came from, or None
        when the variable is absent or blank.  Of ``env`` and its aliases the
        first one present counts, even when blank."""
        for name in (self.env, *self.aliases):
            if name in environ:
                raw = environ[name]
                return None if raw.strip() == "" else (self.kind.parse(name, raw), name)
        return None


_ROW = "hashserver.setting"


def setting(kind: Kind, help: str, *, default: Any = MISSING, **row: Any) -> Any:
    """A :class:`Config` field that is also a row of the settings table; ``row``
    takes the other fields of :class:`Setting`."""
    return field(default=default, metadata={_ROW: {"kind": kind, "help": help, **row}})


@dataclass(frozen=True)
class Config:
    """The settings of one server: each field is a row of the settings table."""

    directory: str = setting(
        TEXT, "the buffer directory, or s3://BUCKET[/PREFIX]: the buffers in an S3 bucket, with a "
        "local directory as a cache tier (--cache-dir, --cache-size, --s3-endpoint)", positional=True)
    writable: bool = setting(
        FLAG, "accept PUT requests that store buffers, and promises", default=False,
        shown_default="read-only", aliases=("HASHSERVER_WRITEABLE",))
    host: str = setting(TEXT, "address to listen on", default=DEFAULT_HOST, metavar="HOST")
    port: int = setting(WHOLE, "port to listen on", default=DEFAULT_PORT, metavar="PORT")
    layout: str = setting(
        CHOICE, "how buffers lie in DIRECTORY: prefix (in subdirectories named by the first "
        "two hex characters of the checksum), flat (all in DIRECTORY) or vault (a directory "
        "saved by Seamless; read-only)", default="prefix", choices=LAYOUTS)
    lock_timeout: float = setting(
        NUMBER, "a lock file older than this is stale and ignored",
        default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS")
    extra_dirs: tuple[str, ...] = setting(
        DIRS, "read-only directories searched after DIRECTORY, separated by ';' "
        "(flat, or prefix if they hold a .HASHSERVER_PREFIX file)", default=(),
        metavar='"A;B"')
    workers: int = setting(
        WHOLE, "Sanic worker processes (the hashserver command; sanic hashserver.app takes "
        "sanic's own --workers)", default=1, metavar="N")
    verify: str = setting(
        CHOICE, "check that a buffer hashes to its name before serving it: once per file "
        "version, always, or never", default="once", choices=VERIFY_MODES)
    max_body_size: int = setting(
        SIZE, f"largest PUT body accepted; a larger one gets 413. On a writable s3:// store at most "
              f"{S3_PART_SIZE * S3_MAX_PARTS >> 20}M (S3 takes {S3_MAX_PARTS:,} parts of {S3_PART_SIZE >> 20} MiB "
              f"in an upload)",
        default=DEFAULT_MAX_BODY_SIZE, metavar="BYTES", shown_default="64G")
    hash_algorithm: str = setting(
        CHOICE, "the checksum algorithm of buffer names (today's Seamless uses sha-256)",
        default="sha3-256", choices=HASH_ALGORITHMS)
    status_file: str | None = setting(
        TEXT, "Seamless's launcher: wait for FILE to hold a JSON object, then add \"port\" "
        "and \"status\": \"running\" (or \"failed\") to it, keeping its other keys",
        default=None, metavar="FILE")
    timeout: float | None = setting(
        NUMBER, "exit with status 0 after this long without requests (any request resets "
        "it, /healthcheck too)", default=None, metavar="SECONDS")
    max_batch: int = setting(
        WHOLE, "most checksums in one /has, /has-now or /buffer-length request; its body may "
        "have at most 70 × N + 1024 bytes; a larger one gets 413", default=DEFAULT_MAX_BATCH,
        metavar="N")
    write_token_file: str | None = setting(
        TEXT, "bearer tokens, one per line, one of which PUT requests (buffers and promises) "
        "must send as 'Authorization: Bearer TOKEN'; reread when the file changes",
        default=None, metavar="FILE")
    read_token_file: str | None = setting(
        TEXT, "bearer tokens that every other request must send, but for /healthcheck, "
        "preflight OPTIONS and the API description (/openapi.json, /docs, /redoc)",
        default=None, metavar="FILE")
    access_log: bool = setting(
        FLAG, "log one line per request: client address, method, path, status, bytes, seconds",
        default=False, shown_default="off")
    proxies_count: int | None = setting(
        WHOLE, "the number of proxies in front whose X-Forwarded-For entries are trusted for "
        "the client address (Sanic's PROXIES_COUNT)", default=None, metavar="N")
    real_ip_header: str | None = setting(
        TEXT, "a header that a trusted proxy sets to the client address, e.g. X-Real-IP "
        "(Sanic's REAL_IP_HEADER)", default=None, metavar="HEADER")
    forwarded_secret: str | None = setting(
        TEXT, "trust the Forwarded header entries that carry secret=SECRET (Sanic's "
        "FORWARDED_SECRET)", default=None, metavar="SECRET")
    tls_cert: str | None = setting(
        TEXT, "serve HTTPS with this certificate (PEM; with --tls-key)", default=None, metavar="FILE")
    tls_key: str | None = setting(
        TEXT, "the private key of --tls-cert (PEM)", default=None, metavar="FILE")
    wait_timeout: float = setting(
        NUMBER, "longest a GET waits for a buffer being written (a fresh lock) or promised; then "
        "it answers from what is on disk, or 503 with Retry-After", default=30.0, metavar="SECONDS")
    body_idle_timeout: float = setting(
        NUMBER, "an upload from which no byte arrived for this long is aborted (408; nothing "
        "stored)", default=30.0, metavar="SECONDS")
    min_body_rate: int = setting(
        WHOLE, "after its first 30 s, an upload slower than this many bytes a second is "
        "aborted (408; nothing stored); 0: no minimum", default=64 * 1024, metavar="BYTES")
    keep_alive_timeout: float = setting(
        NUMBER, "an idle keep-alive connection is closed after this long", default=75.0,
        metavar="SECONDS")
    header_timeout: float = setting(
        NUMBER, "a connection whose request headers have not all arrived after this long is "
        "closed (slow clients, slow-loris)", default=60.0, metavar="SECONDS")
    hot_path: bool = setting(
        FLAG, "answer simple GETs and HEADs of small buffers held in memory, and of absent ones, "
        "inside Sanic's protocol, byte for byte as the regular route (off: --no-hot-path; always off "
        "with --read-token-file or --access-log)", default=True, shown_default="on")
    memory_cache: int = setting(
        SIZE, "bytes of small buffers each worker holds in memory to answer from (their bookkeeping "
        "counted; least recently used out first); 0: none", default=DEFAULT_MEMORY_CACHE, metavar="BYTES",
        shown_default="256M")
    shutdown_grace: float = setting(
        NUMBER, "on SIGTERM or SIGINT, requests in flight (uploads too) have this long to "
        "finish; /healthcheck answers 503 meanwhile", default=30.0, metavar="SECONDS")
    s3_endpoint: str | None = setting(
        TEXT, "the S3 service of an s3:// DIRECTORY, e.g. http://127.0.0.1:8333 (none: AWS S3); "
        "credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION...",
        default=None, metavar="URL", aliases=(ENDPOINT_ALIAS,))
    cache_dir: str | None = setting(
        TEXT, "the local cache tier of an s3:// DIRECTORY: buffers read or written through this "
        "host, kept across restarts", default=None, metavar="DIR",
        shown_default="one per endpoint, bucket and prefix under $XDG_CACHE_HOME/hashserver")
    cache_size: int = setting(
        SIZE, "most bytes the local cache tier holds (least recently used out first); 0: no tier",
        default=DEFAULT_CACHE_SIZE, metavar="BYTES", shown_default="10G")
    s3_lean_client: bool = setting(
        FLAG, "an s3:// DIRECTORY's small GETs and PUTs by hashserver's own HTTP/1.1 client on the "
        "event loop's thread (a fifth of obstore's CPU per call) where the endpoint is http://, the "
        "credentials static and no proxy set; every other call by obstore (off: --no-s3-lean-client)",
        default=True, shown_default="on")
    # Where each setting came from, so that errors name it as the user wrote it.
    names: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ env
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build a validated Config from ``HASHSERVER_*`` variables."""
        kwargs, names = cls.env_settings(environ)
        if not kwargs.get("directory"):
            raise ConfigError(
                "HASHSERVER_DIRECTORY is not set: it must name the buffer directory"
            )
        env_names = {row.attr: row.env for row in SETTINGS}
        return cls(names={**env_names, **names}, **kwargs).validate()

    @classmethod
    def env_settings(cls, environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
        """The settings the environment gives (parsed, not yet validated), and
        the variable names they came from.  The command line uses them as its
        defaults, so that e.g. ``HASHSERVER_HASH_ALGORITHM`` reaches a server
        that Seamless's launcher starts with its own command line."""
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        names: dict = {}
        for row in SETTINGS:
            found = row.read(env)
            if found is not None:
                kwargs[row.attr], names[row.attr] = found
        return kwargs, names

    def to_env(self) -> dict[str, str]:
        """The environment that :meth:`from_env` turns back into this Config
        (every setting; an empty variable for an unset one)."""
        env = {}
        for row in SETTINGS:
            value = getattr(self, row.attr)
            env[row.env] = "" if value is None else row.kind.format(value)
        return env

    # ------------------------------------------------------------- validate
    def name(self, attr: str) -> str:
        """The setting as the user spelled it: the variable or option it came
        from, else its option."""
        return self.names.get(attr) or BY_ATTR[attr].option

    def validate(self) -> Config:
        """Check every setting; raise :class:`ConfigError` on the first bad one.

        Returns a normalised copy (absolute directories; for an s3:// DIRECTORY,
        the URL without trailing slashes and the cache directory resolved).
        """
        if self.object_store:
            self._check_object_store()
        else:
            self._check_directories()
        self._check_extra_dirs()
        self._check_choices()
        self._check_numbers()
        self._check_files()
        return replace(self, directory=self._normal_directory(),
                       extra_dirs=tuple(os.path.abspath(d) for d in self.extra_dirs),
                       cache_dir=self._normal_cache_dir())

    def _normal_directory(self) -> str:
        if not self.object_store:
            return os.path.abspath(self.directory)
        bucket, prefix = parse_s3_url(self.directory)
        return f"{S3_SCHEME}{bucket}/{prefix}" if prefix else f"{S3_SCHEME}{bucket}"

    def _normal_cache_dir(self) -> str | None:
        if self.cache_dir is not None:
            return os.path.abspath(self.cache_dir)
        if self.object_store:
            return default_cache_dir(self.directory, self.s3_endpoint, os.environ)
        return None

    def _fail(self, attr: str, value: object, why: str) -> NoReturn:
        raise ConfigError(f"{self.name(attr)}={value!r}: {why}")

    def _check_directories(self) -> None:
        """A buffer directory.  The settings of an s3:// store given for it are
        a mistake, except an endpoint from ``AWS_ENDPOINT_URL``, which is
        meant for every S3 client of the environment."""
        directory = self.directory
        if not os.path.exists(directory):
            hint = " (a bucket is spelled s3://BUCKET[/PREFIX])" if directory.lower().startswith("s3:") else ""
            self._fail("directory", directory, "directory does not exist" + hint)
        if not os.path.isdir(directory):
            self._fail("directory", directory, "not a directory")
        if self.writable and not os.access(directory, os.W_OK | os.X_OK):
            self._fail("directory", directory, "writable server, but the directory is not writable")
        for attr, value in (("s3_endpoint", self.s3_endpoint), ("cache_dir", self.cache_dir)):
            if value is not None and self.name(attr) != ENDPOINT_ALIAS:
                self._fail(attr, value, "applies to an s3://BUCKET[/PREFIX] directory only")
        if self.cache_size != DEFAULT_CACHE_SIZE:
            self._fail("cache_size", self.cache_size, "applies to an s3://BUCKET[/PREFIX] directory only")
        if not self.s3_lean_client:
            self._fail("s3_lean_client", self.s3_lean_client, "applies to an s3://BUCKET[/PREFIX] directory only")

    def _check_object_store(self) -> None:
        try:
            parse_s3_url(self.directory)
        except ValueError as exc:
            self._fail("directory", self.directory, str(exc))
        if self.layout == "vault":
            self._fail("layout", self.layout, "a vault is a directory; a bucket holds the prefix or flat layout")
        if self.s3_endpoint is not None and not re.match(r"https?://[^/]", self.s3_endpoint):
            self._fail("s3_endpoint", self.s3_endpoint, "not an http:// or https:// URL")
        if self.cache_size < 0:
            self._fail("cache_size", self.cache_size, "must be 0 (no local tier) or more bytes")
        if self.writable and self.max_body_size > S3_PART_SIZE * S3_MAX_PARTS:
            self._fail("max_body_size", self.max_body_size,
                       f"at most {S3_PART_SIZE * S3_MAX_PARTS >> 20}M on an s3:// store: an upload takes at most "
                       f"{S3_MAX_PARTS:,} parts of {S3_PART_SIZE >> 20} MiB")

    def _check_extra_dirs(self) -> None:
        for extra in self.extra_dirs:
            if not os.path.isdir(extra):
                self._fail("extra_dirs", extra, "extra directory does not exist or is not a directory")

    def _check_choices(self) -> None:
        if self.layout not in LAYOUTS:
            self._fail("layout", self.layout, "unknown layout; choose one of " + ", ".join(LAYOUTS))
        if self.writable and self.layout == "vault":
            self._fail("layout", self.layout, "a vault is read-only; it cannot be served writable")
        if self.verify not in VERIFY_MODES:
            self._fail("verify", self.verify, "choose one of " + ", ".join(VERIFY_MODES))
        if self.hash_algorithm not in HASH_ALGORITHMS:
            self._fail("hash_algorithm", self.hash_algorithm, "choose one of " + ", ".join(HASH_ALGORITHMS))

    def _check_numbers(self) -> None:
        if not (self.lock_timeout > 0):
            self._fail("lock_timeout", self.lock_timeout, "must be a positive number of seconds")
        if not (0 < self.port < 65536):
            self._fail("port", self.port, "must be between 1 and 65535")
        if self.workers < 1:
            self._fail("workers", self.workers, "must be at least 1")
        if self.timeout is not None and not (self.timeout > 0):
            self._fail("timeout", self.timeout, "must be a positive number of seconds")
        if self.max_body_size < 1:
            self._fail("max_body_size", self.max_body_size, "must be a positive number of bytes")
        if self.max_batch < 1:
            self._fail("max_batch", self.max_batch, "must be at least 1")
        if self.proxies_count is not None and self.proxies_count < 0:
            self._fail("proxies_count", self.proxies_count, "must be 0 or more")
        for attr in ("wait_timeout", "body_idle_timeout", "keep_alive_timeout", "header_timeout"):
            if not (getattr(self, attr) > 0):
                self._fail(attr, getattr(self, attr), "must be a positive number of seconds")
        if not (self.shutdown_grace >= 0):
            self._fail("shutdown_grace", self.shutdown_grace, "must be 0 or more seconds")
        if self.min_body_rate < 0:
            self._fail("min_body_rate", self.min_body_rate, "must be 0 or more bytes a second")

    def _check_files(self) -> None:
        for attr in ("write_token_file", "read_token_file", "tls_cert", "tls_key"):
            path = getattr(self, attr)
            if path is not None and not os.access(path, os.R_OK):
                self._fail(attr, path, "cannot read this file")
        for attr in ("write_token_file", "read_token_file"):
            path = getattr(self, attr)
            if path is not None and not read_tokens(path):
                self._fail(attr, path, "holds no token (one per line; blank lines and # comments are ignored)")
        if (self.tls_cert is None) != (self.tls_key is None):
            attr = "tls_key" if self.tls_key is None else "tls_cert"
            self._fail(attr, None, "HTTPS needs both --tls-cert and --tls-key")
        if self.tls_cert is not None:
            try:  # an encrypted key gets an empty password (none is asked for at a terminal): refused
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert, self.tls_key, password=b"")
            except (ssl.SSLError, OSError) as exc:
                self._fail("tls_cert", self.tls_cert, f"not a certificate that {self.name('tls_key')}="
                           f"{self.tls_key!r} can serve (PEM files of a certificate and its private key, "
                           f"not encrypted): {exc}")

    @property
    def object_store(self) -> bool:
        """Are the buffers in an S3 bucket (``s3://BUCKET[/PREFIX]``) rather than a directory?"""
        return is_s3_url(self.directory)

    @property
    def loopback_only(self) -> bool:
        """Does the server listen on this machine's loopback address only?"""
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def read_tokens(path: str) -> frozenset[str]:
    """The tokens of a token file: one per line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return frozenset(line for line in lines if line and not line.startswith("#"))


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(attr=f.name, default=f.default, **f.metadata[_ROW])
    for f in fields(Config) if _ROW in f.metadata
)
BY_ATTR: dict[str, Setting] = {row.attr: row for row in SETTINGS}
