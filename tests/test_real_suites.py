"""Real suites, unchanged: the same outcome for every test with and without ``--overlay``.

A suite that mixes what real projects do (pyfakefs at every fixture scope and its
``Patcher``, a module-scoped monkeypatch of ``os``, tests that write into the project, a child
process that outlives its test by a moment, ``filterwarnings = error``) runs plain on a copy of
the project and in place on the project itself, as root and as an ordinary user; outcomes are
compared test by test (JUnit XML) and the real tree must come out byte-identical.  A test
whose view cannot be torn down errs alone, and a run that cannot go on stops with one error.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, kernel_reason
from tests._run import CHILD_OPTIONS, assert_clean, junit_outcomes, run_pytest
from tests._sample_project import inplace_digest, tree_digest

pytest.importorskip("pyfakefs", reason="pyfakefs is in the dev extra: pip install -e .[dev]")

MIXED = {
    "pytest.ini": "[pytest]\nfilterwarnings = error\n",
    "data/notes.txt": "one\n",
    "conftest.py": '''
import os
import pytest


@pytest.fixture(scope="module")
def rename_refused():
    """A monkeypatch of os wider than a test, as some suites make one."""
    def refuse(*args, **kwargs):
        raise PermissionError("os.rename is patched by the suite")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "rename", refuse)
        yield
''',
    "test_a_writes.py": """
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
STILL_RUNNING = []


def test_writes_into_the_project():
    (HERE / "data" / "out.txt").write_text("written\\n")
    (HERE / "build").mkdir(exist_ok=True)
    (HERE / "build" / "artifact").write_bytes(b"x" * 10_000)


def test_appends_to_a_file():
    with open(HERE / "data" / "notes.txt", "a") as f:
        f.write("two\\n")


def test_child_outlives_its_test_by_a_moment():
    STILL_RUNNING.append(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"], cwd=HERE)
    )


def test_after_the_child():
    assert (HERE / "data").is_dir()
""",
    "test_b_fake.py": """
import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

HERE = Path(__file__).parent


def test_fs(fs):
    fs.create_file("/etc/app.conf", contents="fake")
    assert Path("/etc/app.conf").read_text() == "fake"


def test_patcher_in_the_test():
    with Patcher() as patcher:
        patcher.fs.create_file("/srv/x", contents="y")
        assert os.path.exists("/srv/x")
    (HERE / "data" / "after-patcher.txt").write_text("real\\n")


@pytest.fixture(scope="module")
def fake_module(fs_module):
    fs_module.create_file("/module/file", contents="m")
    return fs_module


def test_module_fake_first(fake_module):
    assert Path("/module/file").read_text() == "m"
    Path("/module/second").write_text("2")


def test_module_fake_second(fake_module):
    assert Path("/module/second").read_text() == "2"


class TestClassFake:
    def test_one(self, fs_class):
        Path("/cls").write_text("c")

    def test_two(self, fs_class):
        assert Path("/cls").read_text() == "c"


def test_rename_refused(rename_refused):
    with pytest.raises(PermissionError, match="patched"):
        os.rename(HERE / "data" / "notes.txt", HERE / "data" / "moved.txt")
""",
    "test_b_then_real.py": """
from pathlib import Path

HERE = Path(__file__).parent


def test_writes_after_the_module_fake():
    (HERE / "data" / "between.txt").write_text("real\\n")
""",
    "test_c_session_fake.py": """
from pathlib import Path


def test_session_fake(fs_session):
    Path("/session").write_text("s")


def test_session_fake_again(fs_session):
    assert Path("/session").read_text() == "s"


def test_after_session_fake():
    Path("/tmp/inside-the-session-fake").write_text("still fake")
""",
}
MIXED_TESTS = 15


def build_mixed(root: Path) -> None:
    for name, text in MIXED.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text.lstrip("\n"))


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest) -> str:
    gate("kernel", kernel_reason())
    if request.param == "user":
        gate("unprivileged-user", _unpriv.can_run_as_user())
    return str(request.param)


@pytest.fixture
def workdir(who: str, tmp_path: Path) -> Iterator[Path]:
    if who == "user":
        with _unpriv.user_workdir_ctx() as path:
            yield path
    else:
        yield tmp_path


def _chown_tree(root: Path) -> None:
    uid, gid = _unpriv.ensure_test_user()
    shutil.chown(root, uid, gid)
    for path in root.rglob("*"):
        shutil.chown(path, uid, gid)


def test_a_mixed_suite_has_the_same_outcomes_in_place(who: str, workdir: Path) -> None:
    project, plain = workdir / "project", workdir / "plain"
    for root in (project, plain):
        root.mkdir()
        build_mixed(root)
        if who == "user":
            _chown_tree(root)
    user = who == "user"
    # The checkout under test first, whatever an editable install points at.
    env = {"PYTHONPATH": str(_unpriv.REPO_ROOT)}
    before = inplace_digest(project)
    expected = run_pytest(plain, f"--junitxml={workdir / 'plain.xml'}", user=user, env=env)
    got = run_pytest(
        project, "--overlay", f"--junitxml={workdir / 'overlay.xml'}", user=user, env=env
    )
    assert_clean(got.output)
    baseline = junit_outcomes(workdir / "plain.xml")
    assert len(baseline) == MIXED_TESTS
    assert set(baseline.values()) == {"passed"}, baseline
    assert junit_outcomes(workdir / "overlay.xml") == baseline
    assert got.returncode == expected.returncode == 0
    assert inplace_digest(project) == before
    # The plain run did write into its copy: the writes were real, and stayed off the project.
    assert (plain / "data" / "out.txt").exists()


BREAKS = """
import os
import subprocess
from pathlib import Path

import pytest


def test_breaks_its_teardown(tmp_path_factory):
    # Covers the backend's scratch directory: the test's own tmpfs in it cannot be found,
    # and unmounting it fails for real (ENOENT).
    scratch = Path(tmp_path_factory.getbasetemp()) / "overlay" / "kernel"
    subprocess.run(["mount", "-t", "tmpfs", "cover", str(scratch)], check=True)


def test_leaves_the_project_covered():
    # A bind mount of the view over itself: closing the view unmounts only the bind.
    Path("left-behind").write_text("x")
    subprocess.run(["mount", "--bind", os.getcwd(), os.getcwd()], check=True)


@pytest.mark.parametrize("i", range(100))
def test_next(i):
    assert not Path("left-behind").exists()
    Path(f"f{i}").write_text("x")
"""


def _run_in_place(pytester: pytest.Pytester, basetemp: Path) -> pytest.RunResult:
    # The basetemp outside the project, as usual outside pytester (inside, it would be
    # passed through, and a mount over it leave the view alone).
    return pytester.runpytest_subprocess(
        *CHILD_OPTIONS, "--overlay", f"--basetemp={basetemp}", timeout=300
    )


def pytester_digest(pytester: pytest.Pytester) -> str:
    """The project's digest, without what pytester itself writes beside it."""
    return tree_digest(
        pytester.path,
        skip=(
            ".pytest_cache",
            "__pycache__",
            "stdout",
            "stderr",
            "runpytest-0",
            "runpytest-current",
        ),
        dir_times=False,
    )


def test_a_view_that_fails_to_come_down_errs_alone(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gate("kernel", kernel_reason())
    pytester.makepyfile(test_breaks=BREAKS)
    before = pytester_digest(pytester)
    result = _run_in_place(pytester, tmp_path_factory.mktemp("basetemp"))
    result.assert_outcomes(passed=102, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_breaks_its_teardown*",
            "pytest-overlay: could not close the view *: MountError: *could not unmount *"
            "No such file or directory; the next test gets a fresh view",
            "*ERROR at teardown of test_leaves_the_project_covered*",
            "pytest-overlay: * was still covered by a mount after the test's view was closed*"
            "it was detached; the next test gets a fresh view",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert pytester_digest(pytester) == before


BREAKS_EVERY_SETUP = """
import subprocess
from pathlib import Path

import pytest


def test_breaks_the_scratch_directory(tmp_path_factory):
    scratch = Path(tmp_path_factory.getbasetemp()) / "overlay" / "kernel"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "cover", str(scratch)], check=True)


@pytest.mark.parametrize("i", range(50))
def test_next(i):
    pass
"""


def test_a_run_that_cannot_go_on_stops_with_one_error(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gate("kernel", kernel_reason())
    pytester.makepyfile(test_breaks=BREAKS_EVERY_SETUP)
    result = _run_in_place(pytester, tmp_path_factory.mktemp("basetemp"))
    # Its own teardown errs, then three setups fail, and the run stops.
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines(
        [
            "*pytest-overlay stopped the run: the last 3 tests could not be sandboxed in place, "
            "the last one with: *Read-only file system*"
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


TOOL_STATE = """
from pathlib import Path

HERE = Path(__file__).parent


def test_writes_tool_state():
    # What Hypothesis does on a fresh checkout: the directory does not exist yet.
    (HERE / ".hypothesis" / "examples").mkdir(parents=True)
    (HERE / ".hypothesis" / "examples" / "abc").write_text("failing example")
    (HERE / ".coverage.worker1").write_text("coverage data")
    (HERE / "results").mkdir()
    (HERE / "results" / "first").write_text("1")
    (HERE / "other.txt").write_text("not tool state")


def test_sees_it_next_time():
    assert (HERE / ".hypothesis" / "examples" / "abc").exists() == REMEMBERS
    assert (HERE / "results" / "first").exists()
    assert not (HERE / "other.txt").exists()
    (HERE / "results" / "second").write_text("2")
"""


@pytest.mark.parametrize("tool_state", ["disk", "discard"])
def test_tool_state_and_created_pass_through_reach_the_disk(
    pytester: pytest.Pytester, tool_state: str
) -> None:
    gate("kernel", kernel_reason())
    remembers = tool_state == "disk"
    pytester.makepyfile(test_state=f"REMEMBERS = {remembers}\n{TOOL_STATE}")
    # --overlay-passthrough of a directory that does not exist yet: a test creates it.
    result = pytester.runpytest_subprocess(
        *CHILD_OPTIONS,
        "-p",
        "no:hypothesispytest",
        "--overlay",
        "--overlay-passthrough=results",
        f"--overlay-tool-state={tool_state}",
        timeout=300,
    )
    result.assert_outcomes(passed=2)
    root = pytester.path
    assert (root / ".hypothesis" / "examples" / "abc").exists() == remembers
    assert (root / ".coverage.worker1").exists() == remembers
    assert sorted(p.name for p in (root / "results").iterdir()) == ["first", "second"]
    assert not (root / "other.txt").exists()


BENCHMARK_STATE = """
from pathlib import Path

HERE = Path(__file__).parent


def _mounted_at(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def test_writes_saved_runs():
    # pytest-benchmark writes .benchmarks at the end of the run; a test that writes there
    # itself still reaches the disk, though the directory is not bound into the view.
    assert _mounted_at(HERE / ".benchmarks") != CARRIED
    assert _mounted_at(HERE / ".hypothesis")
    (HERE / ".benchmarks" / "Linux-CPython").mkdir()
    (HERE / ".benchmarks" / "Linux-CPython" / "0002_new.json").write_text("new run")
    (HERE / ".benchmarks" / "0001_old.json").write_text("rewritten")


def test_reads_nothing_written():
    assert (HERE / ".benchmarks" / "Linux-CPython" / "0002_new.json").read_text() == "new run"
    assert (HERE / ".benchmarks" / "0001_old.json").read_text() == "rewritten"
"""


@pytest.mark.parametrize("by_name", [False, True], ids=["carried", "passed through by name"])
def test_saved_benchmark_runs_are_carried_not_bound(
    pytester: pytest.Pytester, by_name: bool
) -> None:
    """``.benchmarks`` exists when the run starts: unless named a pass-through directory, it
    is not bound into the views (no busy-check moves for it), and what a test writes there
    reaches the disk after the test, for the next test and the next run."""
    gate("kernel", kernel_reason())
    (pytester.path / ".benchmarks").mkdir()
    (pytester.path / ".benchmarks" / "0001_old.json").write_text("old run")
    (pytester.path / ".hypothesis").mkdir()
    pytester.makepyfile(test_state=f"CARRIED = {not by_name}\n{BENCHMARK_STATE}")
    named = ["--overlay-passthrough=.benchmarks"] if by_name else []
    result = pytester.runpytest_subprocess(
        *CHILD_OPTIONS, "-p", "no:randomly", "--overlay", *named, timeout=300
    )
    result.assert_outcomes(passed=2)
    saved = pytester.path / ".benchmarks"
    assert (saved / "Linux-CPython" / "0002_new.json").read_text() == "new run"
    assert (saved / "0001_old.json").read_text() == "rewritten"


def test_tool_state_setting_written_wrong_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--overlay-tool-state=keep")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--overlay-tool-state / overlay_tool_state: unknown value 'keep'; choose one of disk, "
            "discard*"
        ]
    )
