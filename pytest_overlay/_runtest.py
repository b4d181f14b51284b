"""One test's sandbox from mount to unmount: the ``overlay_root`` fixture's body and in-place
mode's setup and teardown, keeping its layer, and what the user is told when a view does not
come down cleanly.

Fixture mode mounts when ``overlay_root`` is set up and unmounts in its finalizer.  In-place
mode (``--overlay``) mounts each sandboxed directory over itself before any fixture of the test
runs and unmounts after the last finalizer, so fixtures, the test and every process they start
see the overlay at the real paths.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import _contain, _namespaces
from ._backends import Mount, working_directory_left
from ._errors import (
    BackendUnavailableError,
    OverlayError,
    ViewLostError,
    path_too_long,
)
from ._hermetic import (
    extra_passthrough,
    in_place_targets,
    layout,
    record_writes,
    scratch_outside,
)
from ._keep import Record, Store, keep_test
from ._keys import registry_key, reports_key, state_key
from ._overlay import Overlay
from ._realfs import real_filesystem
from ._render import ReportOptions
from ._session import OverlaySession
from ._settings import MarkerChoices, make_ignore, parse_marker
from ._snapshot.factory import LayerFactory, resolve_layers
from ._storepath import cache_dir_of, make_store
from ._testreport import all_targets_report, describe_error
from ._toolstate import Carried, carry_aside
from ._warnings import OverlayWarning


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
    # The view (its index) that the working directory entered, if not a pass-through there.
    entered: int | None = None
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


def start_in_place(
    item: pytest.Item, session: OverlaySession, layers: tuple[Path, ...] = ()
) -> TestState:
    """Mount every sandboxed directory over itself and move the process into the view."""
    config = item.config
    basetemp = session.basetemp
    assert basetemp is not None, "the in-place fixture sets the basetemp first"
    # The lowers, then the areas of --overlay-hermetic, and how to mount them: _hermetic.py.
    placed = session.layout
    if placed is None:
        # Once: the lookup in layout's cache hashes the whole of the settings.
        placed = session.layout = layout(session.settings, session.scratch_dir)
    targets, order, reuse = placed
    if session.passthrough is None:
        # Once per session (the same for every test, and a view may stand there meanwhile).
        _plan_real_paths(config, session, basetemp, targets)
        assert session.passthrough is not None
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
    state.saved_cwd, state.entered = _enter_views(state, session.passthrough)
    return state


def _plan_real_paths(
    config: pytest.Config, session: OverlaySession, basetemp: Path, targets: tuple[Path, ...]
) -> None:
    """What of the sandboxed directories reaches the disk, for the whole session: the
    pass-through directories bound into each view, the paths whose writes are carried to the
    disk after each test, and the kept-layer store, reached through a descriptor."""
    settings = session.settings
    cache = cache_dir_of(config)
    store = make_store(config)
    bound = [basetemp, *settings.passthrough, *extra_passthrough(settings, targets)]
    # pytest's cache is carried, not bound: pytest writes it at the end of the session, after
    # the last view, and a bound directory costs every test two mount moves in its busy
    # check.  What a test writes there (config.cache.set) is copied to the disk after it.
    carried = [*settings.passthrough, *settings.carried]
    if cache not in settings.passthrough:
        carried.append(cache)

    def inside(paths: list[Path], target: Path) -> tuple[Path, ...]:
        return tuple(p for p in paths if target in p.parents)

    session.passthrough = {
        target: tuple(p for p in inside(bound, target) if p.is_dir()) for target in targets
    }
    session.carried = {target: inside(carried, target) for target in targets}
    if any(target in store.parents for target in targets):
        # Kept layers are written while a view stands over the store.
        session.hold_store(store)


def _enter_views(
    state: TestState, passthrough: dict[Path, tuple[Path, ...]]
) -> tuple[str | None, int | None]:
    """Move the working directory into the views; returns where it was (if under a
    sandboxed directory), and the index of the view it is now in, unless it is in a
    pass-through directory there."""
    # The process's working directory still points into the real tree under the mount:
    # resolve it again, into the view (or into the copy, for the copy backend).
    cwd = os.getcwd()
    for index, (mount, target) in enumerate(zip(state.mounts, state.targets, strict=True)):
        real = os.fspath(target)
        if cwd == real or cwd.startswith(real + os.sep):
            os.chdir(os.fspath(mount.path) + cwd[len(real) :])
            bound = (os.fspath(p) for p in passthrough.get(target, ()))
            if any(cwd == p or cwd.startswith(p + os.sep) for p in bound):
                return cwd, None
            return cwd, index
    return None, None


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
        problem = session.real_path(describe_error(exc))
        done.warnings.append(f"could not keep the test's layer: {problem}")
    finally:
        if state.saved_cwd is not None:
            # Leave the views first: a working directory inside one would keep it busy.
            os.chdir("/")
            if state.entered is not None:
                working_directory_left(state.mounts[state.entered])
        lost: list[str] = []
        carried: list[Carried] = []
        for index, mount in enumerate(state.mounts):
            # In place, before a view is closed: what the test wrote at pass-through paths.
            carry = (
                functools.partial(_carry_aside, session, state, index, done, carried)
                if state.inplace
                else None
            )
            try:
                # An untouched, unheld view goes to the next test as it is (_session.py).
                reuse = state.reuse and not kept
                done.reports.extend(session.release(mount, reuse=reuse, closing=carry))
            except ViewLostError as exc:
                lost.append(str(exc))
            except Exception as exc:
                done.broken.append(f"could not close the view {mount.path}: {describe_error(exc)}")
        if state.saved_cwd is not None:
            os.chdir(state.saved_cwd)
        for aside in carried:
            done.warnings.extend(aside.land())
        if lost:
            raise ViewLostError("; ".join(lost))
    return done


def _carry_aside(
    session: OverlaySession, state: TestState, index: int, done: Finished, carried: list[Carried]
) -> None:
    """In place, right before the test's view *index* is closed: set aside what the test
    created at pass-through paths, to land on the disk once its views are gone (see
    :mod:`._toolstate`).  Not for a view parked for the next test: nothing changed in it, as
    its check said (which spares every test that writes nothing one inotify read here)."""
    mount, target = state.mounts[index], state.targets[index]
    if session.basetemp is None or session.carried is None or mount.untouched():
        return  # an empty upper layer (a view still in use): nothing to carry
    globs = session.settings.carry_files if index == 0 else ()
    paths = session.carried[target]
    if not globs and not paths:
        return  # an area of --overlay-hermetic, usually: nothing can be carried
    scratch = Path(f"{session.basetemp}/overlay/carried/{index}")  # one Path, not four
    try:
        carried.append(carry_aside(mount.new_root, target, paths, globs, scratch))
    except OSError as exc:
        done.warnings.append(f"could not set aside the tool state it wrote: {describe_error(exc)}")


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
    # In place, through the descriptor held: the view over the store is not the disk.
    store = Store(session.real_store or make_store(item.config))
    settings = session.settings
    run_dir = store.ensure_run(
        session.run_id, settings.lowers[0], settings.keep, settings.keep_count
    )
    with _namespaces.privileged():
        diffs = [view.diff(state.ignore) for view in state.mounts]
        diff = diffs[0]
        report = all_targets_report(state, diffs, ReportOptions(max_lines=None))
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


def in_place_setup(
    item: pytest.Item,
    session: OverlaySession,
    basetemp: Path,
    request: pytest.FixtureRequest | None = None,
) -> None:
    """Sandbox the project for one ``--overlay`` test (see ``plugin._sandbox_in_place``);
    *request*, that of ``plugin._overlay_in_place``, builds the test's snapshot layers."""
    scratch = functools.partial(scratch_outside, session.settings, item.config)
    session.set_basetemp(basetemp, scratch)
    layers: tuple[Path, ...] = ()
    if request is not None:  # only a test whose marker asks for layers has the fixture
        layers = resolve_layers(request, list(marker_choices(item).layers))
    # Between two tests only pytest's own hooks run: what the last teardown found (nothing
    # unexpected over a sandboxed directory) still holds.  Else look, and clear the way.
    problem = None
    if not session.contained:
        problem = _uncover_all(item, session, in_place_targets(session.settings))
    session.contained = False
    if problem:
        _contain.stop(item, f"pytest-overlay stopped the run: {problem}")
        pytest.fail(
            f"pytest-overlay could not sandbox the project in place: {problem}", pytrace=False
        )
    try:
        state = start_in_place(item, session, layers)
    except (OverlayError, OSError) as exc:
        problem = f"pytest-overlay could not sandbox the project in place: {exc}"
        _contain.SetupFailures.failed(item, str(exc))
        # A view mounted half-way is detached now rather than at the next setup.
        _uncover_all(item, session, in_place_targets(session.settings))
        pytest.fail(problem, pytrace=False)
    _contain.SetupFailures.passed(item)
    item.stash[state_key] = state


def _uncover_all(
    item: pytest.Item, session: OverlaySession, targets: tuple[Path, ...]
) -> str | None:
    """Detach what still covers a sandboxed directory; None, or why it cannot be done."""
    for target in _contain.covered(item.config, targets, session.standing()):
        session.drop_parked(target)
        problem = _contain.uncover(item.config, target)
        if problem is not None:
            return problem
    return None


def in_place_teardown(item: pytest.Item, session: OverlaySession, *, failed: bool) -> None:
    """After the last finalizer of an in-place test: unmount, keep, warn."""
    state = item.stash.get(state_key, None)
    if state is None or not state.inplace:
        return
    if failed:
        # Known before the report exists: lets a teardown-only failure keep its layer.
        state.phases["teardown"] = "failed"
    del item.stash[state_key]
    with real_filesystem():
        if session.settings.hermetic.records:
            record_writes(item, session, state)
        _finish_or_fail(item, session, state)


def _finish_or_fail(item: pytest.Item, session: OverlaySession, state: TestState) -> None:
    """Tear the test's views down; report what the plugin dealt with, warn about what the
    user must act on, and fail the test if a view was lost or could not be closed."""
    try:
        done = finish(item, session, state)
    except ViewLostError as exc:
        _contain_teardown(item, session, state, [])
        pytest.fail(f"pytest-overlay: {exc}", pytrace=False)
    for message in done.reports:
        _report(item, session, message)
    _contain_teardown(item, session, state, done.broken)
    if not done.warnings:
        return  # the usual case: reportinfo below costs a tenth of a millisecond
    path, lineno, _ = item.reportinfo()
    as_error = ""
    for message in done.warnings:
        # Attributed to the test, so that ``filterwarnings`` and the warnings summary point
        # at the test that left something behind rather than at this module.
        try:
            warnings.warn_explicit(
                OverlayWarning(f"{item.nodeid}: {message}"),
                OverlayWarning,
                filename=str(path),
                lineno=(lineno or 0) + 1,
                module=getattr(getattr(item, "module", None), "__name__", None),
            )
        except OverlayWarning as exc:
            as_error = as_error or str(exc)
    if as_error:
        # ``filterwarnings = error``: the test errs, in one line rather than our frames.
        pytest.fail(f"OverlayWarning (an error under filterwarnings): {as_error}", pytrace=False)


def _contain_teardown(
    item: pytest.Item, session: OverlaySession, state: TestState, broken: list[str]
) -> None:
    """Fail this test (alone) if its views did not come down cleanly, after making sure that
    none is left over a sandboxed directory (but the untouched view parked there for the next
    test); stop the run if one cannot be removed."""
    problems = list(broken)
    if state.inplace:
        for target in _contain.covered(item.config, state.targets, session.standing()):
            session.drop_parked(target)
            left = _contain.uncover(item.config, target)
            if left is not None:
                _contain.stop(item, f"pytest-overlay stopped the run: {left}")
                problems.append(left)
            else:
                problems.append(
                    f"{target} was still covered by a mount after the test's view "
                    "was closed (one the test made?); it was detached"
                )
    if problems:
        fresh = "" if item.session.shouldfail else "; the next test gets a fresh view"
        pytest.fail(f"pytest-overlay: {'; '.join(problems)}{fresh}", pytrace=False)
    session.contained = state.inplace


_REPORTS_SHOWN = 10


def _report(item: pytest.Item, session: OverlaySession, message: str) -> None:
    """A line for the terminal summary: what a test left behind that the plugin dealt with.

    Not a warning: ``filterwarnings = error`` would turn it into an error of the test, though
    there is nothing to act on.  The first few are shown in full, the rest counted.
    """
    count = item.config.stash.setdefault(reports_key, [0])
    count[0] += 1
    if count[0] <= _REPORTS_SHOWN:
        session.notices.append(f"{item.nodeid}: {message}")
        return
    tail = " more tests left their view in use, or their scratch directory behind"
    session.notices[:] = [n for n in session.notices if not n.endswith(tail)]
    session.notices.append(f"... and {count[0] - _REPORTS_SHOWN}{tail}")


def overlay_root_fixture(
    request: pytest.FixtureRequest, session: OverlaySession, basetemp: Path
) -> Iterator[Overlay]:
    """The body of the ``overlay_root`` fixture (see its docstring in the plugin)."""
    existing = request.node.stash.get(state_key, None)
    if existing is not None:
        yield existing.overlay
        return
    with real_filesystem():
        state = _start_fixture_or_fail(request, session, basetemp)
    request.node.stash[state_key] = state
    try:
        yield state.overlay
    finally:
        del request.node.stash[state_key]
        with real_filesystem():
            _finish_or_fail(request.node, session, state)


def _start_fixture_or_fail(
    request: pytest.FixtureRequest, session: OverlaySession, basetemp: Path
) -> TestState:
    """Mount the ``overlay_root`` fixture's view (not in place): over the marker's lowers and
    layers, or the settings', with the marker's backend or the session's; a view the last test
    left untouched is reused (:meth:`OverlaySession.view`).  What fails fails the test."""
    session.set_basetemp(basetemp)
    choices = marker_choices(request.node)
    lowers = choices.lowers_for(session.settings, request.config.rootpath)
    if choices.layers:
        lowers = resolve_layers(request, list(choices.layers)) + lowers
    try:
        backend = session.backend(choices.backend)
        mount = session.view(backend, lowers, label=request.node.name)
        ignore = ignore_for(request.config, session, lowers[0])
        return TestState([mount], backend.name, Overlay(mount, backend.name, ignore), ignore)
    except BackendUnavailableError as exc:
        problem = f"pytest-overlay: {exc}"
    except OSError as exc:
        problem = f"pytest-overlay could not set up the overlay: {_setup_problem(exc)}"
    except OverlayError as exc:
        problem = f"pytest-overlay could not set up the overlay: {exc}"
    pytest.fail(problem, pytrace=False)


def layer_factory(config: pytest.Config, session: OverlaySession, basetemp: Path) -> LayerFactory:
    """The body of the ``overlay_layer`` fixture."""
    session.set_basetemp(basetemp)
    return LayerFactory(config, session)


def marker_choices(item: pytest.Item) -> MarkerChoices:
    """The closest ``overlay`` marker's choices, validated at collection already."""
    marker = item.get_closest_marker("overlay")
    if marker is None:
        return MarkerChoices()
    return parse_marker(marker.args, dict(marker.kwargs), item.config.stash[registry_key].choices)


def _setup_problem(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        # Only the copy backend walks the tree at setup; the mounts do not.
        return (
            f"{path_too_long('tree')}, and the copy backend copies the tree by path. Use "
            "--overlay-backend=kernel, which mounts the tree without copying it, or leave that "
            "directory out of the lower layers (--overlay-lower)"
        )
    return str(exc)
