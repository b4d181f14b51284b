"""One pytest process's overlay state: the backend chosen for the session (and its fallback
when the kernel turns out unusable), the backends it created, and the views that tests left
untouched, parked for the next test that asks for the same (:meth:`OverlaySession.view`,
:meth:`OverlaySession.release`); with the notices for the summary and the caches the tests
share.  The settings it holds are parsed by :mod:`._settings`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _namespaces
from ._backends import Backend, Mount, Selection, cannot_work_here, fall_back, select_backend
from ._errors import BackendUnavailableError
from ._registry import AUTO, BackendRegistry
from ._settings import Settings

if TYPE_CHECKING:
    from ._hermetic import Layout

    # Imported by the layer factory, once a test asks for a snapshot layer.
    from ._snapshot.cache import LayerCache

# What a view is for: the backend, its lowers, where it stands (in place) and what passes
# through it.  A parked view goes only to a test that asks for exactly that.
ViewKey = tuple[str, tuple[Path, ...], Path | None, tuple[Path, ...]]
# Parked views of different kinds kept at most (fixture mode with several lowers or backends);
# the least recently parked goes first.
MAX_PARKED = 4


class OverlaySession:
    """Backends for one pytest process, created on first use."""

    def __init__(
        self,
        settings: Settings,
        registry: BackendRegistry,
        inherited: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._inherited = inherited
        self._selection: Selection | None = None
        self._selection_error: BackendUnavailableError | None = None
        self._backends: dict[str, Backend] = {}
        self._scratch: Path | None = None
        self.basetemp: Path | None = None
        # The backend that needed a user namespace the process could not enter, and why.
        self.unusable: tuple[str, str] | None = None
        self.layer_cache: LayerCache | None = None
        # Per view root: which relative paths a diff leaves out (computed once, hot path).
        self.ignore_cache: dict[Path, Callable[[str], bool]] = {}
        self.notices: list[str] = []
        # Kept layers of this run (xdist workers share the controller's run id).
        self.run_id: str | None = (inherited or {}).get("run_id")
        # Views that tests left untouched and unheld, by what they are for (oldest first),
        # and what each view handed out is for.
        self._parked: dict[ViewKey, Mount] = {}
        # In place: the device number a parked view shows at the path it stands at (what the
        # containment check must expect there, instead of the real directory's).
        self._parked_devices: dict[ViewKey, tuple[Mount, int]] = {}
        # In place: the real directories inside each sandboxed one that stay writable
        # (pytest's cache and basetemp, overlay_passthrough), found at the first test.
        self.passthrough: dict[Path, tuple[Path, ...]] | None = None
        # In place: the paths inside each sandboxed directory whose writes are copied to the
        # disk after a test (_toolstate): pass-through directories, pytest's cache, tool state.
        self.carried: dict[Path, tuple[Path, ...]] | None = None
        # In place: the kept-layer store as the disk has it, whatever view stands over it.
        self.real_store: Path | None = None
        self._store_fd: int | None = None
        self._store_path: Path | None = None
        # In place: how the views are laid out (_hermetic.layout), the same for every test.
        self.layout: Layout | None = None
        # In place: the last test's teardown found every sandboxed directory as expected (its
        # view parked there, or the real directory), so the next setup need not look again.
        self.contained = False
        self._in_use: dict[Mount, ViewKey] = {}

    def set_basetemp(
        self, basetemp: Path, scratch: Callable[[Path], Path | None] | None = None
    ) -> None:
        """pytest's basetemp, from the fixtures that ask for ``tmp_path_factory``: backends
        keep their per-test directories in it (or where *scratch*, given the basetemp, says:
        see ``_hermetic.scratch_outside``), and diffs and in-place views leave it out."""
        if self.basetemp is None:
            self.basetemp = basetemp.resolve()
            elsewhere = scratch(self.basetemp) if scratch is not None else None
            self._scratch = elsewhere or self.basetemp / "overlay"

    @property
    def scratch_dir(self) -> Path:
        """Where the backends keep their per-test directories (set with the basetemp)."""
        return self._scratch_dir()

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            raise RuntimeError("pytest-overlay: scratch directory used before it was set")
        return self._scratch

    @property
    def selection(self) -> Selection:
        """The session's backend; raises :class:`BackendUnavailableError` with the remedy."""
        if self._selection_error is not None:
            raise self._selection_error
        if self._selection is None:
            try:
                self._selection = self._select()
            except BackendUnavailableError as exc:
                self._selection_error = exc
                raise
            self._backends[self._selection.backend.name] = self._selection.backend
        return self._selection

    def _select(self) -> Selection:
        if self._inherited is not None:
            # An xdist worker takes the controller's decision instead of probing again.
            backend = self.registry.create(
                self._inherited["backend"], self._scratch_dir, self.settings.upper_size
            )
            passed = tuple((str(a), str(b)) for a, b in self._inherited["passed_over"])
            return Selection(backend, passed)
        return select_backend(
            self.registry,
            self.settings.backend,
            self._scratch_dir,
            self.settings.upper_size,
            inplace=self.settings.inplace,
            lowers=self.settings.lowers,
        )

    def backend(self, name: str | None) -> Backend:
        """The session's backend, or the one a marker asks for by name."""
        if name is None or name == AUTO:
            return self.selection.backend
        if self.unusable is not None and name == self.unusable[0]:
            raise cannot_work_here(*self.unusable)
        if name not in self._backends:
            backend = self.registry.create(name, self._scratch_dir, self.settings.upper_size)
            reason = backend.unavailable_reason()
            if reason is not None:
                raise cannot_work_here(name, reason)
            self._backends[name] = backend
        return self._backends[name]

    def created(self, name: str) -> Backend | None:
        """The session's backend named *name*, if it created one."""
        return self._backends.get(name)

    def view(
        self,
        backend: Backend,
        lowers: Sequence[Path],
        *,
        label: str,
        target: Path | None = None,
        passthrough: Sequence[Path] = (),
    ) -> Mount:
        """A view for one test: the one the last test with the same lowers left untouched,
        if it still is, else a fresh one from *backend* (arguments as :meth:`Backend.mount`).
        Give it back with :meth:`release`."""
        key: ViewKey = (backend.name, tuple(lowers), target, tuple(passthrough))
        mount = self._parked.pop(key, None)
        if mount is not None and not mount.untouched():
            # Written to while parked (in place, between two tests): never handed out.
            self._close([mount])
            mount = None
        if mount is None:
            if target is not None:
                self._close_parked(lambda other: other[2] == target)  # it stands there
            mount = backend.mount(lowers, label=label, target=target, passthrough=passthrough)
        self._in_use[mount] = key
        return mount

    def release(
        self, mount: Mount, *, reuse: bool = True, closing: Callable[[], None] | None = None
    ) -> list[str]:
        """A test is done with *mount*: park it for the next test if it may be reused (see
        :meth:`Mount.reusable`), else close it, calling *closing* first; returns the warnings
        of closing it."""
        key = self._in_use.pop(mount, None)
        if reuse and key is not None and mount.reusable():
            if key[2] is not None and self._parked_devices.get(key, (None, 0))[0] is not mount:
                # Once per view: a view parked again still shows the same device.
                self._parked_devices[key] = (mount, os.stat(key[2]).st_dev)
            self._parked[key] = mount
            if len(self._parked) > MAX_PARKED:
                self._close([self._parked.pop(next(iter(self._parked)))])
            return []
        try:
            if closing is not None:
                closing()
        finally:
            messages = mount.close()  # closed whatever *closing* raised
        return messages

    def hold_store(self, store: Path) -> None:
        """Hold the kept-layer store *store* open, before any view covers it: from now on
        :attr:`real_store` reaches the real directory through that descriptor (a path under
        ``/proc/self/fd``, Linux's, as every in-place backend is)."""
        if self._store_fd is None:
            self._store_fd = os.open(store, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self._store_path = store
            self.real_store = Path(f"/proc/self/fd/{self._store_fd}")

    def real_path(self, text: str) -> str:
        """*text* (a message) with :attr:`real_store`'s descriptor path told as the store's."""
        if self.real_store is None or self._store_path is None:
            return text
        return text.replace(os.fspath(self.real_store), os.fspath(self._store_path))

    def standing(self) -> dict[Path, int]:
        """In place: each path a parked view stands at, and the device number it shows there."""
        return {
            key[2]: self._parked_devices[key][1]
            for key in self._parked
            if key[2] is not None and key in self._parked_devices
        }

    def drop_parked(self, target: Path) -> None:
        """Close the parked views that stand at *target* (something else covers them)."""
        self._close_parked(lambda key: key[2] == target)

    def release_parked(self) -> None:
        """Close every parked view, and unmount every closed one: at the end of the test loop,
        so that what runs after the last test (reports, coverage data) reaches the real tree,
        not a view in place, and finds no mount of ours."""
        self._close_parked(lambda key: True)
        for backend in self._backends.values():
            backend.flush()

    def _close_parked(self, which: Callable[[ViewKey], bool]) -> None:
        self._close([self._parked.pop(key) for key in list(self._parked) if which(key)])

    def _close(self, mounts: list[Mount]) -> None:
        if not mounts:
            return
        cwd = None
        with contextlib.suppress(OSError):
            cwd = os.getcwd()
        # Our working directory may be inside a view in place; it would keep the view busy.
        os.chdir("/")
        try:
            for mount in mounts:
                self._notice(mount.close())
        finally:
            if cwd is not None:
                with contextlib.suppress(OSError):
                    os.chdir(cwd)

    def _notice(self, messages: list[str]) -> None:
        self.notices.extend(m for m in messages if m not in self.notices)

    def wants_user_namespace(self) -> bool:
        """Whether the session's backend will need this process to enter a user namespace."""
        if _namespaces.is_real_root() or _namespaces.entered_user_namespace():
            return False
        try:
            return self.selection.backend.user_namespace
        except BackendUnavailableError:
            return False

    def give_up_user_namespace(self, reason: str) -> str:
        """The process cannot enter the user namespace its backend (the kernel's) needs after
        all; returns what to tell the user.

        With ``auto`` the session falls back to the next backend that works; an explicit
        choice makes every test that asks for an overlay fail with *reason*.
        """
        name = self.selection.backend.name
        self.unusable = (name, reason)
        if self.settings.backend == AUTO:
            passed_over = (*self.selection.passed_over, (name, reason))
            self._selection = fall_back(
                self.registry,
                self._scratch_dir,
                passed_over,
                self.settings.upper_size,
                inplace=self.settings.inplace,
            )
            instead = self._selection.backend.name
            self._backends = {instead: self._selection.backend}
            return f"{name} backend unusable, using the {instead} backend instead: {reason}"
        self._selection_error = cannot_work_here(name, reason)
        return str(self._selection_error)

    def shutdown(self) -> None:
        """Release every parked view and every backend."""
        self.release_parked()
        for backend in self._backends.values():
            backend.shutdown()
        if self._store_fd is not None:
            os.close(self._store_fd)
            self._store_fd = None
            self.real_store = None
