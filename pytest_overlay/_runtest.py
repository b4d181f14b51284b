"""One test's sandbox from mount to unmount: fixture mode and in-place mode, keeping, reports.

Fixture mode mounts when ``overlay_root`` is set up and unmounts in its finalizer.  In-place
mode (``--overlay``) mounts each sandboxed directory over itself before any fixture of the test
runs and unmounts after the last finalizer, so fixtures, the test and every process they start
see the overlay at the real paths.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import _namespaces
from ._backends import Mount
from ._diff import TreeDiff
from ._errors import ViewLostError, path_too_long
from ._hermetic import carries, extra_passthrough, layout
from ._keep import Record, Store, keep_test
from ._layers import LayerStack
from ._overlay import Overlay
from ._render import count_changes
from ._report import ReportOptions, render_report
from ._safetext import safe_path
from ._session import OverlaySession
from ._settings import make_ignore
from ._storepath import cache_dir_of, store_dir
from ._toolstate import Carried, carry_aside

SECTION = "overlay changes"


@dataclass
class TestState:
    """What a running test holds: its mounts, its phases' outcomes, where it was."""

    mounts: list[Mount]
    backend: str
    overlay: Overlay
    ignore: Callable[[str], bool]
    inplace: bool = False
    # In-place mode: the real directory each mount covers, in the order of ``mounts``.
    targets: tuple[Path, ...] = ()
    phases: dict[str, str] = field(default_factory=dict)
    saved_cwd: str | None = None
    # False when one sandboxed directory holds another (_hermetic.nested): no view goes to
    # the next test.
    reuse: bool = True


def ignore_for(config: pytest.Config, session: OverlaySession, root: Path) -> Callable[[str], bool]:
    """The ignore predicate for a view of *root*: the settings' globs plus our own dirs."""
    cached = session.ignore_cache.get(root)
    if cached is not None:
        return cached
    prefixes = []
    for path in (cache_dir_of(config), session.basetemp):
        if path is not None:
            with contextlib.suppress(ValueError):
                prefixes.append(path.relative_to(root).as_posix())
    ignore = session.ignore_cache[root] = make_ignore(session.settings.ignore, prefixes)
    return ignore


def start_fixture(
    request: pytest.FixtureRequest,
    session: OverlaySession,
    lowers: tuple[Path, ...],
    backend: str | None,
) -> TestState:
    """Mount a view for the ``overlay_root`` fixture (not in-place)."""
    mount = session.mount(lowers, backend, request.node.name)
    name = backend or session.selection.backend.name
    ignore = ignore_for(request.config, session, lowers[0])
    return TestState([mount], name, Overlay(mount, name, ignore), ignore)


def start_in_place(
    item: pytest.Item, session: OverlaySession, layers: tuple[Path, ...] = ()
) -> TestState:
    """Mount every sandboxed directory over itself and move the process into the view."""
    config = item.config
    basetemp = session.basetemp
    assert basetemp is not None, "the in-place fixture sets the basetemp first"
    # The lowers, then the areas of --overlay-hermetic, and how to mount them: _hermetic.py.
    targets, order, reuse = layout(session.settings, session.scratch_dir)
    if session.passthrough is None:
        # Once per session (the same for every test, and a view may stand there meanwhile).
        cache = cache_dir_of(config)
        # Kept layers are written while the view is mounted: the store must be on the real disk.
        store_dir(cache).mkdir(parents=True, exist_ok=True)
        keep_real = [
            cache,
            basetemp,
            *session.settings.passthrough,
            *extra_passthrough(session.settings, targets),
        ]
        session.passthrough = {
            target: tuple(
                p for p in keep_real if p.is_dir() and target in p.parents and p != target
            )
            for target in targets
        }
    backend = session.selection.backend
    views: dict[int, Mount] = {}
    try:
        for index in order:
            target = targets[index]
            # Snapshot layers stack under the first sandboxed directory, the project.
            stack = [*layers, target] if index == 0 else [target]
            passthrough = session.passthrough[target]
            views[index] = session.view(
                backend, stack, label=item.name, target=target, passthrough=passthrough
            )
    except BaseException:
        for mount in reversed(views.values()):
            session.release(mount, reuse=False)
        raise
    mounts = [views[index] for index in range(len(targets))]
    ignore = ignore_for(config, session, targets[0])
    state = TestState(
        mounts,
        backend.name,
        Overlay(mounts[0], backend.name, ignore, lowers=(*layers, targets[0])),
        ignore,
        inplace=True,
        targets=targets,
        reuse=reuse,
    )
    state.saved_cwd = _enter_views(state)
    return state


def _enter_views(state: TestState) -> str | None:
    # The process's working directory still points into the real tree under the mount:
    # resolve it again, into the view (or into the copy, for the copy backend).
    cwd = os.getcwd()
    for mount, target in zip(state.mounts, state.targets, strict=True):
        real = os.fspath(target)
        if cwd == real or cwd.startswith(real + os.sep):
            os.chdir(os.fspath(mount.path) + cwd[len(real) :])
            return cwd
    return None


@dataclass
class Finished:
    """What tearing a test's views down has to tell the user."""

    warnings: list[str] = field(default_factory=list)
    """Something the user must act on (a layer they asked to keep was not kept)."""
    reports: list[str] = field(default_factory=list)
    """Something the plugin dealt with by itself (a busy view detached lazily): the summary."""
    broken: list[str] = field(default_factory=list)
    """Views that could not be closed cleanly: the test errs."""


def finish(item: pytest.Item, session: OverlaySession, state: TestState) -> Finished:
    """Keep the layer if the policy says so, give the views back to the session (which keeps
    an untouched one for the next test and unmounts the others), and go back where the test
    started.

    Every view is closed, and the process goes back to its directory, whatever fails on the
    way: a view that fails to close is listed in :attr:`Finished.broken`.

    :raises ViewLostError: after all of that, if a view stopped working during the test.
    """
    done = Finished()
    kept = False
    try:
        if _should_keep(session.settings.keep, state.phases):
            kept = True
            _keep(item, session, state)
    except Exception as exc:
        done.warnings.append(f"could not keep the test's layer: {_describe(exc)}")
    finally:
        carried = _carry_aside(session, state, done)
        if state.saved_cwd is not None:
            # Leave the views first: a working directory inside one would keep it busy.
            os.chdir("/")
        lost: list[str] = []
        for mount in state.mounts:
            try:
                # An untouched, unheld view goes to the next test as it is (_session.py).
                done.reports.extend(session.release(mount, reuse=state.reuse and not kept))
            except ViewLostError as exc:
                lost.append(str(exc))
            except Exception as exc:
                done.broken.append(f"could not close the view {mount.path}: {_describe(exc)}")
        if state.saved_cwd is not None:
            os.chdir(state.saved_cwd)
        for aside in carried:
            done.warnings.extend(aside.land())
        if lost:
            raise ViewLostError("; ".join(lost))
    return done


def _carry_aside(session: OverlaySession, state: TestState, done: Finished) -> list[Carried]:
    """In place: set aside what the test created at pass-through paths, to land on the disk
    once its views are gone (see :mod:`._toolstate`)."""
    if not state.inplace or session.basetemp is None:
        return []
    settings = session.settings
    carried = []
    for index, (mount, target) in enumerate(zip(state.mounts, state.targets, strict=True)):
        if mount.untouched():
            continue  # an empty upper layer: nothing to carry (the usual case, cheaply)
        globs = settings.carry_files if index == 0 else ()
        if not globs and not carries(settings, target):
            continue  # an area of --overlay-hermetic, usually: nothing can be carried
        scratch = session.basetemp / "overlay" / "carried" / str(index)
        try:
            aside = carry_aside(mount.new_root, target, settings.passthrough, globs, scratch)
        except OSError as exc:
            done.warnings.append(f"could not set aside the tool state it wrote: {_describe(exc)}")
        else:
            carried.append(aside)
    return carried


def _should_keep(policy: str, phases: dict[str, str]) -> bool:
    if policy == "all":
        return True
    return policy == "failed" and "failed" in phases.values()


def outcome(phases: dict[str, str]) -> str:
    """A test's overall outcome as pytest would name it."""
    if phases.get("call") == "failed":
        return "failed"
    if "failed" in (phases.get("setup"), phases.get("teardown")):
        return "error"
    if "skipped" in phases.values():
        return "skipped"
    return "passed"


def _keep(item: pytest.Item, session: OverlaySession, state: TestState) -> Path | None:
    if session.run_id is None:
        return None
    store = Store(store_dir(cache_dir_of(item.config)))
    settings = session.settings
    run_dir = store.ensure_run(
        session.run_id, settings.lowers[0], settings.keep, settings.keep_count
    )
    with _namespaces.privileged():
        diffs = [view.diff(state.ignore) for view in state.mounts]
        diff = diffs[0]
        report = _all_targets_report(state, diffs, ReportOptions(max_lines=None))
        # In place with several sandboxed directories: the others' changes, for --json.
        others = [
            {"target": str(target), "diff": other.to_dict()}
            for target, other in zip(state.targets[1:], diffs[1:], strict=True)
        ]
        record = Record(
            nodeid=item.nodeid,
            outcome=outcome(state.phases),
            phases=dict(state.phases),
            backend=state.backend,
            lowers=[str(p) for p in state.overlay.lowers],
            time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            diff=diff.to_dict(),
            report=report,
            worker=os.environ.get("PYTEST_XDIST_WORKER"),
            extra={"other_targets": others} if others else {},
        )
        return keep_test(run_dir, record, state.mounts[0].export)


def render_changes_report(mount: Mount, diff: TreeDiff, options: ReportOptions) -> str:
    """The failure report of a view: change list, then unified diffs."""
    stack = LayerStack(mount.lowers)

    def old(rel: str) -> Path | None:
        entry = stack.lookup(rel)
        return None if entry is None else entry.real_path

    def new(rel: str) -> Path | None:
        path = mount.new_root / rel
        return path if os.path.lexists(path) else None

    return render_report(diff, old, new, options)


def _all_targets_report(state: TestState, diffs: list[TreeDiff], options: ReportOptions) -> str:
    """The report of every view of the test, given their *diffs*.

    One view (the fixture, or in place with one sandboxed directory): its report as it is.
    In place with several: one block per directory, headed by its path.
    """
    texts = [
        render_changes_report(mount, diff, options) if diff else "(no changes)"
        for mount, diff in zip(state.mounts, diffs, strict=True)
    ]
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(
        f"changes under {safe_path(str(target))}:\n{text}"
        for target, text in zip(state.targets, texts, strict=True)
    )


def failure_section(
    item: pytest.Item,
    state: TestState,
    session: OverlaySession,
    *,
    color: bool,
    encoding: str = "utf-8",
) -> tuple[str, str] | None:
    """The report section that shows a failed test's changes, as pytest's ``--tb`` asks.

    ``--tb=no`` shows none, ``--tb=line`` one line counting the changes, ``--tb=short`` the
    change list alone; each is cut at ``overlay_diff_lines`` (times 5 with ``-v``, whole with
    ``-vv``) and ends with a line counting what was left out.  The text is made encodable in
    *encoding*, the terminal's: pytest writes a section it cannot encode as one line of
    escapes.  What the failure itself means on the test's backend (its ``failure_note``) is
    put before it by the caller.
    """
    style = item.config.getoption("tbstyle", "auto")
    if style == "no":
        return None
    verbosity = item.config.get_verbosity()
    limit: int | None = session.settings.diff_lines
    if limit == 0 or verbosity >= 2:
        limit = None
    elif verbosity == 1 and limit is not None:
        limit *= 5
    hint = f"`pytest-overlay show '{item.nodeid}'`"
    try:
        options = ReportOptions(
            max_lines=limit, color=color, more_hint=hint, details=style != "short"
        )
        with _namespaces.privileged():
            diffs = [mount.diff(state.ignore) for mount in state.mounts]
            if style == "line":
                text = f"{count_changes(diffs)}; {hint} shows them"
            else:
                text = _all_targets_report(state, diffs, options)
    except Exception as exc:
        text = f"(could not compute the changes: {_describe(exc)})"
    return f"{SECTION} ({state.backend})", _encodable(text, encoding)


def _encodable(text: str, encoding: str) -> str:
    """*text* with what *encoding* cannot hold as backslash escapes, its lines kept."""
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: leave it to pytest
        return text


def _describe(exc: Exception) -> str:
    """An exception for a report line: a path beyond PATH_MAX explained, not printed whole."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return (
            f"{path_too_long('view')}, and the diff reaches files by path; inspect the view "
            "while the test runs instead"
        )
    return f"{type(exc).__name__}: {exc}"


def kept_summary(config: pytest.Config, session: OverlaySession) -> str | None:
    """The end-of-run line saying how many layers this run kept, where, and how to look."""
    if session.run_id is None:
        return None
    store = Store(store_dir(cache_dir_of(config)))
    count = sum(
        1 for test_dir in store.test_dirs(session.run_id) if (test_dir / "record.json").exists()
    )
    if not count:
        return None
    where = store.runs_dir / session.run_id
    with contextlib.suppress(ValueError):
        where = where.relative_to(Path.cwd())
    layers = "layer" if count == 1 else "layers"
    return (
        f"kept {count} {layers} in {where}; inspect them with `pytest-overlay list` and "
        "`pytest-overlay show <part of a node id>`"
    )
