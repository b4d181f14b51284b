"""The destructive sample suite on every backend, as root, as a user, and under xdist.

Each run checks what a user checks: the suite passes, the header names the backend, the real
tree is byte-for-byte unchanged, and no mount is left visible on the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate, kernel_reason
from tests._sample_project import SUITE_TESTS, build_project, overlay_mounts, tree_digest

QUIET_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
# Our own runs must not write pytest's cache into the tree whose digest we compare.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark", "-rA")


def _run_as_root(project: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **QUIET_ENV}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", *INNER_ARGS, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    build_project(root)
    return root


@pytest.fixture
def user_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(build_project) as root:
        yield root


def _check_run(
    result: subprocess.CompletedProcess[str], project: Path, before: str, header: str
) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{SUITE_TESTS} passed" in output, output
    assert header in output, output
    assert tree_digest(project) == before, "the real tree was modified"


@pytest.mark.parametrize("backend", ["kernel", "fuse", "copy"])
def test_suite_as_root(project: Path, backend: str) -> None:
    if backend == "kernel":
        gate("kernel", kernel_reason())
    if backend == "fuse":
        gate("fuse", fuse_reason())
    before, mounts = tree_digest(project), overlay_mounts()
    result = _run_as_root(project, [f"--overlay-backend={backend}"])
    expected = f"overlay: backend={backend}"
    _check_run(result, project, before, expected)
    assert overlay_mounts() == mounts


def test_suite_as_root_under_xdist(project: Path) -> None:
    before, mounts = tree_digest(project), overlay_mounts()
    result = _run_as_root(project, ["-n", "2"])
    _check_run(result, project, before, "overlay: backend=kernel (root)")
    assert overlay_mounts() == mounts


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_suite_as_user_auto(user_project: Path, xdist: bool) -> None:
    before, mounts = tree_digest(user_project), overlay_mounts()
    args = [sys.executable, "-m", "pytest", *INNER_ARGS]
    if xdist:
        args += ["-n", "2"]
    result = _unpriv.run_as_user(args, cwd=user_project, env=QUIET_ENV)
    _check_run(result, user_project, before, "overlay: backend=kernel (user namespace)")
    assert overlay_mounts() == mounts


def test_suite_as_user_copy(user_project: Path) -> None:
    before = tree_digest(user_project)
    args = [sys.executable, "-m", "pytest", *INNER_ARGS, "--overlay-backend=copy"]
    result = _unpriv.run_as_user(args, cwd=user_project, env=QUIET_ENV)
    _check_run(result, user_project, before, "overlay: backend=copy")


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_suite_as_user_on_fuse(user_project: Path, xdist: bool) -> None:
    # Through the setuid fusermount3, with /dev/fuse as open as distributions ship it.
    gate("fuse", fuse_reason())
    before = tree_digest(user_project)
    args = [sys.executable, "-m", "pytest", *INNER_ARGS, "--overlay-backend=fuse"]
    if xdist:
        args += ["-n", "2"]
    result = _unpriv.run_as_user(args, cwd=user_project, env=QUIET_ENV, open_dev_fuse=True)
    _check_run(result, user_project, before, "overlay: backend=fuse (fusermount3)")
