"""The backends by name, in one ordered registry filled through our own pluggy hook.

Light (standard library and pluggy): the thin plugin module builds the registry in every run
that uses it, and only a backend's factory, called once a test needs the backend, imports
the backend's module.  Outside pytest (the ``pytest-overlay`` command line)
:func:`builtin_registry` fills one through a plugin manager of our own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, final, get_args

import pluggy

from . import hookspecs

if TYPE_CHECKING:
    from ._backends.base import Backend

BuiltinBackend = Literal["kernel", "fuse", "copy"]
"""The backends pytest-overlay ships, in the order ``auto`` tries them."""
BUILTIN_BACKENDS: tuple[BuiltinBackend, ...] = get_args(BuiltinBackend)
AUTO = "auto"
_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


@final
@dataclass(frozen=True)
class BackendSetup:
    """What a backend factory is given: where to keep its files, and the user's settings."""

    __module__ = "pytest_overlay"

    scratch: Callable[[], Path]
    """The backend's own scratch directory, ``<session scratch>/<name>`` (called when first
    needed: pytest's basetemp is known only once a test runs; the backend creates it)."""
    upper_size: str = ""
    """``--overlay-upper-size``: the size limit of a test's upper layer, ``""`` for none."""


BackendFactory = Callable[[BackendSetup], "Backend"]


@final
class BackendRegistry:
    """The backends a run can use, by name, in the order they were added."""

    __module__ = "pytest_overlay"

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}

    def add(self, name: str, factory: BackendFactory) -> None:
        """Make *factory*'s backend available as ``--overlay-backend=NAME`` (and the marker's
        ``backend=NAME``).  *name*: lower case letters, digits, ``-`` and ``_``."""
        if not _NAME.match(name) or name == AUTO:
            raise ValueError(
                f"pytest-overlay: a backend cannot be named {name!r}: use lower case letters, "
                "digits, '-' and '_', starting with a letter, and not 'auto'"
            )
        if name in self._factories:
            raise ValueError(f"pytest-overlay: a backend named {name!r} is registered twice")
        self._factories[name] = factory

    def factory(self, name: str) -> BackendFactory:
        """The factory registered as *name* (to wrap it, say); ``KeyError`` if there is none."""
        return self._factories[name]

    @property
    def names(self) -> tuple[str, ...]:
        """Every registered name, in order."""
        return tuple(self._factories)

    @property
    def choices(self) -> tuple[str, ...]:
        """What ``--overlay-backend`` accepts: ``auto``, then :attr:`names`."""
        return (AUTO, *self._factories)

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(self, name: str, scratch: Callable[[], Path], upper_size: str = "") -> Backend:
        """A new backend by *name*, keeping its files under ``scratch() / name``."""
        from ._errors import BackendUnavailableError

        factory = self._factories.get(name)
        if factory is None:
            raise BackendUnavailableError(
                f"unknown overlay backend {name!r}; choose one of {', '.join(self.choices)}"
            )
        return factory(BackendSetup(lambda: scratch() / name, upper_size))


def _kernel(setup: BackendSetup) -> Backend:
    from ._backends.kernel import KernelBackend

    return KernelBackend(setup.scratch, setup.upper_size)


def _fuse(setup: BackendSetup) -> Backend:
    from ._backends.fuse import FuseBackend

    return FuseBackend(setup.scratch)


def _copy(setup: BackendSetup) -> Backend:
    from ._backends.copying import CopyBackend

    return CopyBackend(setup.scratch)


def add_builtins(registry: BackendRegistry) -> None:
    """Register the backends pytest-overlay ships, in the order ``auto`` tries them."""
    factories: dict[BuiltinBackend, BackendFactory] = {
        "kernel": _kernel,
        "fuse": _fuse,
        "copy": _copy,
    }
    for name in BUILTIN_BACKENDS:
        registry.add(name, factories[name])


def collect(hook: pluggy.HookRelay) -> BackendRegistry:
    """A registry filled by every implementation of ``pytest_overlay_register_backends``."""
    registry = BackendRegistry()
    hook.pytest_overlay_register_backends(registry=registry)
    return registry


class _Builtins:
    @pluggy.HookimplMarker("pytest")(tryfirst=True)
    def pytest_overlay_register_backends(self, registry: BackendRegistry) -> None:
        add_builtins(registry)


def builtin_registry() -> BackendRegistry:
    """The registry outside pytest: the built-in backends, through a plugin manager of our own
    (third-party backends are pytest plugins, known only to a pytest run)."""
    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(hookspecs)
    manager.register(_Builtins())
    return collect(manager.hook)
