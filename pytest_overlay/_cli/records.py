"""Reading the kept tests of a store for the commands: which run, which test, its record.

A store is written by pytest and may be torn (a run cut short) or edited by hand, so a record
is used only when its fields have the types the commands rely on, ``latest`` only when it
names a directory of ``runs/``, and a record's upper layer only inside its test's directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_overlay._diff import ChangeKind, TreeDiff
from pytest_overlay._keep import RUN_FILE, Record, Store, read_record
from pytest_overlay._safetext import safe_path

from .common import KEEP_HINT, LIST_HINT, CliError, shown_path

_MAX_CANDIDATES = 10


@dataclass(frozen=True)
class Kept:
    """One kept test's directory, and its record when complete and readable."""

    run_id: str
    directory: Path
    record: Record | None

    @property
    def upper(self) -> Path | None:
        """The kept upper layer, for a record that has one."""
        if self.record is None or self.record.upper is None:
            return None
        return self.directory / self.record.upper


def _well_formed(record: Record) -> bool:
    """Whether a record's fields have the types the command relies on."""
    values: dict[str, object] = asdict(record)
    strings = ("nodeid", "outcome", "backend", "time", "report")
    lowers = values["lowers"]
    upper = values["upper"]
    return (
        all(isinstance(values[name], str) for name in strings)
        and isinstance(lowers, list)
        and all(isinstance(item, str) for item in lowers)
        and isinstance(values["diff"], dict)
        and isinstance(values["size"], int)
        # A plain name inside the test's directory: a record must not point elsewhere.
        and (upper is None or (isinstance(upper, str) and _plain_name(upper)))
    )


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name


def load_record(test_dir: Path) -> Record | None:
    """The test's record, or None when it is missing, torn, or not one we can use."""
    record = read_record(test_dir)
    if record is None or not _well_formed(record):
        return None
    return record


def tests_of(store: Store, run_id: str) -> list[Kept]:
    """The kept tests of a run: complete ones by node id, then incomplete ones."""
    kept = [Kept(run_id, path, load_record(path)) for path in store.test_dirs(run_id)]
    return sorted(
        kept,
        key=lambda k: (k.record is None, k.record.nodeid if k.record else "", k.directory.name),
    )


def tree_diff(kept: Kept) -> TreeDiff | None:
    """The test's changes, or None when the stored diff cannot be read."""
    assert kept.record is not None
    try:
        return kept.record.tree_diff()
    except (ValueError, TypeError):
        return None


def counts(diff: TreeDiff) -> tuple[int, int, int]:
    """How many paths *diff* adds, modifies and deletes."""
    added = sum(1 for c in diff if c.kind is ChangeKind.ADDED)
    deleted = sum(1 for c in diff if c.kind is ChangeKind.DELETED)
    return added, len(diff) - added - deleted, deleted


def select_run(store: Store, run: str | None) -> str:
    """The run named by ``--run`` (an id, or ``latest``), or the latest run."""
    runs = store.run_ids()
    if run is None or run == "latest":
        latest = store.latest_run()
        if latest is None:
            raise CliError(f"no kept layers in {shown_path(store.root)}", hint=KEEP_HINT)
        # ``latest`` is a file anyone could have edited: only ever a directory in runs/.
        return latest if latest in runs else runs[-1]
    if run in runs:
        return run
    known = ", ".join(safe_path(r) for r in runs[-5:]) if runs else "none"
    raise CliError(
        f"no run {safe_path(run)!r} in {shown_path(store.root)}",
        hint=f"the newest runs are: {known} (`pytest-overlay list --all-runs` shows all)",
    )


def find_test(store: Store, run_id: str, query: str) -> Kept:
    """The kept test whose node id is *query*, else the only one that contains it."""
    complete = [k for k in tests_of(store, run_id) if k.record is not None]
    for kept in complete:
        assert kept.record is not None
        if kept.record.nodeid == query:
            return kept
    matches = [k for k in complete if k.record is not None and query in k.record.nodeid]
    if len(matches) == 1:
        return matches[0]
    shown = safe_path(query)
    if matches:
        names = [safe_path(k.record.nodeid) for k in matches if k.record is not None]
        lines = [f"  {name}" for name in names[:_MAX_CANDIDATES]]
        if len(names) > _MAX_CANDIDATES:
            lines.append(f"  ... and {len(names) - _MAX_CANDIDATES} more")
        raise CliError(
            f"'{shown}' matches {len(matches)} kept tests of run {safe_path(run_id)}:\n"
            + "\n".join(lines),
            hint="give more of the node id, or all of it",
        )
    hint = LIST_HINT
    for other in reversed(store.run_ids()):
        if other != run_id and any(
            k.record is not None and query in k.record.nodeid for k in tests_of(store, other)
        ):
            shown_run = safe_path(other)
            hint += f"; a test matching it was kept in run {shown_run} (add --run {shown_run})"
            break
    raise CliError(f"no kept test of run {safe_path(run_id)} matches '{shown}'", hint=hint)


def run_info(store: Store, run_id: str) -> dict[str, Any]:
    """The run's ``run.json``, or an empty dict when it cannot be read."""
    try:
        data = json.loads((store.runs_dir / run_id / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_summary(store: Store, run_id: str) -> tuple[int, int]:
    """How many tests a run kept, and the total size of their layers."""
    kept = tests_of(store, run_id)
    return len(kept), sum(k.record.size for k in kept if k.record is not None)
