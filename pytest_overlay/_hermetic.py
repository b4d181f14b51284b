"""Hermetic in place: more directories sandboxed per test than the project, and where tests wrote.

``--overlay-hermetic=home,tmp`` (ini ``overlay_hermetic``) adds the user's home directory and
the temporary directory to what in-place mode overlays at its real path for every test, the
same way as the project: a view each, pass-through directories bound back on top (pytest's
basetemp and cache, ``overlay_passthrough``, the snapshot layer cache), each view thrown away
or handed to the next test on its own.  ``--overlay-report=writes[:FILE.json]`` lists, at the
end of the run, every test that changed anything in a sandboxed directory (its ``tmp_path`` is
under the pass-through basetemp, so it never counts); ``--overlay-strict`` fails such a test.

This module owns the settings of both, the areas (which directory is which, in which order
they are mounted), and the recording of writes; :mod:`._runtest` mounts what it says.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from ._keys import state_key, strict_flagged_key, writes_key

if TYPE_CHECKING:
    from ._runtest import TestState
    from ._session import OverlaySession

__all__ = [
    "AREA_CHOICES",
    "Hermetic",
    "WritesLog",
    "WritesReporter",
    "add_options",
    "area_labels",
    "extra_passthrough",
    "hermetic_header",
    "in_place_targets",
    "layout",
    "mount_order",
    "nested",
    "on_report",
    "parse",
    "record_writes",
    "scratch_holder",
    "scratch_outside",
    "strict_failure",
]

AREA_CHOICES = ("home", "tmp")
"""What ``--overlay-hermetic`` may add, beside ``all`` (both) and ``none``."""

_PER_TEST_SHOWN = 5  # paths per test in the end-of-run table; the JSON has them all


@dataclass(frozen=True)
class Hermetic:
    """What ``--overlay-hermetic``, ``--overlay-report`` and ``--overlay-strict`` ask for."""

    areas: tuple[tuple[str, Path], ...] = ()
    """The directories sandboxed beside the lowers, by area name, outermost kept only."""
    covered: tuple[tuple[str, Path], ...] = ()
    """Areas asked for that another sandboxed directory already holds (named in the header)."""
    report: bool = False
    report_json: Path | None = None
    strict: bool = False

    @property
    def records(self) -> bool:
        """Whether each test's writes are looked at."""
        return self.report or self.strict


def add_options(option: Any) -> None:
    """Register the options with the settings module's ``option(name, ini_type, ...)``."""
    option(
        "hermetic",
        "string",
        "In place, also sandbox these directories for every test: home, tmp, all or none "
        "(comma-separated; default: none)",
        "",
        metavar="AREAS",
    )
    option(
        "report",
        "string",
        "In place, list every test that wrote outside its tmp_path at the end of the run: "
        "writes, or writes:FILE.json to also write it as JSON",
        "",
        metavar="WHAT",
    )
    option(
        "strict",
        "bool",
        "In place, fail every test that wrote outside its tmp_path",
        False,
        action="store_const",
        const=True,
        default=None,
    )


def _usage(message: str) -> pytest.UsageError:
    return pytest.UsageError(message)


def parse(config: pytest.Config, *, inplace: bool, lowers: Sequence[Path]) -> Hermetic:
    """The settings from the options and ini; a mistake is a usage error naming the fix."""

    def value(name: str) -> Any:
        given = config.getoption(name)
        return config.getini(name) if given is None else given

    names = _area_names(str(value("overlay_hermetic") or ""))
    report, report_json = _report(str(value("overlay_report") or ""), config.invocation_params.dir)
    strict = bool(value("overlay_strict"))
    asked = [
        flag
        for flag, on in (
            ("--overlay-hermetic", names),
            ("--overlay-report", report),
            ("--overlay-strict", strict),
        )
        if on
    ]
    if asked and not inplace:
        raise _usage(
            f"{' and '.join(asked)} (or its overlay_* ini setting) works in in-place mode "
            "only, where every test runs on overlays of the real paths; add --overlay "
            "(or overlay = true), or drop it"
        )
    areas: list[tuple[str, Path]] = []
    covered: list[tuple[str, Path]] = []
    for name in names:
        path = _area_path(name)
        holder = next((p for p in (*lowers, *(a for _, a in areas)) if _within(path, p)), None)
        if holder is not None:
            covered.append((name, path))
            continue
        # An area that holds one asked before it takes its place (the outer view covers both).
        for other in [a for a in areas if _within(a[1], path)]:
            areas.remove(other)
            covered.append(other)
        areas.append((name, path))
    return Hermetic(tuple(areas), tuple(covered), report, report_json, strict)


def _area_names(raw: str) -> tuple[str, ...]:
    words = [w for w in raw.replace(",", " ").split() if w]
    if words in ([], ["none"]):
        return ()
    names: list[str] = []
    for word in words:
        if word == "all":
            names += AREA_CHOICES
        elif word in AREA_CHOICES:
            names.append(word)
        else:
            raise _usage(
                f"--overlay-hermetic / overlay_hermetic: unknown area {word!r}; give "
                f"{', '.join(AREA_CHOICES)}, all or none (comma-separated), and list other "
                "directories in --overlay-lower / overlay_lowers"
            )
    return tuple(dict.fromkeys(names))


def _report(raw: str, base: Path) -> tuple[bool, Path | None]:
    text = raw.strip()
    if not text or text == "none":
        return False, None
    kind, colon, where = text.partition(":")
    if kind != "writes" or (colon and not where):
        raise _usage(
            f"--overlay-report / overlay_report: {text!r} is not a report; give writes "
            "(a table at the end of the run) or writes:FILE.json (and the same as JSON)"
        )
    if not where:
        return True, None
    path = Path(os.path.expanduser(where))
    return True, path if path.is_absolute() else base / path


def _area_path(name: str) -> Path:
    if name == "home":
        raw = os.environ.get("HOME", "")
        fix = (
            "set HOME to an existing directory (a scratch one will do: "
            "HOME=$(mktemp -d) python -m pytest ...), or leave home out of overlay_hermetic"
        )
        what = f"HOME ({raw!r})" if raw else "HOME is not set, so"
    else:
        raw = tempfile.gettempdir()
        fix = "set TMPDIR to an existing directory, or leave tmp out of overlay_hermetic"
        what = f"the temporary directory ({raw!r})"
    path = Path(raw).resolve() if raw else None
    if path is None or not path.is_dir():
        raise _usage(
            f"--overlay-hermetic={name}: {what} is not an existing directory, so there is "
            f"nothing to sandbox there; {fix}"
        )
    if path == Path(path.anchor):
        raise _usage(
            f"--overlay-hermetic={name}: {what} is the root directory, and in-place mode "
            f"cannot overlay the whole filesystem; {fix}"
        )
    return path


def _within(path: Path, holder: Path) -> bool:
    return path == holder or holder in path.parents


class Layout(NamedTuple):
    """How a test's views are set up, the same for every test of the session."""

    targets: tuple[Path, ...]
    """Every directory sandboxed in place: the lowers (the project first), then the areas,
    the one holding the backends' scratch last (views are closed in this order)."""
    order: tuple[int, ...]
    """The indices of :attr:`targets` in the order to mount them (:func:`mount_order`)."""
    reuse: bool
    """Whether views may go to the next test (not :func:`nested`)."""


@functools.lru_cache(maxsize=8)
def layout(settings: Any, scratch: Path | None = None) -> Layout:
    """The :class:`Layout` for *settings* with the backends' *scratch* (computed once: it
    sits on the per-test path, and ``Path.parents`` is slow)."""
    hermetic: Hermetic = settings.hermetic
    areas = [path for _, path in hermetic.areas]
    if scratch is not None:
        areas.sort(key=lambda path: path in scratch.parents)
    targets = (*settings.lowers, *areas)
    if scratch is None:
        return Layout(targets, tuple(range(len(targets))), True)
    holder = scratch_holder(targets, len(settings.lowers), scratch)
    return Layout(targets, tuple(mount_order(targets, holder)), not nested(targets, scratch))


def in_place_targets(settings: Any) -> tuple[Path, ...]:
    """Every directory sandboxed in place (see :attr:`Layout.targets`)."""
    return layout(settings).targets


# Where backends keep their scratch (upper layers, clones of the lowers) when pytest's
# basetemp is inside an area: anywhere not sandboxed, a disk first (the fuse backend's upper
# layers are files there, and an unprivileged overlay before Linux 6.6 cannot keep its upper
# layer on a tmpfs).  mkdtemp makes a private directory in them, so S108 does not apply.
_SCRATCH_CANDIDATES = ("/var/tmp", "/dev/shm", "/run/user/{uid}")  # noqa: S108


def scratch_outside(settings: Any, config: pytest.Config, basetemp: Path) -> Path | None:
    """A scratch directory for the backends outside every sandboxed directory, when the
    basetemp is inside an area (TMPDIR, usually); None to keep it in the basetemp.

    Each view's scratch mounts (its tmpfs, the clones of its lowers) made inside an area's
    view would hang in that view's pass-through bind of the basetemp: they would go with it
    when it is replaced, and it could never be found idle and reused.  Made here, once per
    process, and removed when pytest ends; what killed runs left there goes first
    (:func:`._stale.remove_dead_scratch`).
    """
    targets = in_place_targets(settings)
    if scratch_holder(targets, len(settings.lowers), basetemp) is None:
        return None
    from . import _stale

    for raw in _SCRATCH_CANDIDATES:
        candidate = Path(raw.format(uid=os.getuid()))
        if not candidate.is_dir() or any(_within(candidate, t) for t in targets):
            continue
        _stale.remove_dead_scratch(candidate)  # what runs killed before their end left
        try:
            path, lock = _stale.new_scratch(candidate)
        except OSError:
            continue
        config.add_cleanup(functools.partial(os.close, lock))  # runs last: LIFO
        config.add_cleanup(functools.partial(shutil.rmtree, path, ignore_errors=True))
        return path
    return None


def scratch_holder(targets: Sequence[Path], lowers: int, basetemp: Path) -> int | None:
    """The index of the area whose view holds the backends' scratch, or None.

    Only when :func:`scratch_outside` found no place outside the areas.  Then the holder is
    mounted first and closed last, and no view goes to the next test (:func:`nested`).
    """
    for index in range(lowers, len(targets)):
        if targets[index] in basetemp.parents:
            return index
    return None


def mount_order(targets: Sequence[Path], holder: int | None) -> list[int]:
    """The order to mount *targets* in: the :func:`scratch_holder`, then one that holds
    another first, so that the inner view stands on top (bound back into the outer view as a
    pass-through, see :func:`extra_passthrough`).  Views are closed in the order of
    *targets*, inner first (areas come after the lowers and are never inside one), and the
    holder last (:func:`in_place_targets`)."""
    return sorted(range(len(targets)), key=lambda i: (i != holder, len(targets[i].parts)))


def nested(targets: tuple[Path, ...], scratch: Path) -> bool:
    """Whether one sandboxed directory holds another (the project inside $HOME or /tmp), or
    the backends' scratch (see :func:`scratch_holder`).

    Then no view of the test goes to the next one: a parked inner view stands on the outer
    view (or its scratch hangs in it), and replacing the outer one would take it along.
    """
    if any(target in scratch.parents for target in targets):
        return True
    return any(a != b and a in b.parents for a in targets for b in targets)


def extra_passthrough(settings: Any, targets: Sequence[Path]) -> list[Path]:
    """What stays real inside an area beyond pytest's cache and basetemp: every sandboxed
    directory inside it (its own view goes on top) and the snapshot layer cache."""
    if not settings.hermetic.areas:
        return []
    from ._snapshot.cache import default_layer_root

    layers = settings.layer_dir or default_layer_root(settings.lowers[0])
    return [*targets, layers.parent if settings.layer_dir is None else layers]


def area_labels(settings: Any, targets: Sequence[Path]) -> list[str]:
    """The area of each target, for the report: project, other (more lowers), home, tmp."""
    names = {path: name for name, path in settings.hermetic.areas}
    lowers = settings.lowers
    return [names.get(t, "project" if t == lowers[0] else "other") for t in targets]


def _writes(item: pytest.Item, session: OverlaySession, state: TestState) -> list[dict[str, str]]:
    """What the test changed so far in its sandboxed directories, one entry per path."""
    from . import _namespaces
    from ._diff import ChangeKind
    from ._runtest import ignore_for

    found: list[dict[str, str]] = []
    labels = area_labels(session.settings, state.targets)
    for mount, target, label in zip(state.mounts, state.targets, labels, strict=True):
        if mount.untouched():
            continue  # the usual case: an empty upper layer, one stat and one listdir
        ignore = ignore_for(item.config, session, target)
        with _namespaces.privileged():
            diff = mount.diff(ignore)
        for change in diff:
            if change.kind is ChangeKind.ADDED and _is_parent_of_another(change.path, diff):
                continue  # a directory made on the way to a file: the file says it
            path = target / change.path
            # An area inside another view (TMPDIR inside HOME) still names its writes.
            inner = [name for name, p in session.settings.hermetic.covered if p in path.parents]
            area = inner[-1] if inner and label != "project" else label
            found.append({"area": area, "path": os.fspath(path), "change": change.kind.value})
    return found


def _is_parent_of_another(path: str, changes: Iterable[Any]) -> bool:
    prefix = path + "/"
    return any(c.path.startswith(prefix) for c in changes)


def record_writes(item: pytest.Item, session: OverlaySession, state: TestState) -> None:
    """After the test's last finalizer, before its views close: note where it wrote."""
    try:
        item.stash[writes_key] = _writes(item, session, state)
    except Exception as exc:  # the views must still be closed after this
        problem = f"(could not compute the changes: {type(exc).__name__}: {exc})"
        item.stash[writes_key] = [{"area": "?", "path": problem, "change": "?"}]


def hermetic_header(settings: Any) -> list[str]:
    """The report header's line on the areas and the writes report, if asked for."""
    hermetic: Hermetic = settings.hermetic
    lines = []
    if hermetic.areas or hermetic.covered:
        areas = [f"{name} ({path})" for name, path in hermetic.areas]
        areas += [f"{name} ({path}, inside another)" for name, path in hermetic.covered]
        lines.append(f"overlay: hermetic: {', '.join(areas)} sandboxed too")
    if hermetic.records:
        what = "strict: a test that writes outside its tmp_path fails" if hermetic.strict else ""
        what = what or "every test that writes outside its tmp_path is listed at the end"
        lines.append(f"overlay: writes report: {what}")
    return lines


def strict_failure(
    item: pytest.Item, session: OverlaySession, state: TestState | None, report: pytest.TestReport
) -> None:
    """Attach the test's writes to its teardown report (xdist ships them to the controller),
    and in strict mode turn a passed call (or, for writes of finalizers, the teardown) that
    wrote outside ``tmp_path`` into a failure that names the paths."""
    hermetic: Hermetic = session.settings.hermetic
    if report.when == "teardown":
        writes = item.stash.get(writes_key, [])
        report.overlay_writes = writes  # type: ignore[attr-defined]
        if not hermetic.strict or not writes or item.stash.get(strict_flagged_key, False):
            return
    elif report.when == "call" and hermetic.strict and state is not None:
        if not report.passed:
            item.stash[strict_flagged_key] = True  # failed anyway: no second error in teardown
            return
        writes = _writes(item, session, state)
        if not writes:
            return
        item.stash[strict_flagged_key] = True
    else:
        return
    lines = [f"  {w['area']}: {w['path']} ({w['change']})" for w in writes]
    report.outcome = "failed"
    report.longrepr = (
        "pytest-overlay strict mode (--overlay-strict): the test wrote outside its tmp_path:\n"
        + "\n".join(lines)
        + "\nWrite to tmp_path (or tmp_path_factory), or make the directory a pass-through "
        "directory (overlay_passthrough)."
    )


def on_report(item: pytest.Item, session: OverlaySession, report: pytest.TestReport) -> None:
    """From ``pytest_runtest_makereport``: see :func:`strict_failure`.  Only a strict call
    phase reads the views (past any fake filesystem, see :mod:`._realfs`)."""
    if report.when == "setup" or (report.when == "call" and not session.settings.hermetic.strict):
        return
    from ._realfs import real_filesystem

    state = item.stash.get(state_key, None)
    with real_filesystem():
        strict_failure(
            item, session, state if state is not None and state.inplace else None, report
        )


class WritesReporter:
    """The plugin object that gathers the writes and reports them (not in xdist workers)."""

    def __init__(self, json_path: Path | None) -> None:
        self._json_path = json_path
        self.log = WritesLog()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.log.add(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section("pytest-overlay writes", yellow=bool(self.log.tests))
        for line in self.log.table():
            terminalreporter.write_line(line)
        if self._json_path is not None:
            terminalreporter.write_line(f"written as JSON to {self._json_path}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        # After the test loop, so the last views are gone and the file reaches the disk.
        if self._json_path is not None:
            self.log.write_json(self._json_path)


class WritesLog:
    """The run's writes, gathered from teardown reports (in the xdist controller too)."""

    def __init__(self) -> None:
        self.tests: dict[str, list[dict[str, str]]] = {}

    def add(self, report: pytest.TestReport) -> None:
        writes = getattr(report, "overlay_writes", None)
        if report.when == "teardown" and writes:
            self.tests[report.nodeid] = list(writes)

    def table(self) -> list[str]:
        """The end-of-run table: test, area, path, one row per path (a few per test)."""
        if not self.tests:
            return ["no test wrote outside its tmp_path"]
        count = len(self.tests)
        rows: list[tuple[str, str, str]] = []
        for nodeid in sorted(self.tests):
            writes = self.tests[nodeid]
            for index, write in enumerate(writes[:_PER_TEST_SHOWN]):
                rows.append((nodeid if index == 0 else "", write["area"], write["path"]))
            if len(writes) > _PER_TEST_SHOWN:
                rows.append(("", "", f"... and {len(writes) - _PER_TEST_SHOWN} more"))
        width = max(len("test"), *(len(r[0]) for r in rows))
        tests = "test wrote outside its" if count == 1 else "tests wrote outside their"
        lines = [f"{count} {tests} tmp_path:", f"{'test':<{width}}  area     path"]
        lines += [f"{a:<{width}}  {b:<7}  {c}" for a, b, c in rows]
        return lines

    def write_json(self, path: Path) -> None:
        """The same as JSON: ``{"tests": {nodeid: [{area, path, change}, ...]}}``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "tests": {k: self.tests[k] for k in sorted(self.tests)}}
        path.write_text(json.dumps(data, indent=2) + "\n")
