"""Read a stack of read-only overlay layers as one merged tree.

A lower layer may itself be an upper layer captured from an earlier overlay, so the overlay
on-disk formats are honoured inside it, as kernel overlayfs reads them:

* a whiteout is a character device with device number 0/0;
* an opaque directory carries the xattr ``trusted.overlay.opaque`` or ``user.overlay.opaque``
  set to ``y``; it hides the same directory in every layer below it.

Names starting with ``.wh.`` are ordinary names there, as they are to the kernel (issue 18: a
project's own ``.wh.x`` was taken for a whiteout).  Only a layer whose root holds the file
:data:`WHITEOUT_FILES_MARKER` uses the other format, the one of fuse-overlayfs without
``mknod`` and of OCI image layers, which the kernel cannot read: a regular file ``.wh.<name>``
whites out ``<name>``, a ``.wh..wh..opq`` file makes its directory opaque, and no real entry's
name starts with ``.wh.``.  :mod:`._layerwrite` writes that format only where a filesystem can
hold neither device nodes nor xattrs, and marks the layer then.

This module owns the format's names (:data:`WHITEOUT_PREFIX`, :data:`OPAQUE_SENTINEL`, the
overlay's xattrs) and reads it; :mod:`._layerwrite` beside it is the one writer.  It also owns
the rules that merge layers (:func:`topmost`, :func:`merged_dirs`, :func:`merge_listings`),
which :class:`LayerStack` and the FUSE server's ``MergedView`` both apply, each reading and
caching the layers its own way.  Nothing here
follows a symbolic link, opens a file or reads one: only ``lstat``, ``readdir`` and
``getxattr`` are used, so FIFOs and device nodes are harmless.  The layers are assumed not to
change while a :class:`LayerStack` is in use (results are cached).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, final

__all__ = [
    "OPAQUE_SENTINEL",
    "OPAQUE_XATTRS",
    "OVERLAY_XATTR_PREFIXES",
    "WHITEOUT_FILES_MARKER",
    "WHITEOUT_PREFIX",
    "Answer",
    "Entry",
    "LayerStack",
    "is_opaque",
    "is_whiteout",
    "merge_listings",
    "merged_dirs",
    "opaque_xattr",
    "overlay_xattrs",
    "read_layer_dir",
    "topmost",
    "uses_whiteout_files",
    "whiteout_file_markers",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_SENTINEL = ".wh..wh..opq"
WHITEOUT_FILES_MARKER = ".wh..wh..files"
"""At a layer's root: this layer marks whiteouts and opaque directories with ``.wh.`` files."""
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
"""Xattrs that belong to the overlay format (opaque markers and the like), not to the file."""


def overlay_xattrs(*, as_root: bool) -> tuple[str, ...]:
    """The prefixes of the xattrs an overlay keeps for itself, hidden from and refused to
    its users: as root the kernel uses ``trusted.overlay.*`` alone, and ``user.overlay.*`` are
    a file's own; without privileges (``userxattr``) it uses ``user.overlay.*`` (issue 18)."""
    return OVERLAY_XATTR_PREFIXES[:1] if as_root else OVERLAY_XATTR_PREFIXES


# getxattr errors that mean "this directory is not marked opaque", not "something broke":
# ENODATA: no such attribute; ENOTSUP: the filesystem has no xattrs (or not in this namespace);
# EPERM/EACCES: we may not read trusted.* (unprivileged) or the file at all.
_XATTR_ABSENT = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES})
# lstat errors that mean "no such entry in this layer": ENOENT, ENOTDIR (a path component is not
# a directory), ENAMETOOLONG (".wh." + a name near NAME_MAX cannot exist).
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})


@final
@dataclass(frozen=True)
class Entry:
    """One entry of the merged view: where it really lives and its ``lstat`` result."""

    real_path: Path
    """The path of the entry inside the layer that provides it."""
    stat: os.stat_result
    """``lstat`` of :attr:`real_path` (for a layer's root, ``stat``)."""
    layer: int
    """Index of the providing layer in the stack, 0 being the topmost."""


def is_whiteout(st: os.stat_result) -> bool:
    """Tell whether *st* describes a kernel-format whiteout (a character device 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


if sys.platform == "linux":

    def opaque_xattr(path: Path | str) -> str | None:
        """The xattr of :data:`OPAQUE_XATTRS` that marks the directory *path* opaque, if any."""
        for name in OPAQUE_XATTRS:
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _XATTR_ABSENT:
                    continue
                raise
            if value == b"y":
                return name
        return None

else:  # pragma: no cover - no overlay xattrs outside Linux

    def opaque_xattr(path: Path | str) -> str | None:
        """The xattr of :data:`OPAQUE_XATTRS` that marks the directory *path* opaque, if any."""
        return None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise


def uses_whiteout_files(root: Path | str) -> bool:
    """Tell whether the layer *root* uses ``.wh.`` files (see the module docstring)."""
    try:
        return stat.S_ISREG(os.lstat(os.path.join(root, WHITEOUT_FILES_MARKER)).st_mode)
    except OSError:
        return False


def whiteout_file_markers(root: Path | str) -> list[str]:
    """The ``.wh.`` files marking whiteouts and opaque directories in the layer *root*, sorted
    paths relative to it: none unless the layer :func:`uses them <uses_whiteout_files>` (the
    root's :data:`WHITEOUT_FILES_MARKER` itself is not one), as elsewhere they are names."""
    if not uses_whiteout_files(root):
        return []
    markers = []
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        markers += [
            os.path.normpath(os.path.join(rel, name))
            for name in (*dirnames, *filenames)
            if name.startswith(WHITEOUT_PREFIX)
        ]
        # Below a marked layer a directory named .wh.* is a marker too (read_layer_dir
        # never lists it); nothing under it is an entry.
        dirnames[:] = [name for name in dirnames if not name.startswith(WHITEOUT_PREFIX)]
    return sorted(m for m in markers if m != WHITEOUT_FILES_MARKER)


def is_opaque(path: Path, *, whiteout_files: bool = False) -> bool:
    """Tell whether the directory *path* is marked opaque (by xattr, or by sentinel file in a
    layer that uses :func:`whiteout files <uses_whiteout_files>`)."""
    if opaque_xattr(path) is not None:
        return True
    if not whiteout_files:
        return False
    sentinel = _lstat(path / OPAQUE_SENTINEL)
    return sentinel is not None and stat.S_ISREG(sentinel.st_mode)


def read_layer_dir(
    path: Path, *, layer_format: bool = True, whiteout_files: bool = False
) -> tuple[dict[str, os.stat_result], set[str]]:
    """List one directory of a layer, separating real entries from whiteouts.

    :returns: the visible entries by name with their ``lstat`` results, and the set of names
        whited out by this directory (0/0 character devices; with *whiteout_files*, also
        ``.wh.<name>`` files, and then names starting with ``.wh.`` are never entries).
        Without *layer_format* (a plain tree), every entry is listed and nothing whited out.
    :raises OSError: if the directory cannot be listed, or an entry cannot be stat-ed
        (``PermissionError`` for a directory that is readable but not searchable).
    """
    entries: dict[str, os.stat_result] = {}
    whiteouts: set[str] = set()
    with os.scandir(path) as it:
        for dirent in it:
            name = dirent.name
            try:
                st = dirent.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed since readdir
                continue
            if not layer_format:
                entries[name] = st
            elif whiteout_files and name.startswith(WHITEOUT_PREFIX):
                if name != OPAQUE_SENTINEL and stat.S_ISREG(st.st_mode):
                    whiteouts.add(name[len(WHITEOUT_PREFIX) :])
            elif is_whiteout(st):
                whiteouts.add(name)
            else:
                entries[name] = st
    return entries, whiteouts


# The merge rules of kernel overlayfs, for both readers of a layer stack (LayerStack here, the
# FUSE server's MergedView).  Each reader probes a layer its own way (and caches as it may):
# *answer(layer, directory, name)* gives the entry that layer's *directory* holds for *name*
# (None: absent, or a whiteout) and whether the layer hides *name* in the layers below (a
# whiteout, or a ``.wh.`` marker beside the entry).  The rules ask the layers topmost first and
# stop where the layers below no longer matter, so those cost no I/O.  A callback, not a
# generator of answers: a LOOKUP costs a generator's setup more than a call per layer.
_T = TypeVar("_T")
_D = TypeVar("_D")
Answer = Callable[[int, _D, str], tuple[_T | None, bool]]


def topmost(layers: Iterable[tuple[int, _D]], answer: Answer[_D, _T], name: str) -> _T | None:
    """The entry a lookup of *name* finds in the directories *layers* ((layer, directory),
    topmost first): the topmost entry wins; a layer that hides the name ends the search."""
    for layer, directory in layers:
        entry, hides_below = answer(layer, directory, name)
        if entry is not None or hides_below:
            return entry
    return None


def merged_dirs(
    layers: Iterable[tuple[int, _D]],
    answer: Answer[_D, _T],
    name: str,
    is_dir: Callable[[_T], bool],
    is_opaque: Callable[[_T], bool],
) -> list[_T]:
    """The directories merged at *name* in the directories *layers*, topmost first, as for
    :func:`topmost`: every directory down to the first non-directory (which hides the layers
    below it, as does an opaque directory or a layer hiding the name).  *is_opaque* is asked
    only of the directories merged."""
    found: list[_T] = []
    for layer, directory in layers:
        entry, hides_below = answer(layer, directory, name)
        if entry is not None:
            if not is_dir(entry):
                break
            found.append(entry)
            if is_opaque(entry):
                break
        if hides_below:
            break
    return found


def merge_listings(layers: Iterable[tuple[Mapping[str, _T], AbstractSet[str]]]) -> dict[str, _T]:
    """The merged listing of a directory from its layers' listings, topmost first, each with
    the names it whites out: a name comes from the topmost layer listing it, unless a layer
    above whites it out."""
    merged: dict[str, _T] = {}
    hidden: set[str] = set()
    for entries, whiteouts in layers:
        for name, entry in entries.items():
            if name not in merged and name not in hidden:
                merged[name] = entry
        hidden |= whiteouts
    return merged


def _is_dir(entry: Entry) -> bool:
    return stat.S_ISDIR(entry.stat.st_mode)


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


@final
class LayerStack:
    """The merged, read-only view of lower layers, topmost first.

    Lookups follow kernel overlayfs rules: the topmost layer holding a name provides it; a
    whiteout, an opaque directory or a non-directory stops the search in the layers below.
    The layers' own root directories may be symbolic links (they are followed, and their
    opaque markers are ignored, as the kernel does for the root); nothing inside is followed.

    :param lowers: the layer directories, topmost first.  May be empty (an empty tree).
    """

    def __init__(self, lowers: Sequence[Path]) -> None:
        self._layers = tuple(Path(p) for p in lowers)
        self._whiteout_files = tuple(uses_whiteout_files(p) for p in self._layers)
        self._dirs: dict[str, tuple[tuple[int, Path], ...]] = {}

    @property
    def layers(self) -> tuple[Path, ...]:
        """The layer directories, topmost first."""
        return self._layers

    def _probe(self, index: int, directory: Path, name: str) -> tuple[os.stat_result | None, bool]:
        """Look *name* up in the layer *index*'s *directory*.

        :returns: the entry's ``lstat`` (None if absent or a whiteout), and whether this layer
            hides *name* in the layers below it (a whiteout of the layer's format).
        """
        files = self._whiteout_files[index]
        if files and name.startswith(WHITEOUT_PREFIX):
            return None, False  # a marker, never an entry, in that format
        st = _lstat(directory / name)
        if st is not None and is_whiteout(st):
            return None, True
        if not files:
            return st, False
        marker = _lstat(directory / (WHITEOUT_PREFIX + name))
        return st, marker is not None and stat.S_ISREG(marker.st_mode)

    def _answer(self, index: int, directory: Path, name: str) -> tuple[Entry | None, bool]:
        """The layer *index*'s :data:`Answer` for *name* in its *directory*."""
        st, hides_below = self._probe(index, directory, name)
        return (None if st is None else Entry(directory / name, st, index)), hides_below

    def _opaque(self, entry: Entry) -> bool:
        return is_opaque(entry.real_path, whiteout_files=self._whiteout_files[entry.layer])

    def _layer_dirs(self, rel: str) -> tuple[tuple[int, Path], ...]:
        """The (layer, real path) of every directory merged at *rel*, topmost first.

        Empty when *rel* is not a directory in the merged view.
        """
        cached = self._dirs.get(rel)
        if cached is not None:
            return cached
        result: list[tuple[int, Path]] = []
        if rel == "":
            for index, root in enumerate(self._layers):
                if not root.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "Lower layer is not a directory", root)
                result.append((index, root))
        else:
            parent, name = _split(rel)
            if name:
                dirs = merged_dirs(
                    self._layer_dirs(parent), self._answer, name, _is_dir, self._opaque
                )
                result.extend((entry.layer, entry.real_path) for entry in dirs)
        found = tuple(result)
        self._dirs[rel] = found
        return found

    def lookup(self, rel: str) -> Entry | None:
        """Find the entry at the POSIX relative path *rel* (``""`` is the root).

        :returns: the topmost visible entry, or None if no layer has it, a whiteout hides it,
            or an ancestor is not a directory in the merged view.
        """
        if rel == "":
            if not self._layers:
                return None
            root = self._layer_dirs("")[0][1]
            return Entry(root, root.stat(), 0)
        parent, name = _split(rel)
        if not name:
            return None
        return topmost(self._layer_dirs(parent), self._answer, name)

    def listdir(self, rel: str) -> dict[str, Entry]:
        """List the merged children of the directory *rel*, sorted by name.

        Upper layers win; whiteouts and opaque directories are honoured.
        Empty when *rel* is not a directory in the merged view.

        :raises OSError: if a layer's directory cannot be listed.
        """
        dirs = dict(self._layer_dirs(rel))
        merged = merge_listings(self._listings(dirs))
        # An Entry for each name shown only: building one costs more than merging a name.
        return {n: Entry(dirs[i] / n, st, i) for n, (i, st) in sorted(merged.items())}

    def _listings(
        self, dirs: Mapping[int, Path]
    ) -> Iterator[tuple[dict[str, tuple[int, os.stat_result]], set[str]]]:
        for index, directory in dirs.items():
            entries, whiteouts = read_layer_dir(
                directory, whiteout_files=self._whiteout_files[index]
            )
            yield {n: (index, st) for n, st in entries.items()}, whiteouts
