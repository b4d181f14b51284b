"""Helpers shared by the benchmark scripts: cached synthetic trees, machine facts, statistics.

Nothing here measures anything; the scripts do.  Trees are generated once into a cache
directory (default ``/tmp/pytest-overlay-bench``) and reused, because creating 100,000 files on
a slow disk takes minutes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/tmp/pytest-overlay-bench")

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


def machine_info(cache: Path, repo: Path) -> dict[str, str]:
    """What a reader needs to compare figures between machines (and between commits)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "code": code_state(repo),
        "kernel": f"{platform.system()} {platform.release()}",
        "cpus": f"{os.cpu_count()} x {_cpu_model()}",
        "load average": load,
        "/tmp (stat -f)": _run(["stat", "-f", "-c", "%T", "/tmp"]),
        "/tmp mount": _mount_of(Path("/tmp")),
        "cache dir mount": _mount_of(cache),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        "uid": str(os.geteuid()),
    }


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
