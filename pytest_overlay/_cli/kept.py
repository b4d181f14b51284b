"""``pytest-overlay list`` and ``show``: the kept tests of a run, and what one of them changed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_overlay._keep import Store
from pytest_overlay._layers import LayerStack
from pytest_overlay._render import render_changes
from pytest_overlay._report import render_name_only, render_stat
from pytest_overlay._safetext import safe_line, safe_path

from .common import (
    CACHE_DIR_HINT,
    EXIT_OK,
    KEEP_HINT,
    CliError,
    Context,
    add_run_option,
    human_size,
    plural,
    shown_path,
    subparser,
)
from .records import counts, find_test, run_info, select_run, tests_of, tree_diff

# --- list -----------------------------------------------------------------------------------


def cmd_list(ctx: Context) -> int:
    """``pytest-overlay list``."""
    store = ctx.located.store
    if store.latest_run() is None:
        ctx.print(ctx.located.nothing_kept())
        ctx.print(KEEP_HINT)
        ctx.print(CACHE_DIR_HINT)
        return EXIT_OK
    runs = store.run_ids() if ctx.args.all_runs else [select_run(store, ctx.args.run)]
    for index, run_id in enumerate(runs):
        if index:
            ctx.print()
        _list_run(ctx, store, run_id)
    return EXIT_OK


def _list_run(ctx: Context, store: Store, run_id: str) -> None:
    started = run_info(store, run_id).get("started")
    when = safe_path(started) if isinstance(started, str) else "unknown time"
    ctx.print(f"run {safe_path(run_id)} (started {when}) in {shown_path(store.root)}")
    kept = tests_of(store, run_id)
    if not kept:
        ctx.print("no tests were kept in this run")
        return
    rows: list[tuple[str, str, str, str]] = []
    incomplete: list[str] = []
    for item in kept:
        if item.record is None:
            incomplete.append(f"(incomplete: {safe_path(item.directory.name)})")
            continue
        diff = tree_diff(item)
        changes = "?" if diff is None else "+{} ~{} -{}".format(*counts(diff))
        size = human_size(item.record.size)
        rows.append((safe_path(item.record.nodeid), safe_path(item.record.outcome), changes, size))
    header = ("NODE ID", "OUTCOME", "CHANGES", "SIZE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        nodeid, outcome, changes, size = row
        padding = " " * (widths[1] - len(outcome))
        if row is not header:
            outcome = ctx.style.outcome(outcome)
        ctx.print(
            f"{nodeid.ljust(widths[0])}  {outcome}{padding}  {changes.ljust(widths[2])}  {size}"
        )
    for line in incomplete:
        ctx.print(line)
    summary = plural(len(rows), "kept test")
    if incomplete:
        summary += f", {len(incomplete)} incomplete (cut short while being kept, or unreadable)"
    ctx.print(summary)


# --- show -----------------------------------------------------------------------------------


def cmd_show(ctx: Context) -> int:
    """``pytest-overlay show``."""
    store = ctx.located.require()
    kept = find_test(store, select_run(store, ctx.args.run), ctx.args.nodeid)
    record = kept.record
    assert record is not None
    if ctx.args.json:
        data = {k: v for k, v in asdict(record).items() if k != "extra"}
        data.update(record.extra)
        # ensure_ascii: control characters and odd code points come out as \u escapes.
        ctx.print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))
        return EXIT_OK
    if ctx.args.stat or ctx.args.name_only:
        diff = tree_diff(kept)
        if diff is None:
            raise CliError(f"the stored changes of {safe_path(record.nodeid)} cannot be read")
        if ctx.args.name_only:
            if diff:
                ctx.print(render_name_only(diff))
            return EXIT_OK
        # Old versions come from the lowers as they are now, new ones from the kept layer.
        stack = LayerStack([Path(p) for p in record.lowers if Path(p).is_dir()])

        def old(rel: str) -> Path | None:
            entry = stack.lookup(rel)
            return None if entry is None else entry.real_path

        def new(rel: str) -> Path | None:
            path = None if kept.upper is None else kept.upper / rel
            return path if path is not None and os.path.lexists(path) else None

        ctx.print(render_stat(diff, old, new))
        return EXIT_OK
    title = f"{safe_path(record.nodeid)}: {ctx.style.outcome(safe_path(record.outcome))}"
    ctx.print(f"{title} ({safe_path(record.backend)} backend, run {safe_path(kept.run_id)})")
    if kept.upper is not None:
        ctx.print(f"kept upper layer: {shown_path(kept.upper)}")
    ctx.print()
    report = record.report.rstrip("\n")
    if not report:
        diff = tree_diff(kept)
        report = render_changes(diff) if diff else "(no changes)"
    for line in report.split("\n"):
        # The report was rendered safely when kept; this only re-checks it (a no-op on safe
        # text) in case the store was tampered with.
        ctx.print(ctx.style.report_line(safe_line(line)))
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add ``list`` and ``show`` to the parser of ``pytest-overlay``."""
    sub = subparser(
        subparsers,
        "list",
        "List the kept tests of a run",
        "List the kept tests of the latest run: node id, outcome, changes (+added ~modified "
        "-deleted) and the size of the kept layer.",
    )
    add_run_option(sub)
    sub.add_argument("--all-runs", action="store_true", help="List the tests of every kept run")
    sub.set_defaults(handler=cmd_list)

    sub = subparser(
        subparsers,
        "show",
        "Print what a kept test changed",
        "Print the report of a kept test: its changes and the unified diff of changed files. "
        "NODEID is a node id, or any part of one that matches a single kept test.",
    )
    sub.add_argument("nodeid", metavar="NODEID", help="The test's node id, or a unique part of it")
    form = sub.add_mutually_exclusive_group()
    form.add_argument("--stat", action="store_true", help="Only the changed paths and totals")
    form.add_argument("--name-only", action="store_true", help="Only the changed paths")
    form.add_argument("--json", action="store_true", help="The whole record, as JSON")
    add_run_option(sub)
    sub.set_defaults(handler=cmd_show)
