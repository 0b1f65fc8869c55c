"""The benchmark suite still runs end to end, so it cannot rot unnoticed.

``python -m bench --quick`` is run as users run it (a subprocess, from the
repository root) on a tiny directory made in a temporary cache.  Only the
structure of its outputs is checked: no timing assertions, since the figures
depend on the machine and on whatever else it is doing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds; a quick run takes well under a minute on two cores

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT + 60)]


def run_bench(tmp_path: Path, *args: str, quick: bool = True
              ) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench", *(["--quick"] if quick else []),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *args]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads((out / "bench.json").read_text()), out


def test_quick_run_produces_table_json_and_chart(tmp_path: Path) -> None:
    proc, doc, out = run_bench(tmp_path, "--lookup-scaling", "1000,5000")

    machine = doc["machine"]
    for key in ("cpu_count", "cpu_model", "python", "sanic", "nginx", "wrk"):
        assert key in machine
    assert machine["cpu_count"] >= 1 and machine["sanic"]

    (run,) = doc["runs"]
    assert run["workers"] == 2 and run["buffers"] == 2000
    assert run["problems"] == []
    expected = {"startup", "index_build", "verify_large", "get_small", "get_large", "head",
                "get_404", "has_1", "has_100", "has_1000", "has_10000", "buffer_length",
                "put_small", "put_large", "main_memory", "main_memory_settled"}
    assert expected <= set(run["figures"])
    for key, fig in run["figures"].items():
        assert isinstance(fig["value"], (int, float)), key
        assert fig["value"] > 0 or fig["unit"] == "MiB", key  # memory above a baseline may be <= 0
        assert fig["unit"] and fig["label"], key
    for key in ("main_memory", "main_memory_settled"):  # against a server on an empty directory
        fig = run["figures"][key]
        assert fig["baseline_mib"] > 0 and fig["ceiling_value"] > 0 and fig["ratio"] > 0
    for key in ("get_small", "head", "get_404"):  # the framework ceiling: Sanic, a constant body
        assert run["figures"][key]["framework_value"] > 0, key
        assert run["figures"][key]["framework_load"]["requests"] > 0, key
    assert run["figures"]["get_404"]["framework_load"]["non_2xx"] == \
        run["figures"]["get_404"]["framework_load"]["requests"]
    for key in ("get_small", "has_1000", "put_large"):
        assert run["figures"][key]["load"]["requests"] > 0
        assert run["figures"][key]["ratio"] is not None
    if shutil.which("nginx"):
        assert run["figures"]["get_small"]["ceiling_value"] > 0
        assert run["figures"]["get_small"]["ceiling"] == "nginx"

    roles = [p["role"] for p in run["memory"]["after_load"]]
    assert roles.count("main") == 1 and roles.count("worker") == 2
    for p in run["memory"]["after_load"]:
        assert p["rss"] > 0 and (p["pss"] is None or p["pss"] > 0)
        assert p["anon"] is None or 0 < p["anon"] <= p["rss"]

    assert_lookups(doc, [1000, 5000])

    table = (out / "table.txt").read_text()
    assert table == proc.stdout
    for label in ("GET 1 KiB, random", "/has x1000", "PUT large, new", "memory, after load",
                  "Sanic, constant body", "main memory, index built", "in-process lookups"):
        assert label in table
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert list((out / "logs").glob("hashserver-*.log"))


def test_builtin_client_fallback(tmp_path: Path) -> None:
    """The client used where wrk is missing, on the cases that exercise all its paths."""
    proc, doc, _ = run_bench(tmp_path, "--client", "python", "--no-nginx", "--workers", "1",
                             "--cases", "get_small,get_404,has_1000,put_small,put_large")
    (run,) = doc["runs"]
    assert doc["load_generator"]["name"] == "python"
    assert run["problems"] == []
    for key in ("get_small", "get_404", "has_1000", "put_small", "put_large"):
        assert run["figures"][key]["load"]["generator"] == "python"
        assert run["figures"][key]["load"]["requests"] > 0
    assert run["figures"]["get_404"]["load"]["non_2xx"] == run["figures"]["get_404"]["load"]["requests"]
    assert "GET missing (404)" in proc.stdout


def assert_lookups(doc: dict, sizes: list[int]) -> None:
    """The in-process lookup benchmark's figures: one per size, each measured."""
    assert [f["entries"] for f in doc["lookups"]] == sizes
    for fig in doc["lookups"]:
        assert fig["batch_per_s"] > 0 and fig["single_per_s"] > 0
        assert fig["index_bytes"] > 32 * fig["entries"] and fig["fanout_bits"] >= 1
        assert fig["rounds"] and all(len(r) == 2 for r in fig["rounds"])


def test_lookup_benchmark_alone(tmp_path: Path) -> None:
    """``--lookup-scaling`` without --buffers, --scaling or --quick: only the
    in-process benchmark runs, no server."""
    proc, doc, out = run_bench(tmp_path, "--lookup-scaling", "2000,500", quick=False)
    assert doc["runs"] == []
    assert_lookups(doc, [2000, 500])
    assert "in-process lookups" in proc.stdout and "GET 1 KiB" not in proc.stdout
    assert not list((tmp_path / "cache").glob("prefix-*"))  # no buffer directory was made
