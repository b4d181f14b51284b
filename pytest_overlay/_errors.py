"""The exception hierarchy: one base class, and OSError subclasses where an errno is involved."""

from __future__ import annotations

from typing import final

# Failed is what pytest.fail() raises; pytest names it only as pytest.fail.Exception, which a
# class statement cannot take as a base.
from _pytest.outcomes import Failed


def path_too_long(where: str) -> str:
    """The one wording of an ``ENAMETOOLONG`` from reaching a file by its path."""
    return f"a path in the {where} is longer than the system allows (PATH_MAX, 4,096 bytes)"


__all__ = [
    "BackendUnavailableError",
    "MountError",
    "OverlayError",
    "OverlayFailure",
    "ResetUnverifiedError",
    "ViewLostError",
    "path_too_long",
]


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


@final
class ResetUnverifiedError(OverlayError):
    """The copy backend reset a copy after a test and could not show it pristine again.

    Not an ``OSError``: nothing failed at the system's level, a check of ours did.  The copy
    is thrown away and the next test gets a fresh one; the session says so once, since a
    reset that never verifies means a full copy for every test.
    """

    __module__ = "pytest_overlay"

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path or '.'}: {what}")
        self.path = path
        self.what = what


class OverlayFailure(OverlayError, Failed):
    """A mistake in how a test uses pytest-overlay, which pytest reports as its message alone.

    For errors raised in a test's setup whose traceback would show only pytest-overlay's
    frames (a layer that failed to build, a marker naming a missing fixture): as a
    ``pytest.fail(..., pytrace=False)`` it is shown without one, and as an
    :class:`OverlayError` (an ``Exception``) ``except Exception`` still catches it.
    """

    __module__ = "pytest_overlay"

    def __init__(self, message: str) -> None:
        Failed.__init__(self, message, pytrace=False)

    # Failed's repr is the bare message; an exception's usual one names its class.
    __repr__ = BaseException.__repr__
    __str__ = BaseException.__str__
