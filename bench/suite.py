"""Runs the cases: for each directory size and worker count, the read-only
server, nginx on the same directory, then the writable server.

Everything measured lands in one JSON-ready document; :mod:`bench.report`
only formats it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import ceilings
from .cases import (CASES, CEILING_NAMES, HAS_PER_WORKER_TARGET, LOAD_CASES, NGINX_CASES, Case,
                    ratio)
from .dataset import Dataset, DatasetSpec, ensure_dataset
from .load import LoadGenerator, LoadResult, Scenario, choose_generator
from .machine import load_average, machine_info
from .procfs import cpu_seconds
from .profile import Profiler
from .pyclient import PythonClient
from .scenarios import Scenarios
from .servers import HashServer, Nginx, ServerProcess, request, stop_all
from .wrk import Wrk

PREFIX_MARKER = ".HASHSERVER_PREFIX"


@dataclass
class Options:
    buffers: list[int]
    workers: list[int]
    layout: str = "prefix"
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 32
    large_size: int = 64 << 20
    cache_dir: str = "~/.cache/hashserver-bench"
    out: str = "bench-results"
    quick: bool = False
    client: str = "auto"
    client_processes: int | None = None
    nginx: bool = True
    cases: list[str] = field(default_factory=lambda: list(CASES))
    profile: bool = False
    seed: int = 1
    sha3_seconds: float = 1.0


_STARTED = time.monotonic()


def say(text: str) -> None:
    """Progress for the person waiting: stderr, so stdout stays the table."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


class Suite:
    def __init__(self, options: Options):
        self.options = options
        self.generator, note = choose_generator(options.client, options.client_processes)
        self.notes: list[str] = [note] if note else []
        self.head_client: LoadGenerator | None = None
        if isinstance(self.generator, Wrk) and "head" in options.cases:
            # wrk's response parser waits for a body after HEAD (wg/wrk#198).
            self.head_client = PythonClient(options.client_processes)
            self.notes.append("HEAD is driven by the built-in client for both servers: wrk cannot "
                              f"send HEAD (wg/wrk#198); {self.head_client.describe()}")
        self.nginx = options.nginx and shutil.which("nginx") is not None
        if options.nginx and not self.nginx:
            self.notes.append("nginx is not installed (Debian/Ubuntu: apt-get install nginx): "
                              "no side-by-side GET figures")
        self.profiler = Profiler(os.path.join(options.out, "profiles")) if options.profile else None
        if self.profiler and not self.profiler.available:
            self.notes.append("--profile: py-spy is not installed (pip install py-spy): no profiles")
            self.profiler = None
        if self.profiler:
            self.notes.append("profiled run: py-spy samples the server, figures are lower than usual")
        self.workdir = ""

    # ------------------------------------------------------------ top level
    def run(self) -> dict:
        o = self.options
        doc: dict = {
            "bench_format": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": ["python", "-m", "bench", *sys.argv[1:]],
            "options": {k: v for k, v in vars(o).items()},
            "machine": machine_info(),
            "load_generator": {"name": self.generator.name, "description": self.generator.describe(),
                               "connections": o.connections},
            "notes": self.notes,
        }
        say(f"bench: load from {self.generator.describe()}; nginx side by side: "
            f"{'yes' if self.nginx else 'no'}")
        for note in self.notes:
            say(f"bench: note: {note}")
        os.makedirs(os.path.expanduser(o.cache_dir), exist_ok=True)
        doc["runs"] = []
        self.workdir = tempfile.mkdtemp(prefix="work-", dir=os.path.expanduser(o.cache_dir))
        try:
            for count in o.buffers:
                spec = DatasetSpec(count, o.layout, large_size=o.large_size, seed=o.seed)
                dataset = ensure_dataset(o.cache_dir, spec)
                scenarios = Scenarios(dataset, self.workdir, o.connections, o.duration, o.warmup,
                                      o.large_size, o.seed)
                for workers in o.workers:
                    doc["runs"].append(self.run_one(dataset, scenarios, workers))
        finally:
            stop_all()
            self._keep_logs()
            shutil.rmtree(self.workdir, ignore_errors=True)
        doc["machine"]["load_average_at_end"] = load_average()
        doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return doc

    def _keep_logs(self) -> None:
        """Server logs of this run into OUT/logs (replacing the previous run's)."""
        logs = os.path.join(self.options.out, "logs")
        shutil.rmtree(logs, ignore_errors=True)
        os.makedirs(logs)
        for root, _, files in os.walk(self.workdir):
            for name in files:
                if name.endswith(".log"):
                    path = os.path.join(root, name)
                    flat = os.path.relpath(path, self.workdir).replace(os.sep, "-")
                    shutil.copy(path, os.path.join(logs, flat))

    # ---------------------------------------------------------- one config
    def run_one(self, dataset: Dataset, scenarios: Scenarios, workers: int) -> dict:
        o = self.options
        spec = dataset.spec
        tag = f"{spec.count:,} buffers, workers={workers}"
        say(f"bench: == {tag}")
        run: dict = {"buffers": spec.count, "layout": spec.layout, "workers": workers,
                     "buffer_size": spec.size, "large_size": spec.large_size,
                     "figures": {}, "memory": {}, "problems": [],
                     "load_average_at_start": load_average()}
        # Ceilings are measured next to the figures they bound, so that a
        # machine busy with other work depresses both alike.
        ceils = run["ceilings"] = {"sha3_mb_s": ceilings.sha3_mb_per_s(o.sha3_seconds)}
        figures = run["figures"]
        wanted = [c for c in LOAD_CASES if c.key in o.cases]

        ceilings.find_seconds(dataset.directory)  # the server's scan finds a warm cache too
        with HashServer(self.workdir, dataset.directory, spec.layout, workers) as server:
            self._startup_figures(run, server, dataset)
            run["memory"]["idle"] = [m.as_dict() for m in server.memory()]
            self._check_reads(server, dataset)
            if "verify_large" in o.cases:
                figures["verify_large"] = self._verify_large(server, dataset)
            for case in (c for c in wanted if c.server == "read"):
                figures[case.key] = self._measure(case, server, scenarios, tag)
            run["memory"]["after_load"] = [m.as_dict() for m in server.memory()]
        run["stop_s"] = server.stop_s

        nginx_cases = [c for c in wanted if c.key in NGINX_CASES]
        if self.nginx and nginx_cases:
            self._nginx_ceilings(run, nginx_cases, dataset, scenarios, workers, tag)

        write_cases = [c for c in wanted if c.server == "write"]
        if write_cases:
            ceils["small_writes_per_s"] = ceilings.small_writes_per_s(
                dataset.root, dataset.spec.size, o.sha3_seconds)
            ceils["sha3_mb_s_put"] = ceilings.sha3_mb_per_s(o.sha3_seconds)
            self._write_cases(run, write_cases, dataset, scenarios, workers, tag)

        self._fill_ceilings(run, ceils, workers)
        for key, fig in figures.items():
            for problem in fig.get("problems", []):
                run["problems"].append(f"{key}: {problem}")
        return run

    # ------------------------------------------------------------- pieces
    def _startup_figures(self, run: dict, server: HashServer, dataset: Dataset) -> None:
        """Startup time, and the index build against ``find`` on the same, equally warm,
        directory (``find`` also ran just before the server started)."""
        figures = run["figures"]
        figures["startup"] = self._figure(CASES["startup"], server.startup_s)
        built = server.index_build()
        if built is not None:
            indexed, seconds = built
            fig = self._figure(CASES["index_build"], seconds)
            fig["indexed"] = indexed
            files, find_s = ceilings.find_seconds(dataset.directory)
            fig["ceiling_value"] = find_s
            fig["find_files"] = files
            figures["index_build"] = fig
        else:
            run["problems"].append("index_build: the server did not log its index build time")

    def _check_reads(self, server: ServerProcess, dataset: Dataset) -> None:
        """Before measuring anything: the server really serves this dataset correctly."""
        present = dataset.first_checksum()
        reply = request(server.port, "GET", "/" + present)
        if reply.status != 200 or hashlib.sha3_256(reply.body).hexdigest() != present:
            raise RuntimeError(f"{server.name} does not serve {present} correctly "
                               f"(status {reply.status}); see {server.log_path}")
        if isinstance(server, HashServer):
            body = json.dumps([present, "00" * 32]).encode()
            reply = request(server.port, "POST", "/has", body)
            if reply.status != 200 or json.loads(reply.body) != [True, False]:
                raise RuntimeError(f"/has answers {reply.status} {reply.body[:200]!r}")

    def _verify_large(self, server: HashServer, dataset: Dataset) -> dict:
        """The first GET of the large buffer: the server hashes it before serving it."""
        started = time.perf_counter()
        reply = request(server.port, "GET", "/" + dataset.large_checksum, timeout=600)
        elapsed = time.perf_counter() - started
        fig = self._figure(CASES["verify_large"], dataset.spec.large_size / elapsed / 1e6)
        if reply.status != 200 or len(reply.body) != dataset.spec.large_size:
            fig["problems"] = [f"status {reply.status}, {len(reply.body)} bytes"]
        return fig

    def _generator_for(self, scenario: Scenario) -> LoadGenerator:
        if scenario.method == "HEAD" and self.head_client is not None:
            return self.head_client
        return self.generator

    def _load(self, case: Case, scenarios: Scenarios, server: ServerProcess,
              profile_name: str | None = None) -> tuple[LoadResult, dict, dict | None]:
        """Warm up, then measure: the result, the server's CPU seconds meanwhile
        (by role: main, worker, other) and, with --profile, the profile summary."""
        o = self.options
        measure = scenarios.get(case.key, "measure")
        generator = self._generator_for(measure)
        if o.warmup > 0:
            generator.run(scenarios.get(case.key, "warmup"), server.port, o.warmup)
        pids = server.pids()
        cpu_before = cpu_seconds(pids)
        recorder = self.profiler.start(server, profile_name, o.duration) if (
            self.profiler and profile_name) else None
        result = generator.run(measure, server.port, o.duration)
        cpu: dict[str, float] = {}
        for pid, seconds in cpu_seconds(pids).items():
            role = server.role(pid)
            cpu[role] = round(cpu.get(role, 0.0) + seconds - cpu_before.get(pid, 0.0), 3)
        profile = self.profiler.finish(recorder) if recorder is not None else None
        return result, cpu, profile

    def _value(self, case: Case, result: LoadResult, large_size: int) -> float:
        if case.unit == "MB/s":
            return result.rate * large_size / 1e6
        return result.rate * case.per_request

    def _measure(self, case: Case, server: HashServer, scenarios: Scenarios, tag: str) -> dict:
        result, cpu, profile = self._load(
            case, scenarios, server, f"{case.key}-{scenarios.dataset.spec.count}-w{server.workers}")
        fig = self._figure(case, self._value(case, result, scenarios.dataset.spec.large_size))
        fig["load"] = result.as_dict()
        fig["server_cpu_s"] = cpu
        if result.requests:
            fig["server_cpu_us_per_request"] = round(sum(cpu.values()) / result.requests * 1e6, 1)
        fig["problems"] = result.problems(scenarios.get(case.key).expect_success)
        if profile is not None:
            fig["profile"] = {"samples": profile["samples"], "own": profile["own"][:8]}
        say(f"bench: [{tag}] {case.label}: {fig['value']:,.1f} {case.unit}"
            + (f"  ({'; '.join(fig['problems'])})" if fig["problems"] else ""))
        return fig

    def _nginx_ceilings(self, run: dict, cases: list[Case], dataset: Dataset, scenarios: Scenarios,
                        workers: int, tag: str) -> None:
        nginx = Nginx(self.workdir, dataset.directory, dataset.spec.layout, workers)
        try:
            nginx.start()
        except RuntimeError as exc:
            run["problems"].append(f"nginx did not start, no side-by-side figures: {exc}")
            return
        with nginx:
            try:
                self._check_reads(nginx, dataset)
            except RuntimeError as exc:
                run["problems"].append(f"nginx: {exc}")
                return
            for case in cases:
                result, cpu, _ = self._load(case, scenarios, nginx)
                value = self._value(case, result, dataset.spec.large_size)
                fig = run["figures"].get(case.key)
                if fig is None:
                    continue
                fig["ceiling_value"] = value
                fig["ceiling_load"] = result.as_dict()
                fig["ceiling_cpu_s"] = cpu
                bad = result.problems(scenarios.get(case.key).expect_success)
                fig.setdefault("problems", []).extend(f"nginx: {p}" for p in bad)
                say(f"bench: [{tag}] nginx {case.label}: {value:,.1f} {case.unit}")

    def _write_cases(self, run: dict, cases: list[Case], dataset: Dataset, scenarios: Scenarios,
                     workers: int, tag: str) -> None:
        """PUT into the dataset's own directory (a realistic size), then remove what was stored."""
        for case in cases:  # prepare the pools before the server starts
            if self.options.warmup > 0:
                scenarios.get(case.key, "warmup")
            scenarios.get(case.key, "measure")
        marker = os.path.join(dataset.directory, PREFIX_MARKER)
        had_marker = os.path.exists(marker)
        try:
            with HashServer(self.workdir, dataset.directory, dataset.spec.layout, workers,
                            writable=True) as server:
                for case in cases:
                    run["figures"][case.key] = self._measure(case, server, scenarios, tag)
        finally:
            stored = scenarios.remove_put_buffers()
            if not had_marker and os.path.exists(marker):
                os.unlink(marker)
        if "put_small" in run["figures"]:
            fig = run["figures"]["put_small"]
            fig["mb_s"] = fig["value"] * dataset.spec.size / 1e6
            fig["stored"] = stored.get("small_measure", 0)
            pool = len(scenarios.put_pools.get("small_measure", []))
            if fig["stored"] >= pool:
                fig["problems"].append(f"the pool of {pool} new buffers ran out: later PUTs "
                                       "were of buffers already present")

    def _fill_ceilings(self, run: dict, ceils: dict, workers: int) -> None:
        cpus = os.cpu_count() or 1
        values = {
            "sha3": ceils["sha3_mb_s"],
            "sha3_put": ceils.get("sha3_mb_s_put"),
            "small_writes": ceils.get("small_writes_per_s"),
            "has_target": HAS_PER_WORKER_TARGET * min(workers, cpus),
        }
        for key, fig in run["figures"].items():
            case = CASES[key]
            if case.ceiling in values:
                fig["ceiling_value"] = values[case.ceiling]
            fig["ratio"] = ratio(case, fig.get("value"), fig.get("ceiling_value"))
            if case.target is not None and fig["ratio"] is not None:
                fig["met"] = fig["ratio"] >= case.target

    @staticmethod
    def _figure(case: Case, value: float | None) -> dict:
        return {"label": case.label, "unit": case.unit, "value": value,
                "ceiling": CEILING_NAMES.get(case.ceiling) if case.ceiling else None,
                "ceiling_value": None, "ratio": None, "target": case.target, "met": None,
                "problems": []}
