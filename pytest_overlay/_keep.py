"""Kept layers: a test's upper layer and a record of it, stored for the ``pytest-overlay`` command.

Layout, inside pytest's cache directory (``.pytest_cache/d/overlay`` by default)::

    runs/<run id>/run.json                 the run: id, start time, rootdir, pid
    runs/<run id>/tests/<slug>/record.json  one kept test (see :class:`Record`)
    runs/<run id>/tests/<slug>/upper/       its upper layer, in overlayfs format
    latest                                  the id of the newest run

Every JSON file is written to a temporary name and renamed, so a crash leaves either the old
file or the new one, never half of one; a test directory without a record is incomplete and
the command says so.  The layers themselves are written by :mod:`._layerwrite`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._diff import TreeDiff
from ._files import remove_tree
from ._layerwrite import copy_layer
from ._names import safe_label

STORE_DIR = "overlay"
RUN_FILE = "run.json"
RECORD_FILE = "record.json"
UPPER_DIR = "upper"
LATEST_FILE = "latest"


@dataclass(frozen=True)
class Record:
    """What is known of one kept test."""

    nodeid: str
    outcome: str
    phases: dict[str, str]
    backend: str
    lowers: list[str]
    time: str
    diff: dict[str, Any]
    report: str
    worker: str | None = None
    upper: str | None = UPPER_DIR
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def tree_diff(self) -> TreeDiff:
        """The test's changes."""
        return TreeDiff.from_dict(self.diff)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Read a record from its parsed JSON; unknown keys from newer versions are kept in
        ``extra``."""
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(data.get("extra") or {})
        extra.update((k, v) for k, v in data.items() if k not in known and k != "extra")
        return cls(**values, extra=extra)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write *data* so that readers see the old file or the new one, never a torn one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temporary, path)


def test_slug(nodeid: str) -> str:
    """A directory name for a node id: readable, short, and unique by a hash suffix."""
    digest = hashlib.sha1(nodeid.encode("utf-8", "surrogateescape")).hexdigest()[:10]  # noqa: S324 - a name, not security
    return f"{safe_label(nodeid.rsplit('::', 1)[-1], 40)}-{digest}"


class Store:
    """The kept-layer store of one project."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def ensure_run(self, run_id: str, rootdir: Path, keep: str, retention: int) -> Path:
        """The run's directory, created (and old runs pruned) by the first process that asks."""
        run_dir = self.runs_dir / run_id
        if (run_dir / RUN_FILE).exists():
            return run_dir
        self.root.mkdir(parents=True, exist_ok=True)
        # Imported here: a run that keeps nothing never needs it (filelock takes ~10 ms to import).
        from filelock import FileLock

        # The xdist workers of one run race to create it; the lock makes pruning happen once.
        with FileLock(str(self.root / ".lock")):
            if not (run_dir / RUN_FILE).exists():
                self.start_run(run_id, rootdir, keep, retention)
        return run_dir

    def start_run(self, run_id: str, rootdir: Path, keep: str, retention: int) -> Path:
        """Create the run directory, point ``latest`` at it, and prune old runs."""
        run_dir = self.runs_dir / run_id
        (run_dir / "tests").mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run_dir / RUN_FILE,
            {
                "run_id": run_id,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "rootdir": str(rootdir),
                "pid": os.getpid(),
                "keep": keep,
            },
        )
        temporary = self.root / f".{LATEST_FILE}.{os.getpid()}.tmp"
        temporary.write_text(run_id + "\n")
        os.replace(temporary, self.root / LATEST_FILE)
        self.prune(retention, keep_run=run_id)
        return run_dir

    def prune(self, retention: int, keep_run: str | None = None) -> list[str]:
        """Remove all but the newest *retention* runs (and runs that kept nothing)."""
        runs = self.run_ids()
        removed = []
        doomed = runs[: max(len(runs) - retention, 0)]
        doomed += [r for r in runs if r not in doomed and r != keep_run and self._empty(r)]
        for run_id in doomed:
            if run_id == keep_run:
                continue
            remove_tree(self.runs_dir / run_id)
            removed.append(run_id)
        return removed

    def _empty(self, run_id: str) -> bool:
        tests = self.runs_dir / run_id / "tests"
        return not tests.is_dir() or not any(tests.iterdir())

    def run_ids(self) -> list[str]:
        """Every run's id, oldest first."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir())

    def latest_run(self) -> str | None:
        """The newest run's id, or None when nothing was kept yet."""
        try:
            run_id = (self.root / LATEST_FILE).read_text().strip()
        except OSError:
            run_id = ""
        if run_id and (self.runs_dir / run_id).is_dir():
            return run_id
        runs = self.run_ids()
        return runs[-1] if runs else None

    def test_dirs(self, run_id: str) -> Iterator[Path]:
        """The kept tests of a run, complete or not."""
        tests = self.runs_dir / run_id / "tests"
        if tests.is_dir():
            yield from sorted(p for p in tests.iterdir() if p.is_dir())

    def clean(self) -> int:
        """Remove every kept layer; returns how many runs were removed."""
        runs = self.run_ids()
        for run_id in runs:
            remove_tree(self.runs_dir / run_id)
        with contextlib.suppress(FileNotFoundError):
            (self.root / LATEST_FILE).unlink()
        return len(runs)


def read_record(test_dir: Path) -> Record | None:
    """The record of a kept test, or None when it is missing or was cut short by a crash."""
    try:
        data = json.loads((test_dir / RECORD_FILE).read_text())
        return Record.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None


def keep_test(run_dir: Path, record: Record, layer: Path | Callable[[Path], int] | None) -> Path:
    """Store one test: its upper layer first, then the record that makes it complete.

    *layer* is the test's upper layer: a directory to copy, or what writes it at the path it
    is given and returns its size in bytes (a mount's :meth:`~._backends.base.Mount.export`);
    None keeps the record alone.
    """
    test_dir = run_dir / "tests" / test_slug(record.nodeid)
    if test_dir.exists():
        remove_tree(test_dir)
    test_dir.mkdir(parents=True)
    size = 0
    stored_upper: str | None = None
    if layer is not None:
        target = test_dir / UPPER_DIR
        size = layer(target) if callable(layer) else copy_layer(layer, target)
        stored_upper = UPPER_DIR
    final = Record(**{**asdict(record), "size": size, "upper": stored_upper})
    write_json_atomic(test_dir / RECORD_FILE, asdict(final))
    return test_dir
