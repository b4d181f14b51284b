"""When the process enters its user namespace, and what happens when it cannot.

An ordinary user's kernel backend mounts inside a user namespace, which only a process with a
single thread can enter.  So it is entered as early as the run allows (before conftests in
place or with ``overlay_userns = early``; else once a collected test needs an overlay), by the
xdist controller for its workers, and a process that can no longer enter it falls back to the
next backend (or, in place, stops with the remedies).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _namespaces
from ._backends import Backend
from ._backends.inplace import in_place_impossible
from ._namespaces import EARLY, LAZY, XDIST_WORKER, threads_reason
from ._probe import explain_userns_failure, probe_ahead
from ._registry import AUTO, BackendRegistry
from ._session import OverlaySession


def enter_before_conftests(
    early_config: pytest.Config, registry: BackendRegistry, requested: str, *, inplace: bool
) -> None:
    """In place (or ``overlay_userns = early``), enter the user namespace before conftests,
    if the backend *requested* (or the first ``auto`` tries) needs one.

    A conftest may import a library that starts threads, after which the process can never
    enter a user namespace; in place that would leave no backend that keeps tests' writes off
    the real tree, so the namespace is entered before any conftest is imported.

    The kernel backend's probe (which decides whether to enter) runs in a child: started first
    (:func:`probe_ahead`), it probes while this process imports the machinery it is about to
    use; as root, in place, it probes on while the conftests are imported, and the backend's
    choice at ``pytest_configure`` reads its answer.
    """
    if _namespaces.entered_user_namespace():
        return
    root = _namespaces.is_real_root()
    if root and not (inplace and requested in (AUTO, "kernel")):
        return
    backend = _first_choice(registry, requested, inplace=inplace)
    if backend is not None and backend.name == "kernel":
        probe_ahead()
        _import_machinery()
    if root or backend is None or not backend.user_namespace:
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


def _import_machinery() -> None:
    """Import what the run uses once its tests start (while the probe's child works)."""
    for name in ("_activation", "_runtest"):
        importlib.import_module(f"{__package__}.{name}")


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


def enter_or_fall_back(session: OverlaySession, *, for_children: bool, where: str) -> None:
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
    enter_or_fall_back(session, for_children=False, where=XDIST_WORKER if worker else LAZY)
