"""Golden records in a pytest run: read before the test, compare after it, write after its views.

A test marked ``overlay_golden`` has its record read at setup (before an in-place view covers
the tree), its effects rendered and compared at the end of its call (while its view still
stands), and, with ``--overlay-update``, its new record written after teardown, once its
views are gone and nothing but the real directory stands at the record's path.  Each test's
record is its own file, written only by the process that ran the test: xdist workers never
share one.  The format and the comparison are :mod:`._golden`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import _namespaces
from ._choices import GOLDEN_MARKER, RECORDS_DIR
from ._golden import (
    MARKER_SIGNATURE,
    TEXT_LIMIT,
    Digest,
    FileContent,
    Normalisers,
    compare_records,
    format_lines,
    parse_marker,
    record_dir,
    record_name,
    record_path,
    render_record,
    unused_records,
)
from ._keys import (
    golden_modules_key,
    golden_outcome_key,
    golden_test_key,
    golden_tests_key,
    settings_key,
    state_key,
)
from ._names import name_in_module
from ._oscompat import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK
from ._realfs import real_filesystem
from ._safetext import safe_path

if TYPE_CHECKING:
    from ._session import OverlaySession

_OPEN_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC
_CHUNK = 1 << 20


@dataclass
class Outcome:
    """What this run did to the records (a worker's is sent to the controller)."""

    written: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    """Records no collected test claims, as paths relative to where pytest was started."""
    removed: bool = False


@dataclass
class _TestRecord:
    path: Path
    expected: str | None
    normalisers: Normalisers
    new_text: str | None = None


def _outcome(config: pytest.Config) -> Outcome:
    return config.stash.setdefault(golden_outcome_key, Outcome())


def update_command(item: pytest.Item, inplace: bool) -> str:
    """The command that writes this test's record."""
    place = " --overlay" if inplace else ""
    return f"pytest{place} --overlay-update {shlex.quote(item.nodeid)}"


def _shown(path: Path, config: pytest.Config) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(config.invocation_params.dir))
    return str(path)


def setup(item: pytest.Item) -> None:
    """Before the test's fixtures: its normalisers, and its record as the disk has it now."""
    marker = item.get_closest_marker(GOLDEN_MARKER)
    assert marker is not None
    settings = item.config.stash[settings_key]
    roots = {str(item.config.rootpath), *(str(p) for p in settings.lowers)}
    base = Normalisers(
        ignore=settings.golden_ignore,
        replace=settings.golden_replace,
        roots=tuple(sorted(roots)),
        timestamps=settings.golden_timestamps,
    )
    try:
        normalisers = parse_marker(marker.args, dict(marker.kwargs), base)
    except ValueError as exc:
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.{GOLDEN_MARKER}: {exc}\nIt accepts {MARKER_SIGNATURE}.",
            pytrace=False,
        )
    path = record_path(item.path, name_in_module(item.nodeid, item.name))
    expected: str | None = None
    with real_filesystem():
        try:
            expected = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            pass
        except OSError as exc:
            pytest.fail(
                f"cannot read the golden record {_shown(path, item.config)}: {exc}", pytrace=False
            )
    item.stash[golden_test_key] = _TestRecord(path, expected, normalisers)


def _reader(root: Path) -> Callable[[str], FileContent]:
    """The new content of a changed file, read without following a symbolic link."""

    def read(rel: str) -> FileContent:
        try:
            fd = os.open(root / rel, _OPEN_FLAGS)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not a regular file"
            data = file.read(TEXT_LIMIT + 1)
            if len(data) <= TEXT_LIMIT:
                return data
            digest = hashlib.sha256(data)
            size = len(data)
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            return Digest(size, digest.hexdigest())

    return read


def _limit(item: pytest.Item, session: OverlaySession) -> int | None:
    """The failure section's line budget, honouring ``overlay_diff_lines`` and ``-v``."""
    verbosity = item.config.get_verbosity()
    limit: int | None = session.settings.diff_lines
    if limit == 0 or verbosity >= 2:
        return None
    return limit * 5 if verbosity == 1 and limit is not None else limit


def check(item: pytest.Item, session: OverlaySession) -> None:
    """After a passing call: compare what the test did with its record, or stage a rewrite."""

    record = item.stash.get(golden_test_key, None)
    if record is None:
        return
    state = item.stash.get(state_key, None)
    settings = session.settings
    if state is None:
        pytest.fail(
            f"@pytest.mark.{GOLDEN_MARKER} records what a test does to its overlay, and this "
            "test has none: give it the overlay_root fixture, or run with --overlay",
            pytrace=False,
        )
    mount = state.mounts[0]
    views = (str(state.overlay.path), str(mount.path), str(mount.new_root))
    normalisers = replace(record.normalisers, roots=(*record.normalisers.roots, *views))
    command = update_command(item, settings.inplace)
    with real_filesystem(), _namespaces.privileged():
        diff = mount.diff(state.ignore)
        actual = render_record(
            diff, _reader(mount.new_root), normalisers, title=item.nodeid, update_command=command
        )
    shown = _shown(record.path, item.config)
    if record.expected is None:
        if settings.update:
            record.new_text = actual
            return
        lines = format_lines(actual.rstrip("\n").splitlines(), _limit(item, session))
        pytest.fail(
            f"no golden record of what this test does to the tree: {shown} does not exist.\n"
            f"Create it with: {command}\n\nThis run would record:\n" + "\n".join(lines),
            pytrace=False,
        )
    differences = compare_records(record.expected, actual)
    if settings.update:
        if actual != record.expected:
            record.new_text = actual
        return
    if differences is None:
        return
    lines = format_lines(differences, _limit(item, session))
    pytest.fail(
        f"what this test did to the tree differs from its golden record {shown}:\n"
        + "\n".join(lines)
        + f"\n\nIf this run is right, rewrite the record with: {command}",
        pytrace=False,
    )


def write(item: pytest.Item, session: OverlaySession | None) -> None:
    """After teardown, with ``--overlay-update``: write the record the call staged."""
    record = item.stash.get(golden_test_key, None)
    if record is None or record.new_text is None:
        return
    del item.stash[golden_test_key]
    if session is not None and session.settings.inplace:
        # An untouched view parked for the next test may stand over the record's directory.
        for target in session.settings.lowers:
            session.drop_parked(target)
    with real_filesystem():
        try:
            record.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = record.path.with_name(f".{record.path.name}.{os.getpid()}.tmp")
            temporary.write_text(record.new_text, encoding="utf-8")
            os.replace(temporary, record.path)
        except OSError as exc:
            pytest.fail(f"could not write the golden record {record.path}: {exc}", pytrace=False)
    outcome = _outcome(item.config)
    shown = _shown(record.path, item.config)
    (outcome.written if record.expected is None else outcome.rewritten).append(shown)


def _fully_collected(config: pytest.Config, modules: set[Path]) -> set[Path]:
    """The *modules* none of whose tests was left out of collection by a node id argument
    (``pytest tests/test_x.py::test_a`` collects only ``test_a``; ``-k`` and ``-m`` collect
    everything and deselect afterwards)."""
    partial = set()
    for arg in config.args:
        path, sep, _ = str(arg).partition("::")
        if sep:
            partial.add((config.invocation_params.dir / path).resolve())
    return {m for m in modules if m.resolve() not in partial}


def find_unused(config: pytest.Config) -> None:
    """At the end of the session: note the records no collected test claims."""
    modules = config.stash.get(golden_modules_key, set())
    tests = config.stash.get(golden_tests_key, {})
    claimed = {m: {record_name(name) for name in names} for m, names in tests.items()}
    listings: dict[Path, list[str]] = {}
    with real_filesystem():
        for module in _fully_collected(config, modules):
            with contextlib.suppress(OSError):
                listings[module] = os.listdir(record_dir(module))
        # Records of a module that is gone (deleted or renamed), beside one that was collected.
        for directory in {module.parent for module in modules}:
            with contextlib.suppress(OSError):
                for stem in os.listdir(directory / RECORDS_DIR):
                    module = directory / f"{stem}.py"
                    if not module.exists():
                        with contextlib.suppress(OSError):
                            listings[module] = os.listdir(record_dir(module))
    unused = unused_records(listings, claimed)
    _outcome(config).unused = [_shown(p, config) for p in unused]


def worker_output(config: pytest.Config) -> dict[str, object]:
    """What a worker tells the controller."""
    outcome = _outcome(config)
    return {"written": outcome.written, "rewritten": outcome.rewritten, "unused": outcome.unused}


def merge_worker_output(config: pytest.Config, output: dict[str, list[str]]) -> None:
    """The controller's side of :func:`worker_output` (every worker collects the same tests,
    so each reports the same unused records)."""
    outcome = _outcome(config)
    for name in ("written", "rewritten", "unused"):
        mine: list[str] = getattr(outcome, name)
        mine.extend(p for p in output.get(name, ()) if p not in mine)


def remove_unused(config: pytest.Config) -> None:
    """With ``--overlay-update``: remove the unused records, and directories left empty."""
    outcome = _outcome(config)
    if not outcome.unused:
        return
    base = config.invocation_params.dir
    with real_filesystem():
        for shown in outcome.unused:
            path = base / shown
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            for directory in (path.parent, path.parent.parent):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only if empty
    outcome.removed = True


_SHOWN = 10


def _listed(head: str, paths: list[str]) -> list[str]:
    lines = [head, *(f"  {safe_path(p)}" for p in paths[:_SHOWN])]
    if len(paths) > _SHOWN:
        lines.append(f"  ... and {len(paths) - _SHOWN} more")
    return lines


def summary_lines(config: pytest.Config) -> list[str]:
    """The lines of the end-of-run section about golden records."""
    outcome = config.stash.get(golden_outcome_key, None)
    if outcome is None:
        return []
    lines: list[str] = []
    if outcome.written:
        lines += _listed(f"wrote {_records(len(outcome.written))}:", outcome.written)
    if outcome.rewritten:
        lines += _listed(f"rewrote {_records(len(outcome.rewritten))}:", outcome.rewritten)
    if outcome.unused:
        count = _records(len(outcome.unused))
        if outcome.removed:
            head = f"removed {count} that no collected test claims:"
        else:
            head = f"{count} that no collected test claims; --overlay-update removes them:"
        lines += _listed(head, outcome.unused)
    return lines


def _records(count: int) -> str:
    return f"{count} golden record" if count == 1 else f"{count} golden records"
