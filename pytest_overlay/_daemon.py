"""Processes forked beside pytest for its mounts: the janitor (``_janitor``) and the kernel
backend's reaper (``_backends.reaper``).

Forked, not executed: each inherits the calling thread's mount namespace and capabilities.
Forked twice: nobody's child, so no test's ``os.wait()`` can meet it.  Cut loose from pytest
first thing (:func:`cut_loose`): a session of its own (Ctrl-C is for pytest), ``/`` as its
working directory and none of pytest's descriptors (one inside a view would keep the view
busy; an xdist worker's pipes or a server's socket would not close with pytest).  What runs
there does only what is safe in the child of a multi-threaded process: system calls through
descriptors it was handed.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable, Sequence

__all__ = ["cut_loose", "fork_detached"]


def fork_detached(serve: Callable[[], object]) -> int | None:
    """Run *serve* in a process forked twice, which exits when it returns; its pid (None if
    the process between could not say it).

    The caller's descriptors are the process's until :func:`cut_loose`.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a multi-threaded process; see the docstring.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:  # pragma: no cover - the forked side; checked through what it does
            try:
                grandchild = os.fork()
                if grandchild == 0:
                    os.close(read_end)
                    os.close(write_end)
                    serve()
                else:
                    os.write(write_end, str(grandchild).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        write_end = -1
        os.waitpid(child, 0)
        reply = os.read(read_end, 32)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    return int(reply) if reply.isdigit() else None


def cut_loose(keep: Sequence[int]) -> list[int]:  # pragma: no cover - the forked side
    """In the forked process: leave pytest's session, working directory and descriptors,
    keeping those of *keep*, renumbered from 3 (returned in their order); stdin, stdout and
    stderr are ``/dev/null``."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir("/")
    import fcntl  # here: the module is imported on every platform, fcntl is POSIX's

    # Above every number they land on, then down to 3, 4, ...: no copy overwrites another.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(keep)) for fd in keep]
    kept = [os.dup2(fd, 3 + index, inheritable=False) for index, fd in enumerate(high)]
    os.closerange(3 + len(kept), 1 << 16)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2 + len(kept):
        os.close(devnull)
    return kept
