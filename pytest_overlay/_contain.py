"""Keep a failure to the test it happened in: no view left over the project, no cascade.

In place, a view that a failed teardown leaves mounted over the project would be the next
test's lower layer: the next test would see the failed test's changes, or (on a project that
is itself on overlayfs) every later mount would fail as stacked too deep, one identical error
per test for the rest of the run.  So the plugin records the device number of each sandboxed
directory before its first view, checks it after every teardown and before every setup (one
``stat`` each), and detaches whatever still covers the directory.  If that cannot be done, or
if several tests in a row cannot be sandboxed, the run stops with one error
(``session.shouldfail``) instead of failing every remaining test the same way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from . import _namespaces, _syscalls
from ._keys import real_devices_key, setup_failures_key

__all__ = ["STOP_AFTER", "SetupFailures", "covered", "uncover"]

STOP_AFTER = 3
"""In-place setups failing in a row after which the run stops."""

_MAX_LAYERS = 16  # mounts stacked over one directory that uncover() detaches before giving up


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def covered(
    config: pytest.Config, targets: Sequence[Path], standing: Mapping[Path, int] | None = None
) -> list[Path]:
    """The *targets* that something unexpected is mounted over now (the first call records
    them).

    *standing* maps a target to the device of the untouched view parked over it for the next
    test (:meth:`OverlaySession.standing`): that view is expected there, not the real
    directory.
    """
    real = config.stash.setdefault(real_devices_key, {})
    standing = standing or {}
    found = []
    for target in targets:
        device = _device(target)
        if target not in real:
            if device is not None and target not in standing:
                real[target] = device
        elif device != standing.get(target, real[target]):
            found.append(target)
    return found


def uncover(config: pytest.Config, target: Path) -> str | None:
    """Detach every mount over *target* until it shows the real directory again.

    :returns: None once it does, else why not.
    """
    real = config.stash.setdefault(real_devices_key, {}).get(target)
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    try:
        return _detach_down_to(target, real)
    finally:
        # A working directory inside a detached mount stays there: enter its path again.
        if cwd is not None and (cwd == str(target) or cwd.startswith(str(target) + os.sep)):
            os.chdir(cwd)


def _detach_down_to(target: Path, real: int | None) -> str | None:
    for _ in range(_MAX_LAYERS):
        if _device(target) == real:
            return None
        try:
            with _namespaces.privileged():
                _syscalls.umount(target, _syscalls.MNT_DETACH)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a mount point: covered by a mount above it
                return (
                    f"{target} is not the directory it was at the start of the run, and "
                    "nothing mounted on it can be detached"
                )
            return f"could not unmount what covers {target}: {exc.strerror}"
    if _device(target) == real:
        return None
    return f"more than {_MAX_LAYERS} mounts are stacked over {target}"


class SetupFailures:
    """Counts in-place setups that failed in a row, to stop the run after :data:`STOP_AFTER`."""

    @classmethod
    def failed(cls, item: pytest.Item, problem: str) -> None:
        """One more in a row; the run stops once there are :data:`STOP_AFTER`."""
        row = item.config.stash.setdefault(setup_failures_key, [])
        row.append(problem)
        if len(row) >= STOP_AFTER:
            stop(
                item,
                f"pytest-overlay stopped the run: the last {len(row)} tests could not be "
                f"sandboxed in place, the last one with: {problem}",
            )

    @classmethod
    def passed(cls, item: pytest.Item) -> None:
        """A setup worked: the row is broken."""
        item.config.stash[setup_failures_key] = []


def stop(item: pytest.Item, message: str) -> None:
    """Stop the run after this test with *message* (pytest prints it once, at the end)."""
    session = item.session
    if not session.shouldfail:
        session.shouldfail = message
