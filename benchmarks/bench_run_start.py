"""What ``--overlay`` adds to a run whatever its number of tests: a one-test project, plain
against in place.

In place pays some costs once per run: importing the machinery, probing the kernel, the
private mount namespace and its janitor, the first mount, and what happens at exit.  On a
suite of a few thousand small tests they are points of the ratio to the plain run.  This
script runs a project of one test that reads a file of the tree as pairs of runs, ``python -m
pytest`` and ``python -m pytest --overlay`` (kernel backend), alternating which goes first,
after one warm-up run of each, and prints the medians of the wall time, their difference and
ratio, the difference of the fastest runs, and that of the CPU times (user + system, the
children's too), which other processes' load stretches less: as root and, where
``tests/_unpriv.py`` can run a second user, as an ordinary user.

It measures twice: with the plugin's bytecode written, as in most users' runs, and with
``PYTHONDONTWRITEBYTECODE=1`` and a copy of the plugin that has none (as in a container image
that sets it, where pytest parses, rewrites and compiles each module of the plugin on every
run).

    python benchmarks/bench_run_start.py [--pairs 15] [--no-user] [--against CHECKOUT]

With ``--against`` another checkout's plugin (say, the commit before a change) runs in place
in the same rounds too, and a second table compares the two.
"""

from __future__ import annotations

import argparse
import os
import resource
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
    as_user: RunAsUser | None
    # The ordinary user's uid and gid: what a root run writes (bytecode) is made theirs.
    owner: tuple[int, int] | None

    def timed(self, argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
        """The wall and CPU time (user + system, its children's too) of one run of *argv*,
        which must pass its one test."""
        # The harness file is not used: the run's times are the figures.
        out = Path(tempfile.gettempdir()) / f"bench-run-start-{time.monotonic_ns()}.json"
        cpu_before = _children_cpu()
        outcome = run_pytest(
            argv, cwd=self.project, out=out, env=env, timeout=300, run_as_user=self.as_user
        )
        cpu = _children_cpu() - cpu_before
        if outcome.returncode != 0 or "1 passed" not in outcome.output:
            raise SystemExit(f"a measured run failed ({outcome.returncode}):\n{outcome.output}")
        if self.owner is not None and self.as_user is None:
            for path in [self.project, *self.project.rglob("*")]:
                os.lchown(path, *self.owner)
        return outcome.wall_s, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# A variant measured: its name, pytest's arguments and the environment (PYTHONPATH and
# PYTHONDONTWRITEBYTECODE: which plugin, with or without its bytecode).
Variant = tuple[str, Sequence[str], dict[str, str]]
Times = list[tuple[float, float]]


def measure(runner: Runner, rounds: int, variants: Sequence[Variant]) -> dict[str, Times]:
    """(wall, CPU) times of each variant, one run of each per round."""
    times: dict[str, Times] = {name: [] for name, _, _ in variants}
    for _, args, env in variants:
        runner.timed(pytest_command(*args), env)  # the page cache, and the bytecode if written
    for index in range(rounds):
        # Rotate the order, so that a machine that slows down over time favours none.
        shift = index % len(variants)
        for name, args, env in [*variants[shift:], *variants[:shift]]:
            times[name].append(runner.timed(pytest_command(*args), env))
    return times


def _plugin_copy(checkout: Path, parent: Path) -> Path:
    """A copy of *checkout*'s package without bytecode in *parent*; returns the directory to
    put on PYTHONPATH."""
    where = parent / f"_plugin-{len(list(parent.glob('_plugin-*')))}"
    shutil.copytree(
        checkout / "pytest_overlay",
        where / "pytest_overlay",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return where


def _row(label: str, ours: Times, theirs: Times) -> list[str]:
    """*theirs* against *ours*: the medians of the wall time, their difference and ratio; the
    difference of the fastest runs (the least disturbed by other processes); and the
    difference and ratio of the CPU times' medians."""
    wall = [median([t[0] for t in times]) for times in (theirs, ours)]
    fastest = [min(t[0] for t in times) for times in (theirs, ours)]
    cpu = [median([t[1] for t in times]) for times in (theirs, ours)]
    return [
        label,
        *map(fmt_ms, wall),
        fmt_ms(wall[1] - wall[0]),
        fmt_ratio(ratio(wall[1], wall[0])),
        fmt_ms(fastest[1] - fastest[0]),
        fmt_ms(cpu[1] - cpu[0]),
        fmt_ratio(ratio(cpu[1], cpu[0])),
    ]


COLUMNS = ["difference", "ratio", "difference, fastest", "difference CPU", "ratio CPU"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=15, help="rounds of runs (default 15)")
    parser.add_argument("--no-user", action="store_true", help="measure as root only")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="Also run --overlay with the plugin of another checkout (say, before a change), "
        "in the same rounds, and compare",
    )
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
    rows, compared = [], []
    with ctx as scratch:
        project = Path(scratch) / "project"
        (project / "src").mkdir(parents=True)
        (project / "src" / "f1.txt").write_text("one\n")
        install_files(project, PROJECT)
        checkouts = [REPO_ROOT, *([args.against.resolve()] if args.against else [])]
        # Outside the project, where the ordinary user reaches them too (the scratch is theirs).
        copies = [_plugin_copy(checkout, project.parent) for checkout in checkouts]
        owner = unpriv.ensure_test_user() if unpriv is not None else None
        if owner is not None:
            for path in [Path(scratch), *Path(scratch).rglob("*")]:
                os.lchown(path, *owner)
        who = [("root", None)] + ([("ordinary user", unpriv.run_as_user)] if unpriv else [])
        for name, as_user in who:
            for label, bytecode in (("bytecode written", ""), ("no bytecode", "1")):
                print(f"  as {name}, {label} ...", flush=True)
                paths = checkouts if not bytecode else copies
                envs = [{"PYTHONPATH": str(p), "PYTHONDONTWRITEBYTECODE": bytecode} for p in paths]
                variants: list[Variant] = [
                    ("plain", (), envs[0]),
                    ("ours", ("--overlay",), envs[0]),
                ]
                if args.against:
                    variants.append(("theirs", ("--overlay",), envs[1]))
                times = measure(Runner(project, as_user, owner), args.pairs, variants)
                rows.append(_row(f"{name}, {label}", times["ours"], times["plain"]))
                if args.against:
                    compared.append(_row(f"{name}, {label}", times["ours"], times["theirs"]))
    print(f"\na one-test project, {args.pairs} rounds, medians of the wall time unless said:")
    print(render_table(["run", "plain", "--overlay", *COLUMNS], rows))
    if args.against:
        print(f"\n--overlay of this checkout against that of {args.against}, in the same rounds:")
        print(render_table(["run", "theirs", "ours", *COLUMNS], compared))
    if user_reason is not None:
        print(f"not measured as an ordinary user: {user_reason}")
    print_end(time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
