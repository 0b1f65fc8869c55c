"""The inotify watch that lets lookups skip a stat: when it vouches, and when it stops.

In-process tests drive a real inotify instance on real directories, the way
the store does (drain, stat what is not vouched for, vouch); the last test
runs a real server and checks the HTTP answers right after the directory was
moved away.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from test_index import age_directories

from hashserver import watch
from hashserver.layout import PrefixLayout
from hashserver.watch import DirectoryWatch

from conftest import add_buffer

PREFIXES = ("ab", "cd", "ef")


@pytest.fixture
def watching():
    """``watching(dirs)``: a DirectoryWatch, closed at the end of the test."""
    made: list[DirectoryWatch] = []

    def make(dirs) -> DirectoryWatch:
        made.append(DirectoryWatch(tuple(str(d) for d in dirs)))
        return made[-1]

    yield make
    for w in made:
        w.close()


def make_dirs(root, prefixes=PREFIXES) -> list:
    dirs = [root / p for p in prefixes]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def confirm(w: DirectoryWatch) -> np.ndarray:
    """What the store does per lookup: drain, then vouch for every directory it stat'ed unchanged."""
    w.drain()
    w.vouch(np.arange(len(w.dirs)))
    return w.vouched.copy()


def vouched_after_drain(w: DirectoryWatch) -> list[bool]:
    w.drain()
    return w.vouched.tolist()


def test_the_move_of_the_root_from_the_issue(tmp_path, watching):
    """``mv DIR DIR.old; mkdir -p DIR/ab``: nothing under the old inodes stays vouched for."""
    root = tmp_path / "buffers"
    dirs = PrefixLayout(str(root)).dirs
    for d in dirs:
        os.makedirs(d)
    w = watching(dirs)
    assert w.active
    assert confirm(w).all()
    os.rename(root, tmp_path / "buffers.old")
    os.makedirs(root / "ab")
    assert not any(vouched_after_drain(w))


def test_vouching_comes_back_on_the_new_path(tmp_path, watching):
    root = tmp_path / "buffers"
    w = watching(make_dirs(root))
    confirm(w)
    os.rename(root, tmp_path / "buffers.old")
    os.makedirs(root / "ab")
    assert confirm(w).all()  # "ab" watched, "cd" and "ef" watched as absent
    (tmp_path / "buffers.old" / "ab" / "old file").touch()
    assert vouched_after_drain(w) == [True, True, True]  # the old directory no longer counts
    (root / "ab" / "new file").touch()
    assert vouched_after_drain(w) == [False, True, True]
    (root / "cd").mkdir()
    assert vouched_after_drain(w) == [False, False, True]


def test_an_absent_directory_made_after_the_drain(tmp_path, watching):
    """The path is watched again during the drain, before the stat: a directory
    made between that stat and the next lookup withdraws the vouching."""
    root = tmp_path / "buffers"
    w = watching(make_dirs(root))
    confirm(w)
    os.rename(root, tmp_path / "buffers.old")
    assert confirm(w).all()  # vouched for as absent, the parent watched
    os.makedirs(root / "ab")
    assert not any(vouched_after_drain(w))  # every path passes through the new root
    assert confirm(w).all()
    os.makedirs(root / "cd")
    assert vouched_after_drain(w) == [True, False, True]


def test_an_event_between_the_stat_and_the_vouch(tmp_path, watching):
    """A move that happens after the stat but before vouch() is seen by the next drain."""
    root = tmp_path / "buffers"
    w = watching(make_dirs(root))
    w.drain()
    os.rename(root, tmp_path / "buffers.old")  # after the "stat"
    w.vouch(np.arange(3))
    assert not any(vouched_after_drain(w))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_move_of_any_parent(tmp_path, watching, depth):
    top = tmp_path / "a"
    root = top / "b" / "c" / "buffers"
    w = watching(make_dirs(root))
    assert confirm(w).all()
    moved = root.parents[depth - 1]
    os.rename(moved, moved.with_name(moved.name + ".old"))
    moved.mkdir()
    assert not any(vouched_after_drain(w))


def test_the_removal_and_recreation_of_a_directory(tmp_path, watching):
    root = tmp_path / "buffers"
    dirs = make_dirs(root)
    (dirs[0] / "file").touch()
    w = watching(dirs)
    assert confirm(w).all()
    shutil.rmtree(dirs[0])
    dirs[0].mkdir()
    assert vouched_after_drain(w) == [False, True, True]
    assert confirm(w).all()
    (dirs[0] / "file").touch()  # the watch is on the new directory
    assert vouched_after_drain(w) == [False, True, True]


def test_file_changes_withdraw_only_their_directory(tmp_path, watching):
    dirs = make_dirs(tmp_path / "buffers")
    w = watching(dirs)
    confirm(w)
    (dirs[0] / "x").touch()
    assert vouched_after_drain(w) == [False, True, True]
    confirm(w)
    (dirs[0] / "x").rename(dirs[1] / "x")
    assert vouched_after_drain(w) == [False, False, True]
    confirm(w)
    (dirs[1] / "x").unlink()
    assert vouched_after_drain(w) == [True, False, True]
    confirm(w)
    (dirs[2] / "x").write_bytes(b"")
    os.link(dirs[2] / "x", dirs[2] / "y")
    (dirs[0] / "x").touch()
    assert vouched_after_drain(w) == [False, True, False]


def test_epochs_rise_at_every_withdrawal_and_only_there(tmp_path, watching):
    """What was learnt under an epoch holds while it is the same: any change to a
    directory's entries, or to its files' content or times, raises it."""
    dirs = make_dirs(tmp_path / "buffers")
    (dirs[0] / "file").write_bytes(b"before")
    w = watching(dirs)
    confirm(w)
    epochs = list(w.epochs)
    (dirs[1] / "elsewhere").touch()
    w.drain()
    assert w.epochs[0] == epochs[0] and w.epochs[1] > epochs[1]
    for change in (lambda f: f.open("r+b").write(b"rewritten"),  # in place: no entry event
                   lambda f: os.utime(f, (0, 0)),
                   lambda f: os.truncate(f, 1)):
        confirm(w)
        before = w.epochs[0]
        change(dirs[0] / "file")
        assert vouched_after_drain(w)[0] is False and w.epochs[0] > before
    confirm(w)
    before = list(w.epochs)
    (dirs[0] / "file").read_bytes()  # reading changes nothing
    assert vouched_after_drain(w) == [True, True, True] and w.epochs == before


def test_sentinels_outside_the_directory(tmp_path, watching):
    """The prefix layout's global lock, DIR/.LOCK, is outside its directories: its
    creation or removal withdraws them; other names in DIR do not."""
    root = tmp_path / "buffers"
    dirs = make_dirs(root)
    made = DirectoryWatch(tuple(str(d) for d in dirs), {0: (str(root / ".LOCK"),), 1: (str(root / ".LOCK"),)})
    try:
        assert confirm(made).all()
        (root / "unrelated").touch()
        made.drain()
        assert made.vouched.tolist() == [True, True, True]
        before = list(made.epochs)
        (root / ".LOCK").touch()
        made.drain()
        assert made.vouched.tolist() == [False, False, True]
        assert made.epochs[0] > before[0] and made.epochs[1] > before[1] and made.epochs[2] == before[2]
        assert confirm(made).all()
        (root / ".LOCK").unlink()
        made.drain()
        assert made.vouched.tolist() == [False, False, True]
    finally:
        made.close()


def test_a_parent_replaced_by_a_symbolic_link(tmp_path, watching):
    """The path is resolved as the kernel resolves it, through links and their targets."""
    real, other = tmp_path / "real", tmp_path / "other"
    make_dirs(real / "buffers")
    make_dirs(other / "buffers")
    link = tmp_path / "link"
    link.symlink_to("real")
    w = watching([link / "buffers" / p for p in PREFIXES])
    assert confirm(w).all()
    link.unlink()
    link.symlink_to("other")
    assert not any(vouched_after_drain(w))
    assert confirm(w).all()
    (real / "buffers" / "ab" / "x").touch()
    assert vouched_after_drain(w) == [True, True, True]
    os.rename(other, tmp_path / "other.old")  # the link's target moved
    assert not any(vouched_after_drain(w))


def test_queue_overflow_withdraws_everything(tmp_path, watching):
    dirs = make_dirs(tmp_path / "buffers")
    w = watching(dirs)
    assert confirm(w).all()
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    (dirs[0] / "a").touch()
    for _ in range(limit // 4 + 1):  # two events per rename, never merged: the queue overflows
        os.rename(dirs[0] / "a", dirs[0] / "b")
        os.rename(dirs[0] / "b", dirs[0] / "a")
    assert not any(vouched_after_drain(w))
    assert confirm(w).all()


MOUNT_SCRIPT = """
import os, subprocess, sys
import numpy as np
from hashserver.watch import DirectoryWatch
base = sys.argv[1]
w = DirectoryWatch((os.path.join(base, "buffers", "ab"),))
def step(label):
    w.drain()
    print(label, bool(w.vouched[0]))
    w.vouch(np.arange(1))
step("before")
step("confirmed")
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", base], check=True)
step("mounted over")
os.makedirs(os.path.join(base, "buffers", "ab"))
step("made on the mount")
subprocess.run(["umount", base], check=True)
step("unmounted")
"""


def test_mounts_over_a_parent_and_unmounts(tmp_path):
    """A mount changes where the path leads without an inotify event: the mount table is watched.

    Run in a private mount namespace (unshare), so no mount is seen outside.
    """
    (tmp_path / "buffers" / "ab").mkdir(parents=True)
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    probe = subprocess.run([*unshare, "true"], check=False, capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    out = subprocess.run([*unshare, sys.executable, "-c", MOUNT_SCRIPT, str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:5] == [
        "before False", "confirmed True", "mounted over False", "made on the mount False", "unmounted False",
    ]


def test_no_inotify_vouches_for_nothing(tmp_path, watching, monkeypatch):
    """Where inotify_simple cannot be imported (another OS), every lookup stats."""
    monkeypatch.setattr(watch, "INotify", None)
    w = watching(make_dirs(tmp_path / "buffers"))
    assert not w.active
    assert not confirm(w).any()


def test_no_inotify_instance_vouches_for_nothing(tmp_path, watching, monkeypatch):
    """inotify_init1 failing (the per-user instance limit) leaves every lookup to stat."""
    def refuse(**_):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(watch, "INotify", refuse)
    w = watching(make_dirs(tmp_path / "buffers"))
    assert not w.active
    assert not confirm(w).any()


def test_watch_limit_leaves_that_directory_to_stat(tmp_path, watching, monkeypatch):
    """At the watch limit (ENOSPC) the directories left unwatched are never vouched for."""
    class Limited(watch.INotify):
        def add_watch(self, path, mask):
            if os.path.basename(path) == "cd":
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().add_watch(path, mask)

    monkeypatch.setattr(watch, "INotify", Limited)
    w = watching(make_dirs(tmp_path / "buffers"))
    assert w.active
    assert confirm(w).tolist() == [True, False, True]


def test_network_file_system_never_vouched_for(tmp_path, watching, monkeypatch):
    dirs = make_dirs(tmp_path / "buffers")
    monkeypatch.setattr(watch, "is_network_file_system", lambda path: True)
    w = watching(dirs)
    assert not confirm(w).any()


def test_server_answers_false_right_after_the_move(serve, tmp_path):
    """The issue's sequence against a real server: the first /has after
    ``mv DIR DIR.old; mkdir -p DIR/<prefix>`` answers false for every buffer."""
    directory = tmp_path / "buffers"
    checksums = [add_buffer(directory, f"buffer {i}".encode()) for i in range(40)]
    age_directories(directory)  # settled: lookups go through the index and the watch
    server = serve(directory, workers=1)
    with requests.Session() as session:
        for _ in range(3):
            answer = session.post(f"{server.url}/has", json=checksums, timeout=30).json()
            assert answer == [True] * len(checksums)
        os.rename(directory, tmp_path / "buffers.old")
        (directory / checksums[0][:2]).mkdir(parents=True)
        answer = session.post(f"{server.url}/has", json=checksums, timeout=30).json()
        assert answer == [False] * len(checksums)
        fresh = add_buffer(directory, b"written after the move")
        answer = session.post(f"{server.url}/has", json=[fresh, *checksums], timeout=30).json()
        assert answer == [True] + [False] * len(checksums)
