"""The copy backend's per-test cost: reset a session copy (now) against copying per test (before).

For each tree size, one run measures side by side, at the backend level (no pytest around it):

* ``copy (reset)``: take the session's copy, change *k* files (0 and 10), give it back; the
  reset puts back what changed, as inotify reported it (what the copy backend does now);
* ``copy (walk)``: the same with inotify off, the stat walk finding the changes (machines
  without inotify, or a queue overflow);
* ``copy per test``: build the whole copy and remove it, what every test paid before;
* ``copytree``: ``shutil.copytree`` + ``shutil.rmtree``, what ``tmp_path`` + copytree costs;
* ``kernel``: mount and unmount a kernel overlay (as root), the goal's yardstick.

It prints the medians and the ratios; the goal is at least 50x below both copying variants
at 10,000 files, and within 10x of the kernel.  ``python benchmarks/bench_copy_reset.py --help``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import REPO_ROOT, ensure_tree, fmt_ms, fmt_ratio, median, prepare_cache, render_table

sys.path.insert(0, str(REPO_ROOT))

from pytest_overlay._backends.copying import CopyBackend
from pytest_overlay._backends.kernel import KernelBackend


def _spread(tree: Path, count: int) -> list[str]:
    """*count* files spread over the tree, chosen once, outside the timed cycle."""
    files = sorted(p.relative_to(tree).as_posix() for p in tree.glob("d*/d*/f*.txt"))
    return files[:: max(1, len(files) // max(count, 1))][:count]


def _change(root: Path, files: list[str]) -> None:
    # Rewrite the files, delete the last one, and add one.
    for rel in files:
        (root / rel).write_text("changed\n")
    if files:
        (root / "new.txt").write_text("new\n")
        (root / files[-1]).unlink()


def _time(action: Callable[[], None], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return median(samples)


def _constant(path: Path) -> Callable[[], Path]:
    def scratch() -> Path:
        return path

    return scratch


def measure(tree: Path, scratch: Path, repeat: int, slow_repeat: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for watch, name in ((True, "reset"), (False, "walk")):
        backend = CopyBackend(_constant(scratch / f"copy-{name}"), watch=watch)
        backend.mount([tree], label="warm").close()  # the one copy per session
        for changed in (0, 10):
            files = _spread(tree, changed)

            def cycle(backend: CopyBackend = backend, files: list[str] = files) -> None:
                mount = backend.mount([tree], label="t")
                _change(mount.path, files)
                mount.close()

            figures[f"copy ({name}), {changed} changed"] = _time(cycle, repeat)
        backend.shutdown()

    def per_test() -> None:
        backend = CopyBackend(lambda: scratch / "per-test")
        backend.mount([tree], label="t").close()
        backend.shutdown()  # the copy is thrown away: each test makes its own

    figures["copy per test"] = _time(per_test, slow_repeat)

    def copytree() -> None:
        target = scratch / "copytree"
        shutil.copytree(tree, target, symlinks=True)
        shutil.rmtree(target)

    figures["copytree"] = _time(copytree, slow_repeat)
    if os.geteuid() == 0:
        kernel = KernelBackend(lambda: scratch / "kernel")
        if kernel.unavailable_reason() is None:

            def kernel_cycle() -> None:
                kernel.mount([tree], label="t").close()

            figures["kernel"] = _time(kernel_cycle, repeat)
            kernel.shutdown()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="Tree sizes in files (default: 10000)")
    parser.add_argument("--repeat", type=int, default=30, help="Cycles of the fast variants")
    parser.add_argument("--slow-repeat", type=int, default=3, help="Cycles of the copying ones")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pytest-overlay-bench",
        help="Where generated trees are kept between runs",
    )
    args = parser.parse_args(argv)
    prepare_cache(args.cache_dir)
    rows = []
    for files in (int(s) for s in args.sizes.split(",")):
        tree = ensure_tree(args.cache_dir, files).path
        with tempfile.TemporaryDirectory(prefix="bench-copy-reset-") as scratch:
            figures = measure(tree, Path(scratch), args.repeat, args.slow_repeat)
        ours = figures["copy (reset), 10 changed"]
        for name, seconds in figures.items():
            rows.append([f"{files:,}", name, fmt_ms(seconds, precise=True)])
        print(render_table(["files", "variant", "median per test"], rows))
        rows = []
        print(f"\n{files:,} files, the reset with 10 changes against:")
        for other in ("copy per test", "copytree", "kernel"):
            if other in figures:
                print(f"  {other:<14} {fmt_ratio(figures[other] / ours)} (other / ours)")
        goal = min(figures["copy per test"], figures["copytree"]) / ours
        print(f"  goal >= 50x below both copying variants: {'PASS' if goal >= 50 else 'MISS'}")
        if "kernel" in figures:
            within = ours / figures["kernel"]
            print(
                f"  goal within 10x of the kernel: {fmt_ratio(within)} "
                f"{'PASS' if within <= 10 else 'MISS'}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
