"""``pytest-overlay layers``: the cached snapshot layers of a project, and where they live.

The project is pytest's rootdir as :func:`pytest_overlay._storepath.find_project` finds it;
the plugin caches its layers in ``default_layer_root(rootdir)`` unless ``overlay_layer_dir``
says otherwise.  ``clean --layers`` (:mod:`.clean`) removes them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from pathlib import Path
from typing import Any

from pytest_overlay._safetext import safe_path
from pytest_overlay._snapshot.cache import LayerInfo, default_layer_root, list_layers
from pytest_overlay._storepath import find_project

from .common import EXIT_OK, CliError, Context, human_size, plural, shown_path, subparser

LAYERS_HINT = (
    "the overlay_layer fixture builds snapshot layers when a test marked "
    "@pytest.mark.overlay(layers=[...]) needs one; a project that sets overlay_layer_dir "
    "needs --layer-dir"
)

# --- finding the snapshot layers ---------------------------------------------------------------


def locate_layers(layer_dir: str | None, cwd: Path) -> tuple[Path, str]:
    """The snapshot-layer cache, ``--layer-dir`` or the project's, and how it was found."""
    if layer_dir is not None:
        return Path(os.path.abspath(cwd / os.path.expanduser(layer_dir))), "--layer-dir"
    project = find_project(cwd)
    if project is None:
        # pytest's rootdir, with no config file anywhere, is the directory it runs in.
        return default_layer_root(cwd), f"of {shown_path(cwd)}: no project found upward"
    return default_layer_root(project.rootdir), f"of the project {shown_path(project.rootdir)}"


def read_layers(root: Path) -> list[LayerInfo]:
    """The cached layers under *root*, or an error naming the cache when one cannot be read."""
    try:
        return list_layers(root)
    except (ValueError, TypeError, AttributeError) as exc:
        # A meta.json that is JSON but not a layer's (a list, or a size that is no number).
        raise CliError(
            f"the snapshot-layer cache {shown_path(root)} holds a meta.json that is not a "
            f"layer's ({safe_path(str(exc))})",
            hint=f"remove the cache (rm -r {shown_path(root)}); layers are rebuilt when needed",
        ) from exc


def age(created: str, now: _dt.datetime) -> str:
    """How long before *now* the ISO time *created* was: ``42 s``, ``3 min``, ``2 h``, ``5 d``.

    ``?`` when *created* cannot be read; a time in the future (a clock that moved) is ``0 s``.
    """
    try:
        when = _dt.datetime.fromisoformat(created)
    except ValueError:
        return "?"
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)  # we write UTC; an edited file may not say
    seconds = max(0, int((now - when).total_seconds()))
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"


def add_layer_dir_option(parser: argparse.ArgumentParser) -> None:
    """The ``--layer-dir`` option of the commands that work on snapshot layers."""
    parser.add_argument(
        "--layer-dir",
        metavar="DIR",
        help="The snapshot-layer cache, relative to the current directory: what pytest's "
        "--overlay-layer-dir named (default: the project's, under ~/.cache/pytest-overlay/layers)",
    )


# --- layers ---------------------------------------------------------------------------------


def cmd_layers(ctx: Context) -> int:
    """``pytest-overlay layers``."""
    root, how = locate_layers(ctx.args.layer_dir, Path.cwd())
    layers = read_layers(root)
    if not layers:
        ctx.print(f"no snapshot layers cached in {shown_path(root)} ({how})")
        ctx.print(LAYERS_HINT)
        return EXIT_OK
    ctx.print(f"snapshot layers in {shown_path(root)} ({how})")
    names = {info.key: info.name for info in layers}
    now = _dt.datetime.now(_dt.timezone.utc)
    rows = [
        (
            safe_path(info.name),
            safe_path(info.key[:12]),
            human_size(info.size),
            age(info.created, now),
            # A key no listed layer has: a layer below that was removed or rebuilt since.
            ",".join(safe_path(names.get(key, key[:12])) for key in info.below) or "-",
        )
        for info in layers
    ]
    header = ("NAME", "KEY", "SIZE", "AGE", "ON")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        ctx.print("  ".join([*cells, row[4]]))
    total = human_size(sum(info.size for info in layers))
    ctx.print(f"{plural(len(layers), 'layer')}, {total}")
    return EXIT_OK


# --- the parser -----------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add ``layers`` to the parser of ``pytest-overlay``."""
    sub = subparser(
        subparsers,
        "layers",
        "List the cached snapshot layers",
        "List the snapshot layers the overlay_layer fixture built and cached for the project: "
        "name, the first 12 hex digits of the cache key, size, age, and the layers each one "
        "stacks on.  The project is the nearest directory upward holding .pytest_cache or a "
        "pytest config file; its layers are cached under ~/.cache/pytest-overlay/layers "
        "($XDG_CACHE_HOME when set).  A project that sets overlay_layer_dir needs --layer-dir.  "
        "`pytest-overlay clean --layers` removes them.",
    )
    add_layer_dir_option(sub)
    sub.set_defaults(handler=cmd_layers)
