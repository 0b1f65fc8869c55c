"""Lapsed promises: the main process removes their files and counts them in
``hashserver_promises_expired_total``; a promise whose buffer arrived is not
expired.  In process (the publisher, its expiry and a real directory) and
through HTTP against a real server of two workers.

The promise TTL is ten minutes and no setting: a promise is made to have
lapsed by dating its file back (as time would), then touching its directory,
as any other change there would, so that the index sees the new date.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hashserver.index import GenerationStore, IndexPublisher
from hashserver.layout import SearchPath, make_layout
from hashserver.metrics import ENV, Metrics, prepare_directory, remove_directory, render
from hashserver.promises import PROMISE_TTL, Promises

from conftest import ServerProcess, add_buffer, sha3, wait_for

LAPSED = PROMISE_TTL + 100  # seconds a lapsed promise's file is dated back
EXPIRED = "hashserver_promises_expired_total"


def sample(text: str, name: str) -> float:
    """The one sample of ``name`` (no labels) as prometheus_client's parser reads it."""
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name]
    assert len(values) == 1, values
    return values[0]


def expired_count(text: str) -> float:
    return sample(text, EXPIRED)


def date_back(path: Path, seconds: float = LAPSED) -> None:
    """Date a promise file back, then touch its directory: the index rescans it."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    os.utime(path.parent)


# ------------------------------------------------------------------ in process
class Sweeper:
    """A main process's index publisher over a real directory, expiring
    promises into a metrics directory of its own; refreshed by hand."""

    def __init__(self, root: Path, ttl: float = PROMISE_TTL, kind: type[Promises] = Promises):
        self.root = root
        self.metrics_dir = prepare_directory(f"{root}-metrics")
        self.search_path = SearchPath(make_layout("prefix", str(root)), [make_layout("flat", str(root / "extra"))])
        self.promises = kind(self.search_path, ttl)
        self.store = GenerationStore.create()
        self.publisher = IndexPublisher(self.search_path, self.store)
        self.publisher.build()
        metrics = Metrics(self.metrics_dir)
        metrics.fold()  # zeros, as a server's workers fold them at their start
        self.publisher.expire_promises(self.promises, metrics)

    def promise(self, data: bytes) -> tuple[str, Path]:
        checksum = sha3(data)
        self.promises.promise(checksum)
        return checksum, Path(self.search_path.promise_path(checksum))

    def sweep(self) -> int:
        """A rescan, then a sweep, as the publisher's thread does each second."""
        self.publisher.refresh()
        return self.publisher.expiry.sweep()

    def expired(self) -> float:
        return expired_count(render(self.metrics_dir).decode())

    def close(self) -> None:
        self.store.remove()
        remove_directory(self.metrics_dir)


@pytest.fixture
def make_sweeper(tmp_path, monkeypatch):
    """``make_sweeper(ttl=..., kind=...)``: a :class:`Sweeper` over a new directory
    (``PROMETHEUS_MULTIPROC_DIR`` restored afterwards)."""
    monkeypatch.delenv(ENV, raising=False)
    made = []

    def make(**kw) -> Sweeper:
        root = tmp_path / f"buffers-{len(made)}"
        root.mkdir()
        made.append(Sweeper(root, **kw))
        return made[-1]

    yield make
    for sweeper in made:
        sweeper.close()


@pytest.fixture
def sweeper(make_sweeper) -> Sweeper:
    return make_sweeper()


def test_lapsed_promise_is_removed_and_counted_a_fresh_one_stays(sweeper):
    _, lapsed = sweeper.promise(b"never written")
    _, fresh = sweeper.promise(b"being written")
    date_back(lapsed)
    assert sweeper.sweep() == 1
    assert not lapsed.exists() and fresh.exists()
    assert sweeper.sweep() == 0
    assert sweeper.expired() == 1


def test_promise_whose_buffer_arrived_is_removed_not_counted(sweeper):
    data = b"copied in by another program"
    _, path = sweeper.promise(data)
    add_buffer(sweeper.root, data)
    date_back(path)
    assert sweeper.sweep() == 0
    assert not path.exists()
    assert sweeper.expired() == 0


def test_promise_renewed_after_the_index_saw_it_lapse_stays(sweeper):
    checksum, path = sweeper.promise(b"renewed")
    date_back(path)
    sweeper.publisher.refresh()  # the index dates it as lapsed
    sweeper.promises.promise(checksum)  # renewed, not rescanned yet
    assert sweeper.publisher.expiry.sweep() == 0
    assert path.exists() and sweeper.promises.is_promised(checksum)


class RenewedWhileJudged(Promises):
    """Another worker renews the promise just after the sweep judged it lapsed,
    before the sweep moves it aside: the moment a re-stat alone cannot cover."""

    renewals = 0

    def _lapsed(self, path: str, st: os.stat_result) -> bool:
        lapsed = super()._lapsed(path, st)
        if lapsed and self.renewals == 0:
            self.renewals += 1
            self.promise(os.path.basename(path)[:64])
        return lapsed


def test_promise_renewed_during_the_sweep_goes_back(make_sweeper):
    sweeper = make_sweeper(kind=RenewedWhileJudged)
    checksum, path = sweeper.promise(b"renewed at the worst moment")
    date_back(path)
    assert sweeper.sweep() == 0
    assert sweeper.promises.renewals == 1
    assert path.exists() and sweeper.promises.is_promised(checksum)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing left aside


def test_promise_dated_ahead_lapses_a_ttl_after_first_seen(make_sweeper):
    """Another host's clock an hour ahead: the promise holds for one TTL from when the main process first saw it."""
    ttl = 1.0
    sweeper = make_sweeper(ttl=ttl)
    _, path = sweeper.promise(b"from a clock ahead")
    date_back(path, -3600)
    assert sweeper.sweep() == 0 and path.exists()
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(ttl / 4)
        sweeper.sweep()
    assert not path.exists()
    assert sweeper.expired() == 1


def test_promises_in_extra_directories_are_left_alone(sweeper):
    extra = sweeper.root / "extra"
    extra.mkdir()
    path = extra / (sha3(b"someone else's promise") + ".PROMISE")
    path.write_bytes(b"")
    sweeper.publisher.refresh()
    date_back(path)
    assert sweeper.sweep() == 0
    assert path.exists()


# ------------------------------------------------------------------ a real server
def has(server: ServerProcess, checksums: list[str]) -> list[bool]:
    response = requests.post(f"{server.url}/has", json=checksums, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def metrics_text(server: ServerProcess) -> str:
    response = requests.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    return response.text


def promise_file(directory: Path, checksum: str) -> Path:
    return directory / checksum[:2] / (checksum + ".PROMISE")


def test_lapsed_promise_expires_through_http_a_fulfilled_one_does_not(tmp_path):
    """Needs MainProcess.start to call ``publisher.expire_promises`` for a writable server."""
    directory = tmp_path / "buffers"
    directory.mkdir()
    lapsing, put, copied = b"promised, never written", b"promised, then PUT", b"promised, copied in"
    checksums = [sha3(data) for data in (lapsing, put, copied)]
    with ServerProcess.hashserver(directory, "--writable", workers=2, log_path=tmp_path / "server.log") as server:
        for checksum in checksums:
            assert requests.put(f"{server.url}/promise/{checksum}", timeout=30).status_code == 202
        assert has(server, checksums) == [True, True, True]
        assert requests.put(f"{server.url}/{checksums[1]}", data=put, timeout=30).status_code == 200
        assert not promise_file(directory, checksums[1]).exists()  # resolved by the writer
        add_buffer(directory, copied)
        for checksum in (checksums[0], checksums[2]):
            date_back(promise_file(directory, checksum))
        wait_for(lambda: not any(promise_file(directory, c).exists() for c in checksums),
                 "the lapsed promise files removed")
        # each worker folds its counts into the shared figures once a second: wait until all are in
        wait_for(lambda: expired_count(text := metrics_text(server)) > 0
                 and sample(text, "hashserver_promises_total") >= 3, "the expiry counted")
        time.sleep(1.5)  # one more fold of every worker: nothing further may arrive
        text = metrics_text(server)
        assert (sample(text, "hashserver_promises_total"), sample(text, EXPIRED)) == (3, 1)
        assert has(server, checksums) == [False, True, True]
        assert requests.get(f"{server.url}/{checksums[0]}", timeout=30).status_code == 404


def test_read_only_server_leaves_lapsed_promises(tmp_path):
    directory = tmp_path / "buffers"
    checksum = sha3(b"promised to a writer that went away")
    path = promise_file(directory, checksum)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    date_back(path)
    with ServerProcess.hashserver(directory, workers=2, log_path=tmp_path / "server.log") as server:
        assert has(server, [checksum]) == [False]
        time.sleep(3)  # three of the publisher's refreshes: a writable server's would have removed it
        assert path.exists()
        assert expired_count(metrics_text(server)) == 0
