"""Settings parsed once from the pytest config, and the per-session backend state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import _namespaces
from ._backends import (
    BACKEND_CHOICES,
    FUSE_NOT_YET,
    Backend,
    Mount,
    Selection,
    create_backend,
    select_backend,
)
from ._errors import BackendUnavailableError

USERNS_CHOICES = ("lazy", "early")


@dataclass(frozen=True)
class Settings:
    """The user's choices, from the command line, falling back to the ini file."""

    backend: str
    lowers: tuple[Path, ...]
    userns: str = "lazy"

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Parse and validate; a mistake is a usage error that names the fix."""
        backend = config.getoption("overlay_backend") or config.getini("overlay_backend")
        backend = str(backend or "auto").strip()
        check_backend_name(backend, "--overlay-backend / overlay_backend")
        raw_lowers: list[str] = list(config.getoption("overlay_lowers") or [])
        if not raw_lowers:
            raw_lowers = [str(p) for p in config.getini("overlay_lowers")]
        root = config.rootpath
        lowers = resolve_lowers(raw_lowers, root, "--overlay-lower / overlay_lowers") or (root,)
        userns = str(
            config.getoption("overlay_userns") or config.getini("overlay_userns") or "lazy"
        ).strip()
        if userns not in USERNS_CHOICES:
            raise pytest.UsageError(
                f"--overlay-userns / overlay_userns: unknown value {userns!r}; "
                f"choose one of {', '.join(USERNS_CHOICES)}"
            )
        return cls(backend=backend, lowers=lowers, userns=userns)


def check_backend_name(name: object, where: str) -> None:
    """Reject a backend name we do not know, saying which ones exist."""
    if name not in BACKEND_CHOICES:
        raise pytest.UsageError(
            f"{where}: unknown overlay backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}"
        )


def resolve_lowers(raw: Sequence[str | Path], root: Path, where: str) -> tuple[Path, ...]:
    """Absolute, existing directories; relative paths are taken from the project root."""
    resolved: list[Path] = []
    for item in raw:
        path = (root / Path(item)).resolve() if not Path(item).is_absolute() else Path(item)
        if not path.exists():
            raise pytest.UsageError(
                f"{where}: lower layer {item!r} does not exist (looked at {path}); "
                "give an existing directory, relative to the project root or absolute"
            )
        if not path.is_dir():
            raise pytest.UsageError(
                f"{where}: lower layer {item!r} is not a directory ({path}); "
                "lower layers must be directories"
            )
        for other in resolved:
            if other == path or other in path.parents or path in other.parents:
                raise pytest.UsageError(
                    f"{where}: lower layers {str(other)!r} and {str(path)!r} overlap; "
                    "overlayfs refuses a layer inside another, so give separate directories"
                )
        resolved.append(path)
    return tuple(resolved)


class OverlaySession:
    """Backends for one pytest process, created on first use."""

    def __init__(self, settings: Settings, inherited: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self._inherited = inherited
        self._selection: Selection | None = None
        self._selection_error: BackendUnavailableError | None = None
        self._backends: dict[str, Backend] = {}
        self._scratch: Path | None = None
        self.kernel_unusable: str | None = None
        self.notices: list[str] = []

    def set_scratch(self, scratch: Path) -> None:
        """Where backends keep per-test directories (inside pytest's basetemp)."""
        if self._scratch is None:
            self._scratch = scratch

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
            backend = create_backend(self._inherited["backend"], self._scratch_dir)
            passed = tuple((str(a), str(b)) for a, b in self._inherited["passed_over"])
            return Selection(backend, passed)
        return select_backend(self.settings.backend, self._scratch_dir)

    def backend(self, name: str | None) -> Backend:
        """The session's backend, or the one a marker asks for by name."""
        if name is None or name == "auto":
            return self.selection.backend
        if name == "kernel" and self.kernel_unusable is not None:
            raise BackendUnavailableError(
                f"the kernel backend cannot work here: {self.kernel_unusable}"
            )
        if name not in self._backends:
            backend = create_backend(name, self._scratch_dir)
            reason = backend.unavailable_reason()
            if reason is not None:
                raise BackendUnavailableError(f"the {name} backend cannot work here: {reason}")
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
            passed = (("kernel", reason), ("fuse", FUSE_NOT_YET))
            self._selection = Selection(create_backend("copy", self._scratch_dir), passed)
            self._backends = {"copy": self._selection.backend}
            return f"kernel backend unusable, using the copy backend instead: {reason}"
        self._selection_error = BackendUnavailableError(
            f"the kernel backend cannot work here: {reason}"
        )
        return str(self._selection_error)

    def shutdown(self) -> None:
        """Release every backend."""
        for backend in self._backends.values():
            backend.shutdown()
