"""Mistakes and surprises get a short message that says what is wrong and what to do.

Each case runs a real child pytest (pytester) and checks the message, that it is short, and
that none of the plugin's own frames reach the user.
"""

from __future__ import annotations

import pytest

from tests._gates import fuse_reason, gate, kernel_reason
from tests._run import CHILD_OPTIONS


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*CHILD_OPTIONS, *args, timeout=120)


def _assert_no_plugin_frames(result: pytest.RunResult) -> None:
    output = "\n".join(result.outlines + result.errlines)
    assert "Traceback" not in output, output
    assert "pytest_overlay/" not in output, output
    assert "During handling of the above exception" not in output, output


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('lower=["src"]', "*unknown argument lower=*'src'*; did you mean lowers=?*"),
        ('"src"', "*positional arguments ('src') are not accepted; name them*lowers=*"),
        ("lowers=42", "*lowers=42 is a int; lowers= takes a directory or a list of directories*"),
        ("layers=5", "*layers=5 is a int; layers= takes a fixture name or a list of them*"),
        ('backend="kernal"', "*backend='kernal' is not a backend; choose one of auto, kernel*"),
    ],
    ids=["misspelled", "positional", "lowers-type", "layers-type", "backend"],
)
def test_a_marker_written_wrong_names_the_test_and_the_arguments(
    pytester: pytest.Pytester, marker: str, expected: str
) -> None:
    pytester.mkdir("src")
    pytester.makepyfile(
        f"""
        import pytest

        def test_fine():
            pass

        @pytest.mark.overlay({marker})
        def test_marked(overlay_root):
            pass
        """
    )
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: the overlay marker is written wrong:",
            f"*::test_marked: @pytest.mark.overlay: {expected.lstrip('*')}",
            "It accepts lowers=<a directory or a list of them*>, backend=<auto | kernel | fuse "
            "| copy>, layers=<a list of fixture names>.",
        ]
    )
    assert len(result.errlines) < 8, result.errlines
    _assert_no_plugin_frames(result)


def test_a_marker_written_wrong_under_xdist_fails_its_test(pytester: pytest.Pytester) -> None:
    # A worker cannot stop the run with a usage error; the test fails with the message.
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.overlay(lower=".")
        def test_marked(overlay_root):
            pass

        def test_fine():
            pass
        """
    )
    result = _run(pytester, "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*::test_marked: @pytest.mark.overlay: unknown argument lower='.'; did you mean*",
            "It accepts lowers=*",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, errors=1)


def test_a_class_marker_is_checked_once_for_its_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.overlay(lowerz=".")
        class TestGroup:
            def test_a(self):
                pass

            def test_b(self):
                pass
        """
    )
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = "\n".join(result.errlines)
    assert text.count("unknown argument lowerz='.'; did you mean lowers=?") == 2, text


@pytest.mark.parametrize("size", ["1T", "512k", "10%"])
def test_upper_size_takes_what_tmpfs_takes(pytester: pytest.Pytester, size: str) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = _run(pytester, f"--overlay-upper-size={size}")
    assert result.ret == pytest.ExitCode.OK, result.outlines


def test_upper_size_that_is_not_a_size_says_how_to_write_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = _run(pytester, "--overlay-upper-size=2 gigs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'2 gigs' is not a size*such as 512M, 2G, 1T or 10%*"])


def test_a_full_upper_layer_names_the_limit(pytester: pytest.Pytester) -> None:
    gate("kernel", kernel_reason())
    pytester.makepyfile(
        """
        def test_fills(overlay_root):
            (overlay_root / "big").write_bytes(b"x" * (4 << 20))
        """
    )
    result = _run(pytester, "--overlay-backend=kernel", "--overlay-upper-size=1M")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*The test's upper layer is full: it is a tmpfs limited to 1M "
            "(--overlay-upper-size / overlay_upper_size). Raise the limit*"
        ]
    )


LINGER = """
import subprocess

def test_leaves_a_process(overlay_root):
    # The shell exits at once; the sleep it leaves behind keeps its directory in the view.
    subprocess.run("sleep 3 &", shell=True, cwd=overlay_root, check=True)
"""


def test_a_lingering_process_is_reported_in_one_line(pytester: pytest.Pytester) -> None:
    """A view detached lazily is reported in the summary, named after the test and the
    process, not warned about: under ``filterwarnings = error`` the test still passes."""
    gate("kernel", kernel_reason())
    pytester.makepyfile(test_linger=LINGER)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = _run(pytester, "--overlay-backend=kernel")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-overlay =*",
            "test_linger.py::test_leaves_a_process: * was still in use (by pid * (*sleep 3*) "
            "through *), so it was detached lazily*",
        ]
    )
    _assert_no_plugin_frames(result)


SQLITE = """
import sqlite3

KEPT = []

def test_leaves_a_connection(overlay_root):
    # Common in real suites: a connection kept in a module, open in pytest itself.
    KEPT.append(sqlite3.connect(overlay_root / "db.sqlite"))
    KEPT[0].execute("create table t (x)")
"""


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("kernel", "* was still in use (by this pytest process (pid *) through */db.sqlite), so *"),
        ("fuse", "* was still in use (by this pytest process (pid *) through */db.sqlite), so *"),
        ("copy", "* was still in use by this pytest process (pid *) through */db.sqlite when *"),
    ],
)
def test_a_file_left_open_in_pytest_is_named(
    pytester: pytest.Pytester, backend: str, expected: str
) -> None:
    # Issue 21: the view was "still in use" by nobody named (kernel, fuse), or by pytest's own
    # command line (copy); the holder is this process, through the file it keeps open.
    gate(backend, kernel_reason() if backend == "kernel" else None)
    if backend == "fuse":
        gate("fuse", fuse_reason())
    pytester.makepyfile(test_sqlite=SQLITE)
    result = _run(pytester, f"--overlay-backend={backend}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= pytest-overlay =*", f"test_sqlite.py::*{expected}"])
    assert "-m pytest" not in result.stdout.str()
    _assert_no_plugin_frames(result)


FAILS = "def test_fails(overlay_root):\n    (overlay_root / 'f').write_text('x')\n    assert 0\n"


def _block_the_store(pytester: pytest.Pytester) -> None:
    # A file where the kept-layer store's directory goes: keeping the layer fails for real.
    (pytester.path / ".pytest_cache" / "d").mkdir(parents=True)
    (pytester.path / ".pytest_cache" / "d" / "overlay").write_text("in the way\n")


def test_a_layer_that_cannot_be_kept_is_a_warning_at_the_test(pytester: pytest.Pytester) -> None:
    """What the user must act on stays a warning, attributed to the test's file and line."""
    gate("kernel", kernel_reason())
    pytester.makepyfile(test_keep=FAILS)
    _block_the_store(pytester)
    result = _run(pytester, "--overlay-backend=kernel", "-W", "default")
    result.assert_outcomes(failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*test_keep.py:*", "*OverlayWarning: test_keep.py::test_fails: could not keep the test's*"]
    )
    assert "pytest_overlay/" not in result.stdout.str()


def test_overlay_warning_as_an_error_is_one_line(pytester: pytest.Pytester) -> None:
    gate("kernel", kernel_reason())
    pytester.makepyfile(test_keep=FAILS)
    _block_the_store(pytester)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = _run(pytester, "--overlay-backend=kernel")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*OverlayWarning (an error under filterwarnings): test_keep.py::test_fails: could not*"]
    )


def test_help_shows_a_percent_sign_once(pytester: pytest.Pytester) -> None:
    # Issue 21: the ini list of `pytest --help` said "10%%" (argparse's escape, shown raw).
    result = _run(pytester, "--help")
    text = result.stdout.str()
    assert "10%%" not in text, text
    # The option and its ini twin, each with the example intact.
    assert text.count("1T, 10%;") == 2, text
