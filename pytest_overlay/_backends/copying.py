"""The pure-Python fallback: a private copy of the merged lowers, reset after each test.

It needs no privileges and works on any OS.  The copy is made once per session (per xdist
worker) and handed to one test at a time; afterwards only what the test changed is put back
from the lowers (copy_tracking.py finds it), so a test costs in proportion to its changes, not to
the tree.  Files are cloned (reflink) where the filesystem can, and copied with the kernel's
fast path otherwise, holes left as holes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_overlay._diff import TreeDiff, diff_paths
from pytest_overlay._errors import ResetUnverifiedError
from pytest_overlay._files import copy_file_data, remove_tree
from pytest_overlay._holders import name_holders
from pytest_overlay._layers import Entry, LayerStack
from pytest_overlay._layerwrite import copy_metadata, copy_node, is_root, synthesize_upper

from .base import IgnoreFn, ScratchBackend, safe_label
from .copy_tracking import ChangeTracker, processes_inside, signature
from .inplace import COPY_IN_PLACE

# ioctl(FICLONE): share the source's extents instead of copying bytes (btrfs, xfs, bcachefs).
_FICLONE = 0x40049409
# Filesystems that cannot clone answer one of these; after the first we stop trying.
_NO_CLONE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL})


class _Cloner:
    def __init__(self) -> None:
        self.enabled = sys.platform.startswith("linux")

    def copy_file(self, source: str, target: str) -> None:
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


def _inside(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([path, directory]) == directory
    except ValueError:  # Windows: on different drives
        return False


class _Copy:
    """One copy of a stack of lowers, pristine whenever no test holds it.

    Made once (the only cost in proportion to the tree); after each test only what the test
    changed, as the tracker reports it, is put back from the lowers and checked.
    """

    def __init__(
        self,
        root: Path,
        lowers: tuple[Path, ...],
        skip: set[str],
        cloner: _Cloner,
        *,
        watch: bool = True,
    ) -> None:
        self.root = root
        self.merged = root / (lowers[0].name or "root")
        self.real_root = str(root)  # resolved once it exists (build)
        self.lowers = lowers
        self._stack = LayerStack(lowers)
        self._copy_data = cloner.copy_file
        self.tracker = ChangeTracker(self.merged, watch=watch)
        # Our own scratch space, where it sits inside a lower, is neither copied nor diffed.
        self.hidden = tuple(
            os.path.relpath(scratch, lower)
            for scratch in skip
            for lower in map(os.path.realpath, lowers)
            if _inside(scratch, lower)
        )

    def build(self) -> None:
        top = self._stack.lookup("")
        if top is None:
            raise FileNotFoundError(errno.ENOENT, "lower layer not found", str(self.lowers[0]))
        self.root.mkdir(parents=True)
        self.real_root = os.path.realpath(self.root)
        self.merged.mkdir()
        self._copy_children("", self.merged)
        self._finish_dir("", top, self.merged)
        self.tracker.settle()

    def _is_hidden(self, rel: str) -> bool:
        return any(rel == h or rel.startswith(h + "/") for h in self.hidden)

    def _copy_children(self, rel: str, target: Path) -> None:
        for name, entry in sorted(self._stack.listdir(rel).items()):
            child = f"{rel}/{name}" if rel else name
            if self.hidden and self._is_hidden(child):
                continue
            if stat.S_ISDIR(entry.stat.st_mode) and _is_virtualenv(entry.real_path):
                # Issue 21: a project's .venv (46 MB, 4.6 s a session) was copied whole for
                # tests that run the real one; left out of the copy and of the diff, as our
                # scratch space is.
                self.hidden = (*self.hidden, child)
                continue
            self._copy_entry(child, entry, target / name)

    def _copy_entry(self, rel: str, entry: Entry, target: Path) -> None:
        if stat.S_ISDIR(entry.stat.st_mode):
            target.mkdir(mode=0o700)  # its own mode once it is filled
            self._copy_children(rel, target)
            self._finish_dir(rel, entry, target)
            return
        source, st = os.fspath(entry.real_path), entry.stat
        # A socket or device node that needs privileges to recreate is left out: it cannot
        # be used through a copy anyway.
        if copy_node(
            source, os.fspath(target), st, owner=is_root(), exact=False, copy_data=self._copy_data
        ):
            self.tracker.record(rel, target, os.lstat(target), is_dir=False)

    def _finish_dir(self, rel: str, entry: Entry, target: Path) -> None:
        copy_metadata(entry.real_path, target, entry.stat, owner=is_root(), exact=False)
        self.tracker.record(rel, target, os.lstat(target), is_dir=True)

    def diff(self, ignore: IgnoreFn | None) -> TreeDiff:
        self.tracker.collect()
        return diff_paths(
            self.merged,
            self.lowers,
            self.tracker.dirty,
            replaced=self.tracker.replaced,
            ignore=ignore,
            skip=self.hidden,
        )

    def reset(self) -> None:
        """Put back what changed.

        :raises ResetUnverifiedError: the copy cannot be shown pristine again.
        :raises OSError: putting something back failed.
        """
        tracker = self.tracker
        tracker.collect()
        if not tracker.dirty and not tracker.replaced:
            return
        whole = set(tracker.replaced)
        done: list[str] = []
        restored: list[str] = []
        directories: set[str] = set()
        for rel in sorted(tracker.dirty | whole, key=_sort_key):
            if any(rel == d or rel.startswith(d + "/") for d in done):
                continue
            old = None if self._is_hidden(rel) else self._stack.lookup(rel)
            path = self.merged / rel if rel else self.merged
            now = _lstat(path)
            old_dir = old is not None and stat.S_ISDIR(old.stat.st_mode)
            if old_dir and now is not None and stat.S_ISDIR(now.st_mode) and rel not in whole:
                directories.add(rel)
                continue
            unchanged = now is not None and tracker.manifest.get(rel) == signature(now)
            if old is not None and not old_dir and unchanged:
                continue  # an event without a change (opened for writing, say)
            parent = rel.rpartition("/")[0]
            directories.add(parent)
            if now is not None:
                _writable(path.parent)
                if stat.S_ISDIR(now.st_mode):
                    remove_tree(path)
                else:
                    path.unlink()
            if old is not None:
                _writable(path.parent)
                self._copy_entry(rel, old, path)
            done.append(rel)
            restored.append(rel)
        for rel in sorted(directories, key=_sort_key, reverse=True):
            entry = self._stack.lookup(rel)
            if entry is not None:
                path = self.merged / rel if rel else self.merged
                _drop_added_xattrs(entry.real_path, path)
                self._finish_dir(rel, entry, path)
        tracker.settle()
        self._verify(restored, directories)

    def _verify(self, restored: list[str], directories: set[str]) -> None:
        """Check each path the reset touched against the lowers; raise on a difference."""
        for rel in restored:
            old = None if self._is_hidden(rel) else self._stack.lookup(rel)
            now = _lstat(self.merged / rel)
            if old is None or now is None:
                if now is not None:
                    raise ResetUnverifiedError(rel, "left behind after the reset")
                continue
            _check_same(rel, old, now)
        for rel in directories:
            old = self._stack.lookup(rel)
            if old is None:
                continue
            path = self.merged / rel if rel else self.merged
            _check_same(rel, old, os.lstat(path))
            if set(os.listdir(path)) - self._names(rel):
                raise ResetUnverifiedError(rel, "entries left behind after the reset")

    def _names(self, rel: str) -> set[str]:
        """The names the lowers show in the directory *rel* (without our scratch)."""
        if len(self.lowers) == 1:
            # One plain layer: its listing is the answer, without an lstat per name.
            names = set(os.listdir(self.lowers[0] / rel))
        else:
            names = set(self._stack.listdir(rel))
        prefix = f"{rel}/" if rel else ""
        return {n for n in names if not (self.hidden and self._is_hidden(prefix + n))}

    def remove(self) -> None:
        self.tracker.close()
        remove_tree(self.root)


def _is_virtualenv(directory: Path) -> bool:
    """Whether *directory* is a Python virtual environment (``venv``, virtualenv, tox, uv)."""
    return os.path.isfile(os.path.join(directory, "pyvenv.cfg"))


def _sort_key(rel: str) -> tuple[str, ...]:
    return tuple(rel.split("/")) if rel else ()


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _writable(directory: Path) -> None:
    # A test may leave a directory read-only (or the project has one); the reset still needs
    # to write in it, and puts its mode back afterwards.
    st = os.lstat(directory)
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | 0o700)


def _drop_added_xattrs(source: Path, target: Path) -> None:
    # A directory survives the reset in place, so xattrs a test set on it must go explicitly.
    if not hasattr(os, "listxattr"):
        return
    try:
        wanted = set(os.listxattr(source, follow_symlinks=False))
        present = os.listxattr(target, follow_symlinks=False)
    except OSError:
        return
    for name in present:
        if name not in wanted:
            with contextlib.suppress(OSError):
                os.removexattr(target, name, follow_symlinks=False)


def _check_same(rel: str, old: Entry, now: os.stat_result) -> None:
    a = old.stat
    same = stat.S_IFMT(a.st_mode) == stat.S_IFMT(now.st_mode)
    same = same and (
        stat.S_ISLNK(a.st_mode) or stat.S_IMODE(a.st_mode) == stat.S_IMODE(now.st_mode)
    )
    if stat.S_ISREG(a.st_mode):
        same = same and a.st_size == now.st_size and a.st_mtime_ns == now.st_mtime_ns
    if not same:
        raise ResetUnverifiedError(rel, "differs from the lowers after the reset")


class CopyMount:
    """A test's hold on a pooled copy; closing it resets the copy for the next test, unless a
    process the test started still runs in it (then the copy is set aside, with a warning)."""

    def __init__(self, backend: CopyBackend, copy: _Copy, snapshots: Path) -> None:
        self._backend = backend
        self._copy = copy
        self._snapshots_dir = snapshots
        self._snapshots = itertools.count()
        self._closed = False

    @property
    def path(self) -> Path:
        return self._copy.merged

    @property
    def lowers(self) -> tuple[Path, ...]:
        return self._copy.lowers

    @property
    def new_root(self) -> Path:
        """Where the new version of every changed file is: the copy."""
        return self._copy.merged

    def diff(self, ignore: IgnoreFn | None = None) -> TreeDiff:
        return self._copy.diff(ignore)

    def export(self, destination: Path) -> int:
        return synthesize_upper(self.diff(), self._copy.merged, destination)

    def snapshot(self) -> Path:
        target = self._snapshots_dir / str(next(self._snapshots))
        target.parent.mkdir(parents=True, exist_ok=True)
        self.export(target)
        return target

    def reusable(self) -> bool:
        """Never as it is: :meth:`close` hands the copy back to the backend, which resets
        only what the tracker saw change (nothing, after a test that wrote nothing)."""
        return False

    def untouched(self) -> bool:
        return False

    def close(self) -> list[str]:
        if self._closed:
            return []
        self._closed = True
        remove_tree(self._snapshots_dir)
        users = processes_inside(self._copy.real_root)
        if not users:
            return self._backend.release(self._copy)
        # It would go on changing the copy after the reset: the copy is no longer ours to
        # reuse, and stays as it is for that process until the end of the run.
        self._backend.set_aside(self._copy)
        return [
            f"{self.path} was still in use by {name_holders(users)} when the test ended, so that "
            "copy was set aside: the process may go on using it until the end of the run, when it "
            "is removed, and the next test gets a fresh copy"
        ]


class CopyBackend(ScratchBackend[CopyMount]):
    """Copy-up emulated with a copy of the tree, made once and reset after each test."""

    name = "copy"
    in_place = False

    def __init__(self, scratch: Callable[[], Path], *, watch: bool = True) -> None:
        """*watch* False finds changes by a stat walk alone, as where inotify is missing."""
        super().__init__(scratch)
        self._watch = watch
        self._counter = itertools.count()
        self._cloner = _Cloner()
        self._idle: dict[tuple[Path, ...], list[_Copy]] = {}
        self._copies: list[_Copy] = []
        self._reset_failures: list[str] = []
        self._reset_told = False

    def unavailable_reason(self) -> str | None:
        return None

    def describe(self) -> str:
        return "a copy of the tree per session, reset after each test"

    def in_place_refusal(self, *, explicit: bool) -> str | None:
        return COPY_IN_PLACE

    def _mount(
        self, lowers: Sequence[Path], label: str, target: Path | None, passthrough: Sequence[Path]
    ) -> CopyMount:
        # A copy cannot appear at the real path (*target*); in-place mode never uses this
        # backend (see inplace.py), and *passthrough* only matters there.
        key = tuple(lowers)
        copy = self._take(key)
        snapshots = self._scratch / f"{safe_label(label)}{next(self._counter)}.snapshots"
        return CopyMount(self, copy, snapshots)

    def _take(self, key: tuple[Path, ...]) -> _Copy:
        idle = self._idle.setdefault(key, [])
        while idle:
            copy = idle.pop()
            if self._reset(copy):  # a process the last test left behind may have written since
                return copy
        # The whole session's scratch directory, not only ours: where pytest's temporary
        # directory is inside the project, the other backends' views are mounted in it.
        scratch = os.path.realpath(self._scratch.parent)
        root = self._scratch / f"copy{next(self._counter)}"
        copy = _Copy(root, key, {scratch}, self._cloner, watch=self._watch)
        self._copies.append(copy)
        try:
            copy.build()
        except BaseException:
            self._discard(copy)
            raise
        return copy

    def set_aside(self, copy: _Copy) -> None:
        """Never hand *copy* out again (a process still uses it); :meth:`shutdown` removes it."""
        copy.tracker.close()

    def release(self, copy: _Copy) -> list[str]:
        """Reset *copy* for the next test, or throw it away if the reset fails or cannot be
        verified; returns what the session should tell the user about failed resets."""
        if self._reset(copy):
            self._idle.setdefault(copy.lowers, []).append(copy)
        return self.reset_notices()

    def _reset(self, copy: _Copy) -> bool:
        """Reset *copy*; on failure discard it, note why, and return False."""
        try:
            copy.reset()
        except (ResetUnverifiedError, OSError) as exc:
            self._discard(copy)
            self._reset_failures.append(str(exc))
            return False
        return True

    def reset_notices(self) -> list[str]:
        """The notice of the first reset that failed since the last call, with a count.

        Said once a session: a reset that fails every time means a full copy per test, which
        the user should hear of (and report), but not a line per test.
        """
        failures, self._reset_failures = self._reset_failures, []
        if not failures or self._reset_told:
            return []
        self._reset_told = True
        return [
            f"the copy backend could not reset its copy after a test ({failures[0]}), so it "
            "made a fresh copy; each such test costs a full copy of the tree. If this repeats, "
            "please report it, with the path"
        ]

    def _discard(self, copy: _Copy) -> None:
        if copy in self._copies:
            self._copies.remove(copy)
        copy.remove()

    def flush(self) -> None:
        """Nothing to do: closed views are gone at once."""

    def shutdown(self) -> None:
        for copy in list(self._copies):
            self._discard(copy)
        self._idle.clear()
        if self._scratch_path is not None:
            remove_tree(self._scratch_path)
