"""Our FUSE backend against fuse-overlayfs and kernel overlayfs, on the 10,000-file tree.

Each workload runs on a fresh mount of each of the three implementations, with a fresh upper
layer on the disk filesystem that holds the tree: a mount + unmount cycle, ``find | wc -l``,
reading every file, ``git status`` in a repository made from the tree, writing 1,000 new files,
and appending to 1,000 files of the lower layer (a copy-up of each).  Every mount is made as
root inside this process's private mount namespace, so nothing shows on the host.

Run ``python benchmarks/bench_fuse.py --help`` for the options; ``benchmarks/README.md`` says
how to read the output.  The script reports; it exits 0 whether or not the goals are met.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_overlay._fuse.session import SessionServer

from _common import (
    REPO_ROOT,
    Goal,
    TreeInfo,
    add_cache_dir,
    add_quick_and_json,
    command_line,
    ensure_tree,
    fmt_ms,
    fmt_ratio,
    goal_at_most,
    median,
    prepare_cache,
    print_end,
    print_goals,
    print_machine,
    ratio,
    render_table,
    tree_digest,
    write_json,
)

TREE_FILES = 10_000
NEW_FILES = 1_000
APPENDED_FILES = 1_000
NEW_FILE_BYTES = 500
APPEND_BYTES = b"appended by bench_fuse.py\n"
GIT_REPO_FORMAT = 2
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"
COMMAND_TIMEOUT_S = 600

GOAL_FIND_RATIO = 1.0
GOAL_GIT_RATIO = 1.0
GOAL_READ_RATIO = 1.5
GOAL_CYCLE_S = 5e-3

IMPLS = ("ours", "fuse_overlayfs", "kernel")
LABELS = {"ours": "ours (FUSE)", "fuse_overlayfs": "fuse-overlayfs", "kernel": "kernel"}
WORKLOADS = ("cycle", "find", "read", "git_status", "write", "append")
WORKLOAD_LABELS = {
    "cycle": "mount + unmount",
    "find": "find -type f | wc -l",
    "read": "read every file",
    "git_status": "git status --porcelain",
    "write": f"write {NEW_FILES:,} new files",
    "append": f"append to {APPENDED_FILES:,} lower files",
}
# git without the machine's or the user's configuration, and without background work.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_OPTIONAL_LOCKS": "1",
    "LC_ALL": "C",
}
GIT_STATUS = ("git", "status", "--porcelain")
IDENTITY = ("-c", "user.name=bench", "-c", "user.email=bench@example.invalid")


# --- the lower layers -----------------------------------------------------------------------


def _git(args: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    )
    return done.stdout


def ensure_git_repo(cache: Path, tree: TreeInfo) -> tuple[Path, bool]:
    """A copy of *tree* with a ``.git`` holding one commit of all of it (made once, reused).

    Returns the repository's path and whether it was reused.
    """
    path = cache / f"git-{tree.files}"
    manifest = cache / f"git-{tree.files}.json"
    source = {k: v for k, v in tree.to_json().items() if k not in ("reused", "generated_in_s")}
    want = {"format": GIT_REPO_FORMAT, "tree": source}
    try:
        if path.is_dir() and json.loads(manifest.read_text()) == want:
            return path, True
    except (OSError, ValueError):
        pass
    print(f"making the git repository {path} from {tree.path} ...", flush=True)
    if path.exists():
        shutil.rmtree(path)
    partial = cache / f"git-{tree.files}.partial-{os.getpid()}"
    try:
        shutil.copytree(tree.path, partial, symlinks=True)
        _git(["init", "-q", "-b", "main", "."], partial)
        _git(["add", "-A"], partial)
        # gc.auto=0 and a gc of our own: with 10,000 loose objects, `git commit` would start a
        # `git gc --auto` in the background, which would rewrite .git during the measurements.
        _git([*IDENTITY, "-c", "gc.auto=0", "commit", "-q", "-m", "tree"], partial)
        _git(["gc", "-q"], partial)
        os.sync()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(path)
    manifest.write_text(json.dumps(want) + "\n")
    return path, False


def list_files(root: Path) -> list[str]:
    """Every regular file under *root*, relative to it, sorted (``.git`` left out)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.normpath(os.path.join(rel, name)))
    return out


def count_files(root: Path) -> int:
    """Regular files under *root*, ``.git`` included (what ``find -type f`` counts)."""
    return sum(
        1
        for dirpath, _, filenames in os.walk(root)
        for name in filenames
        if os.path.isfile(os.path.join(dirpath, name))
        and not os.path.islink(os.path.join(dirpath, name))
    )


# --- the three implementations ----------------------------------------------------------------


@dataclass
class Slot:
    """A fresh upper, work directory and mount point, on the same filesystem as the tree."""

    base: Path

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def mnt(self) -> Path:
        return self.base / "mnt"


def new_slot(scratch: Path, impl: str) -> Slot:
    slot = Slot(Path(tempfile.mkdtemp(prefix=f"{impl}-", dir=scratch)))
    for path in (slot.upper, slot.work, slot.mnt):
        path.mkdir()
    return slot


def overlay_options(lower: Path, slot: Slot) -> str:
    return f"lowerdir={lower},upperdir={slot.upper},workdir={slot.work}"


def fuse_overlayfs_argv(lower: Path, slot: Slot) -> list[str]:
    return [FUSE_OVERLAYFS, "-o", overlay_options(lower, slot), os.fspath(slot.mnt)]


@functools.cache
def session_server() -> SessionServer:
    from pytest_overlay._fuse.session import SessionServer

    return SessionServer()


class Mounted:
    """One live mount of one implementation; :meth:`close` unmounts it."""

    def __init__(self, impl: str, lower: Path, slot: Slot) -> None:
        from pytest_overlay import _syscalls

        self.impl = impl
        self.slot = slot
        self._handle: Any = None
        if impl == "ours":
            # As the plugin does: one session server forks a server per mount, in this
            # thread's private mount namespace (so no auto_unmount watchdog is needed).
            self._handle = session_server().start(
                [lower], slot.upper, slot.work, slot.mnt, auto_unmount=False
            )
        elif impl == "fuse_overlayfs":
            # fuse-overlayfs goes to the background once its mount is live.
            done = subprocess.run(
                fuse_overlayfs_argv(lower, slot),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"fuse-overlayfs exited {done.returncode}: {done.stderr}")
        else:
            _syscalls.mount("overlay", slot.mnt, "overlay", 0, overlay_options(lower, slot))

    def close(self) -> None:
        from pytest_overlay import _syscalls

        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif os.path.ismount(self.slot.mnt):
            _syscalls.umount(self.slot.mnt)


def unmount_quietly(slot: Slot) -> None:
    """Unmount whatever is left on *slot*'s mount point (after an error), detaching if busy."""
    from pytest_overlay import _syscalls

    while os.path.ismount(slot.mnt):
        try:
            _syscalls.umount(slot.mnt, 2)  # MNT_DETACH
        except OSError:
            return


# --- the workloads ------------------------------------------------------------------------------


@dataclass
class Context:
    """What the workloads check their results against."""

    tree: Path
    repo: Path
    tree_files: list[str]
    tree_bytes: int
    repo_file_count: int
    appended: list[str]
    new_files: list[str]
    payload: bytes


def wl_find(mnt: Path, ctx: Context) -> str | None:
    done = subprocess.run(
        ["sh", "-c", f"find {shlex.quote(os.fspath(mnt))} -type f | wc -l"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    got = done.stdout.strip()
    if done.returncode != 0 or got != str(len(ctx.tree_files)):
        return f"find counted {got!r}, expected {len(ctx.tree_files)} ({done.stderr.strip()})"
    return None


def wl_read(mnt: Path, ctx: Context) -> str | None:
    total = 0
    for rel in ctx.tree_files:
        with open(os.path.join(mnt, rel), "rb") as f:
            total += len(f.read())
    return None if total == ctx.tree_bytes else f"read {total} bytes, expected {ctx.tree_bytes}"


def wl_git_status(mnt: Path, ctx: Context) -> str | None:
    done = subprocess.run(
        GIT_STATUS,
        cwd=mnt,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or done.stdout.strip():
        out = (done.stdout + done.stderr).strip()[:500]
        return f"git status exited {done.returncode} and printed {out!r}"
    return None


def wl_write(mnt: Path, ctx: Context) -> str | None:
    for rel in ctx.new_files:
        with open(os.path.join(mnt, rel), "xb") as f:
            f.write(ctx.payload)
    return None


def wl_append(mnt: Path, ctx: Context) -> str | None:
    for rel in ctx.appended:
        with open(os.path.join(mnt, rel), "ab") as f:
            f.write(APPEND_BYTES)
    return None


Workload = Callable[[Path, Context], str | None]
TIMED: dict[str, Workload] = {
    "find": wl_find,
    "read": wl_read,
    "git_status": wl_git_status,
    "write": wl_write,
    "append": wl_append,
}


def check_after(workload: str, slot: Slot, ctx: Context) -> str | None:
    """After the unmount: the writes went to the upper layer, with the right content."""
    if workload == "write":
        missing = [r for r in ctx.new_files if not (slot.upper / r).is_file()]
        return f"{len(missing)} new files missing from the upper layer" if missing else None
    if workload == "append":
        bad = [
            r
            for r in ctx.appended
            if (slot.upper / r).read_bytes() != (ctx.tree / r).read_bytes() + APPEND_BYTES
        ]
        return f"{len(bad)} appended files wrong in the upper layer" if bad else None
    return None


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Cell:
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return median(self.samples) if self.samples else None


def measure_cycle(impl: str, lower: Path, scratch: Path, cell: Cell) -> None:
    slot = new_slot(scratch, impl)
    try:
        started = time.perf_counter()
        Mounted(impl, lower, slot).close()
        cell.samples.append(time.perf_counter() - started)
    except Exception as exc:  # reported, not fatal
        cell.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        unmount_quietly(slot)
        shutil.rmtree(slot.base, ignore_errors=True)


def measure_workload(
    impl: str, workload: str, lower: Path, scratch: Path, ctx: Context, cell: Cell
) -> None:
    slot = new_slot(scratch, impl)
    try:
        mounted = Mounted(impl, lower, slot)
        try:
            started = time.perf_counter()
            error = TIMED[workload](slot.mnt, ctx)
            elapsed = time.perf_counter() - started
        finally:
            mounted.close()
        error = error or check_after(workload, slot, ctx)
        if error is None:
            cell.samples.append(elapsed)
        else:
            cell.errors.append(error)
    except Exception as exc:  # reported, not fatal
        cell.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        unmount_quietly(slot)
        shutil.rmtree(slot.base, ignore_errors=True)


# --- reporting ----------------------------------------------------------------------------------


def results_table(cells: dict[tuple[str, str], Cell], impls: Sequence[str]) -> str:
    headers = ["workload", "n", *[LABELS[i] for i in impls]]
    if "ours" in impls and "fuse_overlayfs" in impls:
        headers.append("ours/fuse-overlayfs")
    if "ours" in impls and "kernel" in impls:
        headers.append("ours/kernel")
    rows = []
    for workload in WORKLOADS:
        values = {i: cells[(workload, i)].median() for i in impls}
        n = min(len(cells[(workload, i)].samples) for i in impls)
        row = [WORKLOAD_LABELS[workload], str(n), *[fmt_ms(values[i]) for i in impls]]
        if "ours" in impls and "fuse_overlayfs" in impls:
            row.append(fmt_ratio(ratio(values["ours"], values["fuse_overlayfs"])))
        if "ours" in impls and "kernel" in impls:
            row.append(fmt_ratio(ratio(values["ours"], values["kernel"])))
        rows.append(row)
    return render_table(headers, rows)


def spread_table(cells: dict[tuple[str, str], Cell], impls: Sequence[str]) -> str:
    headers = ["workload", *[f"{LABELS[i]} min..max" for i in impls]]
    rows = []
    for workload in WORKLOADS:
        row = [WORKLOAD_LABELS[workload]]
        for impl in impls:
            samples = cells[(workload, impl)].samples
            row.append(f"{fmt_ms(min(samples))}..{fmt_ms(max(samples))}" if samples else "n/a")
        rows.append(row)
    return render_table(headers, rows)


def goals(cells: dict[tuple[str, str], Cell], unchanged: int, checks: int) -> list[Goal]:
    def of(workload: str, impl: str) -> float | None:
        cell = cells.get((workload, impl))
        return cell.median() if cell is not None else None

    def vs_fuse(workload: str) -> float | None:
        return ratio(of(workload, "ours"), of(workload, "fuse_overlayfs"))

    cycle = of("cycle", "ours")
    return [
        goal_at_most("find: ours/fuse-overlayfs", vs_fuse("find"), GOAL_FIND_RATIO),
        goal_at_most("git status: ours/fuse-overlayfs", vs_fuse("git_status"), GOAL_GIT_RATIO),
        goal_at_most("read every file: ours/fuse-overlayfs", vs_fuse("read"), GOAL_READ_RATIO),
        goal_at_most(
            "ours: mount + unmount (per-test cost)",
            cycle,
            GOAL_CYCLE_S,
            target=f"<= {fmt_ms(GOAL_CYCLE_S)}",
            shown=fmt_ms(cycle, precise=True),
        ),
        Goal(
            "isolation: lower layers (tree, git repository) unchanged after the run",
            float(unchanged),
            f"all {checks}",
            unchanged == checks,
            f"{unchanged}/{checks}",
        ),
    ]


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Our FUSE overlay against fuse-overlayfs and kernel overlayfs, on the "
        "10,000-file tree: mount cycle, find, read, git status, writes and copy-ups",
    )
    add_quick_and_json(parser, "2 repetitions of each workload and 5 mount cycles")
    parser.add_argument(
        "--rounds", type=int, default=None, help="Repetitions of each workload (default: 5)"
    )
    parser.add_argument(
        "--cycles", type=int, default=None, help="Mount + unmount cycles (default: 20)"
    )
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help=f"Comma-separated subset of {', '.join(IMPLS)} (default: all)",
    )
    add_cache_dir(parser, "Where the tree and the git repository are kept and reused")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.cycles = args.cycles or (5 if args.quick else 20)
    if args.rounds < 1 or args.cycles < 1:
        parser.error("--rounds and --cycles must be positive")
    impls = [k.strip() for k in args.impls.split(",") if k.strip()]
    if not impls or any(k not in IMPLS for k in impls):
        parser.error(f"--impls: choose from {', '.join(IMPLS)}")
    args.impls = [k for k in IMPLS if k in impls]
    return args


def unavailable(impl: str) -> str | None:
    """Why *impl* cannot run here, or ``None``."""
    if impl == "ours":
        from pytest_overlay._fuse import client

        return client.availability()
    if impl == "fuse_overlayfs" and not os.access(FUSE_OVERLAYFS, os.X_OK):
        return f"{FUSE_OVERLAYFS} not found: apt install fuse-overlayfs"
    return None


def tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            return f"({exc})"
        lines = [x for x in (done.stdout + done.stderr).splitlines() if "version" in x]
        return "; ".join(lines) or "unknown"

    return {
        "fuse-overlayfs": first_line([FUSE_OVERLAYFS, "--version"]),
        "git": first_line(["git", "--version"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(argv)
    if os.geteuid() != 0:
        print("bench_fuse.py mounts as root: run it as root (nothing measured)")
        return 0
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pytest_overlay import _namespaces

    impls: list[str] = []
    for impl in args.impls:
        reason = unavailable(impl)
        if reason is None:
            impls.append(impl)
        else:
            print(f"{LABELS[impl]} skipped: {reason}", flush=True)
    if not impls:
        print("nothing to measure")
        return 0

    cache: Path = args.cache_dir
    prepare_cache(cache)
    tree = ensure_tree(cache, TREE_FILES)
    repo, repo_reused = ensure_git_repo(cache, tree)
    # Every mount below is made in this thread's private mount namespace; the server
    # processes and fuse-overlayfs inherit it.
    _namespaces.ensure_private_mount_namespace()

    machine = print_machine(cache, command)
    versions = tool_versions()
    for name, value in versions.items():
        print(f"  {name}: {value}")
    print(f"mounts, each on a fresh upper + work directory under {cache}/fuse-scratch-*/:")
    print(
        "  ours: pytest_overlay._fuse.session.SessionServer().start([LOWER], UPPER, WORK, MNT, "
        "auto_unmount=False) ... .close() (the server started once, as in a pytest session)"
    )
    print(f"  fuse-overlayfs: {shlex.join(fuse_overlayfs_argv(Path('LOWER'), Slot(Path('S'))))}")
    print("    ... umount2(MNT)")
    print(
        "  kernel: mount('overlay', MNT, 'overlay', 0, "
        "'lowerdir=LOWER,upperdir=S/upper,workdir=S/work') ... umount2(MNT)"
    )
    print(f"workloads, LOWER = {tree.path} (git status: LOWER = {repo}):")
    print("  find: sh -c 'find MNT -type f | wc -l'")
    print(f"  git status: {shlex.join(GIT_STATUS)} in MNT, env {GIT_ENV}")
    print(
        f"  read: open + read of each of the tree's files in Python; write: {NEW_FILES:,} new "
        f"files of {NEW_FILE_BYTES} bytes into the tree's directories; append: one line to "
        f"every {TREE_FILES // APPENDED_FILES}th file"
    )
    print(
        f"plan: {args.cycles} mount cycles and {args.rounds} repetitions of each workload per "
        "implementation, each on a fresh mount, implementations interleaved"
    )
    print(flush=True)

    print("checking the lower layers ...", flush=True)
    pristine = {tree.path: tree_digest(tree.path)[0], repo: tree_digest(repo)[0]}
    tree_files = list_files(tree.path)
    leaf_dirs = sorted({os.path.dirname(r) for r in tree_files if os.path.dirname(r)})
    ctx = Context(
        tree=tree.path,
        repo=repo,
        tree_files=tree_files,
        tree_bytes=sum((tree.path / r).stat().st_size for r in tree_files),
        repo_file_count=count_files(repo),
        appended=tree_files[:: max(1, len(tree_files) // APPENDED_FILES)][:APPENDED_FILES],
        new_files=[
            os.path.join(leaf_dirs[i % len(leaf_dirs)], f"new-{i:04d}.txt")
            for i in range(NEW_FILES)
        ],
        payload=b"x" * (NEW_FILE_BYTES - 1) + b"\n",
    )

    cells = {(w, i): Cell() for w in WORKLOADS for i in impls}
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="fuse-scratch-", dir=cache))
    try:
        for _ in range(args.cycles):
            for impl in impls:
                measure_cycle(impl, tree.path, scratch, cells[("cycle", impl)])
        line = ", ".join(f"{LABELS[i]} {fmt_ms(cells[('cycle', i)].median())}" for i in impls)
        print(f"mount + unmount, {args.cycles} cycles: {line}", flush=True)
        for rnd in range(args.rounds):
            for workload in TIMED:
                lower = repo if workload == "git_status" else tree.path
                for impl in impls:
                    cell = cells[(workload, impl)]
                    before = len(cell.errors)
                    measure_workload(impl, workload, lower, scratch, ctx, cell)
                    if len(cell.errors) > before:
                        print(f"  {workload} {LABELS[impl]}: FAILED {cell.errors[-1][:300]}")
            line = ", ".join(
                f"{w} "
                + "/".join(
                    fmt_ms(cells[(w, i)].samples[-1]) for i in impls if cells[(w, i)].samples
                )
                for w in TIMED
            )
            print(f"round {rnd + 1}/{args.rounds} ({' / '.join(impls)}): {line}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    changed = [p for p, d in pristine.items() if tree_digest(p)[0] != d]
    unchanged = len(pristine) - len(changed)

    print()
    note = "reused" if tree.reused else "generated now"
    print(
        f"tree: {len(tree_files):,} files ({tree.files:,} data files, the rest harness files of "
        f"the other scripts), {tree.bytes / 1e6:.1f} MB at {tree.path} ({note})"
    )
    print(
        f"git repository: {ctx.repo_file_count:,} files with .git at {repo} "
        f"({'reused' if repo_reused else 'made now'})"
    )
    print()
    print("median time per workload (each on a fresh mount; the cycle is mount + unmount):")
    print(results_table(cells, impls))
    print()
    print("spread over the repetitions:")
    print(spread_table(cells, impls))
    print()
    goal_list = goals(cells, unchanged, len(pristine))
    print_goals(goal_list)
    for path in changed:
        print(f"\nERROR the lower layer {path} changed during the run")
    for (workload, impl), cell in cells.items():
        for error in cell.errors:
            print(f"\nERROR {workload} {LABELS[impl]}:\n{error}")
    load = print_end(elapsed)

    if args.json is not None:
        figures = {
            "plan": {"rounds": args.rounds, "cycles": args.cycles, "impls": impls},
            "tools": versions,
            "tree": tree.to_json(),
            "git_repo": os.fspath(repo),
            "cells": {
                f"{w}/{i}": {"samples_s": c.samples, "median_s": c.median(), "errors": c.errors}
                for (w, i), c in cells.items()
            },
            "load_average_end": load,
        }
        write_json(args.json, command, machine, figures, goal_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
