"""Writing the upper layer in the kernel overlayfs format: copies, whiteouts, opaque markers.

These are plain functions on real paths, used by :mod:`.ops`.  What they write is what
:mod:`pytest_overlay._layers` and :func:`pytest_overlay._diff.diff_upper` read:

* a whiteout is a character device 0/0 (as the kernel writes it); where ``mknod`` is refused
  (an unprivileged server without ``CAP_MKNOD``) it is an empty regular file ``.wh.<name>``;
* an opaque directory carries ``trusted.overlay.opaque=y`` as root, ``user.overlay.opaque=y``
  otherwise (as the kernel's ``userxattr`` mode does), or, where the filesystem has no such
  xattrs, a ``.wh..wh..opq`` file.
"""

from __future__ import annotations

import errno
import os
import stat

from pytest_overlay._filecopy import OVERLAY_XATTR_PREFIXES, copy_extents, copy_xattrs
from pytest_overlay._layers import OPAQUE_SENTINEL, WHITEOUT_PREFIX, is_whiteout

__all__ = [
    "PRIVATE_XATTR_PREFIXES",
    "clear_whiteout",
    "copy_node",
    "is_private_xattr",
    "make_whiteout",
    "remove_tree",
    "set_opaque",
    "strip_markers",
]

PRIVATE_XATTR_PREFIXES = OVERLAY_XATTR_PREFIXES
"""Xattrs that belong to the overlay format: hidden from the merged view, never copied up."""

# mknod of a whiteout refused: no CAP_MKNOD (EPERM), or the filesystem has no device nodes.
_NO_MKNOD = frozenset({errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EINVAL})
# setxattr refused: no such namespace here (ENOTSUP), or not allowed (EPERM/EACCES).
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES})


def is_private_xattr(name: str) -> bool:
    """Tell whether the xattr *name* belongs to the overlay format rather than to the file."""
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def copy_node(src: str, dst: str, st: os.stat_result, *, as_root: bool) -> None:
    """Create *dst* as a copy of the entry *src* whose ``lstat`` is *st*.

    A directory is created empty; a regular file gets the content; symbolic links, FIFOs,
    sockets and device nodes are recreated.  Then xattrs (not the overlay's own), the owner
    (when *as_root*), the permission bits and the access and modification times are copied.
    *dst* is meant to be in the work directory, renamed into the upper layer by the caller, so
    that a half-made copy is never visible.
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                copy_extents(src_fd, fd)
            finally:
                os.close(src_fd)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    else:
        os.mknod(dst, mode, st.st_rdev)
    copy_xattrs(src, dst)
    if as_root:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(mode):
        os.chmod(dst, stat.S_IMODE(mode))  # after chown, which clears setuid and setgid
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def make_whiteout(directory: str, name: str) -> None:
    """Hide *name* of the layers below in the upper *directory*.

    :raises OSError: if neither a 0/0 character device nor a ``.wh.`` file can be made.
    """
    try:
        os.mknod(os.path.join(directory, name), stat.S_IFCHR, 0)
    except OSError as exc:
        if exc.errno not in _NO_MKNOD:
            raise
        fd = os.open(
            os.path.join(directory, WHITEOUT_PREFIX + name),
            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        os.close(fd)


def clear_whiteout(directory: str, name: str) -> bool:
    """Remove a whiteout of *name* (either format) from the upper *directory*.

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
    try:
        os.unlink(os.path.join(directory, WHITEOUT_PREFIX + name))
    except FileNotFoundError:
        pass
    else:
        found = True
    return found


def set_opaque(path: str, *, as_root: bool) -> None:
    """Mark the upper directory *path* opaque, so that it hides the same directory below."""
    name = "trusted.overlay.opaque" if as_root else "user.overlay.opaque"
    try:
        os.setxattr(path, name, b"y", follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_XATTR:
            raise
        fd = os.open(
            os.path.join(path, OPAQUE_SENTINEL), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        os.close(fd)


def _is_marker(entry: os.DirEntry[str]) -> bool:
    st = entry.stat(follow_symlinks=False)
    if entry.name.startswith(WHITEOUT_PREFIX):
        return entry.name != OPAQUE_SENTINEL and stat.S_ISREG(st.st_mode)
    return is_whiteout(st)


def strip_markers(path: str) -> None:
    """Remove every whiteout below the upper directory *path* (they hide nothing any more)."""
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if _is_marker(entry):
            os.unlink(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            strip_markers(entry.path)


def remove_tree(path: str) -> None:
    """Remove the upper directory *path*, which holds nothing but whiteouts and markers."""
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)
