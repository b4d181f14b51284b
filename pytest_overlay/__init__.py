"""pytest-overlay: every test gets a private, writable overlay of the project tree.

Only the names in ``__all__`` are public; everything in underscore modules may change.  The
names are imported on first use, so that the FUSE server process, which imports this
package, does not pay for importing pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._backends.base import Backend, Mount
    from ._diff import Change, ChangeKind, TreeDiff
    from ._errors import (
        BackendUnavailableError,
        MountError,
        OverlayError,
        OverlayFailure,
        ViewLostError,
    )
    from ._overlay import Overlay
    from ._registry import BackendRegistry, BackendSetup
    from ._snapshot.cache import Layer, LayerBuildError
    from ._snapshot.factory import LayerFactory
    from ._warnings import OverlayWarning

__all__ = [
    "Backend",
    "BackendRegistry",
    "BackendSetup",
    "BackendUnavailableError",
    "Change",
    "ChangeKind",
    "Layer",
    "LayerBuildError",
    "LayerFactory",
    "Mount",
    "MountError",
    "Overlay",
    "OverlayError",
    "OverlayFailure",
    "OverlayWarning",
    "TreeDiff",
    "ViewLostError",
    "__version__",
]

_HOMES = {
    "Backend": "_backends.base",
    "Mount": "_backends.base",
    "BackendRegistry": "_registry",
    "BackendSetup": "_registry",
    "Change": "_diff",
    "ChangeKind": "_diff",
    "TreeDiff": "_diff",
    "BackendUnavailableError": "_errors",
    "MountError": "_errors",
    "OverlayError": "_errors",
    "OverlayFailure": "_errors",
    "ViewLostError": "_errors",
    "Layer": "_snapshot.cache",
    "LayerBuildError": "_snapshot.cache",
    "LayerFactory": "_snapshot.factory",
    "Overlay": "_overlay",
    "OverlayWarning": "_warnings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pytest_overlay' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
