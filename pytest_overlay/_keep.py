"""Kept layers: a test's upper layer and a record of it, stored for the ``pytest-overlay`` command.

Layout, inside pytest's cache directory (``.pytest_cache/d/overlay`` by default)::

    runs/<run id>/run.json                 the run: id, start time, rootdir, pid
    runs/<run id>/tests/<slug>/record.json  one kept test (see :class:`Record`)
    runs/<run id>/tests/<slug>/upper/       its upper layer, in overlayfs format
    latest                                  the id of the newest run

Every JSON file is written to a temporary name and renamed, so a crash leaves either the old
file or the new one, never half of one; a test directory without a record is incomplete and
the command says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._diff import TreeDiff
from ._filecopy import copy_file_data
from ._names import safe_label

STORE_DIR = "overlay"
RUN_FILE = "run.json"
RECORD_FILE = "record.json"
UPPER_DIR = "upper"
LATEST_FILE = "latest"
KEEP_CHOICES = ("failed", "all", "none")


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
        return TreeDiff.from_json(json.dumps(self.diff))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """Read a record; unknown keys from newer versions are kept in ``extra``."""
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


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A sortable, unique id for a run."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{os.getpid()}"


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
            remove_layer_tree(self.runs_dir / run_id)
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
            remove_layer_tree(self.runs_dir / run_id)
        with contextlib.suppress(FileNotFoundError):
            (self.root / LATEST_FILE).unlink()
        return len(runs)


def read_record(test_dir: Path) -> Record | None:
    """The record of a kept test, or None when it is missing or was cut short by a crash."""
    try:
        data = json.loads((test_dir / RECORD_FILE).read_text())
        return Record.from_json(data)
    except (OSError, ValueError, TypeError):
        return None


def keep_test(run_dir: Path, record: Record, upper: Path | None) -> Path:
    """Store one test: its upper layer first, then the record that makes it complete."""
    test_dir = run_dir / "tests" / test_slug(record.nodeid)
    if test_dir.exists():
        remove_layer_tree(test_dir)
    test_dir.mkdir(parents=True)
    size = 0
    stored_upper: str | None = None
    if upper is not None:
        size = copy_layer(upper, test_dir / UPPER_DIR)
        stored_upper = UPPER_DIR
    final = Record(**{**asdict(record), "size": size, "upper": stored_upper})
    write_json_atomic(test_dir / RECORD_FILE, asdict(final))
    return test_dir


def copy_layer(source: Path, target: Path) -> int:
    """Copy an upper layer with its whiteouts, opaque markers, modes and times; returns bytes.

    Whiteouts are character devices 0/0, which Linux lets anyone create since 5.8; where that
    fails they become ``.wh.<name>`` files, a format the diff reader also understands.
    """
    total = 0
    target.mkdir(mode=0o700)
    for directory, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(directory, source)
        out_dir = target if rel == "." else target / rel
        for name in dirnames:
            src = Path(directory, name)
            st = src.lstat()
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), out_dir / name)
                continue
            (out_dir / name).mkdir(mode=0o700)
        for name in filenames:
            src, dst = Path(directory, name), out_dir / name
            st = src.lstat()
            total += _copy_entry(src, dst, st)
        _copy_xattrs(Path(directory), out_dir)
    # Modes last, bottom-up, so that read-only directories could be filled first.
    _copy_times_and_mode(source, target)
    for directory, dirnames, _ in os.walk(source, topdown=False):
        rel = os.path.relpath(directory, source)
        for name in dirnames:
            src = Path(directory, name)
            if not src.is_symlink():
                _copy_times_and_mode(src, (target if rel == "." else target / rel) / name)
    return total


def _copy_entry(src: Path, dst: Path, st: os.stat_result) -> int:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        copy_file_data(src, dst)
        _copy_xattrs(src, dst)
        _copy_times_and_mode(src, dst)
        return st.st_size
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISCHR(mode) and st.st_rdev == 0:
        try:
            os.mknod(dst, stat.S_IFCHR | 0o600, 0)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES):
                raise
            (dst.parent / f".wh.{dst.name}").touch()
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    else:
        # Sockets and devices a test created cannot be recreated without privileges, and
        # carry no content: note their presence only.
        with contextlib.suppress(OSError):
            os.mknod(dst, mode, st.st_rdev)
    return 0


def _copy_times_and_mode(src: Path, dst: Path) -> None:
    st = src.lstat()
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_xattrs(src: Path, dst: Path) -> None:
    # Only the overlay's own markers matter to the diff reader (opaque directories).
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError:
            continue
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError:
            if name.startswith("trusted."):
                # Unprivileged copies cannot write trusted xattrs; the user namespace form
                # means the same to our reader.
                with contextlib.suppress(OSError):
                    os.setxattr(dst, "user.overlay.opaque", value, follow_symlinks=False)


def remove_layer_tree(path: Path) -> None:
    """Remove a kept layer, read-only directories included."""
    from ._backends.copytree import remove_tree

    remove_tree(path)
