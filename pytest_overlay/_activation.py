"""The plugin once it is in use: the session it brings about, what the report header and the
terminal summary say, and what an xdist controller hands its workers.

:mod:`pytest_overlay.plugin` imports this module only when a test or an option asks for an
overlay, so that merely installing pytest-overlay costs a project nothing.  Everything here
may probe the machine, fork, mount and import the backends.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import _janitor, _namespaces, _realfs
from ._errors import BackendUnavailableError
from ._hermetic import hermetic_header
from ._keys import registry_key, session_key
from ._namespaces import LAZY
from ._session import OverlaySession
from ._settings import Settings
from ._stale import remove_stale_mounts, temp_root
from ._testreport import kept_summary
from ._userns import enter_or_fall_back, is_xdist_controller

# Sessions of this process not shut down yet: a pytest run in-process (pytester's inline
# runs, pytest.main) lives inside another one, whose mounts its end must leave watched.
_sessions = 0


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
    global _sessions
    _sessions += 1
    _realfs.watch()  # the check that no test patched os, cheap until one assigns there
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
        enter_or_fall_back(session, for_children=controller, where=LAZY)


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


def summary_lines(config: pytest.Config, session: OverlaySession) -> list[str]:
    """The pytest-overlay section at the end: notices, then what was kept."""
    lines = list(session.notices)
    kept = kept_summary(config, session)
    if kept:
        lines.append(kept)
    return lines


def shutdown(session: OverlaySession) -> None:
    """The run is over: release the session's views and backends, then, if it was the last
    session of the process, let the janitors go (nothing of the sessions is mounted any more),
    so that exit does not wait for them."""
    global _sessions
    try:
        session.shutdown()
    finally:
        _sessions -= 1
        _realfs.unwatch()
    if _sessions == 0:
        _janitor.let_go()
