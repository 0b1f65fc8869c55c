"""Where buffers are in a bucket: the ``s3://BUCKET[/PREFIX]`` URL and the keys under it.

A bucket prefix holds exactly what a buffer directory holds (so ``aws s3 sync
DIR s3://bucket/prefix`` turns one into the other): the names come from
:mod:`hashserver.layout` and :mod:`hashserver.compression`, with the prefix in
place of the directory.  Promises, which a directory keeps as ``.PROMISE``
files beside the buffer, are small objects ``PREFIX/.promises/<checksum>``
holding their expiry (seconds since the epoch).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .compression import Encoding
from .config import S3_SCHEME as SCHEME
from .config import is_s3_url, parse_s3_url
from .layout import PREFIX_MARKER, SIDECAR_SUFFIX, make_layout

PROMISES = ".promises"
KEY_LAYOUTS = ("prefix", "flat")
_LAYOUTS = {name: make_layout(name, "") for name in KEY_LAYOUTS}  # relative: the directory part of a key


@dataclass(frozen=True)
class BucketKeys:
    """The keys of one bucket prefix in one layout."""

    bucket: str
    prefix: str  # no leading or trailing slash; "" for the whole bucket
    layout: str = "prefix"

    @classmethod
    def parse(cls, url: str, layout: str = "prefix") -> "BucketKeys":
        """``s3://BUCKET[/PREFIX]``; ValueError (saying why) for anything else."""
        if not is_s3_url(url):
            raise ValueError(f"not an s3:// URL: {url!r}")
        if layout not in KEY_LAYOUTS:
            raise ValueError(f"layout {layout!r} cannot be used for a bucket: one of {', '.join(KEY_LAYOUTS)}")
        return cls(*parse_s3_url(url), layout)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def _under_prefix(self, *parts: str) -> str:
        return posixpath.join(self.prefix, *[p for p in parts if p])

    def buffer(self, checksum_hex: str, encoding: Encoding | None = None) -> str:
        """``PREFIX/<first two hex>/<checksum>[.zst|.gz]`` (``PREFIX/<checksum>`` when flat)."""
        directory = _LAYOUTS[self.layout].write_dir(checksum_hex)
        return self._under_prefix(directory, checksum_hex + (encoding.suffix if encoding else ""))

    def sidecar(self, checksum_hex: str) -> str:
        """The decoded length of a compressed buffer, as the directory layout keeps it."""
        return self.buffer(checksum_hex) + SIDECAR_SUFFIX

    def promise(self, checksum_hex: str) -> str:
        return self._under_prefix(PROMISES, checksum_hex)

    def marker(self) -> str:
        return self._under_prefix(PREFIX_MARKER)

    def upload_prefix(self) -> str:
        """What every key this store writes starts with (for listing multipart uploads)."""
        return self.prefix + "/" if self.prefix else ""

    def where(self, key: str) -> str:
        """The object as messages name it: ``s3://bucket/key``."""
        return f"{SCHEME}{self.bucket}/{key}"
