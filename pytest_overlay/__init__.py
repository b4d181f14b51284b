"""pytest-overlay: every test gets a private, writable overlay of the project tree.

Only the names in ``__all__`` are public; everything in underscore modules may change.
"""

from __future__ import annotations

from ._diff import Change, ChangeKind, TreeDiff
from ._errors import BackendUnavailableError, MountError, OverlayError
from ._overlay import Overlay
from ._version import __version__
from ._warnings import OverlayWarning

__all__ = [
    "BackendUnavailableError",
    "Change",
    "ChangeKind",
    "MountError",
    "Overlay",
    "OverlayError",
    "OverlayWarning",
    "TreeDiff",
    "__version__",
]
