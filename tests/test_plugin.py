"""Plugin behaviour through pytester: header, options, markers, failure reports, cleanup.

Every run that mounts goes through ``runpytest_subprocess`` so nothing leaks into this process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._gates import gate, gate_backend, kernel_reason
from tests._run import CHILD_OPTIONS
from tests._sample_project import overlay_mounts


@pytest.fixture
def kernel() -> None:
    gate("kernel", kernel_reason())


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*CHILD_OPTIONS, *args, timeout=120)


@pytest.mark.usefixtures("kernel")
def test_header_names_backend_and_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(overlay_root): pass")
    result = run(pytester)
    result.stdout.fnmatch_lines(["collected 1 item", "overlay: backend=kernel (root)"])
    result = run(pytester, "--overlay-backend=copy")
    result.stdout.fnmatch_lines(
        ["overlay: backend=copy (a copy of the tree per session, reset after each test)"]
    )


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (("--overlay-backend=nfs",), "", "*unknown overlay backend 'nfs'; choose one of auto*"),
        ((), "overlay_backend = zfs", "*unknown overlay backend 'zfs'*"),
        (("--overlay-lower=missing",), "", "*lower layer 'missing' does not exist*"),
        ((), "overlay_lowers = afile.txt", "*lower layer * is not a directory*"),
        (("--overlay-lower=.", "--overlay-lower=sub"), "", "*lower layers * overlap*"),
        (("--overlay-userns=sometimes",), "", "*overlay_userns: unknown value 'sometimes'*"),
    ],
)
def test_configuration_mistakes_are_usage_errors(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makefile(".txt", afile="x")
    pytester.mkdir("sub")
    pytester.makepyfile("def test_nothing(overlay_root): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("backend", ["kernel", "copy"])
def test_failed_test_reports_its_changes(pytester: pytest.Pytester, backend: str) -> None:
    gate_backend(backend)
    pytester.makepyfile(data="VALUE = 1\n")
    pytester.makepyfile(
        """
        def test_breaks(overlay_root):
            (overlay_root / "data.py").write_text("VALUE = 2\\n")
            (overlay_root / "new.txt").write_text("new\\n")
            assert False, "deliberate"

        def test_passes(overlay_root):
            (overlay_root / "other.txt").write_text("x")
        """
    )
    result = run(pytester, f"--overlay-backend={backend}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"*- overlay changes ({backend}) -*", "M data.py", "A new.txt", "*short test summary*"]
    )
    assert "other.txt" not in result.stdout.str()
    assert (pytester.path / "data.py").read_text().strip() == "VALUE = 1"


@pytest.mark.parametrize("backend", ["kernel", "copy"])
def test_marker_and_ini_choose_lowers(pytester: pytest.Pytester, backend: str) -> None:
    gate_backend(backend)
    for layer, files in {"top": {"shared": "top", "t": "t"}, "base": {"shared": "base"}}.items():
        (pytester.path / layer).mkdir()
        for name, text in files.items():
            (pytester.path / layer / name).write_text(text)
    pytester.makeini("[pytest]\noverlay_lowers = base\n")
    pytester.makepyfile(
        """
        import pytest

        def test_ini_lower(overlay_root):
            assert overlay_root.lowers[0].name == "base"
            assert (overlay_root / "shared").read_text() == "base"
            assert overlay_root.path.name == "base"

        @pytest.mark.overlay(lowers=["top", "base"])
        def test_marker_lowers(overlay_root):
            assert [p.name for p in overlay_root.lowers] == ["top", "base"]
            assert (overlay_root / "shared").read_text() == "top"
            (overlay_root / "t").unlink()
            (overlay_root / "shared").unlink()
            assert sorted(overlay_root.diff().deleted) == ["shared", "t"]
            # The topmost lower's deletion uncovers nothing: the whole stack is hidden.
            assert not (overlay_root / "shared").exists()
        """
    )
    result = run(pytester, f"--overlay-backend={backend}")
    result.assert_outcomes(passed=2)
    assert (pytester.path / "top" / "t").read_text() == "t"


@pytest.mark.usefixtures("kernel")
def test_marker_backend_overrides_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.overlay(backend="copy")
        def test_copy(overlay_root):
            assert overlay_root.backend == "copy"

        def test_default(overlay_root):
            assert overlay_root.backend == "kernel"
        """
    )
    run(pytester).assert_outcomes(passed=2)


@pytest.mark.usefixtures("kernel")
def test_a_copy_after_a_kernel_view_leaves_the_session_scratch_out(
    pytester: pytest.Pytester,
) -> None:
    # pytester's basetemp is inside the project: the copy walked into the kernel backend's
    # scratch directory (its views mounted there) and failed with RecursionError.
    pytester.makepyfile(
        """
        import pytest

        def test_kernel(overlay_root):
            (overlay_root / "x").write_text("1")

        @pytest.mark.overlay(backend="copy")
        def test_copy(overlay_root):
            assert not (overlay_root / "x").exists()
        """
    )
    run(pytester).assert_outcomes(passed=2)


@pytest.mark.usefixtures("kernel")
def test_nothing_left_behind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(20))
        def test_write(overlay_root, i):
            (overlay_root / f"f{i}").write_text("x" * 100_000)
            (overlay_root / "ro").mkdir(mode=0o500)
            (overlay_root / "zero").mkdir(mode=0)
        """
    )
    mounts = overlay_mounts()
    for backend in ("kernel", "copy"):
        run(pytester, f"--overlay-backend={backend}").assert_outcomes(passed=20)
    assert overlay_mounts() == mounts
    # pytest keeps its basetemp; what we made inside it must be gone.
    leftovers = [path for path in pytester.path.rglob("*") if "overlay" in path.parts]
    assert sorted({p.name for p in leftovers}) == ["overlay"]


BUSY_REPORTS = {
    "kernel": "*::test_leaves_a_process_behind: * was still in use (by pid * (sh -c sleep 6;*"
    "through *), so it was detached lazily*",
    "fuse": "*::test_leaves_a_process_behind: * was still in use (by pid * (sh -c sleep 6;*"
    "through *), so it was detached lazily*",
    # A copy cannot be detached: it is set aside, and the next test gets a fresh one.
    "copy": "*::test_leaves_a_process_behind: *still in use by pid * (sh -c sleep 6;*set aside*"
    "fresh copy*",
}


@pytest.mark.parametrize("backend", BUSY_REPORTS)
def test_busy_mount_is_detached_and_reported(pytester: pytest.Pytester, backend: str) -> None:
    """Not a warning: the plugin dealt with it, and ``filterwarnings = error`` (set here) must
    not turn it into an error of the test; the summary names the process."""
    gate_backend(backend)
    pytester.makepyfile(
        """
        import subprocess
        import time

        STILL_RUNNING = []

        def test_leaves_a_process_behind(overlay_root):
            (overlay_root / "seen").write_text("by the process")
            STILL_RUNNING.append(
                subprocess.Popen(
                    # Longer than the 5 s a closing FUSE view waits for its server.
                    ["sh", "-c", "sleep 6; cat seen > /dev/null && echo read > $OUT"],
                    cwd=overlay_root,
                    start_new_session=True,
                )
            )

        def test_next(overlay_root):
            assert not (overlay_root / "seen").exists()

        def test_the_process_still_had_its_view():
            STILL_RUNNING[0].wait()
        """
    )
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    out = pytester.path / "out.txt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OUT", str(out))
        result = run(pytester, "-p", "no:randomly", f"--overlay-backend={backend}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*= pytest-overlay =*", BUSY_REPORTS[backend]])
    # The process kept working in the detached view (the set-aside copy) after its test ended.
    assert out.read_text() == "read\n"


@pytest.mark.usefixtures("kernel")
def test_plugin_is_idle_without_the_fixture(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTER_MOUNT_NS", os.readlink("/proc/self/ns/mnt"))
    pytester.makepyfile(
        """
        import os

        def test_plain():
            with open("/proc/self/uid_map") as f:
                assert f.read().split()[:3] == ["0", "0", "4294967295"]
            assert os.readlink("/proc/self/ns/mnt") == os.environ["OUTER_MOUNT_NS"]
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_overlay_is_a_path_like(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import sqlite3
        import subprocess
        from pathlib import Path

        def test_paths(overlay_root):
            assert isinstance(overlay_root.path, Path)
            assert os.fspath(overlay_root) == str(overlay_root) == os.fspath(overlay_root.path)
            with open(overlay_root / "f", "w") as f:
                f.write("x")
            out = subprocess.run(["ls"], cwd=overlay_root, capture_output=True, text=True)
            assert "f" in out.stdout.split()
            sqlite3.connect(overlay_root / "db").close()
            assert repr(overlay_root).startswith("<Overlay ")
        """
    )
    run(pytester, "--overlay-backend=copy").assert_outcomes(passed=1)


def test_public_api() -> None:
    import pytest_overlay

    for name in pytest_overlay.__all__:
        obj = getattr(pytest_overlay, name)
        if name != "__version__":
            assert obj.__module__ == "pytest_overlay", name
            assert obj.__doc__, name
    assert os.path.exists(Path(pytest_overlay.__file__).parent / "py.typed")


@pytest.mark.parametrize("backend", ["kernel", "copy"])
def test_hostile_names_and_fifos_in_a_failure_report(
    pytester: pytest.Pytester, backend: str
) -> None:
    gate_backend(backend)
    pytester.makepyfile(
        r"""
        import os

        def test_hostile(overlay_root):
            root = os.fsencode(overlay_root)
            os.mkfifo(overlay_root / "pipe")
            open(os.path.join(root, b"evil\x1b[2J\xff\nname"), "w").write("\x1b]0;title\x07x\n")
            os.symlink("/etc/passwd", overlay_root / "out")
            assert False
        """
    )
    result = run(pytester, f"--overlay-backend={backend}")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "\x1b" not in output
    assert "A evil\\x1b[2J\\xff\\nname" in output
    assert "A pipe" in output
    assert "Symlink out -> /etc/passwd" in output
    assert "root:" not in output  # the symlink was not followed


def test_a_diff_in_a_failed_assertion_is_one_short_line(pytester: pytest.Pytester) -> None:
    # Issue 21: the dataclass repr of every change ran over several lines in the rewrite.
    pytester.makepyfile(
        """
        def test_writes(overlay_root):
            for i in range(8):
                (overlay_root / f"f{i}.txt").write_text("x")
            assert not overlay_root.diff()
        """
    )
    result = run(pytester, "--overlay-backend=copy")
    result.assert_outcomes(failed=1)
    shown = "TreeDiff(A f0.txt, A f1.txt, A f2.txt, A f3.txt, A f4.txt, ... 3 more)"
    result.stdout.fnmatch_lines([f"E * assert not {shown}", f"E * where {shown} = diff()"])
    assert "Change(" not in result.stdout.str()


MANY = """
def test_many(overlay_root):
    for i in range(500):
        (overlay_root / f"f{i:03}.txt").write_text(f"line {i}\\n")
    assert 0
"""
CUT = (
    "... * more lines not shown, of 500 changes: 500 added (-v shows more, "
    "overlay_diff_lines = 0 shows all; or `pytest-overlay show 'test_many.py::test_many'`)"
)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        ((), 200),
        (("--tb=short",), 200),
        (("-v",), 1000),
        (("-vv",), 1500),
        (("--tb=line",), 1),
        (("--tb=no",), 0),
    ],
    ids=["default", "tb-short", "v", "vv", "tb-line", "tb-no"],
)
def test_a_long_failure_section_is_cut_as_tb_and_v_ask(
    pytester: pytest.Pytester, args: tuple[str, ...], shown: int
) -> None:
    # Issue 21: 500 new files gave some 700 lines whatever --tb said.
    pytester.makepyfile(test_many=MANY)
    result = run(pytester, "--overlay-backend=copy", *args)
    result.assert_outcomes(failed=1)
    lines = result.outlines
    if shown == 0:
        assert not any("overlay changes" in line for line in lines)
        return
    start = next(i for i, line in enumerate(lines) if "overlay changes (copy)" in line) + 1
    section = lines[start : start + shown]
    if "--tb=line" in args:
        assert section == [
            "500 changes: 500 added; `pytest-overlay show 'test_many.py::test_many'` shows them"
        ]
        return
    assert section[:2] == ["A f000.txt", "A f001.txt"]
    if shown == 1500:  # all of it: the list, a blank line, and five lines for each file
        assert lines[start + 500 : start + 502] == ["", "--- /dev/null"]
        assert "more lines not shown" not in result.stdout.str()
        return
    if shown < 500:
        assert lines[start + shown - 1] == f"A f{shown - 1:03}.txt", "the list, cut"
    else:
        assert lines[start + 499 : start + 502] == ["A f499.txt", "", "--- /dev/null"]
    pytest_lines = pytest.LineMatcher([lines[start + shown]])
    pytest_lines.fnmatch_lines([CUT])
    if "--tb=short" in args:
        assert "--- /dev/null" not in result.stdout.str()


def test_a_failure_section_survives_an_ascii_terminal(pytester: pytest.Pytester) -> None:
    # Issue 21: pytest writes text its output cannot encode as one line of escapes.
    pytester.makepyfile(
        """
        def test_writes(overlay_root):
            (overlay_root / "a.txt").write_text("h\\u00e9llo\\nworld\\n")
            assert 0
        """
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONIOENCODING", "ascii")
        result = run(pytester, "--overlay-backend=copy")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*overlay changes (copy)*", "A a.txt", "", "--- /dev/null", "+++ b/a.txt", "@@ *"]
    )
    result.stdout.fnmatch_lines(["+h\\xe9llo", "+world"])


def test_the_copy_backend_leaves_a_virtualenv_out(pytester: pytest.Pytester) -> None:
    # Issue 21: a project's .venv was copied whole each session; tests run the real one.
    venv = pytester.path / ".venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "big.bin").write_bytes(b"\0" * (1 << 20))
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "a.txt").write_text("a\n")
    pytester.makepyfile(
        """
        def test_view(overlay_root):
            assert (overlay_root / "src" / "a.txt").read_text() == "a\\n"
            assert not (overlay_root / ".venv").exists()
            (overlay_root / "src" / "b.txt").write_text("b")
            assert str(overlay_root.diff()) == "A src/b.txt"

        def test_next_one_is_pristine(overlay_root):
            assert not overlay_root.diff()
            assert not (overlay_root / ".venv").exists()
        """
    )
    result = run(pytester, "--overlay-backend=copy")
    result.assert_outcomes(passed=2)
    assert (venv / "lib" / "big.bin").stat().st_size == 1 << 20


UNVERIFIED = """
from pytest_overlay._backends import copying
from pytest_overlay._errors import ResetUnverifiedError


def _never_the_same(rel, old, now):
    # A reset bug, injected: every check of a restored path fails.
    raise ResetUnverifiedError(rel, "differs from the lowers after the reset")


copying._check_same = _never_the_same
"""


def test_a_copy_reset_that_cannot_verify_itself_is_said_once(pytester: pytest.Pytester) -> None:
    # Issue 21: it raised OSError with invented errnos and release() swallowed it, so a reset
    # bug became a silent full copy per test.
    pytester.makeconftest(UNVERIFIED)
    (pytester.path / "data.txt").write_text("x\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_changes(overlay_root, n):
            assert (overlay_root / "data.txt").read_text() == "x\\n"
            (overlay_root / "data.txt").write_text(f"changed {n}\\n")
        """
    )
    result = run(pytester, "--overlay-backend=copy")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-overlay =*",
            "*the copy backend could not reset its copy after a test (data.txt: differs from the "
            "lowers after the reset), so it made a fresh copy; each such test costs a full copy "
            "of the tree. If this repeats, please report it, with the path",
        ]
    )
    assert result.stdout.str().count("could not reset its copy") == 1
