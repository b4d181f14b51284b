"""Which processes keep a view in use: named in the report of a view detached lazily, or of
a copy set aside (the copy backend finds its holders by path, :mod:`._backends.copy_tracking`).

Only asked when the unmount found the view busy, so the cost (a look at every process's
working directory, root and open files, a few milliseconds per hundred processes) is paid
only then.  A file is matched by the device number of the view, not by its path: in place
the view and the real tree have the same paths, and only the device tells them apart.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ._safetext import safe_line, safe_path

__all__ = [
    "Holder",
    "command_of",
    "describe_holders",
    "holders_of",
    "name_holders",
    "view_device",
]

_LIMIT = 3  # holders named in one report line; the rest are counted
_COMMAND_WIDTH = 60  # characters of a holder's command line shown


@dataclass(frozen=True)
class Holder:
    """A process using the view, and how: its working directory, root, or an open file."""

    pid: int
    command: str
    path: str

    def __str__(self) -> str:
        if self.pid == os.getpid():
            # A test left a file open in pytest itself (an sqlite connection in a module,
            # say): naming pytest's own command line would only puzzle.
            return f"this pytest process (pid {self.pid}) through {safe_path(self.path)}"
        return f"pid {self.pid} ({self.command}) through {safe_path(self.path)}"


def command_of(pid: int | str) -> str:
    """The command line of the process *pid*, for a report line: its arguments joined by
    spaces, shown safely (a test chose them: escapes and newlines are made visible, see
    :func:`._safetext.safe_line`) and cut to 60 characters.  A process without one (a
    zombie, a kernel thread) is named by its ``comm`` in brackets, as ps(1) shows it; one
    that cannot be read, ``?``."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
        text = " ".join(os.fsdecode(word) for word in raw.split(b"\0") if word)
        if not text:
            text = "[" + os.fsdecode(Path("/proc", str(pid), "comm").read_bytes().strip()) + "]"
    except OSError:
        return "?"
    shown = safe_line(text).replace("\t", " ")
    return shown if len(shown) <= _COMMAND_WIDTH else shown[: _COMMAND_WIDTH - 3] + "..."


def view_device(view: Path) -> int | None:
    """The device number of the filesystem mounted at *view*, asked before it is unmounted:
    a lazily detached filesystem keeps it, and its users' files still show it."""
    try:
        return os.stat(view).st_dev
    except OSError:
        return None


def holders_of(device: int | None, *, inside: Path | None = None, limit: int = 20) -> list[Holder]:
    """Processes with their working directory, root or an open file on the filesystem of
    *device*, or an open file under the path *inside*; empty if that cannot be told.

    Kernel overlayfs gives a directory its own device but a file the device of a layer, so
    a file the test created shows neither the view's device nor the upper directory's: the
    view's path finds it where that path is the view's alone (not in place).
    """
    if device is None:
        return []
    prefix = None if inside is None else os.fspath(inside) + "/"
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    me = str(os.getpid())
    found: list[Holder] = []
    for pid in pids:
        base = Path("/proc", pid)
        # This process only through an open file: its working directory and root are the
        # user's, and in place the view stands at the same paths.
        links = [] if pid == me else [base / "cwd", base / "root"]
        with contextlib.suppress(OSError):
            links += [base / "fd" / fd for fd in os.listdir(base / "fd")]
        for link in links:
            try:
                where = os.readlink(link)
                if os.stat(link).st_dev != device and not (prefix and where.startswith(prefix)):
                    continue
            except OSError:
                continue
            found.append(Holder(int(pid), command_of(pid), where))
            break
        if len(found) >= limit:
            break
    return found


def name_holders(holders: list[Holder]) -> str:
    """The holders named for a report line: ``pid 12 (sleep 5) through /p/f; ...``."""
    named = "; ".join(str(h) for h in holders[:_LIMIT])
    more = f" and {len(holders) - _LIMIT} more" if len(holders) > _LIMIT else ""
    return named + more


def describe_holders(holders: list[Holder]) -> str:
    """The holders for a report line: ``" (by pid 12 (sleep 5) through /p/f)"``, or ``""``."""
    return f" (by {name_holders(holders)})" if holders else ""
