"""What the kernel and FUSE views share: an upper layer in the kernel's format beside them."""

from __future__ import annotations

import errno
import itertools
from pathlib import Path

from pytest_overlay import _namespaces, _syscalls
from pytest_overlay._diff import TreeDiff, diff_upper
from pytest_overlay._errors import MountError
from pytest_overlay._keep import copy_layer

from .base import IgnoreFn


def detach(path: Path) -> None:
    """Unmount *path* and everything below it at once (``MNT_DETACH``)."""
    try:
        _syscalls.umount(path, _syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not mounted, a mount that failed half-way
            raise MountError(exc.errno, f"could not unmount {path}: {exc.strerror}") from exc


class UpperLayerView:
    """A view whose changes live in ``<root>/.upper``; subclasses know how to unmount it."""

    def __init__(self, root: Path, merged: Path, lowers: tuple[Path, ...]) -> None:
        self._root = root
        self._merged = merged
        self._lowers = lowers
        self._snapshots = itertools.count()

    @property
    def path(self) -> Path:
        return self._merged

    @property
    def lowers(self) -> tuple[Path, ...]:
        return self._lowers

    @property
    def upper(self) -> Path:
        """The upper layer, in the kernel's format."""
        return self._root / ".upper"

    @property
    def new_root(self) -> Path:
        """Where the new version of every changed file is: the upper layer."""
        return self.upper

    def diff(self, ignore: IgnoreFn | None = None) -> TreeDiff:
        # A test may leave unreadable files behind; reading them is the diff's business.
        with _namespaces.privileged():
            return diff_upper(self.upper, self._lowers, ignore=ignore)

    def snapshot(self) -> Path:
        target = self._root / ".snapshots" / str(next(self._snapshots))
        target.parent.mkdir(exist_ok=True)
        with _namespaces.privileged():
            copy_layer(self.upper, target)
        return target
