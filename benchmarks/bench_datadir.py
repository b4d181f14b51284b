"""``overlay_root`` against pytest-datadir on a 10,000-file tree: per-test cost and whole runs.

The same suite is written twice: 20 tests that each change one file of the cached 10,000-file
tree, once in ``overlay_root`` (the tree is the lower layer, ``--overlay-lower``) and once in
pytest-datadir's ``shared_datadir`` (the test module's ``data/`` is a symbolic link to the same
tree, so each test gets a copy of it).  A third module of tests that request no fixture is the
baseline for pytest's own per-test cost.

One pytest run holds all three modules, interleaved test by test, and gives the per-test figure:
each test's setup + teardown from ``pytest_runtest_logreport``, as in ``bench_per_test.py``.
Separate runs of each module alone give the whole-run wall time.  The goal applies to the
per-test figure.

Run ``python benchmarks/bench_datadir.py --help`` for the options; ``benchmarks/README.md`` says
how to read the output.  The script reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BENCH_ENV_TEXT,
    Goal,
    TreeInfo,
    add_cache_dir,
    add_quick_and_json,
    check_outcome,
    command_line,
    ensure_tree,
    failed_summary,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    goal_at_least,
    install_files,
    median,
    percentile,
    prepare_cache,
    print_end,
    print_goals,
    print_machine,
    pytest_command,
    ratio,
    render_table,
    results_dir,
    run_pytest,
    tree_digest,
    tree_unchanged_goal,
    write_json,
)

RUN_TIMEOUT_S = 3 * 3600

TREE_FILES = 10_000
GOAL_DATADIR_OVER_OVERLAY = 40.0
DEFAULT_TESTS = 20

# --- the project ----------------------------------------------------------------------------

# The overlay and datadir test modules differ only in their docstring, in the fixture that gives
# the tree (<fixture>) and in what the first test records about it (<records>).
_CHANGE_ONE_FILE = '''
import os
from pathlib import Path

import pytest

TREE = Path(os.environ["BENCH_TREE"])
COUNT = int(os.environ["BENCH_COUNT"])


def target(i):
    """A different data file for each test, spread over the tree."""
    index = (i * 997) % 10_000
    leaf = index // 100
    return f"d{leaf // 10:03d}/d{leaf % 10:02d}/f{index % 100:03d}.txt"


@pytest.mark.parametrize("i", range(COUNT))
def test_change_one_file(i, <fixture>, record_property):
    if i == 0:  # what the fixture gave, once, in the call phase (which is not timed)
<records>
    path = <fixture> / target(i)
    original = (TREE / target(i)).read_bytes()
    assert path.read_bytes() == original
    path.write_bytes(original.upper() + b"changed\\n")
    assert path.read_bytes() == original.upper() + b"changed\\n"
    assert (TREE / target(i)).read_bytes() == original
'''


def _change_one_file(docstring: str, fixture: str, records: Sequence[str]) -> str:
    """The text of a test module: *docstring*, then the template for *fixture*."""
    lines = "".join(f"        record_property({record})\n" for record in records)
    body = _CHANGE_ONE_FILE.replace("<fixture>", fixture).replace("<records>\n", lines)
    return f'"""{docstring}"""\n{body}'


HARNESS_FILES = {
    "pytest.ini": """\
[pytest]
# Remove each passing test's tmp_path at its teardown, as the overlay removes its upper layer:
# pytest-datadir then pays for deleting its copy too (with the default policy, "all", the
# deletion only moves to a later session).
tmp_path_retention_policy = failed
norecursedirs = data
""",
    "conftest.py": '''\
"""Harness of benchmarks/bench_datadir.py: records each test's phases; interleaves modules."""

import itertools
import json
import os

_TESTS = {}
_FAILURES = []


def pytest_collection_modifyitems(items):
    """With BENCH_INTERLEAVE=1, alternate the modules test by test: baseline, overlay, datadir."""
    if os.environ.get("BENCH_INTERLEAVE") != "1":
        return
    groups = {}
    for item in items:
        groups.setdefault(item.path.name, []).append(item)
    rows = itertools.zip_longest(*groups.values())
    items[:] = [item for row in rows for item in row if item is not None]


def pytest_runtest_logreport(report):
    entry = _TESTS.setdefault(
        report.nodeid, {"setup": 0.0, "call": 0.0, "teardown": 0.0, "props": {}}
    )
    entry[report.when] += report.duration
    if report.when == "call":
        entry["props"] = dict(report.user_properties)
    if report.failed:
        _FAILURES.append(f"{report.nodeid} {report.when}: {report.longreprtext[-3000:]}")


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"tests": list(_TESTS.items()), "failures": _FAILURES}, f)
''',
    "test_baseline.py": '''\
"""No fixture: pytest's own per-test cost."""

import os

import pytest

COUNT = int(os.environ["BENCH_COUNT"])


@pytest.mark.parametrize("i", range(COUNT))
def test_nothing(i):
    assert i >= 0
''',
    "test_overlay.py": _change_one_file(
        "Each test changes one file of the 10,000-file tree in its own overlay of it.\n\n"
        "The run passes --overlay-lower=<the tree>, so overlay_root is a view of the tree.\n",
        "overlay_root",
        [
            '"backend", overlay_root.backend',
            '"is_mount", os.path.ismount(overlay_root)',
            '"files", sum(len(names) for _, _, names in os.walk(overlay_root))',
        ],
    ),
    "test_datadir.py": _change_one_file(
        "Each test changes one file of the 10,000-file tree in its own copy (pytest-datadir).\n\n"
        "data/ beside this module is a symbolic link to the tree; shared_datadir copies it for "
        "each test.\n",
        "shared_datadir",
        [
            '"backend", "datadir"',
            '"files", sum(len(names) for _, _, names in os.walk(shared_datadir))',
        ],
    ),
}


def install_project(cache: Path, tree: Path) -> Path:
    """The project directory, with its harness and ``data`` -> *tree* (idempotent)."""
    project = cache / "datadir-project"
    project.mkdir(mode=0o755, exist_ok=True)
    install_files(project, HARNESS_FILES)
    link = project / "data"
    if not link.is_symlink() or os.readlink(link) != os.fspath(tree):
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(tree, target_is_directory=True)
    return project


# --- runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Way:
    """One way of writing the suite: a test module and the fixture it uses."""

    key: str
    label: str
    module: str
    expect: dict[str, Any]


WAYS = {
    w.key: w
    for w in (
        Way("baseline", "no fixture (baseline)", "test_baseline.py", {}),
        Way(
            "overlay",
            "overlay_root (kernel)",
            "test_overlay.py",
            {"backend": "kernel", "is_mount": True},
        ),
        Way("datadir", "shared_datadir", "test_datadir.py", {"backend": "datadir"}),
    )
}


@dataclass
class Cell:
    """Every test of one way in one run."""

    setup: list[float] = field(default_factory=list)
    call: list[float] = field(default_factory=list)
    teardown: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> list[float]:
        return [s + t for s, t in zip(self.setup, self.teardown, strict=True)]

    @property
    def in_run(self) -> float:
        """Setup + call + teardown of every test of this way, summed."""
        return sum(self.setup) + sum(self.call) + sum(self.teardown)


@dataclass
class Run:
    """One pytest run."""

    name: str
    modules: list[str]
    interleave: bool
    load_before: float
    wall_s: float = 0.0
    exit_code: int = 0
    cells: dict[str, Cell] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    tree_unchanged: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def pytest_argv(tree: Path, modules: Sequence[str]) -> list[str]:
    """The exact command of a run, in the project's root."""
    return pytest_command("--overlay-backend=kernel", f"--overlay-lower={tree}", *modules)


def run_once(
    name: str,
    project: Path,
    tree: Path,
    pristine: str,
    tree_files: int,
    ways: Sequence[str],
    tests: int,
    results: Path,
) -> Run:
    """Run pytest once on the modules of *ways*; collect and check the per-test figures."""
    modules = [WAYS[k].module for k in ways]
    run = Run(name, modules, len(ways) > 1, os.getloadavg()[0])
    outcome = run_pytest(
        pytest_argv(tree, modules),
        cwd=project,
        out=results / f"{name}-{time.monotonic_ns()}.json",
        env={
            "BENCH_TREE": os.fspath(tree),
            "BENCH_COUNT": str(tests),
            "BENCH_INTERLEAVE": "1" if run.interleave else "0",
        },
        timeout=RUN_TIMEOUT_S,
    )
    run.wall_s, run.exit_code = outcome.wall_s, outcome.returncode
    run.tree_unchanged, run.errors = check_outcome(outcome, tree, pristine)
    data = outcome.data or {}
    by_module = {WAYS[k].module: k for k in ways}
    for nodeid, entry in data.get("tests", []):
        key = by_module.get(nodeid.split("::", 1)[0])
        if key is None:
            continue
        cell = run.cells.setdefault(key, Cell())
        cell.setup.append(float(entry["setup"]))
        cell.call.append(float(entry["call"]))
        cell.teardown.append(float(entry["teardown"]))
        if entry["props"]:
            cell.info = dict(entry["props"])
        run.order.append(key)
    for key in ways:
        cell = run.cells.get(key, Cell())
        if len(cell.totals) != tests:
            run.errors.append(f"{key}: expected {tests} tests, got {len(cell.totals)}")
        expect = dict(WAYS[key].expect)
        if key != "baseline":
            expect["files"] = tree_files
        wrong = {k: cell.info.get(k) for k, v in expect.items() if cell.info.get(k) != v}
        if wrong:
            run.errors.append(f"{key}: the fixture did not give what was expected: {wrong}")
    return run


# --- reporting ------------------------------------------------------------------------------


def cell_median(run: Run | None, key: str) -> float | None:
    if run is None or not run.ok or key not in run.cells:
        return None
    return median(run.cells[key].totals)


def minus(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="overlay_root against pytest-datadir's shared_datadir on a 10,000-file "
        "tree: per-test setup + teardown (one run, interleaved) and whole-run wall time",
    )
    add_quick_and_json(parser, "5 tests per way instead of 20 (about a quarter)")
    parser.add_argument(
        "--tests",
        type=int,
        default=None,
        help=f"Tests per way (default {DEFAULT_TESTS}; 5 with --quick)",
    )
    add_cache_dir(parser, "Where the tree and the project are kept")
    args = parser.parse_args(argv)
    if args.tests is None:
        args.tests = 5 if args.quick else DEFAULT_TESTS
    if args.tests < 1:
        parser.error("--tests must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tests: int = args.tests
    command = command_line(argv)
    cache: Path = args.cache_dir
    prepare_cache(cache)
    tree_info: TreeInfo = ensure_tree(cache, TREE_FILES)
    tree = tree_info.path
    project = install_project(cache, tree)
    pristine, tree_files = tree_digest(tree)
    all_ways = list(WAYS)

    machine = print_machine(cache, command)
    print(f"runs, in {project}:")
    same_argv = pytest_argv(tree, [WAYS[k].module for k in all_ways])
    print(f"  same run (interleaved): {shlex.join(same_argv)}")
    for key in ("overlay", "datadir", "baseline"):
        print(f"  {key} alone: {shlex.join(pytest_argv(tree, [WAYS[key].module]))}")
    print(
        "  env "
        + BENCH_ENV_TEXT
        + f" BENCH_TREE={tree} BENCH_COUNT={tests} BENCH_INTERLEAVE=1 (same run) or 0"
    )
    others = tree_files - tree_info.files
    extra = f" + {others} other files (bench_per_test's harness)" if others else ""
    print(
        f"tree: {tree_info.files:,} data files{extra}, "
        f"{tree_info.dirs:,} dirs, {tree_info.bytes / 1e6:.1f} MB "
        f"at {tree} ({'reused' if tree_info.reused else 'generated now'}); "
        f"{project / 'data'} -> {tree}"
    )
    print(f"plan: {tests} tests per way; one interleaved run, then each module alone")
    print(flush=True)

    runs: dict[str, Run] = {}
    jobs: list[tuple[str, list[str]]] = [
        ("same run", all_ways),
        ("overlay alone", ["overlay"]),
        ("datadir alone", ["datadir"]),
        ("baseline alone", ["baseline"]),
    ]
    with results_dir(cache) as results:
        started = time.perf_counter()
        for index, (name, ways) in enumerate(jobs, 1):
            run = run_once(name, project, tree, pristine, tree_files, ways, tests, results)
            runs[name] = run
            if run.ok:
                parts = [
                    f"{k} median {fmt_ms(median(run.cells[k].totals))}"
                    for k in ways
                    if k in run.cells
                ]
                summary = (
                    f"{run.wall_s:.2f} s; setup+teardown {', '.join(parts)}; "
                    f"load before {run.load_before:.2f}"
                )
            else:
                summary = failed_summary(run.errors[0])
            print(f"[{index}/{len(jobs)}] {name}: {summary}", flush=True)
    elapsed = time.perf_counter() - started

    same = runs["same run"]
    print()
    print(
        f"per test, in the same run (interleaved; {tests} tests per way; setup + teardown "
        "from report.duration):"
    )
    headers = [
        "way",
        "setup",
        "teardown",
        "setup+teardown",
        "p90",
        "first test",
        "minus baseline",
        "tests in-run total",
    ]
    rows = []
    base = cell_median(same, "baseline")
    for key in all_ways:
        cell = same.cells.get(key)
        if cell is None or not cell.totals:
            rows.append([WAYS[key].label, "error", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                WAYS[key].label,
                fmt_ms(median(cell.setup)),
                fmt_ms(median(cell.teardown)),
                fmt_ms(median(cell.totals)),
                fmt_ms(percentile(cell.totals, 90)),
                fmt_ms(cell.totals[0]),
                "" if key == "baseline" else fmt_ms(minus(median(cell.totals), base)),
                fmt_ms(cell.in_run),
            ]
        )
    print(render_table(headers, rows))
    print()
    print("whole-run wall time (each module alone, pytest startup included):")
    wall_rows = []
    for key in ("overlay", "datadir", "baseline"):
        run = runs[f"{key} alone"]
        wall_rows.append([WAYS[key].label, fmt_s(run.wall_s if run.ok else None), str(tests)])
    print(render_table(["way", "wall", "tests"], wall_rows))
    print()

    overlay_pt, datadir_pt = cell_median(same, "overlay"), cell_median(same, "datadir")
    per_test = ratio(datadir_pt, overlay_pt)
    per_test_net = ratio(minus(datadir_pt, base), minus(overlay_pt, base))
    in_run = None
    if same.ok:
        in_run = ratio(same.cells["datadir"].in_run, same.cells["overlay"].in_run)
    overlay_run, datadir_run = runs["overlay alone"], runs["datadir alone"]
    whole = None
    if overlay_run.ok and datadir_run.ok:
        whole = ratio(datadir_run.wall_s, overlay_run.wall_s)
    print("ratios, datadir / overlay:")
    print(
        render_table(
            ["figure", "overlay", "datadir", "datadir/overlay"],
            [
                [
                    "per test: median setup+teardown (the goal)",
                    fmt_ms(overlay_pt, precise=True),
                    fmt_ms(datadir_pt),
                    fmt_ratio(per_test),
                ],
                [
                    "per test: the same minus the baseline median",
                    fmt_ms(minus(overlay_pt, base), precise=True),
                    fmt_ms(minus(datadir_pt, base)),
                    fmt_ratio(per_test_net),
                ],
                [
                    f"the {tests} tests, in the same run (setup+call+teardown)",
                    fmt_ms(same.cells["overlay"].in_run if same.ok else None),
                    fmt_ms(same.cells["datadir"].in_run if same.ok else None),
                    fmt_ratio(in_run),
                ],
                [
                    "whole run, each module alone (wall)",
                    fmt_s(overlay_run.wall_s if overlay_run.ok else None),
                    fmt_s(datadir_run.wall_s if datadir_run.ok else None),
                    fmt_ratio(whole),
                ],
            ],
        )
    )
    print()
    goal_list: list[Goal] = [
        goal_at_least(
            "per-test setup+teardown, shared_datadir / overlay_root, same run",
            per_test,
            GOAL_DATADIR_OVER_OVERLAY,
        ),
        tree_unchanged_goal(sum(r.tree_unchanged for r in runs.values()), len(runs)),
    ]
    print_goals(goal_list)
    print(
        "(the goal applies to the per-test figure; the whole-run ratio includes pytest's "
        "startup and the tests' own work, and is shown for context)"
    )
    for run in runs.values():
        for error in run.errors:
            print(f"\nERROR {run.name}:\n{error}")
    load_after = print_end(elapsed)

    if args.json is not None:
        figures = {
            "load_average_at_end": load_after,
            "tree": {**tree_info.to_json(), "files_with_harness": tree_files, "digest": pristine},
            "project": os.fspath(project),
            "tests_per_way": tests,
            "commands": {
                name: shlex.join(pytest_argv(tree, [WAYS[k].module for k in ways]))
                for name, ways in jobs
            },
            "runs": {name: asdict(run) for name, run in runs.items()},
            "ratios": {
                "per_test": per_test,
                "per_test_minus_baseline": per_test_net,
                "in_run_total": in_run,
                "whole_run_wall": whole,
            },
        }
        write_json(args.json, command, machine, figures, goal_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
