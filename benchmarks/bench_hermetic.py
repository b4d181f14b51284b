"""Per-test cost of ``--overlay-hermetic=home,tmp`` against in place without it, side by side.

A suite of trivial tests (each reads a project file, $HOME and the temporary directory, and
writes only to its ``tmp_path``) runs as root on the kernel backend, four ways in alternation:
plain pytest (for scale); ``--overlay``; ``--overlay --overlay-hermetic=home,tmp``; and that
plus ``--overlay-report=writes``.  Each run gets a scratch HOME and TMPDIR (pytest's basetemp lives
there, a pass-through path of the tmp view).  The figures, per test: the median over the tests
of the process's CPU time (user + system, mount syscalls included) over each whole test, which
a loaded machine disturbs least; the median of each test's setup + call + teardown wall time
(``pytest_runtest_logreport``); and the run's wall time divided by the tests.  The ratio is
against plain ``--overlay``.  Goal: CPU per test at most 1.10.

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
import json, os, time

import pytest

WALL = {}
CPU = {}


def pytest_runtest_logreport(report):
    WALL[report.nodeid] = WALL.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # The process's CPU time, user and system (mount syscalls included), over the whole test:
    # on a loaded machine it varies far less than wall time.
    start = time.process_time()
    try:
        return (yield)
    finally:
        CPU[item.nodeid] = time.process_time() - start


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({"wall": WALL, "cpu": CPU}, f)
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


def _run(project: Path, args: tuple[str, ...], count: int, scratch: Path) -> dict[str, float]:
    """One run: the median per-test CPU and wall times, and the run's wall time per test."""
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
    return {
        "per-test cpu": statistics.median(durations["cpu"].values()),
        "per-test wall": statistics.median(durations["wall"].values()),
        "run wall": wall / count,
    }


KINDS = ("per-test cpu", "per-test wall", "run wall")


def _measure(suite: str, count: int, repeat: int, scratch: Path) -> dict[str, list[float]]:
    project = scratch / f"project-{len(list(scratch.iterdir()))}"
    _project(project, suite)
    results: dict[str, list[float]] = {f"{n} {k}": [] for n in VARIANTS for k in KINDS}
    names = list(VARIANTS)
    for round_ in range(repeat):
        # Alternate which goes first, so that a load change hits all alike.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            for kind, value in _run(project, VARIANTS[name], count, scratch).items():
                results[f"{name} {kind}"].append(value)
    return results


def _report(title: str, results: dict[str, list[float]], goal: bool) -> None:
    print(f"\n{title} (medians of the runs; ratio and +ms against in place)")
    print(f"{'variant':<32} {'ms':>8} {'ratio':>7} {'+ms':>8}")
    for kind in KINDS:
        base = statistics.median(results[f"in place {kind}"])
        for name in VARIANTS:
            value = statistics.median(results[f"{name} {kind}"])
            ratio = value / base
            mark = ""
            if goal and name.startswith("hermetic") and kind == "per-test cpu":
                mark = "  PASS" if ratio <= GOAL else "  MISS"
                mark += f" (goal <= {GOAL:.2f})"
            figures = f"{value * 1e3:>8.3f} {ratio:>7.3f} {(value - base) * 1e3:>+8.3f}"
            print(f"{name + ' ' + kind:<32} {figures}{mark}")


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
