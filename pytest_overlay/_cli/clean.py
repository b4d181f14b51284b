"""``pytest-overlay clean``: remove the kept layers of tests, or (``--layers``) the snapshot layers.

It refuses to remove a run or a snapshot layer that a view made by ``mount`` still uses
(:func:`.mount.views_of`), and asks first on a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from pytest_overlay._files import remove_tree
from pytest_overlay._keep import LATEST_FILE
from pytest_overlay._safetext import safe_path
from pytest_overlay._snapshot.cache import clean_layers

from .common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Context,
    human_size,
    plural,
    shown_path,
    subparser,
)
from .layers import add_layer_dir_option, locate_layers, read_layers
from .mount import views_of
from .records import run_summary, select_run


def add_parsers(subparsers: Any) -> None:
    """Add ``clean`` to the parser of ``pytest-overlay``."""
    sub = subparser(
        subparsers,
        "clean",
        "Remove kept layers (or, with --layers, the snapshot layers)",
        "Remove the kept layers of tests, of every run or of one run; the cached snapshot "
        "layers stay.  With --layers, remove every cached snapshot layer instead (see "
        "`pytest-overlay layers`) and nothing else; the overlay_layer fixture rebuilds them "
        "when a test next needs them.  Asks first on a terminal; elsewhere --yes is needed.",
    )
    what = sub.add_mutually_exclusive_group()
    what.add_argument("--run", metavar="RUN_ID", help="Remove only this run (a run id, or latest)")
    what.add_argument(
        "--layers",
        action="store_true",
        help="Remove the cached snapshot layers instead of the kept layers of tests",
    )
    add_layer_dir_option(sub)
    sub.add_argument("--yes", "-y", action="store_true", help="Remove without asking")
    sub.set_defaults(handler=clean)


def clean(ctx: Context) -> int:
    """Remove the kept layers of every run, or of ``--run``, after asking (or ``--yes``).

    With ``--layers``, remove the cached snapshot layers instead.
    """
    if ctx.args.layers:
        return _clean_snapshot_layers(ctx)
    if ctx.args.layer_dir is not None:
        # Without this, `clean --layer-dir X --yes` would remove the kept layers of tests.
        raise CliError(
            "--layer-dir names the snapshot-layer cache, which only `clean --layers` removes",
            code=EXIT_USAGE,
            hint="add --layers to remove the snapshot layers",
        )
    store = ctx.located.store
    runs = store.run_ids()
    if not runs:
        ctx.print(f"{ctx.located.nothing_kept()}; nothing to clean")
        return EXIT_OK
    targets = runs if ctx.args.run is None else [select_run(store, ctx.args.run)]
    for run_id in targets:
        busy = views_of(store.runs_dir / run_id)
        if busy:
            raise CliError(
                f"run {safe_path(run_id)} is mounted at {shown_path(busy[0])}",
                hint=f"unmount it first: pytest-overlay umount {shown_path(busy[0])}",
            )
    sizes = {run_id: run_summary(store, run_id) for run_id in targets}
    what = plural(len(targets), "run")
    if not ctx.args.yes and not _confirm(ctx, f"remove {what} from {shown_path(store.root)}?"):
        raise CliError(f"nothing removed ({what} kept)", hint="pass --yes to remove them")
    if ctx.args.run is None:
        store.clean()
    else:
        remove_tree(store.runs_dir / targets[0])
        if store.latest_run() is None:
            with contextlib.suppress(FileNotFoundError):
                (store.root / LATEST_FILE).unlink()
    total_tests = total_size = 0
    for run_id, (count, size) in sizes.items():
        ctx.print(
            f"removed run {safe_path(run_id)}: {plural(count, 'kept test')}, {human_size(size)}"
        )
        total_tests += count
        total_size += size
    totals = f"{plural(total_tests, 'test')}, {human_size(total_size)}"
    ctx.print(f"removed {what} ({totals}) from {shown_path(store.root)}")
    return EXIT_OK


def _clean_snapshot_layers(ctx: Context) -> int:
    root, how = locate_layers(ctx.args.layer_dir, Path.cwd())
    layers = read_layers(root)
    where = shown_path(root)
    if not layers:
        ctx.print(f"no snapshot layers in {where} ({how}); nothing to clean")
        return EXIT_OK
    busy = views_of(root)
    if busy:
        raise CliError(
            f"a snapshot layer in {where} is part of the view mounted at {shown_path(busy[0])}",
            hint=f"unmount it first: pytest-overlay umount {shown_path(busy[0])}",
        )
    what = plural(len(layers), "snapshot layer")
    total = human_size(sum(info.size for info in layers))
    if not ctx.args.yes and not _confirm(ctx, f"remove {what} ({total}) from {where}?"):
        raise CliError(f"nothing removed ({what} cached)", hint="pass --yes to remove them")
    clean_layers(root)
    for info in layers:
        ctx.print(
            f"removed layer {safe_path(info.name)} "
            f"({safe_path(info.key[:12])}, {human_size(info.size)})"
        )
    ctx.print(f"removed {what} ({total}) from {where}")
    return EXIT_OK


def _confirm(ctx: Context, question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    ctx.err.write(f"{question} [y/N] ")
    ctx.err.flush()
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")
