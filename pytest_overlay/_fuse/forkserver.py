"""The session's FUSE server: ``python -m pytest_overlay._fuse.forkserver --control-fd N``.

Starting a Python FUSE server costs 50-75 ms, nearly all of it interpreter start and imports.
This process pays that once per pytest process: it imports mfusepy and the filesystem up front,
then forks one child per mount.  A fork of this small, single-threaded process takes well under
a millisecond, and each mount keeps a process of its own, so a test that kills its server (or a
crash in one mount) leaves every other mount and the session's server alone.

Protocol, over the ``SOCK_SEQPACKET`` socket at ``--control-fd``: each request is one message,
a JSON object ``{"lowers": [...], "upper": ..., "work": ..., "mountpoint": ...,
"auto_unmount": bool, "over_itself": bool, "owner": pid}`` carrying two descriptors: a
``SOCK_SEQPACKET`` *channel* for this mount and the file that gets the child's standard output
and error.  On the channel the client then
receives, in any order:

``pid N``
    with a pidfd of the child, for signals that cannot hit a recycled process id (none
    before Linux 5.3, which has no pidfds);
``ready``
    the kernel has initialised the mount;
``exit N``
    the child has exited with status N (negative: killed by signal -N), after which the
    channel is closed.

End of file on the control socket (the pytest process has gone or closed it) ends this
process: it sends its children SIGTERM, on which each unmounts its mount lazily and exits (see
:mod:`.server`), and SIGKILL to any still there a second later.  The death of the pytest
process ends this one the same way (its parent-death signal, SIGTERM, which it handles):
whichever comes first, every mount is unmounted.  This process dying on its own while pytest
lives (SIGKILL) kills its children without an unmount: the mounts stay, dead, and the test's
accesses fail instead of reaching the directory under a view.  Exit status 3 means
that libfuse could not be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from .server import EXIT_NO_LIBFUSE, LibfuseMissingError, die_with_parent, load_mfusepy, serve

__all__ = ["MAX_REQUEST", "main"]

MAX_REQUEST = 1 << 20
"""The largest request, in bytes (one message of a ``SOCK_SEQPACKET`` socket)."""


def _child(request: dict[str, Any], channel: socket.socket, log: int) -> int:
    """In the forked child: serve one mount; return the exit status."""
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return serve(
        request["lowers"],
        request["upper"],
        request["work"],
        request["mountpoint"],
        ready_fd=channel.detach(),  # ``ready`` goes to the client as one message
        auto_unmount=bool(request.get("auto_unmount", True)),
        over_itself=bool(request.get("over_itself", False)),
        owner=request.get("owner"),
    )


class _Children:
    """The mounts' processes, by pid, each with the channel that gets its exit status."""

    def __init__(self) -> None:
        self._channels: dict[int, socket.socket] = {}

    def add(self, pid: int, channel: socket.socket) -> None:
        self._channels[pid] = channel

    def reap(self) -> None:
        while self._channels:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            channel = self._channels.pop(pid, None)
            if channel is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):  # the client has gone: nobody to tell
                    channel.send(f"exit {code}".encode())
                channel.close()

    def close_channels(self) -> None:
        """In a new child: drop the other mounts' channels, which are not its business."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def stop_all(self, grace: float = 1.0) -> None:
        """SIGTERM to every child, on which libfuse unmounts lazily and exits; SIGKILL to
        those still there after *grace* seconds (a callback that never returns)."""
        for pid in list(self._channels):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._channels and time.monotonic() < deadline:
            time.sleep(0.01)
            self.reap()
        for pid in list(self._channels):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _spawn(message: bytes, fds: list[int], children: _Children, inherited: Sequence[int]) -> None:
    """Fork a child for one request; a malformed request is answered on stderr and dropped."""
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        print("forkserver: a request needs exactly two descriptors", file=sys.stderr, flush=True)
        return
    channel = socket.socket(fileno=fds[0])
    log = fds[1]
    try:
        request = json.loads(message)
    except ValueError as exc:
        channel.close()
        os.close(log)
        print(f"forkserver: bad request: {exc}", file=sys.stderr, flush=True)
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its work is checked through its mount
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # libfuse installs its own SIGTERM handler (unmount, then exit) only over the
            # default one.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            children.close_channels()
            for fd in inherited:
                os.close(fd)
            # SIGKILL, not SIGTERM: a session server that dies on its own (the OOM killer)
            # while pytest lives must leave the mount in place, dead, so that the test's
            # accesses fail (ENOTCONN) instead of falling through to the directory under it,
            # which in place is the real project.  When pytest dies, the session server gets
            # SIGTERM and sends its children SIGTERM first (stop_all), which unmounts.
            die_with_parent(None, signal.SIGKILL)
            code = _child(request, channel, log)
        except BaseException as exc:  # report, then leave without cleanup
            print(f"forkserver child: {exc!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    os.close(log)
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None  # before Linux 5.3: the client signals by process id
    try:
        socket.send_fds(channel, [f"pid {pid}".encode()], [] if pidfd is None else [pidfd])
    except OSError:
        pass  # the client has gone already; the child will find its mount unused
    finally:
        if pidfd is not None:
            os.close(pidfd)
    children.add(pid, channel)


def serve_requests(control: socket.socket) -> None:
    """Answer requests until the control socket closes, then stop the remaining children.

    The socket also closes when the pytest process is killed, and a moment before this
    process's parent-death signal arrives: the children are stopped so that they unmount.
    """
    children = _Children()
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        while True:
            readable, _, _ = select.select([control.fileno(), wake_read], [], [])
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                children.reap()
            if control.fileno() in readable:
                try:
                    message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 2)
                except InterruptedError:
                    continue
                if not message and not fds:
                    return  # the pytest process closed its end
                _spawn(message, fds, children, (control.fileno(), wake_read, wake_write))
    finally:
        children.stop_all()


def _leave(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Import everything a mount needs, then serve requests; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_overlay._fuse.forkserver",
        description="Fork one FUSE overlay server per request on a control socket",
    )
    parser.add_argument("--control-fd", type=int, required=True, metavar="N")
    parser.add_argument("--parent", type=int, metavar="PID")
    args = parser.parse_args(argv)
    # pytest died: leave serve_requests through its ``finally``, which sends every child
    # SIGTERM, on which each unmounts its mount lazily.
    signal.signal(signal.SIGTERM, _leave)
    die_with_parent(args.parent, signal.SIGTERM)
    try:
        load_mfusepy()
    except LibfuseMissingError as exc:
        print(f"libfuse not installed: apt install fuse3 ({exc})", file=sys.stderr)
        return EXIT_NO_LIBFUSE
    # Imported once here, so that children start warm.
    from . import ops  # noqa: F401
    from .statpack import fuse_class

    fuse_class(load_mfusepy())

    serve_requests(socket.socket(fileno=args.control_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
