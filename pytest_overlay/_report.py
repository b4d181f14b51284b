"""The failure report: what a test changed, file by file, with the content that changed.

:func:`render_report` shows the change list of :func:`~pytest_overlay._render.render_changes`
followed by details: unified diffs of text files, sizes and hashes of binary and large ones,
symbolic link targets and permission changes.  :func:`render_stat` and :func:`render_name_only`
are the short forms (``git diff --stat`` and ``--name-only``).  This module holds the reading
of file content and the line diff; the words for a mode, type or target change are
:mod:`._render`'s, so the list and the details say them alike.

Everything shown comes from the tests under scrutiny, so every name, link target and line of
content goes through :func:`~pytest_overlay._safetext.safe_path` or
:func:`~pytest_overlay._safetext.safe_line`.  Files are read only when ``lstat`` says they are
regular, and opened with ``O_NOFOLLOW | O_NONBLOCK``: a symbolic link is never followed and a
FIFO or device is never opened.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import TypeAlias

from ._diff import Change, ChangeKind, TreeDiff, display_path
from ._oscompat import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK
from ._render import (
    ReportOptions,
    change_line,
    count_changes,
    mode_change,
    shown_name,
    target_change,
    type_change,
)
from ._safetext import safe_line, safe_path

__all__ = [
    "ContentSource",
    "ReportOptions",
    "render_name_only",
    "render_report",
    "render_stat",
]

ContentSource: TypeAlias = Callable[[str], Path | None]
"""Given a change's relative POSIX path, the real filesystem path holding that version, or None."""

_OPEN_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC
_CHUNK = 1 << 20
_TEXT_LIMIT = 1 << 20
"""Files up to this many bytes are read whole and may be shown as text; larger ones are hashed."""
_HASH_LIMIT = 64 << 20
"""Files larger than this are not hashed: the report must not read gigabytes (twice, once for
the kept layer and once for the terminal) to say that a large file changed."""
_NOT_HASHED = f"not hashed, over {_HASH_LIMIT >> 20} MiB"
_SNIFF = 8 << 10
"""Like git, only the start of a file decides whether it is text."""
_CONTEXT = 3
_DIFF_BUDGET = 4000 * 4000
"""Most old lines times new lines left to match once the common head and tail are set aside.
:class:`difflib.SequenceMatcher` is far worse than quadratic on many repeated lines (8000 by
8000 lines of 150 distinct values take seconds); beyond this a file is summarised instead."""
_HASH_SHOWN = 12

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_YELLOW = "\x1b[33m"
_CYAN = "\x1b[36m"
_KIND_COLORS = {
    ChangeKind.ADDED: _GREEN,
    ChangeKind.DELETED: _RED,
    ChangeKind.MODIFIED: _YELLOW,
    ChangeKind.MODE: _CYAN,
    ChangeKind.TIMES: _CYAN,
}
_LINE_COLORS = {"-": _RED, "+": _GREEN, "@": _CYAN, "h": _BOLD}


_DEFAULT_OPTIONS = ReportOptions()


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """One version of a regular file."""

    size: int
    digest: str | None
    """SHA-256 of the whole content, in hex; None above :data:`_HASH_LIMIT`."""
    data: bytes | None
    """The content, or None when it is larger than :data:`_TEXT_LIMIT`."""

    @property
    def short_hash(self) -> str:
        return "?" if self.digest is None else self.digest[:_HASH_SHOWN] + "\u2026"

    @property
    def text(self) -> str | None:
        """The content decoded (undecodable bytes as lone surrogates), or None if binary."""
        if self.data is None or not _looks_like_text(self.data):
            return None
        return self.data.decode("utf-8", "surrogateescape")


def _looks_like_text(data: bytes) -> bool:
    """True unless the start of *data* holds a NUL byte or is a quarter or more not UTF-8.

    A few undecodable bytes (a Latin-1 name in a comment) are shown escaped; a quarter or more
    (compressed or random data, which need not hold a NUL) makes the file binary.
    """
    sample = data[:_SNIFF]
    if b"\0" in sample:
        return False
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    # Not final unless the sample is everything: a character cut at the sample's end is fine.
    decoded = decoder.decode(sample, final=len(sample) == len(data))
    undecodable = sum(1 for char in decoded if "\udc80" <= char <= "\udcff")
    return not sample or undecodable * 4 < len(sample)


def _reason(exc: OSError) -> str:
    # strerror alone: the message must not repeat the (hostile) file name.
    return exc.strerror or type(exc).__name__


def _read(source: ContentSource, rel: str) -> _Content | str:
    """Read the version of *rel* that *source* gives, or say why it cannot be read."""
    try:
        path = source(rel)
        if path is None:
            return "not available"
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return "not a regular file"
        fd = os.open(path, _OPEN_FLAGS)
        with open(fd, "rb") as file:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
                return "not a regular file"
            if st.st_size > _HASH_LIMIT:
                return _Content(st.st_size, None, None)
            data = file.read(_TEXT_LIMIT + 1)
            digest = hashlib.sha256(data)
            size = len(data)
            if size <= _TEXT_LIMIT:
                return _Content(size, digest.hexdigest(), data)
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            return _Content(size, digest.hexdigest(), None)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link swapped in
            return "not a regular file"
        return _reason(exc)


# --- comparing lines --------------------------------------------------------------------------

_Opcode: TypeAlias = tuple[str, int, int, int, int]


def _split_lines(text: str) -> list[str]:
    """Lines ending in ``\\n`` (kept), and a last one without it; only ``\\n`` ends a line."""
    parts = text.split("\n")
    last = parts.pop()
    lines = [part + "\n" for part in parts]
    if last:
        lines.append(last)
    return lines


def _hunks(old: Sequence[str], new: Sequence[str]) -> list[list[_Opcode]] | None:
    """The grouped opcodes of a unified diff of *old* and *new* with 3 lines of context.

    Indices are into the full sequences.  None when the lines that differ are too many to
    match in reasonable time (see :data:`_DIFF_BUDGET`).
    """
    shortest = min(len(old), len(new))
    head = 0
    while head < shortest and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < shortest - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    if (len(old) - head - tail) * (len(new) - head - tail) > _DIFF_BUDGET:
        return None
    # Keep the context lines on both sides of the middle, and match only that.
    start = max(0, head - _CONTEXT)
    cut = max(0, tail - _CONTEXT)
    matcher = SequenceMatcher(None, old[start : len(old) - cut], new[start : len(new) - cut])
    return [
        [(tag, i1 + start, i2 + start, j1 + start, j2 + start) for tag, i1, i2, j1, j2 in group]
        for group in matcher.get_grouped_opcodes(_CONTEXT)
    ]


def _counts(groups: list[list[_Opcode]]) -> tuple[int, int]:
    """Lines added and removed by *groups*."""
    added = removed = 0
    for group in groups:
        for tag, i1, i2, j1, j2 in group:
            if tag != "equal":
                removed += i2 - i1
                added += j2 - j1
    return added, removed


def _range(start: int, stop: int) -> str:
    """A hunk header range, as ``diff -u`` writes it (1-based; an empty range names the line
    before it)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _uses_crlf(*texts: str) -> bool:
    """Whether every line ends in ``\\r\\n`` in each of *texts* that has line ends at all."""
    ended = [text for text in texts if "\n" in text]
    return bool(ended) and all(text.count("\n") == text.count("\r\n") for text in ended)


def _content_lines(mark: str, lines: Sequence[str], crlf: bool) -> Iterator[tuple[str, str]]:
    for line in lines:
        if line.endswith("\n"):
            body = line[:-2] if crlf and line.endswith("\r\n") else line[:-1]
            yield mark, mark + safe_line(body)
        else:
            yield mark, mark + safe_line(line)
            yield "", "\\ No newline at end of file"


def _unified(
    old_name: str, new_name: str, old: str, new: str, groups: list[list[_Opcode]]
) -> Iterator[tuple[str, str]]:
    """The (colour key, line) pairs of a unified diff of *old* and *new*; names already safe."""
    if not groups:
        return
    crlf = _uses_crlf(old, new)
    a, b = _split_lines(old), _split_lines(new)
    yield "h", f"--- {old_name}"
    yield "h", f"+++ {new_name}"
    for group in groups:
        first, last = group[0], group[-1]
        yield "@", f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@"
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                yield from _content_lines(" ", a[i1:i2], crlf)
                continue
            yield from _content_lines("-", a[i1:i2], crlf)
            yield from _content_lines("+", b[j1:j2], crlf)


# --- the report -------------------------------------------------------------------------------


def _new_file(change: Change, new: ContentSource) -> Iterator[tuple[str, str]]:
    """Details of a regular file that did not exist before."""
    path = safe_path(change.path)
    content = _read(new, change.path)
    if isinstance(content, str):
        yield "", f"{path}: cannot read ({content})"
        return
    text = content.text
    if text is None:
        label = "Binary" if content.data is not None else "Large"
        hashed = _NOT_HASHED if content.digest is None else f"sha256 {content.short_hash}"
        yield "", f"{label} file {path}: new, {content.size} bytes, {hashed}"
        return
    groups = _hunks([], _split_lines(text))
    assert groups is not None  # nothing to match against: always within budget
    yield from _unified("/dev/null", f"b/{path}", "", text, groups)


def _changed_file(
    change: Change, old: ContentSource, new: ContentSource
) -> Iterator[tuple[str, str]]:
    """Details of a regular file that is one still, with other content."""
    path = safe_path(change.path)
    before, after = _read(old, change.path), _read(new, change.path)
    for side, content in (("old", before), ("new", after)):
        if isinstance(content, str):
            yield "", f"{path}: cannot read {side} version ({content})"
            return
    assert isinstance(before, _Content)
    assert isinstance(after, _Content)
    sizes = f"{before.size} -> {after.size} bytes"
    if before.digest is None or after.digest is None:
        summary = f"{path}: {sizes} ({_NOT_HASHED})"
    else:
        summary = f"{path}: {sizes}, sha256 {before.short_hash} -> {after.short_hash}"
    if before.data is None or after.data is None:
        yield "", f"Large file {summary}"
        return
    old_text, new_text = before.text, after.text
    if old_text is None or new_text is None:
        yield "", f"Binary file {summary}"
        return
    groups = _hunks(_split_lines(old_text), _split_lines(new_text))
    if groups is None:
        yield "", f"Large diff {summary}"
        return
    yield from _unified(f"a/{path}", f"b/{path}", old_text, new_text, groups)


def _new_entry(change: Change, new: ContentSource) -> Iterator[tuple[str, str]]:
    """Details of what now is at a path that held nothing, or something of another type."""
    if change.new_type == "file":
        yield from _new_file(change, new)
    elif change.new_type == "symlink":
        yield "", f"Symlink {safe_path(change.path)} -> {shown_name(change.new_target)}"


def _details(change: Change, old: ContentSource, new: ContentSource) -> Iterator[tuple[str, str]]:
    path = safe_path(change.path)
    if change.kind is ChangeKind.ADDED:
        if change.new_type not in ("file", "symlink", "dir"):  # a FIFO, socket or device
            yield "", f"{shown_name(change.new_type)} {path}"  # ... which is never opened
        yield from _new_entry(change, new)
    elif change.kind is ChangeKind.MODIFIED:
        if change.old_type != change.new_type:
            yield "", f"{path}: {type_change(change)}"
            yield from _new_entry(change, new)
        elif change.new_type == "file":
            yield from _changed_file(change, old, new)
        elif change.new_type == "symlink":
            yield "", f"Symlink {path}: {target_change(change)}"
    elif change.kind is ChangeKind.MODE:
        yield "", f"Mode {path}: {mode_change(change)}"


def _paint(line: str, color: str | None, enabled: bool) -> str:
    return f"{color}{line}{_RESET}" if enabled and color else line


def _more_note(hidden: int, diff: TreeDiff, hint: str) -> str:
    lines = "line" if hidden == 1 else "lines"
    also = f"; or {safe_line(hint)}" if hint else ""
    return (
        f"... {hidden} more {lines} not shown, of {count_changes(diff)}"
        f" (-v shows more, overlay_diff_lines = 0 shows all{also})"
    )


def render_report(
    diff: TreeDiff,
    old: ContentSource,
    new: ContentSource,
    options: ReportOptions = _DEFAULT_OPTIONS,
) -> str:
    """Render *diff* for a failure report: the change list, a blank line, then the details.

    Details, in the order of the list: unified diffs (3 lines of context) of changed and added
    text files; ``Binary file``, ``Large file`` (over 1 MiB) or ``Large diff`` (too many
    differing lines to match) summaries with sizes and SHA-256 prefixes; symbolic link
    targets; type changes; permission changes.  Deletions, time-only changes and new
    directories have no details beyond their list line.  A file is text when its first 8 KiB
    hold no NUL byte and are at least three quarters UTF-8; undecodable bytes show as
    ``\\xNN``, and a ``\\r`` ending every line is not shown.

    The report stops after ``options.max_lines`` lines (the change list counts too) with a
    note of how many were left out and how many changes of each kind there are in all.
    Only regular files are read, without following symbolic links; the result depends on
    nothing else.  There is no trailing newline; an empty diff renders as ``""``.

    :param old: where each path's version before the test is (for modified files).
    :param new: where each path's version after the test is.
    """
    head = [_paint(change_line(c), _KIND_COLORS[c.kind], options.color) for c in diff]
    body = [
        _paint(line, _LINE_COLORS.get(key), options.color)
        for change in diff
        if options.details
        for key, line in _details(change, old, new)
    ]
    lines = [*head, "", *body] if body else head
    limit = options.max_lines or None
    if limit is not None and len(lines) > limit:
        shown = lines[:limit]
        if shown and not shown[-1]:
            shown.pop()  # not the blank line between the list and the details
        hidden = sum(1 for line in lines[len(shown) :] if line)
        lines = [*shown, _more_note(hidden, diff, options.more_hint)]
    return "\n".join(lines)


# --- short forms ------------------------------------------------------------------------------


def _file_lines(content: _Content | str) -> list[str] | str:
    """The lines of a file's content, or what to show instead of line counts."""
    if isinstance(content, str):
        return "?"
    text = content.text
    if text is None:
        return "bin" if content.data is not None else "large"
    return _split_lines(text)


def _stat_counts(change: Change, old: ContentSource, new: ContentSource) -> tuple[int, int] | str:
    """Lines added and removed by *change*, or ``bin``, ``large``, ``?`` (unreadable) or ``-``."""
    before: list[str] | str = []
    after: list[str] | str = []
    old_file, new_file = change.old_type == "file", change.new_type == "file"
    if change.kind in (ChangeKind.MODE, ChangeKind.TIMES):
        return (0, 0) if new_file else "-"
    if change.kind is ChangeKind.ADDED:
        old_file = False
    elif change.kind is ChangeKind.DELETED:
        new_file = False
    if not old_file and not new_file:
        return "-"
    if old_file:
        before = _file_lines(_read(old, change.path))
    if new_file:
        after = _file_lines(_read(new, change.path))
    for shown in (before, after):
        if isinstance(shown, str):
            return shown
    assert isinstance(before, list)
    assert isinstance(after, list)
    groups = _hunks(before, after)
    return "large" if groups is None else _counts(groups)


def render_stat(diff: TreeDiff, old: ContentSource, new: ContentSource) -> str:
    """Summarise *diff* like ``git diff --stat``: one ``<letter> <path> | +added -removed``
    line per change, then a total.

    Text files count lines; binary files show ``bin``, files over 1 MiB (or with too many
    differing lines) ``large``, unreadable ones ``?``, and anything but a regular file ``-``.
    An empty diff renders as ``""``.
    """
    if not diff:
        return ""
    rows: list[tuple[str, str]] = []
    insertions = deletions = 0
    for change in diff:
        counts = _stat_counts(change, old, new)
        if isinstance(counts, tuple):
            insertions += counts[0]
            deletions += counts[1]
            counts = f"+{counts[0]} -{counts[1]}"
        rows.append((f"{change.kind.letter} {display_path(change)}", counts))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)} | {counts}" for name, counts in rows]
    lines.append(
        f"{_plural(len(diff), 'file')} changed, {_plural(insertions, 'insertion')}(+), "
        f"{_plural(deletions, 'deletion')}(-)"
    )
    return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def render_name_only(diff: TreeDiff) -> str:
    """The changed paths, one a line, made safe by :func:`~pytest_overlay._safetext.safe_path`."""
    return "\n".join(safe_path(change.path) for change in diff)
