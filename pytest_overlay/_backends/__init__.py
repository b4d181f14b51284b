"""Backends behind one interface, and the choice between them.

Each backend is a module named after it (:mod:`.kernel`, :mod:`.fuse`; the copy backend's is
:mod:`.copying`, not to shadow the standard library's ``copy``), registered by name in
:mod:`pytest_overlay._registry`, whose order is the order ``auto`` tries them in; what the
choice needs to know about one (in place, lowers, user namespace) it asks the backend.  A part
that only one backend uses carries its name (:mod:`.copy_tracking`); the parts they share are
named after what they do: :mod:`.base` (the interface), :mod:`.mounted` (a real mount with an
upper layer: kernel and FUSE), :mod:`.idmap` (owners a user namespace cannot map) and
:mod:`.inplace` (the words of in-place refusals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_overlay._errors import BackendUnavailableError
from pytest_overlay._registry import AUTO, BackendRegistry

from .base import Backend, Mount
from .inplace import in_place_impossible

__all__ = [
    "Backend",
    "Mount",
    "Selection",
    "cannot_work_here",
    "fall_back",
    "select_backend",
    "working_directory_left",
]


def working_directory_left(mount: Mount) -> None:
    """The process's working directory, set inside *mount* (the view itself, not a
    pass-through mount on it) after the view's last busy check, has just left it.

    Optional for a backend (the kernel's and fuse's views implement it): a check that leaves
    the mount marked for expiry is followed by one ``stat`` at the next check, unless the
    kernel let go of a reference to the mount in between, as leaving a working directory does.
    """
    left = getattr(mount, "working_directory_left", None)
    if left is not None:
        left()


def cannot_work_here(name: str, reason: str) -> BackendUnavailableError:
    """The one wording of "this backend was asked for and cannot run on this machine"."""
    return BackendUnavailableError(f"the {name} backend cannot work here: {reason}")


@dataclass(frozen=True)
class Selection:
    """The backend chosen for the session, with what the report header says about it."""

    backend: Backend
    passed_over: tuple[tuple[str, str], ...] = ()

    def header(self) -> str:
        """The report header line."""
        line = f"overlay: backend={self.backend.name} ({self.backend.describe()})"
        for note in self.backend.notes():
            line += f"\n  {note}"
        for name, reason in self.passed_over:
            line += f"\n  {name} not used: {reason}"
        return line


def select_backend(
    registry: BackendRegistry,
    requested: str,
    scratch: Callable[[], Path],
    upper_size: str = "",
    *,
    inplace: bool = False,
    lowers: Sequence[Path] = (),
) -> Selection:
    """Resolve ``auto`` or check an explicit choice; raise with the remedy if it cannot work.

    :param lowers: the session's lower layers: ``auto`` passes over a backend that refuses
        them (the kernel, an overlayfs stacked too deep, as in a container inside a container).
    """
    if requested == AUTO:
        return fall_back(registry, scratch, (), upper_size, inplace=inplace, lowers=lowers)
    backend = registry.create(requested, scratch, upper_size)
    refusal = backend.in_place_refusal(explicit=True) if inplace else None
    if refusal is not None:
        raise BackendUnavailableError(refusal)
    reason = backend.unavailable_reason() or backend.lowers_refusal(lowers, explicit=True)
    if reason is not None:
        try:
            instead = select_backend(
                registry, AUTO, scratch, upper_size, inplace=inplace, lowers=lowers
            ).backend.name
            advice = f"use --overlay-backend={instead} (what auto picks here) instead"
        except BackendUnavailableError:
            if inplace:
                # No backend can run in place: the whole story, with every remedy.
                raise
            advice = "use --overlay-backend=auto to fall back to one that can"
        raise cannot_work_here(requested, f"{reason}. To run anyway, {advice}.")
    return Selection(backend)


def fall_back(
    registry: BackendRegistry,
    scratch: Callable[[], Path],
    passed_over: tuple[tuple[str, str], ...],
    upper_size: str = "",
    *,
    inplace: bool,
    lowers: Sequence[Path] = (),
) -> Selection:
    """``auto``: the first backend in the registry's order, but those *passed_over* already,
    that works here (a backend with ``auto`` False is never tried).

    In place only a backend whose view stands at the real paths is tried: the copy backend is
    never a fallback there (it cannot keep tests' writes off the real tree), so the run stops
    with :func:`in_place_impossible` instead.
    """
    skipped = list(passed_over)
    done = {name for name, _ in passed_over}
    for name in registry:
        if name in done:
            continue
        backend = registry.create(name, scratch, upper_size)
        if not backend.auto or (inplace and not backend.in_place):
            continue
        # In place, asked first: FUSE's refusal is known without a test mount.
        reason = backend.in_place_refusal(explicit=False) if inplace else None
        reason = (
            reason or backend.unavailable_reason() or backend.lowers_refusal(lowers, explicit=False)
        )
        if reason is None:
            return Selection(backend, tuple(skipped))
        skipped.append((name, reason))
    if inplace:
        raise BackendUnavailableError(in_place_impossible(skipped))
    raise BackendUnavailableError(
        "no overlay backend works here:\n"
        + "\n".join(f"  {name} not used: {reason}" for name, reason in skipped)
    )
