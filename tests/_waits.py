"""Waiting in the suite's tests of real processes and mounts: for a condition, for a child's
test to start, for a process to be gone, for a mount to come or go.

One home for the polling loops those tests had each written again, with one deadline rule:
poll every 20 ms until the condition holds or the timeout has passed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["alive", "mounted", "wait_for_file", "wait_until"]

_POLL = 0.02  # seconds between two looks


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether *condition* became true within *timeout* seconds (looked at until then)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """The text a child's test wrote to *path* once it started (it writes it, then waits to be
    killed); fails the test if *process* ends first or nothing is written within *timeout*."""

    def written() -> bool:
        assert process.poll() is None, f"the child ended ({process.returncode}) before {path}"
        return path.exists() and bool(path.read_text())

    assert wait_until(written, timeout), f"the child's test did not write {path} in {timeout} s"
    return path.read_text()


def alive(pid: int) -> bool:
    """Whether the process *pid* exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def mounted(mountpoint: Path) -> bool:
    """Whether something is mounted at *mountpoint* in this process's mount namespace."""
    target = os.fsencode(mountpoint).replace(b" ", b"\\040")  # mountinfo escapes a space
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)
