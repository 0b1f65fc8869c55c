"""The machine and software a run measured, recorded beside the figures.

Ratios travel between machines, absolute figures do not: a reader needs the
CPU, the versions and how busy the machine was to judge either.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the hashserver checkout being measured, with a mark if it has changes."""
    import hashserver

    here = os.path.dirname(os.path.abspath(hashserver.__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _program_version(name: str, flag: str) -> str | None:
    """The first line a program prints about its version (some print it on stderr)."""
    exe = shutil.which(name)
    if exe is None:
        return None
    out = subprocess.run([exe, flag], capture_output=True, text=True, timeout=30, check=False)
    lines = (out.stdout or out.stderr).splitlines()
    return lines[0].strip() if lines else None


def nginx_version() -> str | None:
    version = _program_version("nginx", "-v")
    return version.removeprefix("nginx version: ") if version else None


def wrk_version() -> str | None:
    version = _program_version("wrk", "--version")
    return version.split(" Copyright")[0].strip() if version else None


@dataclass
class Machine:
    """What a reader needs to judge the figures: the CPU, the versions, how busy it was."""

    cpu_count: int | None
    cpus_usable: int | None
    cpu_model: str | None
    memory_bytes: int | None
    platform: str
    python: str
    python_implementation: str
    sanic: str | None
    numpy: str | None
    hashserver: str | None
    hashserver_commit: str | None
    nginx: str | None
    wrk: str | None
    load_average_at_start: list[float]
    load_average_at_end: list[float] | None = None


def machine_info() -> Machine:
    return Machine(
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu_model=_cpu_model(),
        memory_bytes=_memory_total(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        python_implementation=platform.python_implementation(),
        sanic=_version("sanic"),
        numpy=_version("numpy"),
        hashserver=_version("hashserver-sanic"),
        hashserver_commit=_git_commit(),
        nginx=nginx_version(),
        wrk=wrk_version(),
        load_average_at_start=load_average(),
    )
