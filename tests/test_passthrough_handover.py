"""In place, a new view takes over the pass-through mounts of the view closed before it.

A writing test's view is retired; its pass-through mounts, which the busy check moved aside,
go to the next view instead of new clones of the real directories.  Forty writing tests in a
row (more than one batch of closed views) each write through a pass-through directory and into
their view, and each checks that every earlier test's file reached the disk, that the
pass-through directory and the view are each mounted exactly once at their paths, and that the
read-only clone the diff reads is the real directory.  As root and as the ordinary user, and
with the project inside a sandboxed ``$HOME``, where the views park on their own again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, kernel_reason
from tests._run import counts, run_pytest
from tests._sample_project import overlay_mounts, tree_digest

SUITE = r"""
import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SHARED = HERE / "shared"


FIRST = {}


def mounted_at(path):
    # 1 while as many mounts stand at path as in the first test (one; two in a sandboxed
    # $HOME, whose view holds a clone of the project's).
    with open("/proc/self/mountinfo") as f:
        count = sum(1 for line in f if line.split()[4] == str(path))
    return count - FIRST.setdefault(path, count) + 1


def mount_ids(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[0] for line in f if line.split()[4] == str(path)]


@pytest.mark.parametrize("i", range(40))
def test_writes_through_and_into_its_view(i, overlay_root):
    assert sorted(p.name for p in SHARED.iterdir()) == [f"{j:02d}" for j in range(i)]
    (SHARED / f"{i:02d}").write_text("through")
    (HERE / f"mine{i}.txt").write_text("view")  # the next test gets a new view
    assert not (HERE / f"mine{i - 1}.txt").exists()
    assert mounted_at(SHARED) == 1
    assert mounted_at(HERE) == 1
    # Handed over: the same mount, moved from view to view; else a new clone each time.
    same = FIRST.setdefault("ids", mount_ids(SHARED)) == mount_ids(SHARED)
    assert same == (os.environ["HANDOVER"] == "1" or i == 0)
    # What the diff reads as the lower layer is the real directory, without this test's file.
    assert [c.path for c in overlay_root.diff()] == [f"mine{i}.txt"]
"""


def build(root: Path) -> None:
    (root / "shared").mkdir()
    (root / "data.txt").write_text("data\n")
    (root / "test_handover.py").write_text(SUITE)
    (root / "pytest.ini").write_text("[pytest]\noverlay_passthrough = shared\n")


def digest(root: Path) -> str:
    return tree_digest(root, skip=(".pytest_cache", "__pycache__", "shared"), dir_times=False)


def check(root: Path, *, user: bool, args: tuple[str, ...] = (), home: Path | None = None) -> None:
    before, mounts = digest(root), overlay_mounts()
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])} if user else {}
    env["HANDOVER"] = "0" if home else "1"
    if home is not None:
        env["HOME"] = str(home)
    result = run_pytest(root, "--overlay", "--overlay-backend=kernel", *args, user=user, env=env)
    assert counts(result.output) == {"passed": 40}, result.output
    assert sorted(os.listdir(root / "shared")) == [f"{j:02d}" for j in range(40)]
    assert digest(root) == before
    assert overlay_mounts() == mounts


def test_as_root(tmp_path: Path) -> None:
    gate("kernel", kernel_reason())
    build(tmp_path)
    check(tmp_path, user=False)


@pytest.fixture
def user_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(build) as root:
        yield root


def test_as_user(user_project: Path) -> None:
    check(user_project, user=True)


def test_project_inside_a_sandboxed_home(tmp_path: Path) -> None:
    """The project's views stand in the home's: they park on their own (see kernel.py)."""
    gate("kernel", kernel_reason())
    home = tmp_path / "home"
    project = home / "src" / "app"
    project.mkdir(parents=True)
    build(project)
    check(project, user=False, args=("--overlay-hermetic=home",), home=home)
