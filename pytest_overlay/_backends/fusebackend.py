"""Our own overlay filesystem over FUSE: one server process per test's view, forked by the
session's server (:mod:`pytest_overlay._fuse.session`).

For machines where kernel overlayfs cannot be mounted but FUSE can.  The server writes the
kernel's upper-layer format, so the diff, kept layers and the command treat it like the kernel
backend.  It cannot overlay a directory at its own path (the server reads the lower through
that very path), so in-place mode needs the kernel backend.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_overlay import _namespaces
from pytest_overlay._errors import MountError, ViewLostError

from .base import safe_label

if TYPE_CHECKING:
    from pytest_overlay._fuse.session import SessionServer
from .copytree import remove_tree
from .upperview import UpperLayerView


class FuseView(UpperLayerView):
    """One test's FUSE-served view."""

    def __init__(self, root: Path, merged: Path, lowers: tuple[Path, ...], served: object) -> None:
        super().__init__(root, merged, lowers)
        self._served = served

    def close(self) -> list[str]:
        from pytest_overlay._fuse.client import FuseMount

        assert isinstance(self._served, FuseMount)
        self._served.close()
        remove_tree(self._root)
        # A server we stopped exits 0; one killed while the test ran (perhaps still dying
        # when the test ended, so asking earlier would race) did not.
        died = self._served.process.returncode
        if died and not self._served.stopped_by_signal:
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


class FuseBackend:
    """The overlay filesystem of :mod:`pytest_overlay._fuse`, served out of process."""

    name = "fuse"

    def __init__(self, scratch: Callable[[], Path]) -> None:
        self._scratch_provider = scratch
        self._scratch_path: Path | None = None
        self._counter = itertools.count()
        self._reason: str | None = None
        self._probed = False
        self._server: SessionServer | None = None

    @property
    def _scratch(self) -> Path:
        if self._scratch_path is None:
            self._scratch_path = self._scratch_provider()
        return self._scratch_path

    def unavailable_reason(self) -> str | None:
        if not self._probed:
            self._reason = probe_fuse()
            self._probed = True
        return self._reason

    def describe(self) -> str:
        return "root" if os.geteuid() == 0 else "fusermount3"

    def mount(
        self,
        lowers: Sequence[Path],
        *,
        label: str,
        target: Path | None = None,
        passthrough: Sequence[Path] = (),
    ) -> FuseView:
        if target is not None:
            raise MountError(
                errno.EOPNOTSUPP,
                "in-place mode (--overlay) needs the kernel backend: the FUSE server would "
                "read the project through its own mount; use --overlay-backend=kernel, or "
                "the overlay_root fixture without --overlay",
            )
        from pytest_overlay._fuse.session import SessionServer

        private = _namespaces.is_real_root() or _namespaces.entered_user_namespace()
        if private:
            # As with the kernel backend: the server inherits a private mount namespace, so
            # its mount is never visible on the host and dies with the process.
            _namespaces.ensure_private_mount_namespace()
        if self._server is None:
            self._server = SessionServer()
        root = self._scratch / f"{safe_label(label)}{next(self._counter)}"
        merged = root / (lowers[0].name or "root")
        for directory in (root / ".upper", root / ".work", merged):
            directory.mkdir(parents=True)
        st = lowers[0].stat()
        os.chmod(root / ".upper", st.st_mode & 0o7777)
        try:
            served = self._server.start(
                lowers, root / ".upper", root / ".work", merged, auto_unmount=not private
            )
        except BaseException:
            remove_tree(root)
            raise
        return FuseView(root, merged, tuple(lowers), served)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._scratch_path is not None:
            remove_tree(self._scratch_path)


def probe_fuse() -> str | None:
    """Why FUSE cannot serve a view here, found by really mounting one; None if it can."""
    import tempfile

    from pytest_overlay._fuse.client import availability, start

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
            # The first line says what failed, the last one what libfuse said about it.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = lines[0] if len(lines) < 2 else f"{lines[0]} ({lines[-1]})"
            return f"a FUSE test mount failed: {detail}"
        return None
    finally:
        remove_tree(scratch)
