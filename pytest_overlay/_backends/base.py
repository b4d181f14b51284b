"""The one narrow interface every backend implements.

A :class:`Mount` hides how a backend stores a test's changes: callers ask it for a diff, or to
:meth:`~Mount.export` the changes as an upper layer (keeping, snapshot layers), and never look
at its storage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from pytest_overlay._diff import TreeDiff
from pytest_overlay._names import safe_label

IgnoreFn = Callable[[str], bool]


class Mount(Protocol):
    """One test's merged view, alive until :meth:`close`."""

    __module__: str = "pytest_overlay"

    @property
    def path(self) -> Path:
        """The merged root that the test works in."""

    @property
    def lowers(self) -> tuple[Path, ...]:
        """The lower layers, topmost first."""

    @property
    def new_root(self) -> Path:
        """A directory holding the new version of every changed path, by relative path."""

    def diff(self, ignore: IgnoreFn | None = None) -> TreeDiff:
        """What changed in the merged view compared with the lowers."""

    def export(self, destination: Path) -> int:
        """Write the changes so far to *destination* (created; it must not exist) as an upper
        layer in overlayfs format, which :mod:`pytest_overlay._layers` reads over the lowers;
        returns the bytes of file data written.  Whatever the backend keeps them in."""

    def snapshot(self) -> Path:
        """:meth:`export` the changes so far to a new private directory, removed by
        :meth:`close`; returns it."""

    def reusable(self) -> bool:
        """Whether the next test with the same lowers may have this view as it is instead
        of a fresh one: nothing holds it any more (no open file or directory, mapping or
        working directory in it, so nothing kept from the test can change it later), and
        nothing in it changed since it was mounted, not even the root directory's metadata.
        ``False``: :meth:`close` it.  See :mod:`pytest_overlay._backends.mounted`."""

    def untouched(self) -> bool:
        """Whether nothing in the view changed since it was mounted (the cheap half of
        :meth:`reusable`, asked again right before a reused view is handed out)."""

    def close(self) -> list[str]:
        """Unmount and remove everything; returns warnings worth showing the user."""


class Backend(Protocol):
    """A way of giving a test a writable view over read-only lower layers (a third party's
    is registered through ``pytest_overlay_register_backends``: docs/backends.md)."""

    __module__: str = "pytest_overlay"

    name: str
    """How users ask for it (``--overlay-backend=NAME``), as registered; its scratch
    directory is named after it (see :class:`pytest_overlay.BackendSetup`)."""
    auto: bool
    """Whether ``--overlay-backend=auto`` tries it, in the registry's order."""
    in_place: bool
    """Whether its view can ever stand at the project's real paths (``--overlay``); a backend
    that cannot is never picked by ``auto`` in place and refused when asked for."""
    user_namespace: bool
    """Whether an ordinary user's process must enter a user namespace before its first mount:
    the plugin enters it before anything can start a thread (see ``_userns``)."""

    def unavailable_reason(self) -> str | None:
        """``None`` when usable here, else why not and what would make it usable."""

    def in_place_refusal(self, *, explicit: bool) -> str | None:
        """``None`` if it can run in place here, else why not: the usage error when the user
        asked for it (*explicit*), else the line the in-place error lists it with."""

    def lowers_refusal(self, lowers: Sequence[Path], *, explicit: bool) -> str | None:
        """Why it cannot give a writable view over *lowers* here, or ``None``; ``auto``
        (*explicit* False) passes over it then."""

    def failure_note(self, error: BaseException | None) -> str:
        """What a test's failure with *error* means on this backend, for the failure report
        (a paragraph put before the test's changes), or ``""``."""

    def describe(self) -> str:
        """How this backend runs here, for the report header (``root``, ``user namespace``)."""

    def notes(self) -> list[str]:
        """What else the report header says about how it runs here, a line each (often none)."""

    def mount(
        self,
        lowers: Sequence[Path],
        *,
        label: str,
        target: Path | None = None,
        passthrough: Sequence[Path] = (),
    ) -> Mount:
        """Give a fresh writable view over *lowers*; *label* names it for humans.

        With *target* the view appears at that path (in-place mode; backends that cannot do
        that ignore it, and callers check ``mount.path``).  *passthrough* directories inside
        the target keep showing the real directory, so pytest's own output reaches the disk.
        """

    def flush(self) -> None:
        """Unmount now what closed views it left mounted to unmount later, together."""

    def shutdown(self) -> None:
        """Release whatever the backend holds for the session."""


MountT = TypeVar("MountT", bound=Mount)


class ScratchBackend(ABC, Generic[MountT]):
    """What the built-in backends share: a scratch directory known only once a test runs,
    the arguments of :meth:`Backend.mount` (each implements :meth:`_mount`), and the answers
    of a backend with nothing to say (no lowers refused, no note on a failure)."""

    name: str
    auto = True
    in_place = True
    user_namespace = False

    def __init__(self, scratch: Callable[[], Path]) -> None:
        # The scratch directory lives in pytest's basetemp, known only once a test runs.
        self._scratch_provider = scratch
        self._scratch_path: Path | None = None

    @property
    def _scratch(self) -> Path:
        if self._scratch_path is None:
            self._scratch_path = self._scratch_provider()
        return self._scratch_path

    def mount(
        self,
        lowers: Sequence[Path],
        *,
        label: str,
        target: Path | None = None,
        passthrough: Sequence[Path] = (),
    ) -> MountT:
        """See :meth:`Backend.mount`."""
        return self._mount(lowers, label, target, passthrough)

    @abstractmethod
    def _mount(
        self, lowers: Sequence[Path], label: str, target: Path | None, passthrough: Sequence[Path]
    ) -> MountT:
        """:meth:`mount`, its arguments as they are."""

    def lowers_refusal(self, lowers: Sequence[Path], *, explicit: bool) -> str | None:
        return None

    def failure_note(self, error: BaseException | None) -> str:
        return ""

    def notes(self) -> list[str]:
        return []


__all__ = ["Backend", "IgnoreFn", "Mount", "ScratchBackend", "safe_label"]
