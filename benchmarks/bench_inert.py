"""What pytest-overlay costs a suite that does not use it: installed against ``-p no:overlay``.

A plugin people install in their development environment runs on every ``pytest``; until a
test uses it, it must cost nothing.  This script runs one trivial suite (one file, a few tests
that use neither ``overlay_root`` nor the marker) as pairs of runs, one with the plugin as
installed and one with ``-p no:overlay``, alternating which goes first, and prints the
medians and their ratio.  Goal: at most 1.05.  That nothing is probed, started or mounted is
proved by ``tests/test_inert.py``, as root and as an ordinary user (whose runs used to probe
the kernel and mount FUSE every time); this script measures what it costs.

It measures twice: with every plugin installed here loading as usual (what a user's run
costs, where Hypothesis alone can take most of a second), and with plugin autoloading off
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``), bare pytest against bare pytest plus
``-p pytest_overlay.plugin``, where nothing else hides what ours costs.

    python benchmarks/bench_inert.py [--pairs 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    command_line,
    fmt_ms,
    goal_at_most,
    median,
    print_end,
    print_machine,
    pytest_command,
    ratio,
    render_table,
    run_pytest,
)

SUITE = """
def test_one():
    assert 1 + 1 == 2

def test_two(tmp_path):
    (tmp_path / "f").write_text("x")
    assert (tmp_path / "f").read_text() == "x"

def test_three():
    assert "overlay" not in "pytest"
"""
GOAL = 1.05


# Bytecode is written, as in a user's runs: without it pytest would rewrite (parse and compile)
# every plugin module on every run, a cost users pay once.
BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}
AUTOLOAD_OFF = {**BYTECODE, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
# (label, environment, arguments with the plugin, arguments without it)
SETUPS: tuple[tuple[str, dict[str, str], tuple[str, ...], tuple[str, ...]], ...] = (
    ("every plugin installed", BYTECODE, (), ("-p", "no:overlay")),
    ("autoload off, pytest alone", AUTOLOAD_OFF, ("-p", "pytest_overlay.plugin"), ()),
)


def _timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> float:
    outcome = run_pytest(argv, cwd=cwd, out=cwd / "bench.json", env=env, timeout=300)
    if outcome.returncode != 0 or "3 passed" not in outcome.output:
        raise SystemExit(f"a measured run failed ({outcome.returncode}):\n{outcome.output}")
    return outcome.wall_s


def measure(
    project: Path, pairs: int, env: dict[str, str], ours: Sequence[str], theirs: Sequence[str]
) -> tuple[list[float], list[float]]:
    """Paired wall times: with the plugin (*ours*), and without it (*theirs*)."""
    installed: list[float] = []
    disabled: list[float] = []
    with_plugin = pytest_command(*ours)
    without = pytest_command(*theirs)
    _timed(with_plugin, project, env)  # warm the page cache and the bytecode of both
    _timed(without, project, env)
    for index in range(pairs):
        # Alternate the order, so a machine that slows down over time favours neither.
        order = [(with_plugin, installed), (without, disabled)]
        for argv, into in order if index % 2 == 0 else reversed(order):
            into.append(_timed(argv, project, env))
    return installed, disabled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=30, help="paired runs (default 30)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    print_machine(DEFAULT_CACHE, command_line(argv))
    rows, goals = [], []
    with tempfile.TemporaryDirectory(prefix="bench-inert-") as scratch:
        project = Path(scratch)
        (project / "test_trivial.py").write_text(SUITE)
        (project / "pytest.ini").write_text("[pytest]\n")
        for label, env, ours, theirs in SETUPS:
            installed, disabled = measure(project, args.pairs, env, ours, theirs)
            value = ratio(median(installed), median(disabled))
            shown = "n/a" if value is None else f"{value:.3f}"
            rows.append([label, fmt_ms(median(installed)), fmt_ms(median(disabled)), shown])
            goals.append(goal_at_most(f"with / without pytest-overlay ({label})", value, GOAL))
    print(f"\na trivial suite of 3 tests as uid {os.getuid()}, {args.pairs} paired runs, medians:")
    print(render_table(["plugins", "with pytest-overlay", "without", "ratio"], rows))
    print()
    for goal in goals:
        print(goal.line())
    print_end(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
