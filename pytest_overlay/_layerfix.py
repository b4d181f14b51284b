"""The ``overlay_layer`` factory: build a layer on an overlay, freeze it, hand out a Layer."""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

import pytest

from . import _namespaces
from ._keep import copy_layer
from ._layercache import (
    LAYER_DIR,
    Layer,
    LayerBuildError,
    LayerCache,
    default_layer_root,
    hash_inputs,
    layer_key,
)
from ._session import OverlaySession
from ._upper import synthesize_upper

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def layer_cache(config: pytest.Config, session: OverlaySession) -> LayerCache:
    """The session's layer cache (one per process; workers share the controller's run id)."""
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
        if not _NAME.match(name):
            raise pytest.UsageError(
                f"overlay_layer: layer name {name!r} must be 1 to 64 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        below = tuple(below)
        for layer in below:
            if not isinstance(layer, Layer):
                raise TypeError(f"overlay_layer: below= takes Layer objects, got {layer!r}")
        root = self._config.rootpath
        digest = hash_inputs(root, inputs)
        cache_key = layer_key(name, key, digest, below)
        if cache_key in self._failed:
            raise LayerBuildError(
                f"layer {name!r} failed to build earlier in this run (see that error and the "
                f"pytest-overlay section of the summary): {self._failed[cache_key]}"
            )
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
            first_line = str(exc).splitlines()[0]
            self._failed[cache_key] = first_line
            self._session.notices.append(first_line + " (the first test that needed it shows why)")
            raise
        self._built[cache_key] = layer
        return layer

    def _build(
        self, name: str, build: Callable[[Path], object], below: tuple[Layer, ...], scratch: Path
    ) -> Path:
        lowers: list[Path] = []
        for layer in below:
            lowers.extend(p for p in layer.stack() if p not in lowers)
        lowers.extend(self._session.settings.lowers)
        backend = self._session.selection.backend
        mount = backend.mount(lowers, label=f"layer-{name}")
        try:
            try:
                build(mount.path)
            except Exception as exc:
                details = "".join(traceback.format_exception(exc)).rstrip()
                raise LayerBuildError(
                    f"building snapshot layer {name!r} failed: {type(exc).__name__}: {exc}\n"
                    f"{details}"
                ) from exc
            target = scratch / LAYER_DIR
            with _namespaces.privileged():
                if mount.upper is not None:
                    copy_layer(mount.upper, target)
                else:
                    synthesize_upper(mount.diff(), mount.new_root, target)
        finally:
            mount.close()
        return target


def resolve_layers(request: pytest.FixtureRequest, names: object) -> tuple[Path, ...]:
    """The lower directories of the layers a marker names, topmost first."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)):
        pytest.fail(f"overlay marker: layers= takes a list of fixture names, got {names!r}")
    paths: list[Path] = []
    for fixture_name in names:
        layer = request.getfixturevalue(str(fixture_name))
        if not isinstance(layer, Layer):
            pytest.fail(
                f"overlay marker: fixture {fixture_name!r} returned {type(layer).__name__}, "
                "not a pytest_overlay.Layer (return the result of overlay_layer(...))",
                pytrace=False,
            )
        paths.extend(p for p in layer.stack() if p not in paths)
    return tuple(paths)
