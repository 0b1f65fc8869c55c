"""Small verified buffers put into a directory by the local tier (hashserver.smallfiles),
and the one-step rename that publishes files (hashserver.files.rename_no_replace)."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from hashserver import smallfiles
from hashserver.files import rename_no_replace
from hashserver.smallfiles import SmallFiles
from hashserver.writer import publish_file

from conftest import leftovers


def names(directory) -> list[str]:
    return sorted(p for _, _, files in os.walk(directory) for p in files)


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


@pytest.mark.parametrize("by_rename", [False, True])
def test_writes_at_once_go_in_batches_and_a_failure_is_its_writers_alone(tmp_path, monkeypatch, by_rename):
    monkeypatch.setattr(smallfiles, "BATCH", 4)
    files = SmallFiles(by_rename=by_rename)
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
    assert leftovers(tmp_path) == [str(tmp_path / "blocked")]


def test_an_unexpected_error_reaches_each_writer_of_its_batch_and_the_next_batch_goes_on(tmp_path, monkeypatch):
    files = SmallFiles()
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
