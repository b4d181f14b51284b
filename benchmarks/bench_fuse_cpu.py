"""Where `git status` spends its time on our FUSE server and on fuse-overlayfs: server CPU.

``git status`` on a fresh mount of the 10,000-file repository is the workload of
``bench_fuse.py`` where every request counts: about 10,000 ``LOOKUP``s.  This script shows
where each server spends that time: for each implementation it runs ``git status --porcelain``
on fresh mounts and reads the serving process's user and system CPU time from
``/proc/PID/stat`` before and after, then prints the medians side by side with the ratios.
The user time is the server's own code (for ours: Python per request); the system time is the
kernel's work for the requests the server answers.

Run as root from a checkout: ``python benchmarks/bench_fuse_cpu.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import DEFAULT_CACHE, REPO_ROOT, ensure_tree, fmt_ratio, prepare_cache, render_table
from bench_fuse import (
    FUSE_OVERLAYFS,
    GIT_ENV,
    GIT_STATUS,
    LABELS,
    TREE_FILES,
    Mounted,
    ensure_git_repo,
    new_slot,
    unmount_quietly,
)

IMPLS = ("ours", "fuse_overlayfs")


def _cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _server_pid(impl: str, mounted: Mounted) -> int:
    if impl == "ours":
        return int(mounted._handle.process.pid)  # the mount's own server
    found = subprocess.run(
        ["pgrep", "-n", "-f", f"{FUSE_OVERLAYFS}.*{mounted.slot.mnt}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(found.stdout.split()[0])


def measure(impl: str, repo: Path, scratch: Path) -> tuple[float, float, float]:
    """Wall, server user and server system seconds of one ``git status`` on a fresh mount."""
    slot = new_slot(scratch, impl)
    mounted = Mounted(impl, repo, slot)
    try:
        pid = _server_pid(impl, mounted)
        user0, sys0 = _cpu(pid)
        started = time.perf_counter()
        done = subprocess.run(
            GIT_STATUS, cwd=slot.mnt, env={**os.environ, **GIT_ENV}, capture_output=True, check=True
        )
        wall = time.perf_counter() - started
        user1, sys1 = _cpu(pid)
        if done.stdout.strip():
            raise RuntimeError(f"git status printed {done.stdout[:200]!r}")
        return wall, user1 - user0, sys1 - sys0
    finally:
        mounted.close()
        unmount_quietly(slot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="fresh mounts per implementation")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_fuse_cpu.py mounts as root: run it as root (nothing measured)")
        return 0
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pytest_overlay import _namespaces

    cache: Path = args.cache_dir
    prepare_cache(cache)
    repo, _ = ensure_git_repo(cache, ensure_tree(cache, TREE_FILES))
    _namespaces.ensure_private_mount_namespace()
    scratch = cache / f"cpu-scratch-{os.getpid()}"
    scratch.mkdir()
    samples: dict[str, list[tuple[float, float, float]]] = {impl: [] for impl in IMPLS}
    try:
        for _ in range(args.rounds):
            for impl in IMPLS:  # interleaved, so that drift hits both alike
                samples[impl].append(measure(impl, repo, scratch))
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    medians = {
        impl: tuple(statistics.median(s[i] for s in samples[impl]) for i in range(3))
        for impl in IMPLS
    }
    print(f"git status --porcelain on fresh mounts of {repo}, {args.rounds} rounds, medians:")
    rows = [[LABELS[impl], *(f"{value * 1e3:.0f} ms" for value in medians[impl])] for impl in IMPLS]
    ours, theirs = medians["ours"], medians["fuse_overlayfs"]
    ratios = [fmt_ratio(a / b if b else None) for a, b in zip(ours, theirs, strict=True)]
    rows.append(["ours / fuse-overlayfs", *ratios])
    print(render_table(["implementation", "wall", "server user CPU", "server system CPU"], rows))
    print(
        f"server user CPU beyond fuse-overlayfs's: {(ours[1] - theirs[1]) * 1e3:.0f} ms; "
        f"system CPU: {(ours[2] - theirs[2]) * 1e3:+.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
