"""Golden records of what a test did to the tree: the format, the normalisers, the comparison.

Pure: no mounts, no reading or writing of files.  :func:`render_record` turns a
:class:`~._diff.TreeDiff` and the new content of its files into the text of a record;
:func:`compare_records` says how two records differ ("a diff of diffs");
:func:`record_path` and :func:`unused_records` say where records live and which no test
claims.  The pytest wiring is :mod:`._goldenrun`.  Permission bits, mode changes and type
names are worded by :mod:`._render`, and a directory's trailing ``/`` by
:func:`._diff.display_path`, as in the change list and the failure report.

The layout, one file per test beside the tests::

    tests/__effects__/test_gen/test_generate.txt
    tests/__effects__/test_gen/test_generate[fast].txt

One file per test (as pytest-regressions does, and unlike syrupy's one file per module) so
that xdist workers never write the same file, a pull request touches only the records of the
tests whose effects changed, and a record is reviewed like any text file.  A record lists
one entry per changed path, in path order, each a header line (``<kind> <path>``) and
indented details; content lines are ``| text`` as it is, or ``~ text`` escaped where the
line holds anything a terminal would act on (see :func:`._safetext.safe_path`).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias, final

from ._choices import GOLDEN_MARKER_ARGUMENTS, RECORDS_DIR
from ._diff import Change, ChangeKind, TreeDiff, display_path
from ._render import mode_change, octal, shown_name
from ._safetext import safe_line, safe_path
from ._settings import check_regex, make_ignore

__all__ = [
    "RECORDS_DIR",
    "Digest",
    "Normalisers",
    "compare_records",
    "record_name",
    "record_path",
    "render_record",
    "unused_records",
]

SUFFIX = ".txt"
TEXT_LIMIT = 64 << 10
"""Text files up to this many bytes are recorded line by line; larger ones by size and hash,
so that a record stays something a reviewer reads."""
ROOT_MARK = "<root>"
TIMESTAMP_MARK = "<timestamp>"
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?\b"
)
_HEADER = "# "
_MAX_NAME = 200  # bytes: a file name may hold 255, and the suffix and a hash must fit


@final
@dataclass(frozen=True)
class Digest:
    """A regular file recorded by size and SHA-256 rather than by content."""

    size: int
    sha256: str


FileContent: TypeAlias = bytes | Digest | str
"""What a content source gives for a path: the bytes (up to :data:`TEXT_LIMIT`), a
:class:`Digest` (larger files), or why it could not be read."""
ContentSource: TypeAlias = Callable[[str], FileContent]


@final
@dataclass(frozen=True)
class Normalisers:
    """What legitimately varies between runs, made equal before a record is written or compared.

    :param ignore: globs of paths left out of the record (matched as ``overlay_ignore`` is:
        against each path component, or the whole path when the glob holds a ``/``).
    :param replace: ``(regex, replacement)`` pairs applied, in order, to text content and
        symbolic link targets.
    :param roots: absolute paths (the view, the project) replaced by ``<root>`` first.
    :param timestamps: replace ISO 8601 date-times (``2024-05-01T12:00:00Z``,
        ``2024-05-01 12:00``) by ``<timestamp>``.
    """

    ignore: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    roots: tuple[str, ...] = ()
    timestamps: bool = False
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = tuple((re.compile(pattern), repl) for pattern, repl in self.replace)
        object.__setattr__(self, "_compiled", compiled)

    def text(self, text: str) -> str:
        """Apply the roots, then the timestamps, then the replacements to *text*."""
        # Longest first: a view inside the project must not leave its own tail behind.
        for root in sorted(self.roots, key=len, reverse=True):
            if root:
                text = text.replace(root, ROOT_MARK)
        if self.timestamps:
            text = _TIMESTAMP.sub(TIMESTAMP_MARK, text)
        for pattern, repl in self._compiled:
            text = pattern.sub(repl, text)
        return text

    def keeps(self, path: str) -> bool:
        """Whether *path* belongs in the record."""
        return not (self.ignore and make_ignore(self.ignore)(path))


MARKER_SIGNATURE = (
    "overlay_golden(ignore=<a glob or a list of them>, replace=<{regex: replacement}>, "
    "timestamps=<True | False>)"
)


def parse_marker(
    args: Sequence[object], kwargs: Mapping[str, object], base: Normalisers
) -> Normalisers:
    """The normalisers of a test: the project's (*base*) with its ``overlay_golden`` marker's.

    The marker's globs and replacements come after the project's; its ``timestamps`` wins.

    :raises ValueError: saying what is wrong, if the marker is written wrong.
    """
    if args:
        raise ValueError(f"positional arguments ({args[0]!r}) are not accepted; name them")
    for name in kwargs:
        if name not in GOLDEN_MARKER_ARGUMENTS:
            raise ValueError(f"unknown argument {name}=")
    raw_ignore = kwargs.get("ignore", ())
    ignore = (raw_ignore,) if isinstance(raw_ignore, str) else raw_ignore
    if not isinstance(ignore, (list, tuple)) or not all(isinstance(g, str) for g in ignore):
        raise ValueError(f"ignore={raw_ignore!r} is not a glob or a list of globs")
    raw_replace = kwargs.get("replace", ())
    pairs = list(raw_replace.items()) if isinstance(raw_replace, Mapping) else raw_replace
    if not isinstance(pairs, (list, tuple)) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        raise ValueError(f"replace={raw_replace!r} is not a {{regex: replacement}} dict")
    for pattern, _ in pairs:
        check_regex(pattern)
    timestamps = kwargs.get("timestamps", base.timestamps)
    if not isinstance(timestamps, bool):
        raise ValueError(f"timestamps={timestamps!r} is not True or False")
    return Normalisers(
        ignore=base.ignore + tuple(ignore),
        replace=base.replace + tuple((str(p), str(r)) for p, r in pairs),
        roots=base.roots,
        timestamps=timestamps,
    )


# --- writing a record -----------------------------------------------------------------------


def _content_lines(text: str) -> list[str]:
    """A text's lines as ``| line`` (as written) or ``~ line`` (escaped, reversibly)."""
    lines: list[str] = []
    parts = text.split("\n")
    last = parts.pop()
    for part in parts:
        lines.append(_content_line(part))
    if last:
        lines.append(_content_line(last))
        lines.append("\\ no newline at end of file")
    return lines


def _content_line(line: str) -> str:
    # A line shown as it is must be exactly the line: nothing safe_line would escape, and no
    # backslash escape it could be confused with (those lines take the reversible form).
    if safe_line(line) == line and "\t" not in line and "\\" not in line:
        return f"| {line}" if line else "|"
    return f"~ {safe_path(line)}"


def _file_details(content: FileContent, normalisers: Normalisers) -> list[str]:
    if isinstance(content, str):
        return [f"unreadable ({content})"]
    if isinstance(content, Digest):
        return [f"large, {content.size} bytes, sha256 {content.sha256}"]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        digest = hashlib.sha256(content).hexdigest()
        return [f"binary, {len(content)} bytes, sha256 {digest}"]
    if not text:
        return ["empty"]
    return _content_lines(normalisers.text(text))


def _new_side(change: Change, content: ContentSource, normalisers: Normalisers) -> list[str]:
    """What is at the path now."""
    kind = shown_name(change.new_type)
    if kind == "symlink":
        return [f"symlink -> {safe_path(normalisers.text(change.new_target or '?'))}"]
    lines = [f"{kind} {octal(change.new_mode)}"]
    if kind == "file":
        lines.extend(_file_details(content(change.path), normalisers))
    return lines


def _entry(change: Change, content: ContentSource, normalisers: Normalisers) -> list[str]:
    head = f"{change.kind.value} {display_path(change)}"
    if change.kind is ChangeKind.DELETED:
        return [head, f"was {shown_name(change.old_type)}"]
    if change.kind is ChangeKind.MODE:
        return [head, mode_change(change)]
    if change.kind is ChangeKind.TIMES:
        return [head, "modification time only"]
    details = _new_side(change, content, normalisers)
    if change.kind is ChangeKind.MODIFIED and change.old_type != change.new_type:
        details.insert(0, f"was {shown_name(change.old_type)}")
    return [head, *details]


def render_record(
    diff: TreeDiff,
    content: ContentSource,
    normalisers: Normalisers,
    *,
    title: str,
    update_command: str,
) -> str:
    """The text of the record of *diff*.

    :param content: gives the new content of a regular file, by relative path.
    :param title: what the record is of (the test's node id), for its first line.
    :param update_command: the command that rewrites it, for its second line.
    """
    head = [
        f"{_HEADER}pytest-overlay: what {safe_path(title)} did to the tree.",
        f"{_HEADER}Review changes to this file like code; rewrite it with: "
        f"{safe_line(update_command)}",
    ]
    entries = [
        "\n".join(
            f"  {line}" if i else line for i, line in enumerate(_entry(c, content, normalisers))
        )
        for c in diff
        if normalisers.keeps(c.path)
    ]
    if not entries:
        entries = ["(no changes)"]
    return "\n".join(head) + "\n\n" + "\n\n".join(entries) + "\n"


# --- comparing two records ------------------------------------------------------------------


def _entries(text: str) -> dict[str, list[str]]:
    """A record's entries by path (the header line without its kind word), in order."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_HEADER) or line == _HEADER.strip():
            continue
        if not line:
            current = None
        elif line.startswith("  ") and current is not None:
            current.append(line)
        else:
            _, _, path = line.partition(" ")
            current = entries.setdefault(path or line, [])
            current.append(line)
    return entries


def compare_records(expected: str, actual: str, *, context: int = 3) -> list[str] | None:
    """How *actual* differs from *expected*: None if in nothing but the header comments.

    The lines are a summary (``- <entry>`` only in the record, ``+ <entry>`` only in this run,
    ``~ <entry>`` in both but different) and then a unified diff of each entry that differs.
    """
    old, new = _entries(expected), _entries(actual)
    if old == new:
        return None
    summary: list[str] = []
    details: list[str] = []
    for path in _ordered(old, new):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if after is None:
            assert before is not None
            summary.append(f"- {before[0]}   (only in the record)")
        elif before is None:
            summary.append(f"+ {after[0]}   (only in this run)")
        else:
            summary.append(f"~ {after[0]}   (differs)")
            details.append("")
            details.extend(
                difflib.unified_diff(
                    before, after, f"record: {path}", f"this run: {path}", n=context, lineterm=""
                )
            )
    return summary + details


def _ordered(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    return sorted(old.keys() | new.keys(), key=lambda p: tuple(p.rstrip("/").split("/")))


# --- where records live ---------------------------------------------------------------------


def record_name(name: str) -> str:
    """A file name for the record of the test called *name* (``test_x[param]``, or
    ``TestClass::test_x``), readable where it can be and always a valid, short name."""
    safe = "".join(_name_char(char) for char in name.replace("::", "."))
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe.encode()) > _MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        safe = safe.encode()[: _MAX_NAME - 13].decode(errors="ignore") + "-" + digest
    return safe + SUFFIX


def _name_char(char: str) -> str:
    if char.isalnum() or char in "-_.[]=,+@":
        return char
    return f"%{ord(char):02x}" if ord(char) < 0x100 else f"%u{ord(char):04x}"


def record_dir(module: Path) -> Path:
    """The directory of the records of the tests in *module*."""
    return module.parent / RECORDS_DIR / module.stem


def record_path(module: Path, name: str) -> Path:
    """Where the record of the test *name* of *module* lives."""
    return record_dir(module) / record_name(name)


def unused_records(
    listings: Mapping[Path, Iterable[str]], claimed: Mapping[Path, Collection[str]]
) -> list[Path]:
    """Records no test claims.

    :param listings: for each fully collected module, the file names in its record directory.
    :param claimed: for each module, the record file names of its collected golden tests.
    """
    unused: list[Path] = []
    for module, names in listings.items():
        wanted = claimed.get(module, ())
        unused.extend(
            record_dir(module) / name
            for name in sorted(names)
            if name.endswith(SUFFIX) and name not in wanted
        )
    return unused


def format_lines(lines: Sequence[str], limit: int | None) -> list[str]:
    """*lines* cut after *limit* lines, with a note of how many were left out."""
    if limit is None or len(lines) <= limit:
        return list(lines)
    hidden = len(lines) - limit
    return [
        *lines[:limit],
        f"... {hidden} more lines not shown (-v shows more, overlay_diff_lines = 0 shows all)",
    ]
