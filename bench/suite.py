"""Runs the cases: for each directory size and worker count, the read-only
server, nginx on the same directory, then the writable server.

Everything measured lands in the dataclasses of :mod:`bench.results`;
:mod:`bench.report` only formats them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from hashserver.index import GenerationStore
from hashserver.layout import PREFIX_MARKER
from hashserver.testing import stop_all

from . import ceilings
from .cases import CASES, FRAMEWORK_CASES, LOAD_CASES, MEMORY_CASES, NGINX_CASES, UPLOAD_CASES, Case
from .dataset import Dataset, DatasetSpec, checksum_hex, ensure_dataset
from .generators import choose_generator
from .load import LoadGenerator, LoadResult, Scenario
from .lookups import lookup_scaling
from .machine import load_average, machine_info
from .procfs import cpu_seconds, mapped_files
from .profile import Profiler, ProfileSummary
from .pyclient import PythonClient
from .results import BenchDocument, Ceilings, Figure, LoadGeneratorInfo, Options, ServerRun
from .scenarios import ColdWalk, Scenarios
from .servers import NOT_REPORTED, BenchServer, FrameworkCeiling, HashServer, Nginx, UploadSink, request
from .wrk import Wrk

_STARTED = time.monotonic()
MIB = 1 << 20
SETTLE_TIMEOUT = 600.0  # the first pass measuring 1,000,000 buffers' sizes must fit
# The cold GET's warm-up: long enough to open the connections and run the code once;
# longer would only use up its list of checksums not read before.
COLD_WARMUP = 1.0


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
        self._cold: ColdWalk | None = None  # made at the first cold GET, walked again by each run

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
                seconds = dataset.read_into_page_cache()
                say(f"bench: {count:,} buffers read into the page cache ({seconds:.1f} s)")
                self.notes.append(f"{count:,} buffers: their files were read once into the page cache "
                                  f"before the cases ({seconds:.1f} s), so that no server measures the disk")
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
        if spec.count == max(o.buffers):  # several sizes: the cold GET once per worker count
            for case in (c for c in wanted if c.server == "cold"):
                self._cold_case(run, case, tag)
        write_cases = [c for c in wanted if c.server in ("write", "write_sha256")]
        if write_cases:
            self._write_ceilings(run, write_cases, dataset, scenarios)
            self._write_cases(run, [c for c in write_cases if c.server == "write"], dataset, scenarios, tag)
            self._sha256_cases(run, [c for c in write_cases if c.server == "write_sha256"], dataset,
                               scenarios, tag)
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
        if o.warmup > 0:
            warmup = scenarios.get(case.key, "warmup")
            self._generator_for(warmup).run(warmup, server.port, o.warmup)
        return self._timed_load(scenarios.get(case.key, "measure"), server, profile_name)

    def _timed_load(self, measure: Scenario, server: BenchServer, profile_name: str | None = None
                    ) -> tuple[LoadResult, dict[str, float], ProfileSummary | None]:
        """The measured load alone: its result, the server's CPU seconds by role, the profile."""
        o = self.options
        generator = self._generator_for(measure)
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
        return self._figure(case, result, cpu, profile, scenarios.get(case.key).expect_success,
                            scenarios.dataset.spec.large_size, tag)

    def _figure(self, case: Case, result: LoadResult, cpu: dict[str, float], profile: ProfileSummary | None,
                expect_success: bool, large_size: int, tag: str) -> Figure:
        """A load case's figure from its measurement (said on stderr as it comes)."""
        fig = Figure.of(case, self._value(case, result, large_size))
        fig.load = result
        fig.server_cpu_s = cpu
        if result.requests:
            fig.server_cpu_us_per_request = round(sum(cpu.values()) / result.requests * 1e6, 1)
        fig.problems = result.problems(expect_success)
        fig.profile = profile.top(8) if profile is not None else None
        say(f"bench: [{tag}] {case.label}: {fig.value:,.1f} {case.unit}"
            + (f"  ({'; '.join(fig.problems)})" if fig.problems else ""))
        return fig

    # ------------------------------------------------------------ cold GET
    def _cold_walk(self) -> ColdWalk:
        """The cold GET's shuffled list (of --cold-buffers' dataset, made if needed), from its start."""
        o = self.options
        if self._cold is None:
            spec = DatasetSpec(o.cold_buffers, o.layout, large_size=o.large_size, seed=o.seed)
            self._cold = ColdWalk(ensure_dataset(o.cache_dir, spec), self.workdir, o.connections, o.seed)
            say(f"bench: reading the {spec.count:,} files of the cold GET's dataset into the page cache")
            seconds = self._cold.dataset.read_into_page_cache()
            self.notes.append(f"GET 1 KiB, not read before: the {spec.count:,} files of its dataset were read "
                              f"once into the page cache first ({seconds:.0f} s), so that 'not read before' "
                              "means by the server and the disk is not measured")
        self._cold.restart()
        return self._cold

    def _cold_case(self, run: ServerRun, case: Case, tag: str) -> None:
        """GET 1 KiB of buffers not read before, on the cold dataset: hashserver (started
        anew), then nginx, each walking on where the previous load stopped."""
        walk = self._cold_walk()
        dataset = walk.dataset
        tag = f"{tag}, cold GET over {dataset.spec.count:,} buffers"
        walked: dict[str, list[int]] = {}
        with HashServer(self.workdir, dataset.directory, dataset.spec.layout, run.workers) as server:
            if _settle(server) is None:  # its first pass over the sizes would take a core meanwhile
                run.problems.append(f"get_cold: sizes not measured within {SETTLE_TIMEOUT:.0f} s")
            self._check_reads(server, dataset)
            result, cpu, profile = self._cold_load(
                walk, server, "hashserver", walked, f"get_cold-{dataset.spec.count}-w{run.workers}")
        fig = self._figure(case, result, cpu, profile, True, dataset.spec.large_size, tag)
        fig.dataset_buffers = dataset.spec.count
        fig.walked = walked
        run.figures[case.key] = fig
        if self.nginx:
            self._cold_nginx(run, fig, walk, tag)
        fig.problems += [f"the list of {walk.lines:,} checksums ran out during {name}: later requests "
                         "were not of buffers (shorten --duration or raise --cold-buffers)"
                         for name, (_, end) in walked.items() if end >= walk.lines]

    def _cold_load(self, walk: ColdWalk, server: BenchServer, name: str, walked: dict[str, list[int]],
                   profile_name: str | None = None
                   ) -> tuple[LoadResult, dict[str, float], ProfileSummary | None]:
        """A short warm-up and the measurement, both walking on; ``walked`` records where."""
        warmup = min(self.options.warmup, COLD_WARMUP)
        if warmup > 0:
            start = walk.cursor
            walk.advance(self.generator.run(walk.next(), server.port, warmup))
            walked[f"{name} warm-up"] = [start, walk.cursor]
        start = walk.cursor
        result, cpu, profile = self._timed_load(walk.next(), server, profile_name)
        walk.advance(result)
        walked[name] = [start, walk.cursor]
        return result, cpu, profile

    def _cold_nginx(self, run: ServerRun, fig: Figure, walk: ColdWalk, tag: str) -> None:
        """nginx on the cold dataset, on the rest of the walk: the cold GET's ceiling."""
        nginx = self._nginx_on(run, walk.dataset, " on the cold dataset")
        if nginx is None:
            return
        with nginx:
            result, cpu, _ = self._cold_load(walk, nginx, "nginx", fig.walked)
        fig.ceiling_value = self._value(CASES["get_cold"], result, walk.dataset.spec.large_size)
        fig.ceiling_load, fig.ceiling_cpu_s = result, cpu
        fig.problems += [f"nginx: {p}" for p in result.problems(True)]
        say(f"bench: [{tag}] nginx {fig.label}: {fig.ceiling_value:,.1f} {fig.unit}")

    def _nginx_ceilings(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                        scenarios: Scenarios, tag: str) -> None:
        nginx = self._nginx_on(run, dataset, ", no side-by-side figures")
        if nginx is None:
            return
        with nginx:
            self._beside(nginx, "ceiling", "nginx", run, cases, dataset, scenarios, tag)

    def _nginx_on(self, run: ServerRun, dataset: Dataset, consequence: str) -> Nginx | None:
        """nginx started on the dataset and found serving it; else None, and a problem of the run."""
        nginx = Nginx(self.workdir, dataset.directory, dataset.spec.layout, run.workers)
        try:
            nginx.start()
        except RuntimeError as exc:
            run.problems.append(f"nginx did not start{consequence}: {exc}")
            return None
        try:
            self._check_reads(nginx, dataset)
        except RuntimeError as exc:
            nginx.stop()
            run.problems.append(f"nginx{consequence}: {exc}")
            return None
        return nginx

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

    def _write_ceilings(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                        scenarios: Scenarios) -> None:
        """The PUT cases' ceilings, right before them: durable small files, each hash on one
        core, and curl -T of the large buffer into a plain file."""
        o = self.options
        keys = {c.key for c in cases}
        run.ceilings.small_writes_per_s = ceilings.small_writes_per_s(
            dataset.root, dataset.spec.size, o.sha3_seconds)
        run.ceilings.sha3_mb_s_put = ceilings.sha3_mb_per_s(o.sha3_seconds)
        if "put_large_sha256" in keys:
            run.ceilings.sha256_mb_s_put = ceilings.sha256_mb_per_s(o.sha3_seconds)
        if keys & set(UPLOAD_CASES):
            run.ceilings.upload_mb_s = self._upload_ceiling(run, scenarios)

    def _upload_ceiling(self, run: ServerRun, scenarios: Scenarios) -> float | None:
        """``curl -T`` of the large buffer (a file) into nginx's plain-file PUT sink, MB/s."""
        if not (shutil.which("curl") and shutil.which("nginx")):
            note = "curl or nginx is not installed (Debian/Ubuntu: apt-get install curl nginx): no curl -T ceiling"
            if note not in self.notes:
                self.notes.append(note)
            return None
        source = os.path.join(self.workdir, "large-upload")
        with open(source, "wb") as f:
            f.write(scenarios.large_body())
        sink = UploadSink(self.workdir)
        try:
            with sink.start():
                # Each upload is a curl process: twice the hashing ceilings' time, for a few of them.
                return ceilings.curl_upload_mb_per_s(source, sink.url("large"), 2 * self.options.sha3_seconds)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            run.problems.append(f"curl -T ceiling: {exc}")
            return None
        finally:
            os.unlink(source)
            shutil.rmtree(sink.uploads, ignore_errors=True)

    def _sha256_cases(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                      scenarios: Scenarios, tag: str) -> None:
        """Large PUTs into a server started with ``--hash-algorithm sha-256`` (what
        Seamless uses) on an empty directory beside the dataset's, on the same file system."""
        if not cases:
            return
        os.makedirs(scenarios.sha256_directory, exist_ok=True)
        for case in cases:
            scenarios.get(case.key)
        with HashServer(self.workdir, scenarios.sha256_directory, dataset.spec.layout, run.workers,
                        writable=True, options=("--hash-algorithm", "sha-256")) as server:
            for case in cases:
                run.figures[case.key] = self._measure(case, server, scenarios, tag)

    def _write_cases(self, run: ServerRun, cases: list[Case], dataset: Dataset,
                     scenarios: Scenarios, tag: str) -> None:
        """PUT into the dataset's own directory (a realistic size), then remove what was stored."""
        if not cases:
            return
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
