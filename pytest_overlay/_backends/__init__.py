"""Backends behind one interface, and the choice between them.

Each backend is a module named after it (:mod:`.kernel`, :mod:`.fuse`; the copy backend's is
:mod:`.copying`, not to shadow the standard library's ``copy``); a part that only one backend
uses carries its name (:mod:`.copy_tracking`); the parts they share are
named after what they do: :mod:`.base` (the interface), :mod:`.mounted` (a real mount with an
upper layer: kernel and FUSE), :mod:`.idmap` (owners a user namespace cannot map) and
:mod:`.inplace` (which backends may run in place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_overlay._choices import BACKEND_CHOICES
from pytest_overlay._errors import BackendUnavailableError

from .base import Backend, Mount
from .copying import CopyBackend
from .fuse import FuseBackend, private_mounts_possible
from .idmap import unmapped_owner
from .inplace import (
    COPY_IN_PLACE,
    fuse_in_place_needs_root,
    fuse_in_place_refused,
    in_place_impossible,
)
from .kernel import KernelBackend, refused_lower

__all__ = [
    "BACKEND_CHOICES",
    "Backend",
    "Mount",
    "Selection",
    "cannot_work_here",
    "create_backend",
    "select_backend",
]


def cannot_work_here(name: str, reason: str) -> BackendUnavailableError:
    """The one wording of "this backend was asked for and cannot run on this machine"."""
    return BackendUnavailableError(f"the {name} backend cannot work here: {reason}")


def create_backend(name: str, scratch: Callable[[], Path], upper_size: str = "") -> Backend:
    """A backend by name, with its per-session scratch directory."""
    if name == "kernel":
        return KernelBackend(lambda: scratch() / "kernel", upper_size)
    if name == "copy":
        return CopyBackend(lambda: scratch() / "copy")
    if name == "fuse":
        return FuseBackend(lambda: scratch() / "fuse")
    raise BackendUnavailableError(
        f"unknown overlay backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}"
    )


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
    requested: str,
    scratch: Callable[[], Path],
    upper_size: str = "",
    *,
    inplace: bool = False,
    lowers: Sequence[Path] = (),
) -> Selection:
    """Resolve ``auto`` or check an explicit choice; raise with the remedy if it cannot work.

    :param lowers: the session's lower layers: ``auto`` passes over the kernel if it refuses
        one of them (an overlayfs stacked too deep, as in a container inside a container).
    """
    if requested != "auto":
        if requested == "copy" and inplace:
            raise BackendUnavailableError(COPY_IN_PLACE)
        if requested == "fuse" and inplace and not private_mounts_possible():
            refused = create_backend("kernel", scratch, upper_size).unavailable_reason()
            raise BackendUnavailableError(fuse_in_place_refused(refused))
        backend = create_backend(requested, scratch, upper_size)
        reason = backend.unavailable_reason()
        if reason is None and requested == "kernel":
            reason = unmapped_owner(lowers)
        if reason is not None:
            try:
                instead = select_backend(
                    "auto", scratch, upper_size, inplace=inplace, lowers=lowers
                ).backend.name
                advice = f"use --overlay-backend={instead} (what auto picks here) instead"
            except BackendUnavailableError:
                if inplace:
                    # No backend can run in place: the whole story, with every remedy.
                    raise
                advice = "use --overlay-backend=auto to fall back to one that can"
            raise cannot_work_here(requested, f"{reason}. To run anyway, {advice}.")
        return Selection(backend)
    passed_over: list[tuple[str, str]] = []
    kernel = create_backend("kernel", scratch, upper_size)
    reason = kernel.unavailable_reason() or refused_lower(lowers) or unmapped_owner(lowers)
    if reason is None:
        return Selection(kernel)
    passed_over.append(("kernel", reason))
    return fall_back(scratch, tuple(passed_over), inplace=inplace)


def fall_back(
    scratch: Callable[[], Path], passed_over: tuple[tuple[str, str], ...], *, inplace: bool
) -> Selection:
    """The kernel backend cannot be used: FUSE if it really mounts here, else copy.

    In place the copy backend is never a fallback: it cannot keep tests' writes off the real
    tree, so the run stops with :func:`in_place_impossible` instead.
    """
    if inplace and not private_mounts_possible():
        # Mounted through fusermount3, the view would cover the project machine-wide.
        skipped = ("fuse", fuse_in_place_needs_root())
        raise BackendUnavailableError(in_place_impossible((*passed_over, skipped)))
    fuse = create_backend("fuse", scratch)
    reason = fuse.unavailable_reason()
    if reason is None:
        return Selection(fuse, passed_over)
    if inplace:
        raise BackendUnavailableError(in_place_impossible((*passed_over, ("fuse", reason))))
    return Selection(create_backend("copy", scratch), (*passed_over, ("fuse", reason)))
