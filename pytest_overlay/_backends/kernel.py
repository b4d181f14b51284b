"""Kernel overlayfs, as root or inside our user namespace, with the upper layer on tmpfs.

Layout inside the calling thread's private mount namespace::

    scratch/                 a tmpfs for the session (the host only sees an empty directory)
      batch<n>/              a tmpfs per batch of views (see below)
        <label>/             a tmpfs per view: unmounting it frees the upper layer at once,
          .upper/ .work/     whatever modes the test left behind
          <project name>/    the merged view, named like the topmost lower
          .view/             in place, where the view is moved off the real path when closed

Where tmpfs stores no ``user.*`` xattrs (Linux before 6.6), the same tree is plain directories
on the disk beneath, pytest's temporary directory, as root too: see :meth:`KernelBackend.notes`.

Every unmount waits for an RCU grace period, 0.1 ms on an idle machine and several on a busy
one: more than the rest of a test's mount cycle.  So a closed view nobody holds is not
unmounted on its own: it is left in its batch (in place, moved off the real path first, which
waits for nothing), out of every test's way, and a batch is detached at once, with a single
grace period, when :data:`BATCH` views in it are closed and none is still open or parked, by
a reaper process off the tests' path (:mod:`.reaper`).  A view whose upper layer holds more
than :data:`KEEP_AT_MOST` bytes, or that something still uses, is detached at once, as before.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_overlay import _mountinfo, _namespaces, _overlayopts, _probe, _syscalls
from pytest_overlay._errors import MountError
from pytest_overlay._holders import describe_holders, holders_of, view_device
from pytest_overlay._inotify import ChangeFlags

from . import reaper
from .base import ScratchBackend, safe_label
from .idmap import overflow_note, unmapped_owner
from .mounted import Parking, RealDirs, Spares, UpperLayerView, detach, readable_lowers

_this_thread = threading.local()


def _thread_id() -> int:
    """This thread's id, the key of what the backend keeps per thread (a mount namespace
    belongs to a thread), asked of the kernel once per thread: ``threading.get_native_id``
    is a system call, made four times per writing test."""
    try:
        return int(_this_thread.id)
    except AttributeError:
        _this_thread.id = threading.get_native_id()
        return int(_this_thread.id)


def _forget_thread_id() -> None:
    # A forked child's thread has an id of its own, as get_native_id would say.
    with contextlib.suppress(AttributeError):
        del _this_thread.id


if hasattr(os, "register_at_fork"):  # not on Windows, where this backend never runs
    os.register_at_fork(after_in_child=_forget_thread_id)

# Closed views left mounted in a batch before it is detached (see the module docstring).
BATCH = 32
# A closed view whose tmpfs holds more than this is unmounted at once, freeing its memory.
KEEP_AT_MOST = 4 << 20


class _Batch:
    """A tmpfs holding the views' tmpfs mounts, detached at once when they are all done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path_s = os.fspath(path)
        self.live = 0
        self.closed = 0


class _InPlace:
    """What the in-place views of one sandboxed directory share in one thread's mount
    namespace, on a tmpfs of their own in the scratch directory: a read-only clone of the real
    directory, attached once, where the diff reads it while a view covers it (a clone and an
    attach per view cost 0.1 ms); the park of their busy checks (:class:`~.mounted.Parking`);
    and the pass-through mounts of the view retired last, for the next view
    (:class:`~.mounted.Spares`).  Detached after the last test."""

    def __init__(self, root: Path, parking: Parking) -> None:
        self.root = root
        self.lower = root / "lower"
        self.parking = parking
        self.spares: Spares | None = None
        # Another sandboxed directory holds this one (found when its view was first mounted,
        # maybe after this one's): a view's way back from the park leads through the outer
        # view, not the real parent directory, so the views park on their own again.  The
        # read-only clone, taken of the real directory, stays right.
        self.nested = False

    def close(self) -> None:
        """Close the descriptors (the mounts go with the tmpfs, detached by the caller)."""
        if self.spares is not None:
            self.spares.close()
            self.spares = None
        self.parking.close()


class _NoReaper:
    """Where no reaper could be started: every batch is detached in place."""

    def detach(self, path: str) -> bool:
        return False

    def close(self) -> None:
        pass


class KernelMount(UpperLayerView):
    """A mounted overlay of one test."""

    def __init__(
        self,
        root: Path,
        merged: Path,
        lowers: tuple[Path, ...],
        backend: KernelBackend,
        batch: _Batch,
        shared: _InPlace | None = None,
    ) -> None:
        super().__init__(root, merged, lowers)
        self._closed = False
        self._backend = backend
        self._batch = batch
        self._shared = shared
        # What the view's own directory is: a view whose directory a test hid (a mount over
        # the scratch directory) could not be closed later, so it goes now, and the test that
        # hid it errs, not the next one.
        st = os.stat(root)
        self._root_id = (st.st_dev, st.st_ino)
        self._root_s = os.fspath(root)
        batch.live += 1

    def reusable(self) -> bool:
        return not self._closed and self._reachable() and self._reusable()

    def _reachable(self) -> bool:
        try:
            st = os.stat(self._root_s)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._root_id

    def _parking(self) -> Parking | None:
        shared = self._shared
        return None if shared is None or shared.nested else shared.parking

    def close(self) -> list[str]:
        if self._closed:
            return []
        self._closed = True
        retired = False
        try:
            retired = self._retire()
            return [] if retired else self._unmount()
        finally:
            # Retired: idle, nothing writes to it any more, and its watch goes with its batch.
            self.stop_watching(unwatch=not retired)
            self.close_descriptors()
            self._batch.live -= 1
            self._backend.retired(self._batch)

    def _retire(self) -> bool:
        """Leave the view in its batch, to be unmounted with it, if nothing holds it and it
        holds little; returns whether it did."""
        if self._backend.upper_on_disk:
            # No tmpfs of its own to go with the batch: unmount it and remove its upper now.
            return False
        try:
            with _namespaces.privileged():
                if _used(self._root) > KEEP_AT_MOST:
                    return False
                # Its pass-through mounts stay where the check parked them (two moves saved
                # per writing test in place): for the next view, where the backend keeps them,
                # or else in this view's tmpfs, to go with its batch.
                shared = self._shared
                if shared is not None and shared.nested:
                    shared = None
                keep = shared is None or shared.spares is None
                # Checked already, just before (nothing since: the process is outside it, and
                # the tool state carried aside was read from the upper layer, not the view).
                if not self.idle_checked and not self._idle(leave_aside=keep):
                    return False
                if shared is not None and keep:
                    shared.spares = self.hand_over()
                if self._merged.parent != self._root:
                    # In place: off the real path.
                    aside = self._root / ".view"
                    aside.mkdir()
                    _syscalls.move_attached(self._merged, aside)
        except OSError:
            return False
        self._batch.closed += 1
        return True

    def _unmount(self) -> list[str]:
        with _namespaces.privileged():
            # Every unmount waits for an RCU grace period (~50 us), so detach whole trees at
            # once; MNT_EXPIRE answers "busy?" without unmounting and without that wait.
            for bind in reversed(self.binds):
                detach(bind)
            busy = _is_busy(self._merged)
            # Named before the detach, while the view still shows its device.
            inside = self._merged if self._merged.parent == self._root else None
            who = ""
            if busy:
                who = describe_holders(holders_of(view_device(self._merged), inside=inside))
            if self._merged.parent != self._root:
                detach(self._merged)  # in-place: the view sits outside our tmpfs
            detach(self._root)
            try:
                _remove_tree(self._root)  # a directory on disk (tmpfs without user xattrs)
            except OSError as exc:
                return [f"could not remove {self._root}: {exc}"]
        if busy:
            who = who or " (a process the test started, or an open file)"
            return [
                f"{self._merged} was still in use{who}, so it was detached lazily: the kernel "
                "frees it when that process exits"
            ]
        return []


def _used(path: Path) -> int:
    """Bytes in use on the filesystem at *path*."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _mounts_under(root: Path) -> list[Path]:
    """Mount points at or below *root* in the calling thread's mount table."""
    return [m.point for m in _mountinfo.read() if m.point == root or root in m.point.parents]


def _remove_tree(root: Path) -> None:
    """Remove *root*: an empty mount point, or an upper layer kept on disk.

    Never while something is mounted at or below *root*: an in-place view binds the real
    project below it, and removing through that bind would delete the user's files.
    """
    try:
        root.rmdir()
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        # Without a tmpfs at root, detaching root detached nothing: the view (and in place,
        # the clones of the real directories) are still mounted below it.
        for point in sorted(_mounts_under(root), key=lambda p: len(p.parts), reverse=True):
            detach(point)
        if _mounts_under(root):
            raise OSError(errno.EBUSY, "something is still mounted below it") from exc
        # A test may leave directories without write or search permission.
        for directory, dirnames, _ in os.walk(root):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(directory, name), 0o700, follow_symlinks=False)
        shutil.rmtree(root)


def _is_busy(target: Path) -> bool:
    try:
        _syscalls.umount(target, _syscalls.MNT_EXPIRE)
    except OSError as exc:
        # EAGAIN: idle (now marked for expiry, which the detach below makes moot).
        return exc.errno == errno.EBUSY
    return False


class KernelBackend(ScratchBackend[KernelMount]):
    """Kernel overlayfs in a private mount namespace."""

    name = "kernel"
    user_namespace = True

    def __init__(self, scratch: Callable[[], Path], upper_size: str = "") -> None:
        super().__init__(scratch)
        self._upper_size = upper_size
        self._counter = itertools.count()
        self._probe: _probe.ProbeResult | None = None
        self._ready_threads: set[int] = set()
        self._unprivileged: bool | None = None
        self._upper_on_disk = False
        self._tmpfs_options = "mode=0755" + (f",size={upper_size}" if upper_size else "")
        self._batches = itertools.count()
        # The batch new views go into, per thread (each has a mount namespace of its own).
        self._current: dict[int, _Batch] = {}
        # What changed in which view's upper layer (see mounted.py, check 2).
        self._changes = ChangeFlags()
        # Per thread (each has a mount namespace of its own): who detaches its full batches.
        self._reapers: dict[int, _NoReaper | reaper.Reaper] = {}
        # Per thread and sandboxed directory, what its in-place views share (None: nothing,
        # see _share_in_place); made at its first view.
        self._in_place: dict[tuple[int, Path], _InPlace | None] = {}

    def _probe_result(self) -> _probe.ProbeResult:
        if self._probe is None:
            self._probe = _probe.probe_kernel()
        return self._probe

    def unavailable_reason(self) -> str | None:
        result = self._probe_result()
        return None if result.ok else result.reason

    def describe(self) -> str:
        return self._probe_result().mode

    def notes(self) -> list[str]:
        if self._probe_result().tmpfs_user_xattrs:
            return []
        major, minor = _probe._kernel_version()
        tmpfs = f"tmpfs on Linux {major}.{minor} stores no user.* xattrs (6.6 does)"
        if self.unprivileged:  # the probe checked the disk, and passed the kernel over if not
            return [
                f"upper layers on the disk, in pytest's temporary directory: {tmpfs}, and the "
                "overlay marks directories with them"
            ]
        # What the disk is, is known only at the first test (see _prepare_thread).
        return [
            "upper layers on the disk, in pytest's temporary directory, unless that is on "
            f"tmpfs, overlayfs or FUSE: {tmpfs}, and a project's files may carry them"
        ]

    def in_place_refusal(self, *, explicit: bool) -> str | None:
        return None

    def lowers_refusal(self, lowers: Sequence[Path], *, explicit: bool) -> str | None:
        # An explicit choice is not checked for a lower stacked too deep: its mount says so.
        if explicit:
            return unmapped_owner(lowers)
        return refused_lower(lowers) or unmapped_owner(lowers)

    def failure_note(self, error: BaseException | None) -> str:
        # In a user namespace, EOVERFLOW on a write is a copy-up of a file with an unmapped owner.
        overflow = overflow_note(error) if self.unprivileged else ""
        return upper_full_note(error, self._upper_size) or overflow

    @property
    def unprivileged(self) -> bool:
        # Asked on every mount: computed once (it reads /proc and calls capget).
        if self._unprivileged is None:
            self._unprivileged = not _namespaces.is_real_root()
        return self._unprivileged

    def _prepare_thread(self) -> None:
        native_id = _thread_id()
        if native_id in self._ready_threads:
            return
        if self.unprivileged and not _namespaces.entered_user_namespace():
            threads = _namespaces.thread_count()
            if threads > 1:
                reason = _namespaces.threads_reason(threads, _namespaces.LAZY)
                raise MountError(errno.EINVAL, f"cannot enter a user namespace: {reason}")
            _namespaces.enter_user_namespace(for_children=False)
        _namespaces.ensure_private_mount_namespace()
        self._scratch.mkdir(parents=True, exist_ok=True)
        with _namespaces.privileged():
            _syscalls.mount("tmpfs", self._scratch, "tmpfs", _syscalls.MS_NOSUID, "mode=0755")
            if not _overlayopts.user_xattrs(self._scratch):
                # tmpfs before Linux 6.6 stores no user.* xattrs.  An unprivileged overlay
                # could not mark its opaque directories there; as root, copy-up would drop a
                # project file's own user.* xattrs (overlayfs ignores EOPNOTSUPP for xattrs
                # it does not need) and a test's setxattr would fail.  So the upper layers go
                # on the disk beneath, where it stores them (as an ordinary user the probe
                # checked it does; as root a tmpfs is still better than no kernel backend).
                _syscalls.umount(self._scratch, _syscalls.MNT_DETACH)
                if self.unprivileged or upper_on_disk_works(self._scratch):
                    self._upper_on_disk = True
                else:
                    _syscalls.mount(
                        "tmpfs", self._scratch, "tmpfs", _syscalls.MS_NOSUID, "mode=0755"
                    )
        self._ready_threads.add(native_id)

    @property
    def upper_on_disk(self) -> bool:
        """Whether views keep their upper layers on the disk (tmpfs without user xattrs)."""
        return self._upper_on_disk

    def batch(self) -> _Batch:
        """The batch new views go into (a new one once the current one has had enough)."""
        thread = _thread_id()
        batch = self._current.get(thread)
        if batch is None or batch.closed + batch.live >= BATCH:
            path = self._scratch / f"batch{next(self._batches)}"
            path.mkdir()
            if not self._upper_on_disk:  # on disk, a batch is a plain directory
                with _namespaces.privileged():
                    _syscalls.mount("tmpfs", path, "tmpfs", _syscalls.MS_NOSUID, "mode=0755")
            batch = self._current[thread] = _Batch(path)
        return batch

    def retired(self, batch: _Batch, *, flush: bool = False) -> None:
        """A view of *batch* was closed: detach the batch if it is full (or *flush*) and all
        done."""
        thread = _thread_id()
        current = self._current.get(thread) is batch
        if batch.live or (current and batch.closed < BATCH and not flush):
            return
        if current:
            del self._current[thread]
        if not self._upper_on_disk and self._reaper(thread).detach(batch.path_s):
            return  # off the test's path (see reaper.py)
        try:
            with _namespaces.privileged():
                detach(batch.path)
        except MountError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # Out of reach under a mount a test made: it goes with the mount namespace.
            return
        with contextlib.suppress(OSError):
            batch.path.rmdir()

    def _share_in_place(self, target: Path) -> _InPlace | None:
        """Make (once per thread, before the first view covers *target*) what the in-place
        views of *target* share; None where they share nothing: upper layers on the disk, or
        the scratch directory inside *target* (pytester's layout), where a view's scratch
        mounts are reached through its own pass-through clone of it, or *target* inside another
        sandboxed directory (see :attr:`_InPlace.nested`)."""
        thread = _thread_id()
        key = (thread, target)
        if key in self._in_place:
            return self._in_place[key]
        self._in_place[key] = None
        scratch = self._scratch
        if self._upper_on_disk or scratch == target or target in scratch.parents:
            return None
        nested = False
        for (other_thread, other), state in self._in_place.items():
            if other_thread == thread and other in target.parents:
                nested = True
            elif other_thread == thread and target in other.parents and state is not None:
                state.nested = True  # mounted first, and this one goes over it
        if nested:
            return None
        root = scratch / f"inplace{len(self._in_place)}"
        try:
            root.mkdir()
            _syscalls.mount("tmpfs", root, "tmpfs", _syscalls.MS_NOSUID, "mode=0755")
        except OSError:
            return None  # each view makes its own, and says what fails
        try:
            (root / "lower").mkdir()
            (root / "park").mkdir()
            # Not recursive: the overlay shows no mount below a lower layer either.
            clone = _syscalls.clone_tree(target, readonly=True, recursive=False)
            try:
                _syscalls.attach_tree(clone, root / "lower")
            finally:
                os.close(clone)
            shared = _InPlace(root, Parking(os.fspath(root / "park"), os.fspath(target.parent)))
        except OSError:
            with contextlib.suppress(OSError):
                detach(root)
            return None
        self._in_place[key] = shared
        return shared

    def _drop_in_place(self, thread: int | None) -> None:
        """Detach what the in-place views of *thread* (None: every thread) share."""
        for key in [k for k in self._in_place if thread is None or k[0] == thread]:
            shared = self._in_place.pop(key)
            if shared is None:
                continue
            shared.close()
            if key[0] == _thread_id():  # another thread's namespace is not ours
                with _namespaces.privileged(), contextlib.suppress(OSError):
                    detach(shared.root)
                    shared.root.rmdir()

    def _mount(
        self, lowers: Sequence[Path], label: str, target: Path | None, passthrough: Sequence[Path]
    ) -> KernelMount:
        self._prepare_thread()
        # Raised once for the whole mount: in a user namespace each raise and drop costs three
        # system calls, and a mount in place needs four of them.
        with _namespaces.privileged():
            return self._mount_raised(lowers, label, target, passthrough)

    def _mount_raised(
        self, lowers: Sequence[Path], label: str, target: Path | None, passthrough: Sequence[Path]
    ) -> KernelMount:
        batch = self.batch()
        name = f"{safe_label(label)}{next(self._counter)}"
        # Strings, not Paths, on this path: each Path join costs a few microseconds.
        root_s = f"{batch.path_s}/{name}"
        try:
            os.mkdir(root_s)
        except FileNotFoundError:
            # The batch is out of reach (a test mounted over the scratch directory): leave it
            # to the namespace's end and start another where the scratch path leads now.
            self._current.pop(_thread_id(), None)
            batch = self.batch()
            root_s = f"{batch.path_s}/{name}"
            os.mkdir(root_s)
        root = Path(root_s)
        if not self._upper_on_disk:
            _syscalls.mount("tmpfs", root_s, "tmpfs", 0, self._tmpfs_options)
        upper, work = f"{root_s}/.upper", f"{root_s}/.work"
        merged = target or root / (lowers[0].name or "root")
        os.mkdir(upper)
        os.mkdir(work)
        if target is None:
            os.mkdir(merged)
        _copy_root_metadata(lowers[0], upper)
        shared = None if target is None else self._share_in_place(target)
        spares = None
        if shared is None:
            readable = readable_lowers(lowers, target, root)
            real = RealDirs(passthrough)
            held = readable
        else:
            readable = [shared.lower if lower == target else lower for lower in lowers]
            spares, shared.spares = shared.spares, None  # never any once nested
            real = RealDirs(() if spares else passthrough)
            held = list(lowers)  # cloned once, above
        mount = KernelMount(root, merged, tuple(readable), self, batch, shared)
        try:
            # Before the overlay hides them (the clones go with this mount's tmpfs).
            real.hold(lowers, held)
            self._mount_overlay(merged, lowers, upper, work)
            if spares is not None and shared is not None:
                mount.adopt(spares, shared.parking)
            else:
                mount.put_back(real)
            mount.remember_fresh(self._changes)
        except OSError as exc:
            if spares is not None:
                spares.close()  # those not adopted yet
            mount.close()
            hint = _stacking_hint(lowers) if exc.errno == errno.EINVAL else ""
            raise MountError(
                exc.errno or 0,
                f"could not mount overlayfs at {merged} over {', '.join(map(str, lowers))}: "
                f"{exc.strerror}{hint}",
            ) from exc
        finally:
            real.close()
        return mount

    def _mount_overlay(self, merged: Path, lowers: Sequence[Path], upper: str, work: str) -> None:
        options = _overlayopts.view_options(
            upper, work, userxattr=self.unprivileged, volatile=self._upper_on_disk
        )
        _overlayopts.mount_overlay(merged, lowers, options)

    def _reaper(self, thread: int) -> _NoReaper | reaper.Reaper:
        """The reaper of *thread*'s mount namespace, started at its first batch."""
        found = self._reapers.get(thread)
        if found is None:
            found = self._reapers[thread] = reaper.start(_namespaces.privileged) or _NoReaper()
        return found

    def flush(self) -> None:
        thread = _thread_id()
        batch = self._current.get(thread)
        if batch is not None:
            self.retired(batch, flush=True)
        # After the last test, what runs next finds no mount of ours: wait for the reaper.
        started = self._reapers.pop(thread, None)
        if started is not None:
            started.close()
        self._drop_in_place(thread)

    def shutdown(self) -> None:
        self._changes.close()
        # Before the scratch tmpfs goes: what they still detach is below it.
        for started in self._reapers.values():
            started.close()
        self._reapers.clear()
        self._drop_in_place(None)
        if self._scratch_path is None:
            return
        # The tmpfs lives in this process's private namespace and dies with it; unmounting
        # now just returns the memory early.
        if _thread_id() in self._ready_threads:
            with _namespaces.privileged(), contextlib.suppress(OSError):
                _syscalls.umount(self._scratch, _syscalls.MNT_DETACH)
            self._ready_threads.discard(_thread_id())
        with contextlib.suppress(OSError):
            self._scratch.rmdir()


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem *path* is on, as the calling thread's mount table says."""
    try:
        mounts = _mountinfo.read()
    except OSError:
        return None
    mount = _mountinfo.containing_mount(Path(os.path.realpath(path)), mounts)
    return None if mount is None else mount.fstype


def upper_on_disk_works(directory: Path) -> bool:
    """Whether *directory*'s filesystem can hold upper layers with their ``user.*`` xattrs.

    Overlayfs cannot be an upper layer itself, and a FUSE filesystem may pass the xattr test
    and still lack what an upper layer needs (``O_TMPFILE``, ``RENAME_WHITEOUT``).
    """
    fstype = _filesystem_type(directory) or ""
    if fstype == "overlay" or fstype.startswith("fuse"):
        return False
    try:
        return _overlayopts.user_xattrs(directory)
    except OSError:  # any other refusal: a tmpfs upper still works, without user.* xattrs
        return False


def refused_lower(lowers: Sequence[Path]) -> str | None:
    """Why the kernel refuses one of *lowers* as a lower layer, or None.

    Only a lower on overlayfs can be refused (stacked too deep), so only those are checked,
    with a real test mount in a throw-away child.
    """
    for lower in lowers:
        if _filesystem_type(lower) == "overlay":
            result = _probe.probe_kernel(lower)
            if not result.ok:
                return result.reason
    return None


def _stacking_hint(lowers: Sequence[Path]) -> str:
    """Why a mount over *lowers* may fail with EINVAL: an overlayfs lower stacked too deep."""
    for lower in lowers:
        if _filesystem_type(lower) == "overlay":
            return (
                f"; {lower} is on overlayfs, and the kernel stacks overlayfs at most two levels "
                "deep: if that overlayfs itself lies on another one (a container inside a "
                "container, or pytest run inside an overlay view), it cannot be a lower layer "
                "(the kernel log then says 'maximum fs stacking depth exceeded'); use "
                "--overlay-backend=fuse (as root also with --overlay), or --overlay-backend=copy"
            )
    return ""


def _copy_root_metadata(lower_root: Path, upper: str) -> None:
    # The merged root takes its mode and owner from the upper directory: match the project's.
    st = lower_root.stat()
    os.chmod(upper, st.st_mode & 0o7777)
    if (st.st_uid, st.st_gid) != (0, 0) and os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(upper, st.st_uid, st.st_gid)


def upper_full_note(error: BaseException | None, upper_size: str) -> str:
    """Why a write failed with ENOSPC on the kernel backend: the test's upper layer is full."""
    if not isinstance(error, OSError) or error.errno != errno.ENOSPC:
        return ""
    limit = f"limited to {upper_size}" if upper_size else "at the tmpfs default, half the memory"
    return (
        f"The test's upper layer is full: it is a tmpfs {limit} "
        "(--overlay-upper-size / overlay_upper_size). Raise the limit, for example "
        "--overlay-upper-size=4G, or write large outputs outside the overlay (tmp_path)."
    )
