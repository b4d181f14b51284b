"""``--overlay-hermetic``, ``--overlay-report=writes`` and ``--overlay-strict``: $HOME and the
temporary directory sandboxed like the project, and every test that wrote outside its tmp_path
named.

The sample suite has the three tests of issue 24: one writes ``~/.config/tool/settings.json``,
one leaves a file in the temporary directory, one depends on the first one's file.  Every run
uses a scratch HOME and TMPDIR (never the real ones), hashed before and after; pytest's basetemp
lives in that TMPDIR, so it is left out of the hash and checked to have reached the disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_overlay import _stale
from pytest_overlay._hermetic import WritesLog
from tests import _unpriv
from tests._gates import gate, gate_backend, kernel_reason
from tests._run import Result, assert_clean, counts, pytest_argv, run, run_pytest, started
from tests._sample_project import tree_digest
from tests._unpriv import Namespace
from tests._waits import wait_for_file

REPO = Path(__file__).resolve().parent.parent

SUITE = """
import json
import tempfile
from pathlib import Path

SETTINGS = Path.home() / ".config" / "tool" / "settings.json"


def test_writes_config():
    SETTINGS.parent.mkdir(parents=True, exist_ok=True)
    SETTINGS.write_text(json.dumps({"theme": "dark"}))


def test_reads_config():
    assert json.loads(SETTINGS.read_text())["theme"] == "dark"


def test_leaves_temp_file():
    Path(tempfile.gettempdir(), "leftover.txt").write_text("left behind")


def test_keeps_to_tmp_path(tmp_path):
    (tmp_path / "scratch.txt").write_text("mine")
"""
MODULE = "test_sample.py"
WRITES, READS, LEAVES, CLEAN = (
    f"{MODULE}::test_{name}"
    for name in ("writes_config", "reads_config", "leaves_temp_file", "keeps_to_tmp_path")
)
# The dependency first, and the dependent test first: it must fail either way.  In file order
# test_reads_config runs right after test_writes_config, so it also shows that a view a test
# wrote to (its home view, only) never goes to the next test.
ORDERS = {"file-order": (), "reversed": (READS, CLEAN, LEAVES, WRITES)}
HERMETIC = ("--overlay", "--overlay-hermetic=home,tmp")


@dataclass(frozen=True)
class Scratch:
    """A project with the sample suite, and the HOME and TMPDIR its runs get."""

    project: Path
    home: Path
    tmp: Path
    user: str

    def env(self) -> dict[str, str | None]:
        # PYTHONPATH: this checkout's plugin, not the editable install's (the test user's
        # child would import that one otherwise).  PYTEST_DEBUG_TEMPROOT would move the
        # basetemp out of TMPDIR, where pass-through is what is to be shown.
        return {
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "PYTHONPATH": str(REPO),
            "PYTEST_DEBUG_TEMPROOT": None,
        }

    def digests(self) -> tuple[str, str]:
        """HOME and TMPDIR, but pytest's basetemp (pytest-of-<user>), which reaches the disk.

        TMPDIR's directory times are left out: at startup, before any test, pytest's output
        capture and the plugin's backend probe each create and remove an entry there.
        """
        return (
            tree_digest(self.home),
            tree_digest(self.tmp, skip=(f"pytest-of-{self.user}",), dir_times=False),
        )

    def run(self, *args: str, user: bool = False, cache: bool = False) -> Result:
        result = run_pytest(self.project, "-rA", *args, user=user, env=self.env(), cache=cache)
        assert_clean(result.output)
        return result


def _fill(root: Path, home: Path, tmp: Path, user: str = "root") -> None:
    (root / MODULE).write_text(SUITE)
    # pytest makes its basetemp root at the first run: here already, so that TMPDIR's own
    # modification time stays as it is.
    (tmp / f"pytest-of-{user}").mkdir(mode=0o700)
    (root / "pytest.ini").write_text("[pytest]\n")
    (home / ".config").mkdir()
    (home / ".profile").write_text("# the user's own\n")
    (tmp / "someone-elses.txt").write_text("not ours\n")


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    gate("kernel", kernel_reason())
    project, home, tmp = paths = [tmp_path / name for name in ("project", "home", "tmp")]
    for path in paths:
        path.mkdir()
    _fill(project, home, tmp)
    return Scratch(project, home, tmp, user="root")


@pytest.fixture
def user_scratch() -> Iterator[Scratch]:
    gate("kernel", kernel_reason())
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        project, home, tmp = paths = [_unpriv.make_user_dir(workdir) for _ in range(3)]
        _fill(project, home, tmp, user=_unpriv.TEST_USER)
        uid, gid = _unpriv.ensure_test_user()
        for path in paths:
            for directory, dirnames, filenames in os.walk(path):
                for name in [*dirnames, *filenames]:
                    os.lchown(Path(directory, name), uid, gid)
        yield Scratch(project, home, tmp, user=_unpriv.TEST_USER)


def _failed(output: str) -> set[str]:
    return set(re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE))


def _check_hermetic_run(scratch: Scratch, result: Result, report: Path) -> None:
    """The dependent test fails, the report names the two writers and their paths, and the
    pass-through basetemp reached the disk."""
    assert counts(result.stdout) == {"passed": 3, "failed": 1}, result.stdout
    assert _failed(result.stdout) == {READS}, result.stdout
    data = json.loads(report.read_text())
    assert data["tests"] == {
        WRITES: [
            {
                "area": "home",
                "path": str(scratch.home / ".config/tool/settings.json"),
                "change": "added",
            }
        ],
        LEAVES: [{"area": "tmp", "path": str(scratch.tmp / "leftover.txt"), "change": "added"}],
    }
    table = result.stdout.split("pytest-overlay writes", 1)[1]
    assert re.search(rf"^{re.escape(WRITES)} +home +{scratch.home}/\.config/tool/", table, re.M)
    assert re.search(rf"^{re.escape(LEAVES)} +tmp +{scratch.tmp}/leftover\.txt$", table, re.M)
    assert "2 tests wrote outside their tmp_path" in table
    base = scratch.tmp / f"pytest-of-{scratch.user}"
    kept = {p.resolve() for p in base.glob("pytest-[0-9]*/**/scratch.txt")}
    assert [p.read_text() for p in kept] == ["mine"], "tmp_path did not reach the disk"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("backend", ["kernel", "fuse"])
def test_home_and_tmp_stay_untouched_and_the_dependency_shows(
    scratch: Scratch, order: str, backend: str
) -> None:
    gate_backend(backend)
    before = scratch.digests()
    report = scratch.project.parent / "writes.json"
    result = scratch.run(
        *HERMETIC,
        f"--overlay-backend={backend}",
        f"--overlay-report=writes:{report}",
        *ORDERS[order],
    )
    assert f"overlay: hermetic: home ({scratch.home}), tmp ({scratch.tmp}) sandboxed too" in (
        result.stdout
    )
    _check_hermetic_run(scratch, result, report)
    assert scratch.digests() == before


def test_without_the_option_the_dependency_hides_and_home_changes(scratch: Scratch) -> None:
    """The control: in place without --overlay-hermetic, the order hides the dependency."""
    result = scratch.run("--overlay")
    assert counts(result.stdout) == {"passed": 4}, result.stdout
    assert (scratch.home / ".config/tool/settings.json").is_file()
    assert (scratch.tmp / "leftover.txt").is_file()


@pytest.mark.parametrize("order", ORDERS)
def test_strict_mode_fails_the_tests_that_wrote(scratch: Scratch, order: str) -> None:
    before = scratch.digests()
    result = scratch.run(*HERMETIC, "--overlay-strict", *ORDERS[order])
    assert counts(result.stdout) == {"passed": 1, "failed": 3}, result.stdout
    assert _failed(result.stdout) == {WRITES, LEAVES, READS}, result.stdout
    assert "pytest-overlay strict mode (--overlay-strict)" in result.stdout
    assert f"home: {scratch.home}/.config/tool/settings.json (added)" in result.stdout
    assert f"tmp: {scratch.tmp}/leftover.txt (added)" in result.stdout
    assert scratch.digests() == before


def test_strict_mode_errs_a_finalizer_that_writes(scratch: Scratch) -> None:
    (scratch.project / "test_finalizer.py").write_text(
        "from pathlib import Path\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def stamp():\n"
        "    yield\n"
        "    (Path.home() / 'stamp').write_text('x')\n"
        "def test_uses_stamp(stamp):\n"
        "    pass\n"
        "def test_fails_and_writes():\n"
        "    (Path.home() / 'other').write_text('x')\n"
        "    assert False\n"
    )
    result = scratch.run(*HERMETIC, "--overlay-strict", "test_finalizer.py")
    # The finalizer's write errs the teardown; a test that fails anyway is not failed twice.
    assert counts(result.stdout) == {"passed": 1, "failed": 1, "error": 1}, result.stdout
    assert "ERROR test_finalizer.py::test_uses_stamp" in result.stdout
    assert f"home: {scratch.home}/stamp (added)" in result.stdout
    assert not (scratch.home / "stamp").exists()


def test_under_xdist(scratch: Scratch) -> None:
    before = scratch.digests()
    report = scratch.project.parent / "writes.json"
    result = scratch.run(*HERMETIC, "-n", "2", f"--overlay-report=writes:{report}")
    _check_hermetic_run(scratch, result, report)
    assert scratch.digests() == before


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_as_an_ordinary_user(user_scratch: Scratch, xdist: Sequence[str]) -> None:
    before = user_scratch.digests()
    report = user_scratch.project.parent / "writes.json"
    result = user_scratch.run(*HERMETIC, *xdist, f"--overlay-report=writes:{report}", user=True)
    assert "overlay: backend=kernel (user namespace)" in result.output, result.output
    _check_hermetic_run(user_scratch, result, report)
    assert user_scratch.digests() == before


def test_project_inside_home(tmp_path: Path) -> None:
    """The usual layout: the project in HOME, the home view under the project's view."""
    gate("kernel", kernel_reason())
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    project = home / "src" / "app"
    for path in (project, tmp):
        path.mkdir(parents=True)
    _fill(project, home, tmp)
    (project / "test_project.py").write_text(
        "from pathlib import Path\n"
        "def test_writes_project():\n"
        "    Path(__file__).with_name('made.txt').write_text('x')\n"
        "def test_project_is_pristine():\n"
        "    assert not Path(__file__).with_name('made.txt').exists()\n"
    )
    scratch = Scratch(project, home, tmp, user="root")
    digest = tree_digest(home, skip=(".pytest_cache", "__pycache__"), dir_times=False)
    report = tmp_path / "writes.json"
    result = scratch.run(*HERMETIC, f"--overlay-report=writes:{report}", cache=True)
    assert counts(result.stdout) == {"passed": 5, "failed": 1}, result.stdout
    data = json.loads(report.read_text())["tests"]
    made = str(project / "made.txt")
    assert data["test_project.py::test_writes_project"][0] == {
        "area": "project",
        "path": made,
        "change": "added",
    }
    assert data[WRITES][0]["area"] == "home"
    assert tree_digest(home, skip=(".pytest_cache", "__pycache__"), dir_times=False) == digest
    # pytest's cache, inside both views, reached the disk: --lf finds the failure.
    rerun = scratch.run(*HERMETIC, "--lf", cache=True)
    assert counts(rerun.stdout) == {"failed": 1}, rerun.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--overlay-hermetic=home",), {}, "--overlay-hermetic (or its overlay_* ini setting)"),
        (("--overlay", "--overlay-hermetic=home,var"), {}, "unknown area 'var'"),
        (("--overlay", "--overlay-report=all"), {}, "'all' is not a report"),
        (
            ("--overlay", "--overlay-hermetic=home"),
            {"HOME": "/nonexistent"},
            "HOME ('/nonexistent') is not an existing directory",
        ),
        (("--overlay", "--overlay-hermetic=home"), {"HOME": "/"}, "is the root directory"),
    ],
    ids=["no-overlay", "unknown-area", "bad-report", "no-home", "home-is-root"],
)
def test_mistakes_are_usage_errors(
    scratch: Scratch, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_pytest(
        scratch.project,
        *args,
        env={**scratch.env(), **env},
        expect_rc=pytest.ExitCode.USAGE_ERROR,
    )
    assert message in result.output, result.output
    assert_clean(result.output)


@dataclass
class _Report:
    """What :class:`WritesLog` reads of a teardown report."""

    nodeid: str
    overlay_writes: list[dict[str, str]]
    when: str = "teardown"


def test_table_and_json_of_the_writes(tmp_path: Path) -> None:
    log = WritesLog()
    many = [{"area": "tmp", "path": f"/tmp/f{i}", "change": "added"} for i in range(7)]
    log.add(_Report("t.py::test_many", many))  # type: ignore[arg-type]
    log.add(_Report("t.py::test_none", []))  # type: ignore[arg-type]
    table = log.table()
    assert table[0] == "1 test wrote outside its tmp_path:"
    assert table[2].split() == ["t.py::test_many", "tmp", "/tmp/f0"]
    assert table[-1].strip() == "... and 2 more"
    log.write_json(tmp_path / "out" / "w.json")
    data = json.loads((tmp_path / "out" / "w.json").read_text())
    assert data == {"version": 1, "tests": {"t.py::test_many": many}}
    assert WritesLog().table() == ["no test wrote outside its tmp_path"]


# --- what a killed run leaves ---------------------------------------------------------------

KILLED = """
import os
from pathlib import Path


def test_killed_in_the_middle():
    Path({pid_file!r}).write_text(str(os.getpid()))
    import time
    time.sleep(60)
"""
SCRATCH_PARENT = Path("/var/tmp")  # where the plugin makes the scratch, outside the areas


def test_the_next_run_removes_the_scratch_directory_of_a_killed_run(
    scratch: Scratch, tmp_path: Path
) -> None:
    # TMPDIR holds pytest's basetemp, so the backends' scratch goes to /var/tmp.
    pid_file = tmp_path / "pid"  # outside both areas: reaches the disk
    (scratch.project / "test_killed.py").write_text(KILLED.format(pid_file=str(pid_file)))
    argv = pytest_argv(*HERMETIC, "test_killed.py")
    with started(argv, cwd=scratch.project, env=scratch.env()) as process:
        pid = int(wait_for_file(pid_file, process))
        made = list(SCRATCH_PARENT.glob(f"pytest-overlay-{pid}-*"))
        assert len(made) == 1, made
        os.kill(pid, signal.SIGKILL)
        process.wait()
    (left,) = made
    assert left.is_dir(), "the killed run left nothing: nothing to show"

    result = scratch.run(*HERMETIC, MODULE)

    assert counts(result.stdout) == {"passed": 3, "failed": 1}, result.stdout
    assert not left.exists(), "the killed run's scratch directory was left behind"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_a_dead_runs_own_scratch_directory_is_removed(tmp_path: Path) -> None:
    """What :func:`_stale.remove_dead_scratch` removes, and what it must leave."""
    parent, elsewhere = tmp_path / "parent", tmp_path / "elsewhere"
    parent.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep\n")
    dead = _dead_pid()
    with subprocess.Popen(["sleep", "60"]) as alive:
        try:
            kinds = {
                "dead": f"pytest-overlay-{dead}-aaaaaaaa",
                "alive": f"pytest-overlay-{alive.pid}-bbbbbbbb",
                "theirs": f"pytest-overlay-{dead}-cccccccc",
                "locked": f"pytest-overlay-{dead}-dddddddd",
                "unnamed": "pytest-overlay-eeeeeeee",
            }
            for name in kinds.values():
                (parent / name).mkdir()
                (parent / name / "upper").write_text("a layer's file\n")
            os.chown(parent / kinds["theirs"], 65534, 65534)  # nobody's
            (parent / f"pytest-overlay-{dead}-symlink1").symlink_to(elsewhere)
            # A live run in another pid namespace: its pid means nothing here, its lock does.
            lock = os.open(parent / kinds["locked"], os.O_RDONLY)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                removed = _stale.remove_dead_scratch(parent)
            finally:
                os.close(lock)
        finally:
            alive.kill()
    assert removed == [parent / kinds["dead"]]
    left = sorted(p.name for p in parent.iterdir())
    expected = {name for kind, name in kinds.items() if kind != "dead"}
    assert left == sorted({*expected, f"pytest-overlay-{dead}-symlink1"})
    assert (elsewhere / "precious").read_text() == "keep\n"
    # Once the lock is released and the sleeper is gone, those go too.
    again = {p.name for p in _stale.remove_dead_scratch(parent)}
    assert again == {kinds["locked"], kinds["alive"]}


MOUNTED_BELOW = """
import subprocess, sys
from pathlib import Path
from pytest_overlay import _stale

parent = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "cover", str(parent / sys.argv[2] / "view")], check=True)
print([p.name for p in _stale.remove_dead_scratch(parent)])
"""


def test_a_scratch_directory_with_a_mount_below_is_left(tmp_path: Path) -> None:
    gate("mount-namespace", None if os.geteuid() == 0 else "mounts need root")
    name = f"pytest-overlay-{_dead_pid()}-ffffffff"
    (tmp_path / name / "view").mkdir(parents=True)
    argv = [sys.executable, "-c", MOUNTED_BELOW, str(tmp_path), name]
    # In a private mount namespace: the tmpfs goes with it.
    result = run(argv, cwd=tmp_path, namespace=Namespace(), env={"PYTHONPATH": str(REPO)})
    assert result.stdout == "[]\n", result.output
    assert (tmp_path / name / "view").is_dir()
