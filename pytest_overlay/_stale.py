"""Remove what a killed run left behind: FUSE mounts under pytest's temporary directories, and
the private scratch directories of ``--overlay-hermetic``.

A FUSE server unmounts when the pytest process it serves dies (:mod:`._fuse.server`), and an
ordinary user's mount has ``auto_unmount`` besides; a mount outlives both only if the server
itself was killed with SIGKILL together with ``fusermount3``'s watcher (an OOM killer, a
``kill -9`` of the whole session).  Such a mount answers "Transport endpoint is not connected"
to its owner and "Permission denied" even to root, so pytest cannot remove the old basetemp
that holds it.  The mount's source names the process it served (``pytest-overlay:PID``); a
run that starts using the plugin unmounts every such mount under pytest's temporary root
whose process is gone, lazily, and says so in one line.  A mount whose process is alive
belongs to another run and is left alone.

``--overlay-hermetic`` may keep the backends' scratch in a directory of its own outside the
sandboxed areas (``/var/tmp/pytest-overlay-PID-XXXXXXXX``, :func:`new_scratch`), removed when
pytest ends; a run killed with SIGKILL leaves it.  The next run that makes one in the same
place removes the leftovers (:func:`remove_dead_scratch`): only directories named so, owned
by this user, not symlinks, with no mount below them, whose process is gone and whose lock
(held by the live run on the directory itself, released by the kernel when it dies, whatever
pid namespace it ran in) nobody holds.
"""

from __future__ import annotations

import errno
import getpass
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from . import _mountinfo, _syscalls
from ._oscompat import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW

__all__ = ["new_scratch", "remove_dead_scratch", "remove_stale_mounts", "temp_root"]

_FSTYPE = "fuse.pytest-overlay"
_SOURCE = "pytest-overlay:"
_SCRATCH_PREFIX = "pytest-overlay-"
# pytest-overlay-PID-XXXXXXXX: mkdtemp's suffix is 8 of [a-z0-9_].
_SCRATCH_NAME = re.compile(r"pytest-overlay-([0-9]+)-[a-z0-9_]{8}")


def temp_root(basetemp: str | None) -> Path:
    """Where pytest makes this run's basetemp: the given one, or ``<tmp>/pytest-of-<user>``."""
    if basetemp:
        return Path(basetemp).resolve()
    from_env = os.environ.get("PYTEST_DEBUG_TEMPROOT")
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"  # as pytest names it then
    return Path(from_env or tempfile.gettempdir()).resolve() / f"pytest-of-{user}"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _stale(root: Path) -> list[tuple[Path, int]]:
    try:
        mounts = _mountinfo.read("/proc/self/mountinfo")
    except OSError:
        return []
    found = []
    for mount in mounts:
        if mount.fstype != _FSTYPE or not mount.source.startswith(_SOURCE):
            continue
        owner = mount.source[len(_SOURCE) :]
        if not owner.isdigit() or root not in mount.point.parents:
            continue
        if _gone(int(owner)):
            found.append((mount.point, int(owner)))
    return found


def _unmount(point: Path) -> str | None:
    """Detach *point* lazily; None when done, else why not."""
    try:
        _syscalls.umount(point, _syscalls.MNT_DETACH)
        return None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        if exc.errno != errno.EPERM:
            return exc.strerror
    # An ordinary user's mount: fusermount3 unmounts it for its owner.
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        return "fusermount3 not found"
    done = subprocess.run(
        [tool, "-u", "-z", "--", str(point)], check=False, capture_output=True, text=True
    )
    return None if done.returncode == 0 else done.stderr.strip() or f"status {done.returncode}"


def remove_stale_mounts(root: Path) -> str | None:
    """Unmount what killed runs left under *root*; the line that says so, or None."""
    stale = _stale(root)
    if not stale:
        return None
    failed = []
    for point, _ in stale:
        problem = _unmount(point)
        if problem is not None:
            failed.append(f"{point} ({problem})")
    removed = len(stale) - len(failed)
    pids = ", ".join(sorted({str(pid) for _, pid in stale}))
    line = (
        f"removed {removed} FUSE mount{'s' if removed != 1 else ''} that a killed run (pid "
        f"{pids}) left under {root}"
    )
    if failed:
        line += f"; could not remove {', '.join(failed)}: unmount it with fusermount3 -u -z"
    return line


def _lock(path: Path, *, wait: bool) -> int | None:
    """An open descriptor of the directory *path* holding an exclusive ``flock`` on it, or
    None when another process holds one (without *wait*) or it cannot be opened."""
    import fcntl

    flags = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def new_scratch(parent: Path) -> tuple[Path, int]:
    """Make a private scratch directory in *parent*, named after this process, and lock it.

    Returns it with the descriptor that holds its lock: keep that open until the directory
    is removed (closing it, or the process's death, releases the lock).  Raises
    :class:`OSError` when the directory cannot be made.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
    fd = _lock(path, wait=True)
    if fd is None:
        shutil.rmtree(path, ignore_errors=True)
        raise OSError(errno.ENOLCK, "cannot lock the new scratch directory", str(path))
    return path, fd


def _mounted_under(path: Path) -> bool:
    try:
        mounts = _mountinfo.read()
    except OSError:
        return True  # cannot tell: leave it
    return any(m.point == path or path in m.point.parents for m in mounts)


def remove_dead_scratch(parent: Path) -> list[Path]:
    """Remove the scratch directories (:func:`new_scratch`) that killed runs left in *parent*;
    return those removed.  See the module docstring for what is provably a killed run's."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _SCRATCH_NAME.fullmatch(entry.name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue  # a symlink, a file, or another user's
        path = Path(entry.path)
        if not _gone(int(match[1])) or _mounted_under(path):
            continue
        fd = _lock(path, wait=False)
        if fd is None:
            continue  # a live run holds it (pid reused, or another pid namespace)
        try:
            # rmtree never follows a symlink inside (it works on descriptors, O_NOFOLLOW).
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        if not os.path.lexists(path):
            removed.append(path)
    return removed
