"""Snapshot-layer mistakes fail each test that meets them with a few lines, not a traceback.

A failed build, a missing input, a bad layer name, a marker naming a missing fixture or one
that returns no layer: each must say what is wrong and how to fix it, name the test (and its
marker), show the build's own message and the tail of its output, and show none of
pytest-overlay's frames, in a failure section of under 25 lines.
"""

from __future__ import annotations

import re

import pytest

from tests._gates import gate, gate_backend, kernel_reason
from tests._run import CHILD_OPTIONS

MAX_SECTION_LINES = 25


def run(pytester: pytest.Pytester, *args: str, backend: str = "copy") -> pytest.RunResult:
    layers = pytester.path.parent / f"{pytester.path.name}-layers"
    return pytester.runpytest_subprocess(
        *CHILD_OPTIONS,
        f"--overlay-layer-dir={layers}",
        f"--overlay-backend={backend}",
        *args,
        timeout=120,
    )


def sections(result: pytest.RunResult) -> dict[str, list[str]]:
    """Each errored test's section of the ERRORS part, by test name."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.outlines:
        match = re.fullmatch(r"_+ ERROR at setup of (\S+) _+", line)
        if match:
            current = found.setdefault(match.group(1), [])
        elif re.fullmatch(r"[_=]{3,}.*", line):
            current = None
        elif current is not None:
            current.append(line)
    return found


def assert_short(result: pytest.RunResult, errored: list[str]) -> dict[str, str]:
    """Every test in *errored* errored in a short section without our frames; their texts."""
    output = "\n".join(result.outlines + result.errlines)
    assert "pytest_overlay/" not in output, output
    assert "During handling of the above exception" not in output, output
    assert "direct cause of the following exception" not in output, output
    assert "Traceback" not in output, output
    found = sections(result)
    assert sorted(found) == sorted(errored), output
    for _name, lines in found.items():
        assert len(lines) < MAX_SECTION_LINES, "\n".join(lines)
    return {name: "\n".join(lines) for name, lines in found.items()}


def summary(result: pytest.RunResult) -> list[str]:
    """The lines of the pytest-overlay section of the terminal summary."""
    text = "\n".join(result.outlines)
    if "= pytest-overlay =" not in text:
        return []
    part = text.split("= pytest-overlay =", 1)[1].split("\n", 1)[1]
    return part.split("\n=", 1)[0].splitlines()


FAILING_BUILD = r"""
import subprocess
import sys
from pathlib import Path

import pytest

COUNTER = Path(__file__).parent.parent / (Path(__file__).parent.name + "-builds")


def build_tools(root):
    with open(COUNTER, "a") as f:
        f.write("tools\n")
    for i in range(40):
        print(f"progress line {i}")
    subprocess.run(["sh", "-c", "echo from a subprocess; echo to stderr >&2"], check=True)
    print("the last word", file=sys.stderr)
    fetch("greetlib==2.0")


def fetch(requirement):
    raise RuntimeError(f"no network to fetch {requirement}")


@pytest.fixture(scope="session")
def tools_layer(overlay_layer):
    return overlay_layer("tools", build_tools)
"""

USES_TOOLS = """
import pytest

@pytest.mark.overlay(layers=["tools_layer"])
def test_first(overlay_root):
    pass

@pytest.mark.overlay(layers=["tools_layer"])
def test_second(overlay_root):
    pass

def test_without_layers(overlay_root):
    pass
"""


def test_failed_build_every_user_errors_in_a_few_lines(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAILING_BUILD)
    pytester.makepyfile(test_app=USES_TOOLS)
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=2)
    texts = assert_short(result, ["test_first", "test_second"])
    counter = pytester.path.parent / f"{pytester.path.name}-builds"
    assert counter.read_text() == "tools\n", "the build ran more than once"
    for name, text in texts.items():
        assert text.startswith(
            "building snapshot layer 'tools' failed: RuntimeError: no network to fetch "
            "greetlib==2.0\n"
        ), text
        # The tail of what the build and its subprocess printed, in the order written.
        assert "the build's output (last 5 of 43 lines):" in text
        assert text.index("from a subprocess") < text.index("to stderr")
        assert text.index("to stderr") < text.index("the last word")
        assert "progress line 39" in text
        assert "progress line 30" not in text
        # The user's frames, innermost last; none of ours.
        assert 'conftest.py:17 in build_tools: fetch("greetlib==2.0")' in text
        assert "conftest.py:21 in fetch: raise RuntimeError(" in text
        assert "Fix the build" in text
        assert f"needed by test_app.py::{name}: the overlay marker (test_app.py:" in text
        assert "through fixture 'tools_layer'" in text
    # The build's output is in the message, not repeated in full as captured output.
    assert "progress line 0" not in "\n".join(result.outlines)
    notices = summary(result)
    assert notices == [
        "building snapshot layer 'tools' failed: RuntimeError: no network to fetch "
        "greetlib==2.0 (each test that needs it shows why)"
    ], notices


def test_failed_build_under_xdist_gives_every_worker_the_message(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(FAILING_BUILD)
    tests = "\n".join(
        f"@pytest.mark.overlay(layers=['tools_layer'])\ndef test_{i}(overlay_root): pass\n"
        for i in range(4)
    )
    pytester.makepyfile(test_app="import pytest\n" + tests)
    result = run(pytester, "-n", "2")
    result.assert_outcomes(errors=4)
    texts = assert_short(result, [f"test_{i}" for i in range(4)])
    counter = pytester.path.parent / f"{pytester.path.name}-builds"
    assert counter.read_text() == "tools\n", "the build ran more than once"
    for text in texts.values():
        assert "RuntimeError: no network to fetch greetlib==2.0" in text
        assert "progress line 39" in text, text
    notices = [line for line in summary(result) if line.startswith("building snapshot layer")]
    assert len(notices) == 1, summary(result)


FAILING_COMMAND = r"""
import subprocess
import sys

import pytest

SCRIPT = (
    "import sys\n"
    "print('Looking in links: wheels')\n"
    "for i in range(30):\n"
    "    print(f'pip noise {i}', file=sys.stderr)\n"
    "print('ERROR: No matching distribution found for greetlib==2.0', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


def build_venv(root):
    subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True)


@pytest.fixture(scope="session")
def venv(overlay_layer):
    return overlay_layer("venv", build_venv)
"""


@pytest.mark.parametrize("backend", ["copy", "kernel"])
def test_failed_command_shows_its_status_and_output(
    pytester: pytest.Pytester, backend: str
) -> None:
    gate_backend(backend)
    pytester.makeconftest(FAILING_COMMAND)
    pytester.makepyfile(
        test_app="""
        import pytest

        pytestmark = pytest.mark.overlay(layers="venv")

        def test_app(overlay_root):
            pass
        """
    )
    result = run(pytester, backend=backend)
    result.assert_outcomes(errors=1)
    text = assert_short(result, ["test_app"])["test_app"]
    first = text.splitlines()[0]
    assert first.startswith("building snapshot layer 'venv' failed: CalledProcessError: `"), text
    assert first.endswith("` exited with status 3"), text
    assert "its stderr (last 5 of 31 lines):" in text
    assert "    ERROR: No matching distribution found for greetlib==2.0" in text
    assert "pip noise 29" in text
    assert "pip noise 25" not in text
    assert "its stdout:\n    Looking in links: wheels" in text
    assert "conftest.py:17 in build_venv: subprocess.run(" in text
    assert "subprocess.py" not in text, "a frame of the standard library"
    assert "needed by test_app.py::test_app: the overlay marker (a class's or the module's" in text


def test_build_output_stays_in_the_capture_when_it_succeeds(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import subprocess
        import pytest

        def build(root):
            print("built by print")
            subprocess.run(["echo", "built by a subprocess"], check=True)
            (root / "made").write_text("x")

        @pytest.fixture(scope="session")
        def made(overlay_layer):
            return overlay_layer("made", build)
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.overlay(layers=["made"])
        def test_fails_after_the_build(overlay_root):
            assert (overlay_root / "made").exists()
            assert False, "the test's own failure"
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*Captured stdout setup*", "built by print", "built by a subprocess"]
    )
    # Under -s nothing is captured: the build's output is shown as it is written.
    live = run(pytester, "-s", "--overlay-rebuild")
    live.assert_outcomes(failed=1)
    live.stdout.fnmatch_lines(["*built by print", "built by a subprocess", "F*"])


USES_VENV = """
import pytest

@pytest.mark.overlay(layers=["venv"])
def test_app(overlay_root):
    pass
"""


def error_of_test_app(pytester: pytest.Pytester, venv: str) -> str:
    """The error of one test whose marker names the session fixture ``venv``, returning *venv*."""
    pytester.makeconftest(
        f"import pytest\n\n@pytest.fixture(scope='session')\n"
        f"def venv(overlay_layer):\n    return {venv}\n"
    )
    pytester.makepyfile(test_app=USES_VENV)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    return assert_short(result, ["test_app"])["test_app"]


def test_missing_input_names_the_path_and_the_fix(pytester: pytest.Pytester) -> None:
    call = 'overlay_layer("venv", lambda root: None, inputs=["requirements.txt"])'
    text = error_of_test_app(pytester, call)
    assert text.startswith(
        f"overlay_layer('venv'): input 'requirements.txt' does not exist "
        f"({pytester.path / 'requirements.txt'}); inputs= names"
    ), text
    assert "create it, or correct or remove it in inputs=[...]" in text
    assert "needed by test_app.py::test_app: the overlay marker (test_app.py:3)" in text


BAD_CALLS = {
    "empty": ('"", build', "layer name '' is not valid"),
    "slash": ('"a/b", build', "layer name 'a/b' is not valid"),
    "dotdot": ('"..", build', "layer name '..' is not valid"),
    "nul": ('"a\\0b", build', "layer name 'a\\x00b' is not valid"),
    "long": ('"x" * 65, build', "layer name 'xxxxxxxx"),
    "newline": ('"venv\\n", build', "layer name 'venv\\n' is not valid"),
    "number": ("42, build", "layer name 42 is not valid"),
    "build": ('"ok", "not a function"', "build must be a function"),
    "below": ('"ok", build, below=["venv"]', "below= takes the Layer objects"),
}


def test_bad_arguments_to_overlay_layer(pytester: pytest.Pytester) -> None:
    fixtures = "\n".join(
        f"@pytest.fixture(scope='session')\ndef {name}(overlay_layer):\n"
        f"    return overlay_layer({call})\n"
        for name, (call, _) in BAD_CALLS.items()
    )
    pytester.makeconftest("import pytest\n\ndef build(root):\n    pass\n\n" + fixtures)
    tests = "\n".join(
        f"@pytest.mark.overlay(layers=['{name}'])\ndef test_{name}(overlay_root): pass\n"
        for name in BAD_CALLS
    )
    pytester.makepyfile(test_app="import pytest\n" + tests)
    result = run(pytester)
    result.assert_outcomes(errors=len(BAD_CALLS))
    texts = assert_short(result, [f"test_{name}" for name in BAD_CALLS])
    for name, (_, message) in BAD_CALLS.items():
        text = texts[f"test_{name}"]
        assert message in text, text
        assert f"needed by test_app.py::test_{name}: the overlay marker" in text, text
    assert "such as 'a-b'" in texts["test_slash"]
    assert "1 to 64 letters, digits, '_', '.' or '-'" in texts["test_long"]


def test_misspelled_layer_fixture_points_at_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def tools_layer(overlay_layer):
            return overlay_layer("tools", lambda root: None)
        """
    )
    pytester.makepyfile(
        test_app="""
        import pytest


        @pytest.mark.overlay(layers=["tools_layr"])
        def test_typo(overlay_root):
            pass


        @pytest.mark.overlay(layers=["nothing_like_it"])
        def test_unknown(overlay_root):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    texts = assert_short(result, ["test_typo", "test_unknown"])
    assert texts["test_typo"].startswith(
        "test_app.py::test_typo: the overlay marker (test_app.py:4) names 'tools_layr' in "
        "layers=, but no fixture of that name is visible to this test; did you mean "
        "'tools_layer'?\n"
    ), texts["test_typo"]
    assert "define that fixture in a conftest.py" in texts["test_typo"]
    assert "did you mean" not in texts["test_unknown"]
    assert "test_app.py:9" in texts["test_unknown"]
    assert "available fixtures" not in "\n".join(result.outlines)


def test_fixture_that_returns_no_layer(pytester: pytest.Pytester) -> None:
    text = error_of_test_app(pytester, '"/path/to/.venv"')
    assert text == (
        "test_app.py::test_app: the overlay marker (test_app.py:3) names fixture 'venv' in "
        "layers=, which returned str, not a pytest_overlay.Layer: return the result of "
        "overlay_layer(...) from that fixture, or take it out of layers="
    ), text


def test_single_name_and_any_fixture_scope_work(pytester: pytest.Pytester) -> None:
    """Not mistakes: a name as a string, and a layer fixture of function scope (built once)."""
    counter = pytester.path.parent / f"{pytester.path.name}-builds"
    pytester.makeconftest(
        f"""
        import pytest

        def build(root):
            with open({str(counter)!r}, "a") as f:
                f.write("tools\\n")
            (root / "tool").write_text("x")

        @pytest.fixture
        def tools(overlay_layer):
            return overlay_layer("tools", build)
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.overlay(layers="tools")
        @pytest.mark.parametrize("i", range(3))
        def test_app(overlay_root, i):
            assert (overlay_root / "tool").exists()
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert counter.read_text() == "tools\n"


def test_layer_failure_is_an_overlay_error_and_a_pytest_failure() -> None:
    """User code may catch it as an Exception; pytest reports it without a traceback."""
    from pytest_overlay import LayerBuildError, OverlayError

    error = LayerBuildError("building snapshot layer 'x' failed: E: m")
    assert isinstance(error, OverlayError)
    assert isinstance(error, Exception)
    assert isinstance(error, pytest.fail.Exception)
    assert not error.pytrace
    assert str(error) == "building snapshot layer 'x' failed: E: m"
    assert repr(error) == "LayerBuildError(\"building snapshot layer 'x' failed: E: m\")"


def test_in_place_mode_gives_the_same_short_errors(pytester: pytest.Pytester) -> None:
    gate("kernel", kernel_reason())
    pytester.makeconftest(FAILING_BUILD)
    pytester.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.overlay(layers=["tools_layer"])
        def test_built(): pass

        @pytest.mark.overlay(layers=["tools_layr"])
        def test_typo(): pass
        """
    )
    result = run(pytester, "--overlay", backend="kernel")
    result.assert_outcomes(errors=2)
    texts = assert_short(result, ["test_built", "test_typo"])
    assert texts["test_built"].startswith("building snapshot layer 'tools' failed: RuntimeError")
    assert "did you mean 'tools_layer'?" in texts["test_typo"]
