"""Our own overlay filesystem over FUSE: one server process per test's view, forked by the
session's server (:mod:`pytest_overlay._fuse.session`).

For machines where kernel overlayfs cannot be mounted but FUSE can.  The server writes the
kernel's upper-layer format, so the diff, kept layers and the command treat it like the kernel
backend.

In-place mode mounts the view over the project itself, which needs a private mount
namespace (root, or our user namespace).  As in the kernel backend, a read-only clone of the
project's mount is attached in the test's scratch directory first: the server reads the lower
layer there, and the diff too.  The server opens its layers before the mount covers them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_overlay import _namespaces
from pytest_overlay._errors import MountError, ViewLostError
from pytest_overlay._files import remove_tree
from pytest_overlay._fuse.client import FuseMount, availability, start
from pytest_overlay._fuse.session import SessionServer
from pytest_overlay._holders import describe_holders, holders_of, view_device
from pytest_overlay._inotify import ChangeFlags
from pytest_overlay._probe import probe_kernel

from .base import ScratchBackend, safe_label
from .inplace import (
    IN_PLACE_NEEDS_PRIVATE_NAMESPACE,
    fuse_in_place_needs_root,
    fuse_in_place_refused,
)
from .mounted import RealDirs, UpperLayerView, detach, readable_lowers


def private_mounts_possible() -> bool:
    """Whether views can be mounted in a private mount namespace: as root, or in our user
    namespace (otherwise ``fusermount3`` mounts them for the whole machine)."""
    return _namespaces.is_real_root() or _namespaces.entered_user_namespace()


class FuseView(UpperLayerView):
    """One test's FUSE-served view."""

    def __init__(self, root: Path, merged: Path, lowers: tuple[Path, ...]) -> None:
        super().__init__(root, merged, lowers)
        self.served: FuseMount | None = None
        # In place: the read-only clones of the project the server reads, unmounted after the
        # view (and the real directories bound back into it, before: UpperLayerView.binds).
        self.clones: list[Path] = []
        self.private = False

    def _serving(self) -> bool:
        served = self.served
        # A server that died fails the test that had it (close says so), whatever it did.
        return served is not None and served.process.poll() is None

    def untouched(self) -> bool:
        return self._serving() and super().untouched()

    def reusable(self) -> bool:
        # The busy check needs a mount of ours, in our private mount namespace: fusermount3's
        # mounts (an ordinary user without a user namespace) are replaced after every test.
        return self.private and self._serving() and self._reusable()

    def close(self) -> list[str]:
        self.stop_watching()
        # Before the unmount: if it turns out busy, the users' files show this device.
        device = view_device(self._merged) if self.served is not None else None
        with _namespaces.privileged():
            for bind in reversed(self.binds):
                detach(bind)
            self.binds.clear()
        self.close_descriptors()
        if self.served is not None:
            self.served.close()
        with _namespaces.privileged():
            for clone in self.clones:
                detach(clone)
            self.clones.clear()
        if self.served is None:  # the mount failed
            remove_tree(self._root)
            return []
        if self.served.busy:
            # Its server still serves the process from this upper layer: the backend's
            # shutdown removes it, after the session's server has stopped.
            who = describe_holders(holders_of(device)) or (
                " (a process the test started, or an open file)"
            )
            return [
                f"{self._merged} was still in use{who}, so it was detached lazily: its FUSE "
                "server keeps serving that process until it lets go, at the latest until the end "
                "of the run"
            ]
        remove_tree(self._root)
        # A server we stopped exits 0; one killed while the test ran (perhaps still dying
        # when the test ended, so asking earlier would race) did not.
        died = self.served.process.returncode
        if died and not self.served.stopped_by_signal:
            raise ViewLostError(
                f"the FUSE server of {self._merged} died during the test ({_how(died)}), so "
                "from then on every access to the view failed with 'Transport endpoint is not "
                "connected' and the test's result cannot be trusted; the next test gets a new "
                "server"
            )
        return []


def _how(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


class FuseBackend(ScratchBackend[FuseView]):
    """The overlay filesystem of :mod:`pytest_overlay._fuse`, served out of process."""

    name = "fuse"

    def __init__(self, scratch: Callable[[], Path]) -> None:
        super().__init__(scratch)
        self._counter = itertools.count()
        self._reason: str | None = None
        self._probed = False
        self._server: SessionServer | None = None
        # What changed in which view's upper layer (see mounted.py, check 2).
        self._changes = ChangeFlags()

    def unavailable_reason(self) -> str | None:
        if not self._probed:
            self._reason = probe_fuse()
            self._probed = True
        return self._reason

    def describe(self) -> str:
        return "root" if os.geteuid() == 0 else "fusermount3"

    def in_place_refusal(self, *, explicit: bool) -> str | None:
        if private_mounts_possible():
            return None
        if not explicit:
            return fuse_in_place_needs_root()
        # The whole story, no report header having been printed: with the kernel's verdict.
        kernel = probe_kernel()
        return fuse_in_place_refused(None if kernel.ok else kernel.reason)

    def _mount(
        self, lowers: Sequence[Path], label: str, target: Path | None, passthrough: Sequence[Path]
    ) -> FuseView:
        private = private_mounts_possible()
        if target is not None and not private:
            raise MountError(errno.EPERM, IN_PLACE_NEEDS_PRIVATE_NAMESPACE)
        if private:
            # As with the kernel backend: the server inherits a private mount namespace, so
            # its mount is never visible on the host and dies with the process.
            _namespaces.ensure_private_mount_namespace()
        if self._server is None:
            self._server = SessionServer()
        root = self._scratch / f"{safe_label(label)}{next(self._counter)}"
        merged = target or root / (lowers[0].name or "root")
        for directory in (root / ".upper", root / ".work", *(() if target else (merged,))):
            directory.mkdir(parents=True)
        st = lowers[0].stat()
        os.chmod(root / ".upper", st.st_mode & 0o7777)
        readable = readable_lowers(lowers, target, root)
        view = FuseView(root, merged, tuple(readable))
        real = RealDirs(passthrough)
        view.clones = real.clones  # detached by the view's close, as they are attached
        try:
            # Before the view hides them: the server and the diff read the project's clone.
            real.hold(lowers, readable)
            view.served = self._server.start(
                readable,
                root / ".upper",
                root / ".work",
                merged,
                auto_unmount=not private,
                over_itself=target is not None,
            )
            view.put_back(real)
            view.private = private
            view.remember_fresh(self._changes)
        except BaseException:
            view.close()
            raise
        finally:
            real.close()
        return view

    def flush(self) -> None:
        """Nothing to do: closed views are gone at once."""

    def shutdown(self) -> None:
        self._changes.close()
        if self._server is not None:
            self._server.close()
        if self._scratch_path is not None:
            remove_tree(self._scratch_path)


def probe_fuse() -> str | None:
    """Why FUSE cannot serve a view here, found by really mounting one; None if it can."""
    reason = availability()
    if reason is not None:
        return reason
    scratch = Path(tempfile.mkdtemp(prefix="pytest-overlay-fuse-probe-"))
    try:
        for name in ("lower", "upper", "work", "merged"):
            (scratch / name).mkdir()
        (scratch / "lower" / "f").write_text("x")
        try:
            with start(
                [scratch / "lower"], scratch / "upper", scratch / "work", scratch / "merged"
            ):
                (scratch / "merged" / "f").write_text("y")
        except (MountError, OSError) as exc:
            # The first line says what failed; libfuse's and fusermount3's own lines say why
            # (the server's last line only repeats that the mount failed).
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            causes = [line for line in lines[1:] if line.startswith(("fuse:", "fusermount"))]
            why = causes[-1] if causes else lines[-1]
            detail = lines[0] if len(lines) < 2 else f"{lines[0]} ({why})"
            return f"a FUSE test mount failed: {detail}"
        return None
    finally:
        remove_tree(scratch)
