"""An 8 GiB sparse file that a test appends to: the copy-up keeps the holes, on every backend,
in the failure report and in a kept layer (the slowest runs carry the ``stress`` marker).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests._gates import gate_backend
from tests._run import Result, assert_clean, counts, run_pytest
from tests._sample_project import make_project, tree_digest

SPARSE_SIZE = 8 << 30
SPARSE_SUITE = r"""
import os
import time

from pytest_overlay import ChangeKind

SIZE = 8 << 30
ALLOCATED_LIMIT = 64 << 20  # what a copy that kept the holes may take on disk, at most


def test_append_copies_up_sparsely(overlay_root):
    start = time.monotonic()
    path = overlay_root / "huge.img"
    with open(path, "ab") as f:
        f.write(b"tail\n")
    took = time.monotonic() - start
    st = os.stat(path)
    assert st.st_size == SIZE + 5
    assert st.st_blocks * 512 < ALLOCATED_LIMIT, f"{st.st_blocks * 512} bytes allocated"
    with open(path, "rb") as f:
        assert f.read(5) == b"head\n"
        f.seek(SIZE // 2)
        assert f.read(7) == b"middle\n"
        f.seek(SIZE)
        assert f.read() == b"tail\n"
    change = overlay_root.diff().by_path("huge.img")
    assert change is not None and change.kind is ChangeKind.MODIFIED
    assert (change.old_size, change.new_size) == (SIZE, SIZE + 5)
    assert time.monotonic() - start < 30, f"the append alone took {took:.1f} s"


def test_the_next_test_sees_the_original(overlay_root):
    assert os.stat(overlay_root / "huge.img").st_size == SIZE
"""

SPARSE_FAILURE = """
def test_append_then_fail(overlay_root):
    with open(overlay_root / "huge.img", "ab") as f:
        f.write(b"tail\\n")
    assert False, "deliberate, for the failure report and the kept layer"
"""


@pytest.fixture
def sparse_project(tmp_path: Path) -> Path:
    files = {
        "pytest.ini": "[pytest]\n",
        "test_sparse.py": SPARSE_SUITE,
        "failing.py": SPARSE_FAILURE,
    }
    root = make_project(tmp_path, files)
    with open(root / "huge.img", "wb") as f:
        f.write(b"head\n")
        f.seek(SPARSE_SIZE // 2)
        f.write(b"middle\n")
        f.truncate(SPARSE_SIZE)
    assert os.stat(root / "huge.img").st_blocks * 512 < 1 << 20, "no sparse files here"
    return root


def _sparse_state(project: Path, *, kept: bool = False) -> tuple[str, tuple[int, int, int]]:
    # Hashing the 8 GiB would take longer than the runs: its metadata and extents instead.
    # Where a layer is kept, pytest's cache directory appears in the project (and its mtime
    # changes).
    st = os.stat(project / "huge.img")
    skip = ("huge.img", ".pytest_cache")
    return tree_digest(project, skip, dir_times=not kept), (
        st.st_size,
        st.st_mtime_ns,
        st.st_blocks,
    )


def _timed_run(project: Path, basetemp: Path, backend: str, test_file: str) -> tuple[Result, float]:
    """Run *test_file* of *project* on *backend*; the run and how long it took, in seconds."""
    gate_backend(backend)
    start = time.monotonic()
    result = run_pytest(
        project, "-rA", f"--overlay-backend={backend}", f"--basetemp={basetemp}", test_file
    )
    return result, time.monotonic() - start


@pytest.mark.parametrize(
    "backend",
    [
        "kernel",
        "copy",
        pytest.param("fuse", marks=pytest.mark.stress),
    ],
)
@pytest.mark.usefixtures("no_leaked_mounts")
def test_sparse_8gib_file_appended_to(sparse_project: Path, tmp_path: Path, backend: str) -> None:
    before = _sparse_state(sparse_project)
    result, took = _timed_run(sparse_project, tmp_path / "basetemp", backend, "test_sparse.py")
    assert counts(result.stdout) == {"passed": 2}, result.output
    assert took < 60, f"the run took {took:.0f} s"
    assert _sparse_state(sparse_project) == before


@pytest.mark.stress
@pytest.mark.parametrize("backend", ["kernel", "copy"])
@pytest.mark.usefixtures("no_leaked_mounts")
def test_sparse_8gib_file_in_a_failure_report_and_a_kept_layer(
    sparse_project: Path, tmp_path: Path, backend: str
) -> None:
    # Slow by design: the report states each version's SHA-256, so it reads 8 GiB four times
    # (old and new, for the terminal and for the kept record).
    before = _sparse_state(sparse_project, kept=True)
    result, took = _timed_run(sparse_project, tmp_path / "basetemp", backend, "failing.py")
    text = result.output
    assert counts(result.stdout) == {"failed": 1}, text
    assert (
        f"Large file huge.img: {SPARSE_SIZE} -> {SPARSE_SIZE + 5} bytes (not hashed, over 64 MiB)"
        in result.stdout
    )
    assert_clean(text)
    assert took < 120, f"the run took {took:.0f} s"
    kept = list((sparse_project / ".pytest_cache" / "d" / "overlay").glob("runs/*/tests/*/upper"))
    assert len(kept) == 1, text
    st = os.stat(kept[0] / "huge.img")
    assert st.st_size == SPARSE_SIZE + 5
    assert st.st_blocks * 512 < 64 << 20, "the kept layer's copy is not sparse"
    assert _sparse_state(sparse_project, kept=True) == before
