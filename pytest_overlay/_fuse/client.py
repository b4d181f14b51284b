"""Start and stop the FUSE server process, and tell whether FUSE can work here at all.

The server always runs in a process of its own (a Python FUSE callback that needs something the
accessing process holds would deadlock it for good; docs/how-it-works.md, "The fuse backend").
It is started with ``subprocess`` (no fork of a possibly multithreaded pytest), in its own
session (Ctrl-C reaches the tests, not the server; :meth:`FuseMount.close` stops it), and dies
with the thread that started it.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, final

from pytest_overlay import _syscalls
from pytest_overlay._errors import MountError
from pytest_overlay._probe import LACKS_SYS_ADMIN, docker_fix, lacks_sys_admin

from .server import EXIT_NO_LIBFUSE

__all__ = ["FuseMount", "ServerProcess", "availability", "fusermount_refusal", "start"]

_DEV_FUSE = "/dev/fuse"
LIBFUSE_MISSING = (
    "libfuse not installed: install the fuse3 package (apt install fuse3; libfuse2 works too)"
)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
READY_TIMEOUT_ENV = "PYTEST_OVERLAY_FUSE_READY_TIMEOUT"


def _ready_timeout() -> float:
    # Ten seconds is plenty on hardware; an emulated machine (qemu without KVM) starts a
    # server's Python several times slower.
    try:
        return max(float(os.environ.get(READY_TIMEOUT_ENV, "")), 1.0)
    except ValueError:
        return 10.0


READY_TIMEOUT = _ready_timeout()
"""Seconds a new FUSE server gets to become live (``$PYTEST_OVERLAY_FUSE_READY_TIMEOUT``)."""
# umount2 errors that mean "already gone": EINVAL (not a mount point any more), ENOENT.
_GONE = frozenset({errno.EINVAL, errno.ENOENT})


# fusermount3's own words (libfuse's util/fusermount.c) for the refusals one can fix, and how.
_FUSERMOUNT_FIXES = (
    (
        "only allowed if 'user_allow_other' is set",
        "add the line user_allow_other to /etc/fuse.conf (as root), or run as root",
    ),
    (
        "not owned by user",
        "in a sticky directory such as /tmp an ordinary user may mount FUSE only on a directory "
        "they own: mount on one of your own, or run as root",
    ),
    (
        "no write access to mountpoint",
        "an ordinary user may mount FUSE only on a directory they may write to: mount on one of "
        "your own, or run as root",
    ),
    (
        "too many FUSE filesystems mounted",
        "unmount FUSE mounts left behind (grep fuse /proc/self/mounts), or raise mount_max in "
        "/etc/fuse.conf",
    ),
    (
        "fuse device not found",
        "load the module (modprobe fuse), or start the container with --device /dev/fuse",
    ),
    (
        "failed to open /dev/fuse",
        "make /dev/fuse usable by everyone (chmod 0666 /dev/fuse, as distributions ship it), "
        "or run as root",
    ),
    (
        "mount failed: Operation not permitted",
        "the kernel refused fusermount3's mount: fusermount3 must be setuid root (ls -l "
        "$(command -v fusermount3)), and under no_new_privs, a seccomp filter or an AppArmor "
        "policy (in a container, say) it cannot mount; there, {root}",
    ),
)


def _root_remedy() -> str:
    if lacks_sys_admin():
        return f"{LACKS_SYS_ADMIN}: run the container with {docker_fix(fuse=True)}"
    return "run as root with CAP_SYS_ADMIN"


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def fusermount_refusal(output: str) -> str | None:
    """Why ``fusermount3`` refused a mount, from a server's *output*, and what to do about it.

    None when *output* has no line of ``fusermount3`` (or libfuse 2's ``fusermount``).
    """
    for line in output.splitlines():
        tool, colon, message = line.strip().partition(": ")
        if not colon or tool not in ("fusermount3", "fusermount"):
            continue
        for words, fix in _FUSERMOUNT_FIXES:
            if words in message:
                if "{root}" in fix:
                    # A container's root lacks the capability; root itself is no remedy.
                    fix = fix.format(root=_root_remedy())
                return f"{tool} refused it: {message}; {fix}"
        return f"{tool} refused it: {message}"
    return None


def availability() -> str | None:
    """Why the FUSE backend cannot work on this machine, or None if it can.

    Checks ``/dev/fuse`` (present and openable), libfuse (2 or 3, as mfusepy finds it) and,
    for an unprivileged user, ``fusermount3``.  Opening ``/dev/fuse`` mounts nothing.
    """
    if not sys.platform.startswith("linux"):
        # Not macFUSE nor WinFsp: mount options, the device and fusermount are Linux's.
        return f"the FUSE backend needs Linux, this is {sys.platform}"
    if not os.path.exists(_DEV_FUSE):
        return (
            f"{_DEV_FUSE} does not exist (no FUSE in this kernel or container): load the "
            "module (modprobe fuse), or start the container with --device /dev/fuse"
        )
    try:
        fd = os.open(_DEV_FUSE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        advice = ""
        if exc.errno in (errno.EACCES, errno.EPERM):
            advice = " (distributions ship it mode 0666: chmod 0666 /dev/fuse, or run as root)"
        return f"{_DEV_FUSE} cannot be opened: {exc.strerror}{advice}"
    os.close(fd)
    if not (ctypes.util.find_library("fuse") or ctypes.util.find_library("fuse3")):
        return LIBFUSE_MISSING
    try:
        import mfusepy  # noqa: F401  # only to see that it loads
    except ImportError:
        return "mfusepy is not installed: pip install mfusepy"
    except (OSError, AttributeError) as exc:
        return (
            f"libfuse cannot be loaded ({exc}): check FUSE_LIBRARY_PATH and FUSE_LIBRARY_NAME "
            "if they are set, or install it again: apt install fuse3"
        )
    if os.geteuid() != 0 and _fusermount() is None:
        return "fusermount3 not found (it mounts FUSE for non-root users): apt install fuse3"
    return None


def server_stderr(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace").strip()


class ServerProcess(Protocol):
    """The process that serves one mount: a :class:`subprocess.Popen`, or a forked child of
    the session's server (:class:`pytest_overlay._fuse.session.ForkedServer`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@final
class FuseMount:
    """A mounted overlay served by a server process; :meth:`close` unmounts and reaps it."""

    def __init__(self, mountpoint: Path, process: ServerProcess, log: IO[bytes]) -> None:
        self.mountpoint = mountpoint
        """Where the overlay is mounted."""
        self.process = process
        """The server process."""
        self._log = log
        self._closed = False
        self.stopped_by_signal = False
        """Whether :meth:`close` had to signal the server (it did not exit on unmount)."""
        self.busy = False
        """Whether :meth:`close` found the mount in use and detached it lazily.  The server
        then keeps serving whoever still uses it, and exits once they let go (or with the
        session's server)."""

    def stderr(self) -> str:
        """What the server has written to its standard error so far."""
        return server_stderr(self._log)

    def _unmount(self, *, lazy: bool) -> None:
        if os.geteuid() == 0:
            try:
                _syscalls.umount(self.mountpoint, _syscalls.MNT_DETACH if lazy else 0)
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    return
                # EPERM: root without CAP_SYS_ADMIN (a container's), whose mounts, if any,
                # fusermount3 made; it unmounts them too.
                if exc.errno != errno.EPERM:
                    raise
        tool = _fusermount()
        if tool is None:
            raise MountError(errno.ENOENT, "fusermount3 not found", str(self.mountpoint))
        command = [tool, "-u", *(["-z"] if lazy else []), str(self.mountpoint)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0 and "busy" in done.stderr:
            raise OSError(errno.EBUSY, done.stderr.strip(), str(self.mountpoint))

    def close(self, timeout: float = 5.0) -> None:
        """Unmount, wait for the server to exit, kill it if it does not.

        A mount still in use (a process the test left running) is detached lazily instead,
        and its server left serving that process (:attr:`busy`).  Safe to call twice.  The
        server exits by itself once its mount is gone.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # Even when the server has died: a mount without auto_unmount stays behind,
            # answering ENOTCONN, until it is unmounted.
            try:
                self._unmount(lazy=False)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                self._unmount(lazy=True)
                self.busy = True
                # The server still has work; it exits when the last user lets go.  A server
                # forked by the session's server is its to reap (a plain Popen is left be).
                release = getattr(self.process, "release", None)
                if release is not None:
                    release()
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        finally:
            if not self.busy and self.process.poll() is None:
                self.stopped_by_signal = True
                self.process.send_signal(signal.SIGTERM)  # libfuse unmounts on SIGTERM
                try:
                    self.process.wait(1.0)
                except subprocess.TimeoutExpired:
                    self.process.kill()  # auto_unmount's fusermount then unmounts
                    self.process.wait()
            self._log.close()

    def __enter__(self) -> FuseMount:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _command(
    lowers: Sequence[str | os.PathLike[str]],
    upper: str | os.PathLike[str] | None,
    work: str | os.PathLike[str] | None,
    mountpoint: str | os.PathLike[str],
    ready_fd: int,
    *,
    detach: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    command = [sys.executable, "-m", "pytest_overlay._fuse.server"]
    for lower in lowers:
        command += ["--lower", os.fspath(lower)]
    if upper is not None and work is not None:
        command += ["--upper", os.fspath(upper), "--work", os.fspath(work)]
    command += ["--ready-fd", str(ready_fd)]
    command += ["--detach"] if detach else ["--parent", str(os.getpid())]
    command += extra
    command += ["--", os.fspath(mountpoint)]
    return command


def _wait_ready(read_fd: int, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait for ``ready``; return why not (None when ready)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"the server was not ready after {timeout:g} s"
        readable, _, _ = select.select([read_fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(read_fd, 64)
        data += chunk
        if data.startswith(b"ready\n"):
            return None
        if not chunk:  # the server closed the pipe without saying ready: it has failed
            try:
                code = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                return "the server closed its ready pipe but did not exit"
            if code == EXIT_NO_LIBFUSE:
                return LIBFUSE_MISSING
            return f"the server exited with status {code}"


def start(
    lowers: Sequence[str | os.PathLike[str]],
    upper: str | os.PathLike[str],
    work: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    timeout: float = READY_TIMEOUT,
) -> FuseMount:
    """Mount an overlay of *lowers* (topmost first) and *upper* on *mountpoint* over FUSE.

    :param work: an empty directory on the same filesystem as *upper*.
    :param timeout: seconds to wait for the mount to become live.
    :returns: the running mount; call :meth:`FuseMount.close` (or use it as a context manager).
    :raises MountError: if the server fails or is not ready in time; the message has the
        server's standard error.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    log = tempfile.TemporaryFile(prefix="pytest-overlay-fuse-")  # noqa: SIM115  # FuseMount owns it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    try:
        process = subprocess.Popen(
            _command(lowers, upper, work, mountpoint, write_fd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_fd,),
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        log.close()
        raise
    os.close(write_fd)
    handle = FuseMount(Path(mountpoint), process, log)
    try:
        reason = _wait_ready(read_fd, process, timeout)
    except BaseException:
        handle.close()
        raise
    finally:
        os.close(read_fd)
    if reason is not None:
        raise failed_mount(handle, reason)
    return handle


def failed_mount(handle: FuseMount, reason: str) -> MountError:
    """Close a mount that did not become live; the error says why, with the server's output.

    When ``fusermount3`` refused the mount, its reason and the fix replace *reason*.
    """
    output = handle.stderr()
    handle.close()
    # fusermount3's line says why; the server's own last line only that mounting failed.
    reason = fusermount_refusal(output) or reason
    detail = f"\n--- server output ---\n{output}" if output else ""
    return MountError(
        errno.EIO, f"FUSE overlay mount failed: {reason}{detail}", os.fspath(handle.mountpoint)
    )
