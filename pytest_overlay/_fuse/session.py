"""The pytest side of the session's FUSE server (:mod:`.forkserver`).

:class:`SessionServer` starts the server process once, on the first mount, and asks it for a
forked child per mount; :class:`ForkedServer` is such a child as seen from here, with the
methods of :class:`subprocess.Popen` that :class:`~.client.FuseMount` uses.  A mount then
costs a fork, the mount itself and the kernel's ``FUSE_INIT`` round trip: a few milliseconds
instead of the 50-75 ms of a new interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, final

from pytest_overlay._errors import MountError

from .client import (
    LIBFUSE_MISSING,
    PACKAGE_ROOT,
    READY_TIMEOUT,
    FuseMount,
    failed_mount,
    server_stderr,
)
from .forkserver import MAX_REQUEST
from .server import EXIT_NO_LIBFUSE

__all__ = ["ForkedServer", "SessionServer"]


@final
class ForkedServer:
    """One mount's server process, a child of the session's server, seen through its channel."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._ready = False
        self.returncode: int | None = None
        """The exit status once known (negative: killed by that signal), as in Popen."""

    @property
    def pid(self) -> int:
        """The process id (0 until the session's server has reported it)."""
        return self._pid or 0

    def _receive(self, timeout: float | None) -> bool:
        """Handle one message from the channel; False if none came within *timeout*."""
        if self.returncode is not None:
            return True
        if self._channel.fileno() < 0:  # released: nothing more will be heard
            return False
        readable, _, _ = select.select([self._channel], [], [], timeout)
        if not readable:
            return False
        message, fds, _, _ = socket.recv_fds(self._channel, 64, 1)
        if message.startswith(b"pid "):
            self._pid = int(message[4:])
            if fds:
                self._pidfd = fds[0]
        elif message == b"ready\n":
            self._ready = True
        elif message.startswith(b"exit "):
            self._finish(int(message[5:]))
        elif not message:
            # The session's server died before it could report; the child dies with it
            # (parent-death signal), by SIGKILL.
            self._await_exit(5.0)
            self._finish(-signal.SIGKILL)
        for fd in fds[1:]:
            os.close(fd)
        return True

    def _await_exit(self, timeout: float) -> None:
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)

    def _finish(self, code: int) -> None:
        self.returncode = code
        self._channel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the mount is live; return why it is not (None when it is).

        Also waits for the process id and pidfd, which the session's server sends from its
        side of the fork and which can arrive after the child's ``ready``.
        """
        deadline = time.monotonic() + timeout
        while not (self._ready and self._pid is not None):
            if self.returncode is not None:
                return f"the server exited with status {self.returncode}"
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(left):
                return f"the server was not ready after {timeout:g} s"
        return None

    def poll(self) -> int | None:
        """The exit status if the process has exited, else None."""
        while self.returncode is None and self._receive(0):
            pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; raise :class:`subprocess.TimeoutExpired` after *timeout*."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._receive(left):
                raise subprocess.TimeoutExpired(f"FUSE server {self.pid}", timeout or 0.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the process, unless it is known to have exited (no recycled pid is hit)."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self._pid:  # no pidfds (before Linux 5.3): it has not been reaped yet
                os.kill(self._pid, sig)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def release(self) -> None:
        """Stop watching the process and let it run on (its mount was detached lazily and it
        still serves someone); the session's server reaps it, or kills it at the end."""
        if self.returncode is None:
            self._channel.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None


@final
class SessionServer:
    """The session's FUSE server: started on the first mount, restarted if it has died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The session server's process id, None before the first mount or after a close."""
        return None if self._process is None else self._process.pid

    def _launch(self) -> socket.socket:
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = tempfile.TemporaryFile(prefix="pytest-overlay-fuse-session-")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "pytest_overlay._fuse.forkserver"]
        command += ["--control-fd", str(theirs.fileno()), "--parent", str(os.getpid())]
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,  # Ctrl-C is for the tests, not for the server
            )
        except BaseException:
            control.close()
            log.close()
            raise
        finally:
            theirs.close()
        self._control, self._log = control, log
        return control

    def _request(self, payload: bytes, fds: Sequence[int]) -> None:
        """Send one request, starting (or once restarting) the server as needed."""
        with self._lock:
            for attempt in (1, 2):
                control = self._control
                if control is None or (self._process and self._process.poll() is not None):
                    self._reap()
                    control = self._launch()
                try:
                    socket.send_fds(control, [payload], list(fds))
                    return
                except (BrokenPipeError, ConnectionResetError):
                    self._reap()
                    if attempt == 2:
                        raise

    def _reap(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _why_dead(self) -> str | None:
        """If the server process has exited: why, from its status and output."""
        if self._process is None or self._process.poll() is None:
            return None
        if self._process.returncode == EXIT_NO_LIBFUSE:
            return LIBFUSE_MISSING
        output = server_stderr(self._log) if self._log is not None else ""
        return f"the session's FUSE server exited with status {self._process.returncode}" + (
            f"\n--- server output ---\n{output}" if output else ""
        )

    def start(
        self,
        lowers: Sequence[str | os.PathLike[str]],
        upper: str | os.PathLike[str],
        work: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        auto_unmount: bool = True,
        over_itself: bool = False,
        timeout: float = READY_TIMEOUT,
    ) -> FuseMount:
        """Mount like :func:`.client.start`, served by a child of the session's server.

        :param auto_unmount: False only where the mount lives in a private mount namespace
            that dies with this process (as root, or in our user namespace).
        :param over_itself: the mount covers paths of the layers (in-place mode); see
            :func:`.server.serve`.
        :raises MountError: if the mount does not become live within *timeout*.
        """
        request = {
            "lowers": [os.fspath(lower) for lower in lowers],
            "upper": os.fspath(upper),
            "work": os.fspath(work),
            "mountpoint": os.fspath(mountpoint),
            "auto_unmount": auto_unmount,
            "over_itself": over_itself,
            "owner": os.getpid(),
        }
        payload = json.dumps(request).encode()
        if len(payload) > MAX_REQUEST:
            raise MountError(errno.E2BIG, "too many or too long lower layers", str(mountpoint))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = tempfile.TemporaryFile(prefix="pytest-overlay-fuse-")  # noqa: SIM115  # FuseMount owns it
        try:
            self._request(payload, (theirs.fileno(), log.fileno()))
        except BaseException:
            ours.close()
            log.close()
            raise
        finally:
            theirs.close()
        process = ForkedServer(ours)
        handle = FuseMount(Path(mountpoint), process, log)
        try:
            reason = process.wait_ready(timeout)
        except BaseException:
            handle.close()
            raise
        if reason is not None:
            raise failed_mount(handle, self._why_dead() or reason)
        return handle

    def close(self) -> None:
        """Stop the session's server; its remaining children get SIGKILL."""
        with self._lock:
            self._reap()
