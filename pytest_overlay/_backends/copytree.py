"""The pure-Python fallback: materialise the merged lowers as a private copy per test.

It needs no privileges and works on any OS, at a cost linear in the size of the tree.  Files are
cloned (reflink) where the filesystem can, and copied with the kernel's fast path otherwise,
holes left as holes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_overlay._diff import TreeDiff, diff_trees
from pytest_overlay._filecopy import copy_file_data, copy_xattrs
from pytest_overlay._layers import Entry, LayerStack
from pytest_overlay._upper import synthesize_upper

from .base import IgnoreFn, safe_label

# ioctl(FICLONE): share the source's extents instead of copying bytes (btrfs, xfs, bcachefs).
_FICLONE = 0x40049409
# Filesystems that cannot clone answer one of these; after the first we stop trying.
_NO_CLONE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL})


class _Cloner:
    def __init__(self) -> None:
        self.enabled = sys.platform.startswith("linux")

    def copy_file(self, source: Path, target: Path, mode: int) -> None:
        if self.enabled:
            import fcntl

            with open(source, "rb") as src, open(target, "wb") as dst:
                try:
                    fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                    return
                except OSError as exc:
                    if exc.errno not in _NO_CLONE_ERRNOS:
                        raise
                    self.enabled = False
        copy_file_data(source, target)


class CopyMount:
    """A per-test copy of the merged lowers."""

    def __init__(
        self, root: Path, merged: Path, lowers: tuple[Path, ...], hidden: tuple[Path, ...]
    ) -> None:
        self._root = root
        self._merged = merged
        self._lowers = lowers
        # Our own scratch space, where it sits inside a lower, is neither copied nor diffed.
        self._hidden = hidden
        self._snapshots = itertools.count()

    @property
    def path(self) -> Path:
        return self._merged

    @property
    def lowers(self) -> tuple[Path, ...]:
        return self._lowers

    @property
    def upper(self) -> Path | None:
        """No upper layer: the copy is the whole view."""
        return None

    @property
    def new_root(self) -> Path:
        """Where the new version of every changed file is: the copy."""
        return self._merged

    def diff(self, ignore: IgnoreFn | None = None) -> TreeDiff:
        return diff_trees(self._merged, self._lowers, ignore=ignore, skip=self._hidden)

    def snapshot(self) -> Path:
        target = self._root / ".snapshots" / str(next(self._snapshots))
        target.parent.mkdir(exist_ok=True)
        synthesize_upper(self.diff(), self._merged, target)
        return target

    def close(self) -> list[str]:
        remove_tree(self._root)
        return []


class CopyBackend:
    """Copy-up emulated by copying everything up front."""

    name = "copy"

    def __init__(self, scratch: Callable[[], Path]) -> None:
        # The scratch directory lives in pytest's basetemp, known only once a test runs.
        self._scratch_provider = scratch
        self._scratch_path: Path | None = None
        self._counter = itertools.count()
        self._cloner = _Cloner()

    @property
    def _scratch(self) -> Path:
        if self._scratch_path is None:
            self._scratch_path = self._scratch_provider()
        return self._scratch_path

    def unavailable_reason(self) -> str | None:
        return None

    def describe(self) -> str:
        return "copy of the tree per test"

    def mount(
        self,
        lowers: Sequence[Path],
        *,
        label: str,
        target: Path | None = None,
        passthrough: Sequence[Path] = (),
    ) -> CopyMount:
        # A copy cannot appear at the real path (*target*), and leaves the real directories
        # (*passthrough*) alone anyway: in-place mode works in the copy instead.
        root = self._scratch / f"{safe_label(label)}{next(self._counter)}"
        root.mkdir(parents=True)
        merged = root / (lowers[0].name or "root")
        stack = LayerStack(lowers)
        # The scratch directory may sit inside a lower (``--basetemp`` in the project).
        scratch = os.path.realpath(self._scratch)
        skip = {scratch}
        hidden = tuple(
            merged / os.path.relpath(scratch, lower)
            for lower in map(os.path.realpath, lowers)
            if os.path.commonpath([scratch, lower]) == lower
        )
        mount = CopyMount(root, merged, tuple(lowers), hidden)
        try:
            top = stack.lookup("")
            if top is None:
                raise FileNotFoundError(errno.ENOENT, "lower layer not found", str(lowers[0]))
            merged.mkdir()
            self._copy_dir(stack, "", merged, skip)
            _copy_metadata(top, merged)
        except BaseException:
            mount.close()
            raise
        return mount

    def shutdown(self) -> None:
        if self._scratch_path is not None:
            remove_tree(self._scratch_path)

    def _copy_dir(self, stack: LayerStack, rel: str, target: Path, skip: set[str]) -> None:
        for name, entry in sorted(stack.listdir(rel).items()):
            if os.path.realpath(entry.real_path) in skip:
                continue
            child_rel = f"{rel}/{name}" if rel else name
            child = target / name
            mode = entry.stat.st_mode
            if stat.S_ISDIR(mode):
                child.mkdir()
                self._copy_dir(stack, child_rel, child, skip)
            elif stat.S_ISREG(mode):
                self._cloner.copy_file(entry.real_path, child, mode)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(entry.real_path), child)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(child, stat.S_IMODE(mode))
            else:
                try:
                    os.mknod(child, mode, entry.stat.st_rdev)
                except PermissionError:
                    # Sockets and devices need privileges to recreate; they cannot be used
                    # through a copy anyway, so the view simply lacks them.
                    continue
            _copy_metadata(entry, child)


def _copy_metadata(entry: Entry, target: Path) -> None:
    st = entry.stat
    copy_xattrs(entry.real_path, target)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.lchown(target, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Remove *path* even where the test left read-only or mode-000 directories behind."""

    def make_writable(function: object, failed: str, exc: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                _rmtree(failed)
            else:
                os.unlink(failed)
        except FileNotFoundError:
            pass

    def _rmtree(target: str | Path) -> None:
        if sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=make_writable)
        else:
            shutil.rmtree(target, onerror=make_writable)

    if path.exists() or path.is_symlink():
        _rmtree(path)
