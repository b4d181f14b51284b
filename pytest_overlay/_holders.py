"""Which processes keep a view in use: named in the report of a view detached lazily.

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

__all__ = ["Holder", "describe_holders", "holders_of", "view_device"]

_LIMIT = 3  # holders named in one report line; the rest are counted


@dataclass(frozen=True)
class Holder:
    """A process using the view, and how: its working directory, root, or an open file."""

    pid: int
    command: str
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}) through {self.path}"


def _command(pid: str) -> str:
    try:
        raw = Path("/proc", pid, "cmdline").read_bytes()
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    text = " ".join(words) or "?"
    return text if len(text) <= 60 else text[:57] + "..."


def view_device(view: Path) -> int | None:
    """The device number of the filesystem mounted at *view*, asked before it is unmounted:
    a lazily detached filesystem keeps it, and its users' files still show it."""
    try:
        return os.stat(view).st_dev
    except OSError:
        return None


def holders_of(device: int | None, *, limit: int = 20) -> list[Holder]:
    """Processes (other than this one) with their working directory, root or an open file on
    the filesystem of *device*; empty if that cannot be told (no ``/proc``)."""
    if device is None:
        return []
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    me = str(os.getpid())
    found: list[Holder] = []
    for pid in pids:
        if pid == me:
            continue
        base = Path("/proc", pid)
        links = [base / "cwd", base / "root"]
        with contextlib.suppress(OSError):
            links += [base / "fd" / fd for fd in os.listdir(base / "fd")]
        for link in links:
            try:
                if os.stat(link).st_dev != device:
                    continue
                where = os.readlink(link)
            except OSError:
                continue
            found.append(Holder(int(pid), _command(pid), where))
            break
        if len(found) >= limit:
            break
    return found


def describe_holders(holders: list[Holder]) -> str:
    """The holders for a report line: ``" (by pid 12 (sleep 5) through /p/f)"``, or ``""``."""
    if not holders:
        return ""
    named = "; ".join(str(h) for h in holders[:_LIMIT])
    more = f" and {len(holders) - _LIMIT} more" if len(holders) > _LIMIT else ""
    return f" (by {named}{more})"
