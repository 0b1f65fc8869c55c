"""Incomplete multipart uploads: listed and aborted with signed S3 requests; the signing.

obstore (0.12) completes or aborts the multipart uploads it starts itself but
has no call to list the ones a killed process left behind, nor to abort one
by its id; these are plain S3 requests (``GET /bucket?uploads``,
``GET /bucket/key?uploadId=`` for an upload's parts, ``DELETE
/bucket/key?uploadId=``), signed here with AWS Signature Version 4 from the
same credentials obstore uses (given explicitly or from the standard
environment variables).

An upload is left behind when it has shown no activity for a while, not when
it started long ago: a live upload of a large body on another host of the
fleet may have started minutes ago and still be sending parts.  And only keys
hashserver itself writes are its to abort: in a bare bucket the others are
other applications'.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import http.client
import logging
import os
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .compression import for_suffix
from .layout import is_buffer_name
from .s3keys import KEY_LAYOUTS, BucketKeys

log = logging.getLogger("hashserver")

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
REQUEST_TIMEOUT = 10.0
MAX_PAGES = 1000  # bounds the listing loops (1000 uploads or parts a page)
PARTS_PAGE = 1000  # parts asked for per ListParts page (S3's default and most)


class S3RequestError(Exception):
    """A signed request failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: datetime.datetime


@dataclass(frozen=True)
class Signer:
    """Where the bucket is and the credentials to sign with."""

    endpoint: str  # scheme://host[:port], path-style requests
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def from_settings(cls, bucket: str, endpoint: str | None, config: dict) -> "Signer":
        """From an obstore S3 config (its ``config`` property), completed by the environment."""
        env = os.environ.get
        region = config.get("region") or env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = endpoint or config.get("endpoint") or env("AWS_ENDPOINT_URL")
        if not endpoint:
            endpoint = f"https://s3.{region}.amazonaws.com"
        return cls(endpoint.rstrip("/"), region,
                   config.get("access_key_id") or env("AWS_ACCESS_KEY_ID") or "",
                   config.get("secret_access_key") or env("AWS_SECRET_ACCESS_KEY") or "",
                   config.get("session_token") or config.get("token") or env("AWS_SESSION_TOKEN")
                   or env("AWS_TOKEN"))

    def signed(self, method: str, path: str, query: str, headers: dict[str, str],
               payload_sha256: str = EMPTY_SHA256) -> dict[str, str]:
        """``headers`` (lower-case names, ``host`` among them) with the date, the payload's
        hash and the AWS Signature Version 4 ``authorization`` added; ``path`` and ``query``
        as sent (quoted, the query's parameters sorted)."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        headers = {**headers, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
        if self.session_token:
            headers["x-amz-security-token"] = self.session_token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([method, path, query, *(f"{k}:{headers[k]}" for k in names), "", signed,
                               payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = _signing_key(self.secret_access_key, day, self.region)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        return headers

    def request(self, method: str, path: str, query: dict[str, str]) -> urllib.request.Request:
        """A signed request (empty body) for ``path`` (``/bucket[/key]``)."""
        canonical_path = quote_path(path)
        canonical_query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items()))
        headers = self.signed(method, canonical_path, canonical_query,
                              {"host": urllib.parse.urlsplit(self.endpoint).netloc})
        target = f"{self.endpoint}{canonical_path}" + (f"?{canonical_query}" if canonical_query else "")
        return urllib.request.Request(target, method=method, headers=headers)


@functools.lru_cache(maxsize=8)
def _signing_key(secret_access_key: str, day: str, region: str) -> bytes:
    """The day's signing key: four HMACs, the same for every request of that day."""
    key = f"AWS4{secret_access_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def quote_path(path: str) -> str:
    return urllib.parse.quote(path, safe="/-_.~")


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def send(request: urllib.request.Request) -> bytes:
    """The response body; S3RequestError for an HTTP error or no answer."""
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise S3RequestError(f"{request.method} {request.full_url}: HTTP {exc.code} "
                             f"{exc.read(500).decode(errors='replace')}", exc.code) from None
    except (OSError, http.client.HTTPException) as exc:  # no answer, or not an HTTP one
        raise S3RequestError(f"{request.method} {request.full_url}: {exc!r}") from None


def _text(element: ET.Element, name: str) -> str:
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == name:
            return child.text or ""
    return ""


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if child.tag.rsplit("}", 1)[-1] == name]


def _time(text: str) -> datetime.datetime:
    """An S3 date (``2009-10-12T17:50:30.000Z``), timezone-aware; ValueError if it is none."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def list_uploads(signer: Signer, bucket: str, prefix: str) -> list[Upload]:
    """Every incomplete multipart upload of ``bucket`` whose key starts with ``prefix`` (blocking)."""
    uploads: list[Upload] = []
    query = {"uploads": "", "prefix": prefix}
    for _ in range(MAX_PAGES):
        root = ET.fromstring(send(signer.request("GET", f"/{bucket}", query)))
        for upload in _children(root, "Upload"):
            uploads.append(Upload(_text(upload, "Key"), _text(upload, "UploadId"), _time(_text(upload, "Initiated"))))
        if _text(root, "IsTruncated").lower() != "true":
            break
        query = {**query, "key-marker": _text(root, "NextKeyMarker"),
                 "upload-id-marker": _text(root, "NextUploadIdMarker")}
    return uploads


def abort_upload(signer: Signer, bucket: str, upload: Upload) -> None:
    """Abort one upload (blocking); one already gone counts as aborted."""
    try:
        send(signer.request("DELETE", f"/{bucket}/{upload.key}", {"uploadId": upload.upload_id}))
    except S3RequestError as exc:
        if exc.status != 404:
            raise


def newest_part(signer: Signer, bucket: str, upload: Upload) -> datetime.datetime | None:
    """When the upload's latest part was uploaded (None: no part yet), from ListParts (blocking):
    its last sign of life, which its start (``Initiated``) is not."""
    newest: datetime.datetime | None = None
    query = {"uploadId": upload.upload_id, "max-parts": str(PARTS_PAGE)}
    for _ in range(MAX_PAGES):
        root = ET.fromstring(send(signer.request("GET", f"/{bucket}/{upload.key}", query)))
        for part in _children(root, "Part"):
            modified = _time(_text(part, "LastModified"))
            newest = modified if newest is None else max(newest, modified)
        marker = _text(root, "NextPartNumberMarker")
        if _text(root, "IsTruncated").lower() != "true" or not marker:
            break
        query = {**query, "part-number-marker": marker}
    return newest


def is_idle(signer: Signer, bucket: str, upload: Upload, cutoff: datetime.datetime) -> bool:
    """Started before ``cutoff`` and no part uploaded since (blocking).  When its parts cannot
    be listed (most often it was completed or aborted meanwhile: 404 NoSuchUpload), it is not:
    an upload is aborted only when it is known to be idle, and one that cannot be listed must
    not stop the others from being looked at."""
    if upload.initiated > cutoff:
        return False
    try:
        newest = newest_part(signer, bucket, upload)
    except (S3RequestError, ValueError, ET.ParseError) as exc:
        if not (isinstance(exc, S3RequestError) and exc.status == 404):
            log.warning("incomplete upload %s of %s kept: its parts could not be listed: %s",
                        upload.upload_id, upload.key, exc)
        return False
    return newest is None or newest <= cutoff


def is_buffer_key(bucket: str, prefix: str, key: str) -> bool:
    """Would this store write ``key``, ``prefix`` being its upload prefix ("" or ending in "/")?
    A buffer, plain or compressed, in either key layout; nothing else is its to abort."""
    checksum, dot, suffix = posixpath.basename(key).partition(".")
    encoding = for_suffix(dot + suffix)
    if not is_buffer_name(checksum) or (dot and encoding is None):
        return False
    return any(BucketKeys(bucket, prefix.rstrip("/"), layout).buffer(checksum, encoding) == key
               for layout in KEY_LAYOUTS)


async def abort_idle(signer: Signer, bucket: str, uploads: list[Upload], older_than: float) -> int:
    """Abort those of ``uploads`` that have shown no activity (start, part) for more than
    ``older_than`` seconds; how many.  One cut off from its writer has none; a live one on
    another host sends a part at least every so often, however long its body."""
    cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than)
    aborted = 0
    for upload in uploads:
        if await asyncio.to_thread(is_idle, signer, bucket, upload, cutoff):
            await asyncio.to_thread(abort_upload, signer, bucket, upload)
            aborted += 1
    return aborted


async def abort_older(signer: Signer, bucket: str, prefix: str, older_than: float) -> int:
    """Abort the buffer uploads under ``prefix`` idle for more than ``older_than`` seconds; how many."""
    uploads = await asyncio.to_thread(list_uploads, signer, bucket, prefix)
    return await abort_idle(signer, bucket, [u for u in uploads if is_buffer_key(bucket, prefix, u.key)],
                            older_than)
