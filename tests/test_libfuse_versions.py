"""The FUSE tests again, on the other libfuse.

The FUSE server loads libfuse 3 where it is installed and libfuse 2 otherwise, so the main run
tests one of them.  Users get either: Ubuntu 24.04 ships only libfuse 3 by default, older
systems libfuse 2.  This runs the FUSE test modules once more in a child pytest with the other
library (``FUSE_LIBRARY_NAME``), where both are installed (CI installs both).
"""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

from tests._gates import fuse_reason, gate, server_libfuse
from tests._run import counts, run, run_pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = (
    "tests/test_fuse_fs.py",
    "tests/test_fuse_session.py",
    "tests/test_fuse_helper.py",
    "tests/test_faults.py",
    # In place, only what runs on fuse (libfuse 2 needs "nonempty" to mount over the project).
    "tests/test_inplace.py::test_whole_suite_in_place_as_root[plain-fuse]",
    "tests/test_inplace.py::test_failure_keeps_layer_and_pytest_files_reach_disk[fuse]",
    "tests/test_inplace.py::test_pytest_outputs_inside_the_project_reach_disk[fuse]",
)


def _other_library() -> tuple[str, str | None]:
    """The FUSE_LIBRARY_NAME of the libfuse the server does not load, and why it cannot."""
    other = "fuse3" if server_libfuse() == 2 else "fuse"
    if ctypes.util.find_library(other) is None:
        return other, f"lib{other} is not installed: apt install fuse3 libfuse2"
    return other, None


def test_fuse_modules_pass_on_the_other_libfuse() -> None:
    gate("fuse", fuse_reason())
    other, reason = _other_library()
    gate("libfuse2-and-3", reason)
    env = {"FUSE_LIBRARY_NAME": other, "FUSE_LIBRARY_PATH": None}
    version = [sys.executable, "-c", "import mfusepy; print(mfusepy.fuse_version_major)"]
    check = run(version, cwd=REPO, env=env, timeout=60, expect_rc=0)
    assert check.stdout.strip() == ("3" if other == "fuse3" else "2")
    result = run_pytest(
        REPO, "-q", "-p", "no:xdist", *MODULES, cache=True, env=env, timeout=600, expect_rc=0
    )
    outcome = counts(result.stdout)
    assert outcome.get("passed", 0) > 0, outcome
    assert not outcome.keys() & {"failed", "error"}, outcome
