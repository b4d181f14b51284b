"""The merged, read-write view of an upper layer over read-only lower layers.

Lookups follow kernel overlayfs: the topmost layer holding a name provides it; a whiteout, an
opaque directory or a non-directory hides the layers below.  Those rules are
:mod:`pytest_overlay._layers`' (shared with :class:`~pytest_overlay._layers.LayerStack`); this
module answers them for one layer at a time, with its own caches.  A layer uses the kernel's format,
or, where its root says so, ``.wh.`` files (:mod:`pytest_overlay._layers` reads both); in the
kernel's format, names starting with ``.wh.`` are ordinary names.
Unlike :class:`pytest_overlay._layers.LayerStack`, the topmost layer (the upper) changes, so
the directory cache is dropped (:meth:`MergedView.invalidate`) whenever a directory's makeup
changes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, final

from pytest_overlay._layers import (
    OPAQUE_SENTINEL,
    WHITEOUT_PREFIX,
    is_opaque,
    is_whiteout,
    merge_listings,
    merged_dirs,
    read_layer_dir,
    topmost,
    uses_whiteout_files,
)

__all__ = ["Entry", "MergedView", "Node", "fail", "split"]

# lstat errors that mean "this layer has no such entry".  Not ENAMETOOLONG: a path beyond
# PATH_MAX may well exist, and the caller must hear that it cannot be reached, as it would
# from the kernel, rather than that it is not there.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})
# A whiteout marker whose name is too long cannot exist.
_NO_MARKER = _ABSENT | {errno.ENAMETOOLONG}


class Node(NamedTuple):
    """One entry of the merged view."""

    path: str
    """Its real path inside the layer that provides it."""
    st: os.stat_result
    """``lstat`` of :attr:`path`."""
    layer: int
    """The providing layer: 0 is the upper layer, 1 the topmost lower layer, and so on."""


class Entry(NamedTuple):
    """One name of a merged directory listing, with only what ``readdir`` reports."""

    layer: int
    """The providing layer, numbered as in :class:`Node`."""
    ino: int
    """The inode number in that layer."""
    kind: int
    """The file type bits of ``st_mode`` (``stat.S_IFMT``)."""


def _scan_layer_dir(
    directory: str, layer: int, whiteout_files: bool
) -> tuple[dict[str, Entry], frozenset[str]]:
    """The entries of one *layer*'s *directory* and the names it whites out.

    ``d_type`` gives the types, so only character devices (which may be whiteouts) and file
    systems without ``d_type`` cost an ``lstat``.
    """
    entries: dict[str, Entry] = {}
    whiteouts: set[str] = set()
    with os.scandir(directory) as listing:
        for dirent in listing:
            name = dirent.name
            try:
                if whiteout_files and name.startswith(WHITEOUT_PREFIX):
                    if name != OPAQUE_SENTINEL and dirent.is_file(follow_symlinks=False):
                        whiteouts.add(name[len(WHITEOUT_PREFIX) :])
                    continue
                if dirent.is_dir(follow_symlinks=False):
                    kind = stat.S_IFDIR
                elif dirent.is_file(follow_symlinks=False):
                    kind = stat.S_IFREG
                elif dirent.is_symlink():
                    kind = stat.S_IFLNK
                else:
                    st = dirent.stat(follow_symlinks=False)
                    if is_whiteout(st):
                        whiteouts.add(name)
                        continue
                    kind = stat.S_IFMT(st.st_mode)
            except FileNotFoundError:  # removed since readdir
                continue
            entries[name] = _new_tuple(Entry, (layer, dirent.inode(), kind))
    return entries, frozenset(whiteouts)


# Building a NamedTuple through its generated __new__ costs a Python call, and these are
# built once per LOOKUP or per name listed.
_new_tuple = tuple.__new__


def _is_dir(node: Node) -> bool:
    return stat.S_ISDIR(node.st.st_mode)


def split(rel: str) -> tuple[str, str]:
    """``"a/b/c"`` -> ``("a/b", "c")``; ``"a"`` -> ``("", "a")``."""
    parent, _, name = rel.rpartition("/")
    return parent, name


def fail(err: int, rel: str) -> OSError:
    """The OSError that tells the kernel *err* (mfusepy turns it into ``-err``)."""
    return OSError(err, os.strerror(err), rel)


def _lstat(path: str, absent: frozenset[int] = _ABSENT) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in absent:
            return None
        raise


@final
class MergedView:
    """The merged tree of *layers* (real directories, topmost first; 0 is the upper layer)."""

    def __init__(self, layers: Sequence[str]) -> None:
        # Paths are joined with an f-string (os.path.join costs as much as the lstat it
        # feeds), so no layer may end in a separator; "/" itself gives "//name", still valid.
        self._layers = tuple(os.path.normpath(layer) for layer in layers)
        # Per layer: whether it marks whiteouts with .wh. files (the upper's may turn on,
        # :meth:`use_whiteout_files`).
        self.whiteout_files = [uses_whiteout_files(layer) for layer in self._layers]
        # Merged directory -> its (layer, real directory) parts, topmost first; () for a path
        # that is no directory.
        self._dirs: dict[str, tuple[tuple[int, str], ...]] = {}
        # Real directory of a lower layer -> the names in it.  Lower layers never change while
        # mounted, so one listing answers every later lookup there: a name that is not listed
        # costs no lstat, and neither does the whiteout marker of a name that has none.
        self._lower_names: dict[str, frozenset[str]] = {}
        # Real directory of a lower layer -> its readdir entries and whiteouts, for the same
        # reason.
        self._lower_scans: dict[str, tuple[dict[str, Entry], frozenset[str]]] = {}

    def invalidate(self) -> None:
        """Forget cached directories: a directory was made, removed, moved or made opaque."""
        self._dirs.clear()

    def use_whiteout_files(self) -> None:
        """The upper layer has begun to mark whiteouts with ``.wh.`` files."""
        self.whiteout_files[0] = True
        self.invalidate()

    def _names(self, directory: str) -> frozenset[str]:
        names = self._lower_names.get(directory)
        if names is None:
            try:
                names = frozenset(os.listdir(directory))
            except OSError:
                names = frozenset()
            self._lower_names[directory] = names
        return names

    def chain(self, rel: str) -> tuple[tuple[int, str], ...]:
        """The real directories merged at *rel*, topmost first (empty: not a directory)."""
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        result: list[tuple[int, str]] = []
        if rel == "":
            result.extend(enumerate(self._layers))  # the kernel ignores opaque roots too
        else:
            parent, name = split(rel)
            dirs = merged_dirs(self.chain(parent), self._answer, name, _is_dir, self._opaque)
            result.extend((node.layer, node.path) for node in dirs)
        found = tuple(result)
        self._dirs[rel] = found
        return found

    def lookup(self, rel: str) -> Node | None:
        """The entry at the relative path *rel* (``""`` is the root), or None."""
        if rel == "":
            # With a trailing slash: the upper may be a /proc/self/fd/N link to it (see
            # server.serve's over_itself), which lstat would describe, not follow.
            root = os.path.join(self._layers[0], "")
            return _new_tuple(Node, (root, os.lstat(root), 0))
        parent, _, name = rel.rpartition("/")
        chain = self._dirs.get(parent)
        return topmost(self.chain(parent) if chain is None else chain, self._answer, name)

    def _answer(self, layer: int, directory: str, name: str) -> tuple[Node | None, bool]:
        """The *layer*'s :data:`~pytest_overlay._layers.Answer` for *name* in its *directory*.

        Every LOOKUP the kernel sends comes here once per layer asked, so this is one
        function, with the common case first: a listed lower name with no marker, one
        ``lstat``.
        """
        path = f"{directory}/{name}"
        files = self.whiteout_files[layer]
        names = self._lower_names.get(directory) if layer else None
        if (
            names is not None
            and name in names
            and not (files and name.startswith(WHITEOUT_PREFIX))
            and WHITEOUT_PREFIX + name not in names
        ):
            st = _lstat(path)
            if st is not None and not (stat.S_ISCHR(st.st_mode) and is_whiteout(st)):
                return _new_tuple(Node, (path, st, layer)), False
        if not files:
            st = _lstat(path) if layer == 0 or name in self._names(directory) else None
            if st is None:
                return None, False
            if stat.S_ISCHR(st.st_mode) and is_whiteout(st):
                return None, True
            return _new_tuple(Node, (path, st, layer)), False
        if name.startswith(WHITEOUT_PREFIX):
            return None, False  # a marker in this format, never an entry
        marker_name = WHITEOUT_PREFIX + name
        if layer > 0:
            names = self._names(directory)
            st = _lstat(path) if name in names else None
            has_marker = marker_name in names
        else:
            st = _lstat(path)
            has_marker = True  # the upper layer changes: look
        if st is not None and stat.S_ISCHR(st.st_mode) and is_whiteout(st):
            return None, True
        node = None if st is None else _new_tuple(Node, (path, st, layer))
        if not has_marker:
            return node, False
        marker = _lstat(f"{directory}/{marker_name}", _NO_MARKER)
        return node, marker is not None and stat.S_ISREG(marker.st_mode)

    def _opaque(self, node: Node) -> bool:
        return is_opaque(Path(node.path), whiteout_files=self.whiteout_files[node.layer])

    def get(self, rel: str) -> Node:
        node = self.lookup(rel)
        if node is None:
            raise fail(errno.ENOENT, rel)
        return node

    def below(self, rel: str) -> bool:
        """Whether a lower layer shows something at *rel*, whatever the upper holds there."""
        parent, name = split(rel)
        lowers = [(layer, directory) for layer, directory in self.chain(parent) if layer]
        return topmost(lowers, self._answer, name) is not None

    def _scan(self, layer: int, directory: str) -> tuple[dict[str, Entry], frozenset[str]]:
        files = self.whiteout_files[layer]
        if layer == 0:
            return _scan_layer_dir(directory, layer, files)
        cached = self._lower_scans.get(directory)
        if cached is None:
            cached = self._lower_scans[directory] = _scan_layer_dir(directory, layer, files)
        return cached

    def entries(self, rel: str) -> Mapping[str, Entry]:
        """The merged children of the directory *rel*, by name, as ``readdir`` shows them.

        Cheaper than :meth:`listdir`: no ``lstat`` per name.  Read-only: it may be a cache.
        """
        chain = self.chain(rel)
        if len(chain) == 1:  # most directories: nothing to merge
            return self._scan(*chain[0])[0]
        return merge_listings([self._scan(layer, directory) for layer, directory in chain])

    def listdir(self, rel: str) -> dict[str, Node]:
        """The merged children of the directory *rel*, by name."""
        dirs = dict(self.chain(rel))
        merged = merge_listings(self._listings(dirs))
        # A Node for each name shown only: building one costs more than merging a name.
        return {n: _new_tuple(Node, (f"{dirs[i]}/{n}", st, i)) for n, (i, st) in merged.items()}

    def _listings(
        self, dirs: Mapping[int, str]
    ) -> Iterator[tuple[dict[str, tuple[int, os.stat_result]], set[str]]]:
        for layer, directory in dirs.items():
            entries, whiteouts = read_layer_dir(
                Path(directory), whiteout_files=self.whiteout_files[layer]
            )
            yield {n: (layer, st) for n, st in entries.items()}, whiteouts
