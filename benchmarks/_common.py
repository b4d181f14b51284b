"""Helpers shared by the benchmark scripts: cached synthetic trees, machine facts, running
pytest, statistics, tables, goals, options and the JSON report.

Nothing here measures anything; the scripts do.  Trees are generated once into a cache
directory (default ``/tmp/pytest-overlay-bench``) and reused, because creating 100,000 files on
a slow disk takes minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path("/tmp/pytest-overlay-bench")
REPO_ROOT = Path(__file__).resolve().parents[1]

# Every measured run is ``python -m pytest`` with these arguments, in this environment.
PYTEST_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly")
BENCH_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
BENCH_ENV_TEXT = " ".join(f"{k}={v}" for k, v in BENCH_ENV.items())
# Variables of an enclosing pytest that must not reach the measured one.
_OUTER_PYTEST_VARS = ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_PLUGINS")

FILES_PER_DIR = 100
LEAVES_PER_TOP = 10
MIN_BYTES = 100
MAX_BYTES = 1000
# Bump when the layout or the content recipe changes, so stale caches are rebuilt.
TREE_FORMAT = 1
_SEED = 20261126


@dataclass(frozen=True)
class TreeInfo:
    """A generated tree: where it is and what it holds (data files only)."""

    path: Path
    files: int
    dirs: int
    bytes: int
    format: int
    generated_in_s: float
    reused: bool

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        data = asdict(self)
        data["path"] = os.fspath(self.path)
        return data


def prepare_cache(cache: Path) -> None:
    """Create *cache* as a root-or-user owned directory that every user may traverse (0755)."""
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)


def _text_block(rng: random.Random) -> str:
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(4000)
    ]
    return " ".join(words)


def _generate(target: Path, files: int) -> tuple[int, int]:
    rng = random.Random(_SEED + files)  # noqa: S311 - reproducible filler text, not secrets
    block = _text_block(rng)
    limit = len(block) - MAX_BYTES
    target.mkdir(mode=0o755)
    dirs = 0
    total = 0
    made: set[Path] = set()
    for index in range(files):
        leaf_index = index // FILES_PER_DIR
        leaf = (
            target / f"d{leaf_index // LEAVES_PER_TOP:03d}" / f"d{leaf_index % LEAVES_PER_TOP:02d}"
        )
        if leaf not in made:
            if not leaf.parent.exists():
                leaf.parent.mkdir(mode=0o755)
                dirs += 1
            leaf.mkdir(mode=0o755)
            dirs += 1
            made.add(leaf)
        size = rng.randint(MIN_BYTES, MAX_BYTES)
        start = rng.randrange(limit)
        data = (block[start : start + size - 1] + "\n").encode()
        (leaf / f"f{index % FILES_PER_DIR:03d}.txt").write_bytes(data)
        total += len(data)
    return dirs, total


def ensure_tree(cache: Path, files: int, *, log: bool = True) -> TreeInfo:
    """Return the cached tree of *files* small files, generating it first if needed.

    Layout: ``dTTT/dLL/fNNN.txt``, 100 files per leaf directory, 10 leaves per top directory,
    100 to 1,000 bytes of text each; directories 0755 and files 0644, so every user can read it.
    """
    path = cache / f"tree-{files}"
    manifest = cache / f"tree-{files}.json"
    if manifest.exists() and path.is_dir():
        data = json.loads(manifest.read_text())
        if data.get("format") == TREE_FORMAT and data.get("files") == files:
            return TreeInfo(
                path=path,
                files=files,
                dirs=int(data["dirs"]),
                bytes=int(data["bytes"]),
                format=TREE_FORMAT,
                generated_in_s=float(data["generated_in_s"]),
                reused=True,
            )
    if log:
        print(f"generating {files:,} files into {path} (once; later runs reuse it) ...", flush=True)
    if path.exists():
        shutil.rmtree(path)
    manifest.unlink(missing_ok=True)
    partial = cache / f"tree-{files}.partial-{os.getpid()}"
    old_umask = os.umask(0o022)
    started = time.perf_counter()
    try:
        dirs, total = _generate(partial, files)
        os.sync()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        os.umask(old_umask)
    elapsed = time.perf_counter() - started
    partial.rename(path)
    info = TreeInfo(path, files, dirs, total, TREE_FORMAT, elapsed, reused=False)
    record = {k: v for k, v in info.to_json().items() if k not in ("path", "reused")}
    manifest.write_text(json.dumps(record) + "\n")
    manifest.chmod(0o644)
    if log:
        print(f"  done in {elapsed:.1f} s ({dirs:,} directories, {total / 1e6:.1f} MB)", flush=True)
    return info


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    """Write *text* to *path* unless it already holds exactly that."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    path.chmod(mode)


def install_files(directory: Path, files: Mapping[str, str]) -> None:
    """Put *files* (name -> text) into *directory* (idempotent, world-readable)."""
    for name, text in files.items():
        write_if_changed(directory / name, text)


def tree_digest(root: Path) -> tuple[str, int]:
    """Digest of every name and content under *root*, and the number of files.

    The top-level ``.pytest_cache`` is left out: in in-place mode pytest's cache directory is
    passed through to the real disk.  The harness of ``bench_parallel.py`` holds a twin, which
    each test runs on its own view.
    """
    digest = hashlib.sha256()
    files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if rel != "." or d != ".pytest_cache")
        digest.update(b"D" + rel.encode() + b"\0")
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                content = f.read()
            digest.update(b"F" + name.encode() + b"\0" + hashlib.sha256(content).digest())
            files += 1
    return digest.hexdigest(), files


# --- the machine ------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({argv[0]} failed: {exc})"
    return done.stdout.strip() or done.stderr.strip()


def _mount_of(path: Path) -> str:
    """``fstype on source (options)`` of the mount that holds *path*, from /proc/self/mounts."""
    best = ("", "")
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                source, point, fstype, options = line.split()[:4]
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, f"{fstype} on {source} ({options})")
    except OSError:
        return "unknown"
    return best[1] or "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_state(repo: Path) -> str:
    """The commit measured, and which tracked files differ from it."""
    head = _run(["git", "-C", os.fspath(repo), "rev-parse", "--short", "HEAD"])
    changed = _run(["git", "-C", os.fspath(repo), "diff", "--name-only", "HEAD"]).split()
    return f"{head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as ``uptime`` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info(cache: Path, repo: Path) -> dict[str, str]:
    """What a reader needs to compare figures between machines (and between commits)."""
    return {
        "code": code_state(repo),
        "kernel": f"{platform.system()} {platform.release()}",
        "cpus": f"{os.cpu_count()} x {_cpu_model()}",
        "load average": load_average(),
        "/tmp (stat -f)": _run(["stat", "-f", "-c", "%T", "/tmp"]),
        "/tmp mount": _mount_of(Path("/tmp")),
        "cache dir mount": _mount_of(cache),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        "uid": str(os.geteuid()),
    }


def command_line(argv: Sequence[str] | None) -> str:
    """The command measured: this process's, or *argv* when ``main`` was given one."""
    return shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)


def print_machine(cache: Path, command: str) -> dict[str, str]:
    """Print the machine block and the command; return the machine's facts."""
    print("machine:")
    machine = machine_info(cache, REPO_ROOT)
    for name, value in machine.items():
        print(f"  {name}: {value}")
    print(f"command: {command}")
    return machine


def print_end(elapsed: float) -> str:
    """Print the load average at the end and the total time; return the load average."""
    load = load_average()
    print(f"\nload average at the end: {load}")
    print(f"total benchmark time {elapsed:.0f} s")
    return load


# --- running pytest ---------------------------------------------------------------------------


def pytest_command(*args: str) -> list[str]:
    """``python -m pytest`` with :data:`PYTEST_ARGS`, then *args*."""
    return [sys.executable, "-m", "pytest", *PYTEST_ARGS, *args]


@contextmanager
def results_dir(cache: Path) -> Iterator[Path]:
    """A scratch directory in *cache* for what the harness writes, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="results-", dir=cache))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def take_json(path: Path) -> Any:
    """The JSON document in *path* (``None`` if there is none readable); *path* is removed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    finally:
        path.unlink(missing_ok=True)


@dataclass
class Outcome:
    """One finished pytest run: its exit code and output, its wall time, and what the harness
    wrote to ``BENCH_OUT`` (``None`` when nothing readable)."""

    returncode: int
    output: str
    wall_s: float
    data: dict[str, Any] | None

    def error(self) -> str | None:
        """Why the run failed (its failures, else the end of its output), or ``None``."""
        if self.returncode == 0 and self.data and not self.data.get("failures"):
            return None
        failures = "\n".join(self.data.get("failures", [])) if self.data else ""
        return f"exit {self.returncode}: {failures or self.output[-3000:]}"


def run_pytest(
    argv: Sequence[str],
    *,
    cwd: Path,
    out: Path,
    env: Mapping[str, str],
    timeout: float,
    run_as_user: Callable[..., subprocess.CompletedProcess[str]] | None = None,
) -> Outcome:
    """Run *argv* in *cwd* with :data:`BENCH_ENV`, ``BENCH_OUT`` = *out* and *env*.

    Without *run_as_user* the run inherits this environment, less an enclosing pytest's
    variables; *run_as_user* (``tests._unpriv.run_as_user``) gets only the variables above.
    The harness's JSON file *out* is read and removed.
    """
    bench_env = {**BENCH_ENV, "BENCH_OUT": os.fspath(out), **env}
    started = time.perf_counter()
    if run_as_user is not None:
        done = run_as_user(argv, cwd=cwd, env=bench_env, timeout=timeout)
    else:
        full_env = {**os.environ, **bench_env}
        for name in _OUTER_PYTEST_VARS:
            full_env.pop(name, None)
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    wall = time.perf_counter() - started
    return Outcome(done.returncode, done.stdout + done.stderr, wall, take_json(out))


def check_outcome(outcome: Outcome, tree: Path, pristine: str) -> tuple[bool, list[str]]:
    """Whether the real *tree* still has the digest *pristine* after the run, and the run's
    errors: a changed tree first, then a failed run."""
    unchanged = tree_digest(tree)[0] == pristine
    errors = [] if unchanged else ["the real tree's digest changed during the run"]
    error = outcome.error()
    if error is not None:
        errors.append(error)
    return unchanged, errors


def failed_summary(error: str) -> str:
    """A run's progress line when it failed: the first line of *error*, shortened."""
    return f"FAILED ({error.splitlines()[0][:200]})"


# --- statistics and tables --------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100), interpolated linearly between order statistics."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return percentile(values, 50)


def fmt_ms(seconds: float | None, *, precise: bool = False) -> str:
    """Seconds as milliseconds with sensible precision (one more digit if *precise*)."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    ms = seconds * 1000
    if abs(ms) < 10:
        return f"{ms:.3f} ms" if precise else f"{ms:.2f} ms"
    if abs(ms) < 1000:
        return f"{ms:.0f} ms"
    return f"{ms:,.0f} ms"


def fmt_ratio(value: float | None) -> str:
    """A ratio: ``1.03`` when small, ``2,400x`` when large."""
    if value is None or math.isnan(value):
        return "n/a"
    if value < 20:
        return f"{value:.2f}"
    return f"{value:,.0f}x"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """*numerator* / *denominator*, or ``None`` when either is missing or the divisor is <= 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def fmt_s(seconds: float | None) -> str:
    """Seconds with two decimals."""
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- goals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One goal, its measured value and the verdict."""

    name: str
    value: float | None
    target: str
    met: bool | None
    shown: str

    def line(self) -> str:
        verdict = "n/a " if self.met is None else ("PASS" if self.met else "MISS")
        return f"{verdict}  {self.name}: {self.shown} (goal {self.target})"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "target": self.target, "met": self.met}


def goal_at_most(
    name: str, value: float | None, limit: float, *, target: str = "", shown: str = ""
) -> Goal:
    """*value* <= *limit*; by default shown as a ratio, with the goal ``<= limit``."""
    met = None if value is None else value <= limit
    return Goal(name, value, target or f"<= {limit:g}", met, shown or fmt_ratio(value))


def goal_at_least(name: str, value: float | None, limit: float) -> Goal:
    """*value* >= *limit*, shown as a ratio."""
    met = None if value is None else value >= limit
    return Goal(name, value, f">= {limit:g}", met, fmt_ratio(value))


def tree_unchanged_goal(unchanged: int, runs: int) -> Goal:
    """The real tree's digest was the same after every run."""
    return Goal(
        "isolation: runs after which the real tree's digest was unchanged",
        float(unchanged),
        f"all {runs}",
        unchanged == runs,
        f"{unchanged}/{runs}",
    )


def print_goals(goals: Sequence[Goal]) -> None:
    for goal in goals:
        print(goal.line())


# --- options and the JSON report --------------------------------------------------------------


def add_quick_and_json(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The ``--quick`` and ``--json`` options every script has."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, metavar="PATH", help="Write every figure here")


def add_cache_dir(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cache-dir``, described as *what* is kept there."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"{what} (default: {DEFAULT_CACHE})",
    )


def parse_choices(
    parser: argparse.ArgumentParser,
    option: str,
    text: str,
    choices: Collection[str],
    *,
    allow_empty: bool = True,
) -> list[str]:
    """The comma-separated keys of *text*, each one of *choices*; a usage error otherwise."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in choices]
    if unknown or not (keys or allow_empty):
        parser.error(f"{option}: unknown {unknown}; choose from {', '.join(choices)}")
    return keys


def write_json(
    path: Path,
    command: str,
    machine: Mapping[str, str],
    figures: Mapping[str, Any],
    goals: Sequence[Goal],
) -> None:
    """Write the command, the machine, *figures* and the goals to *path* as JSON."""
    payload = {
        "command": command,
        "machine": machine,
        **figures,
        "goals": [goal.to_json() for goal in goals],
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
