"""Real mounts, kernel and FUSE: a view whose changes live in an upper layer in the kernel's
format beside it, which diffs, exports and unmounts the same way for both."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from pytest_overlay import _namespaces, _syscalls
from pytest_overlay._diff import TreeDiff, diff_upper
from pytest_overlay._errors import MountError
from pytest_overlay._layerwrite import copy_layer

from .base import IgnoreFn


def detach(path: Path) -> None:
    """Unmount *path* and everything below it at once (``MNT_DETACH``)."""
    try:
        _syscalls.umount(path, _syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not mounted, a mount that failed half-way
            raise MountError(exc.errno, f"could not unmount {path}: {exc.strerror}") from exc


def readable_lowers(lowers: Sequence[Path], target: Path | None, root: Path) -> list[Path]:
    """Where the lower layers can be read while a view is mounted: a lower that the view
    covers (in place, the project itself) is read through a clone at ``root/.lower<i>``."""
    return [root / f".lower{i}" if lower == target else lower for i, lower in enumerate(lowers)]


class RealDirs:
    """The real directories an in-place view is about to hide, taken hold of before it is
    mounted: read-only clones of the lowers it covers, attached where
    :func:`readable_lowers` says (to read the real lower there, for the diff and the FUSE
    server), and pytest's own output directories, attached back over the view once it is
    mounted (to write through).  :meth:`close` closes the descriptors held meanwhile."""

    def __init__(self, passthrough: Sequence[Path]) -> None:
        self._passthrough = tuple(passthrough)
        self._tree_fds: list[int] = []
        self._held: list[tuple[Path, int]] = []
        self.clones: list[Path] = []
        """The clones attached so far: a view that keeps no tmpfs of its own detaches them."""

    def hold(self, lowers: Sequence[Path], readable: Sequence[Path]) -> None:
        with _namespaces.privileged():
            for lower, path in zip(lowers, readable, strict=True):
                if lower != path:
                    path.mkdir()
                    # Read-only: the real lower is read here, and nothing may write it.
                    clone = _syscalls.clone_tree(lower, readonly=True)
                    self._tree_fds.append(clone)
                    _syscalls.attach_tree(clone, path)
                    self.clones.append(path)
            for path in self._passthrough:
                tree_fd = _syscalls.clone_tree(path)
                self._tree_fds.append(tree_fd)
                self._held.append((path, tree_fd))

    def put_back(self) -> list[Path]:
        """Attach the output directories over the mounted view; return where."""
        attached = []
        with _namespaces.privileged():
            for path, tree_fd in self._held:
                _syscalls.attach_tree(tree_fd, path)
                attached.append(path)
        return attached

    def close(self) -> None:
        for tree_fd in self._tree_fds:
            os.close(tree_fd)
        self._tree_fds.clear()
        self._held.clear()


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

    def export(self, destination: Path) -> int:
        # A test may leave unreadable files behind; the copy needs to read them.
        with _namespaces.privileged():
            return copy_layer(self.upper, destination)

    def snapshot(self) -> Path:
        target = self._root / ".snapshots" / str(next(self._snapshots))
        target.parent.mkdir(exist_ok=True)
        self.export(target)
        return target
