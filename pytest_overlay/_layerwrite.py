"""The one writer of the overlayfs upper-layer format that :mod:`._layers` reads.

Whatever writes a layer goes through here: the FUSE server (copy-up, whiteouts, opaque
directories; :mod:`._fuse.ops`), keeping a test's layer and building snapshot layers
(:func:`copy_layer`), and the copy backend, which has no upper layer of its own
(:func:`synthesize_upper`; and :func:`copy_node` / :func:`copy_metadata` for its copy of the
tree).  What it writes, with one fallback each where the filesystem refuses:

* a whiteout is a character device 0/0, as the kernel writes it; where ``mknod`` is refused
  (a filesystem without device nodes) an empty regular file ``.wh.<name>``;
* an opaque directory carries ``trusted.overlay.opaque=y`` as root, ``user.overlay.opaque=y``
  otherwise (as the kernel's ``userxattr`` mode does) or where ``trusted.*`` is refused, and
  where the filesystem has neither (ramfs, vfat, tmpfs before Linux 6.6) a ``.wh..wh..opq``
  file: kernel overlayfs does not read that one, our reader and the FUSE server do;
* either fallback first marks the layer's root (:data:`._layers.WHITEOUT_FILES_MARKER`): only
  then are ``.wh.`` names markers; elsewhere they are ordinary names, as to the kernel;
* a copied entry keeps its xattrs (but the overlay's own), its permission bits and times, and
  as root its owner.

Standard library only: the FUSE server imports it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from ._diff import ChangeKind, TreeDiff
from ._files import copy_file_data
from ._layers import (
    OPAQUE_SENTINEL,
    OPAQUE_XATTRS,
    WHITEOUT_FILES_MARKER,
    WHITEOUT_PREFIX,
    is_whiteout,
    opaque_xattr,
    overlay_xattrs,
)
from ._oscompat import O_CLOEXEC

__all__ = [
    "clear_whiteout",
    "copy_layer",
    "copy_metadata",
    "copy_node",
    "copy_xattrs",
    "is_root",
    "make_whiteout",
    "set_opaque",
    "strip_markers",
    "synthesize_upper",
]

CopyData = Callable[[str, str], None]
"""Copies a regular file's content from the first path to the second (created)."""

# mknod refused: no CAP_MKNOD (EPERM; EACCES under some LSMs), or a filesystem without device
# nodes (EOPNOTSUPP, EINVAL).
_NO_MKNOD = frozenset({errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EINVAL})
# An xattr this filesystem or this process cannot have: no such namespace here (ENOTSUP), not
# allowed (EPERM, EACCES: trusted.* without privileges, security.* under an LSM), or gone since
# it was listed (ENODATA).
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA})
# lchown refused where a copy need not be exact: an id our user namespace does not map
# (EINVAL), a filesystem without owners (EPERM).
_NO_OWNER = frozenset({errno.EINVAL, errno.EPERM})


def is_root() -> bool:
    """Whether files may be given any owner (the effective user is root)."""
    return sys.platform != "win32" and os.geteuid() == 0


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | O_CLOEXEC, 0o600))


# -- markers ------------------------------------------------------------------------------


def _use_whiteout_files(layer: str) -> None:
    """Mark the layer *layer* as marking whiteouts with ``.wh.`` files (see :mod:`._layers`)."""
    marker = os.path.join(layer, WHITEOUT_FILES_MARKER)
    if not os.path.lexists(marker):
        _touch(marker)


def make_whiteout(directory: str, name: str, *, layer: str) -> bool:
    """Hide *name* of the layers below in the upper *directory* of the layer *layer*.

    :returns: whether it took a ``.wh.`` file (the layer is marked so, if it was not).
    :raises OSError: if neither a 0/0 character device nor a ``.wh.`` file can be made.
    """
    if sys.platform != "win32":
        try:
            os.mknod(os.path.join(directory, name), stat.S_IFCHR, 0)
            return False
        except OSError as exc:
            if exc.errno not in _NO_MKNOD:
                raise
    _use_whiteout_files(layer)
    _touch(os.path.join(directory, WHITEOUT_PREFIX + name))
    return True


def clear_whiteout(directory: str, name: str, *, whiteout_files: bool) -> bool:
    """Remove a whiteout of *name* from the upper *directory* (a ``.wh.`` file only in a layer
    that uses them: elsewhere such a file is a file of the project's).

    :returns: whether there was one, i.e. whether something below was deleted at *name*.
    """
    found = False
    path = os.path.join(directory, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if is_whiteout(st):
            os.unlink(path)
            found = True
    if not whiteout_files:
        return found
    try:
        os.unlink(os.path.join(directory, WHITEOUT_PREFIX + name))
    except FileNotFoundError:
        pass
    else:
        found = True
    return found


def set_opaque(path: str, *, as_root: bool, layer: str) -> bool:
    """Mark the upper directory *path* of the layer *layer* opaque, so that it hides the same
    directory below.

    *as_root* tries ``trusted.overlay.opaque`` first; then ``user.overlay.opaque``; then the
    ``.wh..wh..opq`` sentinel (the layer is marked as using ``.wh.`` files).

    :returns: whether it took the sentinel.
    """
    if sys.platform == "linux":
        for name in OPAQUE_XATTRS if as_root else OPAQUE_XATTRS[1:]:
            try:
                os.setxattr(path, name, b"y", follow_symlinks=False)
                return False
            except OSError as exc:
                if exc.errno not in _NO_XATTR:
                    raise
    _use_whiteout_files(layer)
    _touch(os.path.join(path, OPAQUE_SENTINEL))
    return True


def _is_marker(entry: os.DirEntry[str], whiteout_files: bool) -> bool:
    st = entry.stat(follow_symlinks=False)
    if whiteout_files and entry.name.startswith(WHITEOUT_PREFIX):
        return entry.name != OPAQUE_SENTINEL and stat.S_ISREG(st.st_mode)
    return is_whiteout(st)


def strip_markers(path: str, *, whiteout_files: bool) -> None:
    """Remove every whiteout below the upper directory *path* (they hide nothing any more)."""
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if _is_marker(entry, whiteout_files):
            os.unlink(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            strip_markers(entry.path, whiteout_files=whiteout_files)


# -- copying entries ------------------------------------------------------------------------


def copy_xattrs(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy the extended attributes of *source* to *target*, but the overlay's own
    (:func:`._layers.overlay_xattrs`: as root, ``user.overlay.*`` are the file's).

    An xattr the target cannot have is left out (where the kernel's copy-up would fail the
    write instead): the data matters more to a test than an attribute it may not even read.
    """
    if sys.platform != "linux":
        return
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return
        raise
    private = overlay_xattrs(as_root=is_root())
    for name in names:
        if name.startswith(private):
            continue
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                raise


def copy_metadata(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    st: os.stat_result,
    *,
    owner: bool,
    exact: bool = True,
) -> None:
    """Give *target* the xattrs, permission bits and times of *source* (whose ``lstat`` is
    *st*), and with *owner* its owner and group.  Not *exact*, an owner that the target cannot
    have is left out."""
    copy_xattrs(source, target)
    if owner:
        try:
            os.lchown(target, st.st_uid, st.st_gid)
        except OSError as exc:
            if exact or exc.errno not in _NO_OWNER:
                raise
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid and setgid
    times = (st.st_atime_ns, st.st_mtime_ns)
    if os.utime in os.supports_follow_symlinks:
        os.utime(target, ns=times, follow_symlinks=False)
    elif not stat.S_ISLNK(st.st_mode):  # Windows: a link's own times cannot be set
        os.utime(target, ns=times)


def copy_node(
    source: str,
    target: str,
    st: os.stat_result,
    *,
    owner: bool,
    exact: bool = True,
    copy_data: CopyData = copy_file_data,
) -> bool:
    """Create *target* as a copy of the entry *source* whose ``lstat`` is *st*.

    A directory is created empty; a regular file gets the content (by *copy_data*); symbolic
    links, FIFOs, sockets and device nodes are recreated; then :func:`copy_metadata`.  The FUSE
    server makes *target* in its work directory and renames it into the upper layer, so that a
    half-made copy is never visible.

    :returns: False where, not *exact*, a socket or device node could not be made without
        privileges (it carries no content, so a copy of the tree or a kept layer goes without).
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        copy_data(source, target)
    elif stat.S_ISDIR(mode):
        os.mkdir(target, 0o700)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(target, 0o600)
    else:
        try:
            os.mknod(target, mode, st.st_rdev)
        except OSError as exc:
            if exact or exc.errno not in _NO_MKNOD:
                raise
            return False
    copy_metadata(source, target, st, owner=owner, exact=exact)
    return True


# -- whole layers ---------------------------------------------------------------------------


def copy_layer(source: Path, target: Path) -> int:
    """Copy the upper layer *source* to *target* (created), whiteouts and opaque markers
    included, each in the format *target*'s filesystem can hold; returns the bytes of file data.
    """
    owner = is_root()
    os.mkdir(target, 0o700)
    total = _copy_layer_dir(os.fspath(source), os.fspath(target), owner, os.fspath(target))
    # A layer's root may be a symbolic link to it (followed, as the reader does).
    copy_metadata(source, target, os.stat(source), owner=owner, exact=False)
    return total


def _copy_layer_dir(source: str, target: str, owner: bool, layer: str) -> int:
    total = 0
    with os.scandir(source) as it:
        entries = list(it)
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        out = os.path.join(target, entry.name)
        if is_whiteout(st):
            make_whiteout(target, entry.name, layer=layer)
        elif stat.S_ISDIR(st.st_mode):
            # Filled before its mode is copied, which may forbid writing in it.
            os.mkdir(out, 0o700)
            total += _copy_layer_dir(entry.path, out, owner, layer)
            copy_metadata(entry.path, out, st, owner=owner, exact=False)
        elif copy_node(entry.path, out, st, owner=owner, exact=False) and stat.S_ISREG(st.st_mode):
            total += st.st_size
    marker = opaque_xattr(source)
    if marker is not None:
        set_opaque(target, as_root=marker == OPAQUE_XATTRS[0], layer=layer)
    return total


def synthesize_upper(diff: TreeDiff, new_root: Path, upper: Path) -> int:
    """Write into *upper* (created) the layer that turns the lowers into *new_root*, given
    *diff*, the changes between them; returns the bytes of file data written."""
    owner = is_root()
    os.mkdir(upper, 0o700)
    directories: dict[str, os.stat_result] = {}
    total = 0
    for change in diff:
        parent, _, name = change.path.rpartition("/")
        _make_parents(new_root, upper, parent, directories)
        target = os.path.join(upper, change.path)
        if change.kind is ChangeKind.DELETED:
            make_whiteout(os.path.join(upper, parent), name, layer=os.fspath(upper))
            continue
        source = os.path.join(new_root, change.path)
        st = os.lstat(source)
        if stat.S_ISDIR(st.st_mode):
            if change.path not in directories:
                os.mkdir(target, 0o700)
                directories[change.path] = st
        elif copy_node(source, target, st, owner=owner, exact=False) and stat.S_ISREG(st.st_mode):
            total += st.st_size
    # Directory modes and times last, deepest first, so read-only ones could be filled; the
    # root too, since a merged view takes its root's mode from the topmost layer.
    for rel in sorted(directories, key=lambda rel: rel.count("/"), reverse=True):
        st = directories[rel]
        copy_metadata(new_root / rel, upper / rel, st, owner=owner, exact=False)
    copy_metadata(new_root, upper, os.stat(new_root), owner=owner, exact=False)
    return total


def _make_parents(
    new_root: Path, upper: Path, parent: str, directories: dict[str, os.stat_result]
) -> None:
    if not parent or parent in directories:
        return
    _make_parents(new_root, upper, parent.rpartition("/")[0], directories)
    os.mkdir(upper / parent, 0o700)
    directories[parent] = os.lstat(new_root / parent)
