"""Render a :class:`~pytest_overlay.TreeDiff` for people: safe, plain text, one line a change.

Names are printed through :mod:`._safetext`, so a hostile file name stays one inert line.
"""

from __future__ import annotations

from ._diff import Change, ChangeKind, TreeDiff, display_path
from ._safetext import safe_path

__all__ = ["change_line", "count_changes", "render_changes"]


def _octal(mode: int | None) -> str:
    return "?" if mode is None else f"{mode:04o}"


def _detail(change: Change) -> str:
    if change.kind is ChangeKind.MODE:
        if change.old_mode == change.new_mode:
            return " (owner changed)"
        return f" ({_octal(change.old_mode)} -> {_octal(change.new_mode)})"
    if change.kind is ChangeKind.MODIFIED:
        if change.old_type != change.new_type:
            return f" ({change.old_type} -> {change.new_type})"
        if change.new_type == "symlink":
            old = safe_path(change.old_target or "")
            new = safe_path(change.new_target or "")
            return f" (-> {old} => {new})"
    return ""


def render_changes(diff: TreeDiff) -> str:
    """Render *diff* as ``"<letter> <path>"`` lines, in path order, with short details.

    Mode changes show ``(0644 -> 0755)`` (or ``(owner changed)``), type changes
    ``(file -> dir)``, and symbolic link retargets ``(-> old => new)``.  An empty diff renders
    as the empty string; there is no trailing newline.
    """
    return "\n".join(change_line(c) for c in diff)


def change_line(change: Change) -> str:
    """The line :func:`render_changes` shows for *change*, without a line terminator."""
    return f"{change.kind.letter} {display_path(change)}{_detail(change)}"


_COUNTED = {
    ChangeKind.ADDED: "added",
    ChangeKind.MODIFIED: "modified",
    ChangeKind.DELETED: "deleted",
    ChangeKind.MODE: "with new permissions",
    ChangeKind.TIMES: "with new times",
}


def count_changes(diffs: TreeDiff | list[TreeDiff]) -> str:
    """``"500 changes: 480 added, 20 modified"``: a diff (or several) in one line."""
    changes = [c for diff in ([diffs] if isinstance(diffs, TreeDiff) else diffs) for c in diff]
    counts = [
        f"{n} {word}"
        for kind, word in _COUNTED.items()
        if (n := sum(1 for c in changes if c.kind is kind))
    ]
    total = f"{len(changes)} change" + ("" if len(changes) == 1 else "s")
    return f"{total}: {', '.join(counts)}" if counts else "no changes"
