"""pytest-overlay: every test gets a private, writable overlay of the project tree.

Only the names in ``__all__`` are public; everything in underscore modules may change.
"""

from __future__ import annotations

from ._diff import Change, ChangeKind, TreeDiff
from ._errors import BackendUnavailableError, MountError, OverlayError
from ._layercache import Layer, LayerBuildError
from ._layerfix import LayerFactory
from ._overlay import Overlay
from ._version import __version__
from ._warnings import OverlayWarning

__all__ = [
    "BackendUnavailableError",
    "Change",
    "ChangeKind",
    "Layer",
    "LayerBuildError",
    "LayerFactory",
    "MountError",
    "Overlay",
    "OverlayError",
    "OverlayWarning",
    "TreeDiff",
    "__version__",
]
