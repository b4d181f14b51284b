"""The quickstart's example, run as a reader would: its test file, taken from the page, fails
as the page says, with the report the page shows (issue 21: the page had fallen behind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._gates import gate, kernel_reason

PAGE = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
EXPORT = """\
from pathlib import Path
p = Path("data/input.csv")
p.write_text(p.read_text().replace("bob", "robert"))
Path("out").mkdir()
Path("out/report.txt").write_text("3 rows exported\\n")
"""


def _block(kind: str, starting: str) -> str:
    """The page's first ``kind`` code block whose text starts with *starting*."""
    for block in re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.DOTALL):
        if block.startswith(starting):
            return str(block)
    raise AssertionError(f"no {kind} block starting {starting!r} in {PAGE}")


def test_the_quickstart_failure_is_as_shown(pytester: pytest.Pytester) -> None:
    gate("kernel", kernel_reason())
    pytester.makeini("[pytest]\n")
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "input.csv").write_text("id,name\n1,alice\n2,bob\n3,carol\n")
    (pytester.path / "export.py").write_text(EXPORT)
    (pytester.path / "tests").mkdir()
    test_file = _block("python", "# tests/test_cleanup.py")
    (pytester.path / "tests" / "test_cleanup.py").write_text(test_file)
    args = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:benchmark")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    shown = _block("text", "_").splitlines()
    # Every line of the page's failure, but for the paths of this machine and the run id.
    patterns = [
        re.sub(r"/tmp/pytest-of-me/pytest-7/|runs/\d{8}-\d{6}-\d+", "*", line)
        for line in shown
        if line.strip() and not line.startswith(("overlay_root = ", "kept 1 layer"))
    ]
    result.stdout.fnmatch_lines(patterns)
    # Named like the project (the page's is myapp, this one pytester's directory).
    name = pytester.path.name
    result.stdout.fnmatch_lines([f"overlay_root = <Overlay '*/{name}' backend='kernel'>"])
