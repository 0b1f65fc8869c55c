"""Runs the cases: for each directory size and worker count, the read-only
server, nginx on the same directory, then the writable server.

Everything measured lands in the dataclasses of :mod:`bench.results`;
:mod:`bench.report` only formats them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from hashserver.index import GenerationStore
from hashserver.layout import PREFIX_MARKER
from hashserver.testing import stop_all

from . import ceilings
from .cases import CASES, FRAMEWORK_CASES, LOAD_CASES, MEMORY_CASES, NGINX_CASES, Case
from .dataset import Dataset, DatasetSpec, checksum_hex, ensure_dataset
from .generators import choose_generator
from .load import LoadGenerator, LoadResult, Scenario
from .lookups import lookup_scaling
from .machine import load_average, machine_info
from .procfs import cpu_seconds, mapped_files
from .profile import Profiler, ProfileSummary
from .pyclient import PythonClient
from .results import BenchDocument, Ceilings, Figure, LoadGeneratorInfo, Options, ServerRun
from .scenarios import Scenarios
from .servers import NOT_REPORTED, BenchServer, FrameworkCeiling, HashServer, Nginx, request
from .wrk import Wrk

_STARTED = time.monotonic()
MIB = 1 << 20
SETTLE_TIMEOUT = 600.0  # the first pass measuring 1,000,000 buffers' sizes must fit


def say(text: str) -> None:
    """Progress for the person waiting: stderr, so stdout stays the table."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
        self._empty_main: dict[int, tuple[float, float]] = {}  # by workers: main's anon MiB, built and settled

    # ------------------------------------------------------------ top level
    def run(self) -> BenchDocument:
        o = self.options
        doc = BenchDocument(
            started=_now(), command=["python", "-m", "bench", *sys.argv[1:]], options=o,
            machine=machine_info(), notes=self.notes,
            load_generator=LoadGeneratorInfo(self.generator.name, self.generator.describe(),
                                             o.connections))
        say(f"bench: load from {self.generator.describe()}; nginx side by side: "
            f"{'yes' if self.nginx else 'no'}")
        for note in self.notes:
            say(f"bench: note: {note}")
        if o.lookup_sizes:
            doc.lookups = lookup_scaling(o.lookup_sizes, o.lookup_rounds, o.lookup_seconds, o.seed, say)
        os.makedirs(os.path.expanduser(o.cache_dir), exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="work-", dir=os.path.expanduser(o.cache_dir))
        try:
            for count in o.buffers:
                spec = DatasetSpec(count, o.layout, large_size=o.large_size, seed=o.seed)
                dataset = ensure_dataset(o.cache_dir, spec)
                scenarios = Scenarios(dataset, self.workdir, o.connections, o.duration, o.warmup,
                                      o.large_size, o.seed)
                for workers in o.workers:
                    doc.runs.append(self.run_one(dataset, scenarios, workers))
        finally:
            stop_all()
            self._keep_logs()
            shutil.rmtree(self.workdir, ignore_errors=True)
        doc.machine.load_average_at_end = load_average()
        doc.finished = _now()
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
    def run_one(self, dataset: Dataset, scenarios: Scenarios, workers: int) -> ServerRun:
        o = self.options
        spec = dataset.spec
        tag = f"{spec.count:,} buffers, workers={workers}"
        say(f"bench: == {tag}")
        # Ceilings are measured next to the figures they bound, so that a
        # machine busy with other work depresses both alike.
        run = ServerRun(buffers=spec.count, layout=spec.layout, workers=workers,
                        buffer_size=spec.size, large_size=spec.large_size,
                        load_average_at_start=load_average(),
                        ceilings=Ceilings(sha3_mb_s=ceilings.sha3_mb_per_s(o.sha3_seconds)))
        wanted = [c for c in LOAD_CASES if c.key in o.cases]
        self._read_cases(run, [c for c in wanted if c.server == "read"], dataset, scenarios, tag)
        nginx_cases = [c for c in wanted if c.key in NGINX_CASES]
        if self.nginx and nginx_cases:
            self._nginx_ceilings(run, nginx_cases, dataset, scenarios, tag)
        framework_cases = [c for c in wanted if c.key in FRAMEWORK_CASES]
        if o.framework and framework_cases:
            self._framework_ceilings(run, framework_cases, dataset, scenarios, tag)
        write_cases = [c for c in wanted if c.server == "write"]
        if write_cases:
            run.ceilings.small_writes_per_s = ceilings.small_writes_per_s(
                dataset.root, dataset.spec.size, o.sha3_seconds)
            run.ceilings.sha3_mb_s_put = ceilings.sha3_mb_per_s(o.sha3_seconds)
            self._write_cases(run, write_cases, dataset, scenarios, tag)
        run.judge()
        return run

    def _read_cases(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                    scenarios: Scenarios, tag: str) -> None:
        """The read-only server: its startup, its memory, then the read cases."""
        ceilings.find_seconds(dataset.directory)  # the server's scan finds a warm cache too
        with HashServer(self.workdir, dataset.directory, dataset.spec.layout,
                        run.workers) as server:
            self._startup_figures(run, server, dataset)
            self._main_memory(run, server)
            run.memory["idle"] = server.memory()
            self._check_reads(server, dataset)
            if "verify_large" in self.options.cases:
                run.figures["verify_large"] = self._verify_large(server, dataset)
            for case in cases:
                run.figures[case.key] = self._measure(case, server, scenarios, tag)
            run.memory["after_load"] = server.memory()
        run.stop_s = server.stop_s

    # ------------------------------------------------------------- pieces
    def _startup_figures(self, run: ServerRun, server: HashServer, dataset: Dataset) -> None:
        """Startup time; the index build (as the server reports it in its status file)
        against ``find`` on the same, equally warm, directory (``find`` also ran just
        before the server started); and whether the server says which are its workers."""
        run.figures["startup"] = Figure.of(CASES["startup"], server.startup_s)
        if server.worker_pids() is None:
            run.problems.append(f"workers: {NOT_REPORTED} (no \"workers\" in its status file): "
                                "memory and CPU are not attributed to workers")
        built = server.index_build()
        if built is None:
            run.problems.append(f"index_build: {NOT_REPORTED} (no \"index\" with \"entries\" and "
                                "\"build_seconds\" in its status file)")
            return
        fig = Figure.of(CASES["index_build"], built[1])
        fig.indexed = built[0]
        fig.find_files, fig.ceiling_value = ceilings.find_seconds(dataset.directory)
        run.figures["index_build"] = fig

    def _main_memory(self, run: ServerRun, server: HashServer) -> None:
        """The main process's anonymous memory once the index is built, and once
        the first pass measuring sizes is done (no load case runs before: that
        pass takes a core for seconds at 1,000,000 buffers), less that of a
        server on an empty directory, against the index file's size."""
        wanted = any(key in self.options.cases for key in MEMORY_CASES)
        built = _main_anon(server)
        settled = _settle(server)
        if settled is None:
            run.problems.append(f"the index's sizes were not measured within {SETTLE_TIMEOUT:.0f} s")
        if not wanted:
            return
        empty = self._empty_baseline(run.workers)
        index_size = _main_index_size(server)
        for key, value, baseline in (("main_memory", built, empty[0]),
                                     ("main_memory_settled", settled, empty[1])):
            fig = Figure.of(CASES[key], None if value is None else value - baseline)
            fig.baseline_mib = round(baseline, 1)
            fig.ceiling_value = index_size
            run.figures[key] = fig
        say(f"bench: main process, anonymous memory: {built or 0:.1f} MiB built, {settled or 0:.1f} "
            f"MiB settled; on an empty directory {empty[0]:.1f} / {empty[1]:.1f} MiB; index file "
            f"{index_size or 0:.1f} MiB")

    def _empty_baseline(self, workers: int) -> tuple[float, float]:
        """The main process's anonymous memory (MiB) in a server on an empty
        directory: at ready, and once its (empty) sizes pass is published."""
        if workers not in self._empty_main:
            empty = tempfile.mkdtemp(prefix="empty-", dir=self.workdir)
            with HashServer(self.workdir, empty, self.options.layout, workers) as server:
                built = _main_anon(server)
                settled = _settle(server)
            self._empty_main[workers] = (built or 0.0, settled or 0.0)
        return self._empty_main[workers]

    def _check_reads(self, server: BenchServer, dataset: Dataset) -> None:
        """Before measuring anything: the server really serves this dataset correctly."""
        present = dataset.first_checksum()
        reply = request(server.port, "GET", "/" + present)
        if reply.status != 200 or checksum_hex(reply.body) != present:
            raise RuntimeError(f"{server.name} does not serve {present} correctly "
                               f"(status {reply.status}); see {server.log_path}")
        if isinstance(server, HashServer):
            body = json.dumps([present, "00" * 32]).encode()
            reply = request(server.port, "POST", "/has", body)
            if reply.status != 200 or json.loads(reply.body) != [True, False]:
                raise RuntimeError(f"/has answers {reply.status} {reply.body[:200]!r}")

    def _verify_large(self, server: HashServer, dataset: Dataset) -> Figure:
        """The first GET of the large buffer: the server hashes it before serving it."""
        started = time.perf_counter()
        reply = request(server.port, "GET", "/" + dataset.large_checksum, timeout=600)
        elapsed = time.perf_counter() - started
        fig = Figure.of(CASES["verify_large"], dataset.spec.large_size / elapsed / 1e6)
        if reply.status != 200 or len(reply.body) != dataset.spec.large_size:
            fig.problems.append(f"status {reply.status}, {len(reply.body)} bytes")
        return fig

    def _generator_for(self, scenario: Scenario) -> LoadGenerator:
        if scenario.method == "HEAD" and self.head_client is not None:
            return self.head_client
        return self.generator

    def _load(self, case: Case, scenarios: Scenarios, server: BenchServer,
              profile_name: str | None = None
              ) -> tuple[LoadResult, dict[str, float], ProfileSummary | None]:
        """Warm up, then measure: the result, the server's CPU seconds meanwhile
        (by role: main, worker, other) and, with --profile, the profile summary."""
        o = self.options
        measure = scenarios.get(case.key, "measure")
        generator = self._generator_for(measure)
        if o.warmup > 0:
            generator.run(scenarios.get(case.key, "warmup"), server.port, o.warmup)
        pids = server.pids()
        cpu_before = cpu_seconds(pids)
        recorder = self.profiler.start(server.pid, profile_name, o.duration) if (
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

    def _measure(self, case: Case, server: HashServer, scenarios: Scenarios, tag: str) -> Figure:
        result, cpu, profile = self._load(
            case, scenarios, server, f"{case.key}-{scenarios.dataset.spec.count}-w{server.workers}")
        fig = Figure.of(case, self._value(case, result, scenarios.dataset.spec.large_size))
        fig.load = result
        fig.server_cpu_s = cpu
        if result.requests:
            fig.server_cpu_us_per_request = round(sum(cpu.values()) / result.requests * 1e6, 1)
        fig.problems = result.problems(scenarios.get(case.key).expect_success)
        fig.profile = profile.top(8) if profile is not None else None
        say(f"bench: [{tag}] {case.label}: {fig.value:,.1f} {case.unit}"
            + (f"  ({'; '.join(fig.problems)})" if fig.problems else ""))
        return fig

    def _nginx_ceilings(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                        scenarios: Scenarios, tag: str) -> None:
        nginx = Nginx(self.workdir, dataset.directory, dataset.spec.layout, run.workers)
        try:
            nginx.start()
        except RuntimeError as exc:
            run.problems.append(f"nginx did not start, no side-by-side figures: {exc}")
            return
        with nginx:
            try:
                self._check_reads(nginx, dataset)
            except RuntimeError as exc:
                run.problems.append(f"nginx: {exc}")
                return
            self._beside(nginx, "ceiling", "nginx", run, cases, dataset, scenarios, tag)

    def _framework_ceilings(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                            scenarios: Scenarios, tag: str) -> None:
        """Sanic alone on the same route, a constant body of the buffers' size."""
        missing = scenarios.get("get_404").targets_file if "get_404" in FRAMEWORK_CASES else None
        server = FrameworkCeiling(self.workdir, run.workers, dataset.spec.size, missing)
        try:
            server.start()
        except RuntimeError as exc:
            run.problems.append(f"the framework ceiling (Sanic) did not start: {exc}")
            return
        with server:
            self._beside(server, "framework", "sanic-constant", run, cases, dataset, scenarios, tag)

    def _beside(self, server, field: str, name: str, run: ServerRun, cases: list[Case], dataset: Dataset,
                scenarios: Scenarios, tag: str) -> None:
        """The cases against another server (a ceiling), into each figure's
        ``<field>_value``, ``<field>_load`` and ``<field>_cpu_s``."""
        for case in cases:
            result, cpu, _ = self._load(case, scenarios, server)
            fig = run.figures.get(case.key)
            if fig is None:
                continue
            value = self._value(case, result, dataset.spec.large_size)
            setattr(fig, f"{field}_value", value)
            setattr(fig, f"{field}_load", result)
            setattr(fig, f"{field}_cpu_s", cpu)
            bad = result.problems(scenarios.get(case.key).expect_success)
            fig.problems += [f"{name}: {p}" for p in bad]
            say(f"bench: [{tag}] {name} {case.label}: {value:,.1f} {case.unit}")

    def _write_cases(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                     scenarios: Scenarios, tag: str) -> None:
        """PUT into the dataset's own directory (a realistic size), then remove what was stored."""
        for case in cases:  # prepare the pools before the server starts
            if self.options.warmup > 0:
                scenarios.get(case.key, "warmup")
            scenarios.get(case.key, "measure")
        marker = os.path.join(dataset.directory, PREFIX_MARKER)
        had_marker = os.path.exists(marker)
        try:
            with HashServer(self.workdir, dataset.directory, dataset.spec.layout, run.workers,
                            writable=True) as server:
                for case in cases:
                    run.figures[case.key] = self._measure(case, server, scenarios, tag)
        finally:
            stored = scenarios.remove_put_buffers()
            if not had_marker and os.path.exists(marker):
                os.unlink(marker)
        fig = run.figures.get("put_small")
        if fig is not None:
            fig.mb_s = fig.value * dataset.spec.size / 1e6
            fig.stored = stored.get("small_measure", 0)
            pool = len(scenarios.put_pools.get("small_measure", []))
            if fig.stored >= pool:
                fig.problems.append(f"the pool of {pool} new buffers ran out: later PUTs "
                                    "were of buffers already present")


def _main_anon(server: HashServer) -> float | None:
    """Anonymous resident memory of the server's main process, MiB."""
    for process in server.memory():
        if process.role == "main":
            return None if process.anon is None else process.anon / MIB
    return None


def _main_index_size(server: HashServer) -> float | None:
    """Size of the newest index generation the main process maps, MiB."""
    path = _newest_generation(server)[1]
    try:
        return os.path.getsize(path) / MIB if path else None
    except FileNotFoundError:  # replaced meanwhile: the bench's directory does not change
        return None


def _settle(server: HashServer) -> float | None:
    """Wait (bounded) until the main process has published the index with
    sizes (generation 2 or later); its anonymous memory then (None: not in time)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while _newest_generation(server)[0] < 2:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return _main_anon(server)


def _newest_generation(server: HashServer) -> tuple[int, str | None]:
    """The newest index generation the main process maps, and its path ((0, None): none)."""
    newest: tuple[int, str | None] = (0, None)
    for path in mapped_files(server.pid, GenerationStore.PREFIX):
        number = os.path.basename(path).removeprefix("index-")
        if number.isdigit() and int(number) > newest[0]:
            newest = (int(number), path)
    return newest
