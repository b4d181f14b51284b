"""Lint, types and docs are part of the test command, so CI and developers run the same checks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests._gates import REQUIRE_ENV
from tests._run import run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.quality


def _run(*argv: str) -> None:
    run([sys.executable, "-m", *argv], cwd=ROOT, expect_rc=0)


def test_ruff_check() -> None:
    _run("ruff", "check", ".")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", ".")


def test_mypy_strict() -> None:
    _run("mypy")


def test_mypy_checks_the_calls_into_the_machinery(tmp_path: Path) -> None:
    # Issue 21: the plugin reached the machinery through a ModuleType, so every call was Any.
    # Each lazy module of the plugin (one per concern) is read as the module itself.
    wrong = tmp_path / "wrong_call.py"
    wrong.write_text(
        "from pytest_overlay.plugin import _engine, _report_engine, _test_engine, _userns_engine"
        "\n\n_engine.header_lines()\n_test_engine.layer_factory()\n"
        "_report_engine.terminal_encoding()\n_userns_engine.enter_for_tests()\n"
    )
    result = run([sys.executable, "-m", "mypy", "--strict", str(wrong)], cwd=ROOT, expect_rc=1)
    assert 'Missing positional argument "session" in call to "header_lines"' in result.stdout
    for function in ("layer_factory", "terminal_encoding", "enter_for_tests"):
        assert f'in call to "{function}"  [call-arg]' in result.stdout, result.stdout


def _collected(*args: str, require: str) -> tuple[int, int]:
    """How many tests of ``pytest --collect-only *args`` are selected, and how many there are."""
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", *args]
    result = run(argv, cwd=ROOT, env={REQUIRE_ENV: require}, expect_rc=0)
    last = result.stdout.splitlines()[-1]
    found = re.match(r"(\d+)/(\d+) tests collected|(\d+) tests collected", last)
    assert found is not None, last
    if found[3] is not None:
        return int(found[3]), int(found[3])
    return int(found[1]), int(found[2])


def test_stress_tests_run_only_when_asked() -> None:
    # Issue 21: the marker deselected nothing, so a plain run paid for minutes of stress.
    module = "tests/test_sparse_files.py"
    selected, total = _collected(module, require="")
    assert selected < total
    assert _collected(module, "-m", "stress", require="") == (total - selected, total)
    assert _collected(module, "-m", "not quality", require="") == (selected, total)
    assert _collected(module, require="all") == (total, total)  # CI
    assert _collected(module, require="stress") == (total, total)


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    _run("mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site"))
