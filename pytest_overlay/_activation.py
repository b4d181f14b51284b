"""The plugin once it is in use: the session, the user namespace, the header and the fixtures.

:mod:`pytest_overlay.plugin` imports this module only when a test or an option asks for an
overlay, so that merely installing pytest-overlay costs a project nothing.  Everything here
may probe the machine, fork, mount and import the backends.
"""

from __future__ import annotations

import errno
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _contain, _namespaces
from ._backends import Backend
from ._backends.inplace import in_place_impossible
from ._errors import BackendUnavailableError, OverlayError, ViewLostError, path_too_long
from ._hermetic import hermetic_header, in_place_targets, record_writes, scratch_outside
from ._keys import registry_key, reports_key, session_key, state_key
from ._namespaces import EARLY, LAZY, XDIST_WORKER, threads_reason
from ._overlay import Overlay
from ._probe import explain_userns_failure
from ._realfs import real_filesystem
from ._registry import AUTO, BackendRegistry
from ._runtest import (
    TestState,
    failure_section,
    finish,
    kept_summary,
    start_fixture,
    start_in_place,
)
from ._session import OverlaySession
from ._settings import MarkerChoices, Settings, parse_marker
from ._snapshot.factory import LayerFactory, resolve_layers
from ._stale import remove_stale_mounts, temp_root
from ._warnings import OverlayWarning


def activate(config: pytest.Config, settings: Settings, run_id: str) -> OverlaySession:
    """Bring the plugin into use: the session exists from here on (it probes on first need)."""
    session = config.stash.get(session_key, None)
    if session is not None:
        return session
    inherited = getattr(config, "workerinput", {}).get("pytest_overlay") or {}
    # A worker takes the controller's backend only if the controller chose one.
    decided = inherited if "backend" in inherited else None
    session = OverlaySession(settings, config.stash[registry_key], decided)
    session.run_id = run_id
    config.stash[session_key] = session
    if not hasattr(config, "workerinput"):  # the controller's run removes them for all
        # Before any private mount namespace: a mount left on the host is removed there.
        removed = remove_stale_mounts(temp_root(config.option.basetemp))
        if removed is not None:
            session.notices.append(removed)
    return session


def configure_asked(config: pytest.Config, session: OverlaySession) -> None:
    """An option asked for the plugin: choose the backend now, so a mistake stops the run."""
    inherited = getattr(config, "workerinput", {}).get("pytest_overlay") or {}
    if hasattr(config, "workerinput"):
        if inherited.get("userns"):
            # The controller handed us its capabilities; keep them for mounting only.
            _namespaces.drop_inherited_capabilities()
        return
    if session.settings.backend != "auto" or session.settings.inplace:
        try:
            session.selection  # noqa: B018 - asking explicitly must fail now, not in a test
        except BackendUnavailableError as exc:
            raise pytest.UsageError(str(exc)) from None
    controller = is_xdist_controller(config)
    early = session.settings.userns == "early" or session.settings.inplace
    if session.wants_user_namespace() and (controller or early):
        # xdist workers are multi-threaded from birth and can never enter a user namespace,
        # so the controller enters it and passes its capabilities on as ambient ones.  A
        # lazy run enters it only once a collected test needs an overlay.
        _enter_user_namespace(session, for_children=controller, where=LAZY)


def enter_before_conftests(
    early_config: pytest.Config, registry: BackendRegistry, requested: str, *, inplace: bool
) -> None:
    """In place (or ``overlay_userns = early``), enter the user namespace before conftests,
    if the backend *requested* (or the first ``auto`` tries) needs one.

    A conftest may import a library that starts threads, after which the process can never
    enter a user namespace; in place that would leave no backend that keeps tests' writes off
    the real tree, so the namespace is entered before any conftest is imported.
    """
    if _namespaces.is_real_root() or _namespaces.entered_user_namespace():
        return
    backend = _first_choice(registry, requested, inplace=inplace)
    if backend is None or not backend.user_namespace:
        return
    unavailable = backend.unavailable_reason()
    if unavailable is not None:
        if inplace:
            raise pytest.UsageError(in_place_impossible(_not_in_place(registry, unavailable)))
        return  # the selection falls back and says why
    threads = _namespaces.thread_count()
    if threads > 1:
        if inplace:
            reason = threads_reason(threads, EARLY)
            raise pytest.UsageError(in_place_impossible(_not_in_place(registry, reason)))
        return
    options = early_config.known_args_namespace
    controller = bool(getattr(options, "numprocesses", None)) or (
        getattr(options, "dist", "no") not in ("no", None)
    )
    try:
        _namespaces.enter_user_namespace(for_children=controller)
    except OSError as exc:
        if inplace:
            reason = explain_userns_failure("entering the user namespace", exc.errno or 0)
            raise pytest.UsageError(in_place_impossible(_not_in_place(registry, reason))) from None


def _no_scratch() -> Path:
    raise RuntimeError("pytest-overlay: a backend asked for its scratch directory before tests")


def _first_choice(registry: BackendRegistry, requested: str, *, inplace: bool) -> Backend | None:
    """The backend asked for by name, or the first that ``auto`` tries; None if unknown."""
    if requested != AUTO:
        return registry.create(requested, _no_scratch) if requested in registry else None
    return next(_candidates(registry, inplace=inplace), None)


def _candidates(registry: BackendRegistry, *, inplace: bool) -> Iterator[Backend]:
    for name in registry:
        backend = registry.create(name, _no_scratch)
        if backend.auto and (backend.in_place or not inplace):
            yield backend


def _not_in_place(registry: BackendRegistry, userns_reason: str) -> list[tuple[str, str]]:
    """What the in-place error lists when the user namespace cannot be entered: the backend
    that needs it, with *userns_reason*, and why each other one cannot run in place here."""
    passed_over = []
    for backend in _candidates(registry, inplace=True):
        reason = userns_reason if backend.user_namespace else None
        reason = reason or backend.in_place_refusal(explicit=False)
        if reason is not None:
            passed_over.append((backend.name, reason))
    return passed_over


def _enter_user_namespace(session: OverlaySession, *, for_children: bool, where: str) -> None:
    if where == LAZY and (session.settings.inplace or session.settings.userns == "early"):
        where = EARLY
    threads = _namespaces.thread_count()
    if where == XDIST_WORKER or threads > 1:
        reason = threads_reason(threads, where)
    else:
        try:
            _namespaces.enter_user_namespace(for_children=for_children)
            return
        except OSError as exc:
            reason = explain_userns_failure("entering the user namespace", exc.errno or 0)
    if session.settings.inplace:
        raise pytest.UsageError(in_place_impossible(_not_in_place(session.registry, reason)))
    # Not a warning: under ``filterwarnings = error`` a warning raised from a hook aborts the
    # whole run, and falling back is exactly what keeps the run going.
    session.notices.append(session.give_up_user_namespace(reason))


def is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests out to pytest-xdist workers."""
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


def enter_for_tests(config: pytest.Config, session: OverlaySession) -> None:
    """A collected test uses an overlay: enter the user namespace now, if the kernel needs it.

    The last moment before tests (or the plugins around them) start threads.
    """
    if not session.wants_user_namespace():
        return
    worker = hasattr(config, "workerinput")
    _enter_user_namespace(session, for_children=False, where=XDIST_WORKER if worker else LAZY)


def header_lines(session: OverlaySession) -> list[str]:
    """The report header: the backend, why, and what in-place mode sandboxes."""
    try:
        lines = [session.selection.header()]
    except BackendUnavailableError as exc:
        return [f"overlay: no backend: {exc}"]
    if session.settings.inplace:
        where = ", ".join(str(p) for p in session.settings.lowers)
        lines.append(f"overlay: in-place mode: {where} is sandboxed for every test")
        lines.extend(hermetic_header(session.settings))
    return lines


def header_to_summary(session: OverlaySession) -> None:
    """An xdist worker's header is never shown: its lines go in the summary instead.

    They say why the kernel was passed over, so the notice of a fallback in this worker,
    which says the same, goes (issue 21: the reason was printed twice).
    """
    header = header_lines(session)
    name, reason = session.unusable or ("", "")
    if reason and any(f"{name} not used: {reason}" in line for line in header):
        session.notices[:] = [n for n in session.notices if not n.endswith(f": {reason}")]
    session.notices.extend(line for line in header if line not in session.notices)


def xdist_worker_input(session: OverlaySession | None) -> dict[str, Any]:
    """What a worker inherits of the controller's decision (nothing, if it made none)."""
    if session is None:
        return {}
    try:
        selection = session.selection
    except BackendUnavailableError:
        return {}
    return {
        "backend": selection.backend.name,
        "passed_over": [list(item) for item in selection.passed_over],
        "userns": _namespaces.entered_user_namespace(),
    }


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
    problem = _uncover_all(item, session, in_place_targets(session.settings))
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
    session.set_basetemp(basetemp)
    choices = marker_choices(request.node)
    lowers = choices.lowers_for(session.settings, request.config.rootpath)
    if choices.layers:
        lowers = resolve_layers(request, list(choices.layers)) + lowers
    try:
        return start_fixture(request, session, lowers, choices.backend)
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


def failure_report(
    item: pytest.Item, session: OverlaySession, when: str, outcome: str, error: BaseException | None
) -> tuple[str, str] | None:
    """Record a phase's outcome; for a failed setup or call, the section of its changes."""
    state = item.stash.get(state_key, None)
    if state is None:
        return None
    state.phases[when] = outcome
    if outcome != "failed" or when not in ("setup", "call"):
        return None
    section = failure_section(item, state, session, color=_color(item), encoding=_encoding(item))
    if section is None:
        return None
    title, text = section
    backend = session.created(state.backend)
    note = backend.failure_note(error) if backend is not None else ""
    return title, f"{note}\n\n{text}" if note else text


def _color(item: pytest.Item) -> bool:
    inherited = getattr(item.config, "workerinput", {}).get("pytest_overlay")
    if inherited is not None and "color" in inherited:
        return bool(inherited["color"])
    return item.config.get_terminal_writer().hasmarkup


def terminal_encoding(config: pytest.Config) -> str:
    """The encoding pytest writes its report in (its terminal writer's file's)."""
    # TerminalWriter has no public attribute for it; its file is sys.stdout as pytest found it.
    file = getattr(config.get_terminal_writer(), "_file", None)
    return getattr(file, "encoding", None) or "utf-8"


def _encoding(item: pytest.Item) -> str:
    inherited = getattr(item.config, "workerinput", {}).get("pytest_overlay")
    if inherited is not None and "encoding" in inherited:
        return str(inherited["encoding"])
    return terminal_encoding(item.config)


def summary_lines(config: pytest.Config, session: OverlaySession) -> list[str]:
    """The pytest-overlay section at the end: notices, then what was kept."""
    lines = list(session.notices)
    kept = kept_summary(config, session)
    if kept:
        lines.append(kept)
    return lines
