"""Prometheus metrics (hashserver.metrics): each process's plain counts folded
into prometheus_client's multiprocess files, summed over processes that come
and go, read back with prometheus_client's own parser; and ``/metrics`` through
HTTP, of an in-process Sanic app and of a real server's two workers."""

from __future__ import annotations

import http.client
import itertools
import json
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sanic import Sanic
from sanic.response import json as json_response
from sanic.response import text

from hashserver import metrics as metrics_module
from hashserver.metrics import (
    CONTENT_TYPE_LATEST,
    ENV,
    REJECTIONS,
    Metrics,
    Totals,
    metrics_handler,
    prepare_directory,
    reap_dead_processes,
    record_response,
    remove_directory,
    render,
    stamp_request,
)
from hashserver.owner import owner_tag
from hashserver.storage import BodyTooLarge, ChecksumMismatch

from conftest import ServerProcess, add_buffer, sha3, wait_for

SPAWN = multiprocessing.get_context("spawn")  # as Sanic starts its workers
_names = itertools.count()


# ------------------------------------------------------------------ helpers
Figures = dict[tuple[str, frozenset], float]


def parse(text: str) -> Figures:
    """Every sample, by name and labels, as prometheus_client's parser reads the text."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def figure(figures: Figures, name: str, **labels: str) -> float | None:
    return figures.get((name, frozenset(labels.items())))


def scrape(directory: str) -> Figures:
    return parse(render(directory).decode())


@pytest.fixture
def directory(tmp_path, monkeypatch) -> str:
    """A prepared multiprocess directory; ``PROMETHEUS_MULTIPROC_DIR`` is restored afterwards."""
    monkeypatch.delenv(ENV, raising=False)
    path = prepare_directory(str(tmp_path / "metrics"))
    yield path
    remove_directory(path)


# ------------------------------------------------------------------ one process
def test_counts_appear_when_folded_and_once(directory):
    metrics = Metrics(directory)
    for _ in range(3):
        metrics.request("has", 200, 0.002, sent=13, received=140)
    metrics.request("get", 404, 0.0001, sent=9)
    assert figure(scrape(directory), "hashserver_requests_total", route="has", status="200") is None
    metrics.fold()
    figures = scrape(directory)
    assert figure(figures, "hashserver_requests_total", route="has", status="200") == 3
    assert figure(figures, "hashserver_requests_total", route="get", status="404") == 1
    assert figure(figures, "hashserver_sent_bytes_total", route="has") == 39
    assert figure(figures, "hashserver_received_bytes_total", route="has") == 420
    assert figure(figures, "hashserver_sent_bytes_total", route="get") == 9
    metrics.request("has", 200, 0.002)
    metrics.fold()
    metrics.fold()  # nothing new: nothing added twice
    assert figure(scrape(directory), "hashserver_requests_total", route="has", status="200") == 4


def test_histogram_reads_back_cumulative(directory):
    metrics = Metrics(directory)
    durations = (0.00005, 0.0001, 0.0003, 2.0, 1000.0)
    for seconds in durations:
        metrics.request("get", 200, seconds)
    metrics.request("get", 200, None)  # start unknown: counted, not timed
    metrics.fold()
    figures = scrape(directory)

    def bucket(le: str) -> float | None:
        return figure(figures, "hashserver_request_duration_seconds_bucket", route="get", le=le)

    assert (bucket("0.0001"), bucket("0.0005"), bucket("2.5"), bucket("300.0"), bucket("+Inf")) == (2, 3, 4, 4, 5)
    assert figure(figures, "hashserver_request_duration_seconds_count", route="get") == 5
    assert figure(figures, "hashserver_request_duration_seconds_sum", route="get") == pytest.approx(sum(durations))
    assert figure(figures, "hashserver_requests_total", route="get", status="200") == 6


def test_enumerated_series_start_at_zero(directory):
    Metrics(directory).fold()
    figures = scrape(directory)
    for reason in REJECTIONS:
        assert figure(figures, "hashserver_puts_rejected_total", reason=reason) == 0
    for name, labels in (("hashserver_puts_total", {"outcome": "stored"}), ("hashserver_lookups_total",
                         {"source": "disk"}), ("hashserver_small_buffers_total", {"source": "memory"}),
                         ("hashserver_verifications_total", {}), ("hashserver_promises_expired_total", {})):
        assert figure(figures, name, **labels) == 0, name
    assert not [key for key in figures if key[0] == "hashserver_requests_total"]


def test_recorders_reach_their_families(directory):
    metrics = Metrics(directory)
    metrics.small_buffer(True)
    metrics.small_buffer(False)
    metrics.verified(True)
    metrics.verified(False)
    metrics.put("present")
    metrics.put_failed(BodyTooLarge(10))
    metrics.put_failed(ValueError("not a refusal"))
    metrics.promised()
    metrics.promises_expired(2)
    metrics.lookups(index=5, directory=2, disk=1)
    metrics.storage_error(OSError(107, "Transport endpoint is not connected"))
    metrics.health(False)
    metrics.object_store_call("get", "ok", 0.02)
    metrics.local_tier(hit=False)
    metrics.local_tier_evicted(3)
    metrics.fold()
    figures = scrape(directory)
    assert figure(figures, "hashserver_small_buffers_total", source="memory") == 1
    assert figure(figures, "hashserver_small_buffers_total", source="disk") == 1
    assert figure(figures, "hashserver_verifications_total") == 2
    assert figure(figures, "hashserver_corruptions_total") == 1
    assert figure(figures, "hashserver_puts_total", outcome="present") == 1
    assert figure(figures, "hashserver_puts_rejected_total", reason="too-large") == 1
    assert sum(figure(figures, "hashserver_puts_rejected_total", reason=r) for r in REJECTIONS) == 1
    assert figure(figures, "hashserver_promises_total") == 1
    assert figure(figures, "hashserver_promises_expired_total") == 2
    assert [figure(figures, "hashserver_lookups_total", source=s) for s in ("index", "directory", "disk")] == [5, 2, 1]
    assert figure(figures, "hashserver_storage_errors_total", errno="ENOTCONN") == 1
    assert figure(figures, "hashserver_storage_healthy") == 0
    assert figure(figures, "hashserver_object_store_requests_total", operation="get", outcome="ok") == 1
    assert figure(figures, "hashserver_object_store_request_duration_seconds_count", operation="get") == 1
    assert figure(figures, "hashserver_local_tier_requests_total", result="miss") == 1
    assert figure(figures, "hashserver_local_tier_evictions_total") == 3


def test_requests_counted_elsewhere_are_pulled_at_each_fold(directory):
    """The hot path keeps plain running totals; each fold adds what is new."""
    metrics = Metrics(directory)
    totals = {"get": Totals("get", 200, 4, 4000, 0.0002), "head": Totals("head", 404, 1, 0, None)}
    metrics.count_elsewhere(lambda: totals.values())
    metrics.request("get", 200, 0.01, sent=10)
    metrics.fold()
    totals["get"] = Totals("get", 200, 6, 6000, 0.0008)
    metrics.fold()
    metrics.fold()
    figures = scrape(directory)
    assert figure(figures, "hashserver_requests_total", route="get", status="200") == 7
    assert figure(figures, "hashserver_requests_total", route="head", status="404") == 1
    assert figure(figures, "hashserver_sent_bytes_total", route="get") == 6010
    assert figure(figures, "hashserver_request_duration_seconds_count", route="get") == 7
    assert figure(figures, "hashserver_request_duration_seconds_sum", route="get") == pytest.approx(0.0108)
    assert figure(figures, "hashserver_request_duration_seconds_bucket", route="get", le="0.0001") == 4
    assert figure(figures, "hashserver_request_duration_seconds_bucket", route="get", le="0.0005") == 6
    assert figure(figures, "hashserver_request_duration_seconds_count", route="head") is None  # not timed


def test_two_metrics_of_one_process_add_up(directory):
    """An in-process test runs a main process's and a worker's parts in one process."""
    first, second = Metrics(directory), Metrics(directory)
    first.request("has", 200, 0.001)
    second.request("has", 200, 0.001)
    second.request("has", 200, 0.001)
    first.fold()
    second.fold()
    assert figure(scrape(directory), "hashserver_requests_total", route="has", status="200") == 3


def test_unobserved_metrics_count_nowhere(directory):
    metrics = Metrics.unobserved()
    metrics.request("get", 200, 0.001)
    metrics.fold()
    assert metrics.exposition() == b""
    assert os.listdir(directory) == []


# ------------------------------------------------------------------ processes
def _recording_process(directory: str, requests: int, generation: int, parent, graceful: bool) -> None:
    """A worker: records ``requests`` GETs and one stored PUT, sets the index's
    generation, folds, says so, then waits to be released (and closes) or killed.
    ``parent``: a pipe of its own.  A process killed while it holds a shared
    Queue's or Event's lock (a Queue's feeder thread may still hold it after
    the message went) would block the others for good."""
    metrics = Metrics.for_worker(directory)
    for _ in range(requests):
        metrics.request("get", 200, 0.001, sent=10)
    metrics.put("stored")
    metrics.index(metrics_module.IndexFacts(entries=100 + generation, generation=generation,
                                            published_at=time.time()))
    metrics.fold()
    parent.send(os.getpid())
    parent.poll(60)
    if graceful:
        metrics.close()


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "Z"


def _wait_zombie(pid: int, timeout: float = 10.0) -> None:
    """Killed but not reaped: it must count as dead all the same."""
    wait_for(lambda: _is_zombie(pid), f"process {pid} dead (a zombie)", timeout)


class MonotonicScrapes:
    """Scrapes that check that no counter ever goes down."""

    def __init__(self, directory: str):
        self.directory = directory
        self.last: Figures = {}

    def scrape(self) -> Figures:
        figures = scrape(self.directory)
        for key, value in self.last.items():
            if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                assert figures.get(key, 0) >= value, f"{key} went back from {value} to {figures.get(key)}"
        self.last = figures
        return figures


def test_processes_sum_and_totals_survive_their_death(directory):
    processes, releases = [], []

    def start(requests: int, generation: int, graceful: bool = True) -> None:
        child, release = SPAWN.Pipe()
        processes.append(SPAWN.Process(target=_recording_process, args=(directory, requests, generation, child,
                                                                         graceful)))
        releases.append(release)
        processes[-1].start()
        assert release.poll(60) and release.recv() == processes[-1].pid

    for generation, requests in enumerate((5, 7, 11), 1):  # one after the other: the last one's gauges are newest
        start(requests, generation, graceful=generation != 3)
    totals = MonotonicScrapes(directory)
    try:
        figures = totals.scrape()
        assert figure(figures, "hashserver_requests_total", route="get", status="200") == 23
        assert figure(figures, "hashserver_sent_bytes_total", route="get") == 230
        assert figure(figures, "hashserver_puts_total", outcome="stored") == 3
        assert figure(figures, "hashserver_workers") == 3
        assert figure(figures, "hashserver_index_generation") == 3
        assert figure(figures, "hashserver_index_entries") == 103

        killed = processes[2]
        os.kill(killed.pid, signal.SIGKILL)
        _wait_zombie(killed.pid)
        figures = totals.scrape()
        assert figure(figures, "hashserver_requests_total", route="get", status="200") == 23
        assert figure(figures, "hashserver_workers") == 2
        assert figure(figures, "hashserver_index_generation") == 2  # the dead one's newer figure is gone
        killed.join(10)

        for release in releases[:2]:
            release.send(b"stop")
        for process in processes[:2]:
            process.join(30)
            assert process.exitcode == 0
        figures = totals.scrape()
        assert figure(figures, "hashserver_requests_total", route="get", status="200") == 23
        assert figure(figures, "hashserver_workers") is None
        assert figure(figures, "hashserver_index_generation") is None

        start(4, 4)
        releases[-1].send(b"stop")
        processes[-1].join(30)
        figures = totals.scrape()
        assert figure(figures, "hashserver_requests_total", route="get", status="200") == 27
        assert figure(figures, "hashserver_puts_total", outcome="stored") == 4
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(10)


def test_reaping_drops_only_dead_processes(directory):
    metrics = Metrics.for_worker(directory)
    process = SPAWN.Process(target=os.getpid)
    process.start()
    process.join(30)
    dead = process.pid
    (Path(directory) / f"gauge_livesum_{dead}.db").write_bytes((Path(directory) / f"gauge_livesum_{os.getpid()}.db")
                                                               .read_bytes())
    assert figure(scrape(directory), "hashserver_workers") == 1  # the copy was reaped on reading
    assert reap_dead_processes(directory) == []
    metrics.close()
    assert figure(scrape(directory), "hashserver_workers") is None


# ------------------------------------------------------------------ the directory
def test_given_directory_is_emptied_of_figures_only(tmp_path, monkeypatch):
    inherited = tmp_path / "inherited"
    inherited.mkdir()
    monkeypatch.setenv(ENV, str(inherited))
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_12345.db").write_bytes(b"old figures")
    (given / "notes.txt").write_text("not ours")
    path = prepare_directory(str(given))
    assert path == str(given) and os.environ[ENV] == path
    assert sorted(os.listdir(given)) == ["notes.txt"]
    Metrics(path).fold()
    remove_directory(path)
    assert given.is_dir() and "notes.txt" in os.listdir(given)
    assert os.environ[ENV] == str(inherited)


def test_own_directory_is_made_and_removed_and_orphans_go(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    process = SPAWN.Process(target=os.getpid)
    process.start()
    process.join(30)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    orphan = Path(base) / f"{metrics_module.DIRECTORY_PREFIX}{owner_tag().rpartition('-')[0]}-{process.pid}-x"
    orphan.mkdir()
    try:
        path = prepare_directory(None)
        assert os.environ[ENV] == path and os.path.isdir(path)
        assert not orphan.exists()
        remove_directory(path)
        assert not os.path.exists(path) and ENV not in os.environ
    finally:
        if orphan.exists():
            orphan.rmdir()


# ------------------------------------------------------------------ /metrics in Sanic
def _sanic_app(directory: str) -> Sanic:
    """Routes named as hashserver names them, with the metrics middleware and route."""
    app = Sanic(f"metrics_{next(_names)}")
    app.ctx.metrics = Metrics(directory)

    async def get_buffer(request, checksum):
        return text("0123456789") if checksum == "present" else text("Not found", 404)

    async def has(request):
        return json_response([True])

    async def put_buffer(request, checksum):
        raise ChecksumMismatch()

    async def refused(request, exc):
        return text("Incorrect checksum", 400)

    app.add_route(get_buffer, "/<checksum>", methods=["GET", "HEAD"])
    app.add_route(put_buffer, "/<checksum>", methods=["PUT"])
    app.add_route(has, "/has", methods=["POST"])
    app.add_route(metrics_handler, "/metrics", methods=["GET"], name="metrics")
    app.exception(ChecksumMismatch)(refused)
    app.register_middleware(stamp_request, "request")
    app.register_middleware(record_response, "response")
    return app


def test_metrics_route_and_middleware_in_sanic(directory):
    from sanic_testing.reusable import ReusableClient

    client = ReusableClient(_sanic_app(directory), port=0)
    client.run()
    try:
        for _ in range(3):
            client.get("/present")
        client.get("/absent")
        client.head("/present")
        client.post("/has", content=b"[]")
        client.put("/present", content=b"wrong body")
        client.get("/nowhere/at/all")
        client.get("/metrics")
        _, response = client.get("/metrics")
    finally:
        client.stop()
    assert response.status == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    figures = parse(response.text)

    def requests(route: str, status: str) -> float | None:
        return figure(figures, "hashserver_requests_total", route=route, status=status)

    assert (requests("get", "200"), requests("get", "404"), requests("head", "200")) == (3, 1, 1)
    assert (requests("has", "200"), requests("put", "400"), requests("other", "404")) == (1, 1, 1)
    assert requests("metrics", "200") == 1  # the first; the second counts after its own answer
    assert figure(figures, "hashserver_sent_bytes_total", route="get") == 3 * 10 + len("Not found")
    assert figure(figures, "hashserver_sent_bytes_total", route="head") is None
    assert figure(figures, "hashserver_received_bytes_total", route="put") == len(b"wrong body")
    assert figure(figures, "hashserver_request_duration_seconds_count", route="put") == 1


# ------------------------------------------------------------------ a real server
def call(server: ServerProcess, method: str, path: str, body: bytes | None = None
         ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a connection of its own, so that the workers share the
    traffic; kept alive, as clients do, so that the hot path may answer it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def scrape_until(server: ServerProcess, done, timeout: float = 20.0) -> Figures:
    """/metrics, again until ``done(figures)`` (a worker folds at most a second late) or
    the time is up; returns the last figures, for the caller's exact checks."""
    deadline = time.monotonic() + timeout
    while True:
        status, headers, body = call(server, "GET", "/metrics")
        assert status == 200 and headers["content-type"] == CONTENT_TYPE_LATEST
        figures = parse(body.decode())
        if done(figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def _requests(figures: Figures, route: str, status: int) -> float | None:
    return figure(figures, "hashserver_requests_total", route=route, status=str(status))


def test_exact_counts_of_two_workers(tmp_path):
    """Needs the wiring of hashserver.metrics into the server (runtime, server, routes, storage)."""
    buffers = tmp_path / "buffers"
    present = [f"present buffer {i}".encode() * (i + 1) for i in range(4)]
    checksums = [add_buffer(buffers, data) for data in present]
    absent = [sha3(f"absent {i}".encode()) for i in range(3)]
    new = [b"a new buffer", b"another new buffer"]
    sent: dict[str, int] = {}
    received: dict[str, int] = {}

    def send(route: str, method: str, path: str, body: bytes | None, expected: int) -> None:
        status, _, answer = call(server, method, path, body)
        assert status == expected, (method, path, answer)
        sent[route] = sent.get(route, 0) + len(answer)
        received[route] = received.get(route, 0) + len(body or b"")

    with ServerProcess.hashserver(buffers, "--writable", workers=2, log_path=tmp_path / "server.log") as server:
        for i in range(7):
            send("get", "GET", f"/{checksums[i % 4]}", None, 200)
        for checksum in absent:
            send("get", "GET", f"/{checksum}", None, 404)
        for checksum in checksums[:2]:
            send("head", "HEAD", f"/{checksum}", None, 200)
        for data in new:
            send("put", "PUT", f"/{sha3(data)}", data, 200)
        send("put", "PUT", f"/{sha3(b'what was announced')}", b"something else", 400)
        for _ in range(4):
            send("has", "POST", "/has", json.dumps([checksums[0], absent[0]]).encode(), 200)
        send("promise", "PUT", f"/promise/{sha3(b'promised')}", None, 202)

        figures = scrape_until(server, lambda f: (_requests(f, "get", 200), _requests(f, "promise", 202),
                                                  figure(f, "hashserver_index_entries")) == (7, 1, 7))
    expected = {("get", 200): 7, ("get", 404): 3, ("head", 200): 2, ("put", 200): 2, ("put", 400): 1,
                ("has", 200): 4, ("promise", 202): 1}
    for (route, status), count in expected.items():
        assert _requests(figures, route, status) == count, (route, status)
    for route, count in {"get": 10, "head": 2, "put": 3, "has": 4, "promise": 1}.items():
        assert figure(figures, "hashserver_request_duration_seconds_count", route=route) == count, route
    for route in ("get", "has", "put"):
        assert figure(figures, "hashserver_sent_bytes_total", route=route) == sent[route], route
    for route in ("put", "has"):
        assert figure(figures, "hashserver_received_bytes_total", route=route) == received[route], route
    assert figure(figures, "hashserver_sent_bytes_total", route="head") in (None, 0)

    assert figure(figures, "hashserver_puts_total", outcome="stored") == 2
    assert figure(figures, "hashserver_puts_total", outcome="present") == 0
    assert figure(figures, "hashserver_puts_rejected_total", reason="checksum") == 1
    assert sum(figure(figures, "hashserver_puts_rejected_total", reason=r) for r in REJECTIONS) == 1
    assert figure(figures, "hashserver_promises_total") == 1
    assert figure(figures, "hashserver_promises_expired_total") == 0
    # Each GET or HEAD of a present (small) buffer: from a worker's memory, or read from disk and hashed.
    memory = figure(figures, "hashserver_small_buffers_total", source="memory")
    disk = figure(figures, "hashserver_small_buffers_total", source="disk")
    assert memory + disk == 9 and disk >= 1
    assert figure(figures, "hashserver_verifications_total") == disk
    assert figure(figures, "hashserver_corruptions_total") == 0
    assert sum(figure(figures, "hashserver_lookups_total", source=s) for s in ("index", "directory", "disk")) >= 8
    assert figure(figures, "hashserver_workers") == 2
    assert figure(figures, "hashserver_index_entries") == 7  # 4 present, 2 stored, 1 promise
    assert figure(figures, "hashserver_index_generation") >= 1
    assert figure(figures, "hashserver_index_age_seconds") >= 0


def test_worker_killed_totals_stay_live_gauges_go(tmp_path):
    """Needs the wiring of hashserver.metrics into the server (runtime, server, routes, storage)."""
    buffers = tmp_path / "buffers"
    checksum = add_buffer(buffers, b"a present buffer")
    with ServerProcess.hashserver(buffers, workers=2, log_path=tmp_path / "server.log") as server:
        for _ in range(10):
            assert call(server, "GET", f"/{checksum}")[0] == 200
        before = scrape_until(server, lambda f: _requests(f, "get", 200) == 10)
        assert (_requests(before, "get", 200), figure(before, "hashserver_workers")) == (10, 2)

        os.kill(server.worker_pids()[0], signal.SIGKILL)
        after = scrape_until(server, lambda f: figure(f, "hashserver_workers") == 1)
        assert figure(after, "hashserver_workers") == 1
        for key, value in before.items():
            if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                assert after.get(key, 0) >= value, key
        assert _requests(after, "get", 200) == 10

        for _ in range(3):
            assert call(server, "GET", f"/{checksum}")[0] == 200
        later = scrape_until(server, lambda f: _requests(f, "get", 200) == 13)
        assert _requests(later, "get", 200) == 13
