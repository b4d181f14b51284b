"""What changed in a copy of the tree since it was last pristine: inotify, with a stat walk behind.

The copy backend keeps one copy of the merged lowers per session and puts back, after each
test, only what the test changed.  That is only as good as knowing exactly what changed, so
two sources are used:

* inotify watches on every entry of the copy (they work unprivileged, in containers too):
  each event names a path that may differ, at a cost in proportion to the changes.  Files are
  watched, not only directories, because a change can reach a file by another name: a hard
  link made in a directory the test created (not watched) or one unlinked since; a watch on
  the file's inode sees the write, and the link itself (``IN_ATTRIB``, the link count), under
  whatever name (issue 18);
* a manifest of every entry's ``lstat`` (type and mode, inode, size, mtime, ctime), compared
  with a walk of the copy where inotify cannot be trusted: no inotify (not Linux), no watch
  left (``fs.inotify.max_user_watches``), or a queue overflow.  The ctime moves on every write,
  chmod, chown, link and rename, and no process can set it back.

Renamed and newly made directories are reported as *replaced*: what is inside them is
unknown, so the diff and the reset take them whole.

Neither source can see what a process still running in the copy will change after the reset,
so :func:`processes_inside` finds such processes in ``/proc`` when a test ends: a copy one of
them holds is never reset and reused.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from pytest_overlay._holders import Holder, command_of
from pytest_overlay._inotify import (
    DIRECTORY_CHANGES,
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
)
from pytest_overlay._oscompat import O_CLOEXEC

__all__ = ["ChangeTracker", "Signature", "processes_inside", "signature"]

Signature = tuple[int, int, int, int, int]

_FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DONT_FOLLOW
# A directory that appeared whole (renamed in, or made by the test): its contents are unknown.
_NEW_DIRECTORY = IN_CREATE | IN_MOVED_TO


def signature(st: os.stat_result) -> Signature:
    """What a manifest keeps of an entry: any change to the entry changes one of these."""
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ChangeTracker:
    """The paths of one copy that may differ from its pristine state, relative to *root*."""

    def __init__(self, root: Path, *, watch: bool = True) -> None:
        self._root = root
        self.manifest: dict[str, Signature] = {}
        # Watch descriptor -> the path it was added for.  A file's watch follows its inode,
        # whatever names it gets later: an event on it marks the pristine path.
        self._watches: dict[int, str] = {}
        self._inotify: Inotify | None = None
        self.why_walk: str | None = None
        self.dirty: set[str] = set()
        self.replaced: set[str] = set()
        if not watch:
            self.why_walk = "watching turned off"
        else:
            try:
                self._inotify = Inotify()
            except OSError as exc:  # not Linux, or fs.inotify.max_user_instances reached
                self.why_walk = exc.strerror or str(exc)

    @property
    def watching(self) -> bool:
        """Whether inotify alone finds the changes (no walk of the whole copy needed)."""
        return self._inotify is not None and self.why_walk is None

    def record(self, rel: str, path: Path, st: os.stat_result, *, is_dir: bool) -> None:
        """Take the pristine copy's entry at *rel* into the manifest (and watch a directory)."""
        self.manifest[rel] = signature(st)
        if self._inotify is None or self.why_walk is not None:
            return
        try:
            mask = DIRECTORY_CHANGES if is_dir else _FILE_MASK
            self._watches[self._inotify.add(path, mask)] = rel
        except OSError as exc:
            # ENOSPC: fs.inotify.max_user_watches reached; the walk still finds everything.
            self.why_walk = str(exc)

    def collect(self) -> None:
        """Move what happened since the last call into :attr:`dirty` and :attr:`replaced`."""
        if self._inotify is not None:
            for wd, mask, name in self._inotify.read():
                self._event(wd, mask, os.fsdecode(name))
        if self.why_walk is not None:
            self._walk()

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.why_walk = "the inotify queue overflowed"
            return
        base = self._watches.get(wd)
        if mask & IN_IGNORED:
            self._watches.pop(wd, None)
            return
        if base is None:
            return
        if not name:
            # An event on the watched entry itself: a file's watch reports every write and
            # link count change, through any name; a directory's its own moves and attributes.
            self.dirty.add(base)
            return
        rel = f"{base}/{name}" if base else name
        self.dirty.add(rel)
        self.dirty.add(base)
        if mask & IN_ISDIR and mask & _NEW_DIRECTORY:
            self.replaced.add(rel)

    def _walk(self) -> None:
        """Compare the whole copy with the manifest: every entry that differs, or is gone."""
        seen: set[str] = set()
        todo = [("", self._root)]
        while todo:
            rel, directory = todo.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                self.replaced.add(rel)
                continue
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                seen.add(child)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    self.dirty.add(child)
                    continue
                if self.manifest.get(child) != signature(st):
                    self.dirty.add(child)
                    self.dirty.add(rel)
                if stat.S_ISDIR(st.st_mode) and child in self.manifest:
                    todo.append((child, Path(entry.path)))
                elif stat.S_ISDIR(st.st_mode):
                    self.replaced.add(child)
        gone = self.manifest.keys() - seen - {""}
        self.dirty |= gone
        self.dirty |= {p.rpartition("/")[0] for p in gone}
        root = os.lstat(self._root)
        if self.manifest.get("") != signature(root):
            self.dirty.add("")

    def settle(self) -> None:
        """After a reset: forget the events it caused, and trust inotify again if it can."""
        if self._inotify is not None:
            for _ in self._inotify.read():
                pass
        if self.why_walk == "the inotify queue overflowed":
            self.why_walk = None
        self.dirty.clear()
        self.replaced.clear()

    def close(self) -> None:
        """Release the inotify instance."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


class _NewPids:
    """Which processes were started since this process (pytest) was: the pids the kernel has
    handed out since, remembered from one scan to the next.

    The kernel hands out pids in increasing order and wraps around (at ``kernel.pid_max``,
    32768 on many machines) to the low ones.  Each scan reads the last pid handed out and
    takes the living pids of the cyclic interval since the previous scan's (at the first one,
    since our own pid), plus those it took before that still live.  A process older than
    pytest is never looked at, even above our pid after a wrap-around (a machine up for a few
    hours has many such: kernel threads, other users' shells), which cost a file read per
    descriptor of every one of them after every test.  Assumed: the machine starts fewer than
    ``pid_max`` processes during one test (it used to be during the whole run).
    """

    def __init__(self) -> None:
        self._owner = 0  # the process whose scans these are (a fork starts again)
        self._since = 0
        self._known: set[int] = set()

    def candidates(self, own: int, pids: list[int], last: int | None) -> set[int]:
        """The pids among *pids* (alive, read after *last*) started since *own*, and *own*."""
        if last is None:  # no ns_last_pid (very old kernel): every pid above ours
            self._owner = 0
            return {pid for pid in pids if pid >= own}
        if self._owner != own:
            self._owner, self._since, self._known = own, own, set()
        since = self._since
        if since <= last:
            fresh = {pid for pid in pids if since < pid <= last}
        else:  # wrapped around since
            fresh = {pid for pid in pids if pid > since or pid <= last}
        self._known = (self._known & set(pids)) | fresh
        self._since = last
        return self._known | {own}


_new_pids = _NewPids()


def processes_inside(root: str) -> list[Holder]:
    """The processes whose working directory, root directory, executable or an open file is
    inside the directory *root* (a real path), each with the first such path found.

    Read from ``/proc`` (Linux; elsewhere nothing is found).  This runs after every test, so
    only this process and those started after it are looked at (:class:`_NewPids`): an older
    process cannot have been started by the test.  Processes we may not inspect are passed
    over.
    """
    if sys.platform != "linux":
        return []
    own = os.getpid()
    # The last pid first: a process started after it is read shows in the next scan's interval.
    last = _last_pid()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []  # no procfs mounted here
    prefix = root.rstrip("/") + "/"
    found = []
    for pid in sorted(_new_pids.candidates(own, pids, last)):
        try:
            path = _holds(f"/proc/{pid}/", root, prefix)
            if path is not None:
                found.append(Holder(pid, command_of(pid), path))
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
    return found


def _last_pid() -> int | None:
    """The last pid the kernel handed out in this pid namespace."""
    try:
        return int(_read_proc("/proc/sys/kernel/ns_last_pid"))
    except (OSError, ValueError):
        return None


def _read_proc(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _holds(base: str, root: str, prefix: str) -> str | None:
    """The first path inside *root* that the process at *base* holds, or None."""
    for link in ("cwd", "root", "exe"):
        try:
            target = os.readlink(base + link)
        except FileNotFoundError:  # a kernel thread has no executable
            continue
        if target == root or target.startswith(prefix):
            return target
    for fd in os.listdir(base + "fd"):
        try:
            target = os.readlink(f"{base}fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(prefix) or target == root:
            return target
    return None
