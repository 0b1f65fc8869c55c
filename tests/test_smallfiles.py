"""Small verified buffers put into a directory by the local tier (hashserver.smallfiles),
and the one-step rename that publishes files (hashserver.files.rename_no_replace)."""

from __future__ import annotations

import asyncio
import os
import stat
import threading

import pytest

from hashserver import smallfiles
from hashserver.files import rename_no_replace
from hashserver.smallfiles import SmallFiles
from hashserver.writer import publish_file

from conftest import leftovers


def names(directory) -> list[str]:
    return sorted(p for _, _, files in os.walk(directory) for p in files)


def thread_takes_over(monkeypatch, files: SmallFiles, directory) -> None:
    """Make every write count as slow, and write one: the thread writes from then on."""
    monkeypatch.setattr(smallfiles, "SLOW_WRITE", -1.0)

    async def one():
        return await files.write(str(directory / "first"), b"first")

    assert asyncio.run(one()) is True


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_file_is_written_once_whole_readable_by_all(tmp_path, umask):
    final = tmp_path / "ab" / ("ab" + "0" * 62)  # its directory does not exist yet
    old = os.umask(umask)
    try:
        files = SmallFiles()  # the umask is the process's, read once
        assert asyncio.run(files.write(str(final), b"first")) is True
        assert asyncio.run(files.write(str(final), b"second")) is False  # there already: kept as it was
    finally:
        os.umask(old)
    assert final.read_bytes() == b"first"
    assert stat.S_IMODE(final.stat().st_mode) == 0o444  # whatever the umask
    assert names(tmp_path) == [final.name]  # no temporary file left


def test_quick_writes_are_done_on_the_loop_a_slow_one_sends_the_next_to_the_thread_for_a_spell(
        tmp_path, monkeypatch):
    monkeypatch.setattr(smallfiles, "THREAD_SPELL", 0.2)
    files = SmallFiles()
    threads: list[str] = []
    write_now = files.write_now
    monkeypatch.setattr(files, "write_now", lambda final, content: (
        threads.append(threading.current_thread().name), write_now(final, content))[1])

    async def on_the_loop(name: str) -> asyncio.Future:
        written = files.submit(str(tmp_path / name), name.encode())
        assert not written.done()  # not before the step that asked is over
        await asyncio.sleep(0)
        assert written.done() and written.result() is True  # the loop's next round wrote it
        return written

    async def scenario():
        await on_the_loop("a")
        monkeypatch.setattr(smallfiles, "SLOW_WRITE", -1.0)  # every write counts as slow
        await on_the_loop("b")  # on the loop still, and slow
        by_thread = files.submit(str(tmp_path / "c"), b"c")
        await asyncio.sleep(0)
        assert not by_thread.done()
        assert await by_thread is True
        monkeypatch.setattr(smallfiles, "SLOW_WRITE", 60.0)  # quick again
        await asyncio.sleep(0.3)  # the spell is over
        await on_the_loop("d")

    asyncio.run(scenario())
    main = threading.current_thread().name
    assert threads[:2] == [main, main] and threads[2] != main and threads[3] == main
    assert [(tmp_path / n).read_bytes() for n in "abcd"] == [b"a", b"b", b"c", b"d"]


def test_writes_waiting_for_the_loop_go_to_the_thread_once_one_was_slow(tmp_path, monkeypatch):
    monkeypatch.setattr(smallfiles, "SLOW_WRITE", -1.0)  # every write counts as slow
    files = SmallFiles()
    threads: list[str] = []
    write_now = files.write_now
    monkeypatch.setattr(files, "write_now", lambda final, content: (
        threads.append(threading.current_thread().name), write_now(final, content))[1])

    async def scenario():
        written = [files.submit(str(tmp_path / f"f{i}"), b"x") for i in range(5)]  # all for the loop
        return await asyncio.gather(*written)

    assert asyncio.run(scenario()) == [True] * 5
    main = threading.current_thread().name
    assert threads[0] == main and len(threads) == 5 and main not in threads[1:]


@pytest.mark.parametrize("by_rename", [False, True])
def test_the_threads_writes_go_in_batches_and_a_failure_is_its_writers_alone(tmp_path, monkeypatch, by_rename):
    monkeypatch.setattr(smallfiles, "BATCH", 4)
    files = SmallFiles(by_rename=by_rename)
    thread_takes_over(monkeypatch, files, tmp_path)
    batches: list[int] = []
    write_batch = files._write_batch
    monkeypatch.setattr(files, "_write_batch", lambda batch: batches.append(len(batch)) or write_batch(batch))
    (tmp_path / "blocked").write_bytes(b"a file where a directory belongs")
    wanted = {str(tmp_path / f"d{i % 3}" / f"{i:064x}"): i.to_bytes(4, "big") for i in range(20)}

    async def scenario():
        failing = files.write(str(tmp_path / "blocked" / ("0" * 64)), b"x")
        return await asyncio.gather(failing, *(files.write(p, c) for p, c in wanted.items()),
                                    return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[0], NotADirectoryError)
    assert outcomes[1:] == [True] * len(wanted)
    for path, content in wanted.items():
        assert open(path, "rb").read() == content
    assert max(batches) == 4 and sum(batches) == 21 and len(batches) >= 6  # one thread's batches, in turn
    assert sorted(leftovers(tmp_path)) == [str(tmp_path / "blocked"), str(tmp_path / "first")]


@pytest.mark.parametrize("by_thread", [False, True])
def test_an_unexpected_error_reaches_its_writer_and_the_next_write_goes_on(tmp_path, monkeypatch, by_thread):
    files = SmallFiles()
    if by_thread:
        thread_takes_over(monkeypatch, files, tmp_path)
    write_now = files.write_now

    def failing(final: str, content: bytes) -> bool:
        return 1 / 0 if content == b"bad" else write_now(final, content)

    monkeypatch.setattr(files, "write_now", failing)

    async def scenario():
        first = await asyncio.gather(files.write(str(tmp_path / "a"), b"bad"), return_exceptions=True)
        return first, await files.write(str(tmp_path / "b"), b"good")

    (failed,), written = asyncio.run(scenario())
    assert isinstance(failed, ZeroDivisionError) and written is True
    assert (tmp_path / "b").read_bytes() == b"good"


def test_rename_no_replace(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    assert rename_no_replace(str(src), str(dst)) is True
    assert dst.read_bytes() == b"new" and not src.exists()
    src.write_bytes(b"other")
    assert rename_no_replace(str(src), str(dst)) is False  # taken: neither file changes
    assert dst.read_bytes() == b"new" and src.read_bytes() == b"other"
    with pytest.raises(FileNotFoundError):
        rename_no_replace(str(tmp_path / "missing"), str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("by_rename", [False, True])
def test_publish_file_never_replaces(tmp_path, by_rename):
    tmp, final = tmp_path / ".tmp", tmp_path / "final"
    tmp.write_bytes(b"one")
    assert publish_file(str(tmp), str(final), by_rename) is True
    tmp.write_bytes(b"two")
    assert publish_file(str(tmp), str(final), by_rename) is False
    assert final.read_bytes() == b"one"
