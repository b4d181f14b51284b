"""Per-test cost of ``--overlay-hermetic=home,tmp`` against in place without it, side by side.

A suite of trivial tests (each reads a project file, $HOME and the temporary directory, and
writes only to its ``tmp_path``) runs as root on the kernel backend, four ways in alternation:
plain pytest (for scale); ``--overlay``; ``--overlay --overlay-hermetic=home,tmp``; and that
plus ``--overlay-report=writes``.  Each run gets a scratch HOME and TMPDIR (pytest's basetemp lives
there, a pass-through path of the tmp view).  The figure is the median over the tests of each
test's setup + call + teardown time (``pytest_runtest_logreport``), and the run's wall time per
test; the ratio is against plain ``--overlay``.  Goal: at most 1.10.

A second, smaller suite whose every test writes a file to $HOME shows the other end: each of
those tests gets a fresh home view (informational, no goal).

``python benchmarks/bench_hermetic.py [--tests 400] [--repeat 5]``.  The script reports and
exits 0 whether or not the goal is met.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.10

CONFTEST = """
import json, os

DURATIONS = {}


def pytest_runtest_logreport(report):
    DURATIONS[report.nodeid] = DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(DURATIONS, f)
"""

READING = """
import os, tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("i", range(int(os.environ["BENCH_COUNT"])))
def test_reads(i, tmp_path):
    assert (HERE / "data.txt").read_text() == "data\\n"
    assert Path.home().is_dir() and os.listdir(tempfile.gettempdir()) is not None
    (tmp_path / "out.txt").write_text(str(i))
"""

WRITING = """
import os
from pathlib import Path

import pytest


@pytest.mark.parametrize("i", range(int(os.environ["BENCH_COUNT"])))
def test_writes_home(i):
    (Path.home() / f"written-{i}.txt").write_text(str(i))
"""

VARIANTS = {
    "plain": (),
    "in place": ("--overlay",),
    "hermetic": ("--overlay", "--overlay-hermetic=home,tmp"),
    "hermetic+report": ("--overlay", "--overlay-hermetic=home,tmp", "--overlay-report=writes"),
}


def _project(root: Path, suite: str) -> None:
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\ntmp_path_retention_policy = failed\n")
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_bench.py").write_text(suite)
    (root / "data.txt").write_text("data\n")


def _run(project: Path, args: tuple[str, ...], count: int, scratch: Path) -> tuple[float, float]:
    """One run: the median per-test time and the wall time per test, in seconds."""
    home, tmp = Path(tempfile.mkdtemp(dir=scratch)), Path(tempfile.mkdtemp(dir=scratch))
    out = scratch / "durations.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "BENCH_OUT": str(out),
        "BENCH_COUNT": str(count),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, *args], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run {args} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    durations = json.loads(out.read_text())
    return statistics.median(durations.values()), wall / count


def _measure(suite: str, count: int, repeat: int, scratch: Path) -> dict[str, list[float]]:
    project = scratch / f"project-{len(list(scratch.iterdir()))}"
    _project(project, suite)
    per_test: dict[str, list[float]] = {name: [] for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for round_ in range(repeat):
        # Alternate which goes first, so that a load change hits all alike.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            median, wall = _run(project, VARIANTS[name], count, scratch)
            per_test[name].append(median)
            walls[name].append(wall)
    return {f"{n} per-test": per_test[n] for n in names} | {f"{n} wall": walls[n] for n in names}


def _report(title: str, results: dict[str, list[float]], goal: bool) -> None:
    print(f"\n{title}")
    print(f"{'variant':<28} {'median ms':>10} {'ratio':>7} {'+ms':>8}")
    for kind in ("per-test", "wall"):
        base = statistics.median(results[f"in place {kind}"])
        for name in VARIANTS:
            value = statistics.median(results[f"{name} {kind}"])
            ratio = value / base
            mark = ""
            if goal and name.startswith("hermetic") and kind == "per-test":
                mark = "  PASS" if ratio <= GOAL else "  MISS"
                mark += f" (goal <= {GOAL:.2f})"
            extra = (value - base) * 1e3
            print(
                f"{name + ' ' + kind:<28} {value * 1e3:>10.3f} {ratio:>7.3f} {extra:>+8.3f}{mark}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=400, help="tests in the reading suite")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant")
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root (the kernel backend in place, as the goal is stated)")
    with tempfile.TemporaryDirectory(prefix="bench-hermetic-") as raw:
        scratch = Path(raw)
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        reading = _measure(READING, options.tests, options.repeat, scratch)
        _report(f"{options.tests} reading tests, {options.repeat} runs each", reading, True)
        writing = _measure(WRITING, max(options.tests // 4, 20), options.repeat, scratch)
        _report("tests that each write to $HOME (a fresh home view each)", writing, False)


if __name__ == "__main__":
    main()
