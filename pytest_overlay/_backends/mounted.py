"""Real mounts, kernel and FUSE: a view whose changes live in an upper layer in the kernel's
format beside it, which diffs, exports, unmounts and is found reusable the same way for both.

A view may go to the next test as it is (no unmount, no mount) when two things hold, checked in
this order after the test (:meth:`UpperLayerView.reusable`):

1. **Nothing holds it** (:func:`idle`): ``umount2(MNT_EXPIRE)`` fails with ``EBUSY`` unless
   the mount's only references are its place in the mount table and the call's own lookup.
   Every open file or directory (``O_PATH`` too), every memory mapping (it keeps its file),
   every working or root directory of every process in this mount namespace, and every mount
   on top of the view holds one; our own pass-through mounts are moved aside for the check
   (a move, unlike an unmount, waits for no RCU grace period).  So once this passes, no
   descriptor, mapping or process kept from the test can write to the view any more.
2. **Nothing changed in it** (:meth:`UpperLayerView.untouched`), looked at after 1, so that
   whatever was written before the last holder let go is seen.  The upper layer is empty
   after mounting, and any change to the view shows in its root directory: an entry made
   there (a change below the root copies its directory up; a file created and deleted again
   was made first), or the root's own mode, owner, times or extended attributes (a ``chmod``,
   ``utime`` or ``setxattr`` of the view's root).  inotify watches the upper directory from
   mounting on (:class:`~pytest_overlay._inotify.ChangeFlags`): the kernel queues the event
   inside the system call that makes the change, so once check 1 passes every change is in
   the queue, and one read of it answers.  Where inotify cannot watch (no instance or watch
   left), the same is compared by ``lstat``, ``listxattr`` and listings of the upper and work
   directories taken after mounting.

Opening a lower file for writing copies it up at ``open`` (so does ``O_TRUNC``, and a
writable shared mapping needs such a descriptor): a test that holds one leaves a non-empty
upper layer, and a read-only descriptor fails check 1.  What neither check can see is a
process that holds nothing at the end of the test and opens a path of the view later (a
daemon that wakes up, in place), or one that took a copy of the view into a mount namespace
of its own (``unshare -m``); they would reach whatever view stands there then, reused or new.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from pytest_overlay import _namespaces, _syscalls
from pytest_overlay._diff import TreeDiff, diff_upper
from pytest_overlay._errors import MountError
from pytest_overlay._inotify import ChangeFlags
from pytest_overlay._layerwrite import copy_layer

from .base import IgnoreFn

# What :meth:`UpperLayerView.untouched` compares without inotify: the upper layer as it was
# after mounting.
# The root's (mode, uid, gid, link count, mtime, ctime), its xattrs, the upper's listing, the
# work directory's and that of its work/ (None on fuse).
Fresh = tuple[
    tuple[int, int, int, int, int, int],
    list[tuple[str, bytes]],
    list[str],
    list[str],
    list[str] | None,
]


def detach(path: Path) -> None:
    """Unmount *path* and everything below it at once (``MNT_DETACH``)."""
    try:
        _syscalls.umount(path, _syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not mounted, a mount that failed half-way
            raise MountError(exc.errno, f"could not unmount {path}: {exc.strerror}") from exc


def readable_lowers(lowers: Sequence[Path], target: Path | None, root: Path) -> list[Path]:
    """Where the lower layers can be read while a view is mounted: a lower that the view
    covers (in place, the project itself) is read through a clone at ``root/.lower<i>``."""
    return [root / f".lower{i}" if lower == target else lower for i, lower in enumerate(lowers)]


class RealDirs:
    """The real directories an in-place view is about to hide, taken hold of before it is
    mounted: read-only clones of the lowers it covers, attached where
    :func:`readable_lowers` says (to read the real lower there, for the diff and the FUSE
    server), and pytest's own output directories, attached back over the view once it is
    mounted (to write through).  :meth:`close` closes the descriptors held meanwhile."""

    def __init__(self, passthrough: Sequence[Path]) -> None:
        self._passthrough = tuple(passthrough)
        self._tree_fds: list[int] = []
        self._held: list[tuple[Path, int]] = []
        self.clones: list[Path] = []
        """The clones attached so far: a view that keeps no tmpfs of its own detaches them."""

    def hold(self, lowers: Sequence[Path], readable: Sequence[Path]) -> None:
        if not self._passthrough and list(lowers) == list(readable):
            return  # fixture mode: nothing to take hold of
        with _namespaces.privileged():
            for lower, path in zip(lowers, readable, strict=True):
                if lower != path:
                    path.mkdir()
                    # Read-only: the real lower is read here, and nothing may write it.
                    clone = _syscalls.clone_tree(lower, readonly=True)
                    self._tree_fds.append(clone)
                    _syscalls.attach_tree(clone, path)
                    self.clones.append(path)
            for path in self._passthrough:
                tree_fd = _syscalls.clone_tree(path)
                self._tree_fds.append(tree_fd)
                self._held.append((path, tree_fd))

    def put_back(self) -> dict[Path, int]:
        """Attach the output directories over the mounted view; return where, each with a
        descriptor of the mount attached there, now the caller's to close."""
        attached: dict[Path, int] = {}
        if not self._held:
            return attached  # fixture mode: as the user, raising capabilities costs 25 us
        with _namespaces.privileged():
            for path, tree_fd in self._held:
                _syscalls.attach_tree(tree_fd, path)
                self._tree_fds.remove(tree_fd)
                attached[path] = tree_fd
        return attached

    def close(self) -> None:
        for tree_fd in self._tree_fds:
            os.close(tree_fd)
        self._tree_fds.clear()
        self._held.clear()


class Parking:
    """Where the in-place views of one sandboxed directory park their pass-through mounts for
    the busy check, and where those come back to: a directory (*park*) and the view's parent
    directory, both held open (``O_PATH``) for as long as views stand there, so that no check
    makes a directory or opens one."""

    def __init__(self, park: str, base: str) -> None:
        self.park = os.open(park, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.base = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.close(self.park)
            raise

    def close(self) -> None:
        os.close(self.park)
        os.close(self.base)


class Spares:
    """The pass-through mounts a retired in-place view left parked, each with its descriptor,
    the topmost of them in the order they were parked: handed to the next view of the same
    directory (:meth:`UpperLayerView.adopt`) instead of cloning the real directories again
    (two moves instead of a clone and an attach per directory: 0.15 ms per writing test)."""

    def __init__(self, binds: dict[Path, int], moves: list[tuple[int, bytes]]) -> None:
        self.binds = binds
        self.moves = moves

    def close(self) -> None:
        for fd in self.binds.values():
            os.close(fd)
        self.binds = {}
        self.moves = []


class Aside:
    """Where :func:`idle` moves our own mounts on top of a view for its check, and how it
    moves them back: the topmost of them (those inside another go with it), by descriptors.

    All go to one directory, the park: each lands on the one moved before it, and they come
    back in the reverse order, the topmost first.  By descriptor, a move costs the kernel no
    walk of the mount's path, nor of the park's, and the way back is walked from the view's
    parent directory (half the cost of moving by paths in a tight loop; between tests, with
    cold caches, the kernel's share hardly differs).  None of these descriptors is inside the
    view, so none keeps it busy.  The park is *shared* (a :class:`Parking` the backend keeps
    for every view of the same directory), or else *park*, a directory made for this view.
    """

    def __init__(
        self, merged: Path, binds: dict[Path, int], park: Path, shared: Parking | None = None
    ) -> None:
        self._fds: list[int] = []
        # By strings: ``Path.parents`` made this 0.4 ms of every in-place writing test.
        names = {b: os.fspath(b) + "/" for b in binds}
        top = [b for b in binds if not any(names[b].startswith(names[o]) for o in binds if o != b)]
        self.moves: list[tuple[int, bytes]] = []
        if not top:
            return
        base = os.fspath(merged.parent)
        if shared is not None:
            self.park, self.base = shared.park, shared.base
        else:
            park.mkdir(exist_ok=True)
            try:
                self.park = self._open(park)
                self.base = self._open(base)
            except OSError:
                self.close()
                raise
        start = len(base) + (not base.endswith("/"))  # the binds are below the view
        self.moves = [(binds[b], os.fsencode(names[b][start:-1])) for b in top]

    @classmethod
    def shared(cls, moves: list[tuple[int, bytes]], parking: Parking) -> Aside:
        """The Aside of a view that adopted *moves* (:class:`Spares`): the same mounts at the
        same paths, nothing to compute again."""
        aside = cls.__new__(cls)
        aside._fds = []
        aside.moves = moves
        aside.park, aside.base = parking.park, parking.base
        return aside

    def _open(self, path: str | Path) -> int:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        """Close the descriptors this view opened (a shared park's stay open)."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.moves = []


def idle(
    merged: str, aside: Aside, *, leave_aside: bool = False, marked: bool = True
) -> tuple[bool, bool]:
    """Whether nothing holds the mount at *merged* (check 1 above; privileged), and whether
    the mount may be left marked for expiry.

    Our own mounts on top of it are moved aside for the check and back (*aside*), or, with
    *leave_aside*, left there when it is idle (a view being retired: for the next view, or to
    go with its batch).  ``MNT_EXPIRE`` marks an idle mount for expiry, and a second call
    would unmount it.  The kernel clears the mark whenever it lets go of a reference to the
    mount (``mntput``): after any later use of it, and after moving a mount back onto a
    directory in it, whose lookup took one.  So a check that moved something back leaves no
    mark; else the next check's ``stat`` first makes sure there is none, where this or an
    earlier check may have *marked* it.
    """
    moved: list[tuple[int, bytes]] = []
    answer = False
    try:
        for tree_fd, relative in aside.moves:
            _syscalls.move_tree(tree_fd, aside.park)
            moved.append((tree_fd, relative))
        if marked:
            os.stat(merged)
        try:
            _syscalls.umount(merged, _syscalls.MNT_EXPIRE)
        except OSError as exc:
            answer = exc.errno == errno.EAGAIN  # EAGAIN: idle, and now marked; EBUSY: in use
        # No error: idle but marked already, and so unmounted now: it cannot be reused.
    except OSError:
        return False, True
    finally:
        if not (answer and leave_aside):
            for tree_fd, relative in reversed(moved):
                _syscalls.move_tree(tree_fd, aside.base, relative)
    # The moves back ran only if nothing raised (a failing one raises on to the caller).
    return answer, answer and (leave_aside or not moved)


class UpperLayerView:
    """A view whose changes live in ``<root>/.upper``; subclasses know how to unmount it."""

    def __init__(self, root: Path, merged: Path, lowers: tuple[Path, ...]) -> None:
        self._root = root
        self._merged = merged
        self._lowers = lowers
        self._snapshots = itertools.count()
        # Whether the view may go to another test at all (not once a snapshot was taken).
        self._may_reuse = False
        # Whether anything changed, where inotify watches; else the state compared.
        self._flags: ChangeFlags | None = None
        self._fresh: Fresh | None = None
        self._fresh_stat: tuple[int, int, int] = (0, 0, 0)
        self._upper_s = self._work_s = ""
        self._merged_s = os.fspath(merged)
        # In place: real directories bound back into the view (pytest's own output), each
        # with a descriptor of its mount; unmounted before the view.
        self.binds: list[Path] = []
        self._bind_fds: dict[Path, int] = {}
        self._aside: Aside | None = None
        # Whether a busy check may have left the mount marked for expiry (see idle()).
        self._marked = False
        # The reuse check just found the view idle but changed, with nothing to leave aside:
        # closing it right after need not check again.
        self.idle_checked = False

    def put_back(self, real: RealDirs) -> None:
        """Attach the real directories *real* holds back over the mounted view."""
        self._bind_fds = real.put_back()
        self.binds.extend(self._bind_fds)

    def adopt(self, spares: Spares, parking: Parking) -> None:
        """Attach a retired view's parked pass-through mounts over this mounted view, at the
        same paths (the views stand at the same directory).  They are this view's from the
        start: whatever fails on the way, closing it detaches those attached."""
        self._bind_fds = spares.binds
        self.binds.extend(spares.binds)
        moves, spares.binds, spares.moves = spares.moves, {}, []
        self._aside = Aside.shared(moves, parking)
        for tree_fd, relative in reversed(moves):  # the last parked is on top
            _syscalls.move_tree(tree_fd, parking.base, relative)

    def hand_over(self) -> Spares | None:
        """The pass-through mounts that :meth:`_idle` left parked (*leave_aside*), with their
        descriptors, now the caller's; None if it parked none."""
        aside = self._aside
        if aside is None or not aside.moves:
            return None
        spares = Spares(self._bind_fds, aside.moves)
        self._bind_fds = {}
        aside.moves = []  # the Aside may be shared: the list is the spares' now
        return spares

    def _parking(self) -> Parking | None:
        """The park shared by the views of this directory, if the backend keeps one."""
        return None

    def close_descriptors(self) -> None:
        """The view is unmounted: close what it held for its checks."""
        if self._aside is not None:
            self._aside.close()
        for fd in self._bind_fds.values():
            os.close(fd)
        self._bind_fds = {}

    def remember_fresh(self, flags: ChangeFlags | None = None) -> None:
        """Start watching the upper layer as it is right after mounting, for
        :meth:`untouched`: with *flags* (the backend's), else by noting its state."""
        root = os.fspath(self._root)  # strings: Path joins cost microseconds per test
        self._upper_s = root + "/.upper"
        self._work_s = root + "/.work"
        self._may_reuse = True
        # The upper directory alone: what lands in the work directory (a copy being made, a
        # file unlinked while open) went through the upper layer first or never reaches it.
        if flags is not None and flags.watch(self, (self._upper_s,)):
            self._flags = flags
            return
        with _namespaces.privileged():
            self._fresh = fresh = self._state()
        mode, _, _, _, mtime, ctime = fresh[0]
        self._fresh_stat = (ctime, mtime, mode)

    def stop_watching(self, *, unwatch: bool = True) -> None:
        """The view is closed: no more questions about it.  *unwatch* False leaves the watch
        to go with the upper layer's filesystem, soon unmounted with nothing writing to it
        (removing a watch costs about 10 us)."""
        self._may_reuse = False
        if self._flags is not None:
            self._flags.forget(self, unwatch=unwatch)
            self._flags = None

    def _state(self) -> Fresh:
        # The root's stat first: remember_fresh takes what untouched() compares from it.
        upper, work = self._upper_s, self._work_s
        st = os.lstat(upper)
        names = os.listxattr(upper, follow_symlinks=False)
        xattrs = sorted((n, os.getxattr(upper, n, follow_symlinks=False)) for n in names)
        try:
            inner: list[str] | None = sorted(os.listdir(work + "/work"))
        except (FileNotFoundError, NotADirectoryError):
            inner = None  # the fuse server's work directory has no work/work
        return (
            (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns),
            xattrs,
            os.listdir(upper),
            sorted(os.listdir(work)),
            inner,
        )

    def untouched(self) -> bool:
        """Whether nothing was created in the upper layer, nor its root's metadata changed,
        since mounting.  Asked right before a kept view is handed out.  Without inotify, a
        quick look: its times (any change to the root directory, its entries or its xattrs
        sets its ctime) and mode, and an empty listing; :meth:`_reusable` compares the whole
        of check 2."""
        if not self._may_reuse:
            return False
        if self._flags is not None:
            return not self._flags.changed(self)
        if self._fresh is None:
            return False
        try:
            if not self._root_unchanged():
                return False
            try:
                return not os.listdir(self._upper_s)
            except PermissionError:
                # A project root without read permission for us (its mode is the upper's).
                with _namespaces.privileged():
                    return not os.listdir(self._upper_s)
        except OSError:
            return False

    def _idle(self, *, leave_aside: bool = False) -> bool:
        """Check 1 (privileged); raises OSError if a pass-through mount cannot be put back.
        *leave_aside*: see :func:`idle`."""
        if self._aside is None:
            park = self._root / ".park"
            self._aside = Aside(self._merged, self._bind_fds, park, self._parking())
        marked, self._marked = self._marked, True  # so it stays if a move back raises
        answer, self._marked = idle(
            self._merged_s, self._aside, leave_aside=leave_aside, marked=marked
        )
        return answer

    def working_directory_left(self) -> None:
        """The process's working directory, set inside this view after its last busy check,
        left it: the kernel let go of a reference to the mount then (``mntput``), which
        cleared any expiry mark, so the next check needs no ``stat`` first (see :func:`idle`).
        """
        self._marked = False

    def _root_unchanged(self) -> bool:
        """The quick look: the upper's root has the times and mode it had after mounting."""
        st = os.lstat(self._upper_s)
        return (st.st_ctime_ns, st.st_mtime_ns, st.st_mode) == self._fresh_stat

    def _reusable(self) -> bool:
        """Checks 1 and 2, in that order, after a quick look where check 1 costs moves (a test
        that wrote anything at all raised its flag, or without inotify changed the upper
        root's times, but for one in the same clock tick as mounting, which check 2 sees)."""
        self.idle_checked = False
        if not self._may_reuse:
            return False
        flags = self._flags
        try:
            if flags is not None:
                if self._bind_fds and flags.changed(self):
                    # A test that wrote: no need to move the pass-through mounts aside to ask
                    # whether it is held.  Without them the look would be one more system
                    # call for every test that wrote nothing.
                    return False
                with _namespaces.privileged():
                    idle = self._idle()
                if idle and flags.changed(self):
                    # Closed next: its retirement need not ask again (see _retire).
                    self.idle_checked = not self._bind_fds
                    return False
                return idle
            if self._fresh is None:
                return False
            with _namespaces.privileged():  # once: as the user, two system calls each time
                return self._root_unchanged() and self._idle() and self._state() == self._fresh
        except OSError:
            return False  # a pass-through mount that could not be put back: never reuse

    @property
    def path(self) -> Path:
        return self._merged

    @property
    def lowers(self) -> tuple[Path, ...]:
        return self._lowers

    @property
    def upper(self) -> Path:
        """The upper layer, in the kernel's format."""
        return self._root / ".upper"

    @property
    def new_root(self) -> Path:
        """Where the new version of every changed file is: the upper layer."""
        return self.upper

    def diff(self, ignore: IgnoreFn | None = None) -> TreeDiff:
        # A test may leave unreadable files behind; reading them is the diff's business.
        with _namespaces.privileged():
            return diff_upper(self.upper, self._lowers, ignore=ignore)

    def export(self, destination: Path) -> int:
        # A test may leave unreadable files behind; the copy needs to read them.
        with _namespaces.privileged():
            return copy_layer(self.upper, destination)

    def snapshot(self) -> Path:
        self._may_reuse = False  # the snapshot stays in the test's directory: never reuse it
        target = self._root / ".snapshots" / str(next(self._snapshots))
        target.parent.mkdir(exist_ok=True)
        self.export(target)
        return target
