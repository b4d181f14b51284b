"""The exception hierarchy: one base class, and OSError subclasses where an errno is involved."""

from __future__ import annotations

from typing import final

__all__ = ["BackendUnavailableError", "MountError", "OverlayError"]


class OverlayError(Exception):
    """Base class of every error pytest-overlay raises on purpose."""

    __module__ = "pytest_overlay"


@final
class BackendUnavailableError(OverlayError):
    """The requested backend cannot work on this machine; the message says why and what to do."""

    __module__ = "pytest_overlay"


@final
class MountError(OverlayError, OSError):
    """Mounting or unmounting an overlay failed; carries the errno and the path."""

    __module__ = "pytest_overlay"
