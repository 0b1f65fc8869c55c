"""Which incomplete multipart uploads a starting host aborts (hashserver.s3uploads), against
the session's SeaweedFS.

Only idle uploads of buffer keys: an upload is idle when neither its start nor its newest
part (ListParts' ``LastModified``; SeaweedFS gives one per part, to the second) is more
recent than the threshold.  S3 dates to the second and cannot be backdated, so the
threshold is small here and the tests sleep past it; they assert no durations.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from seaweedfs import (
    SeaweedFS,
    s3_bucket,  # noqa: F401  (fixtures)
    seaweedfs,  # noqa: F401
)

from hashserver import s3uploads
from hashserver.s3uploads import Signer, Upload

THRESHOLD = 4.0  # seconds of idleness after which an upload is stale, in these tests
PAST = THRESHOLD + 1.5  # a sleep past the threshold, S3's whole seconds included
BOUND = 60.0  # seconds: a bound against hangs, not a speed requirement
BUFFER = hashlib.sha3_256(b"a buffer").hexdigest()
OTHER = hashlib.sha3_256(b"another buffer").hexdigest()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, BOUND))


def signer_for(seaweedfs: SeaweedFS, bucket: str) -> Signer:  # noqa: F811
    env = seaweedfs.s3_env()
    return Signer.from_settings(bucket, seaweedfs.s3_endpoint, {
        "access_key_id": env["AWS_ACCESS_KEY_ID"], "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region": env["AWS_REGION"]})


def send_body(signer: Signer, method: str, path: str, query: dict[str, str], body: bytes) -> bytes:
    """A signed request with a body (``Signer.request`` sends none)."""
    canonical_path = s3uploads.quote_path(path)
    canonical_query = "&".join(f"{s3uploads._q(k)}={s3uploads._q(v)}" for k, v in sorted(query.items()))
    headers = signer.signed(method, canonical_path, canonical_query,
                            {"host": urllib.parse.urlsplit(signer.endpoint).netloc},
                            hashlib.sha256(body).hexdigest())
    request = urllib.request.Request(f"{signer.endpoint}{canonical_path}?{canonical_query}", data=body,
                                     method=method, headers=headers)
    return s3uploads.send(request)


def initiate(signer: Signer, bucket: str, key: str) -> str:
    """A new multipart upload of ``key``; its id."""
    answer = s3uploads.send(signer.request("POST", f"/{bucket}/{key}", {"uploads": ""}))
    return s3uploads._text(ET.fromstring(answer), "UploadId")


def upload_part(signer: Signer, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
    """Upload one part; its ETag (a part other than the last may be small until completion)."""
    send_body(signer, "PUT", f"/{bucket}/{key}", {"partNumber": str(number), "uploadId": upload_id}, data)
    listed = ET.fromstring(s3uploads.send(signer.request("GET", f"/{bucket}/{key}", {"uploadId": upload_id})))
    return next(s3uploads._text(p, "ETag") for p in s3uploads._children(listed, "Part")
                if s3uploads._text(p, "PartNumber") == str(number))


def complete(signer: Signer, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
    parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                    for n, etag in enumerate(etags, 1))
    body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
    send_body(signer, "POST", f"/{bucket}/{key}", {"uploadId": upload_id}, body)


def open_keys(signer: Signer, bucket: str) -> set[str]:
    return {u.key for u in s3uploads.list_uploads(signer, bucket, "")}


def parts_listed(signer: Signer, bucket: str, key: str, upload_id: str) -> list[str]:
    """The parts' ``LastModified`` as the server gives them, in one page."""
    listed = ET.fromstring(s3uploads.send(signer.request("GET", f"/{bucket}/{key}", {"uploadId": upload_id})))
    return [s3uploads._text(p, "LastModified") for p in s3uploads._children(listed, "Part")]


def test_seaweedfs_dates_every_part(seaweedfs, s3_bucket):  # noqa: F811
    """What the fix relies on: ListParts gives each part its own ``LastModified``."""
    signer = signer_for(seaweedfs, s3_bucket)
    key = f"{BUFFER[:2]}/{BUFFER}"
    upload_id = initiate(signer, s3_bucket, key)
    assert parts_listed(signer, s3_bucket, key, upload_id) == []
    for number in (1, 2):
        upload_part(signer, s3_bucket, key, upload_id, number, b"x" * 1000)
    dates = parts_listed(signer, s3_bucket, key, upload_id)
    assert len(dates) == 2 and all(dates)


def test_an_old_upload_with_a_recent_part_is_kept_until_idle(seaweedfs, s3_bucket):  # noqa: F811
    """A live upload on another host started long ago but sends parts: kept; aborted once it
    has sent nothing for longer than the threshold."""
    signer = signer_for(seaweedfs, s3_bucket)
    key = f"buffers/{BUFFER[:2]}/{BUFFER}"
    upload_id = initiate(signer, s3_bucket, key)
    time.sleep(PAST)  # started longer ago than the threshold
    upload_part(signer, s3_bucket, key, upload_id, 1, b"x" * 1000)
    assert run(s3uploads.abort_older(signer, s3_bucket, "buffers/", THRESHOLD)) == 0
    assert open_keys(signer, s3_bucket) == {key}
    time.sleep(PAST)  # and now idle longer than that
    assert run(s3uploads.abort_older(signer, s3_bucket, "buffers/", THRESHOLD)) == 1
    assert open_keys(signer, s3_bucket) == set()


def test_an_idle_upload_without_parts_is_aborted(seaweedfs, s3_bucket):  # noqa: F811
    signer = signer_for(seaweedfs, s3_bucket)
    key = f"buffers/{BUFFER[:2]}/{BUFFER}.zst"
    initiate(signer, s3_bucket, key)
    assert run(s3uploads.abort_older(signer, s3_bucket, "buffers/", 3600)) == 0  # younger than that: kept
    assert open_keys(signer, s3_bucket) == {key}
    time.sleep(PAST)
    assert run(s3uploads.abort_older(signer, s3_bucket, "buffers/", THRESHOLD)) == 1
    assert open_keys(signer, s3_bucket) == set()


def test_other_applications_uploads_in_a_bare_bucket_are_left_alone(seaweedfs, s3_bucket):  # noqa: F811
    signer = signer_for(seaweedfs, s3_bucket)
    buffers = {f"{BUFFER[:2]}/{BUFFER}", f"{OTHER}.gz"}  # the prefix layout's, the flat layout's
    others = {"other-app/file.bin", f"other-app/{BUFFER}", f"{OTHER[:2]}/{BUFFER}", f"{BUFFER}.tar.gz"}
    for key in buffers | others:
        initiate(signer, s3_bucket, key)
    time.sleep(PAST)
    assert run(s3uploads.abort_older(signer, s3_bucket, "", THRESHOLD)) == len(buffers)
    assert open_keys(signer, s3_bucket) == others


@pytest.mark.parametrize("prefix, key, expected", [
    ("", f"{BUFFER[:2]}/{BUFFER}", True),
    ("", BUFFER, True),
    ("", f"{BUFFER}.zst", True),
    ("p/q/", f"p/q/{BUFFER[:2]}/{BUFFER}.gz", True),
    ("p/q/", f"p/q/{BUFFER}", True),
    ("p/q/", f"p/{BUFFER[:2]}/{BUFFER}", False),  # another prefix
    ("", f"{OTHER[:2]}/{BUFFER}", False),  # in another checksum's directory
    ("", f"x/{BUFFER[:2]}/{BUFFER}", False),
    ("", BUFFER.upper(), False),
    ("", BUFFER[:-1], False),
    ("", f"{BUFFER}.BUFFERLENGTH", False),  # never a multipart upload
    ("", f".{BUFFER}.host-1.0.tmp", False),
    ("", "other-app/file.bin", False),
])
def test_buffer_keys(prefix, key, expected):
    assert s3uploads.is_buffer_key("bucket", prefix, key) is expected


def test_an_upload_completed_after_the_listing_is_no_error(seaweedfs, s3_bucket, caplog):  # noqa: F811
    """ListParts of an upload completed meanwhile is 404 NoSuchUpload: that one is skipped
    (silently: nothing went wrong), the others are aborted."""
    signer = signer_for(seaweedfs, s3_bucket)
    done, idle = f"{BUFFER[:2]}/{BUFFER}", f"{OTHER[:2]}/{OTHER}"
    done_id = initiate(signer, s3_bucket, done)
    initiate(signer, s3_bucket, idle)
    etag = upload_part(signer, s3_bucket, done, done_id, 1, b"a buffer")
    time.sleep(PAST)
    listing = s3uploads.list_uploads(signer, s3_bucket, "")
    assert {u.key for u in listing} == {done, idle}
    complete(signer, s3_bucket, done, done_id, [etag])
    completed = next(u for u in listing if u.key == done)
    with pytest.raises(s3uploads.S3RequestError) as gone:
        s3uploads.newest_part(signer, s3_bucket, completed)
    assert gone.value.status == 404
    assert run(s3uploads.abort_idle(signer, s3_bucket, listing, THRESHOLD)) == 1
    assert open_keys(signer, s3_bucket) == set()
    assert s3uploads.send(signer.request("GET", f"/{s3_bucket}/{done}", {})) == b"a buffer"
    assert "kept" not in caplog.text


def test_the_newest_part_is_looked_for_on_every_page(seaweedfs, s3_bucket, monkeypatch):  # noqa: F811
    monkeypatch.setattr(s3uploads, "PARTS_PAGE", 1)
    signer = signer_for(seaweedfs, s3_bucket)
    key = f"{BUFFER[:2]}/{BUFFER}"
    upload_id = initiate(signer, s3_bucket, key)
    for number in (1, 2, 3):
        upload_part(signer, s3_bucket, key, upload_id, number, b"x" * 1000)
        time.sleep(1.1)  # S3 dates a part to the second: each its own
    dates = parts_listed(signer, s3_bucket, key, upload_id)
    newest = s3uploads.newest_part(signer, s3_bucket, Upload(key, upload_id, s3uploads._time(dates[0])))
    assert newest == s3uploads._time(dates[-1]) > s3uploads._time(dates[0])
