"""Who wrote a file: this host and process, as a tag, and whether that process is gone.

Lock files, temporary files and shared-memory index directories carry the
tag of the process that made them, so that a restart on the same host can
remove what a dead process left behind, at once, without waiting for a
timeout.
"""

from __future__ import annotations

import os
import socket


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def owner_tag() -> str:
    """``<host>-<pid>`` of this process (dots in the host name replaced)."""
    return f"{_host()}-{os.getpid()}"


def pid_is_dead(tag: str) -> bool:
    """True when ``tag`` names a process on this host that no longer runs."""
    host, _, pid = tag.rpartition("-")
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie is dead too (its parent may not have reaped it yet)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False
