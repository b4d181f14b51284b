"""Private mount namespaces, user namespaces and the capabilities that go with them, and the
one message for a process whose threads keep it out of a user namespace (:func:`threads_reason`).

The kernel backend mounts only inside a private mount namespace, so no mount is ever visible
on the host and all of them vanish with the process.  Three situations exist:

* real root: the thread that runs tests unshares a mount namespace of its own;
* an ordinary user in a single-threaded process: the process enters a new user and mount
  namespace, mapping its uid and gid to themselves;
* an xdist worker (always multi-threaded, so it can no longer create a user namespace): the
  controller entered the user namespace before starting workers and handed them its
  capabilities as *ambient* capabilities; the worker unshares a mount namespace of its own.

Capabilities must not leak into what tests observe: outside :func:`privileged` the effective
set is empty (a user's test still cannot write a 0444 file it owns), the ambient set is empty
(programs a test starts get no capabilities), and only the permitted set is kept.
"""

from __future__ import annotations

import contextlib
import os
import threading

from . import _janitor, _oscompat, _syscalls

CAP_SYS_ADMIN = 21

_state_lock = threading.Lock()
# Native ids of the threads that already live in a private mount namespace of ours: a mount
# namespace belongs to the thread that unshared it (and to processes it starts).
_private_threads: set[int] = set()
_entered_userns = False
# Whether mount work needs capabilities raised first; computed once, it sits on the hot path.
_raise_for_mounts: bool | None = None
# Whether privileged() has raised the calling thread's capabilities (capabilities are per
# thread, and so is this).
_raised = threading.local()


def thread_count() -> int:
    """How many OS threads this process has (execnet's IO thread included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def in_initial_user_namespace() -> bool:
    """Whether this process lives in the host's user namespace."""
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
    except OSError:
        return True
    return fields[:3] == ["0", "0", "4294967295"]


def is_real_root() -> bool:
    """Euid 0 with CAP_SYS_ADMIN in the host's user namespace."""
    if _oscompat.effective_ids() is None or os.geteuid() != 0:
        return False
    if not in_initial_user_namespace():
        return False
    try:
        effective, _, _ = _syscalls.get_capabilities()
    except OSError:
        return False
    return bool(effective & (1 << CAP_SYS_ADMIN))


def has_namespace_capabilities() -> bool:
    """Whether this process holds CAP_SYS_ADMIN in a user namespace it may mount in."""
    if in_initial_user_namespace():
        return is_real_root()
    try:
        _, permitted, _ = _syscalls.get_capabilities()
    except OSError:
        return False
    return bool(permitted & (1 << CAP_SYS_ADMIN))


def entered_user_namespace() -> bool:
    """Whether this process (or the xdist controller that started it) entered our namespace."""
    return _entered_userns or (not in_initial_user_namespace() and has_namespace_capabilities())


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_user_namespace(*, for_children: bool) -> None:
    """Move this single-threaded process into a new user and mount namespace.

    The uid and gid map to themselves, so tests still see their own ids.  With *for_children*
    the capabilities are also made ambient, so processes started from here (xdist workers)
    inherit them and can set up mount namespaces of their own.
    """
    global _entered_userns, _raise_for_mounts
    uid, gid = os.geteuid(), os.getegid()
    _syscalls.unshare(_syscalls.CLONE_NEWUSER | _syscalls.CLONE_NEWNS)
    # setgroups must be denied before an unprivileged process may write its gid_map.
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _syscalls.mount(None, "/", None, _syscalls.MS_REC | _syscalls.MS_PRIVATE)
    with _state_lock:
        _entered_userns = True
        _raise_for_mounts = None
        _private_threads.add(threading.get_native_id())
    _janitor.start_janitor(privileged)
    _, permitted, _ = _syscalls.get_capabilities()
    _raised.sets = None  # what privileged() remembers is out of date
    if for_children:
        _syscalls.set_capabilities(0, permitted, permitted)
        for capability in range(_syscalls.last_capability() + 1):
            if permitted & (1 << capability):
                _syscalls.raise_ambient(capability)
    else:
        _syscalls.set_capabilities(0, permitted, 0)


def drop_inherited_capabilities() -> None:
    """In a process that inherited ambient capabilities: keep them permitted, nothing more."""
    _syscalls.clear_ambient()
    _, permitted, _ = _syscalls.get_capabilities()
    _raised.sets = None  # what privileged() remembers is out of date
    _syscalls.set_capabilities(0, permitted, 0)


_NOTHING_TO_RAISE = contextlib.nullcontext()


def privileged() -> contextlib.AbstractContextManager[None]:
    """Raise the permitted capabilities to effective for the calling thread, for mount work
    (``with privileged(): ...``).  Where nothing needs raising (real root, nested use), a
    shared context manager that does nothing: this sits on every test's path."""
    global _raise_for_mounts
    if _raise_for_mounts is None:
        _raise_for_mounts = not (is_real_root() or in_initial_user_namespace())
    nested: int = getattr(_raised, "depth", 0)
    if not _raise_for_mounts or nested:
        # Nested: raised already (two system calls saved, 25 us in a user namespace).
        return _NOTHING_TO_RAISE
    return _Raised()


class _Raised:
    """Capabilities raised for a block, and dropped again after it.

    The sets the thread had are remembered from the last time (per thread), not asked with
    ``capget`` each time: one system call less per block, of two or three per test.  A test
    that changed its own capabilities meanwhile finds them as the plugin keeps them outside
    its blocks, the effective set empty; one that dropped permitted ones makes the raise fail,
    and the sets are asked again.
    """

    def __enter__(self) -> None:
        sets = getattr(_raised, "sets", None) or _syscalls.get_capabilities()
        try:
            _syscalls.set_capabilities(sets[1], sets[1], sets[2])
        except OSError:
            sets = _syscalls.get_capabilities()
            _syscalls.set_capabilities(sets[1], sets[1], sets[2])
        self._sets = sets
        _raised.depth = 1

    def __exit__(self, *exc: object) -> None:
        _raised.depth = 0
        effective, permitted, inheritable = self._sets
        _syscalls.set_capabilities(effective, permitted, inheritable)
        _raised.sets = self._sets


def ensure_private_mount_namespace() -> None:
    """Give the calling thread a private mount namespace, once.

    Works in multi-threaded processes: unsharing only a mount namespace is allowed there, and
    it applies to the calling thread, which is the thread that runs the tests.
    """
    native_id = threading.get_native_id()
    with _state_lock:
        private = native_id in _private_threads
    if private:
        if not _janitor.watched():
            # A later session of this process, after the last one let its janitor go.
            _janitor.start_janitor(privileged)
        return
    with privileged():
        _syscalls.unshare(_syscalls.CLONE_NEWNS)
        # Without this, mounts could propagate back to the host's shared mounts.
        _syscalls.mount(None, "/", None, _syscalls.MS_REC | _syscalls.MS_PRIVATE)
    with _state_lock:
        _private_threads.add(native_id)
    _janitor.start_janitor(privileged)


# Where the process stands when it cannot enter a user namespace; each gets the advice that
# can help there: entering early helps a lazy run, not one that already tried before conftests.
LAZY, EARLY, XDIST_WORKER = "lazy", "early", "xdist worker"


def threads_reason(threads: int, where: str) -> str:
    """Why a multi-threaded process cannot enter a user namespace, and what helps *where*."""
    if where == XDIST_WORKER:
        return (
            "pytest-xdist workers run several threads from the start, and only a "
            "single-threaded process may enter a user namespace; set overlay_userns = early "
            "(or --overlay-userns=early) so that the controller enters it before it starts "
            "the workers, or run as root"
        )
    reason = (
        f"this process already runs {threads} threads, and only a single-threaded process may "
        "enter a user namespace"
    )
    if where == EARLY:
        return reason + (
            " (a plugin loaded before pytest-overlay, or sitecustomize, started them, before "
            "any conftest was imported); disable that plugin with -p no:NAME, or run as root"
        )
    return reason + (
        " (a library imported by a conftest or by the tests, such as NumPy's OpenBLAS, "
        "starts them); set overlay_userns = early (or --overlay-userns=early) to enter it "
        "before anything is imported, or limit the library's threads "
        "(OPENBLAS_NUM_THREADS=1), or run as root"
    )
