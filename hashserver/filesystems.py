"""Which file system a buffer directory is on, and whether other hosts share it.

A directory on a network or distributed file system (NFS, Lustre, CephFS,
GlusterFS, any FUSE file system such as a SeaweedFS mount) is seen by other
machines too, through caches this machine does not control.  Two things
follow: this machine's inotify sees none of their changes, and a file must be
published by ``rename`` there (a hard link published on one SeaweedFS mount
stays unopenable on another until it remounts; see the README, "Sharing a
directory safely").  The type comes from ``/proc/self/mountinfo``: the mount
whose mount point is the longest prefix of the directory's real path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

# Types shared between machines; "fuse" stands for every "fuse.<name>" (sshfs,
# seaweedfs, ceph-fuse, ...).  fuseblk (ntfs-3g, exfat on a local disk) is local.
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs",
                        "glusterfs", "9p", "afs", "beegfs", "fuse")

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where a file system is mounted, and its type."""

    mount_point: str
    fs_type: str

    def contains(self, path: str) -> bool:
        return path == self.mount_point or path.startswith(self.mount_point.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts listed in mountinfo ``text``, in its order (later mounts shadow earlier ones).

    A line is ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE ...``;
    malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        try:
            fs_type = fields[fields.index("-", 6) + 1]
        except (ValueError, IndexError):
            continue
        entries.append(MountEntry(_unescape(fields[4]), fs_type))
    return entries


def mount_of(path: str, entries: list[MountEntry]) -> MountEntry | None:
    """The mount ``path`` (absolute, resolved) is on: the longest mount point containing
    it, the last listed of equals (a mount over a mount point hides the one below)."""
    best: MountEntry | None = None
    for entry in entries:
        if entry.contains(path) and (best is None or len(entry.mount_point) >= len(best.mount_point)):
            best = entry
    return best


def file_system_type(path: str, mountinfo: str = MOUNTINFO) -> str:
    """The type of the file system ``path`` is on (symbolic links resolved), or '' if unknown."""
    try:
        with open(mountinfo) as f:
            text = f.read()
    except OSError:
        return ""
    entry = mount_of(os.path.realpath(path), parse_mountinfo(text))
    return entry.fs_type if entry else ""


def is_network_type(fs_type: str) -> bool:
    """Is a file system of this type shared with other machines?"""
    return fs_type.split(".")[0] in NETWORK_FILE_SYSTEMS


def is_network_file_system(path: str, mountinfo: str = MOUNTINFO) -> bool:
    """Is ``path`` on a file system other machines may change behind this one's back?"""
    return is_network_type(file_system_type(path, mountinfo))
