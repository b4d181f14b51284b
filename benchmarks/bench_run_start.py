"""What ``--overlay`` adds to a run whatever its number of tests: a one-test project, plain
against in place.

In place pays some costs once per run: importing the machinery, probing the kernel, the
private mount namespace and its janitor, the first mount, and what happens at exit.  On a
suite of a few thousand small tests they are points of the ratio to the plain run.  This
script runs a project of one test that reads a file of the tree as pairs of runs, ``python -m
pytest`` and ``python -m pytest --overlay`` (kernel backend), alternating which goes first,
after one warm-up run of each, and prints both medians, their difference and their ratio: as
root and, where ``tests/_unpriv.py`` can run a second user, as an ordinary user.

It measures twice: with the plugin's bytecode written, as in most users' runs, and with
``PYTHONDONTWRITEBYTECODE=1`` and a copy of the plugin that has none (as in a container image
that sets it, where pytest parses, rewrites and compiles each module of the plugin on every
run).

    python benchmarks/bench_run_start.py [--pairs 15] [--no-user]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    REPO_ROOT,
    command_line,
    fmt_ms,
    fmt_ratio,
    install_files,
    median,
    print_end,
    print_machine,
    pytest_command,
    ratio,
    render_table,
    run_pytest,
)

PROJECT = {
    "test_read.py": (
        "from pathlib import Path\n\n\n"
        "def test_reads_the_tree():\n"
        '    assert Path("src/f1.txt").read_text() == "one\\n"\n'
    ),
    "pyproject.toml": "[tool.pytest.ini_options]\n",
}
RunAsUser = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Runner:
    """Runs pytest in the project as root or as the ordinary user (*as_user*)."""

    project: Path
    env: dict[str, str]
    as_user: RunAsUser | None
    # The ordinary user's uid and gid: what a root run writes (bytecode) is made theirs.
    owner: tuple[int, int] | None

    def timed(self, argv: Sequence[str]) -> float:
        """The wall time of one run of *argv*, which must pass its one test."""
        # The harness file is not used: the run's wall time is the figure.
        out = Path(tempfile.gettempdir()) / f"bench-run-start-{time.monotonic_ns()}.json"
        outcome = run_pytest(
            argv, cwd=self.project, out=out, env=self.env, timeout=300, run_as_user=self.as_user
        )
        if outcome.returncode != 0 or "1 passed" not in outcome.output:
            raise SystemExit(f"a measured run failed ({outcome.returncode}):\n{outcome.output}")
        if self.owner is not None and self.as_user is None:
            for path in [self.project, *self.project.rglob("*")]:
                os.lchown(path, *self.owner)
        return outcome.wall_s


def measure(runner: Runner, pairs: int) -> tuple[list[float], list[float]]:
    """Paired wall times: plain, and in place."""
    plain: list[float] = []
    in_place: list[float] = []
    without = pytest_command()
    with_overlay = pytest_command("--overlay")
    runner.timed(without)  # the page cache, and the bytecode where written
    runner.timed(with_overlay)
    for index in range(pairs):
        # Alternate the order, so a machine that slows down over time favours neither.
        order = [(without, plain), (with_overlay, in_place)]
        for argv, into in order if index % 2 == 0 else reversed(order):
            into.append(runner.timed(argv))
    return plain, in_place


def _plugin_copy(parent: Path) -> Path:
    """A copy of this checkout's package without bytecode; returns the directory to put on
    PYTHONPATH."""
    where = parent / "_plugin"
    shutil.copytree(
        REPO_ROOT / "pytest_overlay",
        where / "pytest_overlay",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return where


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=15, help="paired runs (default 15)")
    parser.add_argument("--no-user", action="store_true", help="measure as root only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run this benchmark as root (it runs the ordinary user's part itself)")
    started = time.perf_counter()
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    print_machine(DEFAULT_CACHE, command_line(argv))
    unpriv: Any = None
    user_reason = "--no-user" if args.no_user else None
    if not args.no_user:
        sys.path.insert(0, str(REPO_ROOT))
        from tests import _unpriv

        user_reason = _unpriv.can_run_as_user()
        unpriv = _unpriv if user_reason is None else None
    ctx = unpriv.user_workdir_ctx() if unpriv else tempfile.TemporaryDirectory(prefix="bench-")
    rows = []
    with ctx as scratch:
        project = Path(scratch) / "project"
        (project / "src").mkdir(parents=True)
        (project / "src" / "f1.txt").write_text("one\n")
        install_files(project, PROJECT)
        # Outside the project, where the ordinary user reaches it too (the scratch is theirs).
        copy = _plugin_copy(project.parent)
        owner = unpriv.ensure_test_user() if unpriv is not None else None
        if owner is not None:
            for path in [Path(scratch), *Path(scratch).rglob("*")]:
                os.lchown(path, *owner)
        setups = (
            ("bytecode written", {"PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": ""}),
            ("no bytecode", {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}),
        )
        who = [("root", None)] + ([("ordinary user", unpriv.run_as_user)] if unpriv else [])
        for name, as_user in who:
            for label, env in setups:
                print(f"  as {name}, {label} ...", flush=True)
                runner = Runner(project, env, as_user, owner)
                plain, in_place = measure(runner, args.pairs)
                difference = median(in_place) - median(plain)
                rows.append(
                    [
                        f"{name}, {label}",
                        fmt_ms(median(plain)),
                        fmt_ms(median(in_place)),
                        fmt_ms(difference),
                        fmt_ratio(ratio(median(in_place), median(plain))),
                    ]
                )
    print(f"\na one-test project, {args.pairs} paired runs, medians of the wall time:")
    headers = ["run", "plain", "--overlay", "difference", "ratio"]
    print(render_table(headers, rows))
    if user_reason is not None:
        print(f"not measured as an ordinary user: {user_reason}")
    print_end(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
