"""Settings parsed once from the pytest config, and the per-session backend state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _namespaces
from ._backends import (
    Backend,
    Mount,
    Selection,
    cannot_work_here,
    create_backend,
    fall_back,
    select_backend,
)
from ._errors import BackendUnavailableError
from ._settings import Settings
from ._snapshot.cache import LayerCache


class OverlaySession:
    """Backends for one pytest process, created on first use."""

    def __init__(self, settings: Settings, inherited: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self._inherited = inherited
        self._selection: Selection | None = None
        self._selection_error: BackendUnavailableError | None = None
        self._backends: dict[str, Backend] = {}
        self._scratch: Path | None = None
        self.basetemp: Path | None = None
        self.kernel_unusable: str | None = None
        self.layer_cache: LayerCache | None = None
        # Per view root: which relative paths a diff leaves out (computed once, hot path).
        self.ignore_cache: dict[Path, Callable[[str], bool]] = {}
        self.notices: list[str] = []
        # Kept layers of this run (xdist workers share the controller's run id).
        self.run_id: str | None = (inherited or {}).get("run_id")

    def set_basetemp(self, basetemp: Path) -> None:
        """pytest's basetemp, from the fixtures that ask for ``tmp_path_factory``: backends
        keep their per-test directories in it, and diffs and in-place views leave it out."""
        if self.basetemp is None:
            self.basetemp = basetemp.resolve()
            self._scratch = self.basetemp / "overlay"

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
            backend = create_backend(
                self._inherited["backend"], self._scratch_dir, self.settings.upper_size
            )
            passed = tuple((str(a), str(b)) for a, b in self._inherited["passed_over"])
            return Selection(backend, passed)
        return select_backend(
            self.settings.backend,
            self._scratch_dir,
            self.settings.upper_size,
            inplace=self.settings.inplace,
            lowers=self.settings.lowers,
        )

    def backend(self, name: str | None) -> Backend:
        """The session's backend, or the one a marker asks for by name."""
        if name is None or name == "auto":
            return self.selection.backend
        if name == "kernel" and self.kernel_unusable is not None:
            raise cannot_work_here("kernel", self.kernel_unusable)
        if name not in self._backends:
            backend = create_backend(name, self._scratch_dir, self.settings.upper_size)
            reason = backend.unavailable_reason()
            if reason is not None:
                raise cannot_work_here(name, reason)
            self._backends[name] = backend
        return self._backends[name]

    def mount(self, lowers: Sequence[Path], backend: str | None, label: str) -> Mount:
        """Mount a fresh view for one test."""
        return self.backend(backend).mount(lowers, label=label)

    def wants_user_namespace(self) -> bool:
        """Whether the kernel backend will need this process to enter a user namespace."""
        if _namespaces.is_real_root() or _namespaces.entered_user_namespace():
            return False
        try:
            return self.selection.backend.name == "kernel"
        except BackendUnavailableError:
            return False

    def give_up_kernel(self, reason: str) -> str:
        """The kernel backend turned out unusable after all; returns what to tell the user.

        With ``auto`` the session falls back to the copy backend; an explicit ``kernel``
        makes every test that asks for an overlay fail with *reason*.
        """
        self.kernel_unusable = reason
        if self.settings.backend == "auto":
            self._selection = fall_back(
                self._scratch_dir, (("kernel", reason),), inplace=self.settings.inplace
            )
            name = self._selection.backend.name
            self._backends = {name: self._selection.backend}
            return f"kernel backend unusable, using the {name} backend instead: {reason}"
        self._selection_error = cannot_work_here("kernel", reason)
        return str(self._selection_error)

    def shutdown(self) -> None:
        """Release every backend."""
        for backend in self._backends.values():
            backend.shutdown()
