"""Generic file operations, the one home of each: copying a file's data the way a kernel
copy-up does (data extents only, holes left as holes), and removing a tree whatever modes a
test left in it.

Used by the backends, by keeping and the layer cache, and by the FUSE server (through
:mod:`._layerwrite`), so it is standard library only.  What belongs to the overlay format
(whiteouts, opaque markers, which xattrs are the overlay's) is in :mod:`._layers` and
:mod:`._layerwrite`, not here.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys

from ._oscompat import O_CLOEXEC, O_NOFOLLOW

__all__ = ["copy_extents", "copy_file_data", "remove_tree"]

_CHUNK = 1 << 20
# copy_file_range cannot work here (another filesystem, an old kernel, a special file):
# fall back to read and write.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
# rmdir of a directory with something in it (POSIX allows either errno), or of one whose
# content we may not remove yet: remove_tree then goes in and opens it up.
_NOT_EMPTY = frozenset({errno.ENOTEMPTY, errno.EEXIST, errno.EACCES, errno.EPERM})


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
    """Copy the content of the regular file *source* into *target* (created mode 0600, or
    truncated); the caller gives it its mode.

    Holes stay holes on Linux (:func:`copy_extents`); elsewhere it is :func:`shutil.copyfile`.
    """
    if not sys.platform.startswith("linux"):
        shutil.copyfile(source, target, follow_symlinks=False)
        return
    src = os.open(source, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o600)
        try:
            copy_extents(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove *path* and everything below it; nothing happens if it does not exist.

    Directories a test left read-only or mode 000 below *path* are made writable first.  A
    symbolic link is removed, never followed, and neither is anything outside *path* touched.
    """
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top)
        return
    try:
        os.rmdir(top)  # the usual case in the FUSE server: nothing (but markers) below
        return
    except OSError as exc:
        if exc.errno not in _NOT_EMPTY:
            raise

    opened: set[str] = set()

    def make_writable(function: object, failed: str, exc: object) -> None:
        # What failed is in a directory we may not write or search: open it up and go on,
        # once (shutil calls this inside its except clause, so a bare raise re-raises).
        if failed in opened:
            raise  # opening it up did not help: not ours to change
        opened.add(failed)
        try:
            if failed != top:
                os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                rmtree(failed)
            else:
                os.unlink(failed)
        except FileNotFoundError:
            pass

    def rmtree(target: str) -> None:
        if sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=make_writable)
        else:  # pragma: no cover - Python 3.11
            shutil.rmtree(target, onerror=make_writable)

    rmtree(top)
