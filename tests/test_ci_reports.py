"""A failed test's changes where CI reads them: an extra in pytest-html's report and a property
of its JUnit test case, with and without xdist, and with pytest-html absent.

The reports are parsed, not grepped: pytest-html keeps its data as JSON in the
``data-jsonblob`` attribute of ``#data-container``; JUnit is XML.
"""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests._gates import gate, gate_backend

FAILING_SUITE = """
def test_breaks(overlay_root):
    (overlay_root / "data.py").write_text("VALUE = 2\\n")
    (overlay_root / "new.txt").write_text("<new> & \\"quoted\\"\\n")
    assert False, "deliberate"


def test_breaks_in_setup(broken_setup):
    pass


def test_passes(overlay_root):
    (overlay_root / "other.txt").write_text("x")
"""

CONFTEST = """
import pytest


@pytest.fixture
def broken_setup(overlay_root):
    (overlay_root / "setup.txt").write_text("written in setup\\n")
    raise RuntimeError("setup breaks")
"""

BASE_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly")


@pytest.fixture(params=["kernel", "copy"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    gate_backend(name)
    return name


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``--basetemp`` outside the project: pytester's own is inside it, and under xdist one
    worker's copy (in the basetemp) would then be in the tree another worker copies."""
    return f"--basetemp={tmp_path_factory.mktemp('basetemp')}"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(data="VALUE = 1\n", test_suite=FAILING_SUITE)
    pytester.makeconftest(CONFTEST)
    return pytester


def _needs_pytest_html() -> None:
    missing = importlib.util.find_spec("pytest_html") is None
    gate("pytest-html", "pytest-html is not installed (the dev extra has it)" if missing else None)


class _DataBlob(HTMLParser):
    """pytest-html 4's report data: the JSON in ``#data-container``'s ``data-jsonblob``."""

    def __init__(self) -> None:
        super().__init__()
        self.blob: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id") == "data-container":
            self.blob = values.get("data-jsonblob")


def _html_extras(report: Path) -> dict[str, list[dict[str, Any]]]:
    """Each test id's extras in a pytest-html report (setup phases as ``id::setup``)."""
    parser = _DataBlob()
    parser.feed(report.read_text())
    assert parser.blob is not None, "no data-container in the HTML report"
    data = json.loads(parser.blob)
    return {
        entry["testId"]: entry["extras"] for entries in data["tests"].values() for entry in entries
    }


def _junit_properties(report: Path) -> dict[str, dict[str, str]]:
    """Each test case's properties in a JUnit XML report."""
    root = ET.parse(report).getroot()  # noqa: S314 - our own pytest's report
    return {
        case.get("name", ""): {
            prop.get("name", ""): prop.get("value", "") for prop in case.iter("property")
        }
        for case in root.iter("testcase")
    }


def _check_changes(text: str) -> None:
    assert "M data.py" in text
    assert "A new.txt" in text
    assert '+<new> & "quoted"' in text  # the raw text, unescaped once parsed
    assert "\x1b[" not in text, "no terminal colour codes"


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_html_report_shows_failed_tests_changes(
    project: pytest.Pytester, outside: str, backend: str, xdist: bool
) -> None:
    _needs_pytest_html()
    parallel = ("-n", "2") if xdist else ()
    result = project.runpytest_subprocess(
        *BASE_ARGS,
        outside,
        *parallel,
        f"--overlay-backend={backend}",
        "--html=report.html",
        "--self-contained-html",
        "--color=yes",
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    extras = _html_extras(project.path / "report.html")
    title = f"overlay changes ({backend})"

    (extra,) = extras["test_suite.py::test_breaks"]
    assert extra["name"] == title
    assert extra["format_type"] == "html"
    block = _DetailsBlock()
    block.feed(extra["content"])
    assert block.summary == title
    _check_changes(block.pre)

    (setup_extra,) = extras["test_suite.py::test_breaks_in_setup::setup"]
    assert "A setup.txt" in setup_extra["content"]
    assert extras["test_suite.py::test_passes"] == []


class _DetailsBlock(HTMLParser):
    """The text of the ``<summary>`` and ``<pre>`` of our collapsible block."""

    def __init__(self) -> None:
        super().__init__()
        self.summary = ""
        self.pre = ""
        self.tags: list[str] = []
        self.details = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "details":
            self.details = True

    def handle_endtag(self, tag: str) -> None:
        self.tags.pop()

    def handle_data(self, data: str) -> None:
        if self.tags[-1:] == ["summary"]:
            self.summary += data
        elif self.tags[-1:] == ["pre"]:
            self.pre += data


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_junit_xml_has_failed_tests_changes_as_a_property(
    project: pytest.Pytester, outside: str, backend: str, xdist: bool
) -> None:
    parallel = ("-n", "2") if xdist else ()
    result = project.runpytest_subprocess(
        *BASE_ARGS, outside, *parallel, f"--overlay-backend={backend}", "--junitxml=junit.xml"
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    properties = _junit_properties(project.path / "junit.xml")
    title = f"overlay changes ({backend})"
    _check_changes(properties["test_breaks"][title])
    assert "A setup.txt" in properties["test_breaks_in_setup"][title]
    assert properties["test_passes"] == {}


def test_reports_without_pytest_html(project: pytest.Pytester) -> None:
    """pytest-html is optional: blocked, the run and its JUnit property are unchanged."""
    result = project.runpytest_subprocess(
        *BASE_ARGS, "-p", "no:html", "--overlay-backend=copy", "--junitxml=junit.xml"
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    _check_changes(
        _junit_properties(project.path / "junit.xml")["test_breaks"]["overlay changes (copy)"]
    )
