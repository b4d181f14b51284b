"""Detach closed views off the tests' path: a process that unmounts what it is told to.

The kernel backend leaves closed views in batches and detaches a batch at once
(:mod:`.kernel`); that detach still tears down every mount in it, some 64 of them, and waits for
an RCU grace period: 4 to 5 ms here, charged to the test whose teardown closed the batch
(0.15 ms per writing test).  Nothing in a closed batch is anybody's any more, so the detach
need not happen on the test's path: a reaper does it, on another CPU where there is one.

A reaper is forked (twice: it is nobody's child, so no test's ``os.wait()`` can meet it) by
the thread that mounts, when its first batch is to go: it lives in that thread's mount
namespace with its capabilities (an ordinary user's, inside the user namespace), holds no
descriptor of pytest's and stands in ``/``, so it keeps no view busy.  It reads paths from a
pipe, detaches each (``MNT_DETACH``, the whole tree below) and removes the directory left, and
it ends when told to at the backend's shutdown, which waits for it so that nothing of the run
outlives pytest, or when the pipe's last writer is gone (pytest killed).  Where it cannot be
started or has died, the batch is detached in place as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
from collections.abc import Callable

from pytest_overlay import _syscalls
from pytest_overlay._daemon import cut_loose, fork_detached

__all__ = ["Reaper"]

# How long shutdown waits for the detaches still queued before it goes on without them (the
# mounts live in a private namespace and go with it anyway).
WAIT_AT_SHUTDOWN = 10.0


class Reaper:
    """A reaper process for the calling thread's mount namespace."""

    def __init__(self, privileged: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        requests, self._writer = os.pipe2(os.O_CLOEXEC)
        self._done, done_writer = os.pipe2(os.O_CLOEXEC)
        try:
            fork_detached(lambda: _serve(requests, done_writer, privileged))
        except BaseException:
            os.close(self._writer)
            os.close(self._done)
            raise
        finally:
            os.close(requests)
            os.close(done_writer)
        self.alive = True

    def detach(self, path: str) -> bool:
        """Have *path* detached and its directory removed; False if the reaper is gone (the
        caller detaches it then)."""
        if not self.alive:
            return False
        try:
            # One write of less than PIPE_BUF bytes: whole, never mixed with another.
            data = os.fsencode(path) + b"\0"
            if len(data) > select.PIPE_BUF or os.write(self._writer, data) != len(data):
                return False
        except OSError:  # EPIPE: it died
            self.alive = False
            return False
        return True

    def close(self) -> None:
        """No more work: wait until the reaper has done what it was given and is gone."""
        if self._writer < 0:
            return
        with contextlib.suppress(OSError):
            # An empty path: the end (a test's forked child may hold the pipe open too).
            os.write(self._writer, b"\0")
        os.close(self._writer)
        self._writer = -1
        self.alive = False
        try:
            # Its end of this pipe closes when it exits.
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([self._done], [], [], WAIT_AT_SHUTDOWN)
            if ready:
                os.read(self._done, 1)
        finally:
            os.close(self._done)


def _serve(  # pragma: no cover - the reaper
    requests: int, done: int, privileged: Callable[[], contextlib.AbstractContextManager[None]]
) -> None:
    requests, done = cut_loose([requests, done])
    # Second to pytest: a request wakes it up, and at pytest's priority the kernel would run
    # it on pytest's CPU there and then (a pipe's wake-up hints that the writer will sleep),
    # holding pytest up for the whole detach (250 us against 25 us for a write, measured).
    with contextlib.suppress(OSError):
        os.nice(10)
    pending = b""
    while True:
        try:
            chunk = os.read(requests, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            return  # every writer is gone: pytest ended without shutting the backend down
        *paths, pending = (pending + chunk).split(b"\0")
        with privileged():
            for path in paths:
                if not path:
                    return  # the backend's shutdown
                with contextlib.suppress(OSError):
                    _syscalls.umount(os.fsdecode(path), _syscalls.MNT_DETACH)
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def start(
    privileged: Callable[[], contextlib.AbstractContextManager[None]],
) -> Reaper | None:
    """A reaper for the calling thread's mount namespace, or None where none can be forked."""
    try:
        return Reaper(privileged)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            return None
        raise
