"""The backend registry: a third party's backend, registered through our own hook, is chosen
by name, named in the header and listed in ``--help``, like a built-in one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_overlay._registry import (
    AUTO,
    BUILTIN_BACKENDS,
    BackendRegistry,
    BackendSetup,
    builtin_registry,
)
from tests._sample_project import tree_digest

BASE_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark")

# A third party's backend, whole: one module (here a conftest) and one registry line.  It is
# the copy backend under another name, which ``auto`` does not try.
TOY_BACKEND = """
import pytest


class ToyBackend:
    name = "toy"
    auto = False

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, attribute):
        return getattr(self._inner, attribute)

    def describe(self):
        return "a toy wrapping the copy backend"


@pytest.hookimpl
def pytest_overlay_register_backends(registry):
    registry.add("toy", lambda setup: ToyBackend(registry.factory("copy")(setup)))
"""

TESTS = """
import pytest


def test_writes(overlay_root):
    assert overlay_root.backend == "toy"
    (overlay_root / "data.txt").write_text("changed")
    assert [c.path for c in overlay_root.diff().changes] == ["data.txt"]


@pytest.mark.overlay(backend="toy")
def test_marked(overlay_root):
    assert overlay_root.backend == "toy"


def test_sees_the_original(overlay_root):
    assert (overlay_root / "data.txt").read_text() == "original"
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE_ARGS, *args, timeout=120)


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    pytester.makeconftest(TOY_BACKEND)
    pytester.makepyfile(test_toy=TESTS)
    (pytester.path / "data.txt").write_text("original")
    return pytester.path


def test_a_registered_backend_is_chosen_by_name(pytester: pytest.Pytester, project: Path) -> None:
    # pytester keeps the child's basetemp and output inside the project: left out.
    skip = ["__pycache__", "runpytest-0", "runpytest-current", "stdout", "stderr"]
    before = tree_digest(project, skip, dir_times=False)
    result = run(pytester, "--overlay-backend=toy")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["overlay: backend=toy (a toy wrapping the copy backend)"])
    assert (project / "data.txt").read_text() == "original"
    assert tree_digest(project, skip, dir_times=False) == before


def test_help_lists_a_registered_backend(pytester: pytest.Pytester, project: Path) -> None:
    result = run(pytester, "--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*--overlay-backend=NAME*"])
    text = " ".join(result.stdout.str().split())  # argparse wraps the help text
    assert "Overlay backend: auto, kernel, fuse, copy, toy (default: auto)" in text


def test_auto_does_not_try_a_backend_that_opts_out(
    pytester: pytest.Pytester, project: Path
) -> None:
    """``auto`` tries the built-in backends only (the toy says ``auto = False``); the marker
    still picks it by name."""
    result = run(pytester, "-k", "marked or original")
    result.assert_outcomes(passed=2)
    assert "backend=toy" not in result.stdout.str()


def test_a_mistyped_name_lists_the_registered_backends(
    pytester: pytest.Pytester, project: Path
) -> None:
    result = run(pytester, "--overlay-backend=tyo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: *unknown overlay backend 'tyo'; choose one of auto, kernel, fuse, copy, toy"]
    )


def test_builtin_registry_outside_pytest() -> None:
    registry = builtin_registry()
    assert registry.names == BUILTIN_BACKENDS == ("kernel", "fuse", "copy")
    assert registry.choices == (AUTO, *BUILTIN_BACKENDS)


@pytest.mark.parametrize("name", ["auto", "Kernel", "", "two words", "kernel"])
def test_a_bad_or_taken_name_is_refused(name: str) -> None:
    registry = builtin_registry()
    with pytest.raises(ValueError, match="pytest-overlay: a backend"):
        registry.add(name, registry.factory("copy"))


def test_each_backend_gets_its_own_scratch_directory(tmp_path: Path) -> None:
    registry = BackendRegistry()
    seen: list[Path] = []

    def factory(setup: BackendSetup) -> object:
        seen.append(setup.scratch())
        return builtin_registry().factory("copy")(setup)

    registry.add("mine", factory)  # type: ignore[arg-type]
    registry.create("mine", lambda: tmp_path).shutdown()
    assert seen == [tmp_path / "mine"]
