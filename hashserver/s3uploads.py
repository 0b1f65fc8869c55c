"""Incomplete multipart uploads: listed and aborted with signed S3 requests; the signing.

obstore (0.12) completes or aborts the multipart uploads it starts itself but
has no call to list the ones a killed process left behind, nor to abort one
by its id; these are two plain S3 requests (``GET /bucket?uploads``,
``DELETE /bucket/key?uploadId=``), signed here with AWS Signature Version 4
from the same credentials obstore uses (given explicitly or from the standard
environment variables).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
REQUEST_TIMEOUT = 10.0
MAX_PAGES = 1000  # bounds the listing loop (1000 uploads a page)


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
    except OSError as exc:
        raise S3RequestError(f"{request.method} {request.full_url}: {exc}") from None


def _text(element: ET.Element, name: str) -> str:
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == name:
            return child.text or ""
    return ""


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if child.tag.rsplit("}", 1)[-1] == name]


def list_uploads(signer: Signer, bucket: str, prefix: str) -> list[Upload]:
    """Every incomplete multipart upload of ``bucket`` whose key starts with ``prefix`` (blocking)."""
    uploads: list[Upload] = []
    query = {"uploads": "", "prefix": prefix}
    for _ in range(MAX_PAGES):
        root = ET.fromstring(send(signer.request("GET", f"/{bucket}", query)))
        for upload in _children(root, "Upload"):
            initiated = datetime.datetime.fromisoformat(_text(upload, "Initiated").replace("Z", "+00:00"))
            uploads.append(Upload(_text(upload, "Key"), _text(upload, "UploadId"), initiated))
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


async def abort_older(signer: Signer, bucket: str, prefix: str, older_than: float) -> int:
    """Abort the uploads under ``prefix`` started more than ``older_than`` seconds ago; how many."""
    uploads = await asyncio.to_thread(list_uploads, signer, bucket, prefix)
    cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than)
    stale = [u for u in uploads if u.initiated <= cutoff]
    for upload in stale:
        await asyncio.to_thread(abort_upload, signer, bucket, upload)
    return len(stale)
