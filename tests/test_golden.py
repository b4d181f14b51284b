"""Golden records of tests' effects through pytester, on real backends, serial and under xdist.

The sample project runs a file generator; its records are written with ``--overlay-update``,
checked, broken by a change to the generator, rewritten, and left unused by a deleted test.
The record format and the diff of diffs alone are ``tests/test_golden_format.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._gates import gate, gate_backend, kernel_reason
from tests._sample_project import tree_digest

BASE_ARGS = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:randomly",
    "-p",
    "no:benchmark",
    "--overlay-keep=none",
)
XDIST = pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])

GENERATOR = """\
import sys
from pathlib import Path

VERSION = 1


def main(root):
    out = Path(root) / "out"
    out.mkdir(exist_ok=True)
    (out / "api.py").write_text(f"def api():\\n    return {VERSION}\\n")
    (out / "logo.bin").write_bytes(bytes(range(256)))
    (out / "where.txt").write_text(f"generated under {Path(root).resolve()}\\n")


if __name__ == "__main__":
    main(sys.argv[1])
"""

TESTS = """\
import subprocess
import sys

import pytest


def generate(root, *args):
    subprocess.run([sys.executable, str(root / "gen.py"), str(root), *args], check=True)


@pytest.mark.overlay_golden
def test_generate(overlay_root):
    generate(overlay_root)


@pytest.mark.overlay_golden
@pytest.mark.parametrize("name", ["a", "b"])
def test_named(overlay_root, name):
    (overlay_root / f"{name}.cfg").write_text(f"name = {name}\\n")


@pytest.mark.overlay_golden
def test_doomed(overlay_root):
    (overlay_root / "doomed.txt").write_text("soon gone\\n")
"""

RECORDS = Path("tests/__effects__/test_gen")


@pytest.fixture
def kernel() -> None:
    gate("kernel", kernel_reason())


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE_ARGS, *args, timeout=180)


def project(pytester: pytest.Pytester, tests: str = TESTS) -> Path:
    root = pytester.path
    (root / "gen.py").write_text(GENERATOR)
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_gen.py").write_text(tests)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def written_record(pytester: pytest.Pytester, test: str) -> str:
    """Write the records of the project's one test; return the entries of *test*'s record."""
    run(pytester, "--overlay-update").assert_outcomes(passed=1)
    return (pytester.path / RECORDS / f"{test}.txt").read_text().split("\n\n", 1)[1]


def records(root: Path) -> list[str]:
    return sorted(os.listdir(root / RECORDS))


@XDIST
@pytest.mark.usefixtures("kernel")
def test_generator_workflow(pytester: pytest.Pytester, xdist: tuple[str, ...]) -> None:
    root = project(pytester)

    missing = run(pytester, *xdist)
    missing.assert_outcomes(failed=4)
    missing.stdout.fnmatch_lines(
        [
            "no golden record of what this test does to the tree: "
            f"{RECORDS}/test_generate.txt does not exist.",
            "Create it with: pytest --overlay-update tests/test_gen.py::test_generate",
        ]
    )
    assert not (root / RECORDS).exists()

    written = run(pytester, "--overlay-update", *xdist)
    written.assert_outcomes(passed=4)
    written.stdout.fnmatch_lines(["wrote 4 golden records:", f"  {RECORDS}/test_generate.txt"])
    assert records(root) == [
        "test_doomed.txt",
        "test_generate.txt",
        "test_named[a].txt",
        "test_named[b].txt",
    ]
    generated = (root / RECORDS / "test_generate.txt").read_text()
    assert "added out/api.py\n  file 0644\n  | def api():\n  |     return 1\n" in generated
    assert "  | generated under <root>\n" in generated  # the view's path, normalised
    assert "binary, 256 bytes, sha256 40aff2e9d2d8922e47afd4648e69674971" in generated

    run(pytester, *xdist).assert_outcomes(passed=4)

    (root / "gen.py").write_text(GENERATOR.replace("VERSION = 1", "VERSION = 2"))
    changed = run(pytester, *xdist)
    changed.assert_outcomes(passed=3, failed=1)
    changed.stdout.fnmatch_lines(
        [
            "what this test did to the tree differs from its golden record "
            f"{RECORDS}/test_generate.txt:",
            "~ added out/api.py   (differs)",
            "",
            "--- record: out/api.py",
            "+++ this run: out/api.py",
            "@@ -1,4 +1,4 @@",
            " added out/api.py",
            "   file 0644",
            "   | def api():",
            "-  |     return 1",
            "+  |     return 2",
            "",
            "If this run is right, rewrite the record with: "
            "pytest --overlay-update tests/test_gen.py::test_generate",
        ]
    )

    rewritten = run(pytester, "--overlay-update", *xdist)
    rewritten.assert_outcomes(passed=4)
    rewritten.stdout.fnmatch_lines(["rewrote 1 golden record:", f"  {RECORDS}/test_generate.txt"])
    run(pytester, *xdist).assert_outcomes(passed=4)

    # A deleted test, and a parameter dropped: their records are unused.
    shorter = TESTS.replace('["a", "b"]', '["a"]')
    kept = shorter[: shorter.index("@pytest.mark.overlay_golden\ndef test_doomed")]
    (root / "tests" / "test_gen.py").write_text(kept)
    unused = run(pytester, *xdist)
    unused.assert_outcomes(passed=2)
    unused.stdout.fnmatch_lines(
        [
            "2 golden records that no collected test claims; --overlay-update removes them:",
            f"  {RECORDS}/test_doomed.txt",
            f"  {RECORDS}/test_named[b].txt",
        ]
    )
    # A run of one test is no reason to call the others' records unused.
    one = run(pytester, "tests/test_gen.py::test_generate", *xdist)
    one.assert_outcomes(passed=1)
    assert "no collected test claims" not in one.stdout.str()
    assert len(records(root)) == 4

    removed = run(pytester, "--overlay-update", *xdist)
    removed.assert_outcomes(passed=2)
    removed.stdout.fnmatch_lines(["removed 2 golden records that no collected test claims:"])
    assert records(root) == ["test_generate.txt", "test_named[a].txt"]
    run(pytester, *xdist).assert_outcomes(passed=2)


THREE_EFFECTS = """\
import os

import pytest


@pytest.mark.overlay_golden
def test_three(overlay_root):
    regress = os.environ.get("REGRESS", "")
    if regress != "delete":
        (overlay_root / "old.txt").unlink()
    if regress != "mode":
        os.chmod(overlay_root / "run.sh", 0o755)
    if regress != "symlink":
        (overlay_root / "link.txt").unlink()
        target = "other.txt" if regress == "retarget" else "target.txt"
        os.symlink(target, overlay_root / "link.txt")
"""


def three_effects_project(pytester: pytest.Pytester) -> Path:
    root = project(pytester, THREE_EFFECTS)
    for name, text in [("old.txt", "old\n"), ("run.sh", "#!/bin/sh\n"), ("link.txt", "x\n")]:
        (root / name).write_text(text)
    (root / "target.txt").write_text("t\n")
    os.chmod(root / "run.sh", 0o644)
    return root


@pytest.mark.usefixtures("kernel")
def test_delete_mode_and_symlink_are_recorded_and_each_regression_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_effects_project(pytester)
    assert written_record(pytester, "test_three") == (
        "modified link.txt\n"
        "  was file\n"
        "  symlink -> target.txt\n"
        "\n"
        "deleted old.txt\n"
        "  was file\n"
        "\n"
        "mode run.sh\n"
        "  0644 -> 0755\n"
    )
    # The same record holds on every backend.
    for backend in ("kernel", "fuse", "copy"):
        gate_backend(backend)
        run(pytester, f"--overlay-backend={backend}").assert_outcomes(passed=1)

    regressions = {
        "delete": ["- deleted old.txt   (only in the record)"],
        "mode": ["- mode run.sh   (only in the record)"],
        "symlink": ["- modified link.txt   (only in the record)"],
        "retarget": [
            "~ modified link.txt   (differs)",
            "-  symlink -> target.txt",
            "+  symlink -> other.txt",
        ],
    }
    for regress, lines in regressions.items():
        monkeypatch.setenv("REGRESS", regress)
        result = run(pytester)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(lines)


@pytest.mark.usefixtures("kernel")
def test_in_place_with_xdist_update(pytester: pytest.Pytester) -> None:
    root = project(pytester, IN_PLACE_TESTS)
    before = _digest(root)

    run(pytester, "--overlay", "-n", "2").assert_outcomes(failed=3)
    written = run(pytester, "--overlay", "--overlay-update", "-n", "2")
    written.assert_outcomes(passed=3)
    assert records(root) == ["test_generate.txt", "test_nothing.txt", "test_touch.txt"]
    assert "(no changes)" in (root / RECORDS / "test_nothing.txt").read_text()
    assert "added out/where.txt" in (root / RECORDS / "test_generate.txt").read_text()
    run(pytester, "--overlay").assert_outcomes(passed=3)
    run(pytester, "--overlay", "-n", "2").assert_outcomes(passed=3)
    # The tests wrote only to their views: the tree holds nothing new but the records.
    assert _digest(root) == before

    (root / "gen.py").write_text(GENERATOR.replace("VERSION = 1", "VERSION = 3"))
    changed = run(pytester, "--overlay")
    changed.assert_outcomes(passed=2, failed=1)
    changed.stdout.fnmatch_lines(
        ["+  |     return 3", "*rewrite the record with: pytest --overlay --overlay-update*"]
    )


def _digest(root: Path) -> str:
    # What pytester and pytest put there: the child runs' basetemps and output, the cache
    # (where the plugin's store lives); none of it is the tests' doing.
    pytester_files = ["runpytest-current", "stdout", "stderr", ".pytest_cache"]
    skip = ["__pycache__", "__effects__", *pytester_files, *(f"runpytest-{n}" for n in range(20))]
    return tree_digest(root, skip=skip, dir_times=False)


IN_PLACE_TESTS = """\
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.overlay_golden
def test_generate():
    subprocess.run([sys.executable, "gen.py", str(ROOT)], check=True, cwd=ROOT)


@pytest.mark.overlay_golden
def test_nothing():
    pass


@pytest.mark.overlay_golden
def test_touch():
    (ROOT / "touched.txt").write_text("here\\n")
"""


NORMALISED = """\
import datetime
import random

import pytest


@pytest.mark.overlay_golden(replace={r"seed=\\d+": "seed=<seed>"})
def test_varies(overlay_root):
    now = datetime.datetime.now().isoformat(timespec="seconds")
    (overlay_root / "report.txt").write_text(
        f"made {now} in {overlay_root}\\nbuild {random.randrange(10**6)}\\n"
        f"seed={random.randrange(10**6)}\\n"
    )
    (overlay_root / "debug.log").write_text(str(random.random()))
"""


@pytest.mark.usefixtures("kernel")
def test_normalisers_from_ini_and_marker(pytester: pytest.Pytester) -> None:
    root = project(pytester, NORMALISED)
    (root / "pytest.ini").write_text(
        "[pytest]\n"
        "overlay_golden_replace = build \\d+ => build <n>\n"
        "overlay_golden_timestamps = true\n"
        "overlay_golden_ignore = *.log\n"
    )
    assert written_record(pytester, "test_varies") == (
        "added report.txt\n"
        "  file 0644\n"
        "  | made <timestamp> in <root>\n"
        "  | build <n>\n"
        "  | seed=<seed>\n"
    )
    run(pytester).assert_outcomes(passed=1)
    run(pytester, "-n", "2").assert_outcomes(passed=1)


def test_records_of_a_deleted_module_are_unused(pytester: pytest.Pytester) -> None:
    project(pytester, TESTS.replace('["a", "b"]', '["a"]'))
    other = pytester.path / "tests" / "test_other.py"
    other.write_text("import pytest\n\n@pytest.mark.overlay_golden\ndef test_x(): pass\n")
    run(pytester, "--overlay-backend=copy", "--overlay-update").assert_outcomes(passed=4)
    other.unlink()
    unused = run(pytester, "--overlay-backend=copy")
    unused.assert_outcomes(passed=3)
    unused.stdout.fnmatch_lines(
        [
            "1 golden record that no collected test claims; --overlay-update removes them:",
            "  tests/__effects__/test_other/test_x.txt",
        ]
    )
    run(pytester, "--overlay-backend=copy", "--overlay-update").assert_outcomes(passed=3)
    assert sorted(os.listdir(pytester.path / "tests" / "__effects__")) == ["test_gen"]


HOSTILE = """\
import pytest


@pytest.mark.overlay_golden
def test_hostile(overlay_root):
    (overlay_root / "evil\\n\\x1b[31mred\\u202e").write_text("x\\x1b[2J\\n")
"""


def test_hostile_names_print_safely_and_round_trip(pytester: pytest.Pytester) -> None:
    project(pytester, HOSTILE)
    missing = run(pytester, "--overlay-backend=copy")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["added evil\\n\\x1b[31mred\\u202e", "  ~ x\\x1b[2J"])
    assert "\x1b" not in missing.stdout.str()
    assert "\u202e" not in missing.stdout.str()
    run(pytester, "--overlay-backend=copy", "--overlay-update").assert_outcomes(passed=1)
    run(pytester, "--overlay-backend=copy").assert_outcomes(passed=1)


def test_mistakes_are_named(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\noverlay_golden_replace = no arrow here\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: overlay_golden_replace: 'no arrow here' is not of the form 'REGEX => REPLACEMENT'"]
    )

    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        "import pytest\n@pytest.mark.overlay_golden(ignore=3)\ndef test_wrong(overlay_root): pass\n"
    )
    result = run(pytester, "--overlay-backend=copy")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.overlay_golden: ignore=3 is not a glob or a list of globs",
            "It accepts overlay_golden(ignore=<a glob or a list of them>, *",
        ]
    )
