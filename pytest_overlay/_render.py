"""The words for a :class:`~pytest_overlay.TreeDiff`: one line a change, and each detail's wording.

Every place that shows a change to people takes its words from here: the change list
(:func:`render_changes`, :func:`change_line`), the one-line count (:func:`count_changes`), and
the phrases for a detail, which the failure report (:mod:`._report`) and golden records
(:mod:`._golden`) put in their own frames: :func:`octal` for permission bits,
:func:`mode_change` (``0644 -> 0755`` or ``owner changed``), :func:`type_change`
(``file -> dir``) and :func:`target_change` (``old => new`` for a symbolic link).

Names, types and link targets are printed through :mod:`._safetext`, so a hostile file name
stays one inert line; what is not known shows as ``?``.

:class:`ReportOptions`, how much of a failure report to show, lives here rather than in
:mod:`._report`, so that a run whose tests all pass never imports the report's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._diff import Change, ChangeKind, TreeDiff, display_path
from ._safetext import safe_path

__all__ = [
    "ReportOptions",
    "change_line",
    "count_changes",
    "mode_change",
    "octal",
    "render_changes",
    "shown_name",
    "target_change",
    "type_change",
]


@final
@dataclass(frozen=True)
class ReportOptions:
    """How much of a report to show, and how."""

    max_lines: int | None = 200
    """Most lines shown, the change list and the details together; None or 0 shows everything.
    A report cut short ends with a line counting what was left out and every change by kind."""
    details: bool = True
    """Show the details after the change list (``--tb=short`` shows the list alone)."""
    color: bool = False
    """Colour the change list and the diffs with ANSI escape sequences."""
    more_hint: str = ""
    """Another way to see everything, added to the truncation note (for instance
    ``"`pytest-overlay show 'tests/test_x.py::test_y'`"``)."""

    def __post_init__(self) -> None:
        if self.max_lines is not None and self.max_lines < 0:
            raise ValueError(f"max_lines must be None or at least 0, not {self.max_lines}")


def octal(mode: int | None) -> str:
    """Permission bits as four octal digits (``0644``, ``4755``), or ``?`` if not known."""
    return "?" if mode is None else f"{mode:04o}"


def shown_name(name: str | None) -> str:
    """A file type or link target made safe to print, or ``?`` if not known."""
    return "?" if name is None else safe_path(name)


def mode_change(change: Change) -> str:
    """``0644 -> 0755``, or ``owner changed`` when the permission bits are the same."""
    if change.old_mode == change.new_mode:
        return "owner changed"
    return f"{octal(change.old_mode)} -> {octal(change.new_mode)}"


def type_change(change: Change) -> str:
    """``file -> dir``: the entry's type before and after."""
    return f"{shown_name(change.old_type)} -> {shown_name(change.new_type)}"


def target_change(change: Change) -> str:
    """``old => new``: a symbolic link's target before and after."""
    return f"{shown_name(change.old_target)} => {shown_name(change.new_target)}"


def _detail(change: Change) -> str:
    if change.kind is ChangeKind.MODE:
        return f" ({mode_change(change)})"
    if change.kind is ChangeKind.MODIFIED:
        if change.old_type != change.new_type:
            return f" ({type_change(change)})"
        if change.new_type == "symlink":
            return f" (-> {target_change(change)})"
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
