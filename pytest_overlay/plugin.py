"""The pytest plugin: configuration, the ``overlay_root`` fixture, in-place mode, reports."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _namespaces
from ._backends.inplace import in_place_impossible
from ._errors import BackendUnavailableError, OverlayError, ViewLostError
from ._keep import new_run_id
from ._layerfix import LayerFactory, resolve_layers
from ._overlay import Overlay
from ._probe import explain_userns_failure, probe_kernel
from ._runtest import (
    TestState,
    failure_section,
    finish,
    kept_summary,
    start_fixture,
    start_in_place,
    state_key,
)
from ._session import OverlaySession
from ._settings import Settings, add_options, check_backend_name, resolve_lowers
from ._warnings import OverlayWarning

session_key = pytest.StashKey[OverlaySession]()

FIXTURE_NAME = "overlay_root"
IN_PLACE_FIXTURE = "_overlay_in_place"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """In place (or ``overlay_userns = early``), enter the user namespace before conftests.

    A conftest may import a library that starts threads, after which the process can never
    enter a user namespace; in place that would leave no backend that keeps tests' writes off
    the real tree, so the namespace is entered before any conftest is imported.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or hasattr(early_config, "workerinput"):
        return  # workers inherit the controller's namespace
    options = early_config.known_args_namespace

    def value(name: str) -> Any:
        given = getattr(options, name, None)
        return early_config.getini(name) if given is None else given

    inplace = bool(value("overlay"))
    early = str(value("overlay_userns") or "").strip() == "early"
    backend = str(value("overlay_backend") or "auto").strip()
    if not (inplace or early) or backend not in ("auto", "kernel"):
        return
    if _namespaces.is_real_root() or _namespaces.entered_user_namespace():
        return
    probe = probe_kernel()
    if not probe.ok:
        if inplace:
            raise pytest.UsageError(in_place_impossible(_not_in_place("kernel", probe.reason)))
        return  # the selection falls back and says why
    threads = _namespaces.thread_count()
    if threads > 1:
        if inplace:
            reason = _threads_reason(threads, hint_early=False)
            raise pytest.UsageError(in_place_impossible(_not_in_place("kernel", reason)))
        return
    controller = bool(getattr(options, "numprocesses", None)) or (
        getattr(options, "dist", "no") not in ("no", None)
    )
    try:
        _namespaces.enter_user_namespace(for_children=controller)
    except OSError as exc:
        if inplace:
            reason = explain_userns_failure("entering the user namespace", exc.errno or 0)
            raise pytest.UsageError(in_place_impossible(_not_in_place("kernel", reason))) from None


def _not_in_place(name: str, reason: str) -> tuple[tuple[str, str], ...]:
    return ((name, reason), ("fuse", "in place, FUSE needs root (a private mount namespace)"))


def _threads_reason(threads: int, *, hint_early: bool) -> str:
    """Why a multi-threaded process cannot enter a user namespace, and what helps."""
    reason = (
        f"this process already runs {threads} threads, and only a single-threaded process may "
        "enter a user namespace"
    )
    if hint_early:
        return reason + (
            " (a library imported by a conftest or by the tests, such as NumPy's OpenBLAS, "
            "starts them); set overlay_userns = early (or --overlay-userns=early) to enter it "
            "before anything is imported, or limit the library's threads "
            "(OPENBLAS_NUM_THREADS=1), or run as root"
        )
    return reason + (
        " (a plugin loaded before pytest-overlay, or sitecustomize, started them, before any "
        "conftest was imported); disable that plugin with -p no:NAME, or run as root"
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "overlay(lowers=None, backend=None, layers=None): lower directories, backend and "
        "snapshot layers (names of fixtures returning overlay_layer(...)) for this test",
    )
    inherited = getattr(config, "workerinput", {}).get("pytest_overlay")
    session = OverlaySession(Settings.from_config(config), inherited)
    config.stash[session_key] = session
    if inherited is not None:
        if inherited.get("userns"):
            # The controller handed us its capabilities; keep them for mounting only.
            _namespaces.drop_inherited_capabilities()
        return
    session.run_id = new_run_id()
    if session.settings.backend != "auto" or session.settings.inplace:
        try:
            session.selection  # noqa: B018 - asking explicitly must fail now, not in a test
        except BackendUnavailableError as exc:
            raise pytest.UsageError(str(exc)) from None
    controller = _is_xdist_controller(config)
    early = session.settings.userns == "early" or session.settings.inplace
    if session.wants_user_namespace() and (controller or early):
        # xdist workers are multi-threaded from birth and can never enter a user namespace,
        # so the controller enters it and passes its capabilities on as ambient ones.
        _enter_user_namespace(session, for_children=controller)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(session), "overlay-xdist")


def _enter_user_namespace(
    session: OverlaySession, *, for_children: bool, reporter: pytest.TerminalReporter | None = None
) -> None:
    threads = _namespaces.thread_count()
    if threads > 1:
        reason = _threads_reason(threads, hint_early=session.settings.userns != "early")
    else:
        try:
            _namespaces.enter_user_namespace(for_children=for_children)
            return
        except OSError as exc:
            reason = explain_userns_failure("entering the user namespace", exc.errno or 0)
    if session.settings.inplace:
        raise pytest.UsageError(in_place_impossible(_not_in_place("kernel", reason)))
    # Not a warning: under ``filterwarnings = error`` a warning raised from a hook aborts the
    # whole run, and falling back is exactly what keeps the run going.
    notice = session.give_up_kernel(reason)
    session.notices.append(notice)
    if reporter is not None:
        reporter.write_line(f"overlay: {notice}", yellow=True, bold=True)


def _is_xdist_controller(config: pytest.Config) -> bool:
    return getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")


class _XdistHooks:
    """Registered only when xdist is loaded, so its hook names are known."""

    def __init__(self, session: OverlaySession) -> None:
        self._session = session

    def pytest_configure_node(self, node: Any) -> None:
        try:
            selection = self._session.selection
        except BackendUnavailableError:
            return
        node.workerinput["pytest_overlay"] = {
            "backend": selection.backend.name,
            "passed_over": [list(item) for item in selection.passed_over],
            "userns": _namespaces.entered_user_namespace(),
            "run_id": self._session.run_id,
            "color": node.config.get_terminal_writer().hasmarkup,
        }

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        # A worker's notices (a layer build that failed there, say) belong in the one
        # summary the user sees, once each.
        output = getattr(node, "workeroutput", None) or {}
        for notice in output.get(WORKER_NOTICES, ()):
            if notice not in self._session.notices:
                self._session.notices.append(notice)


WORKER_NOTICES = "pytest_overlay_notices"


def pytest_sessionfinish(session: pytest.Session) -> None:
    overlay_session = session.config.stash.get(session_key, None)
    workeroutput = getattr(session.config, "workeroutput", None)
    if overlay_session is not None and workeroutput is not None:
        workeroutput[WORKER_NOTICES] = list(overlay_session.notices)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(session_key, None)
    if session is None:
        return None
    try:
        lines = [session.selection.header()]
    except BackendUnavailableError as exc:
        return [f"overlay: no backend: {exc}"]
    if session.settings.inplace:
        lines.append(_in_place_header(session))
    return lines


def _in_place_header(session: OverlaySession) -> str:
    where = ", ".join(str(p) for p in session.settings.lowers)
    return f"overlay: in-place mode: {where} is sandboxed for every test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash.get(session_key, None)
    in_place = session is not None and session.settings.inplace
    for item in items:
        names = getattr(item, "fixturenames", None)
        if in_place and names is not None and IN_PLACE_FIXTURE not in names:
            names.insert(0, IN_PLACE_FIXTURE)
        marker = item.get_closest_marker("overlay")
        if marker is not None:
            check_backend_name(
                marker.kwargs.get("backend", "auto"), f"{item.nodeid}: overlay marker backend"
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    overlay_session = session.config.stash.get(session_key, None)
    if overlay_session is None or hasattr(session.config, "workerinput"):
        return
    if overlay_session.wants_user_namespace() and any(
        FIXTURE_NAME in getattr(item, "fixturenames", ()) for item in session.items
    ):
        # The last moment before tests (or the plugins around them) start threads.
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        _enter_user_namespace(overlay_session, for_children=False, reporter=reporter)


@pytest.fixture
def _overlay_in_place(request: pytest.FixtureRequest) -> None:
    """Internal: sandboxes the project for one test in ``--overlay`` mode.

    Placed first among every test's fixtures, so that all the others (of any scope) already
    see the overlay; only the snapshot layers the test asks for are set up before it, so that
    their builds stay out of the sandbox.  The teardown hook unmounts it after the last
    finalizer.
    """
    item = request.node
    session = request.config.stash[session_key]
    marker = item.get_closest_marker("overlay")
    layers: tuple[Path, ...] = ()
    if marker is not None and marker.kwargs.get("layers"):
        layers = resolve_layers(request, marker.kwargs["layers"])
    try:
        state = start_in_place(item, session, layers)
    except (OverlayError, OSError) as exc:
        problem = f"pytest-overlay could not sandbox the project in place: {exc}"
    else:
        problem = ""
        item.stash[state_key] = state
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except BaseException:
        # Known before the report exists: lets a teardown-only failure keep its layer.
        state = item.stash.get(state_key, None)
        if state is not None:
            state.phases["teardown"] = "failed"
        raise
    finally:
        session = item.config.stash.get(session_key, None)
        state = item.stash.get(state_key, None)
        if session is not None and state is not None and state.inplace:
            del item.stash[state_key]
            _finish_or_fail(item, session, state)


def _finish_or_fail(item: pytest.Item, session: OverlaySession, state: TestState) -> None:
    """Tear the test's views down; warn about what is worth knowing, fail if a view was lost."""
    try:
        messages = finish(item, session, state)
    except ViewLostError as exc:
        pytest.fail(f"pytest-overlay: {exc}", pytrace=False)
    for message in messages:
        warnings.warn(OverlayWarning(f"{item.nodeid}: {message}"), stacklevel=1)


@pytest.fixture
def overlay_root(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Overlay]:
    """A private, writable overlay of the project tree for this test.

    The lower layers (the project root unless ``overlay_lowers`` or the ``overlay`` marker say
    otherwise) are never modified; everything the test writes lands in its own upper layer,
    which is thrown away afterwards.  ``overlay_root.diff()`` tells what changed so far.  With
    ``--overlay`` the project itself is the overlay, and this is its root.
    """
    session = request.config.stash[session_key]
    session.set_scratch(tmp_path_factory.getbasetemp() / "overlay")
    existing = request.node.stash.get(state_key, None)
    if existing is not None:
        yield existing.overlay
        return
    lowers, backend = _marker_choices(request, session)
    try:
        state = start_fixture(request, session, lowers, backend)
    except BackendUnavailableError as exc:
        problem = f"pytest-overlay: {exc}"
    except OSError as exc:
        problem = f"pytest-overlay could not set up the overlay: {_setup_problem(exc)}"
    except OverlayError as exc:
        problem = f"pytest-overlay could not set up the overlay: {exc}"
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    request.node.stash[state_key] = state
    try:
        yield state.overlay
    finally:
        del request.node.stash[state_key]
        _finish_or_fail(request.node, session, state)


@pytest.fixture(scope="session")
def overlay_layer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> LayerFactory:
    """A factory of snapshot layers: ``overlay_layer(name, build, *, inputs=(), key=None,
    below=())`` returns a :class:`pytest_overlay.Layer`.

    ``build(root)`` runs once, on a writable overlay of the project tree (and the layers
    *below*); what it changes is frozen as a read-only layer, cached across runs and keyed by
    the name, *key*, the content of *inputs* and the layers below.  Stack a layer under a test
    with ``@pytest.mark.overlay(layers=["fixture_name"])``.
    """
    session = request.config.stash[session_key]
    session.set_scratch(tmp_path_factory.getbasetemp() / "overlay")
    return LayerFactory(request.config, session)


def _setup_problem(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        # Only the copy backend walks the tree at setup; the mounts do not.
        return (
            "a path in the tree is longer than the system allows (PATH_MAX, 4,096 bytes), and "
            "the copy backend copies the tree by path. Use --overlay-backend=kernel, which "
            "mounts the tree without copying it, or leave that directory out of the lower "
            "layers (--overlay-lower)"
        )
    return str(exc)


def _marker_choices(
    request: pytest.FixtureRequest, session: OverlaySession
) -> tuple[tuple[Path, ...], str | None]:
    """Lower directories (snapshot layers first) and backend: the marker beats the settings."""
    marker = request.node.get_closest_marker("overlay")
    if marker is None:
        return session.settings.lowers, None
    lowers = session.settings.lowers
    raw = marker.kwargs.get("lowers")
    if raw is not None:
        problem = ""
        try:
            raw = [raw] if isinstance(raw, (str, Path)) else list(raw)
            lowers = resolve_lowers(raw, request.config.rootpath, "overlay marker")
        except pytest.UsageError as exc:
            problem = str(exc)
        if problem:
            pytest.fail(problem, pytrace=False)
    layers = marker.kwargs.get("layers")
    if layers:
        lowers = resolve_layers(request, layers) + lowers
    return lowers, marker.kwargs.get("backend")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.stash.get(state_key, None)
    if state is None:
        return report
    state.phases[report.when] = report.outcome
    if report.failed and report.when in ("setup", "call"):
        session = item.config.stash[session_key]
        error = call.excinfo.value if call.excinfo is not None else None
        section = failure_section(item, state, session, color=_color(item), error=error)
        report.sections.append(section)
    return report


def _color(item: pytest.Item) -> bool:
    inherited = getattr(item.config, "workerinput", {}).get("pytest_overlay")
    if inherited is not None:
        return bool(inherited.get("color"))
    return item.config.get_terminal_writer().hasmarkup


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    session = config.stash.get(session_key, None)
    if session is None:
        return
    lines = list(session.notices)
    kept = kept_summary(config, session)
    if kept:
        lines.append(kept)
    if lines:
        terminalreporter.section("pytest-overlay", yellow=bool(session.notices))
        for line in lines:
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        session.shutdown()
