"""Per-test overhead of ``overlay_root`` against copying the tree, on 1k, 10k and 100k files.

For each generated tree and each variant, the script writes a tiny pytest project whose root is
the tree itself (so the tree is the overlay's lower layer), runs pytest in a subprocess, and
records every test's setup + teardown time from ``pytest_runtest_logreport``.  The overhead of a
variant is its median setup + teardown minus that of a test requesting no fixture, run the same
way (as the same user, on the same tree).

Variants: kernel backend as root; kernel backend as an unprivileged user (``tests/_unpriv.py``);
the fuse backend as root; the copy backend; and what users do today, ``tmp_path`` +
``shutil.copytree``.

Run ``python benchmarks/bench_per_test.py --help`` for the options; ``benchmarks/README.md`` says
how to read the output.  The script reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from _common import (
    BENCH_ENV_TEXT,
    REPO_ROOT,
    Goal,
    TreeInfo,
    add_cache_dir,
    add_quick_and_json,
    command_line,
    ensure_tree,
    failed_summary,
    fmt_ms,
    fmt_ratio,
    goal_at_least,
    goal_at_most,
    install_files,
    median,
    parse_choices,
    percentile,
    prepare_cache,
    print_goals,
    print_machine,
    pytest_command,
    ratio,
    render_table,
    results_dir,
    run_pytest,
    take_json,
    write_json,
)

RUN_TIMEOUT_S = 3 * 3600

GOAL_FLATNESS = 1.1
GOAL_UNPRIV_OVER_ROOT = 1.1
GOAL_COPYTREE_OVER_KERNEL = 500.0
GOAL_ABSOLUTE_S = 0.5e-3

# --- the project written into each tree's root --------------------------------------------------

HARNESS_FILES = {
    "pytest.ini": """\
[pytest]
# Remove each passing test's tmp_path at its teardown, as the overlay removes its upper layer:
# the copytree variant then pays for deleting its copy too (with the default policy, "all",
# the deletion only moves to a later session).
tmp_path_retention_policy = failed
""",
    "conftest.py": '''\
"""Harness of benchmarks/bench_per_test.py: records each test's setup and teardown time."""

import json
import os
import shutil

import pytest

_DURATIONS = {}
_FAILURES = []


def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        entry = _DURATIONS.setdefault(report.nodeid, [0.0, 0.0])
        entry[0 if report.when == "setup" else 1] += report.duration
    if report.failed:
        _FAILURES.append(f"{report.nodeid} {report.when}: {report.longreprtext[-3000:]}")


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            rows = [[nodeid, *times] for nodeid, times in _DURATIONS.items()]
            json.dump({"durations": rows, "failures": _FAILURES}, f)


@pytest.fixture
def copytree_tree(tmp_path, request):
    """What users do today: a private copy of the project tree per test."""
    target = tmp_path / "tree"
    shutil.copytree(request.config.rootpath, target, symlinks=True)
    return target
''',
    "test_bench.py": '''\
"""Trivial tests; BENCH_FIXTURE names the fixture each one requests (none when empty)."""

import json
import os
from pathlib import Path

import pytest

FIXTURE = os.environ.get("BENCH_FIXTURE", "")
COUNT = int(os.environ.get("BENCH_COUNT", "1"))
PROBE = "d000/d00/f000.txt"

if FIXTURE:
    pytestmark = [pytest.mark.usefixtures(FIXTURE)]


@pytest.mark.parametrize("i", range(COUNT))
def test_i(i, request):
    if i == 0:
        # In the call phase, which is not timed: say what the fixture really gave.
        value = request.getfixturevalue(FIXTURE) if FIXTURE else None
        info = {"euid": os.geteuid(), "backend": getattr(value, "backend", None)}
        if value is not None:
            path = os.fspath(value)
            info.update(path=path, sees_tree=(Path(path) / PROBE).is_file())
            info["is_mount"] = os.path.ismount(path)
        with open(os.environ["BENCH_OUT"] + ".info", "w") as f:
            json.dump(info, f)
''',
}
HARNESS_FILE_COUNT = len(HARNESS_FILES)


# --- variants and runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of giving a test its tree, or the no-fixture baseline."""

    key: str
    label: str
    fixture: str
    args: tuple[str, ...] = ()
    as_user: bool = False
    slow: bool = False
    expect: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_key(self) -> str:
        return "baseline_user" if self.as_user else "baseline_root"


VARIANTS = {
    v.key: v
    for v in (
        Variant("baseline_root", "baseline(root)", ""),
        Variant("baseline_user", "baseline(user)", "", as_user=True),
        Variant(
            "kernel_root",
            "kernel(root)",
            "overlay_root",
            ("--overlay-backend=kernel",),
            expect={"backend": "kernel", "euid": 0, "is_mount": True, "sees_tree": True},
        ),
        Variant(
            "kernel_user",
            "kernel(user)",
            "overlay_root",
            ("--overlay-backend=kernel",),
            as_user=True,
            expect={"backend": "kernel", "is_mount": True, "sees_tree": True},
        ),
        Variant(
            "fuse_root",
            "fuse(root)",
            "overlay_root",
            ("--overlay-backend=fuse",),
            expect={"backend": "fuse", "euid": 0, "is_mount": True, "sees_tree": True},
        ),
        Variant(
            "copy",
            "copy",
            "overlay_root",
            ("--overlay-backend=copy",),
            slow=True,
            expect={"backend": "copy", "sees_tree": True},
        ),
        Variant(
            "copytree",
            "tmp_path+copytree",
            "copytree_tree",
            slow=True,
            expect={"sees_tree": True},
        ),
    )
}
MEASURED = ("kernel_root", "kernel_user", "fuse_root", "copy", "copytree")


@dataclass(frozen=True)
class Plan:
    """How many tests each run has."""

    rounds: int
    fast_tests: int
    fast_warmup: int
    slow_warmup: int
    quick: bool

    def slow_tests(self, files: int) -> int:
        """Measured tests for the copying variants: fewer as the tree grows."""
        if files <= 1_000:
            return 10 if self.quick else 30
        if files <= 10_000:
            return 3 if self.quick else 10
        return 1 if self.quick else 3


@dataclass
class Cell:
    """Every sample of one (tree, variant), pooled over rounds."""

    setup: list[float] = field(default_factory=list)
    teardown: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def totals(self) -> list[float]:
        return [s + t for s, t in zip(self.setup, self.teardown, strict=True)]

    def stat(self, q: float) -> float | None:
        values = self.totals
        return percentile(values, q) if values else None


class Unpriv:
    """The repository's harness for running as a real unprivileged user, loaded on demand."""

    def __init__(self) -> None:
        self.module: ModuleType | None = None
        self.reason: str | None = None
        self._workdir_ctx: Any = None
        self.workdir: Path | None = None

    def start(self) -> None:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        try:
            from tests import _unpriv
        except ImportError as exc:
            self.reason = f"cannot import tests._unpriv from {REPO_ROOT}: {exc}"
            return
        self.reason = _unpriv.can_run_as_user()
        if self.reason is None:
            self.module = _unpriv
            self._workdir_ctx = _unpriv.user_workdir_ctx()
            self.workdir = self._workdir_ctx.__enter__()

    def stop(self) -> None:
        if self._workdir_ctx is not None:
            self._workdir_ctx.__exit__(None, None, None)
            self._workdir_ctx = None


def pytest_argv(variant: Variant) -> list[str]:
    """The exact command each run executes, in the tree's root."""
    return pytest_command(*variant.args, "test_bench.py")


def run_once(
    tree: Path,
    variant: Variant,
    tests: int,
    warmup: int,
    run_dir: Path,
    unpriv: Unpriv,
    cell: Cell,
) -> str:
    """Run pytest once; add the measured samples to *cell*; return a one-line summary."""
    out = run_dir / f"{variant.key}-{tree.name}-{time.monotonic_ns()}.json"
    run_as_user = None
    if variant.as_user:
        assert unpriv.module is not None
        run_as_user = unpriv.module.run_as_user
    outcome = run_pytest(
        pytest_argv(variant),
        cwd=tree,
        out=out,
        env={"BENCH_FIXTURE": variant.fixture, "BENCH_COUNT": str(tests + warmup)},
        timeout=RUN_TIMEOUT_S,
        run_as_user=run_as_user,
    )
    info = take_json(Path(f"{out}.info"))
    if info is None:  # without what the fixture gave, the figures count for nothing
        outcome.data, info = None, {}
    error = outcome.error()
    if error is not None:
        cell.errors.append(error)
        return failed_summary(error)
    mismatched = {k: info.get(k) for k, v in variant.expect.items() if info.get(k) != v}
    if variant.as_user and info.get("euid") == 0:
        mismatched["euid"] = 0
    if mismatched:
        error = f"the fixture did not give what was expected: {mismatched} (got {info})"
        cell.errors.append(error)
        return f"FAILED ({error})"
    assert outcome.data is not None
    rows = outcome.data["durations"]
    cell.info = info
    cell.first.append(rows[0][1] + rows[0][2])
    cell.wall.append(outcome.wall_s)
    for _, setup, teardown in rows[warmup:]:
        cell.setup.append(setup)
        cell.teardown.append(teardown)
    measured = [s + t for _, s, t in rows[warmup:]]
    return f"{len(measured)} tests, median {fmt_ms(median(measured))}, run {outcome.wall_s:.1f} s"


def schedule(
    sizes: Sequence[int], keys: Sequence[str], plan: Plan
) -> list[tuple[int, str, int, int, int]]:
    """(files, variant key, round, measured tests, warm-up tests), fast variants first.

    The fast variants go round-robin over trees and rounds, so a busy spell on a shared machine
    spreads over every cell instead of landing on one; the copying ones, which churn the disk,
    come last.
    """
    fast = [k for k in keys if not VARIANTS[k].slow]
    slow = [k for k in keys if VARIANTS[k].slow]
    jobs = [
        (files, key, r, plan.fast_tests, plan.fast_warmup)
        for r in range(plan.rounds)
        for files in sizes
        for key in fast
    ]
    jobs += [
        (files, key, 0, plan.slow_tests(files), plan.slow_warmup) for files in sizes for key in slow
    ]
    return jobs


# --- reporting ------------------------------------------------------------------------------


@dataclass
class Results:
    """Cells by (files, variant key), and the derived overheads."""

    cells: dict[tuple[int, str], Cell]

    def raw(self, files: int, key: str, q: float = 50) -> float | None:
        cell = self.cells.get((files, key))
        return cell.stat(q) if cell is not None else None

    def overhead(self, files: int, key: str, q: float = 50) -> float | None:
        """Percentile *q* of the variant minus the median of its baseline."""
        value = self.raw(files, key, q)
        base = self.raw(files, VARIANTS[key].baseline_key)
        if value is None or base is None:
            return None
        return value - base


def _fmt_files(files: int) -> str:
    return f"{files:,}"


def overhead_table(results: Results, sizes: Sequence[int], q: float) -> str:
    headers = [
        "tree",
        *[VARIANTS[k].label for k in MEASURED],
        "copy/kernel",
        "copytree/kernel",
        "copytree/fuse",
    ]
    rows = []
    for files in sizes:
        values = {k: results.overhead(files, k, q) for k in MEASURED}
        kernel = values["kernel_root"]
        rows.append(
            [
                _fmt_files(files),
                *[fmt_ms(values[k]) for k in MEASURED],
                fmt_ratio(ratio(values["copy"], kernel)),
                fmt_ratio(ratio(values["copytree"], kernel)),
                fmt_ratio(ratio(values["copytree"], values["fuse_root"])),
            ]
        )
    return render_table(headers, rows)


def detail_table(results: Results, sizes: Sequence[int]) -> str:
    headers = ["tree", "variant", "n", "setup", "teardown", "total", "p90", "first test"]
    rows = []
    for files in sizes:
        for key, variant in VARIANTS.items():
            cell = results.cells.get((files, key))
            if cell is None:
                continue
            if not cell.totals:
                rows.append([_fmt_files(files), variant.label, "0", "error", "", "", "", ""])
                continue
            rows.append(
                [
                    _fmt_files(files),
                    variant.label,
                    str(len(cell.totals)),
                    fmt_ms(median(cell.setup)),
                    fmt_ms(median(cell.teardown)),
                    fmt_ms(median(cell.totals)),
                    fmt_ms(percentile(cell.totals, 90)),
                    fmt_ms(median(cell.first)),
                ]
            )
    return render_table(headers, rows)


def goals(results: Results, sizes: Sequence[int]) -> list[Goal]:
    small, large = min(sizes), max(sizes)
    mid = 10_000 if 10_000 in sizes else large
    kernel = results.overhead
    out = [
        goal_at_most(
            f"flatness kernel(root) {large:,}/{small:,}",
            ratio(kernel(large, "kernel_root"), kernel(small, "kernel_root")),
            GOAL_FLATNESS,
        ),
        goal_at_most(
            f"unprivileged/root at {mid:,}",
            ratio(kernel(mid, "kernel_user"), kernel(mid, "kernel_root")),
            GOAL_UNPRIV_OVER_ROOT,
        ),
        goal_at_least(
            f"copytree/kernel at {mid:,}",
            ratio(kernel(mid, "copytree"), kernel(mid, "kernel_root")),
            GOAL_COPYTREE_OVER_KERNEL,
        ),
    ]
    for key in ("kernel_root", "kernel_user"):
        for files in sizes:
            value = results.overhead(files, key)
            out.append(
                goal_at_most(
                    f"{VARIANTS[key].label} median overhead at {files:,}",
                    value,
                    GOAL_ABSOLUTE_S,
                    target=f"<= {fmt_ms(GOAL_ABSOLUTE_S)}",
                    shown=fmt_ms(value, precise=True),
                )
            )
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-test overhead of overlay_root (kernel, as root and as a user; fuse; copy) "
        "against tmp_path + shutil.copytree, on generated trees of small files",
    )
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="Comma-separated tree sizes in files (default: 1000,10000,100000)",
    )
    add_quick_and_json(
        parser, "One round of the fast variants and fewer copies (about half the time)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(MEASURED),
        help=f"Comma-separated subset of {', '.join(MEASURED)} (baselines always run)",
    )
    add_cache_dir(parser, "Where generated trees are kept and reused")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes: give at least one positive size")
    args.variants = parse_choices(parser, "--variants", args.variants, MEASURED)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: list[int] = args.sizes
    plan = Plan(
        rounds=1 if args.quick else 3,
        fast_tests=100,
        fast_warmup=10,
        slow_warmup=1,
        quick=args.quick,
    )
    command = command_line(argv)
    cache: Path = args.cache_dir
    prepare_cache(cache)

    unpriv = Unpriv()
    wanted = list(args.variants)
    keys = ["baseline_root", *[k for k in wanted if not VARIANTS[k].as_user]]
    if "kernel_user" in wanted:
        unpriv.start()
        if unpriv.reason is None:
            keys += ["baseline_user", "kernel_user"]
        else:
            print(f"kernel(user) skipped: {unpriv.reason}", flush=True)

    trees: dict[int, TreeInfo] = {}
    for files in sizes:
        trees[files] = ensure_tree(cache, files)
        install_files(trees[files].path, HARNESS_FILES)

    machine = print_machine(cache, command)
    print(f"each run, in the tree's root: {shlex.join(pytest_argv(VARIANTS['baseline_root']))}")
    print(
        "  + --overlay-backend=kernel|copy where it applies; env "
        + BENCH_ENV_TEXT
        + " BENCH_FIXTURE=<fixture> BENCH_COUNT=<tests>"
    )
    print(
        f"plan: fast variants {plan.rounds} round(s) x ({plan.fast_tests} measured + "
        f"{plan.fast_warmup} warm-up) tests; copying variants "
        + ", ".join(f"{plan.slow_tests(n)} at {n:,}" for n in sizes)
        + f" (+{plan.slow_warmup} warm-up)"
    )
    print(flush=True)

    cells: dict[tuple[int, str], Cell] = {}
    jobs = schedule(sizes, keys, plan)
    with results_dir(cache) as scratch:
        started = time.perf_counter()
        try:
            for index, (files, key, rnd, tests, warmup) in enumerate(jobs, 1):
                variant = VARIANTS[key]
                cell = cells.setdefault((files, key), Cell())
                run_dir = unpriv.workdir if variant.as_user else scratch
                assert run_dir is not None
                path = trees[files].path
                summary = run_once(path, variant, tests, warmup, run_dir, unpriv, cell)
                label = f"[{index}/{len(jobs)}] {files:>7,} {variant.label:<18} round {rnd + 1}"
                print(f"{label}: {summary}", flush=True)
        finally:
            unpriv.stop()
    elapsed = time.perf_counter() - started

    results = Results(cells)
    print()
    print("trees (data files, plus the 3 harness files in each root):")
    for files in sizes:
        tree = trees[files]
        note = "reused" if tree.reused else "generated now"
        print(
            f"  {tree.files:,} files + {HARNESS_FILE_COUNT}, {tree.dirs:,} dirs, "
            f"{tree.bytes / 1e6:.1f} MB at {tree.path} ({note}; generation took "
            f"{tree.generated_in_s:.1f} s)"
        )
    print()
    print("per-test overhead, median (setup + teardown, minus the no-fixture baseline):")
    print(overhead_table(results, sizes, 50))
    print()
    print("per-test overhead, p90 (p90 of setup + teardown, minus the baseline median):")
    print(overhead_table(results, sizes, 90))
    print()
    print("raw setup + teardown per variant (medians; 'first test' includes one-off costs):")
    print(detail_table(results, sizes))
    print()
    goal_list = goals(results, sizes)
    print_goals(goal_list)
    errors = [(n, k, e) for (n, k), c in cells.items() for e in c.errors]
    for files, key, error in errors:
        print(f"\nERROR {files:,} {VARIANTS[key].label}:\n{error}")
    print(f"\ntotal benchmark time {elapsed:.0f} s")

    if args.json is not None:
        figures = {
            "plan": asdict(plan),
            "trees": {str(n): trees[n].to_json() for n in sizes},
            "cells": {
                f"{n}/{k}": {
                    "setup_s": c.setup,
                    "teardown_s": c.teardown,
                    "first_test_s": c.first,
                    "run_wall_s": c.wall,
                    "median_s": c.stat(50),
                    "p90_s": c.stat(90),
                    "info": c.info,
                    "errors": c.errors,
                }
                for (n, k), c in cells.items()
            },
            "overhead_s": {
                str(n): {
                    k: {"median": results.overhead(n, k), "p90": results.overhead(n, k, 90)}
                    for k in MEASURED
                }
                for n in sizes
            },
        }
        write_json(args.json, command, machine, figures, goal_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
