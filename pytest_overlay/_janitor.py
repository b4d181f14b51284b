"""When pytest dies, unmount what it mounted in its private mount namespace.

A private mount namespace dies with its last process, and its mounts with it; but a process
a test started and never stopped lives in that namespace too, and keeps every mount of the
killed run (views, their tmpfs, the clones of the project) in its mount table for as long as
it runs.  So each private namespace gets a janitor: a process forked (twice: it is nobody's
child, so no test's ``os.wait()`` can meet it) right after the namespace is made, that waits
for the pytest process to end, however it ends, and then detaches every mount made in the
namespace since, and exits.  When pytest ends normally there is nothing left to detach.

Forked, not executed: it inherits the namespace and the permitted capabilities (an ordinary
user's, inside the user namespace), and it does nothing but wait on a pidfd, read the mount
table and call ``umount2``, which is safe in the child of a multi-threaded process.

When pytest ends normally, every janitor is killed and waited for at exit, so that nothing of
the run outlives it.  A janitor is a copy of the whole pytest process, which takes a few
milliseconds to die; so once the last session of the process has shut down (its mounts are
gone: nothing is left to detach), :func:`let_go` kills the janitors without waiting, and exit,
tens of milliseconds later, finds them gone.  A later session of the same process
(``pytest.main`` called again) that mounts in the same namespace starts a new one
(:func:`watched`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
from collections.abc import Callable

from . import _mountinfo, _syscalls
from ._daemon import cut_loose, fork_detached

__all__ = ["let_go", "start_janitor", "watched"]

# The pidfds of this process's janitors, by the mount namespace each watches (its inode)...
_watching: dict[int | None, int] = {}
# ... and of those killed by let_go, which exit still waits for.
_leaving: list[int] = []
_let_go = False
# The process that started them: a child forked from it (a test's) inherits these, and must
# not stop them when it exits.
_owner: int | None = None


def start_janitor(privileged: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
    """Watch this process from a janitor in the calling thread's mount namespace.

    :param privileged: raises the capabilities the janitor needs to unmount.
    """
    try:
        initial = {mount.mount_id for mount in _mountinfo.read()}
        pidfd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):  # no pidfds before Linux 5.3: no janitor
        return
    try:
        janitor = fork_detached(lambda: _serve(pidfd, initial, privileged))
    finally:
        os.close(pidfd)
    if janitor is not None:
        _stop_at_exit(janitor)


def _namespace() -> int | None:
    """The calling thread's mount namespace (its inode), or None if /proc cannot say."""
    try:
        return os.stat("/proc/thread-self/ns/mnt").st_ino
    except OSError:
        return None


def watched() -> bool:
    """Whether a janitor of this process watches the calling thread's mount namespace (asked
    only once :func:`let_go` has stopped one: until then a namespace made has its janitor)."""
    return not _let_go or _namespace() in _watching


def _stop_at_exit(janitor: int) -> None:
    """Kill the janitor when pytest ends normally (its mounts are gone already), and wait
    for it, so that nothing of the run outlives it."""
    global _owner
    try:
        handle = os.pidfd_open(janitor)
    except OSError:
        return
    _watching[_namespace()] = handle
    if _owner is None:
        _owner = os.getpid()
        atexit.register(_stop_all)


def let_go() -> None:
    """Kill every janitor now, without waiting for it: the session has shut down and nothing
    of it is mounted any more.  Exit waits for them (by then they are gone)."""
    global _let_go
    if os.getpid() != _owner:
        return
    _let_go = True
    for handle in _watching.values():
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(handle, signal.SIGKILL)
    _leaving.extend(_watching.values())
    _watching.clear()


def _stop_all() -> None:
    if os.getpid() != _owner:
        return
    let_go()
    for handle in _leaving:
        with contextlib.suppress(OSError):
            select.select([handle], [], [], 2.0)
        with contextlib.suppress(OSError):
            os.close(handle)
    _leaving.clear()


def _serve(  # pragma: no cover - the janitor
    pidfd: int, initial: set[int], privileged: Callable[[], contextlib.AbstractContextManager[None]]
) -> None:
    (keep,) = cut_loose([pidfd])
    with contextlib.suppress(InterruptedError):
        select.select([keep], [], [])
    try:
        mounts = _mountinfo.read()
    except OSError:
        return
    with privileged():
        for mount in reversed(mounts):
            if mount.mount_id not in initial:
                with contextlib.suppress(OSError):
                    _syscalls.umount(mount.point, _syscalls.MNT_DETACH)
