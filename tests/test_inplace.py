"""``pytest --overlay``: an unchanged suite runs sandboxed at the project's real paths.

Each run checks what a user checks: the suite passes, the real tree is byte-for-byte unchanged,
pytest's own files (cache, junit XML) still land on disk, a failure shows a unified diff, and
the kept layer can be inspected with the ``pytest-overlay`` command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, gate_backend, kernel_reason
from tests._run import Result, counts, run, run_pytest
from tests._sample_project import inplace_digest, overlay_mounts, tree_digest
from tests._unpriv import Namespace

SUITE = r"""
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_rmtree_through_absolute_path():
    shutil.rmtree(HERE / "data")
    assert not (HERE / "data").exists()


def test_each_test_starts_pristine():
    assert (HERE / "data" / "a.txt").read_text() == "alpha\n"
    assert (HERE / "notes.txt").read_text() == "one\n"


def test_shell_rewrites_and_deletes():
    subprocess.run(
        ["sh", "-c", f"echo clobbered > '{HERE}/notes.txt' && rm -r '{HERE}/data' && "
         "mkdir made && echo x > made/file"],
        check=True,
    )
    assert (HERE / "notes.txt").read_text() == "clobbered\n"
    assert (HERE / "made" / "file").exists()


def test_relative_paths_and_cwd():
    Path("relative.txt").write_text("x")
    assert (HERE / "relative.txt").read_text() == "x"
    assert Path.cwd() == HERE


def test_c_extension_and_git():
    with sqlite3.connect(HERE / "data" / "app.db") as db:
        db.execute("create table t (x)")
    db.close()
    subprocess.run(["git", "init", "-q", str(HERE)], check=True)
    assert (HERE / ".git").is_dir()


def test_lazy_import_bytecode_is_not_a_change(overlay_root):
    sys.path.insert(0, str(HERE / "pkg"))
    try:
        import lazymod  # noqa: F401
    finally:
        sys.path.remove(str(HERE / "pkg"))
    assert overlay_root.path == HERE
    (HERE / "new.txt").write_text("n")
    assert sorted(c.path for c in overlay_root.diff()) == ["new.txt"]


def test_tmp_path_still_works(tmp_path):
    (tmp_path / "scratch").write_text("ok")
    assert (tmp_path / "scratch").read_text() == "ok"
"""

FAILING = r"""
from pathlib import Path

HERE = Path(__file__).parent


def test_clobbers_and_fails():
    (HERE / "notes.txt").write_text("ONE\n")
    (HERE / "data" / "a.txt").unlink()
    assert False, "deliberate"


def test_fine():
    pass
"""


def build(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("alpha\n")
    (root / "notes.txt").write_text("one\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "lazymod.py").write_text("VALUE = 1\n")
    (root / "test_inplace_suite.py").write_text(SUITE)
    (root / "pytest.ini").write_text("[pytest]\n")


def run_root(project: Path, *args: str, expect_rc: int | None = None) -> Result:
    # With pytest's cache (--lf reads it) and bytecode (test_lazy_import_bytecode_... writes
    # it in the view), as a user's plain run would have them.
    return run_pytest(project, "-rA", *args, cache=True, write_bytecode=True, expect_rc=expect_rc)


def run_user(project: Path, *args: str, expect_rc: int, namespace: Namespace | None = None) -> str:
    result = run_pytest(
        project, "-rA", "--overlay", *args, user=True, namespace=namespace, expect_rc=expect_rc
    )
    return result.output


def cli(project: Path, *args: str) -> Result:
    return run([sys.executable, "-m", "pytest_overlay", *args], cwd=project, timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    build(root)
    # A first plain run writes the bytecode and cache pytest always writes, so that the
    # digest below compares only what the sandboxed suite could have changed.
    run_root(root, "--collect-only", "-q")
    return root


IN_PLACE_BACKENDS = pytest.mark.parametrize("backend", ["kernel", "fuse"])


def need(backend: str) -> tuple[str, ...]:
    """Gate on *backend*; the command-line arguments that choose it."""
    gate_backend(backend)
    return (f"--overlay-backend={backend}",)


@IN_PLACE_BACKENDS
@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_whole_suite_in_place_as_root(project: Path, xdist: Sequence[str], backend: str) -> None:
    chosen = need(backend)
    before, mounts = inplace_digest(project), overlay_mounts()
    output = run_root(project, "--overlay", *chosen, *xdist, expect_rc=0).output
    assert counts(output).get("passed") == 7, output
    assert "overlay: in-place mode:" in output
    assert f"overlay: backend={backend} (root)" in output
    assert inplace_digest(project) == before
    assert overlay_mounts() == mounts


def test_first_run_leaves_pytest_s_cache_as_pytest_makes_it(project: Path) -> None:
    # The plugin makes its store before the first view, inside pytest's cache directory; made
    # through pytest's cache, the directory comes with the files that keep it out of git.
    assert not (project / ".pytest_cache").exists()
    run_root(project, "--overlay", *need("kernel"), expect_rc=0)
    cache = project / ".pytest_cache"
    assert (cache / ".gitignore").read_text().endswith("*\n")
    assert (cache / "CACHEDIR.TAG").is_file()
    assert (cache / "d" / "overlay").is_dir()


@IN_PLACE_BACKENDS
def test_failure_keeps_layer_and_pytest_files_reach_disk(project: Path, backend: str) -> None:
    chosen = need(backend)
    (project / "test_failing.py").write_text(FAILING)
    before = inplace_digest(project)
    output = run_root(project, "--overlay", *chosen, "--junitxml=report.xml", expect_rc=1).output
    assert counts(output).get("failed") == 1
    assert "-one" in output, output
    assert "+ONE" in output, output
    assert "D data/a.txt" in output
    assert "kept 1 layer in" in output
    assert "pytest-overlay list" in output
    assert (project / "report.xml").is_file()
    os.unlink(project / "report.xml")
    assert inplace_digest(project) == before

    rerun = run_root(project, "--overlay", *chosen, "--lf")
    outcome = counts(rerun.stdout)
    assert outcome.get("failed") == 1, rerun.stdout
    assert "passed" not in outcome, rerun.stdout

    listing = cli(project, "list")
    assert listing.returncode == 0, listing.stderr
    assert "test_failing.py::test_clobbers_and_fails" in listing.stdout
    shown = cli(project, "show", "clobbers")
    assert shown.returncode == 0, shown.stderr
    assert "-one" in shown.stdout
    assert "+ONE" in shown.stdout


@pytest.fixture
def user_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(build) as root:
        yield root


def test_failure_keeps_layer_as_user(user_project: Path) -> None:
    # The store is written through a descriptor opened before the first view (pytest's cache
    # is not bound into the views): in the user namespace too.
    _unpriv.write_user_files(user_project, {"test_failing.py": FAILING})
    before = inplace_digest(user_project)
    output = run_user(user_project, expect_rc=1)
    assert counts(output).get("failed") == 1, output
    assert "kept 1 layer in" in output, output
    assert inplace_digest(user_project) == before
    listing = cli(user_project, "list")
    assert "test_failing.py::test_clobbers_and_fails" in listing.stdout, listing.stderr


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_whole_suite_in_place_as_user(user_project: Path, xdist: Sequence[str]) -> None:
    before = inplace_digest(user_project)
    output = run_user(user_project, *xdist, expect_rc=0)
    assert counts(output).get("passed") == 7, output
    assert "overlay: backend=kernel (user namespace)" in output
    assert inplace_digest(user_project) == before


def test_fuse_in_place_as_user_is_a_clear_usage_error(user_project: Path) -> None:
    # Through fusermount3 the view would cover the project for every process on the host.
    before = inplace_digest(user_project)
    output = run_user(
        user_project,
        "--overlay-backend=fuse",
        expect_rc=pytest.ExitCode.USAGE_ERROR,
        namespace=_unpriv.OPEN_DEV_FUSE,
    )
    # The kernel works here and no report header was printed: the error says so itself.
    gate("kernel", kernel_reason())
    assert (
        "in-place mode (--overlay) on the fuse backend needs root: the view is mounted over "
        "the project in a private mount namespace, and an ordinary user's FUSE mounts are "
        "made by fusermount3 for the whole machine instead. Use --overlay-backend=kernel "
        "(auto picks it here), which runs in place in a user namespace; or run as root "
        "(`sudo -E pytest`); or use the overlay_root fixture without --overlay" in output
    ), output
    assert "report header" not in output
    assert "Traceback" not in output
    assert inplace_digest(user_project) == before


def test_xdist_workers_keep_layers_into_one_run(project: Path) -> None:
    gate("kernel", kernel_reason())
    (project / "test_two_failures.py").write_text(
        "from pathlib import Path\n"
        "HERE = Path(__file__).parent\n"
        "def test_first():\n"
        "    (HERE / 'first.txt').write_text('1')\n"
        "    assert False\n"
        "def test_second():\n"
        "    (HERE / 'second.txt').write_text('2')\n"
        "    assert False\n"
    )
    result = run_root(project, "--overlay", "-n", "2", "test_two_failures.py")
    assert counts(result.stdout).get("failed") == 2, result.stdout
    assert "kept 2 layers in" in result.stdout, result.stdout
    listing = cli(project, "list")
    assert "test_first" in listing.stdout, listing.stdout
    assert "test_second" in listing.stdout, listing.stdout


@IN_PLACE_BACKENDS
def test_pytest_outputs_inside_the_project_reach_disk(project: Path, backend: str) -> None:
    chosen = need(backend)
    (project / "test_outputs.py").write_text(
        "import logging\n"
        "def test_logs_and_tmp_path(tmp_path):\n"
        "    logging.getLogger('x').warning('written through the log file')\n"
        "    (tmp_path / 'kept.txt').write_text('tmp')\n"
    )
    run_root(
        project,
        "--overlay",
        *chosen,
        "--basetemp=inside-tmp",
        "--log-file=run.log",
        "test_outputs.py",
        expect_rc=0,
    )
    assert "written through the log file" in (project / "run.log").read_text()
    kept = list((project / "inside-tmp").rglob("kept.txt"))
    assert [p.read_text() for p in kept] == ["tmp"]


def test_several_sandboxed_directories_are_all_reported_and_kept(tmp_path: Path) -> None:
    """``overlay_lowers`` with two directories: both sandboxed, both in the report."""
    gate("kernel", kernel_reason())
    project = tmp_path / "project"
    shared = tmp_path / "shared"
    project.mkdir()
    shared.mkdir()
    (shared / "fixture.txt").write_text("shared\n")
    (project / "own.txt").write_text("own\n")
    (project / "pytest.ini").write_text(f"[pytest]\noverlay_lowers =\n    .\n    {shared}\n")
    (project / "test_two.py").write_text(
        "from pathlib import Path\n"
        "def test_changes_both():\n"
        f"    Path({str(project / 'own.txt')!r}).write_text('OWN\\n')\n"
        f"    Path({str(shared / 'fixture.txt')!r}).unlink()\n"
        "    assert False\n"
    )
    before = (inplace_digest(project), tree_digest(shared))
    result = run_root(project, "--overlay")
    output = result.stdout + result.stderr
    assert counts(output).get("failed") == 1, output
    assert f"changes under {project}:" in output
    assert f"changes under {shared}:" in output
    assert "+OWN" in output
    assert "D fixture.txt" in output
    assert (inplace_digest(project), tree_digest(shared)) == before
    shown = cli(project, "show", "changes_both")
    assert f"changes under {shared}:" in shown.stdout, shown.stdout + shown.stderr
    as_json = cli(project, "show", "changes_both", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert str(shared) in as_json.stdout


SETUP_WRITERS_CONFTEST = r"""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_runtest_setup(item):
    if item.get_closest_marker("overlay"):
        return  # a test with snapshot layers is sandboxed by a fixture, after this hook
    mark = HERE / "hook_setup.txt"
    assert not mark.exists(), "an earlier test's setup write reached this test"
    mark.write_text(item.name)


@pytest.fixture(scope="session", autouse=True)
def session_writer():
    (HERE / "session.txt").write_text("session")


@pytest.fixture(scope="session")
def seeded(overlay_layer):
    return overlay_layer("seeded", lambda root: (root / "seed.txt").write_text("seed"))
"""

SETUP_WRITERS_SUITE = r"""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("i", range(3))
def test_setup_wrote_in_my_view(i):
    assert (HERE / "hook_setup.txt").read_text() == f"test_setup_wrote_in_my_view[{i}]"


@pytest.mark.overlay(layers=["seeded"])
def test_with_a_layer():
    assert (HERE / "seed.txt").read_text() == "seed"
    assert not (HERE / "hook_setup.txt").exists()
"""


@IN_PLACE_BACKENDS
def test_setup_hooks_and_fixtures_of_any_scope_write_in_the_view(
    tmp_path: Path, backend: str
) -> None:
    """The project is sandboxed before a conftest's ``pytest_runtest_setup`` and before any
    fixture, and a test with snapshot layers still gets them built outside it."""
    chosen = need(backend)
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(SETUP_WRITERS_CONFTEST)
    (root / "test_setup_writers.py").write_text(SETUP_WRITERS_SUITE)
    run_root(root, "--collect-only", "-q")
    before = inplace_digest(root)
    output = run_root(root, "--overlay", *chosen, "-p", "no:randomly", expect_rc=0).output
    assert counts(output) == {"passed": 4}, output
    assert inplace_digest(root) == before
