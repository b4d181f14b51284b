"""Remove the FUSE mounts that a killed run left behind under pytest's temporary directories.

A FUSE server unmounts when the pytest process it serves dies (:mod:`._fuse.server`), and an
ordinary user's mount has ``auto_unmount`` besides; a mount outlives both only if the server
itself was killed with SIGKILL together with ``fusermount3``'s watcher (an OOM killer, a
``kill -9`` of the whole session).  Such a mount answers "Transport endpoint is not connected"
to its owner and "Permission denied" even to root, so pytest cannot remove the old basetemp
that holds it.  The mount's source names the process it served (``pytest-overlay:PID``); a
run that starts using the plugin unmounts every such mount under pytest's temporary root
whose process is gone, lazily, and says so in one line.  A mount whose process is alive
belongs to another run and is left alone.
"""

from __future__ import annotations

import errno
import getpass
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import _mountinfo, _syscalls

__all__ = ["remove_stale_mounts", "temp_root"]

_FSTYPE = "fuse.pytest-overlay"
_SOURCE = "pytest-overlay:"


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
