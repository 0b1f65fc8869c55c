"""Optional py-spy profiles of the server while a case is measured (``--profile``).

A target that is missed must be explained by where the time goes, not by a
guess; a profile per case, taken under the very load that produced the
figure, is that evidence.  Stacks are kept in the collapsed ("raw") format,
which flamegraph.pl and speedscope.app turn into flame graphs, and summed up
here into the functions that take the most samples.  Sampling costs the
server some speed, so profiled runs say so.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

TOP = 15


@dataclass
class ProfileSummary:
    """Where a server spent its busy samples: the top functions, with their share."""

    samples: int
    own: list[tuple[str, float]]  # the frame running
    inclusive: list[tuple[str, float]]  # anywhere on the stack

    def top(self, n: int) -> ProfileSummary:
        return ProfileSummary(self.samples, self.own[:n], self.inclusive[:n])


@dataclass
class Recording:
    process: subprocess.Popen
    stacks: str  # collapsed stacks file


class Profiler:
    def __init__(self, directory: str):
        self.directory = directory
        # A virtual environment's scripts are not on PATH unless it is activated.
        self.exe = shutil.which("py-spy") or shutil.which(
            "py-spy", path=os.path.dirname(sys.executable))

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self, pid: int, name: str, duration: float) -> Recording:
        """Sample a server's main process ``pid`` and its workers for ``duration`` seconds."""
        os.makedirs(self.directory, exist_ok=True)
        assert self.exe is not None
        stacks = os.path.join(self.directory, f"{name}.stacks.txt")
        argv = [self.exe, "record", "--pid", str(pid), "--subprocesses",
                "--duration", str(max(1, math.ceil(duration))), "--rate", "200",
                "--nonblocking", "--format", "raw", "--output", stacks]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Recording(process, stacks)

    def finish(self, recording: Recording) -> ProfileSummary | None:
        """Wait for py-spy; the top functions by own and by inclusive samples."""
        try:
            recording.process.wait(60)
        except subprocess.TimeoutExpired:
            recording.process.terminate()
            recording.process.wait(10)
        if not os.path.exists(recording.stacks):
            return None
        summary = summarize(recording.stacks)
        with open(recording.stacks.replace(".stacks.txt", ".top.txt"), "w") as f:
            f.write(format_summary(summary))
        return summary


def _frame(frame: str) -> str:
    return frame.strip()


def summarize(stacks_file: str, top: int = TOP) -> ProfileSummary:
    """Samples per function: own (the frame running) and inclusive (anywhere on the stack).

    py-spy skips idle threads by default (a worker waiting in epoll), so the
    fractions are of the time the server was busy."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    with open(stacks_file) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(x) for x in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n

    def share(counter: Counter) -> list[tuple[str, float]]:
        return [(frame, n / total) for frame, n in counter.most_common(top)] if total else []
    return ProfileSummary(total, share(own), share(inclusive))


def format_summary(summary: ProfileSummary) -> str:
    lines = [f"{summary.samples} samples"]
    for kind in ("own", "inclusive"):
        lines.append(f"-- {kind}")
        lines += [f"{fraction:6.1%}  {frame}" for frame, fraction in getattr(summary, kind)]
    return "\n".join(lines) + "\n"
