"""Capability probes: can this machine mount kernel overlayfs, and if not, why not.

A probe does the real thing (namespace, tmpfs, overlay mount, an opaque-directory write) in a
throw-away child, so it never changes the state of the pytest process.  The same probes decide
backend selection and gate the project's own tests.

The child takes a few milliseconds, most of them waited for.  In place (or with
``overlay_userns = early``) the plugin starts it before the conftests are imported
(:func:`probe_ahead`) and imports its machinery while it probes; :func:`probe_kernel` then
reads its answer and reaps it.  As root, in place, that happens only when the backend is chosen
at ``pytest_configure``: the child also works while pytest loads the conftests.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _namespaces, _overlayopts, _syscalls


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of a probe: ``ok``, a short ``mode`` and, when not ok, the ``reason``."""

    ok: bool
    mode: str
    reason: str = ""
    tmpfs_user_xattrs: bool = True
    """Whether the probe's tmpfs stored ``user.*`` xattrs (Linux 6.6 and newer)."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _kernel_version() -> tuple[int, int]:
    release = platform.release().split("-")[0].split(".")
    try:
        return int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return 0, 0


_APPARMOR_SYSCTL = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
_APPARMOR_RESTRICTS = (
    "AppArmor restricts unprivileged user namespaces "
    "(kernel.apparmor_restrict_unprivileged_userns=1, the default on Ubuntu 23.10+)"
)
APPARMOR_FIX = (
    "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (permanently: "
    "`echo kernel.apparmor_restrict_unprivileged_userns=0 "
    "| sudo tee /etc/sysctl.d/60-pytest-overlay.conf`)"
)


def docker_fix(*, userns: bool = False, fuse: bool = False) -> str:
    """The ``docker run`` options a container needs for mounts: the one recipe every message
    gives (``docs/backends.md#ci``).  A user namespace also needs Docker's seccomp profile
    lifted, which blocks ``unshare(CLONE_NEWUSER)``; FUSE needs the device."""
    flags = ["--cap-add SYS_ADMIN"]
    if fuse:
        flags.append("--device /dev/fuse")
    flags.append("--security-opt apparmor=unconfined")
    if userns:
        flags.append("--security-opt seccomp=unconfined")
    return f"`docker run {' '.join(flags)}` (or `--privileged`)"


def lacks_sys_admin() -> bool:
    """Root by uid that cannot mount: a container's root without ``CAP_SYS_ADMIN``.

    Telling this root to "run as root" would send it in a circle: what it lacks is the
    capability, which only whoever starts the container can give.
    """
    return os.geteuid() == 0 and not _namespaces.is_real_root()


LACKS_SYS_ADMIN = (
    "this root lacks CAP_SYS_ADMIN (a container's root does, unless the container is "
    "started with it)"
)


def root_fix(recipe: str) -> str:
    """The privilege remedy that fits this process, *recipe* being the ``docker run`` one.

    An ordinary user is told to run as root; a root without ``CAP_SYS_ADMIN`` is told what
    it lacks and how its container gets it.
    """
    if lacks_sys_admin():
        return f"{LACKS_SYS_ADMIN}: run the container with {recipe}"
    return "run as root (`sudo -E pytest`)"


_MEANWHILE = (
    "meanwhile the overlay_root fixture works on the fuse backend or with --overlay-backend=copy"
)


def for_the_command_line(reason: str) -> str:
    """*reason* without its advice for pytest runs (the fixture), which the command-line
    tool, mounting a kept layer, cannot take."""
    return reason.removesuffix(f"; {_MEANWHILE}")


# A policy, not a missing feature: AppArmor's unprivileged_userns profile answers a mount in
# the new namespace with EPERM (capability denied) or EACCES (mount rule denied), and so do
# seccomp profiles and other LSMs.
_MOUNT_DENIED = frozenset({errno.EPERM, errno.EACCES})


def apparmor_restricts_userns() -> bool:
    """Whether AppArmor's sysctl restricts unprivileged user namespaces on this machine."""
    return _read(_APPARMOR_SYSCTL) == "1"


def _errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def explain_userns_failure(step: str, err: int) -> str:
    """Turn a failed step of entering a user namespace into advice for the user."""
    if apparmor_restricts_userns():
        return (
            f"{_APPARMOR_RESTRICTS}; allow them with {APPARMOR_FIX}, or "
            f"{root_fix(docker_fix(userns=True))}"
        )
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return (
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); "
            "enable them with `sudo sysctl -w kernel.unprivileged_userns_clone=1`"
        )
    if _read("/proc/sys/user/max_user_namespaces") == "0" or err == errno.ENOSPC:
        return (
            "user namespaces are disabled (user.max_user_namespaces=0); "
            "enable them with `sudo sysctl -w user.max_user_namespaces=15000`"
        )
    if err == errno.EPERM and step == "unshare":
        blocked = (
            "creating a user namespace is not permitted here (a container's seccomp profile, "
            "such as Docker's default, or a chroot blocks it)"
        )
        if lacks_sys_admin():
            return f"{blocked}, and {root_fix(docker_fix(userns=True))}"
        return f"{blocked}; run the container with {docker_fix(userns=True)}, or {root_fix('')}"
    return f"{step} failed: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})"


def explain_mount_denied(what: str, err: int) -> str:
    """Advice for a user namespace that was created but in which *what* was denied *err*.

    This is how Ubuntu 23.10+ looks to an ordinary user (GitHub's ubuntu-24.04 runners among
    them): AppArmor lets ``unshare(CLONE_NEWUSER)`` succeed, then denies every mount in it.
    """
    denied = f"the user namespace was created, but {what} in it was denied ({_errno_name(err)})"
    if apparmor_restricts_userns():
        return (
            f"{_APPARMOR_RESTRICTS}: {denied}; lift it with {APPARMOR_FIX}, or "
            f"{root_fix(docker_fix())}; {_MEANWHILE}"
        )
    return (
        f"{denied}: on Ubuntu 23.10+ AppArmor's kernel.apparmor_restrict_unprivileged_userns "
        f"does this, lifted with {APPARMOR_FIX}; in a container a seccomp or LSM policy, "
        f"lifted with {docker_fix(userns=True)}; or {root_fix(docker_fix())}; {_MEANWHILE}"
    )


def explain_overlay_failure(err: int, *, unprivileged: bool) -> str:
    """Turn a failed overlay mount into advice for the user."""
    version = _kernel_version()
    if unprivileged and version < (5, 11):
        return (
            f"Linux {version[0]}.{version[1]} cannot mount overlayfs without root "
            "(needs 5.11 or newer); run the tests as root or upgrade the kernel"
        )
    filesystems = _read("/proc/filesystems") or ""
    if "overlay" not in filesystems and err in (errno.ENODEV, errno.EINVAL):
        return "this kernel has no overlayfs; load it with `sudo modprobe overlay`"
    if err == errno.EPERM:
        return (
            "mounting overlayfs is not permitted here (a container without CAP_SYS_ADMIN, or "
            "an AppArmor or SELinux policy that denies mount)"
        )
    return f"mounting overlayfs failed: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})"


def _probe_in_child(unprivileged: bool, lower: str | None = None) -> ProbeResult:
    """The probe body; runs in a forked child or in a fresh interpreter.

    With *lower*, it mounts an overlay over that real directory (read-only, as every lower
    layer; the upper is on the probe's tmpfs) and checks nothing else: whether the kernel
    accepts that directory as a lower layer at all.
    """
    mode = "user namespace" if unprivileged else "root"
    step = "unshare"
    outside = _user_namespace_id()
    try:
        if unprivileged:
            _namespaces.enter_user_namespace(for_children=False)
        else:
            _syscalls.unshare(_syscalls.CLONE_NEWNS)
            step = "make mounts private"
            _syscalls.mount(None, "/", None, _syscalls.MS_REC | _syscalls.MS_PRIVATE)
    except OSError as exc:
        err = exc.errno or 0
        if unprivileged and err in _MOUNT_DENIED and _ids_mapped(outside):
            # Only the mount that makes the new namespace's mounts private was left.
            return ProbeResult(False, mode, explain_mount_denied("a mount", err))
        return ProbeResult(False, mode, explain_userns_failure(step, err))
    scratch = Path(tempfile.mkdtemp(prefix="pytest-overlay-probe-"))
    try:
        try:
            with _namespaces.privileged():
                _syscalls.mount("tmpfs", scratch, "tmpfs", 0, "mode=0755")
        except OSError as exc:
            if unprivileged and exc.errno in _MOUNT_DENIED:
                return ProbeResult(False, mode, explain_mount_denied("a tmpfs mount", exc.errno))
            raise
        tmpfs_xattrs = _overlayopts.user_xattrs(scratch)
        if unprivileged and not tmpfs_xattrs:
            # As the kernel backend does: the upper layer goes on the disk instead.
            with _namespaces.privileged():
                _syscalls.umount(scratch, _syscalls.MNT_DETACH)
            if not _overlayopts.user_xattrs(scratch):
                return ProbeResult(False, mode, explain_no_user_xattrs(scratch))
        for name in ("lower/d", "upper", "work", "merged"):
            (scratch / name).mkdir(parents=True)
        (scratch / "lower/d/f").write_text("x")
        # The options a view mounts with, through the same builder: the probe must refuse
        # exactly what a view's mount would refuse, on every kernel (lowerdir+ is 6.8+).
        options = _overlayopts.view_options(
            scratch / "upper",
            scratch / "work",
            userxattr=unprivileged,
            # Where tmpfs stores no user.* xattrs, views may keep their upper on the disk.
            volatile=not tmpfs_xattrs,
        )
        try:
            with _namespaces.privileged():
                _overlayopts.mount_overlay(
                    scratch / "merged", [Path(lower) if lower else scratch / "lower"], options
                )
        except OSError as exc:
            if lower is not None:
                return ProbeResult(False, mode, explain_lower_failure(lower, exc.errno or 0))
            if unprivileged and exc.errno in _MOUNT_DENIED and _kernel_version() >= (5, 11):
                return ProbeResult(
                    False, mode, explain_mount_denied("the overlay mount", exc.errno)
                )
            return ProbeResult(
                False, mode, explain_overlay_failure(exc.errno or 0, unprivileged=unprivileged)
            )
        if lower is not None:
            os.listdir(scratch / "merged")
            return ProbeResult(True, mode, tmpfs_user_xattrs=tmpfs_xattrs)
        # Recreating a lower directory needs an opaque xattr: without userxattr support this
        # is where an unprivileged overlay fails with EIO.
        shutil.rmtree(scratch / "merged/d")
        (scratch / "merged/d").mkdir()
        (scratch / "merged/d/g").write_text("y")
        return ProbeResult(True, mode, tmpfs_user_xattrs=tmpfs_xattrs)
    except OSError as exc:
        return ProbeResult(False, mode, f"overlay self-test failed: {exc}")
    finally:
        # The mounts die with this child's namespace; only the empty host directory remains.
        with _namespaces.privileged():
            for target in (scratch / "merged", scratch):
                with contextlib.suppress(OSError):
                    _syscalls.umount(target, _syscalls.MNT_DETACH)
        shutil.rmtree(scratch, ignore_errors=True)


def _user_namespace_id() -> int | None:
    try:
        return os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return None


def _ids_mapped(outside: int | None) -> bool:
    """Whether this process left the user namespace *outside* and its ids are mapped.

    After a failure of :func:`_namespaces.enter_user_namespace`, that means creating the
    namespace worked and its mount did not.
    """
    if outside is None or _user_namespace_id() in (None, outside):
        return False
    return all(_read(f"/proc/self/{name}") for name in ("uid_map", "gid_map"))


def explain_no_user_xattrs(directory: Path) -> str:
    """Why an unprivileged overlay cannot have its upper layer on tmpfs nor beside *directory*."""
    version = _kernel_version()
    return (
        f"an unprivileged overlay keeps its upper layer where user.* xattrs are stored, and "
        f"neither tmpfs on Linux {version[0]}.{version[1]} (6.6 adds them) nor "
        f"{directory.parent} (the temporary directory) stores them; point TMPDIR and "
        "--basetemp at a disk filesystem such as ext4, xfs or btrfs, or run as root"
    )


def explain_lower_failure(lower: str, err: int) -> str:
    """Why the kernel refused *lower* as a lower layer, and what to use instead."""
    if err == errno.EINVAL:
        return (
            f"the kernel refuses {lower} as a lower layer: it is on overlayfs that itself lies "
            "on overlayfs (a container inside a container, or pytest run inside an overlay "
            "view), and overlayfs stacks at most two levels deep"
        )
    return f"the kernel refuses {lower} as a lower layer: {os.strerror(err)}"


def probe_kernel(lower: Path | None = None) -> ProbeResult:
    """Probe kernel overlayfs for this process's privileges, without changing its state.

    :param lower: instead of the general self-test, check that the kernel accepts this
        directory as a lower layer (an overlayfs stacked too deep is refused).
    """
    if not sys.platform.startswith("linux"):
        return ProbeResult(False, "", f"kernel overlayfs needs Linux, this is {sys.platform}")
    global _tmpfs_user_xattrs
    ahead = _take_ahead() if lower is None else None
    if _namespaces.entered_user_namespace():
        if ahead is not None:
            ahead.result()  # reaped: it probed from outside the namespace
        # Probed before entering it; a lower layer stacked too deep shows at the first mount.
        return ProbeResult(True, "user namespace", tmpfs_user_xattrs=_tmpfs_user_xattrs)
    unprivileged = not _namespaces.is_real_root()
    if ahead is not None and ahead.unprivileged == unprivileged:
        result = ahead.result()
    elif ahead is not None:
        ahead.result()  # reaped: the privileges changed since (a conftest dropped root)
        return probe_kernel(lower)
    elif _namespaces.thread_count() == 1:
        result = _run_forked(unprivileged, lower)
    else:
        result = _run_interpreter(unprivileged, lower)
    if result.ok and lower is None:
        _tmpfs_user_xattrs = result.tmpfs_user_xattrs
    return result


_tmpfs_user_xattrs = True
"""What the last probe before entering the user namespace found (it cannot be asked after)."""


@dataclass(frozen=True)
class _Forked:
    """A probe running in a forked child, which reports through a pipe."""

    pid: int
    pipe: int
    unprivileged: bool

    @classmethod
    def start(cls, unprivileged: bool, lower: Path | None = None) -> _Forked:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            os.close(read_fd)
            try:
                result = _probe_in_child(unprivileged, None if lower is None else str(lower))
                os.write(write_fd, json.dumps(result.__dict__).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        return cls(pid, read_fd, unprivileged)

    def result(self) -> ProbeResult:
        """Wait for the child's answer, and reap it."""
        with os.fdopen(self.pipe, "rb") as pipe:
            data = pipe.read()
        # Started ahead, it may have been reaped already by a conftest's os.wait().
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        return _decode(data, "user namespace" if self.unprivileged else "root")


def _run_forked(unprivileged: bool, lower: Path | None = None) -> ProbeResult:
    return _Forked.start(unprivileged, lower).result()


_ahead: tuple[int, _Forked] | None = None
"""The probe :func:`probe_ahead` started, with the pid of the process that started it."""


def probe_ahead() -> None:
    """Start the general probe now, in a child, for :func:`probe_kernel` to read later.

    Only in a single-threaded process (a child is forked only from one); the pipe is not
    inherited by what the process starts meanwhile.  A forked copy of the process (a
    conftest's) does not take the answer: it probes again.
    """
    global _ahead
    if _ahead is not None or not sys.platform.startswith("linux"):
        return
    if _namespaces.entered_user_namespace() or _namespaces.thread_count() != 1:
        return
    _ahead = (os.getpid(), _Forked.start(not _namespaces.is_real_root()))


def _take_ahead() -> _Forked | None:
    """The probe started ahead by this process, if any, handed over once."""
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is None or ahead[0] != os.getpid():
        return None
    return ahead[1]


def _run_interpreter(unprivileged: bool, lower: Path | None = None) -> ProbeResult:
    # Forking a multi-threaded process is unsafe, so probe from a fresh interpreter instead.
    argv = [sys.executable, "-m", "pytest_overlay._probe", "user" if unprivileged else "root"]
    argv += [] if lower is None else [os.fspath(lower)]
    completed = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    return _decode(completed.stdout, "user namespace" if unprivileged else "root")


def _decode(data: bytes, mode: str) -> ProbeResult:
    try:
        return ProbeResult(**json.loads(data))
    except (ValueError, TypeError):
        return ProbeResult(False, mode, "the kernel overlayfs probe crashed")


if __name__ == "__main__":  # pragma: no cover - entry point of _run_interpreter
    args = sys.argv[1:]
    result = _probe_in_child(args[:1] == ["user"], args[1] if len(args) > 1 else None)
    print(json.dumps(result.__dict__))
