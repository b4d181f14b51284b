"""What pytest-overlay costs a suite that does not use it: installed against ``-p no:overlay``.

A plugin people install in their development environment runs on every ``pytest``; until a
test uses it, it must cost nothing.  This script runs one trivial suite (one file, a few tests
that use neither ``overlay_root`` nor the marker) as pairs of runs, one with the plugin as
installed and one with ``-p no:overlay``, alternating which goes first, and prints the
medians and their ratio.  Goal: at most 1.05.  That nothing is probed, started or mounted is
proved by ``tests/test_inert.py``, as root and as an ordinary user (whose runs used to probe
the kernel and mount FUSE every time); this script measures what it costs.

    python benchmarks/bench_inert.py [--pairs 15]
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


def _timed(argv: Sequence[str], cwd: Path) -> float:
    outcome = run_pytest(argv, cwd=cwd, out=cwd / "bench.json", env={}, timeout=300)
    if outcome.returncode != 0 or "3 passed" not in outcome.output:
        raise SystemExit(f"a measured run failed ({outcome.returncode}):\n{outcome.output}")
    return outcome.wall_s


def measure(project: Path, pairs: int) -> tuple[list[float], list[float]]:
    """Paired wall times: the plugin installed, and disabled with ``-p no:overlay``."""
    installed: list[float] = []
    disabled: list[float] = []
    with_plugin = pytest_command()
    without = pytest_command("-p", "no:overlay")
    _timed(with_plugin, project)  # warm the page cache and the bytecode of both
    _timed(without, project)
    for index in range(pairs):
        # Alternate the order, so a machine that slows down over time favours neither.
        order = [(with_plugin, installed), (without, disabled)]
        for argv, into in order if index % 2 == 0 else reversed(order):
            into.append(_timed(argv, project))
    return installed, disabled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=15, help="paired runs (default 15)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    print_machine(DEFAULT_CACHE, command_line(argv))
    with tempfile.TemporaryDirectory(prefix="bench-inert-") as scratch:
        project = Path(scratch)
        (project / "test_trivial.py").write_text(SUITE)
        (project / "pytest.ini").write_text("[pytest]\n")
        installed, disabled = measure(project, args.pairs)
    value = ratio(median(installed), median(disabled))
    row = [f"uid {os.getuid()}", fmt_ms(median(installed)), fmt_ms(median(disabled))]
    print(f"\na trivial suite of 3 tests, {args.pairs} paired runs, medians:")
    print(
        render_table(
            ["who", "plugin installed", "-p no:overlay", "ratio"],
            [[*row, "n/a" if value is None else f"{value:.3f}"]],
        )
    )
    print()
    print(goal_at_most("installed / -p no:overlay", value, GOAL).line())
    print_end(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
