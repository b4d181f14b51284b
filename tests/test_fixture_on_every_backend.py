"""The ``overlay_root`` fixture on every backend: the destructive sample suite as root, as a
user, and under xdist.

Each run checks what a user checks: the suite passes, the header names the backend, the real
tree is byte-for-byte unchanged, and no mount is left visible on the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate, gate_backend
from tests._run import Result, counts, run_pytest
from tests._sample_project import SUITE_TESTS, build_project, overlay_mounts, tree_digest


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


def _check_run(result: Result, project: Path, before: str, header: str) -> None:
    assert result.returncode == 0, result.output
    assert counts(result.output).get("passed") == SUITE_TESTS, result.output
    assert header in result.output, result.output
    assert tree_digest(project) == before, "the real tree was modified"


@pytest.mark.parametrize("backend", ["kernel", "fuse", "copy"])
def test_suite_as_root(project: Path, backend: str) -> None:
    gate_backend(backend)
    before, mounts = tree_digest(project), overlay_mounts()
    result = run_pytest(project, "-rA", f"--overlay-backend={backend}")
    _check_run(result, project, before, f"overlay: backend={backend}")
    assert overlay_mounts() == mounts


def test_suite_as_root_under_xdist(project: Path) -> None:
    before, mounts = tree_digest(project), overlay_mounts()
    result = run_pytest(project, "-rA", "-n", "2")
    _check_run(result, project, before, "overlay: backend=kernel (root)")
    assert overlay_mounts() == mounts


@pytest.mark.parametrize(
    "xdist", [(), ("-n", "2", "--overlay-userns=early")], ids=["plain", "xdist-early"]
)
def test_suite_as_user_auto(user_project: Path, xdist: tuple[str, ...]) -> None:
    before, mounts = tree_digest(user_project), overlay_mounts()
    result = run_pytest(user_project, "-rA", *xdist, user=True)
    _check_run(result, user_project, before, "overlay: backend=kernel (user namespace)")
    assert overlay_mounts() == mounts


def test_suite_as_user_under_xdist_without_early_says_how(user_project: Path) -> None:
    # An unused controller enters no namespace, and its workers cannot (they are threaded).
    before = tree_digest(user_project)
    result = run_pytest(user_project, "-rA", "-n", "2", user=True)
    _check_run(result, user_project, before, "pytest-xdist workers run several threads")
    assert "set overlay_userns = early" in result.output, result.output


def test_suite_as_user_copy(user_project: Path) -> None:
    before = tree_digest(user_project)
    result = run_pytest(user_project, "-rA", "--overlay-backend=copy", user=True)
    _check_run(result, user_project, before, "overlay: backend=copy")


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_suite_as_user_on_fuse(user_project: Path, xdist: tuple[str, ...]) -> None:
    # Through the setuid fusermount3, with /dev/fuse as open as distributions ship it.
    gate("fuse", fuse_reason())
    before = tree_digest(user_project)
    result = run_pytest(
        user_project,
        "-rA",
        "--overlay-backend=fuse",
        *xdist,
        user=True,
        namespace=_unpriv.OPEN_DEV_FUSE,
    )
    _check_run(result, user_project, before, "overlay: backend=fuse (fusermount3)")
