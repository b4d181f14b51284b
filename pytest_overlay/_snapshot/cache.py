"""Snapshot layers: expensive setup built once, frozen as a read-only layer, cached across runs.

A layer is the upper layer of one build, stored in overlayfs format and keyed by everything
that can change its content: its name, the user's key, the content of its input files and the
keys of the layers below it.  Layers live outside the project tree (overlayfs refuses a lower
layer inside another), by default in ``~/.cache/pytest-overlay/layers/<project>``::

    <name>-<key>/layer/       the frozen layer
    <name>-<key>/meta.json    name, key, inputs, below, build time, size, run id
    .failed-<name>-<key>.json a failed build of the current run, so xdist workers fail fast
    <name>.lock               builders of one layer take turns (filelock)

A layer is built in a temporary directory and renamed into place, so a half-built layer is
never seen.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from pytest_overlay._errors import OverlayError, OverlayFailure
from pytest_overlay._files import remove_tree
from pytest_overlay._keep import write_json_atomic
from pytest_overlay._layerwrite import copy_layer

LAYER_FORMAT = "1"
META_FILE = "meta.json"
LAYER_DIR = "layer"


@final
class Layer:
    """A frozen, read-only layer returned by the ``overlay_layer`` factory fixture.

    Name it in ``@pytest.mark.overlay(layers=[...])`` (by the name of the fixture that returns
    it) to stack it between the project tree and a test's upper layer.
    """

    __module__ = "pytest_overlay"

    def __init__(self, name: str, key: str, path: Path, below: tuple[Layer, ...]) -> None:
        self.name = name
        self.key = key
        self.path = path
        self.below = below

    def stack(self) -> tuple[Path, ...]:
        """This layer's directory and those of the layers below it, topmost first."""
        paths: list[Path] = [self.path]
        for layer in self.below:
            paths.extend(p for p in layer.stack() if p not in paths)
        return tuple(paths)

    def __repr__(self) -> str:
        return f"<Layer {self.name!r} key={self.key[:12]}>"


@final
class LayerBuildError(OverlayFailure):
    """A layer's build failed; every test that needs the layer errors with this message.

    The message is a few lines (the build's exception, the tail of its output, the user's
    frames); pytest shows it without a traceback of pytest-overlay's.
    """

    __module__ = "pytest_overlay"


@dataclass(frozen=True)
class LayerInfo:
    """A cached layer as the command lists it."""

    name: str
    key: str
    path: Path
    size: int
    created: str
    below: list[str]
    inputs: list[str]


def default_layer_root(project: Path) -> Path:
    """Where a project's layers are cached unless ``overlay_layer_dir`` says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.fsencode(project)).hexdigest()[:12]
    return Path(base) / "pytest-overlay" / "layers" / f"{project.name or 'root'}-{digest}"


def hash_inputs(project: Path, inputs: Sequence[str | os.PathLike[str]]) -> str:
    """A digest of the inputs' names, types, permission bits, link targets and contents."""
    digest = hashlib.sha256()
    for item in inputs:
        path = Path(item) if Path(item).is_absolute() else project / item
        digest.update(b"input\0" + os.fsencode(str(item)) + b"\0")
        for rel, entry in _walk(path):
            st = entry.lstat()
            digest.update(b"%s\0%o\0" % (os.fsencode(rel), st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.fsencode(os.readlink(entry)))
            elif stat.S_ISREG(st.st_mode):
                with open(entry, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()


# Bytecode appears and changes by itself; it must not make a layer stale.
_NOT_INPUT = ("__pycache__",)


def _walk(path: Path) -> Iterator[tuple[str, Path]]:
    if not os.path.lexists(path):
        raise OverlayError(f"layer input {path} does not exist; inputs must be existing paths")
    yield ".", path
    if path.is_dir() and not path.is_symlink():
        for directory, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in _NOT_INPUT)
            filenames = [f for f in filenames if not f.endswith(".pyc")]
            for name in sorted([*dirnames, *filenames]):
                full = Path(directory, name)
                yield full.relative_to(path).as_posix(), full


def builder() -> str:
    """Who builds layers in this process: ``root`` or ``user`` (see :func:`layer_key`)."""
    return "root" if os.geteuid() == 0 else "user"


def layer_key(name: str, key: object, inputs_digest: str, below: Sequence[Layer]) -> str:
    """The cache key: name, user key, inputs, the layers below, our layer format, and who
    builds it.

    Root marks opaque directories with ``trusted.overlay.opaque``, an ordinary user with
    ``user.overlay.opaque``, and each kernel mount honours only its own kind, so a layer
    directory shared by root and a user (``--overlay-layer-dir``) keeps one build of each.
    """
    parts = [LAYER_FORMAT, builder(), name, repr(key), inputs_digest]
    parts += [layer.key for layer in below]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


class LayerCache:
    """The layers of one project, built on demand and shared by every worker of a run."""

    def __init__(self, root: Path, run_id: str, *, rebuild: bool) -> None:
        self.root = root
        self.run_id = run_id
        self.rebuild = rebuild

    def directory(self, name: str, key: str) -> Path:
        """Where the layer *name* with *key* lives once built."""
        return self.root / f"{name}-{key[:20]}"

    def get_or_build(
        self,
        name: str,
        key: str,
        build: Callable[[Path], Path],
        below: tuple[Layer, ...],
        meta: dict[str, Any],
    ) -> Layer:
        """The cached layer, or build it once (whoever holds the lock builds; others wait).

        *build* receives a scratch directory and must leave the finished layer (overlay
        format) at the path it returns.
        """
        final = self.directory(name, key)
        self.root.mkdir(parents=True, exist_ok=True)
        if self._usable(final):
            return Layer(name, key, final / LAYER_DIR, below)
        # Imported here: a run that builds no layer never needs it (~10 ms to import).
        from filelock import FileLock

        with FileLock(str(self.root / f"{name}.lock")):
            self._raise_recorded_failure(name, key)
            if self._usable(final):
                return Layer(name, key, final / LAYER_DIR, below)
            self._remove_dead_builds(name)
            scratch = self.root / f".build-{name}-{key[:20]}-{os.getpid()}"
            scratch.mkdir()
            started = time.monotonic()
            try:
                built = build(scratch)
                if built != scratch / LAYER_DIR:
                    size = copy_layer(built, scratch / LAYER_DIR)
                else:
                    size = sum(p.lstat().st_size for p in built.rglob("*"))
                write_json_atomic(
                    scratch / META_FILE,
                    {
                        **meta,
                        "name": name,
                        "key": key,
                        "below": [layer.key for layer in below],
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "build_seconds": round(time.monotonic() - started, 3),
                        "size": size,
                        "run_id": self.run_id,
                        "format": LAYER_FORMAT,
                        "builder": builder(),
                    },
                )
            except BaseException as exc:
                remove_tree(scratch)
                if isinstance(exc, LayerBuildError):
                    self._record_failure(name, key, str(exc))
                raise
            if final.exists():
                remove_tree(final)
            os.rename(scratch, final)
            self._prune(name, keep=final)
            return Layer(name, key, final / LAYER_DIR, below)

    def _remove_dead_builds(self, name: str) -> None:
        """Remove half-made builds of *name* that a killed process left behind.

        Called with the lock of *name* held: whoever builds *name* holds it, so every build
        directory of *name* found now belongs to a process that died while building.
        """
        pattern = re.compile(rf"\.build-{re.escape(name)}-[0-9a-f]{{20}}-[0-9]+")
        for path in self.root.glob(f".build-{name}-*"):
            if pattern.fullmatch(path.name):
                remove_tree(path)

    def _usable(self, final: Path) -> bool:
        try:
            meta = json.loads((final / META_FILE).read_text())
        except (OSError, ValueError):
            return False
        # --overlay-rebuild rebuilds each layer once per run, whichever worker gets there.
        return not (self.rebuild and meta.get("run_id") != self.run_id)

    def _failure_file(self, name: str, key: str) -> Path:
        return self.root / f".failed-{name}-{key[:20]}.json"

    def _record_failure(self, name: str, key: str, message: str) -> None:
        write_json_atomic(self._failure_file(name, key), {"run_id": self.run_id, "error": message})

    def _raise_recorded_failure(self, name: str, key: str) -> None:
        try:
            data = json.loads(self._failure_file(name, key).read_text())
        except (OSError, ValueError):
            return
        if data.get("run_id") == self.run_id:
            raise LayerBuildError(data.get("error", f"building layer {name!r} failed"))

    def _prune(self, name: str, keep: Path) -> None:
        # Builds of the same layer from earlier runs are stale: their inputs changed.  Builds
        # of this run stay, since one name may be built with several keys in a run, and so
        # do the other builder's (root's or a user's), which are not stale.
        for path in self.root.glob(f"{name}-*"):
            if path != keep and path.is_dir() and (path / META_FILE).exists():
                with contextlib.suppress(OSError, ValueError):
                    meta = json.loads((path / META_FILE).read_text())
                    if (
                        meta.get("name") == name
                        and meta.get("run_id") != self.run_id
                        and meta.get("builder", builder()) == builder()
                    ):
                        remove_tree(path)

    def layers(self) -> list[LayerInfo]:
        """Every cached layer, for ``pytest-overlay layers``."""
        return list_layers(self.root)


def list_layers(root: Path) -> list[LayerInfo]:
    """The cached layers under *root*, oldest first."""
    found: list[LayerInfo] = []
    if not root.is_dir():
        return found
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):  # builds in progress, failure markers
            continue
        try:
            meta = json.loads((path / META_FILE).read_text())
            info = LayerInfo(
                name=str(meta.get("name", path.name)),
                key=str(meta.get("key", "")),
                path=path / LAYER_DIR,
                size=int(meta.get("size", 0)),
                created=str(meta.get("created", "")),
                below=[str(k) for k in meta.get("below", [])],
                inputs=[str(i) for i in meta.get("inputs", [])],
            )
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # not a layer of ours, or a damaged one: never crash a listing
        found.append(info)
    found.sort(key=lambda info: info.created)
    return found


def clean_layers(root: Path) -> int:
    """Remove every cached layer; returns how many were removed."""
    layers = list_layers(root)
    for info in layers:
        remove_tree(info.path.parent)
    for leftover in [*root.glob(".failed-*"), *root.glob("*.lock")] if root.is_dir() else ():
        leftover.unlink()
    return len(layers)
