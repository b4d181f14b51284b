"""Changing the upper layer: copy-up, new entries, removals, in the kernel's format.

The format itself (whiteouts, opaque markers, copying an entry) is written by
:mod:`pytest_overlay._layerwrite`; this module decides when.

:class:`UpperWriter` is the half of :class:`.ops.OverlayOperations` that changes the upper
layer; the other half answers FUSE requests with it.  A copy-up is made under a temporary
name in the work directory and renamed into place, so that a crash never leaves half a copy
in the upper layer.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import mfusepy

from pytest_overlay._files import remove_tree
from pytest_overlay._layers import WHITEOUT_PREFIX
from pytest_overlay._layerwrite import clear_whiteout, copy_node, make_whiteout

from .links import LinkNames
from .view import MergedView, Node, fail, split

__all__ = ["UpperWriter", "discard"]


class UpperWriter:
    """Copy-up and the other changes of the upper layer, for :class:`.ops.OverlayOperations`
    (which sets these attributes)."""

    _view: MergedView
    _upper: str
    _work: str
    _as_root: bool
    _links: LinkNames
    # Inode of a copied-up upper entry -> the inode it had in its lower layer.
    _origin_ino: dict[int, int]
    _tmp_names: Iterator[str]

    # -- the merged view ------------------------------------------------------------------

    def _ino(self, node: Node) -> int:
        ino = node.st.st_ino
        return self._origin_ino.get(ino, ino) if node.layer == 0 else ino

    def _forget(self, st: os.stat_result) -> None:
        """An upper entry is being removed: drop its inode alias with its last link."""
        if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            self._origin_ino.pop(st.st_ino, None)

    # -- writing the upper layer ----------------------------------------------------------

    def _tmp(self) -> str:
        return os.path.join(self._work, next(self._tmp_names))

    def _upper_dir(self, rel: str) -> str:
        """Copy the directory *rel* (and its parents) up if needed; return its upper path."""
        if rel == "":
            return self._upper
        node = self._view.get(rel)
        if not stat.S_ISDIR(node.st.st_mode):
            raise fail(errno.ENOTDIR, rel)
        if node.layer == 0:
            return node.path
        return self._copy_up_node(rel, node)

    def _copy_up_node(self, rel: str, node: Node) -> str:
        parent, name = split(rel)
        target = os.path.join(self._upper_dir(parent), name)
        tmp = self._tmp()
        try:
            copy_node(node.path, tmp, node.st, owner=self._as_root)
            new_ino = os.lstat(tmp).st_ino
            os.rename(tmp, target)
        except BaseException:
            discard(tmp)
            raise
        self._origin_ino[new_ino] = node.st.st_ino
        if stat.S_ISDIR(node.st.st_mode):
            self._view.invalidate()
        return target

    def copy_up(self, rel: str) -> str:
        """Make sure the entry *rel* lives in the upper layer; return its upper path.

        A directory is copied up without its children (it stays merged with the layers below).
        """
        node = self._view.get(rel)
        if node.layer == 0:
            return node.path
        if stat.S_ISDIR(node.st.st_mode):
            return self._upper_dir(rel)
        return self._copy_up_node(rel, node)

    def _copy_up_tree(self, rel: str) -> str:
        """Copy the directory *rel* up with everything the merged view shows below it."""
        path = self._upper_dir(rel)
        for name, node in self._view.listdir(rel).items():
            child = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(node.st.st_mode):
                if node.layer > 0 or len(self._view.chain(child)) > 1:
                    self._copy_up_tree(child)
            elif node.layer > 0:
                self._copy_up_node(child, node)
        return path

    def _new_entry(self, rel: str) -> tuple[str, bool]:
        """Prepare the upper layer for creating *rel*.

        :returns: the upper path to create, and whether a whiteout was removed from there
            (then something of a lower layer was deleted at *rel*).
        """
        parent, name = split(rel)
        if name.startswith(WHITEOUT_PREFIX):
            # Such a name would read back as a whiteout: the format cannot hold it.
            raise fail(errno.EINVAL, rel)
        directory = self._upper_dir(parent)
        return os.path.join(directory, name), clear_whiteout(directory, name)

    def _created(self, path: str) -> None:
        """Give a new upper entry its creator's ownership (when the server runs as root)."""
        if not self._as_root:
            return
        uid, gid, _pid = mfusepy.fuse_get_context()
        if uid or gid:
            os.lchown(path, uid, gid)

    def _restore_whiteout(self, rel: str, had_whiteout: bool) -> None:
        if had_whiteout:
            parent, name = split(rel)
            make_whiteout(self._upper_dir(parent), name)

    def _remove(self, rel: str, *, directory: bool) -> None:
        node = self._view.get(rel)
        is_dir = stat.S_ISDIR(node.st.st_mode)
        if directory and not is_dir:
            raise fail(errno.ENOTDIR, rel)
        if not directory and is_dir:
            raise fail(errno.EISDIR, rel)
        if directory and self._view.entries(rel):
            raise fail(errno.ENOTEMPTY, rel)
        below = self._view.below(rel)
        parent, name = split(rel)
        if node.layer == 0:
            if is_dir:
                remove_tree(node.path)  # only whiteouts and markers are left in it
            else:
                os.unlink(node.path)
            self._forget(node.st)
        if below:
            make_whiteout(self._upper_dir(parent), name)
        if is_dir:
            self._view.invalidate()

    def _changed(self, rel: str, change: Callable[..., object] | None = None, *args: Any) -> None:
        """Copy *rel* up, apply *change* to it, and tell the kernel about its other names."""
        real = self.copy_up(rel)
        if change is not None:
            change(real, *args)
        if self._links.tracking:
            self._links.changed(self._links.key(os.lstat(real)), rel)


def discard(path: str) -> None:
    """Remove a half-made entry, whatever it is, ignoring errors."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass
