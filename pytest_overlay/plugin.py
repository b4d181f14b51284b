"""The pytest plugin: hooks and fixtures, thin, and inert until a test or an option asks.

pytest imports this module in every run of every project where pytest-overlay is installed,
so it imports only pytest, the standard library, pluggy and the option definitions.  The
machinery is imported, and the machine probed, only once the plugin is in use: when a collected
test uses ``overlay_root``, the ``overlay`` marker or ``overlay_layer``, or when ``--overlay``,
an explicit ``--overlay-backend`` or ``overlay_userns = early`` asks for it.  It is reached
through lazy modules, one per concern, each imported at its first use and read by mypy as the
module itself: ``_engine`` (:mod:`._activation`: the session, header, summary, xdist hand-off),
``_test_engine`` (:mod:`._runtest`: one test's views, from the fixture or the in-place hook to
:meth:`OverlaySession.view`), ``_report_engine`` (:mod:`._testreport`: a failed test's section),
``_userns_engine`` (:mod:`._userns`) and ``_golden_engine`` (:mod:`._goldenrun`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from . import _hermetic, _registry
from ._choices import GOLDEN_MARKER, RECORDS_DIR
from ._keys import (
    golden_item_key,
    golden_modules_key,
    golden_outcome_key,
    golden_tests_key,
    header_shown_key,
    in_place_by_hook_key,
    marker_problem_key,
    registry_key,
    run_id_key,
    session_key,
    settings_key,
    worker_notices_key,
)
from ._names import name_in_module, new_run_id
from ._realfs import real_filesystem
from ._settings import MarkerError, Settings, add_options, marker_signature, parse_marker

if TYPE_CHECKING:
    import pluggy

    from ._overlay import Overlay
    from ._session import OverlaySession
    from ._snapshot.factory import LayerFactory

FIXTURE_NAME = "overlay_root"
LAYER_FIXTURE = "overlay_layer"
IN_PLACE_FIXTURE = "_overlay_in_place"
WORKER_NOTICES = "pytest_overlay_notices"
WORKER_GOLDEN = "pytest_overlay_golden"
MARKER_HELP = (
    "overlay(lowers=None, backend=None, layers=None): lower directories, backend and "
    "snapshot layers (names of fixtures returning overlay_layer(...)) for this test"
)
GOLDEN_HELP = (
    f"{GOLDEN_MARKER}(ignore=None, replace=None, timestamps=None): what this test does to "
    "the tree must match its golden record (docs/golden.md); --overlay-update writes it"
)


class _LazyModule:
    """A module imported at its first attribute access (the machinery, only once in use)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            # pytest inspects a plugin module's globals for fixtures and markers
            # (``_pytestfixturefunction``, ``__test__``, ...): such a look must not import the
            # machinery, or an unused plugin would load it in every run.
            raise AttributeError(attribute)
        module = self._module
        if module is None:
            # import_module on every call cost a few microseconds, five times per test. The
            # module is kept, not the attribute: a test that patches one is still seen.
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)


if TYPE_CHECKING:
    # mypy reads the machinery itself, so that every call into it is checked.
    from . import _activation as _engine
    from . import _runtest as _test_engine
    from . import _testreport as _report_engine
    from . import _userns as _userns_engine
else:
    # The session (activation, header, summary, xdist hand-off).
    _engine = _LazyModule("pytest_overlay._activation")
    # One test's views: the fixtures' bodies, in-place setup and teardown.
    _test_engine = _LazyModule("pytest_overlay._runtest")
    # A failed test's report section.
    _report_engine = _LazyModule("pytest_overlay._testreport")
    # When the process enters its user namespace.
    _userns_engine = _LazyModule("pytest_overlay._userns")


if TYPE_CHECKING:
    from . import _goldenrun as _golden_engine
else:
    _golden_engine = _LazyModule("pytest_overlay._goldenrun")


def _is_golden(item: pytest.Item) -> bool:
    return item.get_closest_marker(GOLDEN_MARKER) is not None


def _runs_golden(item: pytest.Item) -> bool:
    """:func:`_is_golden` as :func:`pytest_collection_modifyitems` found it (after every
    hook that may add markers at collection), else looked up once when the test starts: a
    marker lookup walks the item's parents."""
    golden = item.stash.get(golden_item_key, None)
    if golden is None:
        golden = item.stash[golden_item_key] = _is_golden(item)
    return golden


def _active(config: pytest.Config) -> OverlaySession | None:
    return config.stash.get(session_key, None)


def _use(config: pytest.Config) -> OverlaySession:
    """The session, bringing the plugin into use if nothing has yet."""
    session = _active(config)
    if session is None:
        session = _engine.activate(config, config.stash[settings_key], config.stash[run_id_key])
        _userns_engine.enter_for_tests(config, session)
    return session


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_overlay_register_backends(registry: _registry.BackendRegistry) -> None:
    """The built-in backends, first: ``auto`` tries them in this order before any other."""
    _registry.add_builtins(registry)


class _BackendNames:
    """The names ``--help`` lists for ``--overlay-backend``, asked of the registry when shown."""

    def __init__(self, hook: pluggy.HookRelay) -> None:
        self._hook = hook

    def __iter__(self) -> Iterator[str]:
        return iter(_registry.collect(self._hook).choices)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    add_options(parser, _BackendNames(pluginmanager.hook))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """In place, or with ``overlay_userns = early``: the user namespace before any conftest."""
    if hasattr(early_config, "workerinput"):
        return  # workers inherit the controller's namespace
    options = early_config.known_args_namespace

    def value(name: str) -> Any:
        given = getattr(options, name, None)
        return early_config.getini(name) if given is None else given

    inplace = bool(value("overlay"))
    early = str(value("overlay_userns") or "").strip() == "early"
    backend = str(value("overlay_backend") or "auto").strip()
    if inplace or early:
        registry = _registry.collect(early_config.hook)
        _userns_engine.enter_before_conftests(early_config, registry, backend, inplace=inplace)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.addinivalue_line("markers", GOLDEN_HELP)
    registry = config.stash[registry_key] = _registry.collect(config.hook)
    settings = Settings.from_config(config, registry.choices)
    inherited = getattr(config, "workerinput", {}).get("pytest_overlay") or {}
    config.stash[settings_key] = settings
    config.stash[run_id_key] = inherited.get("run_id") or new_run_id()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "overlay-xdist")
    if settings.hermetic.report and not hasattr(config, "workerinput"):
        reporter = _hermetic.WritesReporter(settings.hermetic.report_json)
        config.pluginmanager.register(reporter, "overlay-writes")
    asked = (
        settings.inplace
        or settings.backend != "auto"
        or settings.userns == "early"
        or "backend" in inherited
    )
    if asked:
        session = _engine.activate(config, settings, config.stash[run_id_key])
        _engine.configure_asked(config, session)


class _XdistHooks:
    """Registered only when xdist is loaded, so its hook names are known."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def pytest_configure_node(self, node: Any) -> None:
        session = _active(self._config)
        decided: dict[str, Any] = {}
        if session is not None:
            decided = {
                "encoding": _report_engine.terminal_encoding(node.config),
                **_engine.xdist_worker_input(session),
            }
        node.workerinput["pytest_overlay"] = {
            "run_id": self._config.stash[run_id_key],
            "color": node.config.get_terminal_writer().hasmarkup,
            **decided,
        }

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if WORKER_GOLDEN in output:
            _golden_engine.merge_worker_output(self._config, output[WORKER_GOLDEN])
        if WORKER_NOTICES not in output:
            return  # the worker did not use the plugin
        notices = self._config.stash.setdefault(worker_notices_key, [])
        notices.extend(n for n in output[WORKER_NOTICES] if n not in notices)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = _active(config)
    if session is None:
        return None
    config.stash[header_shown_key] = True
    lines: list[str] = _engine.header_lines(session)
    return lines


def pytest_itemcollected(item: pytest.Item) -> None:
    """Note every collected module, and the golden tests (deselected ones too): what
    :func:`pytest_sessionfinish` needs to tell which records no test claims."""
    config = item.config
    config.stash.setdefault(golden_modules_key, set()).add(item.path)
    if _is_golden(item):
        tests = config.stash.setdefault(golden_tests_key, {})
        tests.setdefault(item.path, set()).add(name_in_module(item.nodeid, item.name))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every test's overlay markers, and note what its setup needs to know.  Last, so
    that the markers other plugins and conftests add here are seen."""
    problems: list[str] = []
    used = False
    in_place = config.stash[settings_key].inplace
    backends = config.stash[registry_key].choices
    signature = marker_signature(backends)
    for item in items:
        names = getattr(item, "fixturenames", None)
        # One walk of the test's markers and its parents' (2.5 us each, per test).
        markers = []
        golden = False
        for marker in item.iter_markers():
            if marker.name == "overlay":
                markers.append(marker)
            elif marker.name == GOLDEN_MARKER:
                golden = True
        item.stash[golden_item_key] = golden
        layers = False
        for index, marker in enumerate(markers):
            try:
                choices = parse_marker(marker.args, dict(marker.kwargs), backends)
            except MarkerError as exc:
                problem = f"{item.nodeid}: @pytest.mark.overlay: {exc}"
                problems.append(problem)
                item.stash[marker_problem_key] = f"{problem}\nIt accepts {signature}."
            else:
                layers = layers or (index == 0 and bool(choices.layers))  # the closest decides
        if in_place and names is not None and IN_PLACE_FIXTURE not in names:
            if layers:
                # Its snapshot layers are fixtures, built before the view covers the tree.
                names.insert(0, IN_PLACE_FIXTURE)
            else:
                # Sandboxed by pytest_runtest_setup below, before any fixture: a fixture of
                # our own would cost every test pytest's price of one, about 0.15 ms.
                item.stash[in_place_by_hook_key] = True
        if not in_place and names is not None and FIXTURE_NAME not in names and golden:
            # A golden test records what it does to its overlay: it gets one.
            names.append(FIXTURE_NAME)
        fixtures = names or ()
        used = (
            used or bool(markers) or FIXTURE_NAME in fixtures or LAYER_FIXTURE in fixtures or golden
        )
    if problems and hasattr(config, "workerinput"):
        # An xdist worker cannot stop the run with a usage error (the controller reports a
        # crash instead), so each test with a wrong marker fails with the message.
        problems = []
    if problems:
        shown = list(dict.fromkeys(problems))
        more = f"\n  ... and {len(shown) - 10} more" if len(shown) > 10 else ""
        raise pytest.UsageError(
            "the overlay marker is written wrong:\n  "
            + "\n  ".join(shown[:10])
            + more
            + f"\nIt accepts {signature}."
        )
    if used:
        _use(config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = item.stash.get(marker_problem_key, None)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    if _runs_golden(item):
        # Before any fixture: in place, the record is read before a view covers it.
        _golden_engine.setup(item)
    if item.stash.get(in_place_by_hook_key, False):
        _sandbox_in_place(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    session = _active(item.config)
    if session is not None and _runs_golden(item):
        _golden_engine.check(item, session)
    return result


def _sandbox_in_place(item: pytest.Item) -> None:
    """Sandbox the project for one ``--overlay`` test, before its fixtures are set up (as
    :func:`_overlay_in_place` does for a test with snapshot layers)."""
    config = item.config
    session = _use(config)
    # A fake filesystem (pyfakefs, of a wider scope) may be active already: see _realfs.
    with real_filesystem():
        basetemp = session.basetemp
        if basetemp is None:
            # What the tmp_path_factory fixture returns, which a hook cannot ask for: the
            # basetemp is made here, before the overlay covers the tree it may be inside of.
            factory = getattr(config, "_tmp_path_factory", None)
            if factory is None:
                pytest.fail(
                    "pytest-overlay: in-place mode (--overlay) needs pytest's tmpdir plugin "
                    "(for its basetemp); do not disable it with -p no:tmpdir",
                    pytrace=False,
                )
            basetemp = Path(factory.getbasetemp())
        _test_engine.in_place_setup(item, session, basetemp)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    overlay_session = _active(session.config)
    if overlay_session is None:
        return
    # The last moment before tests (or the plugins around them) start threads.
    _userns_engine.enter_for_tests(session.config, overlay_session)
    if hasattr(session.config, "workerinput") and not session.config.stash.get(
        header_shown_key, False
    ):
        _engine.header_to_summary(overlay_session)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str] | None:
    """Right after "collected N items": the backend line, when a test brought us into use,
    and a fallback that entering the user namespace just caused (the summary repeats it)."""
    session = _active(config)
    if session is None:
        return None
    lines = [f"overlay: {notice}" for notice in session.notices]
    quiet = config.option.verbose < 0 or getattr(config.option, "no_header", False)
    if not quiet and not config.stash.get(header_shown_key, False):
        config.stash[header_shown_key] = True
        lines[:0] = _engine.header_lines(session)
    return lines or None


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    overlay_session = _active(config)
    workeroutput = getattr(config, "workeroutput", None)
    if overlay_session is not None and workeroutput is not None:
        workeroutput[WORKER_NOTICES] = list(overlay_session.notices)
    modules = config.stash.get(golden_modules_key, set())
    if golden_tests_key in config.stash or any(
        (directory / RECORDS_DIR).is_dir() for directory in {m.parent for m in modules}
    ):
        _golden_engine.find_unused(config)
        if workeroutput is not None:
            workeroutput[WORKER_GOLDEN] = _golden_engine.worker_output(config)
            return
    if config.stash[settings_key].update and golden_outcome_present(config):
        _golden_engine.remove_unused(config)


@pytest.fixture
def _overlay_in_place(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Internal: sandboxes the project for one test with snapshot layers in ``--overlay``
    mode (the others are sandboxed by ``pytest_runtest_setup``, before any fixture).

    Placed first among the test's fixtures, so that all the others (of any scope) already
    see the overlay; only the snapshot layers the test asks for are set up before it, so that
    their builds stay out of the sandbox.  The teardown hook unmounts it after the last
    finalizer.
    """
    # The basetemp is made here, before the overlay covers the tree it may be inside of.
    basetemp = Path(tmp_path_factory.getbasetemp())
    # A fake filesystem (pyfakefs, of a wider scope) may be active already: see _realfs.
    with real_filesystem():
        _test_engine.in_place_setup(request.node, _use(request.config), basetemp, request)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """After the last test: close the views kept for a next test (in place they stand at the
    real paths, where what runs next, reports and coverage data, must reach the disk)."""
    try:
        return (yield)
    finally:
        overlay_session = _active(session.config)
        if overlay_session is not None:
            overlay_session.release_parked()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    failed = False
    try:
        return (yield)
    except BaseException:
        failed = True
        raise
    finally:
        session = _active(item.config)
        try:
            if session is not None:
                # It leaves a fake filesystem itself, only if it has a view to close.
                _test_engine.in_place_teardown(item, session, failed=failed)
        finally:
            if _runs_golden(item):
                # The views are gone: a record is written to the real disk.
                _golden_engine.write(item, session)


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
    with real_filesystem():
        session = _use(request.config)
        basetemp = Path(tmp_path_factory.getbasetemp())
        body = _test_engine.overlay_root_fixture(request, session, basetemp)
        # Its setup (under this guard: its own costs nothing nested).
        overlay = next(body)
    try:
        yield overlay
    finally:
        # Its teardown, which leaves the fake (if any) by itself: not around the test.
        next(body, None)


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
    with real_filesystem():
        session = _use(request.config)
        basetemp = Path(tmp_path_factory.getbasetemp())
        factory: LayerFactory = _test_engine.layer_factory(request.config, session, basetemp)
    return factory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    session = _active(item.config)
    if session is None:
        return report
    error = call.excinfo.value if call.excinfo is not None else None
    # Only a failure's report reads the view; the rest records the outcome.
    guard = real_filesystem() if report.failed else contextlib.nullcontext()
    with guard:
        section = _report_engine.failure_report(item, session, report.when, report.outcome, error)
    if section is not None:
        from ._ci_reports import attach

        report.sections.append(section)
        attach(item, report, section)
    if session.settings.hermetic.records:
        _hermetic.on_report(item, session, report)
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    golden = _golden_engine.summary_lines(config) if golden_outcome_present(config) else []
    if golden:
        terminalreporter.section("pytest-overlay golden records")
        for line in golden:
            terminalreporter.write_line(line)
    session = _active(config)
    from_workers = config.stash.get(worker_notices_key, None)
    if session is None and from_workers is None:
        return
    if session is None:
        # Workers used the plugin under a controller that did not: it counts what they kept
        # (a session that is never asked for a backend probes nothing).
        session = _engine.activate(config, config.stash[settings_key], config.stash[run_id_key])
    notices = [*session.notices, *(n for n in from_workers or () if n not in session.notices)]
    kept = [line for line in _engine.summary_lines(config, session) if line not in notices]
    lines = notices + kept
    if lines:
        terminalreporter.section("pytest-overlay", yellow=bool(notices))
        for line in lines:
            terminalreporter.write_line(line)


def golden_outcome_present(config: pytest.Config) -> bool:
    """Whether this process has anything to say about golden records."""
    return golden_outcome_key in config.stash


def pytest_unconfigure(config: pytest.Config) -> None:
    session = _active(config)
    if session is not None:
        _engine.shutdown(session)
