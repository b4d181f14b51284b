"""The object a test gets from the ``overlay_root`` fixture."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, final

from . import _namespaces
from ._checkpoint import diff_states
from ._realfs import real_filesystem

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backends import Mount
    from ._diff import TreeDiff


@final
class Overlay(os.PathLike[str]):
    """A test's private, writable view of the lower layers.

    Use it wherever a path is accepted: ``os.fspath(overlay)`` is the merged root, and
    ``overlay / "data"`` is a :class:`pathlib.Path` inside it.  Everything written through it
    lands in the test's own upper layer; the lower layers are never modified.
    """

    __module__ = "pytest_overlay"

    def __init__(
        self,
        mount: Mount,
        backend: str,
        ignore: Callable[[str], bool] | None = None,
        lowers: tuple[Path, ...] | None = None,
    ) -> None:
        self._mount = mount
        self._backend = backend
        self._ignore = ignore
        self._lowers = mount.lowers if lowers is None else lowers
        self._checkpoint: Path | None = None

    @property
    def path(self) -> Path:
        """The merged root, a :class:`pathlib.Path`."""
        return self._mount.path

    @property
    def backend(self) -> str:
        """Which backend provides the view, by its registered name: ``"kernel"``, ``"fuse"``,
        ``"copy"`` or a plugin's."""
        return self._backend

    @property
    def lowers(self) -> tuple[Path, ...]:
        """The read-only lower layers, topmost first."""
        return self._lowers

    def diff(self) -> TreeDiff:
        """Everything the test changed so far, relative to the lower layers.

        Paths matching ``overlay_ignore`` (bytecode, pytest's cache, coverage data) are left
        out.
        """
        with real_filesystem():
            return self._mount.diff(self._ignore)

    def checkpoint(self) -> TreeDiff:
        """Freeze the current state and return what changed since the previous checkpoint.

        The first checkpoint reports everything since the start of the test, like
        :meth:`diff`; each later one only the step since the one before.  :meth:`diff` keeps
        reporting everything since the start.
        """
        with real_filesystem(), _namespaces.privileged():
            snapshot = self._mount.snapshot()
            step = diff_states(self._checkpoint, snapshot, self._mount.lowers, self._ignore)
        self._checkpoint = snapshot
        return step

    def __fspath__(self) -> str:
        return os.fspath(self._mount.path)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self._mount.path / other

    def __str__(self) -> str:
        return str(self._mount.path)

    def __repr__(self) -> str:
        return f"<Overlay {str(self._mount.path)!r} backend={self._backend!r}>"
