"""Copying a file the way a kernel copy-up does: data extents only, and its extended attributes.

Shared by every place that copies a file: the copy backend's per-test copy, kept layers,
synthesised upper layers and the FUSE server's copy-up.  Pure standard library, so the FUSE
server can import it without pytest.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys

__all__ = ["OVERLAY_XATTR_PREFIXES", "copy_extents", "copy_file_data", "copy_xattrs"]

OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
"""Xattrs that belong to the overlay format (whiteouts, opaque markers), not to the file."""

_CHUNK = 1 << 20
# copy_file_range cannot work here (another filesystem, an old kernel, a special file):
# fall back to read and write.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
# An xattr this copy cannot have: no such namespace here (ENOTSUP), not allowed (EPERM,
# EACCES: trusted.* without privileges, security.* under an LSM), or gone meanwhile (ENODATA).
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA})


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    """Copy the bytes ``[start, end)`` of *src_fd* to the same offsets of *dst_fd*."""
    use_range = True
    while start < end:
        count = min(_CHUNK, end - start)
        if use_range:
            try:
                copied = os.copy_file_range(src_fd, dst_fd, count, start, start)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_range = False
                continue
        else:
            data = os.pread(src_fd, count, start)
            copied = len(data)
            view = memoryview(data)
            offset = start
            while view:
                written = os.pwrite(dst_fd, view, offset)
                view, offset = view[written:], offset + written
        if copied == 0:
            return  # the source shrank meanwhile
        start += copied


def copy_extents(src_fd: int, dst_fd: int) -> None:
    """Copy the content of the open regular file *src_fd* into *dst_fd*; holes stay holes.

    Only the data extents are copied (``SEEK_DATA``/``SEEK_HOLE``), so a sparse file of 8 GiB
    with a few bytes in it costs a few bytes and no time.  Linux only.
    """
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nothing but a hole from here on
                raise
            break
        end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        _copy_range(src_fd, dst_fd, start, end)
        offset = end
    os.ftruncate(dst_fd, size)  # a hole at the end still counts in the size


def copy_file_data(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy the content of the regular file *source* into *target* (created or truncated).

    Holes stay holes on Linux (:func:`copy_extents`); elsewhere it is :func:`shutil.copyfile`.
    """
    if not sys.platform.startswith("linux"):
        shutil.copyfile(source, target, follow_symlinks=False)
        return
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            copy_extents(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def copy_xattrs(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy the extended attributes of *source* to *target*, but the overlay's own.

    An xattr the target cannot have is left out (where the kernel's copy-up would fail the
    write instead): the data matters more to a test than an attribute it may not even read.
    """
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return
        raise
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                raise
