"""Speed-up of pytest-xdist (``-n 2`` against ``-n 0``) on an IO-bound, destructive suite.

The script writes a small project (a few MB of data plus a harness) into the cache directory and
runs its suite with ``-n 0`` and with ``-n 2``, in two modes: tests that request
``overlay_root`` (kernel backend), and ``--overlay`` (the project sandboxed in place, kernel
backend).  Every test starts by checking that its view is the pristine tree, then compresses,
rewrites, copies and deletes files, runs ``sh`` scripts that write and delete files, and checks a
checksum of everything it wrote.  The figure is the wall time of the whole pytest run.

After every run the script checks that the real tree's digest has not changed.

Run ``python benchmarks/bench_parallel.py --help`` for the options; ``benchmarks/README.md``
says how to read the output.  The script reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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
    add_cache_dir,
    add_quick_and_json,
    check_outcome,
    command_line,
    failed_summary,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    goal_at_least,
    install_files,
    median,
    parse_choices,
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

RUN_TIMEOUT_S = 1800

GOAL_SPEEDUP = 1.6
DEFAULT_TESTS = 80
DEFAULT_WORKERS = 2

# The project: BLOB_COUNT text blobs (zlib has real work to do on text) and a small source tree.
# Bump PROJECT_FORMAT when the recipe changes, so a stale cached project is rebuilt.
PROJECT_FORMAT = 1
BLOB_COUNT = 8
BLOB_BYTES = 512 * 1024
SRC_DIRS = 10
SRC_FILES_PER_DIR = 25
_SEED = 20261127

# --- the project's harness ------------------------------------------------------------------

HARNESS_FILES = {
    "pytest.ini": """\
[pytest]
# Harness of benchmarks/bench_parallel.py; this directory is the project root (pytest's rootdir).
""",
    "conftest.py": '''\
"""Harness of benchmarks/bench_parallel.py: records each test's phases and properties."""

import json
import os

_TESTS = {}
_FAILURES = []


def pytest_runtest_logreport(report):
    # Under pytest-xdist the controller receives every worker's reports, properties included.
    entry = _TESTS.setdefault(
        report.nodeid, {"setup": 0.0, "call": 0.0, "teardown": 0.0, "passed": False, "props": {}}
    )
    entry[report.when] += report.duration
    if report.when == "call":
        entry["passed"] = report.passed
        entry["props"] = dict(report.user_properties)
    if report.failed:
        _FAILURES.append(f"{report.nodeid} {report.when}: {report.longreprtext[-3000:]}")


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_OUT")
    if out and not hasattr(session.config, "workerinput"):
        with open(out, "w") as f:
            json.dump({"tests": _TESTS, "failures": _FAILURES}, f)
''',
    "test_io.py": r'''"""IO-bound destructive tests, each in its own overlay of the project tree.

BENCH_MODE=fixture: the tests work in overlay_root.  BENCH_MODE=inplace (pytest --overlay):
overlay_root is the project root itself, sandboxed at its real path.
"""

import hashlib
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

COUNT = int(os.environ["BENCH_COUNT"])
PRISTINE = os.environ["BENCH_PRISTINE"]
IN_PLACE = os.environ["BENCH_MODE"] == "inplace"
BLOBS = 8
SRC_DIRS = 10
SHELL_PARTS = 64
CHUNK = 8192


def tree_digest(root):
    """Names and contents of every file and directory (the same recipe as bench_parallel.py)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        # pytest's cache directory is passed through to the real disk in in-place mode.
        dirnames[:] = sorted(d for d in dirnames if rel != "." or d != ".pytest_cache")
        digest.update(b"D" + rel.encode() + b"\0")
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                content = f.read()
            digest.update(b"F" + name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


@pytest.fixture
def root(overlay_root, request):
    path = Path(os.fspath(overlay_root))
    assert overlay_root.backend == "kernel", overlay_root.backend
    assert os.path.ismount(path), f"{path} is not a mount point"
    if IN_PLACE:
        assert path == request.config.rootpath, (path, request.config.rootpath)
    else:
        assert path != request.config.rootpath
    return path


def sh(script, cwd):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    subprocess.run(["sh", "-ec", script], cwd=cwd, env=env, check=True)


@pytest.mark.parametrize("i", range(COUNT))
def test_destructive_io(i, root, record_property):
    record_property("worker", os.environ.get("PYTEST_XDIST_WORKER", "main"))
    record_property("pid", os.getpid())
    # 1. The test starts from the pristine tree: the same files with the same content.
    assert tree_digest(root) == PRISTINE, "the view differs from the real tree at the start"
    record_property("pristine", True)
    expected = {}
    gone = []

    # 2. Compress seven of the eight blobs (CPU) and rewrite them in place (a copy-up of each).
    (root / "out").mkdir()
    for k in [(i + n) % BLOBS for n in range(7)]:
        blob = root / "blobs" / f"blob{k:02d}.bin"
        data = blob.read_bytes()
        packed = zlib.compress(data, 6)
        (root / "out" / f"blob{k:02d}.z").write_bytes(packed)
        expected[f"out/blob{k:02d}.z"] = packed
        with open(blob, "r+b") as f:
            f.write(data[::-1])
        expected[f"blobs/blob{k:02d}.bin"] = data[::-1]

    # 3. Copy the source tree, rewrite a fifth of the copies, delete a directory of the original.
    shutil.copytree(root / "src", root / "src-copy")
    for path in sorted((root / "src-copy").rglob("*.txt"))[i % 5 :: 5]:
        content = path.read_bytes().upper()
        path.write_bytes(content)
        expected[path.relative_to(root).as_posix()] = content
    victim = f"src/m{i % SRC_DIRS:02d}"
    shutil.rmtree(root / victim)
    gone.append(victim)

    # 4. Shell: dd the eighth blob (untouched so far) into parts, append them to one file,
    #    delete half the parts and the blob; then sha256sum the result and delete a directory
    #    of the copy.
    k = (i + 7) % BLOBS
    source = (root / "blobs" / f"blob{k:02d}.bin").read_bytes()
    sh(
        "mkdir sh; n=0; "
        f"while [ $n -lt {SHELL_PARTS} ]; do "
        f"dd if=blobs/blob{k:02d}.bin of=sh/part$n bs={CHUNK} skip=$n count=1 status=none; "
        "cat sh/part$n >> sh/all; n=$((n+1)); done; "
        f"rm sh/part*[13579] blobs/blob{k:02d}.bin",
        root,
    )
    sh(f"sha256sum sh/all > sh/all.sha256; rm -r src-copy/m{i % SRC_DIRS:02d}", root)
    whole = source[: SHELL_PARTS * CHUNK]
    expected["sh/all"] = whole
    expected["sh/all.sha256"] = f"{hashlib.sha256(whole).hexdigest()}  sh/all\n".encode()
    for n in range(0, SHELL_PARTS, 2):
        expected[f"sh/part{n}"] = source[n * CHUNK : (n + 1) * CHUNK]
    gone += [f"blobs/blob{k:02d}.bin", f"src-copy/m{i % SRC_DIRS:02d}"]
    gone += [f"sh/part{n}" for n in range(1, SHELL_PARTS, 2)]
    for name in list(expected):
        if name.startswith(f"src-copy/m{i % SRC_DIRS:02d}/"):
            del expected[name]

    # 5. A checksum of everything the test wrote, against what Python says it should be.
    got = hashlib.sha256()
    want = hashlib.sha256()
    for name in sorted(expected):
        got.update(name.encode() + b"\0" + hashlib.sha256((root / name).read_bytes()).digest())
        want.update(name.encode() + b"\0" + hashlib.sha256(expected[name]).digest())
    assert got.hexdigest() == want.hexdigest()
    assert not [name for name in gone if (root / name).exists()]
    record_property("written", sum(len(v) for v in expected.values()))
''',
}


@dataclass(frozen=True)
class Project:
    """The generated project: where it is and what it holds."""

    path: Path
    files: int
    bytes: int
    reused: bool


def _words(rng: random.Random, size: int) -> bytes:
    vocabulary = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
        for _ in range(3000)
    ]
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(vocabulary, k=12)) + "\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()[:size]


def ensure_project(cache: Path) -> Project:
    """The project tree (generated once, reused), with the harness files freshly in place."""
    path = cache / "parallel-project"
    manifest = cache / "parallel-project.json"
    reused = False
    if manifest.exists() and path.is_dir():
        reused = json.loads(manifest.read_text()).get("format") == PROJECT_FORMAT
    if not reused:
        print(f"generating the project into {path} ...", flush=True)
        if path.exists():
            shutil.rmtree(path)
        manifest.unlink(missing_ok=True)
        rng = random.Random(_SEED)  # noqa: S311 - reproducible filler, not secrets
        (path / "blobs").mkdir(parents=True)
        for k in range(BLOB_COUNT):
            (path / "blobs" / f"blob{k:02d}.bin").write_bytes(_words(rng, BLOB_BYTES))
        for d in range(SRC_DIRS):
            (path / "src" / f"m{d:02d}").mkdir(parents=True)
            for f in range(SRC_FILES_PER_DIR):
                content = _words(rng, rng.randint(1000, 3000))
                (path / "src" / f"m{d:02d}" / f"file{f:02d}.txt").write_bytes(content)
        manifest.write_text(json.dumps({"format": PROJECT_FORMAT}) + "\n")
    install_files(path, HARNESS_FILES)
    files = 0
    size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return Project(path, files, size, reused)


# --- modes and runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How the tests get their overlay."""

    key: str
    label: str
    args: tuple[str, ...]


MODES = {
    m.key: m
    for m in (
        Mode("fixture", "overlay_root (kernel)", ("--overlay-backend=kernel",)),
        Mode("inplace", "--overlay in place (kernel)", ("--overlay", "--overlay-backend=kernel")),
    )
}


@dataclass
class Run:
    """One pytest run and what it showed."""

    mode: str
    workers: int
    round: int
    load_before: float
    wall_s: float = 0.0
    cpu_s: float = 0.0
    exit_code: int = 0
    tests: int = 0
    passed: int = 0
    pristine: int = 0
    workers_seen: list[str] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)
    test_s: list[float] = field(default_factory=list)
    written_bytes: int = 0
    tree_unchanged: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def pytest_argv(mode: Mode, workers: int) -> list[str]:
    """The exact command each run executes, in the project's root."""
    return pytest_command("-n", str(workers), *mode.args, "test_io.py")


def run_once(
    project: Path, pristine: str, mode: Mode, workers: int, tests: int, rnd: int, results: Path
) -> Run:
    """Run the suite once and check the outcome."""
    run = Run(mode.key, workers, rnd, os.getloadavg()[0])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = run_pytest(
        pytest_argv(mode, workers),
        cwd=project,
        out=results / f"{mode.key}-{workers}-{time.monotonic_ns()}.json",
        env={"BENCH_MODE": mode.key, "BENCH_COUNT": str(tests), "BENCH_PRISTINE": pristine},
        timeout=RUN_TIMEOUT_S,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time of pytest and of every process below it (workers, sh, dd...), user + system.
    run.cpu_s = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    run.wall_s, run.exit_code = outcome.wall_s, outcome.returncode
    run.tree_unchanged, run.errors = check_outcome(outcome, project, pristine)
    data = outcome.data or {}
    entries: dict[str, dict[str, Any]] = data.get("tests", {})
    run.tests = len(entries)
    seen: set[str] = set()
    for entry in entries.values():
        props = entry["props"]
        run.passed += bool(entry["passed"])
        run.pristine += bool(props.get("pristine"))
        run.written_bytes += int(props.get("written", 0))
        seen.add(str(props.get("worker")))
        run.call_s.append(float(entry["call"]))
        run.test_s.append(float(entry["setup"]) + float(entry["call"]) + float(entry["teardown"]))
    run.workers_seen = sorted(seen)
    if run.tests != tests:
        run.errors.append(f"expected {tests} test reports, got {run.tests}")
    expected = {"main"} if workers == 0 else {f"gw{n}" for n in range(workers)}
    if seen and seen != expected:
        run.errors.append(f"tests ran on {sorted(seen)}, expected {sorted(expected)}")
    return run


def schedule(
    modes: Sequence[str], counts: Sequence[int], rounds: int
) -> list[tuple[str, int, int]]:
    """(mode, workers, round): round-robin, the order of worker counts reversed every round.

    A busy spell on a shared machine then spreads over every cell instead of landing on one.
    """
    jobs: list[tuple[str, int, int]] = []
    for rnd in range(rounds):
        ordered = list(counts) if rnd % 2 == 0 else list(reversed(counts))
        jobs += [(key, n, rnd) for key in modes for n in ordered]
    return jobs


# --- reporting ------------------------------------------------------------------------------


def walls(runs: Sequence[Run], key: str, workers: int) -> list[float]:
    """Wall times of the successful runs of one cell."""
    return [r.wall_s for r in runs if r.mode == key and r.workers == workers and r.ok]


def best(values: Sequence[float]) -> float | None:
    return min(values) if values else None


def mid(values: Sequence[float]) -> float | None:
    return median(values) if values else None


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Speed-up of pytest -n 2 over -n 0 on an IO-bound destructive suite "
        "that uses overlay_root (kernel backend), in fixture mode and with --overlay",
    )
    add_quick_and_json(parser, "One round instead of three (about a third the time)")
    parser.add_argument(
        "--tests", type=int, default=DEFAULT_TESTS, help=f"Tests per run (default {DEFAULT_TESTS})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"xdist workers of the parallel runs (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"Comma-separated subset of {', '.join(MODES)}",
    )
    add_cache_dir(parser, "Where the project is generated and kept")
    args = parser.parse_args(argv)
    args.modes = parse_choices(parser, "--modes", args.modes, MODES, allow_empty=False)
    if args.tests < 1 or args.workers < 1:
        parser.error("--tests and --workers must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = 1 if args.quick else 3
    tests: int = args.tests
    parallel: int = args.workers
    counts = [0, parallel]
    command = command_line(argv)
    cache: Path = args.cache_dir
    prepare_cache(cache)
    project = ensure_project(cache)
    pristine = tree_digest(project.path)[0]

    machine = print_machine(cache, command)
    print(f"each run, in {project.path}:")
    for key in args.modes:
        for n in counts:
            print(f"  {shlex.join(pytest_argv(MODES[key], n))}")
    print(
        "  env "
        + BENCH_ENV_TEXT
        + f" BENCH_MODE=<mode> BENCH_COUNT={tests} BENCH_PRISTINE=<digest of the real tree>"
    )
    print(
        f"project: {project.files} files, {project.bytes / 1e6:.1f} MB "
        f"({'reused' if project.reused else 'generated now'}); digest {pristine[:16]}"
    )
    print(
        f"plan: {rounds} round(s) x {len(args.modes)} mode(s) x (-n 0, -n {parallel}), "
        f"{tests} tests per run"
    )
    print(flush=True)

    runs: list[Run] = []
    jobs = schedule(args.modes, counts, rounds)
    with results_dir(cache) as results:
        started = time.perf_counter()
        for index, (key, n, rnd) in enumerate(jobs, 1):
            run = run_once(project.path, pristine, MODES[key], n, tests, rnd, results)
            runs.append(run)
            label = f"[{index}/{len(jobs)}] {MODES[key].label:<28} -n {n} round {rnd + 1}"
            if run.ok:
                summary = (
                    f"{run.wall_s:.2f} s (CPU {run.cpu_s:.1f} s), {run.passed}/{run.tests} passed, "
                    f"median test {fmt_ms(median(run.test_s))}, on {','.join(run.workers_seen)}, "
                    f"load before {run.load_before:.2f}"
                )
            else:
                summary = failed_summary(run.errors[0])
            print(f"{label}: {summary}", flush=True)
    elapsed = time.perf_counter() - started

    print()
    print(f"wall time of the whole pytest run ({tests} tests; best and median of {rounds}):")
    headers = [
        "mode",
        "-n 0 best",
        "-n 0 median",
        f"-n {parallel} best",
        f"-n {parallel} median",
        "speed-up (best)",
        "speed-up (median)",
    ]
    rows = []
    for key in args.modes:
        serial, para = walls(runs, key, 0), walls(runs, key, parallel)
        rows.append(
            [
                MODES[key].label,
                fmt_s(best(serial)),
                fmt_s(mid(serial)),
                fmt_s(best(para)),
                fmt_s(mid(para)),
                fmt_ratio(ratio(best(serial), best(para))),
                fmt_ratio(ratio(mid(serial), mid(para))),
            ]
        )
    print(render_table(headers, rows))
    print()
    print(
        "CPU time of each run (pytest and every process below it, user + system; medians) and "
        "CPU/wall, the cores it kept busy on average:"
    )
    cpu_rows = []
    for key in args.modes:
        row = [MODES[key].label]
        for n in counts:
            cell = [r for r in runs if r.mode == key and r.workers == n and r.ok]
            row += [
                fmt_s(mid([r.cpu_s for r in cell])),
                fmt_ratio(mid([r.cpu_s / r.wall_s for r in cell])),
            ]
        cpu_rows.append(row)
    cpu_headers = ["mode"]
    for n in counts:
        cpu_headers += [f"-n {n} CPU", f"-n {n} CPU/wall"]
    print(render_table(cpu_headers, cpu_rows))
    print()
    print("per test, in the -n 0 runs (medians; setup + call + teardown, and call alone):")
    detail = []
    for key in args.modes:
        serial_runs = [r for r in runs if r.mode == key and r.workers == 0 and r.ok]
        per_test = [t for r in serial_runs for t in r.test_s]
        calls = [t for r in serial_runs for t in r.call_s]
        written = median([r.written_bytes / max(r.tests, 1) for r in serial_runs] or [0.0])
        detail.append(
            [
                MODES[key].label,
                fmt_ms(median(per_test)),
                fmt_ms(median(calls)),
                f"{written / 1e6:.2f} MB",
            ]
        )
    print(render_table(["mode", "test", "call", "written per test"], detail))
    print()

    goal_list: list[Goal] = [
        goal_at_least(
            f"speed-up of -n {parallel} over -n 0, {MODES[key].label} (best of {rounds})",
            ratio(best(walls(runs, key, 0)), best(walls(runs, key, parallel))),
            GOAL_SPEEDUP,
        )
        for key in args.modes
    ]
    total_tests = sum(r.tests for r in runs)
    pristine_count = sum(r.pristine for r in runs)
    goal_list.append(
        Goal(
            "isolation: tests that started from the pristine tree",
            float(pristine_count),
            f"all {tests * len(runs)}",
            pristine_count == tests * len(runs) and total_tests == tests * len(runs),
            f"{pristine_count}/{total_tests}",
        )
    )
    goal_list.append(tree_unchanged_goal(sum(r.tree_unchanged for r in runs), len(runs)))
    print_goals(goal_list)
    for run in runs:
        for error in run.errors:
            print(
                f"\nERROR {MODES[run.mode].label} -n {run.workers} round {run.round + 1}:\n{error}"
            )
    load_after = print_end(elapsed)

    if args.json is not None:
        figures = {
            "load_average_at_end": load_after,
            "project": {
                "path": os.fspath(project.path),
                "files": project.files,
                "bytes": project.bytes,
                "digest": pristine,
            },
            "tests_per_run": tests,
            "rounds": rounds,
            "commands": {
                f"{key}/-n {n}": shlex.join(pytest_argv(MODES[key], n))
                for key in args.modes
                for n in counts
            },
            "runs": [asdict(r) for r in runs],
        }
        write_json(args.json, command, machine, figures, goal_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
