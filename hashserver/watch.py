"""Per-worker inotify watch of the buffer directories: which of them may have
gained or lost a file since their state was last confirmed.

Exact lookups need, per request, to know for each buffer directory whether
the index is still the truth for it.  Stat'ing every directory a request
touches (256 in the prefix layout) costs more than the lookup itself.  The
kernel queues an inotify event before the system call that created, removed
or renamed a file returns, so after draining the queue (one non-blocking poll
per request) a directory with no new event since its state was confirmed is
unchanged.

A directory is *vouched for* once a stat has confirmed that its modification
time is the one the index recorded, with its watches already in place.  The
watches cover the whole path, not just the directory: inotify follows inodes,
so after ``mv DIR DIR.old; mkdir -p DIR/ab`` a watch on the old ``DIR/ab``
would keep reporting on ``DIR.old/ab``.  Each buffer directory's path is
resolved as the kernel resolves it (symbolic links included), and every
directory consulted on the way, from ``/`` down, is watched before its
entries are read.  Vouching ends at any change in the directory, at any
change of an entry on the path (a move, removal or creation of the directory
or of a parent), when a watched directory is moved, removed or unmounted,
when the kernel drops a watch, when the event queue overflows, and when
anything is mounted or unmounted (a mount over a parent changes where the
path leads without an inotify event).  The path is then resolved and watched
again at the next drain, before the stat that may vouch for it once more.

Each directory also has an *epoch*, a counter raised whenever its vouching
is withdrawn: what was learnt of a directory while it was vouched for (a
file's identity, that it holds no lock files) stays true while its epoch is
the same.  For that, the watch of a buffer directory itself also reports
changes to its files' content and attributes (``IN_MODIFY``, ``IN_ATTRIB``:
a file rewritten in place or touched is a new version of it), and the watch
may guard *sentinels*, files outside the directory whose appearance or
removal matters to it (the main directory's global lock for the prefix
layout's directories).

Where inotify is not available (another OS, the watch or instance limit
reached) nothing is vouched for and every lookup stats, as before: slower,
equally exact.  Directories on file systems shared with other machines are
never vouched for: inotify sees only this machine's changes.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .filesystems import is_network_file_system

try:
    from inotify_simple import INotify, flags
except ImportError:  # not Linux (termios, fcntl), or not installed
    INotify = None
else:
    ENTRY_EVENTS = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
    SELF_EVENTS = flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT | flags.IGNORED
    # MASK_ADD: a directory that is both on a path and a buffer directory keeps the larger mask.
    MASK = ENTRY_EVENTS | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR | flags.MASK_ADD
    OWN_MASK = MASK | flags.MODIFY | flags.ATTRIB  # a buffer directory: its files rewritten or touched too

log = logging.getLogger("hashserver.watch")

MAX_SYMLINKS = 40  # the kernel's limit (ELOOP)
# inotify sees only this machine's changes: directories on file systems shared
# with other machines (filesystems.is_network_file_system) are never vouched
# for, so lookups stat them.


def _open_inotify():
    """An inotify instance, or None where there is none (so nothing is vouched for)."""
    if INotify is None:
        return None
    try:
        return INotify(nonblocking=True)
    except (OSError, AttributeError) as error:  # instance limit; a libc without inotify
        log.warning("no inotify (%s): every lookup stats its directories", error)
        return None


def _open_mountinfo():
    """The mount table, polled for changes (POLLPRI), or None where /proc is absent."""
    try:
        return open("/proc/self/mountinfo", "rb")
    except OSError:
        return None


@dataclass
class _Watch:
    """One inotify watch, and the buffer directories (by number) that depend on it."""

    users: set[int] = field(default_factory=set)  # their path passes through this directory
    own: set[int] = field(default_factory=set)  # this directory is theirs
    entries: dict[str, set[int]] = field(default_factory=dict)  # their path continues by this name

    def forget(self, number: int) -> None:
        self.users.discard(number)
        self.own.discard(number)
        for numbers in self.entries.values():
            numbers.discard(number)


@dataclass
class _Round:
    """What one re-watching round has learnt: watches added by path, locality by device.

    A watch added earlier in the same round is still valid: any change since
    its addition is queued as an event and breaks its users at the next drain.
    """

    wds: dict[str, int] = field(default_factory=dict)
    local: dict[int, bool] = field(default_factory=dict)


class DirectoryWatch:
    """Which buffer directories are vouched for (``vouched``, by directory number).

    Use from one thread, in this order: :meth:`drain`, read ``vouched``, stat
    the others, :meth:`vouch` those found unchanged, with no other drain in
    between: ``watched`` must describe the watches that were in place at the
    time of the stats.
    """

    def __init__(self, dirs: tuple[str, ...], sentinels: Mapping[int, tuple[str, ...]] | None = None):
        self.dirs = dirs
        self.sentinels = dict(sentinels or {})  # by directory number: files outside it that matter to it
        self.vouched = np.zeros(len(dirs), np.bool_)
        self.epochs = [0] * len(dirs)  # raised at every withdrawal (see the module's docstring)
        self.watched = np.zeros(len(dirs), np.bool_)  # path watched from / down (its absence too)
        self._watches: dict[int, _Watch] = {}
        self._uses: list[set[int]] = [set() for _ in dirs]  # per directory: watches its path uses
        self._broken: set[int] = set()  # to resolve and watch again at the next drain
        self._warned = False
        self._inotify = _open_inotify()
        self._mounts = _open_mountinfo() if self._inotify is not None else None
        self._poll = select.poll()
        if self._inotify is None:
            return
        self._poll.register(self._inotify.fileno(), select.POLLIN)
        if self._mounts is not None:
            self._poll.register(self._mounts.fileno(), select.POLLPRI)
        self._rewatch(range(len(dirs)))

    @property
    def active(self) -> bool:
        return self._inotify is not None

    # ------------------------------------------------------------ events
    def drain(self) -> None:
        """Read every queued event, withdraw the vouching they concern, watch broken paths again.

        One system call (a poll of zero timeout) when nothing happened.
        """
        if self._inotify is None:
            return
        ready = self._poll.poll(0)
        if not ready:
            return
        if any(fd != self._inotify.fileno() for fd, _ in ready):  # the mount table changed
            self._break(range(len(self.dirs)))
        for event in self._inotify.read(timeout=0):
            self._event(event.wd, event.mask, event.name)
        if self._broken:
            self._rewatch(self._broken)

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & flags.Q_OVERFLOW:
            self._break(range(len(self.dirs)))
            return
        watch = self._watches.get(wd)
        if watch is None:  # a watch given up already
            return
        if mask & SELF_EVENTS:
            self._break(watch.users)
            return
        self._withdraw(watch.own)
        self._break(watch.entries.get(name, ()))

    def _withdraw(self, numbers: Iterable[int]) -> None:
        """Not vouched for, and what was learnt of them while they were is void."""
        numbers = list(numbers)
        self.vouched[numbers] = False
        epochs = self.epochs
        for number in numbers:
            epochs[number] += 1

    def _break(self, numbers: Iterable[int]) -> None:
        """These paths may lead elsewhere now: not vouched for until watched again and stat'ed."""
        numbers = list(numbers)
        self._withdraw(numbers)
        self.watched[numbers] = False
        self._broken.update(numbers)

    def vouch(self, numbers: np.ndarray) -> None:
        """These directories were just confirmed unchanged: trust them until an event."""
        if self._inotify is not None:
            self.vouched[numbers] = self.watched[numbers]

    # ------------------------------------------------------------ watches
    def _rewatch(self, numbers: Iterable[int]) -> None:
        """Resolve these directories' paths afresh and watch every directory on them."""
        this_round = _Round()
        for number in sorted(numbers):
            self._release(number)
            try:
                self.watched[number] = self._follow(number, this_round)
            except OSError as error:
                self.watched[number] = False
                self._warn(error)
        self._broken = set()
        self._drop_unused()

    def _follow(self, number: int, this_round: _Round) -> bool:
        """Watch the directory's path and its sentinels' (see :meth:`_walk`).

        True when the directory, or its absence, is now watched: any later
        change on the path is then queued as an event.  Events for the
        directory's own entries count only where the file system is local.
        """
        resolved = self._walk(number, self.dirs[number], this_round)
        if resolved is None:
            return False
        for sentinel in self.sentinels.get(number, ()):
            parent = self._walk(number, os.path.dirname(sentinel), this_round)
            if parent is None:
                return False
            if parent:
                self._use(number, parent, this_round, entry=os.path.basename(sentinel))
        if not resolved:
            return True
        if not self._is_local(resolved, this_round):
            return False
        self._inotify.add_watch(resolved, OWN_MASK)  # the same watch, its files' changes added
        self._watches[this_round.wds[resolved]].own.add(number)
        return True

    def _walk(self, number: int, path: str, this_round: _Round) -> str | None:
        """Walk the path as the kernel does, watching each directory before reading its entries.

        Returns the directory's real path; '' when it does not exist (its
        creation will be an event); None when it cannot be watched (too many
        symbolic links, a network file system on the way).
        """
        pending = [c for c in os.path.abspath(path).split("/") if c]
        current, links = "/", 0
        self._use(number, current, this_round)
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":  # from a symbolic link's target; current is a real path, already watched
                current = os.path.dirname(current)
                continue
            self._use(number, current, this_round, entry=name)
            path = os.path.join(current, name)
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return "" if self._is_local(current, this_round) else None  # its creation will be an event
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = os.readlink(path)
                pending[:0] = [c for c in target.split("/") if c]
                current = "/" if target.startswith("/") else current
            elif not stat.S_ISDIR(mode):
                return "" if self._is_local(current, this_round) else None  # a file where a directory belongs
            else:
                current = path
                self._use(number, current, this_round)
        return current

    def _use(self, number: int, path: str, this_round: _Round, entry: str | None = None) -> None:
        """Record that this directory's path passes through ``path`` (and its ``entry``)."""
        wd = this_round.wds.get(path)
        if wd is None:
            wd = this_round.wds[path] = self._inotify.add_watch(path, MASK)
        watch = self._watches.setdefault(wd, _Watch())
        watch.users.add(number)
        if entry is not None:
            watch.entries.setdefault(entry, set()).add(number)
        self._uses[number].add(wd)

    def _is_local(self, path: str, this_round: _Round) -> bool:
        device = os.stat(path).st_dev
        if device not in this_round.local:
            this_round.local[device] = not is_network_file_system(path)
        return this_round.local[device]

    def _release(self, number: int) -> None:
        for wd in self._uses[number]:
            watch = self._watches.get(wd)
            if watch is not None:
                watch.forget(number)
        self._uses[number] = set()

    def _drop_unused(self) -> None:
        """Remove watches no path uses any more (those left behind on moved directories)."""
        for wd in [wd for wd, watch in self._watches.items() if not watch.users]:
            del self._watches[wd]
            try:
                self._inotify.rm_watch(wd)
            except OSError:  # the kernel dropped it already (IN_IGNORED)
                pass

    def _warn(self, error: OSError) -> None:
        if error.errno in (errno.ENOSPC, errno.ENOMEM) and not self._warned:
            self._warned = True
            log.warning("inotify watch limit reached (fs.inotify.max_user_watches): "
                        "lookups stat the directories not watched")

    def close(self) -> None:
        self._withdraw(range(len(self.dirs)))
        self.watched[:] = False
        for resource in (self._inotify, self._mounts):
            if resource is not None:
                resource.close()
        self._inotify = self._mounts = None
