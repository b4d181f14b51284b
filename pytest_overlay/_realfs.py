"""The real filesystem for the plugin's own work, whatever a test has patched in-process.

pyfakefs (its ``fs``, ``fs_class``, ``fs_module`` and ``fs_session`` fixtures, and its
``Patcher``) replaces ``os``, ``open``, ``io``, ``pathlib`` and ``shutil`` in every loaded
module, ours included, for as long as its patcher runs; a fixture of module or session scope
keeps it running across our per-test setup and teardown.  A monkeypatch of wider scope than
the test (``pytest.MonkeyPatch.context()`` in a module fixture, a plain ``setattr`` on ``os``)
replaces single functions of ``os`` the same way.  Mounting, unmounting, diffing and keeping
against a fake, or through a patched ``os.rename``, would go wrong in ways that outlive the
test (a view left mounted, the next test's setup failing).

Pausing, not references.  Holding references to the real functions would mean writing every
filesystem call of the plugin (hundreds) through them, and the standard library we call
(``tempfile``, ``shutil``, ``subprocess``) would still look functions up in the patched modules.
So :func:`real_filesystem` puts the real ones back for the duration instead: pyfakefs's own
``Patcher.pause()``/``resume()`` (its documented way; pyfakefs is looked up in ``sys.modules``
only, never imported), and for a monkeypatch, the functions of ``os``, ``os.path`` and
``shutil`` and ``open`` as they were when this module was imported, which is when pytest loads
the plugin, before any conftest or test can patch them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import operator
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

__all__ = ["real_filesystem"]


def _callables(module: ModuleType) -> list[tuple[ModuleType, str, Any]]:
    return [(module, name, value) for name, value in vars(module).items() if callable(value)]


_ORIGINALS: list[tuple[ModuleType, str, Any]] = [
    *(entry for module in (os, os.path, shutil) for entry in _callables(module)),
    (builtins, "open", builtins.open),
    (io, "open", io.open),
]
_MISSING = object()
# The same, column by column: the check that nothing is patched runs in C (map, getattr),
# a few microseconds for some 350 functions, on every setup, teardown and report of a test.
_MODULES = tuple(module for module, _, _ in _ORIGINALS)
_NAMES = tuple(name for _, name, _ in _ORIGINALS)
_REALS = tuple(real for _, _, real in _ORIGINALS)
_DEFAULTS = (_MISSING,) * len(_ORIGINALS)
_depth = threading.local()


def _active_patchers() -> list[Any]:
    """pyfakefs's patchers that are patching now (none if pyfakefs was never imported)."""
    unittest = sys.modules.get("pyfakefs.fake_filesystem_unittest")
    patcher_class = getattr(unittest, "Patcher", None)
    found = []
    for name in ("PATCHER", "DOC_PATCHER"):
        patcher = getattr(patcher_class, name, None)
        if patcher is not None and getattr(patcher, "is_patching", False):
            found.append(patcher)
    return found


@contextlib.contextmanager
def real_filesystem() -> Iterator[None]:
    """Run the block against the real filesystem and the real ``os`` functions, then put
    back whatever fakes and patches were there.  Nested uses cost nothing."""
    if getattr(_depth, "value", 0):
        yield
        return
    _depth.value = 1
    paused = _active_patchers()
    try:
        for patcher in paused:
            patcher.pause()
        current = tuple(map(getattr, _MODULES, _NAMES, _DEFAULTS))
        replaced = []
        if any(map(operator.is_not, current, _REALS)):
            replaced = [
                (module, name, real, now)
                for (module, name, real), now in zip(_ORIGINALS, current, strict=True)
                if now is not real
            ]
        try:
            for module, name, real, _ in replaced:
                setattr(module, name, real)
            yield
        finally:
            for module, name, _, patched in replaced:
                if patched is _MISSING:
                    delattr(module, name)
                else:
                    setattr(module, name, patched)
    finally:
        for patcher in reversed(paused):
            patcher.resume()
        _depth.value = 0
