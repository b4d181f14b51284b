"""The exception hierarchy: one base class, and OSError subclasses where an errno is involved."""

from __future__ import annotations

from typing import final

__all__ = ["BackendUnavailableError", "MountError", "OverlayError", "ViewLostError"]


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


@final
class ViewLostError(OverlayError):
    """A test's view stopped working while the test ran (its FUSE server died).

    Raised when the view is closed, after everything is cleaned up: the test's result cannot be
    trusted, so the plugin turns it into an error of that test.
    """

    __module__ = "pytest_overlay"
