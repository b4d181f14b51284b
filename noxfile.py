"""The version matrix: every Python the package claims against pytest's floor, latest 8.x and
latest release, with pytest-xdist.

``nox`` runs the whole matrix (12 sessions); ``nox -t compat`` runs the small subset that
``.ci/run`` runs. Each session installs the package (not editable) and the pytest under test
into a fresh venv, then runs the compatibility tests: the plugin's behaviour through pytester
(options, ini, markers, header, failure reports, the inert install), the destructive sample
suite on every backend as root and under xdist, and the reports CI reads (pytest-html, JUnit).
The summary lands in ``.nox/matrix-summary.json``; ``nox -s summary`` prints it as the table
of docs/compatibility.md.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
from tests._wheelhouse import find_python

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["matrix"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# pyenv's interpreters first on PATH, where nox looks for python3.X (pyenv's shims only find
# the versions selected globally).
_found = [find_python(version) for version in PYTHONS]
_dirs = [str(Path(python).parent) for python in _found if python]
os.environ["PATH"] = os.pathsep.join([*_dirs, os.environ.get("PATH", "")])
PYTEST_FLOOR = "8.0.0"
"""The oldest pytest the matrix proves: pyproject.toml's ``pytest>=`` must name it."""
PYTESTS = {
    "floor": f"pytest=={PYTEST_FLOOR}",
    "8.x": "pytest>=8,<9",
    "latest": "pytest",
}
COMPAT_TESTS = [
    "tests/test_plugin.py",
    "tests/test_inert.py",
    "tests/test_ci_reports.py",
    "tests/test_fixture_on_every_backend.py",
]
# .ci/run's subset: the corners of the matrix, on the fastest tests.
CI_CORNERS = [("3.10", "floor"), ("3.13", "latest")]
CI_TESTS = ["tests/test_inert.py", "tests/test_ci_reports.py"]
SUMMARY = Path(__file__).parent / ".nox" / "matrix-summary.json"


def _run_tests(
    session: nox.Session, python: str, pytest_label: str, tests: list[str], *, record: bool
) -> None:
    session.install(".", PYTESTS[pytest_label], "pytest-xdist>=3.5", "pytest-html>=4")
    version = session.run("python", "-c", "import pytest; print(pytest.__version__)", silent=True)
    if version is None:  # --install-only (.ci/run's install phase): nothing ran, nothing to count
        return
    # Not session.create_tmp(): it points TMPDIR into the checkout, and the pytester runs
    # would then find the checkout as their project root.
    report = Path(str(session.virtualenv.location)) / "junit.xml"
    # Plain output, a fresh rootdir cache, this venv's plugin: the same run on every version.
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
        # The matrix is about Python and pytest: the runs as a second user (the privilege
        # matrix) stay with the main suite.
        "-k", "not user", *tests, *session.posargs,
        env={"PYTHONPATH": "", "PYTEST_OVERLAY_REQUIRE": os.environ.get(
            "PYTEST_OVERLAY_REQUIRE", "")},
        success_codes=[0, 1],  # failed tests: recorded first, then the session fails
    )  # fmt: skip
    if record:  # the corners run fewer tests: the summary is the full matrix's
        _record(python, pytest_label, str(version).strip(), report)
    suite = _counts(report)
    if suite["failures"] or suite["errors"]:
        session.error(f"{suite['failures']} failed, {suite['errors']} errors")


def _counts(report: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ET

    suite = ET.parse(report).getroot().find("testsuite")  # noqa: S314 - our own report
    assert suite is not None
    return {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}


def _record(python: str, pytest_label: str, pytest_version: str, report: Path) -> None:
    """Add this session's counts to the summary (a session that fails records nothing)."""
    counts = _counts(report)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    summary[f"{python} / pytest {pytest_label}"] = {"pytest": pytest_version, **counts}
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


@nox.session(python=PYTHONS)
@nox.parametrize("pytest_label", list(PYTESTS))
def matrix(session: nox.Session, pytest_label: str) -> None:
    """Python x pytest: the compatibility tests."""
    _run_tests(session, str(session.python), pytest_label, COMPAT_TESTS, record=True)


def _corner(python: str, label: str) -> None:
    @nox.session(name=f"compat-{python}({label})", python=python, tags=["compat"])
    def corner(session: nox.Session) -> None:
        """A corner of the matrix on the fastest compatibility tests (``nox -t compat``)."""
        _run_tests(session, python, label, CI_TESTS, record=False)


for _python, _label in CI_CORNERS:
    _corner(_python, _label)


@nox.session(python=False)
def summary(session: nox.Session) -> None:
    """Print the last matrix's summary as the Markdown table of docs/compatibility.md."""
    results = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    header = ["Python", *(f"pytest {label}" for label in PYTESTS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for python in PYTHONS:
        cells = [python]
        for label in PYTESTS:
            cell = results.get(f"{python} / pytest {label}")
            if cell is None:
                cells.append("not run")
                continue
            bad = cell["failures"] + cell["errors"]
            outcome = f"{cell['tests'] - bad - cell['skipped']} passed"
            outcome += f", {bad} failed" if bad else ""
            outcome += f", {cell['skipped']} skipped" if cell["skipped"] else ""
            cells.append(f"{cell['pytest']}: {outcome}")
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
