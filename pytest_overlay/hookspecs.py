"""pytest-overlay's own hooks, added to pytest's by the plugin's ``pytest_addhooks``.

A plugin (or a ``conftest.py``) implements them like any pytest hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._registry import BackendRegistry

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_overlay_register_backends(registry: BackendRegistry) -> None:
    """Add backends to *registry* with ``registry.add(name, factory)``.

    Called once per pytest process, at ``pytest_configure``, and (for the built-in backends
    only) by the ``pytest-overlay`` command line.  The built-in backends (``kernel``, ``fuse``,
    ``copy``) are added first, in the order ``--overlay-backend=auto`` tries them; a plugin's
    are added after them.  *factory* is called with a :class:`pytest_overlay.BackendSetup`
    when a test first needs the backend, and returns a :class:`pytest_overlay.Backend`: it
    runs only once the plugin is in use, so that is where the backend's module is imported.
    See ``docs/backends.md``, "Writing a backend".
    """
