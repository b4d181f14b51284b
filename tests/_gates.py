"""Capability gates: skip on a developer's machine, fail where CI requires the capability.

A capability the machine lacks (kernel overlayfs, user namespaces, a second user to run as)
skips the tests that need it.  CI sets ``PYTEST_OVERLAY_REQUIRE=all`` (``.ci/run`` does), and
then a missing capability fails those tests instead, so a broken CI machine cannot pass by
skipping quietly.  The reasons come from the same probes the plugin uses.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REQUIRE_ENV = "PYTEST_OVERLAY_REQUIRE"


def required(capability: str) -> bool:
    """Whether this run insists on *capability* (``all`` insists on every one)."""
    wanted = {part.strip() for part in os.environ.get(REQUIRE_ENV, "").split(",")}
    return "all" in wanted or capability in wanted


def gate(capability: str, reason: str | None) -> None:
    """Skip (or, where required, fail) the calling test when *reason* says it cannot run."""
    if reason is None:
        return
    message = f"needs {capability}: {reason}"
    if required(capability):
        pytest.fail(f"{message} ({REQUIRE_ENV} requires it)", pytrace=False)
    pytest.skip(f"{message} (set {REQUIRE_ENV}={capability} to make this an error)")


def kernel_reason() -> str | None:
    """Why kernel overlayfs cannot be tested as root here, or None."""
    if os.geteuid() != 0:
        return "the suite is not running as root"
    from pytest_overlay import _probe

    result = _probe.probe_kernel()
    return None if result.ok else result.reason


def gate_backend(backend: str) -> None:
    """Gate on what *backend* needs here (kernel overlayfs, FUSE; copy works anywhere)."""
    if backend == "kernel":
        gate("kernel", kernel_reason())
    if backend == "fuse":
        gate("fuse", fuse_reason())


def gate_mode(mode: Sequence[str]) -> None:
    """Gate on the backend the command-line options *mode* choose: fuse if they say so, else
    the kernel (the choice of ``auto`` as root)."""
    gate_backend("fuse" if "--overlay-backend=fuse" in mode else "kernel")


def fuse_reason() -> str | None:
    """Why the FUSE backend cannot be tested here, or None (a real test mount decides)."""
    from pytest_overlay._backends.fuse import probe_fuse

    return probe_fuse()


_USER_FUSE_PROBE = """
import json
from pytest_overlay._backends.fuse import probe_fuse
print(json.dumps(probe_fuse()))
"""


@functools.cache
def user_fuse_reason() -> str | None:
    """Why the FUSE backend cannot serve the ordinary test user here, or None if it can.

    The plugin's own probe (a real test mount through ``fusermount3``) run as
    :data:`tests._unpriv.TEST_USER`, so a test of auto's fallback expects ``fuse`` exactly where
    the plugin will pick it: where that user can open ``/dev/fuse`` (mode 0666, as distributions
    ship it) and mount.  Where ``/dev/fuse`` is 0600 (root only), the reason says it cannot be
    opened.  Call it after gating on :func:`tests._unpriv.can_run_as_user`.
    """
    from tests import _unpriv

    with _unpriv.user_workdir_ctx() as workdir:
        done = _unpriv.run_as_user(
            [sys.executable, "-c", _USER_FUSE_PROBE],
            cwd=workdir,
            env={"PYTHONDONTWRITEBYTECODE": "1"},
            timeout=120,
        )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the FUSE probe as {_unpriv.TEST_USER} failed: {done.stderr.strip()}")
    reason = json.loads(lines[-1])
    if reason is not None and not isinstance(reason, str):
        raise RuntimeError(f"the FUSE probe as {_unpriv.TEST_USER} printed {done.stdout!r}")
    return reason


@functools.cache
def server_libfuse() -> int:
    """The libfuse major version the FUSE server loads here (it prefers 3)."""
    code = (
        "from pytest_overlay._fuse import server\nprint(server.load_mfusepy().fuse_version_major)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return int(done.stdout)
