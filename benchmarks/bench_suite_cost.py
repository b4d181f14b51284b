"""What a suite of many small tests pays for pytest-overlay: in place against plain, and per test.

**The suite.** A generated project of small tests, 3,000 that only read the tree and 300 that
write to it (one in eleven: a file created and deleted, a data file rewritten and put back, so
that a plain run leaves the tree as it was), runs as ``python -m pytest`` (plain) and as
``python -m pytest --overlay`` (in place) in alternating pairs, as root and, where
``tests/_unpriv.py`` can run a second user, as an ordinary user.  The script prints the median
wall times and their ratio, the median of each pair's own ratio (a pair's two runs share the
machine's state of the moment, which drifts here by 20% from minute to minute) and the ratio
of CPU times (which other processes' load hardly stretches), and checks the real tree's digest
after every run.  Inside pytest it also splits
in place's extra CPU per test (the least disturbed run of each) into setup + teardown, where
the plugin mounts and reuses views, and the rest (the test's call and pytest's reports).

**Per test.** The same project, smaller, runs twice per variant (all tests reading, then all
writing): a backend (kernel, fuse, copy) in fixture mode (``overlay_root``) or in place.  A
harness records each test's setup + teardown; a variant's overhead is its mean (less the
slowest 1%) minus the plain run's, for read-only and writing tests apart, each the best of a
few rounds run round-robin (on a shared machine, the round least disturbed by others).
Beside them, timed in the same rounds: pytest's own cost of one more fixture (a fixture like
``overlay_root`` that does nothing), and the raw kernel cycle a test cannot do without, a
tmpfs, an overlay mount on it and one lazy detach (``MNT_DETACH`` of the tmpfs takes the
overlay), wall and CPU time.

    python benchmarks/bench_suite_cost.py [--quick] [--pairs 5] [--rounds 2] [--no-user]
                                          [--against REV]

``--against REV`` runs the suite in place a third time in each round, with the plugin of git
revision REV (``git archive``): the two versions side by side, on the same minutes of the
machine, which is how a change to the per-test path shows through this machine's drift.

Goals (issue 20): in place at most 1.15x plain, as root and as an ordinary user, the tree
unchanged; the kernel fixture's overhead per test at most 1.5x the raw cycle; a read-only test
on fuse at most 1 ms.  Each is printed on wall time and on CPU time (which a loaded machine
stretches far less).  The script reports; it exits 0 whether or not they are met.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    REPO_ROOT,
    Goal,
    add_quick_and_json,
    command_line,
    failed_summary,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    goal_at_most,
    install_files,
    median,
    print_end,
    print_goals,
    print_machine,
    pytest_command,
    ratio,
    render_table,
    run_pytest,
    tree_digest,
    tree_unchanged_goal,
    write_json,
)

GOAL_IN_PLACE = 1.15
AGAINST = "in place, --against"
GOAL_FIXTURE_OVER_RAW = 1.5
GOAL_FUSE_READ_ONLY_S = 1e-3
WARMUP = 10
KINDS = ("read", "write", "read cpu", "write cpu")
TIMEOUT_S = 3600

PROJECT = {
    "pytest.ini": "[pytest]\n",
    "conftest.py": '''\
"""Harness of benchmarks/bench_suite_cost.py: each test's setup + teardown, by kind."""

import json
import os
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_ROWS = []
_CPU = []
_PROTOCOL = []
_FAILURES = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.process_time()
    yield
    _PROTOCOL.append(time.process_time() - started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    started = time.process_time()
    yield
    _CPU.append(time.process_time() - started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    started = time.process_time()
    yield
    _CPU[-1] += time.process_time() - started


def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        if report.when == "setup":
            _ROWS.append([report.nodeid, 0.0])
        _ROWS[-1][1] += report.duration
    if report.failed:
        _FAILURES.append(f"{report.nodeid} {report.when}: {report.longreprtext[-3000:]}")


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(
                {"durations": _ROWS, "cpu": _CPU, "protocol": _PROTOCOL, "failures": _FAILURES}, f
            )


if os.environ.get("BENCH_FIXTURE") == "overlay":

    @pytest.fixture
    def root(overlay_root):
        """The tree the test works on: its view."""
        return overlay_root.path

elif os.environ.get("BENCH_FIXTURE") == "empty":

    @pytest.fixture
    def _empty(request, tmp_path_factory):
        """What pytest itself charges for overlay_root's kind of fixture, doing nothing."""
        yield HERE

    @pytest.fixture
    def root(_empty):
        """The tree the test works on: the real path, through one more fixture."""
        return _empty

else:

    @pytest.fixture
    def root():
        """The tree the test works on: the real path (plain, or in place)."""
        return HERE
''',
    "test_small.py": '''\
"""Small tests: most read a file, one in BENCH_EVERY writes (and puts the tree back)."""

import os

import pytest

COUNT = int(os.environ.get("BENCH_COUNT", "3300"))
EVERY = int(os.environ.get("BENCH_EVERY", "11"))


@pytest.mark.parametrize("i", range(COUNT))
def test_small(root, i):
    data = root / "data" / f"f{i % 50}.txt"
    if i % EVERY != EVERY - 1:
        assert data.read_text().startswith("row")
        return
    new = root / f"out{i}.txt"
    new.write_text("x")
    new.unlink()
    text = data.read_text()
    data.write_text("changed")
    data.write_text(text)
''',
}

RAW_CYCLE = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pytest_overlay import _namespaces, _overlayopts, _syscalls

lower, scratch, count = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
unprivileged = not _namespaces.is_real_root()
if unprivileged:
    _namespaces.enter_user_namespace(for_children=False)
_namespaces.ensure_private_mount_namespace()
scratch.mkdir(parents=True, exist_ok=True)
times, cpu = [], []
with _namespaces.privileged():  # as the user: the namespace's capabilities, all along
    _syscalls.mount("tmpfs", scratch, "tmpfs", 0, "mode=0755")
    for i in range(count):
        start, start_cpu = time.perf_counter(), time.process_time()
        root = scratch / f"c{i}"
        root.mkdir()
        _syscalls.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
        for name in ("upper", "work", "merged"):
            (root / name).mkdir()
        options = _overlayopts.view_options(root / "upper", root / "work", userxattr=unprivileged)
        _overlayopts.mount_overlay(root / "merged", [lower], options)
        _syscalls.umount(root, _syscalls.MNT_DETACH)
        root.rmdir()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
print(json.dumps({"wall": times, "cpu": cpu}))
"""


@dataclass(frozen=True)
class Variant:
    """One per-test run: its label, pytest's arguments, and whether the tests use the fixture."""

    key: str
    label: str
    args: tuple[str, ...]
    fixture: str = ""
    """The conftest's BENCH_FIXTURE: ``overlay`` (overlay_root), ``empty`` (a fixture of the
    same kind doing nothing), or none (the real path)."""
    as_user: bool = False


VARIANTS = (
    Variant("plain", "plain (no overlay)", ()),
    Variant("pytest-fixture", "plain, one more empty fixture (pytest's own cost)", (), "empty"),
    Variant("kernel-fixture", "kernel, fixture", ("--overlay-backend=kernel",), fixture="overlay"),
    Variant("kernel-inplace", "kernel, in place", ("--overlay", "--overlay-backend=kernel")),
    Variant("fuse-fixture", "fuse, fixture", ("--overlay-backend=fuse",), fixture="overlay"),
    Variant("fuse-inplace", "fuse, in place", ("--overlay", "--overlay-backend=fuse")),
    Variant("copy-fixture", "copy, fixture", ("--overlay-backend=copy",), fixture="overlay"),
    Variant("user-plain", "plain, ordinary user", (), as_user=True),
    Variant(
        "user-kernel-fixture",
        "kernel, fixture, ordinary user",
        ("--overlay-backend=kernel",),
        fixture="overlay",
        as_user=True,
    ),
    Variant("user-kernel-inplace", "kernel, in place, ordinary user", ("--overlay",), as_user=True),
)


@dataclass
class Runner:
    """Runs pytest in the project as root or as the ordinary user, and checks the tree."""

    project: Path
    pristine: str
    run_as_user: Callable[..., subprocess.CompletedProcess[str]] | None
    owner: tuple[int, int] | None
    runs: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    def run(
        self, args: Sequence[str], env: dict[str, str], *, as_user: bool, plugin: Path = REPO_ROOT
    ) -> Any:
        """One run, with the plugin of *plugin* (a directory holding ``pytest_overlay``: this
        checkout, or another version's, see ``--against``); its harness data (``None`` if it
        failed, the error kept)."""
        # Outside the project (the tree is hashed), where the ordinary user may write too.
        out = Path(tempfile.gettempdir()) / f"bench-suite-cost-{time.monotonic_ns()}.json"
        cpu_before = _children_cpu()
        outcome = run_pytest(
            pytest_command(*args),
            cwd=self.project,
            out=out,
            # This checkout's plugin, for the ordinary user too (who gets no PYTHONPATH), and
            # bytecode written as in a user's runs: without it pytest would parse, rewrite and
            # compile every module of the plugin again in every run.
            env={**env, "PYTHONPATH": str(plugin), "PYTHONDONTWRITEBYTECODE": ""},
            timeout=TIMEOUT_S,
            run_as_user=self.run_as_user if as_user else None,
        )
        cpu = _children_cpu() - cpu_before
        self.runs += 1
        if self.owner is not None and not as_user:
            # What a root run created (pytest's cache) must stay the ordinary user's.
            for path in [self.project, *self.project.rglob("*")]:
                os.lchown(path, *self.owner)
        if tree_digest(self.project)[0] == self.pristine:
            self.unchanged += 1
        else:
            self.errors.append(f"the real tree changed during {' '.join(args) or 'plain'}")
        error = outcome.error()
        if error is not None:
            self.errors.append(error)
            print(f"    {failed_summary(error)}")
            return None
        return outcome.wall_s, outcome.data, cpu


def _extract(revision: str, destination: Path) -> Path:
    """The plugin of git *revision* of this repository, unpacked into *destination*."""
    destination.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", revision, "pytest_overlay"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"--against {revision}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    # Readable by the ordinary user, who runs it too.
    for path in [destination, *destination.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return destination


def _children_cpu() -> float:
    """User + system CPU seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def suite_pairs(
    runner: Runner, pairs: int, count: int, *, as_user: bool, against: Path | None = None
) -> dict[str, Any]:
    """Paired wall times of the whole suite, plain and in place (alternating first); with
    *against* (another version's plugin), that version in place too, in the same rounds."""
    env = {"BENCH_COUNT": str(count), "BENCH_EVERY": "11"}
    walls: dict[str, list[float]] = {"plain": [], "in place": []}
    cpus: dict[str, list[float]] = {"plain": [], "in place": []}
    # Per test, in CPU: the run's (the pytest process and its children), and inside pytest
    # the test's whole protocol and its setup + teardown.  Means, not typical(): in place's
    # slowest 1% are the writing tests that unmount a batch, part of the cost.
    phases: dict[str, list[tuple[float, float, float]]] = {"plain": [], "in place": []}
    order = [("plain", (), REPO_ROOT), ("in place", ("--overlay",), REPO_ROOT)]
    if against is not None:
        order.append((AGAINST, ("--overlay",), against))
        walls[AGAINST], cpus[AGAINST] = [], []
    # Each pair's runs side by side: this machine's speed drifts by 20% from one minute to
    # the next, and a pair's runs share the same minute.
    paired: list[tuple[float, float]] = []
    paired_against: list[tuple[float, float]] = []
    runner.run((), env, as_user=as_user)  # warm the page cache and bytecode
    for index in range(pairs):
        pair: dict[str, float] = {}
        # Each variant goes first in turn.
        shift = index % len(order)
        for name, args, plugin in order[shift:] + order[:shift]:
            done = runner.run(args, env, as_user=as_user, plugin=plugin)
            if done is not None and name == AGAINST:
                walls[name].append(done[0])
                cpus[name].append(done[2])
                pair[name] = done[0]
                print(f"    {name}: {done[0]:.2f} s wall, {done[2]:.2f} s CPU")
            elif done is not None:
                pair[name] = done[0]
                walls[name].append(done[0])
                cpus[name].append(done[2])
                protocol, edges = done[1]["protocol"], done[1]["cpu"]
                phases[name].append(
                    (
                        sum(protocol) / len(protocol),
                        sum(edges) / len(edges),
                        done[2] / len(protocol),
                    )
                )
                print(f"    {name}: {done[0]:.2f} s wall, {done[2]:.2f} s CPU")
        if "plain" in pair and "in place" in pair:
            paired.append((pair["plain"], pair["in place"]))
        if "plain" in pair and AGAINST in pair:
            paired_against.append((pair["plain"], pair[AGAINST]))
    plain, inplace = median(walls["plain"]), median(walls["in place"])
    cpu_plain, cpu_inplace = median(cpus["plain"]), median(cpus["in place"])
    per_test_cpu = {}
    if phases["plain"] and phases["in place"]:
        # The least disturbed run of each (load stretches CPU time too, never shrinks it).
        (proto, edges, run), (proto0, edges0, run0) = min(phases["in place"]), min(phases["plain"])
        per_test_cpu = {
            "the run": run - run0,
            "setup + teardown": edges - edges0,
            "the call and reports": (proto - edges) - (proto0 - edges0),
            "outside the tests (start, end, other processes)": (run - proto) - (run0 - proto0),
        }
        shown = ", ".join(f"{key} {fmt_ms(value)}" for key, value in per_test_cpu.items())
        print(f"    CPU per test, in place less plain: {shown}")
    return {
        "per_test_cpu_s": per_test_cpu,
        "plain_s": plain,
        "in_place_s": inplace,
        "ratio": ratio(inplace, plain),
        # The median of the pairs' own ratios: what drift leaves of the comparison.
        "paired_ratio": median([b / a for a, b in paired if a > 0]) if paired else None,
        # The same for the version of --against, run in the same rounds.
        "against_s": median(walls[AGAINST]) if walls.get(AGAINST) else None,
        "against_paired_ratio": (
            median([b / a for a, b in paired_against if a > 0]) if paired_against else None
        ),
        # CPU time hardly depends on other processes' load, which stretches wall times; but
        # it leaves out waits (an unmount's RCU grace period), so the goal is on wall time.
        "cpu_ratio": ratio(cpu_inplace, cpu_plain),
        "wall_s": walls,
        "cpu_s": cpus,
    }


def per_test(runner: Runner, variant: Variant, count: int) -> dict[str, float] | None:
    """Median setup + teardown of a run of read-only tests and of a run of writing tests.

    Apart, not mixed: after a writing test the next one needs a new view, whatever it does.
    """
    typicals = {}
    for kind, every in (("read", "1000000"), ("write", "1")):
        env = {"BENCH_COUNT": str(count + WARMUP), "BENCH_EVERY": every}
        if variant.fixture:
            env["BENCH_FIXTURE"] = variant.fixture
        done = runner.run(variant.args, env, as_user=variant.as_user)
        if done is None:
            return None
        typicals[kind] = typical([seconds for _, seconds in done[1]["durations"][WARMUP:]])
        # CPU time of the process (setup + teardown): load hardly stretches it, but it leaves
        # out waits, such as an unmount's RCU grace period.
        typicals[f"{kind} cpu"] = typical(done[1]["cpu"][WARMUP:])
    return typicals


def _kind_label(kind: str) -> str:
    return "writing test" if kind.startswith("write") else "reading test"


def _cpu_label(kind: str) -> str:
    return ", CPU time" if kind.endswith("cpu") else ""


def typical(values: Sequence[float]) -> float:
    """The mean without the slowest 1%: a median would leave out the one test in 32 that
    unmounts a batch of closed views, the 1% leaves out what other processes' load adds."""
    kept = sorted(values)[: max(1, len(values) * 99 // 100)]
    return sum(kept) / len(kept)


def raw_cycle(
    project: Path, scratch: Path, count: int, run_as_user: Callable[..., Any] | None
) -> dict[str, float] | None:
    """The raw kernel cycle's typical wall and CPU time (``write`` and ``write cpu``, the
    kinds it stands beside), in a child (as root, or as the user if given), with its session
    tmpfs mounted on *scratch* (a directory the child may write in)."""
    where = scratch / ("raw-user" if run_as_user else "raw-root")
    argv = [sys.executable, "-c", RAW_CYCLE, str(REPO_ROOT), str(project), str(where), str(count)]
    if run_as_user is not None:
        done = run_as_user(argv, cwd=scratch, timeout=600)
    else:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        print(f"    raw cycle failed: {done.stderr.strip()[-500:]}")
        return None
    times = json.loads(done.stdout)
    return {
        "write": typical(times["wall"][WARMUP:]),
        "write cpu": typical(times["cpu"][WARMUP:]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_quick_and_json(parser, "1,100 tests in the suite and 200 per run (a smoke test)")
    parser.add_argument("--pairs", type=int, default=5, help="Paired suite runs (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="Rounds of per-test runs, the best kept (default 2)"
    )
    parser.add_argument("--no-user", action="store_true", help="Only as root")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="Also run the suite in place with the plugin of git revision REV, in the same "
        "rounds (side by side: how a change moved the suite's ratio on this machine)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    command = command_line(argv)
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    machine = print_machine(DEFAULT_CACHE, command)
    suite_count, per_test_count = (1100, 200) if args.quick else (3300, 400)
    pairs = args.pairs

    unpriv: Any = None
    user_reason = "--no-user" if args.no_user else None
    if os.geteuid() != 0:
        raise SystemExit("run this benchmark as root (it runs the ordinary user's part itself)")
    if not args.no_user:
        sys.path.insert(0, str(REPO_ROOT))
        from tests import _unpriv

        user_reason = _unpriv.can_run_as_user()
        unpriv = _unpriv if user_reason is None else None

    goals: list[Goal] = []
    figures: dict[str, Any] = {}
    ctx = unpriv.user_workdir_ctx() if unpriv else tempfile.TemporaryDirectory(prefix="bench-")
    with ctx as scratch:
        project = Path(scratch) / "project"
        project.mkdir()
        (project / "data").mkdir()
        for i in range(50):
            (project / "data" / f"f{i}.txt").write_text(f"row {i}\n")
        install_files(project, PROJECT)
        against = _extract(args.against, Path(scratch) / "against") if args.against else None
        owner = unpriv.ensure_test_user() if unpriv else None
        run_as_user = unpriv.run_as_user if unpriv else None
        if run_as_user is not None and against is not None:
            run_as_user = functools.partial(run_as_user, extra_paths=[against])
        runner = Runner(project, "", run_as_user, owner)
        # One plain run first writes the bytecode pytest always writes; the digest taken
        # after it is what every later run must leave.
        runner.run((), {"BENCH_COUNT": "10"}, as_user=False)
        runner.pristine, runner.runs, runner.unchanged = tree_digest(project)[0], 0, 0
        runner.errors.clear()

        who = [("root", False)] + ([("ordinary user", True)] if unpriv else [])
        print(f"\nthe suite: {suite_count} small tests, one in 11 writing, {pairs} pair(s)")
        suite_rows = []
        for name, as_user in who:
            print(f"  as {name}:")
            result = suite_pairs(runner, pairs, suite_count, as_user=as_user, against=against)
            figures[f"suite ({name})"] = result
            if against is not None:
                print(
                    f"    {args.against}: in place {fmt_s(result['against_s'])}, its pairs' "
                    f"ratio {fmt_ratio(result['against_paired_ratio'])} (this checkout's: "
                    f"{fmt_ratio(result['paired_ratio'])})"
                )
            walls = [f"{result[key]:.2f} s" for key in ("plain_s", "in_place_s")]
            suite_rows.append(
                [
                    name,
                    *walls,
                    fmt_ratio(result["ratio"]),
                    fmt_ratio(result["paired_ratio"]),
                    fmt_ratio(result["cpu_ratio"]),
                ]
            )
            for key, label in (
                ("ratio", ""),
                ("paired_ratio", ", median of the pairs' ratios"),
                ("cpu_ratio", ", CPU time"),
            ):
                goals.append(
                    goal_at_most(f"in place / plain, as {name}{label}", result[key], GOAL_IN_PLACE)
                )
        if user_reason:
            print(f"  as the ordinary user: not run ({user_reason})")

        rounds = args.rounds
        print(
            f"\nper test: runs of {per_test_count} read-only and of as many writing tests, "
            f"{rounds} round(s), the best round of each"
        )
        variants = [v for v in VARIANTS if unpriv or not v.as_user]
        samples: dict[str, list[dict[str, float]]] = {v.key: [] for v in variants}
        raws: dict[str, list[dict[str, float]]] = {"root": [], "ordinary user": []}
        for _ in range(rounds):
            # Round-robin, so that a burst of other processes' load hits every variant alike.
            for who_, runs_as in (("root", None), ("ordinary user", run_as_user)):
                if who_ == "root" or unpriv:
                    got_raw = raw_cycle(project, Path(scratch), 300, runs_as)
                    if got_raw is not None:
                        raws[who_].append(got_raw)
            for variant in variants:
                got = per_test(runner, variant, per_test_count)
                print(f"  {variant.label}: {got}")
                if got is not None:
                    samples[variant.key].append(got)
        typicals: dict[str, dict[str, float] | None] = {
            key: {kind: min(s[kind] for s in runs) for kind in KINDS} if runs else None
            for key, runs in samples.items()
        }
        raw, raw_user = (
            {kind: min(r[kind] for r in raws[who_]) for kind in ("write", "write cpu")}
            if raws[who_]
            else None
            for who_ in ("root", "ordinary user")
        )
        figures["per test"] = typicals
        figures["per test, every round"] = samples
        figures["raw kernel cycle"] = {"root": raw, "ordinary user": raw_user}
        rows, overheads = [], {}
        for variant in VARIANTS:
            got = typicals.get(variant.key)
            base = typicals.get("user-plain" if variant.as_user else "plain")
            if got is None or base is None or variant.key in ("plain", "user-plain"):
                continue
            over = {kind: got[kind] - base[kind] for kind in KINDS}
            overheads[variant.key] = over
            rows.append([variant.label, *(fmt_ms(over[kind]) for kind in KINDS)])
        for label, got_raw in (
            ("raw kernel cycle (tmpfs, overlay, one lazy detach), root", raw),
            ("raw kernel cycle, ordinary user", raw_user),
        ):
            if got_raw is not None:
                rows.append([label, "", fmt_ms(got_raw["write"]), "", fmt_ms(got_raw["write cpu"])])
        figures["overhead per test"] = overheads

    print("\nthe suite, median wall time:")
    headers = ["as", "plain", "in place", "ratio", "pairs' ratio (median)", "CPU time ratio"]
    print(render_table(headers, suite_rows))
    print("\noverhead per test (mean setup + teardown without the slowest 1%, minus plain's):")
    headers = ["variant", "reading test", "writing test", "reading, CPU", "writing, CPU"]
    print(render_table(headers, rows))
    # Each goal on wall time (the issue's), then the same on CPU time, which other processes'
    # load stretches far less (but which leaves out waits, such as an unmount's RCU grace
    # period): on a loaded machine, the CPU line is the one to read.
    for key, base in (("kernel-fixture", raw), ("user-kernel-fixture", raw_user)):
        kernel = overheads.get(key)
        if kernel is None or base is None:
            continue
        for kind in ("write", "read", "write cpu", "read cpu"):
            goals.append(
                goal_at_most(
                    f"{key}, {_kind_label(kind)} / raw cycle{_cpu_label(kind)}",
                    ratio(kernel[kind], base["write cpu" if "cpu" in kind else "write"]),
                    GOAL_FIXTURE_OVER_RAW,
                )
            )
    # The same for a writing test, less what pytest itself charges for a fixture of that kind
    # (the empty fixture's overhead, measured as root): what the plugin adds.
    kernel, own = overheads.get("kernel-fixture"), overheads.get("pytest-fixture")
    if kernel is not None and own is not None and raw is not None:
        for kind in ("write", "write cpu"):
            goals.append(
                goal_at_most(
                    f"kernel-fixture, writing test less pytest's own fixture cost / raw cycle"
                    f"{_cpu_label(kind)}",
                    ratio(kernel[kind] - own[kind], raw[kind]),
                    GOAL_FIXTURE_OVER_RAW,
                )
            )
    for key in ("fuse-fixture", "fuse-inplace"):
        fuse = overheads.get(key)
        for kind in ("read", "read cpu"):
            if fuse is not None:
                goals.append(
                    goal_at_most(
                        f"{key}: read-only test{_cpu_label(kind)}",
                        fuse[kind],
                        GOAL_FUSE_READ_ONLY_S,
                        target="<= 1 ms",
                        shown=fmt_ms(fuse[kind]),
                    )
                )
    goals.append(tree_unchanged_goal(runner.unchanged, runner.runs))
    print()
    print_goals(goals)
    for error in runner.errors[:5]:
        print(f"error: {error[:500]}")
    print_end(time.perf_counter() - started)
    if args.json:
        write_json(args.json, command, machine, figures, goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
