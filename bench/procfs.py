"""Resident memory and CPU time of a server's processes, read from /proc.

RSS counts every page a process maps, shared or not, so with four workers
mapping the same index file RSS shows the index four times.  PSS splits each
shared page between the processes that map it, and USS counts only private
pages: together they show whether the index is paid once or once per worker,
which is why all three are reported.

CPU time per request says whether a server is limited by its own work or by
something else (the load generator, the disk) on the same machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str  # main, worker, or the helper it is (resource tracker, sync manager)
    rss: int  # bytes
    pss: int | None  # bytes; None where smaps_rollup is unavailable
    uss: int | None
    index_rss: int | None = None  # of the mapped index file(s), if any
    index_pss: int | None = None
    anon: int | None = None  # anonymous resident memory (heap, stacks): what the process itself holds
    index_size: int | None = None  # size of the mapped index file(s)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads' children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def _role(pid: int, main: int, workers: set[int] | None) -> str:
    """``workers`` None: the server did not say which children are its workers."""
    if pid == main:
        return "main"
    if workers is not None and pid in workers:
        return "worker"
    cmdline = _cmdline(pid)
    if "resource_tracker" in cmdline:
        return "resource-tracker"
    if "spawn_main" in cmdline:
        # Sanic's multiprocessing Manager for shared_ctx, or a worker if they are unknown.
        return "sync-manager" if workers is not None else "unknown"
    return "helper"


def _rss(pid: int) -> tuple[int, int | None]:
    """Resident memory, and the anonymous part of it (None where not reported)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                fields[line.split(":")[0]] = int(line.split()[1]) * 1024
    return fields.get("VmRSS", 0), fields.get("RssAnon")


def _rollup(pid: int) -> tuple[int | None, int | None]:
    """PSS and USS (private clean + private dirty) in bytes."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0].endswith(":"):
                    fields[parts[0][:-1]] = int(parts[1]) * 1024
    except (FileNotFoundError, PermissionError):
        return None, None
    if "Pss" not in fields:
        return None, None
    return fields["Pss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def mapping_memory(pid: int, needle: str) -> tuple[int, int, int] | None:
    """RSS, PSS and size of the file mappings whose path contains ``needle``
    (None: no such mapping).

    Shows directly what a shared file (the index) costs each process."""
    totals = {"Rss:": 0, "Pss:": 0, "Size:": 0}
    found = inside = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(maxsplit=1)[0]
                if not first.endswith(":"):  # a mapping's header line: "start-end perms ... path"
                    inside = needle in line
                    found = found or inside
                elif inside and first in totals:
                    totals[first] += int(line.split()[1]) * 1024
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    return (totals["Rss:"], totals["Pss:"], totals["Size:"]) if found else None


def mapped_files(pid: int, needle: str) -> list[str]:
    """Paths of the files ``pid`` maps whose path contains ``needle``."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return sorted({line.split(maxsplit=5)[5].strip() for line in f
                           if needle in line and len(line.split(maxsplit=5)) == 6})
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return []


def measure_tree(main: int, workers: set[int] | None,
                 mapped: str | None = None) -> list[ProcessMemory]:
    """Memory of ``main`` and its children (one level: Sanic workers are direct children),
    with the share of file mappings whose path contains ``mapped``."""
    result = []
    for pid in tree(main):
        try:
            rss, anon = _rss(pid)
            pss, uss = _rollup(pid)
            index = mapping_memory(pid, mapped) if mapped else None
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        index_rss, index_pss, index_size = index or (None, None, None)
        result.append(ProcessMemory(pid, _role(pid, main, workers), rss, pss, uss,
                                    index_rss, index_pss, anon, index_size))
    return result


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time consumed so far by each of these processes (exited ones: absent)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    return used


def tree(main: int) -> list[int]:
    """``main`` and its direct children."""
    return [main, *children(main)]
