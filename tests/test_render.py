"""Unit tests of the safe, plain-text rendering of a diff."""

from __future__ import annotations

import os

import pytest

from pytest_overlay._diff import Change, ChangeKind, TreeDiff, display_path
from pytest_overlay._render import render_changes
from pytest_overlay._safetext import safe_path


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain/path.txt", "plain/path.txt"),
        (" spaced ", " spaced "),
        ("caf\u00e9/\u65e5\u672c", "caf\u00e9/\u65e5\u672c"),
        ("new\nline", "new\\nline"),
        ("tab\tcr\r", "tab\\tcr\\r"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("back\\slash", "back\\\\slash"),
        ("c1\x85\x9b", "c1\\u0085\\u009b"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
        (os.fsdecode(b"bad\xff\x80"), "bad\\xff\\x80"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_safe_path(raw: str, shown: str) -> None:
    assert safe_path(raw) == shown
    assert shown.isprintable()


def test_raw_bytes_and_code_points_stay_distinct() -> None:
    byte_ff, letter_ff = os.fsdecode(b"\xff"), "\u00ff"
    byte_85, control_85 = os.fsdecode(b"\x85"), "\x85"
    assert len({safe_path(byte_ff), safe_path(letter_ff), safe_path("\\xff")}) == 3
    assert safe_path(byte_85) != safe_path(control_85)


def test_display_path_marks_directories() -> None:
    assert display_path(Change("d", ChangeKind.ADDED, new_type="dir")) == "d/"
    assert display_path(Change("d", ChangeKind.DELETED, old_type="dir")) == "d/"
    assert display_path(Change("d", ChangeKind.MODIFIED, "dir", "file")) == "d"
    assert display_path(Change("d", ChangeKind.MODIFIED, "file", "dir")) == "d/"


def test_render_changes_details() -> None:
    diff = TreeDiff(
        (
            Change("chmod", ChangeKind.MODE, "file", "file", 0o644, 0o755, 1, 1),
            Change("setuid", ChangeKind.MODE, "file", "file", 0o755, 0o4755),
            Change("chown", ChangeKind.MODE, "dir", "dir", 0o755, 0o755),
            Change(
                "link", ChangeKind.MODIFIED, "symlink", "symlink", old_target="a", new_target="b"
            ),
            Change(
                "evil",
                ChangeKind.MODIFIED,
                "symlink",
                "symlink",
                old_target="x\n",
                new_target="\x1b]0;pwned\x07",
            ),
            Change("f2d", ChangeKind.MODIFIED, "file", "dir"),
            Change("content", ChangeKind.MODIFIED, "file", "file", 0o644, 0o644, 1, 2),
            Change("new", ChangeKind.ADDED, new_type="dir"),
            Change("gone", ChangeKind.DELETED, old_type="symlink", old_target="t"),
            Change("touched", ChangeKind.TIMES, "file", "file"),
        )
    )
    assert render_changes(diff).splitlines() == [
        "P chmod (0644 -> 0755)",
        "P chown/ (owner changed)",
        "M content",
        "M evil (-> x\\n => \\x1b]0;pwned\\x07)",
        "M f2d/ (file -> dir)",
        "D gone",
        "M link (-> a => b)",
        "A new/",
        "P setuid (0755 -> 4755)",
        "T touched",
    ]


def test_render_matches_str_without_details() -> None:
    diff = TreeDiff(
        (
            Change("a\nb", ChangeKind.ADDED, new_type="file"),
            Change("d", ChangeKind.DELETED, old_type="dir"),
        )
    )
    assert render_changes(diff) == str(diff) == "A a\\nb\nD d/"
    assert render_changes(TreeDiff()) == ""
