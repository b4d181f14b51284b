"""Checkpoints: what a test changed between two snapshots of its upper layer.

A snapshot is a copy of the upper layer (overlayfs format) taken at a checkpoint.  The state of
the tree at a snapshot is the snapshot stacked on the lowers.  This module holds what is
particular to snapshots: which paths two states can differ at (those either snapshot mentions
and, below directories a snapshot made opaque, the lowers' paths that the opaque directory
hides).  Comparing the two states at those paths is :func:`._diff.diff_stacks`, with the rules
every other diff uses.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from ._diff import TreeDiff, diff_stacks
from ._layers import LayerStack, is_opaque, read_layer_dir, uses_whiteout_files


def diff_states(
    before: Path | None,
    after: Path,
    lowers: Sequence[Path],
    ignore: Callable[[str], bool] | None = None,
) -> TreeDiff:
    """The changes from the state *before* (None: the lowers alone) to the state *after*."""
    old_stack = LayerStack([before, *lowers] if before is not None else lowers)
    new_stack = LayerStack([after, *lowers])
    base = LayerStack(lowers)
    paths: set[str] = set()
    for snapshot in (before, after):
        if snapshot is not None:
            _mentioned(snapshot, "", base, paths, uses_whiteout_files(snapshot))
    return diff_stacks(old_stack, new_stack, paths, ignore=ignore)


def _mentioned(
    layer_dir: Path, rel: str, base: LayerStack, paths: set[str], whiteout_files: bool
) -> None:
    directory = layer_dir / rel if rel else layer_dir
    try:
        entries, whiteouts = read_layer_dir(directory, whiteout_files=whiteout_files)
    except OSError:
        return
    for name in (*entries, *whiteouts):
        paths.add(f"{rel}/{name}" if rel else name)
    if rel and is_opaque(directory, whiteout_files=whiteout_files):
        _lower_subtree(base, rel, paths)
    for name, st in entries.items():
        if stat.S_ISDIR(st.st_mode):
            child = f"{rel}/{name}" if rel else name
            _mentioned(layer_dir, child, base, paths, whiteout_files)


def _lower_subtree(base: LayerStack, rel: str, paths: set[str]) -> None:
    for name, entry in base.listdir(rel).items():
        child = f"{rel}/{name}"
        paths.add(child)
        if stat.S_ISDIR(entry.stat.st_mode):
            _lower_subtree(base, child, paths)
