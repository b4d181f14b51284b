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
from pytest_overlay._layerwrite import clear_whiteout, copy_node, make_whiteout, set_opaque

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
    # Names libfuse gave files unlinked while open (``.fuse_hidden*``) -> where the file is:
    # moved out of the upper layer into the work directory, or still in its lower layer.
    _hidden: dict[str, str]
    # Upper inode -> how many of its links are hidden files (not counted in st_nlink).
    _hidden_links: dict[int, int]

    # -- the merged view ------------------------------------------------------------------

    def _node(self, rel: str) -> Node:
        """The merged entry *rel*, or the open file libfuse hid under that name."""
        if self._hidden and rel in self._hidden:
            real = self._hidden[rel]
            layer = 0 if real.startswith(self._work + "/") else 1
            return Node(real, os.lstat(real), layer)
        return self._view.get(rel)

    def _whiteout(self, directory: str, name: str) -> None:
        if make_whiteout(directory, name, layer=self._upper):
            self._view.use_whiteout_files()

    def _opaque(self, path: str) -> None:
        if set_opaque(path, as_root=self._as_root, layer=self._upper):
            self._view.use_whiteout_files()

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
        is_dir = stat.S_ISDIR(node.st.st_mode)
        if is_dir or node.st.st_nlink == 1:
            # The kernel keeps the lower inode number across a copy-up only where the copy
            # is still the one file it was (ovl_getattr): a lower hard link is broken by the
            # copy-up, and the copy shows its own number, not its former partners'.
            self._origin_ino[new_ino] = node.st.st_ino
        if is_dir:
            self._view.invalidate()
        self._copied_up(rel, node, target)
        return target

    def _copied_up(self, rel: str, node: Node, target: str) -> None:
        """*rel* now lives at *target* in the upper layer (the handles follow: :mod:`.ops`)."""

    def copy_up(self, rel: str) -> str:
        """Make sure the entry *rel* lives in the upper layer; return its upper path.

        A directory is copied up without its children (it stays merged with the layers below).
        """
        if self._hidden and rel in self._hidden:
            return self._hidden_copy(rel)
        node = self._view.get(rel)
        if node.layer == 0:
            return node.path
        if stat.S_ISDIR(node.st.st_mode):
            return self._upper_dir(rel)
        return self._copy_up_node(rel, node)

    def _hidden_copy(self, rel: str) -> str:
        """The work directory's path of a hidden open file that is being changed."""
        real = self._hidden[rel]
        if real.startswith(self._work + "/"):
            return real
        # A lower file unlinked while open for reading only: the kernel cannot copy it up
        # (its name is a whiteout now) and answers EEXIST to fchmod, fchown, fsetxattr.
        raise fail(errno.EEXIST, rel)

    def _hide(self, rel: str, hidden: str) -> None:
        """libfuse hides the open file *rel* as *hidden* instead of unlinking it (POSIX: an
        unlinked file lives on while it is open).  The name goes as :meth:`_remove` takes
        it; the file moves to the work directory (an upper file) or stays where it is (a
        lower one), and every request for *hidden* is served from there until libfuse
        unlinks it at the last close."""
        node = self._view.get(rel)
        if stat.S_ISDIR(node.st.st_mode):
            raise fail(errno.EISDIR, rel)
        real = node.path
        if node.layer == 0:
            real = self._tmp()
            os.rename(node.path, real)
            self._hidden_links[node.st.st_ino] = self._hidden_links.get(node.st.st_ino, 0) + 1
        self._hidden[hidden] = real
        self._renamed_handles(rel, hidden)
        if self._view.below(rel):
            parent, name = split(rel)
            self._whiteout(self._upper_dir(parent), name)

    def _unhide(self, hidden: str) -> None:
        """The last handle on a hidden file was closed: the file goes for good."""
        real = self._hidden.pop(hidden)
        if real.startswith(self._work + "/"):
            st = os.lstat(real)
            os.unlink(real)
            self._forget(st)
            left = self._hidden_links.pop(st.st_ino, 1) - 1
            if left:
                self._hidden_links[st.st_ino] = left
        self._renamed_handles(hidden, None)

    def _renamed_handles(self, old: str, new: str | None) -> None:
        """Read handles opened under *old* are now under *new* (:mod:`.ops`)."""

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
        files = self._view.whiteout_files[0]
        if files and name.startswith(WHITEOUT_PREFIX):
            # An upper layer that marks whiteouts with .wh. files (its filesystem has no
            # device nodes) cannot hold such a name: it would read back as a whiteout.
            raise fail(errno.EINVAL, rel)
        directory = self._upper_dir(parent)
        return os.path.join(directory, name), clear_whiteout(directory, name, whiteout_files=files)

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
            self._whiteout(self._upper_dir(parent), name)

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
            self._whiteout(self._upper_dir(parent), name)
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
