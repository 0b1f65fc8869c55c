"""Per-worker inotify watch of the buffer directories: which of them may have
gained or lost a file since their state was last confirmed.

Exact lookups need, per request, to know for each buffer directory whether
the index is still the truth for it.  Stat'ing every directory a request
touches (256 in the prefix layout) costs more than the lookup itself.  The
kernel queues an inotify event before the system call that created, removed
or renamed a file returns, so after draining the queue (one non-blocking read
per request) a directory with no new event since its state was confirmed is
unchanged.  A directory is *vouched for* once a stat has confirmed that its
modification time is the one the index recorded (with the watch already in
place); any event in it, or a queue overflow, withdraws that.  Where inotify
is not available (another OS, the watch limit reached) nothing is vouched for
and every lookup stats, as before: slower, equally exact.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct

import numpy as np

log = logging.getLogger("hashserver.watch")

IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len
# inotify sees only this machine's changes: directories on these file systems
# (shared with other machines) are never vouched for, so lookups stat them.
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs",
                        "glusterfs", "9p", "afs", "beegfs", "fuse")


def file_system_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the file system ``path`` is on (longest mount point), or ''."""
    path = os.path.realpath(path)
    best, best_type = "", ""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                mount_point = fields[4].replace("\\040", " ")
                fs_type = fields[fields.index("-") + 1]
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fs_type
    except (OSError, ValueError, IndexError):
        return ""
    return best_type


def is_network_file_system(path: str) -> bool:
    fs_type = file_system_type(path)
    return fs_type.split(".")[0] in NETWORK_FILE_SYSTEMS


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 (present?)
        return libc
    except (OSError, AttributeError):
        return None


class DirectoryWatch:
    def __init__(self, dirs: tuple[str, ...]):
        self.dirs = dirs
        self.vouched = np.zeros(len(dirs), np.bool_)
        self.watched = np.zeros(len(dirs), np.bool_)
        self._number = {path: n for n, path in enumerate(dirs)}
        self._wd_dir: dict[int, int] = {}  # watch of a buffer directory
        self._wd_parent: dict[int, str] = {}  # watch of a parent (sees directories come and go)
        self._libc = _libc()
        self.fd = -1
        if self._libc is None:
            return
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        self.fd = fd
        self._local = {parent: not is_network_file_system(parent)
                       for parent in {os.path.dirname(d) for d in dirs}}
        for parent in sorted(p for p, local in self._local.items() if local):
            wd = self._add(parent)
            if wd >= 0:
                self._wd_parent[wd] = parent
        for number in range(len(dirs)):
            self._watch_dir(number)

    @property
    def active(self) -> bool:
        return self.fd >= 0

    def _add(self, path: str) -> int:
        return self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)

    def _watch_dir(self, number: int) -> None:
        if not self._local[os.path.dirname(self.dirs[number])]:
            return
        wd = self._add(self.dirs[number])
        if wd >= 0:
            self._wd_dir[wd] = number
            self.watched[number] = True
        else:  # absent (its parent's watch covers it) or out of watches
            self.watched[number] = os.path.dirname(self.dirs[number]) in self._wd_parent.values() \
                and not os.path.isdir(self.dirs[number])

    def drain(self) -> None:
        """Read every queued event and withdraw the vouching of the directories they concern."""
        if self.fd < 0:
            return
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size: offset + EVENT.size + length].rstrip(b"\0")
                offset += EVENT.size + length
                self._event(wd, mask, name)

    def _event(self, wd: int, mask: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            self.vouched[:] = False
            return
        number = self._wd_dir.get(wd)
        if number is not None:
            self.vouched[number] = False
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self._wd_dir.pop(wd, None)
                self.watched[number] = False
            return
        parent = self._wd_parent.get(wd)
        if parent is not None and name:
            child = self._number.get(os.path.join(parent, os.fsdecode(name)))
            if child is not None:  # a buffer directory appeared or went
                self.vouched[child] = False
                if mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_dir(child)

    def vouch(self, numbers: np.ndarray) -> None:
        """These directories were just confirmed unchanged: trust them until an event."""
        if self.fd >= 0:
            self.vouched[numbers] = self.watched[numbers]

    def close(self) -> None:
        self.vouched[:] = False
        self.watched[:] = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
