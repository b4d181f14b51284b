"""The overlay filesystem served over FUSE: read-only lower layers under one writable upper.

The merged view follows kernel overlayfs: the topmost layer holding a name provides it; a
whiteout, an opaque directory or a non-directory hides the layers below.  Every change is made
in the upper layer in the kernel's on-disk format (see :mod:`pytest_overlay._layerwrite`), so
:func:`pytest_overlay._diff.diff_upper` reads it as it reads a kernel upper layer.  Two things
are deliberately better than the kernel: a directory that exists in a lower layer can be
renamed (it is copied up whole, then moved; the kernel says ``EXDEV``), and a copied-up entry
keeps its inode number for the life of the mount (the kernel needs ``index`` and ``xino``).

This module imports ``mfusepy`` and so only ever runs in the server process.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import mfusepy

from pytest_overlay._files import remove_tree
from pytest_overlay._layers import WHITEOUT_PREFIX, overlay_xattrs
from pytest_overlay._layerwrite import clear_whiteout, strip_markers

from .copyup import UpperWriter
from .links import LinkNames
from .view import MergedView, fail, split

__all__ = ["OverlayOperations"]

# The kernel passes these in utimensat(2)'s tv_nsec, with tv_sec 0; libfuse forwards them.
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
# Open flags that the kernel has handled already, or that the backing file must not get
# (O_DIRECT would need aligned buffers, which a Python bytes object is not).
_STRIP_FLAGS = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_DIRECT", 0)
_STATVFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_namemax",
)


class KernelStat(NamedTuple):
    """What the kernel is told of one entry."""

    st: os.stat_result
    """Its ``lstat`` in the layer that provides it (or ``fstat`` of an open handle)."""
    ino: int
    """The inode number shown: a copied-up entry keeps the one it had below."""
    nlink: int
    """The link count shown: 1 for a directory merged from several layers."""


_new_tuple = tuple.__new__

# The name libfuse gives a file unlinked while open (lib/fuse.c, hidden_name()).
_HIDDEN = re.compile(r"\.fuse_hidden[0-9a-f]{16}")

# libfuse 3's capability bits (fuse_common.h).
_CAP_READDIRPLUS = 1 << 13
_CAP_READDIRPLUS_AUTO = 1 << 14


def _rel(path: str) -> str:
    return path.strip("/")


def _is_write(flags: int) -> bool:
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & (os.O_TRUNC | os.O_APPEND))


class OverlayOperations(UpperWriter, mfusepy.Operations):  # type: ignore[misc]  # mfusepy has no stubs
    """An overlay of *lowers* (topmost first) under the writable *upper*.

    :param work: a directory on the same filesystem as *upper*, where copies are made before
        they are renamed into place.
    :param on_init: called once the kernel has sent ``FUSE_INIT`` (the mount is live).
    :param rename_lower_dirs: rename directories that a lower layer has (the default); False
        answers ``EXDEV`` as kernel overlayfs does without ``redirect_dir``.
    :param links: where the names of hard-linked files are kept, so that a change through one
        reaches the kernel's view of the others (see :mod:`.links`).

    Caches assume that this object is the only writer of *upper* and that *lowers* never
    change while mounted, which is also what makes long kernel cache timeouts safe.
    """

    use_ns = True  # mfusepy: times are integer nanoseconds, in getattr and in utimens

    def __init__(
        self,
        lowers: Sequence[str | os.PathLike[str]],
        upper: str | os.PathLike[str],
        work: str | os.PathLike[str],
        *,
        on_init: Callable[[], None] | None = None,
        rename_lower_dirs: bool = True,
        links: LinkNames | None = None,
    ) -> None:
        self._rename_lower_dirs = rename_lower_dirs
        self._links = links or LinkNames(None)
        # Writable handles on multiply-linked files: what to invalidate when one is written.
        self._fh_links: dict[int, tuple[tuple[int, int], str]] = {}
        self._upper = os.path.abspath(upper)
        self._work = os.path.abspath(work)
        self._view = MergedView((self._upper, *(os.path.abspath(p) for p in lowers)))
        self._as_root = os.geteuid() == 0
        self._private_xattrs = overlay_xattrs(as_root=self._as_root)
        self._on_init = on_init
        # Inode of a copied-up upper entry -> the inode it had in its lower layer, so that a
        # copy-up does not change st_ino (all layers share one filesystem, so no clashes).
        self._origin_ino: dict[int, int] = {}
        # File handles (real fds) that are open on an upper file for writing -> the name
        # they were opened under.
        self._writable: dict[int, str] = {}
        # Read handles on lower files, by the name they were opened under, with their flags:
        # a copy-up moves them onto the copy, as the kernel's ovl_real_fdget() does, so that
        # they see what is written next (and never put stale pages in the kernel's cache).
        self._readers: dict[str, dict[int, int]] = {}
        self._reader_rel: dict[int, str] = {}  # the other way round
        self._hidden = {}
        self._hidden_links = {}
        self._tmp_names = (f"#{os.getpid()}.{n}" for n in itertools.count())

    # -- FUSE operations: reading ---------------------------------------------------------

    def init(self, path: str) -> None:
        """The kernel answered: the mount is live."""
        if self._on_init is not None:
            self._on_init()

    def init_with_config(self, conn: Any, config: Any) -> None:
        """mfusepy calls this instead of :meth:`init` where it can; with libfuse 3 (*config*
        given) it turns off READDIRPLUS before the kernel hears the capabilities."""
        if config is not None and conn is not None:
            # libfuse 3 asks for READDIRPLUS, but its path-based API cannot give the kernel
            # the entries' attributes through mfusepy: every entry then takes the bigger
            # READDIRPLUS record for nothing, four times the READDIR round trips.
            conn.want &= ~(_CAP_READDIRPLUS | _CAP_READDIRPLUS_AUTO)
        self.init("/")

    def kernel_stat(self, path: str | None, fh: int | None = None) -> KernelStat:
        """What ``getattr`` tells the kernel: ``lstat`` of the merged entry (``fstat`` of the
        handle for an unlinked open file), with the inode and link count it shows."""
        if path is None:
            if fh is None:
                raise fail(errno.ENOENT, "")
            st = os.fstat(fh)
            return KernelStat(st, st.st_ino, st.st_nlink)
        rel = _rel(path)
        node = self._node(rel) if self._hidden else self._view.get(rel)
        st = node.st
        nlink = st.st_nlink
        if node.layer == 0:
            ino = self._origin_ino.get(st.st_ino, st.st_ino)
            if self._hidden_links and st.st_ino in self._hidden_links:
                nlink -= self._hidden_links[st.st_ino]  # names unlinked while open
            if nlink > 1 and self._links.active:
                self._links.seen(rel, st)
        else:
            ino = st.st_ino
        if nlink > 1 and stat.S_ISDIR(st.st_mode) and len(self._view.chain(rel)) > 1:
            nlink = 1  # a merged directory's link count is unknown, as in the kernel
        return _new_tuple(KernelStat, (st, ino, nlink))  # without a Python-level __new__

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        """:meth:`kernel_stat` as the fusepy API has it (a dict; times in nanoseconds).

        mfusepy's class from :func:`.statpack.fuse_class` calls :meth:`kernel_stat` instead.
        """
        st, ino, nlink = self.kernel_stat(path, fh)
        attrs = {
            "st_mode": st.st_mode,
            "st_ino": ino,
            "st_nlink": nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }
        if st.st_rdev:  # the struct starts zeroed; every key costs mfusepy a setattr
            attrs["st_rdev"] = st.st_rdev
        return attrs

    def readlink(self, path: str) -> str:
        """The target of a symbolic link."""
        return os.readlink(self._view.get(_rel(path)).path)

    def readdir(self, path: str, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        """The merged listing, with inode and type so that ``find`` needs no ``stat``."""
        rel = _rel(path)
        own = self._view.get(rel)
        if not stat.S_ISDIR(own.st.st_mode):
            raise fail(errno.ENOTDIR, rel)
        parent = self._view.lookup(split(rel)[0]) if rel else own
        result = [
            (".", {"st_ino": self._ino(own), "st_mode": own.st.st_mode}, 0),
            ("..", {"st_ino": self._ino(parent or own), "st_mode": stat.S_IFDIR}, 0),
        ]
        origin = self._origin_ino
        for name, entry in sorted(self._view.entries(rel).items()):
            ino = origin.get(entry.ino, entry.ino) if entry.layer == 0 else entry.ino
            result.append((name, {"st_ino": ino, "st_mode": entry.kind}, 0))
        return result

    def statfs(self, path: str) -> dict[str, int]:
        """Space and inodes of the upper layer's filesystem."""
        sv = os.statvfs(self._upper)
        return {name: getattr(sv, name) for name in _STATVFS_FIELDS}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        """An xattr of the merged entry; the overlay's own are not shown."""
        if name.startswith(self._private_xattrs):
            raise fail(errno.ENODATA, _rel(path))
        return os.getxattr(self._node(_rel(path)).path, name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        """The xattr names of the merged entry, without the overlay's own."""
        names = os.listxattr(self._node(_rel(path)).path, follow_symlinks=False)
        return [name for name in names if not name.startswith(self._private_xattrs)]

    # -- FUSE operations: files -----------------------------------------------------------
    # No ``flush``: writes go straight to the backing file, so there is nothing to do, and
    # leaving it out makes the kernel stop sending FLUSH (one request less per close).

    def open(self, path: str, flags: int) -> int:
        """Open the backing file; opening for writing copies it up first."""
        rel = _rel(path)
        write = _is_write(flags)
        node = None if write else self._node(rel)
        real = self.copy_up(rel) if node is None else node.path
        fd = os.open(real, (flags & ~_STRIP_FLAGS) | os.O_CLOEXEC)
        if node is not None and node.layer > 0:
            self._readers.setdefault(rel, {})[fd] = flags & ~_STRIP_FLAGS
            self._reader_rel[fd] = rel
        if write:
            self._writable[fd] = rel
            if self._links.tracking:
                key = self._links.key(os.fstat(fd))
                if key is not None:
                    self._fh_links[fd] = (key, rel)
                    self._links.changed(key, rel)  # O_TRUNC, or at least the times
        return fd

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        """Create and open a regular file in the upper layer."""
        rel = _rel(path)
        target, had_whiteout = self._new_entry(rel)
        try:
            fd = os.open(
                target, (flags & ~_STRIP_FLAGS) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode
            )
        except BaseException:
            self._restore_whiteout(rel, had_whiteout)
            raise
        self._created(target)
        self._writable[fd] = rel
        return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        """Read from the open backing file."""
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        """Write to the open backing file (always an upper file)."""
        written = os.pwrite(fh, data, offset)
        linked = self._fh_links.get(fh)
        if linked is not None:
            self._links.changed(*linked)
        return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        """Truncate through the handle if it is writable, else copy up and truncate."""
        if fh is not None and fh in self._writable:
            os.ftruncate(fh, length)
            linked = self._fh_links.get(fh)
            if linked is not None:
                self._links.changed(*linked)
        elif path is not None:
            self._changed(_rel(path), os.truncate, length)
        else:
            raise fail(errno.EBADF, "")
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        """``fsync`` (or ``fdatasync``) the backing file."""
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path: str | None, fh: int) -> int:
        """Close the backing file."""
        self._writable.pop(fh, None)
        self._fh_links.pop(fh, None)
        rel = self._reader_rel.pop(fh, None)
        if rel is not None:
            handles = self._readers.get(rel, {})
            handles.pop(fh, None)
            if not handles:
                self._readers.pop(rel, None)
        os.close(fh)
        return 0

    def _copied_up(self, rel: str, node: Any, target: str) -> None:
        """Move the read handles on the lower file onto its copy, keeping their numbers."""
        if node.st.st_nlink > 1 and not stat.S_ISDIR(node.st.st_mode):
            # A lower hard link, broken by the copy-up: the copy has a link count and an
            # inode number of its own, which the kernel would not ask for again.
            self._links.refresh(rel)
        for fh, flags in self._readers.pop(rel, {}).items():
            fd = os.open(target, flags | os.O_CLOEXEC)
            try:
                os.dup2(fd, fh, inheritable=False)
            finally:
                os.close(fd)

    def _renamed_handles(self, old: str, new: str | None) -> None:
        handles = self._readers.pop(old, None)
        if handles and new is not None:
            self._readers.setdefault(new, {}).update(handles)
            self._reader_rel.update(dict.fromkeys(handles, new))

    # -- FUSE operations: metadata (copy-up first) ----------------------------------------

    def chmod(self, path: str, mode: int) -> int:
        """Change permission bits, in the upper layer."""
        self._changed(_rel(path), os.chmod, stat.S_IMODE(mode))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        """Change the owner, in the upper layer (-1 leaves a side unchanged)."""
        self._changed(_rel(path), os.lchown, uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """Set access and modification times (nanoseconds), in the upper layer."""
        real = self.copy_up(_rel(path))
        if times is None:
            os.utime(real, follow_symlinks=False)
            self._changed(_rel(path))
            return 0
        now = time.time_ns()
        current: os.stat_result | None = None
        resolved: list[int] = []
        for index, value in enumerate(times):
            if value == _UTIME_NOW:
                value = now
            elif value == _UTIME_OMIT:
                current = current or os.lstat(real)
                value = (current.st_atime_ns, current.st_mtime_ns)[index]
            resolved.append(value)
        os.utime(real, ns=(resolved[0], resolved[1]), follow_symlinks=False)
        self._changed(_rel(path))
        return 0

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        """Set an xattr, in the upper layer; the overlay's own cannot be set."""
        if name.startswith(self._private_xattrs):
            raise fail(errno.EOPNOTSUPP, _rel(path))  # the kernel refuses them the same way
        real = self.copy_up(_rel(path))
        os.setxattr(real, name, value, options, follow_symlinks=False)
        self._changed(_rel(path))
        return 0

    def removexattr(self, path: str, name: str) -> int:
        """Remove an xattr, in the upper layer."""
        if name.startswith(self._private_xattrs):
            raise fail(errno.EOPNOTSUPP, _rel(path))
        os.removexattr(self.copy_up(_rel(path)), name, follow_symlinks=False)
        self._changed(_rel(path))
        return 0

    # -- FUSE operations: the namespace ---------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        """Make a directory; made over a whiteout, it is opaque (hides what was deleted)."""
        rel = _rel(path)
        target, had_whiteout = self._new_entry(rel)
        self._view.invalidate()
        try:
            os.mkdir(target, mode)
        except BaseException:
            self._restore_whiteout(rel, had_whiteout)
            raise
        if had_whiteout:
            try:
                self._opaque(target)
            except BaseException:
                os.rmdir(target)
                self._restore_whiteout(rel, had_whiteout)
                raise
        self._created(target)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Make a FIFO, socket or device node."""
        rel = _rel(path)
        target, had_whiteout = self._new_entry(rel)
        try:
            os.mknod(target, mode, dev)
        except BaseException:
            self._restore_whiteout(rel, had_whiteout)
            raise
        self._created(target)
        return 0

    def symlink(self, target: str, source: str) -> int:
        """Make the symbolic link *target* pointing to *source*."""
        rel = _rel(target)
        link, had_whiteout = self._new_entry(rel)
        try:
            os.symlink(source, link)
        except BaseException:
            self._restore_whiteout(rel, had_whiteout)
            raise
        self._created(link)
        return 0

    def link(self, target: str, source: str) -> int:
        """Make *target* a hard link of *source* (copied up first, as the kernel does)."""
        real = self.copy_up(_rel(source))
        rel = _rel(target)
        link, had_whiteout = self._new_entry(rel)
        try:
            os.link(real, link, follow_symlinks=False)
        except BaseException:
            self._restore_whiteout(rel, had_whiteout)
            raise
        if self._links.active:
            st = os.lstat(link)
            self._links.seen(_rel(source), st)
            self._links.seen(rel, st)
            key = self._links.key(st)
            self._links.changed(key, rel)  # the source's link count
            self._linked_handles(key)
        return 0

    def _linked_handles(self, key: tuple[int, int] | None) -> None:
        """A file got another name: a write through a handle opened on it before (when it had
        one name, and so nothing to invalidate) must now invalidate the others too."""
        if key is None:
            return
        for fh, opened in self._writable.items():
            if fh not in self._fh_links:
                st = os.fstat(fh)
                if (st.st_dev, st.st_ino) == key:
                    self._fh_links[fh] = (key, opened)

    def unlink(self, path: str) -> int:
        """Remove a non-directory; a whiteout hides it if a lower layer has it."""
        rel = _rel(path)
        if rel in self._hidden:
            self._unhide(rel)
            self._links.forget(rel)
            return 0
        key = None
        if self._links.tracking:
            node = self._view.lookup(rel)
            key = self._links.key(node.st) if node is not None and node.layer == 0 else None
        self._remove(rel, directory=False)
        self._readers.pop(rel, None)
        self._links.forget(rel)
        self._links.changed(key, rel)  # the other names' link count
        return 0

    def rmdir(self, path: str) -> int:
        """Remove an empty directory (empty in the merged view)."""
        self._remove(_rel(path), directory=True)
        return 0

    def rename(self, old: str, new: str) -> int:
        """Rename anything, including directories of the lower layers (unless told not to).

        The source is copied up (a directory with its whole merged subtree), renamed in the
        upper layer, and its old name whited out if a lower layer has it.  A directory moved
        over a name that a lower layer has is made opaque.
        """
        old_rel, new_rel = _rel(old), _rel(new)
        if old_rel == new_rel:
            return 0
        if new_rel.startswith(old_rel + "/"):
            raise fail(errno.EINVAL, new_rel)
        if _HIDDEN.fullmatch(split(new_rel)[1]) and self._view.lookup(new_rel) is None:
            return self._hide_open_file(old_rel, new_rel)
        if self._view.whiteout_files[0] and split(new_rel)[1].startswith(WHITEOUT_PREFIX):
            raise fail(errno.EINVAL, new_rel)  # see _new_entry
        src = self._view.get(old_rel)
        dst = self._view.lookup(new_rel)
        is_dir = stat.S_ISDIR(src.st.st_mode)
        if dst is not None:
            if stat.S_ISDIR(dst.st.st_mode):
                if not is_dir:
                    raise fail(errno.EISDIR, new_rel)
                if self._view.entries(new_rel):
                    raise fail(errno.ENOTEMPTY, new_rel)
            elif is_dir:
                raise fail(errno.ENOTDIR, new_rel)
            elif src.layer == dst.layer == 0 and dst.st.st_ino == src.st.st_ino:
                # Two links of one file: rename(2) does nothing.  Not for two names of a
                # lower hard link: the kernel gives them an inode each (no index), so the
                # rename goes ahead and removes the old name.
                return 0
        if is_dir and (src.layer > 0 or len(self._view.chain(old_rel)) > 1):
            if not self._rename_lower_dirs:
                raise fail(errno.EXDEV, old_rel)
            real = self._copy_up_tree(old_rel)
            moved_from_lower = True
        else:
            real = self.copy_up(old_rel)
            moved_from_lower = False
        old_below = self._view.below(old_rel)
        new_below = self._view.below(new_rel)
        new_parent, new_name = split(new_rel)
        directory = self._upper_dir(new_parent)
        target = os.path.join(directory, new_name)
        dst = self._view.lookup(new_rel)
        replaced = None
        if dst is not None and dst.layer == 0:
            if is_dir:
                remove_tree(dst.path)
            self._forget(dst.st)
            replaced = self._links.key(dst.st) if self._links.tracking else None
        clear_whiteout(directory, new_name, whiteout_files=self._view.whiteout_files[0])
        os.rename(real, target)
        if is_dir:
            self._view.invalidate()
            if moved_from_lower:
                # Whiteouts inside hid what the old place had below.
                strip_markers(target, whiteout_files=self._view.whiteout_files[0])
            if new_below:
                self._opaque(target)
        if old_below:
            old_parent, old_name = split(old_rel)
            self._whiteout(self._upper_dir(old_parent), old_name)
        if is_dir:
            self._view.invalidate()
        self._links.forget(new_rel)
        self._links.renamed(old_rel, new_rel)
        self._links.changed(replaced, new_rel)  # the replaced file's other names: link count
        self._readers.pop(new_rel, None)
        return 0

    def _hide_open_file(self, rel: str, hidden: str) -> int:
        """libfuse's rename of an open file being unlinked (no ``hard_remove``): see
        :meth:`_hide`.  The other names of a hard link see their link count drop."""
        key = None
        if self._links.tracking:
            node = self._view.lookup(rel)
            key = self._links.key(node.st) if node is not None and node.layer == 0 else None
        self._hide(rel, hidden)
        # The open file keeps its kernel inode under the hidden name: a write through
        # another name must reach it there.
        self._links.renamed(rel, hidden)
        self._links.changed(key, hidden)
        return 0
