"""The portable mode: pytest-overlay on a Linux process made to look like macOS or Windows
(``tests/_portable.py``: ``sys.platform`` faked, the Linux-only ``os`` names and ``grp``/``pwd``
removed, so inotify, ``/proc``, xattrs and FICLONE are off).

Every module imports, and the copy backend runs a suite, auto's choice and explicitly, with the
tree unchanged and a failure's changes in its report.  This is a simulation: the kernel under
it is still Linux (POSIX paths, no drive letters), which is why the GitHub Actions workflow
runs the same tests on real macOS and Windows machines (``native``: nothing simulated).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests._portable import NATIVE, under_test
from tests._run import run
from tests._sample_project import tree_digest

ROOT = Path(__file__).resolve().parents[1]
# Where the failed test's layer is kept, as it should be (the root's mtime moves with it).
KEPT = (".pytest_cache",)

IMPORT_ALL = """
import importlib, json, pkgutil, sys
from tests._portable import prepare
prepare(sys.argv[1])
import pytest_overlay
failed = {}
for module in pkgutil.walk_packages(pytest_overlay.__path__, "pytest_overlay."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
print(json.dumps(failed))
"""

PORTABLE_SUITE = """
import os
from pathlib import Path


def test_write_delete_create(overlay_root):
    (overlay_root / "data" / "a.txt").write_text("changed\\n")
    (overlay_root / "notes.txt").unlink()
    (overlay_root / "new" / "deep").mkdir(parents=True)
    (overlay_root / "new" / "deep" / "n.bin").write_bytes(bytes(range(256)))
    os.rename(overlay_root / "data" / "sub", overlay_root / "moved")
    diff = overlay_root.diff()
    assert "data/a.txt" in diff.modified
    assert "notes.txt" in diff.deleted
    assert "new/deep/n.bin" in diff.added


def test_next_test_sees_the_pristine_tree(overlay_root):
    assert (overlay_root / "data" / "a.txt").read_text() == "alpha\\n"
    assert (overlay_root / "notes.txt").read_text() == "one\\ntwo\\n"
    assert (overlay_root / "data" / "sub" / "b.txt").exists()
    assert not (overlay_root / "new").exists()
    assert not overlay_root.diff()


def test_replace_a_link(overlay_root):
    (overlay_root / "link").unlink()
    (overlay_root / "link").write_text("a file now\\n")


def test_the_link_is_back(overlay_root):
    assert os.readlink(overlay_root / "link") == "data/a.txt"


def test_checkpoint(overlay_root):
    (overlay_root / "a").write_text("1")
    overlay_root.checkpoint()
    (overlay_root / "b").write_text("2")
    assert list(overlay_root.checkpoint().added) == ["b"]


def test_fails_with_changes(overlay_root):
    (overlay_root / "data" / "a.txt").write_text("broken\\n")
    assert False, "deliberate"
"""


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("alpha\n")
    (root / "data" / "sub" / "b.txt").write_text("beta\n")
    (root / "notes.txt").write_text("one\ntwo\n")
    (root / "link").symlink_to("data/a.txt")  # put back after a test: utime of a link
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_portable_suite.py").write_text(PORTABLE_SUITE)
    return root


# Only our plugin: other installed plugins are not what is under test.
ENV = {"PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.parametrize("platform", under_test())
def test_every_module_imports(platform: str) -> None:
    done = run([sys.executable, "-c", IMPORT_ALL, platform], cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stderr
    failed = done.stdout.strip().splitlines()[-1]
    # The FUSE server's modules load libfuse through mfusepy, which is missing there: the
    # FUSE backend then reports itself unavailable (it needs Linux anyway).
    import json

    problems = {
        name: error
        for name, error in json.loads(failed).items()
        if not (name.startswith("pytest_overlay._fuse.") and "libfuse" in error)
    }
    assert problems == {}


@pytest.mark.parametrize("backend", ["auto", "copy"])
@pytest.mark.parametrize("platform", under_test())
def test_copy_backend_runs_a_suite(platform: str, backend: str, tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = tree_digest(project, KEPT, dir_times=False)
    report = tmp_path / "junit.xml"
    done = run(
        [
            sys.executable,
            "-m",
            "tests._portable",
            platform,
            "-p",
            "pytest_overlay.plugin",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",  # the link's test comes after the one that replaces it
            "--capture=sys",  # pytest's fd capture on Windows wants io._WindowsConsoleIO
            f"--overlay-backend={backend}",
            f"--junitxml={report}",
        ],
        cwd=project,
        env=ENV,
        timeout=120,
    )
    output = done.output
    assert done.returncode == 1, output
    assert "overlay: backend=copy" in output
    if backend == "auto":
        shown = sys.platform if platform == NATIVE else platform
        assert f"needs Linux, this is {shown}" in output
    assert "modprobe" not in output
    assert "/dev/fuse" not in output
    suite = ET.parse(report).getroot().find("testsuite")  # noqa: S314 - our own report
    assert suite is not None
    counts = {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "6", "failures": "1", "errors": "0", "skipped": "0"}, output
    assert "M data/a.txt" in output  # the failure's changes
    assert tree_digest(project, KEPT, dir_times=False) == before, "the real tree was modified"
