"""The ``overlay_layer`` factory: build a layer on an overlay, freeze it, hand out a Layer."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, final

import pytest

from pytest_overlay import _namespaces
from pytest_overlay._errors import OverlayError, OverlayFailure
from pytest_overlay._session import OverlaySession

# The cache is imported where a layer is asked for: a run without snapshot layers (in place,
# every run imports this module) never needs it.
if TYPE_CHECKING:
    from .cache import Layer, LayerCache

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def layer_cache(config: pytest.Config, session: OverlaySession) -> LayerCache:
    """The session's layer cache (one per process; workers share the controller's run id)."""
    from .cache import LayerCache, default_layer_root

    if session.layer_cache is None:
        root = session.settings.layer_dir or default_layer_root(config.rootpath)
        session.layer_cache = LayerCache(
            root, session.run_id or "unknown", rebuild=session.settings.rebuild
        )
    return session.layer_cache


@final
class LayerFactory:
    """Build, or fetch from the cache, a snapshot layer: ``overlay_layer(name, build, ...)``."""

    __module__ = "pytest_overlay"

    def __init__(self, config: pytest.Config, session: OverlaySession) -> None:
        self._config = config
        self._session = session
        self._built: dict[str, Layer] = {}
        self._failed: dict[str, str] = {}
        # Under -s (or tee-sys) the user watches the build's output live; leave it alone.
        self._capture = config.getoption("capture", "fd") not in ("no", "tee-sys")

    def __call__(
        self,
        name: str,
        build: Callable[[Path], object],
        *,
        inputs: Sequence[str | os.PathLike[str]] = (),
        key: object = None,
        below: Sequence[Layer] = (),
    ) -> Layer:
        """Return the layer *name*, building it with ``build(root)`` if the cache lacks it.

        :param build: called with ``root``, a writable overlay of *below* over the project
            tree; whatever it changes there becomes the layer.  It may run subprocesses.
        :param inputs: files or directories (relative to the project root) whose content
            decides when the layer is stale.
        :param key: anything else the layer depends on (a version string, say); its ``repr``
            is part of the cache key.
        :param below: layers this one is built on, and stacked on whenever it is used.
        :raises LayerBuildError: if the build fails; every later request in this run (on
            every xdist worker) fails with the same message, without building again.
        """
        __tracebackhide__ = True
        from .cache import LayerBuildError, hash_inputs, layer_key

        below = _check_arguments(name, build, below)
        # A lone path is one input, not a sequence of one-letter names.
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        root = self._config.rootpath
        _check_inputs(name, root, inputs)
        digest = hash_inputs(root, inputs)
        cache_key = layer_key(name, key, digest, below)
        if cache_key in self._failed:
            # The build ran once in this process; a second fixture asking for the same
            # layer gets the same message, without building again.
            raise LayerBuildError(self._failed[cache_key])
        if cache_key in self._built:
            return self._built[cache_key]
        cache = layer_cache(self._config, self._session)
        meta = {"inputs": [str(i) for i in inputs], "key_repr": repr(key)}
        try:
            layer = cache.get_or_build(
                name,
                cache_key,
                lambda scratch: self._build(name, build, below, scratch),
                below,
                meta,
            )
        except LayerBuildError as exc:
            self._failed[cache_key] = str(exc)
            notice = str(exc).splitlines()[0] + " (each test that needs it shows why)"
            if notice not in self._session.notices:
                self._session.notices.append(notice)
            raise
        self._built[cache_key] = layer
        return layer

    def _build(
        self, name: str, build: Callable[[Path], object], below: tuple[Layer, ...], scratch: Path
    ) -> Path:
        # Imported here: a run that builds no layer never needs it.
        from .build import build_failed, run_build
        from .cache import LAYER_DIR, LayerBuildError

        lowers: list[Path] = []
        for layer in below:
            lowers.extend(p for p in layer.stack() if p not in lowers)
        lowers.extend(self._session.settings.lowers)
        try:
            mount = self._session.selection.backend.mount(lowers, label=f"layer-{name}")
        except (OverlayError, OSError) as exc:
            reason = f"pytest-overlay could not mount the overlay to build it on: {exc}"
            raise LayerBuildError(build_failed(name, reason)) from None
        try:
            failure = run_build(
                name, build, mount.path, project=self._config.rootpath, capture=self._capture
            )
            if failure is not None:
                raise LayerBuildError(failure)
            target = scratch / LAYER_DIR
            try:
                with _namespaces.privileged():
                    mount.export(target)
            except OSError as exc:
                reason = f"pytest-overlay could not store the built layer in {scratch}: {exc}"
                raise LayerBuildError(build_failed(name, reason)) from None
        finally:
            mount.close()
        return target


def _check_arguments(name: object, build: object, below: object) -> tuple[Layer, ...]:
    """Fail with what is wrong, and how to write it, before anything is hashed or built;
    returns *below* as a tuple (a single layer may be given as it is)."""
    from .cache import Layer

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        suggestion = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-._")[:64] or "venv"
        raise OverlayFailure(
            f"overlay_layer: layer name {name!r} is not valid: it names the layer's directory "
            "and lock file in the cache, so it must be a string of 1 to 64 letters, digits, "
            f"'_', '.' or '-' that starts with a letter or digit, such as {suggestion!r}"
        )
    if not callable(build):
        raise OverlayFailure(
            f"overlay_layer({name!r}, build): build must be a function that takes the "
            f"layer's root directory and builds the layer there, got {build!r}"
        )
    single = isinstance(below, (str, Layer)) or not isinstance(below, Iterable)
    layers = (below,) if single else tuple(below)  # type: ignore[arg-type]
    for layer in layers:
        if not isinstance(layer, Layer):
            raise OverlayFailure(
                f"overlay_layer({name!r}, below=...): below= takes the Layer objects that "
                f"other overlay_layer(...) calls returned, got {layer!r}; request the fixture "
                "of the layer to build on and pass its value, as in below=[venv_layer]"
            )
    return layers  # type: ignore[return-value]


def _check_inputs(name: str, root: Path, inputs: Sequence[str | os.PathLike[str]]) -> None:
    for item in inputs:
        path = Path(item) if Path(item).is_absolute() else root / item
        if not os.path.lexists(path):
            raise OverlayFailure(
                f"overlay_layer({name!r}): input {str(item)!r} does not exist ({path}); "
                "inputs= names the files and directories whose content decides when the layer "
                f"is rebuilt, relative to the project root ({root}): create it, or correct "
                "or remove it in inputs=[...]"
            )


def resolve_layers(request: pytest.FixtureRequest, names: object) -> tuple[Path, ...]:
    """The lower directories of the layers a marker names, topmost first.

    A mistake in the marker, or a layer that cannot be built, fails the test with a message
    that names the test, the marker and the fixture, and no traceback.
    """
    __tracebackhide__ = True
    from .cache import Layer

    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise OverlayFailure(
            f"{_marker_site(request)} has layers={names!r}; it takes the name of a fixture "
            "that returns overlay_layer(...), or a list of them, as in layers=['venv']"
        )
    paths: list[Path] = []
    for fixture_name in names:
        layer = _layer_fixture(request, fixture_name)
        if not isinstance(layer, Layer):
            raise OverlayFailure(
                f"{_marker_site(request)} names fixture {fixture_name!r} in layers=, which "
                f"returned {type(layer).__name__}, not a pytest_overlay.Layer: return the "
                "result of overlay_layer(...) from that fixture, or take it out of layers="
            )
        paths.extend(p for p in layer.stack() if p not in paths)
    return tuple(paths)


def _layer_fixture(request: pytest.FixtureRequest, fixture_name: str) -> object:
    __tracebackhide__ = True
    try:
        return request.getfixturevalue(fixture_name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != fixture_name:
            raise  # the layer fixture's own dependency is missing: pytest says which
        problem = (
            f"{_marker_site(request)} names {fixture_name!r} in layers=, but no fixture of "
            f"that name is visible to this test"
        )
        close = difflib.get_close_matches(fixture_name, _visible_fixtures(exc), 2, 0.75)
        if close:
            problem += "; did you mean " + " or ".join(repr(name) for name in close) + "?"
        hint = (
            "layers= takes the names of fixtures that return overlay_layer(...): correct the "
            "name, or define that fixture in a conftest.py"
        )
        raise OverlayFailure(f"{problem}\n  {hint}") from None
    except OverlayFailure as exc:
        # Raised by the fixture (once, then replayed by pytest to every test that needs it):
        # the same message, with the test and the marker that brought the layer in.
        needed = f"  needed by {_marker_site(request)}, through fixture {fixture_name!r}"
        raise type(exc)(f"{exc}\n{needed}") from None


def _visible_fixtures(exc: pytest.FixtureLookupError) -> list[str]:
    """The fixtures pytest lists as available in its own "fixture not found" message."""
    try:
        text = str(exc.formatrepr().errorstring)
    except Exception:  # a suggestion is a nicety; never fail for want of one
        return []
    for line in text.splitlines():
        _, found, listed = line.partition("available fixtures:")
        if found:
            return [n for n in (n.strip() for n in listed.split(",")) if n and n[0] != "_"]
    return []


def _marker_site(request: pytest.FixtureRequest) -> str:
    """The test and where its overlay marker is, as ``test_app.py::test_x: the overlay marker
    (test_app.py:12)``."""
    item = request.node
    path, lineno, _ = item.location
    own = any(mark.name == "overlay" for mark in getattr(item, "own_markers", ()))
    where = f"{path}:{(lineno or 0) + 1}" if own else f"a class's or the module's in {path}"
    return f"{item.nodeid}: the overlay marker ({where})"
