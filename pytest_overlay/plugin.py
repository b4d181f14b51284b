"""The pytest plugin: options, configuration, the ``overlay_root`` fixture and report hooks."""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _namespaces
from ._backends import BACKEND_CHOICES
from ._errors import BackendUnavailableError, OverlayError
from ._overlay import Overlay
from ._probe import explain_userns_failure
from ._session import OverlaySession, Settings, check_backend_name, resolve_lowers
from ._warnings import OverlayWarning

session_key = pytest.StashKey[OverlaySession]()
overlay_key = pytest.StashKey[Overlay]()

FIXTURE_NAME = "overlay_root"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlay", "per-test filesystem overlays (pytest-overlay)")
    group.addoption(
        "--overlay-backend",
        dest="overlay_backend",
        default=None,
        metavar="NAME",
        help=f"Overlay backend: {', '.join(BACKEND_CHOICES)} (default: auto)",
    )
    group.addoption(
        "--overlay-lower",
        dest="overlay_lowers",
        action="append",
        default=None,
        metavar="DIR",
        help="Lower layer directory, topmost first; repeatable (default: the project root)",
    )
    group.addoption(
        "--overlay-userns",
        dest="overlay_userns",
        default=None,
        metavar="WHEN",
        help="When an ordinary user's run enters its user namespace: lazy (when a collected "
        "test needs an overlay) or early (at startup, before any library can start threads)",
    )
    parser.addini(
        "overlay_userns",
        help="When an ordinary user's run enters its user namespace: lazy or early",
        default="lazy",
    )
    parser.addini(
        "overlay_backend",
        help="Overlay backend: auto, kernel, fuse or copy",
        default="auto",
    )
    parser.addini(
        "overlay_lowers",
        type="paths",
        help="Lower layer directories, topmost first (default: the project root)",
        default=[],
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "overlay(lowers=None, backend=None): lower layers and backend for this test's "
        "overlay_root (lowers relative to the project root)",
    )
    inherited = getattr(config, "workerinput", {}).get("pytest_overlay")
    session = OverlaySession(Settings.from_config(config), inherited)
    config.stash[session_key] = session
    if inherited is not None:
        if inherited.get("userns"):
            # The controller handed us its capabilities; keep them for mounting only.
            _namespaces.drop_inherited_capabilities()
        return
    if session.settings.backend != "auto":
        try:
            session.selection  # noqa: B018 - asking explicitly must fail now, not in a test
        except BackendUnavailableError as exc:
            raise pytest.UsageError(str(exc)) from None
    controller = _is_xdist_controller(config)
    if session.wants_user_namespace() and (controller or session.settings.userns == "early"):
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
        reason = (
            f"this process already runs {threads} threads (a library imported by a conftest "
            "or by the tests, such as NumPy's OpenBLAS, starts them), and only a "
            "single-threaded process may enter a user namespace; set overlay_userns = early "
            "(or --overlay-userns=early) to enter it before anything is imported, or limit "
            "the library's threads (OPENBLAS_NUM_THREADS=1), or run as root"
        )
    else:
        try:
            _namespaces.enter_user_namespace(for_children=for_children)
            return
        except OSError as exc:
            reason = explain_userns_failure("entering the user namespace", exc.errno or 0)
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
        }


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(session_key, None)
    if session is None:
        return None
    try:
        return session.selection.header()
    except BackendUnavailableError as exc:
        return f"overlay: no backend: {exc}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
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


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    session = config.stash.get(session_key, None)
    if session is not None and session.notices:
        terminalreporter.section("pytest-overlay", yellow=True)
        for notice in session.notices:
            terminalreporter.write_line(notice)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(session_key, None)
    if session is not None:
        session.shutdown()


@pytest.fixture
def overlay_root(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Overlay]:
    """A private, writable overlay of the project tree for this test.

    The lower layers (the project root unless ``overlay_lowers`` or the ``overlay`` marker say
    otherwise) are never modified; everything the test writes lands in its own upper layer,
    which is thrown away afterwards.  ``overlay_root.diff()`` tells what changed so far.
    """
    session = request.config.stash[session_key]
    session.set_scratch(tmp_path_factory.getbasetemp() / "overlay")
    lowers, backend = _marker_choices(request, session)
    try:
        mount = session.mount(lowers, backend, request.node.name)
    except BackendUnavailableError as exc:
        problem = f"pytest-overlay: {exc}"
    except (OverlayError, OSError) as exc:
        problem = f"pytest-overlay could not set up the overlay: {exc}"
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    overlay = Overlay(mount, backend or session.selection.backend.name)
    request.node.stash[overlay_key] = overlay
    try:
        yield overlay
    finally:
        del request.node.stash[overlay_key]
        for message in mount.close():
            warnings.warn(OverlayWarning(f"{request.node.nodeid}: {message}"), stacklevel=1)


def _marker_choices(
    request: pytest.FixtureRequest, session: OverlaySession
) -> tuple[tuple[Path, ...], str | None]:
    marker = request.node.get_closest_marker("overlay")
    lowers = session.settings.lowers
    backend: str | None = None
    if marker is not None:
        if marker.kwargs.get("lowers") is not None:
            raw = marker.kwargs["lowers"]
            if isinstance(raw, (str, Path)):
                raw = [raw]
            problem = ""
            try:
                lowers = resolve_lowers(list(raw), request.config.rootpath, "overlay marker")
            except pytest.UsageError as exc:
                problem = str(exc)
            if problem:
                pytest.fail(problem, pytrace=False)
        backend = marker.kwargs.get("backend")
    return lowers, backend


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    overlay = item.stash.get(overlay_key, None)
    if overlay is not None and report.failed and report.when == "call":
        try:
            changes = str(overlay.diff()) or "(no changes)"
        except OSError as exc:
            changes = f"(could not compute the changes: {exc})"
        report.sections.append((f"overlay changes ({overlay.backend})", changes))
    return report
