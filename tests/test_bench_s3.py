"""The S3 benchmark (``python -m bench --store s3``, also ``python -m bench.s3``) still
runs end to end, so it cannot rot unnoticed.

``--quick`` is run as the README tells users to run it (``python -m bench --store s3``, a
subprocess, from the repository root; its output directory gets an ``-s3`` suffix): it starts
its own SeaweedFS with the tests' harness (tests/seaweedfs.py, the same ``weed server``
the fixtures start), a hashserver on a bucket there and a directory server beside it.
Only the structure of its outputs is checked: every figure measured, positive, with its
ceiling and their ratio; no timing thresholds, since the figures depend on the machine
and on whatever else it is doing.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seaweedfs import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    s3_bucket,  # noqa: F401  (fixtures)
    seaweedfs,  # noqa: F401
)

from bench.report import _ratio
from bench.s3 import CASES_S3, CEILINGS, LARGE_WARM_UP, PAIRED
from hashserver import s3uploads

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds; a quick run takes a minute or two on two busy cores

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT + 60)]


def test_quick_s3_bench_reports_every_figure_with_its_ceiling(tmp_path):
    argv = [sys.executable, "-m", "bench", "--store", "s3", "--quick", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"bench --store s3 exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    out = tmp_path / "out-s3"
    doc = json.loads((out / "bench-s3.json").read_text())
    assert doc["problems"] == []
    assert list(doc["figures"]) == list(CASES_S3)
    for key, fig in doc["figures"].items():
        case = CASES_S3[key]
        assert (fig["label"], fig["unit"], fig["ceiling"], fig["target"]) == (
            case.label, case.unit, CEILINGS[case.ceiling], case.target), key
        assert fig["value"] > 0 and fig["ceiling_value"] > 0, (key, fig)
        assert fig["ratio"] == pytest.approx(fig["value"] / fig["ceiling_value"]), (key, fig)
    assert set(doc["ceiling_detail"]) == {k for k, c in CASES_S3.items() if c.ceiling != "directory"}
    table = (out / "table-s3.txt").read_text()
    assert proc.stdout == table
    for case in CASES_S3.values():
        assert case.label in table
    assert "lowest ratio" in table
    assert (f"large cases: 3 fresh objects each, one at a time, the raw client's call and hashserver's in turns, "
            f"each figure the size over the median time; after {LARGE_WARM_UP} unmeasured per worker of "
            f"the server (over 2 connections) and one of each of the raw client's calls") in table
    paired = "concurrency 1, in turns with hashserver's (3 each, medians)"
    for key in PAIRED:  # the large cases, GETs and PUTs, on both servers
        if key.startswith("put"):  # the raw client's faster way, each way's rate given
            detail = doc["ceiling_detail"][key]
            assert re.fullmatch(r"the faster of one PUT \(([\d,.]+) MB/s\) and a multipart upload of the server's "
                                r"parts \(([\d,.]+) MB/s\), " + re.escape(paired), detail), detail
            rates = [float(rate.replace(",", "")) for rate in re.findall(r"\(([\d,.]+) MB/s\)", detail)]
            assert abs(max(rates) - doc["figures"][key]["ceiling_value"]) <= 1, (rates, doc["figures"][key])
        else:
            assert doc["ceiling_detail"][key] == paired, key
    assert doc["file_creation_us"] > 0  # what each small fill of the tier paid, this run
    assert f"beside the tier, before the misses: {doc['file_creation_us']:,.0f} us of CPU" in table
    assert doc["large_write_ms"] > 0 and doc["large_write_buffered_ms"] > 0  # what each large fill paid, this run
    assert (f"into a new file beside the tier, before the misses: {doc['large_write_ms']:,.1f} ms of CPU as the "
            f"tier writes it, past the page cache ({doc['large_write_buffered_ms']:,.1f} ms through it") in table
    # the lean client's own raw figure, beside obstore's ceiling, for the cases whose calls use it
    assert set(doc["lean_raw"]) == {"miss_get_small", "put_small"}
    for key, (rate, how) in doc["lean_raw"].items():
        assert rate > 0 and how.startswith("concurrency "), (key, rate, how)
        assert f"{CASES_S3[key].label}: hashserver's own lean S3 client alone" in table
    for key in ("miss_get_small", "put_small"):  # the server's best connection count, from the tier's rounds
        assert re.fullmatch(r"(32|128) connections", doc["server_detail"][key]), doc["server_detail"]
        assert f"{CASES_S3[key].label}: ceiling by" in table and f"; hashserver's best at {doc['server_detail'][key]}" \
            in table
    # the small cases once more through a server with no local tier, against the same ceilings (the
    # bench checks that server's metrics: a tier read there would be a problem, failing the run above)
    assert set(doc["no_tier"]) == {"miss_get_small", "put_small"}
    for key, (rate, how) in doc["no_tier"].items():
        assert rate > 0 and re.fullmatch(r"(32|128) connections", how), (key, rate, how)
        ratio = rate / doc["figures"][key]["ceiling_value"]
        assert (f"{CASES_S3[key].label}: hashserver with no local tier (--cache-size 0), each miss or PUT then "
                f"writing no file: {rate:,.0f} {CASES_S3[key].unit} at {how}, {_ratio(ratio)} of its ceiling") in table
    # each large case beside the least a verifying server does: a miss's raw GET followed by the
    # hash, a PUT's raw multipart upload beside the hash and the tier's copy
    assert set(doc["verified_raw"]) == {"miss_get_large", "miss_get_large_sha256", "put_large", "put_large_sha256"}
    for key, (rate, how, hashing) in doc["verified_raw"].items():
        assert rate > 0 and hashing > 0 and how == paired, (key, rate, how, hashing)
        least = "obstore's multipart PUT of the body held in memory" if key.startswith("put") else \
            "obstore's GET, then the hash of its bytes"
        assert f"{CASES_S3[key].label}: {least}" in table
        assert f"the hash alone {hashing:,.0f} MB/s" in table


def test_the_least_work_of_a_put_uploads_the_body_and_copies_it(seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """The least-work line of a large PUT measures real work: the object holds the body (in
    parts), the copy beside holds it too, and the hash took time; a body that hashes to
    another checksum leaves no object, as a verifying server's PUT would."""
    import obstore

    from bench.s3 import RawCalls

    body = np.random.default_rng(7).bytes(17 << 20)  # three parts of the server's 8 MiB
    name = hashlib.sha3_256(body).hexdigest()
    raw = RawCalls(seaweedfs.s3_store(s3_bucket))
    try:
        seconds, hashing = raw.put_verified("aa/least", body, "sha3_256", name, str(tmp_path))
        with pytest.raises(ValueError, match="the body hashed to"):
            raw.put_verified("aa/wrong", body, "sha3_256", "0" * 64, str(tmp_path))
    finally:
        raw.close()
    assert 0 < hashing < seconds
    store = seaweedfs.s3_store(s3_bucket)
    assert bytes(obstore.get(store, "aa/least").bytes()) == body
    assert obstore.head(store, "aa/least")["e_tag"].endswith('-3"')  # a multipart upload
    assert (tmp_path / "aa-least").read_bytes() == body
    with pytest.raises(FileNotFoundError):  # obstore's NotFoundError
        obstore.head(store, "aa/wrong")
    signer = s3uploads.Signer.from_settings(s3_bucket, seaweedfs.s3_endpoint, {
        "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "region": REGION})
    assert s3uploads.list_uploads(signer, s3_bucket, "") == []  # the refused upload was aborted
