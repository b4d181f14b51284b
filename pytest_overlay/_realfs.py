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
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

__all__ = ["real_filesystem", "unwatch", "watch"]


def _callables(module: ModuleType) -> list[tuple[ModuleType, str, Any]]:
    return [(module, name, value) for name, value in vars(module).items() if callable(value)]


_ORIGINALS: list[tuple[ModuleType, str, Any]] = [
    *(entry for module in (os, os.path, shutil) for entry in _callables(module)),
    (builtins, "open", builtins.open),
    (io, "open", io.open),
]
_MISSING = object()


def _check_of(module: ModuleType) -> tuple[dict[str, Any], Callable[[dict[str, Any]], Any], Any]:
    """What :func:`_unpatched` compares for *module*: its dict, a getter of the names, and
    the originals (a single name twice: ``itemgetter`` of one name returns no tuple)."""
    pairs = [(name, real) for owner, name, real in _ORIGINALS if owner is module]
    pairs += pairs[:1] if len(pairs) == 1 else []
    return (
        vars(module),
        operator.itemgetter(*(name for name, _ in pairs)),
        tuple(real for _, real in pairs),
    )


# The check that nothing is patched runs on every setup and teardown of a test.  Per module,
# one C call fetches every name from the module's dict, and one tuple comparison compares them
# with the originals (it takes the same object as equal without asking it, and a function
# equals only itself): about 8 us for some 300 functions, where a ``getattr`` and an ``is
# not`` per name took 30 (an object that claims to equal the function it replaces, which no
# mock does by default, would pass for it).  A name deleted from its module (KeyError) counts
# as patched, and the slow path sorts it out.
_CHECKS = tuple(_check_of(module) for module in dict.fromkeys(m for m, _, _ in _ORIGINALS))
_MODULES = tuple(module for module, _, _ in _ORIGINALS)
_NAMES = tuple(name for _, name, _ in _ORIGINALS)
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


class _Watch:
    """Whether the modules of :data:`_ORIGINALS` are watched (:func:`watch`), how many
    assignments to their attributes there were, and how many when the last check found every
    function the original."""

    sessions = 0
    changes = 0
    verified = -1


class _WatchedModule(ModuleType):
    """The class of a watched module: an assignment or deletion of one of its attributes
    (``setattr``, ``monkeypatch.setattr``, ``mock.patch``, pyfakefs) counts as a change.
    Counted after it is made, so that a check running meanwhile is not taken for later."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        _Watch.changes += 1

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        _Watch.changes += 1


_WATCHED = tuple(dict.fromkeys(_MODULES))


def watch() -> None:
    """While the plugin is in use: look at the functions again only after an attribute of
    their modules was assigned (module ``__class__`` assignment, the documented way to
    customise a module's attributes).  Nested calls count; a module whose class is not the
    plain module type (someone else customised it) leaves every check complete."""
    _Watch.sessions += 1
    if _Watch.sessions > 1:
        return
    if all(type(module) is ModuleType for module in _WATCHED):
        for module in _WATCHED:
            _set_class(module, _WatchedModule)
    _Watch.verified = -1


def unwatch() -> None:
    """The last session is over: the modules get their own class back."""
    _Watch.sessions -= 1
    if _Watch.sessions > 0:
        return
    for module in _WATCHED:
        if module.__class__ is _WatchedModule:  # not one customised after us
            _set_class(module, ModuleType)
    _Watch.verified = -1


def _set_class(module: ModuleType, cls: type[ModuleType]) -> None:
    module.__class__ = cls


def _unpatched() -> bool:
    """Whether every function of :data:`_ORIGINALS` is the original (the fast check).

    Watched (:func:`watch`), and with no attribute of their modules assigned since the last
    check found them all original, it is: a comparison of two numbers instead of some 300
    dictionary lookups (about 13 us, twice per test).  What no assignment makes, a write
    straight into a module's ``__dict__``, is then not seen.
    """
    seen = _Watch.changes
    if seen == _Watch.verified and type(os) is _WatchedModule:
        return True
    try:
        clean = all(fetch(names) == reals for names, fetch, reals in _CHECKS)
    except KeyError:
        return False
    if clean:
        _Watch.verified = seen
    return clean


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
        replaced = []
        if not _unpatched():
            current = tuple(map(getattr, _MODULES, _NAMES, _DEFAULTS))
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
