"""Unit tests of the failure report, built from real trees with ``diff_trees`` (no mounts)."""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_overlay import _report
from pytest_overlay._diff import Change, ChangeKind, TreeDiff, diff_trees
from pytest_overlay._report import (
    ContentSource,
    ReportOptions,
    render_name_only,
    render_report,
    render_stat,
)
from pytest_overlay._safetext import safe_line

OLD_TIME = 1_600_000_000 * 10**9
NEW_TIME = 1_700_000_000 * 10**9
NOTE = "(-v shows more, overlay_diff_lines = 0 shows all)"


def short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12] + "\u2026"


def inert(text: str) -> bool:
    """Whether *text* holds nothing a terminal acts on: no control, format or separator
    character but newlines and tabs."""
    return not any(
        unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
        for char in text.replace("\n", "").replace("\t", "")
    )


def _put(path: Path, data: bytes | str, mode: int, time_ns: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    os.utime(path, ns=(time_ns, time_ns))
    return path


class Trees:
    """A lower tree (before) and a full new tree (after), compared with ``diff_trees``."""

    def __init__(self, tmp_path: Path) -> None:
        self.lower = tmp_path / "lower"
        self.new_root = tmp_path / "new"
        self.lower.mkdir()
        self.new_root.mkdir()

    def old_file(self, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
        return _put(self.lower / rel, data, mode, OLD_TIME)

    def new_file(self, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
        return _put(self.new_root / rel, data, mode, NEW_TIME)

    def old(self, rel: str) -> Path | None:
        path = self.lower / rel
        return path if os.path.lexists(path) else None

    def new(self, rel: str) -> Path | None:
        path = self.new_root / rel
        return path if os.path.lexists(path) else None

    def diff(self) -> TreeDiff:
        return diff_trees(self.new_root, [self.lower])

    def report(self, options: ReportOptions | None = None) -> str:
        if options is None:
            return render_report(self.diff(), self.old, self.new)
        return render_report(self.diff(), self.old, self.new, options)

    def stat(self) -> str:
        return render_stat(self.diff(), self.old, self.new)


@pytest.fixture
def trees(tmp_path: Path) -> Trees:
    return Trees(tmp_path)


def spy_open(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every path passed to ``os.open`` from now on."""
    opened: list[bytes] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsencode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    return opened


# --- text ---------------------------------------------------------------------------------


def test_text_modification(trees: Trees) -> None:
    trees.old_file("notes.txt", "one\ntwo\nthree\n")
    trees.new_file("notes.txt", "one\n2\nthree\nfour\n")
    assert trees.report().split("\n") == [
        "M notes.txt",
        "",
        "--- a/notes.txt",
        "+++ b/notes.txt",
        "@@ -1,3 +1,4 @@",
        " one",
        "-two",
        "+2",
        " three",
        "+four",
    ]


def _numbered(count: int) -> list[str]:
    return [f"line {i}" for i in range(1, count + 1)]


def _edit(lines: list[str], shape: str) -> list[str]:
    new = list(lines)
    if shape == "middle":
        new[49] = "changed 50"
    elif shape == "two hunks":
        new[4] = "changed 5"
        new[89:91] = ["changed 90"]
    elif shape == "insert at start":
        new[:0] = ["first", "second"]
    elif shape == "delete at end":
        del new[-4:]
    elif shape == "near both ends":
        new[1] = "changed 2"
        new[-2] = "changed 99"
    elif shape == "everything":
        new = [f"other {i}" for i in range(40)]
    return new


@pytest.mark.parametrize(
    "shape",
    ["middle", "two hunks", "insert at start", "delete at end", "near both ends", "everything"],
)
def test_hunks_match_difflib(trees: Trees, shape: str) -> None:
    old = _numbered(100)
    new = _edit(old, shape)
    trees.old_file("f.txt", "\n".join(old) + "\n")
    trees.new_file("f.txt", "\n".join(new) + "\n")
    expected = difflib.unified_diff(old, new, "a/f.txt", "b/f.txt", lineterm="")
    assert trees.report(ReportOptions(max_lines=None)).split("\n")[2:] == list(expected)


def test_added_text_file(trees: Trees) -> None:
    trees.new_file("pkg/hello.txt", "hello\nworld\n")
    assert trees.report().split("\n") == [
        "A pkg/",
        "A pkg/hello.txt",
        "",
        "--- /dev/null",
        "+++ b/pkg/hello.txt",
        "@@ -0,0 +1,2 @@",
        "+hello",
        "+world",
    ]


def test_added_empty_file_and_deleted_file_have_no_details(trees: Trees) -> None:
    trees.new_file("empty", "")
    trees.old_file("gone.txt", "bye\n")
    trees.old_file("touched", "same\n")
    trees.new_file("touched", "same\n")
    assert trees.report() == "A empty\nD gone.txt\nT touched"


def test_missing_newline_at_end(trees: Trees) -> None:
    trees.old_file("f", "a\nb")
    trees.new_file("f", "a\nb\n")
    assert trees.report().split("\n")[2:] == [
        "--- a/f",
        "+++ b/f",
        "@@ -1,2 +1,2 @@",
        " a",
        "-b",
        "\\ No newline at end of file",
        "+b",
    ]


def test_crlf_files_show_no_carriage_returns(trees: Trees) -> None:
    trees.old_file("dos.txt", "one\r\ntwo\r\n")
    trees.new_file("dos.txt", "one\r\n2\r\n")
    assert trees.report().split("\n")[-3:] == [" one", "-two", "+2"]


def test_line_ending_change_is_visible(trees: Trees) -> None:
    trees.old_file("f", "a\r\nb\r\n")
    trees.new_file("f", "a\nb\n")
    assert trees.report().split("\n")[-4:] == ["-a\\r", "-b\\r", "+a", "+b"]


def test_lone_carriage_return_is_escaped(trees: Trees) -> None:
    trees.new_file("f", "progress 10%\rprogress 99%\r\nend\n")
    assert trees.report().split("\n")[-2:] == ["+progress 10%\\rprogress 99%\\r", "+end"]


# --- binary, large, unreadable ------------------------------------------------------------


def test_binary_modification(trees: Trees) -> None:
    old, new = b"\x89PNG\x00\x01\x02\x03", b"\x89PNG\x00\x01\x02\x03\x04"
    trees.old_file("img.png", old)
    trees.new_file("img.png", new)
    assert trees.report().split("\n") == [
        "M img.png",
        "",
        f"Binary file img.png: 8 -> 9 bytes, sha256 {short(old)} -> {short(new)}",
    ]


def test_text_to_binary_and_added_binary(trees: Trees) -> None:
    text, binary, zeros = b"text\n", b"bin\x00ary", b"\x00" * 300
    trees.old_file("data", text)
    trees.new_file("data", binary)
    trees.new_file("new.bin", zeros)
    assert trees.report().split("\n")[3:] == [
        f"Binary file data: 5 -> 7 bytes, sha256 {short(text)} -> {short(binary)}",
        f"Binary file new.bin: new, 300 bytes, sha256 {short(zeros)}",
    ]


def test_mostly_undecodable_content_is_binary(trees: Trees) -> None:
    noise = bytes(range(128, 256)) * 4  # no NUL, but not UTF-8 either
    trees.new_file("noise", noise)
    assert trees.report().split("\n")[-1] == (
        f"Binary file noise: new, 512 bytes, sha256 {short(noise)}"
    )


def test_large_files_are_hashed_not_diffed(trees: Trees) -> None:
    big_old = b"x\n" * (1 << 19) + b"!"  # 1 MiB and one byte
    big_new = b"y\n" * (1 << 20)
    trees.old_file("big.txt", big_old)
    trees.new_file("big.txt", big_new)
    trees.new_file("huge.log", big_new)
    sizes = f"{len(big_old)} -> {len(big_new)} bytes"
    assert trees.report().split("\n")[3:] == [
        f"Large file big.txt: {sizes}, sha256 {short(big_old)} -> {short(big_new)}",
        f"Large file huge.log: new, {len(big_new)} bytes, sha256 {short(big_new)}",
    ]


def test_too_many_differing_lines_are_summarised(trees: Trees) -> None:
    # Many repeated short lines are SequenceMatcher's worst case: this would take minutes.
    old = "".join(f"x = {i % 150}\n" for i in range(20_000)).encode()
    new = "".join(f"x = {i * 7 % 150}\n" for i in range(20_000)).encode()
    trees.old_file("table.csv", old)
    trees.new_file("table.csv", new)
    sizes = f"{len(old)} -> {len(new)} bytes"
    assert trees.report().split("\n")[2:] == [
        f"Large diff table.csv: {sizes}, sha256 {short(old)} -> {short(new)}"
    ]
    assert trees.stat().split("\n")[0] == "M table.csv | large"


def test_small_change_in_a_long_file_is_still_diffed(trees: Trees) -> None:
    lines = [f"x = {i % 150}\n" for i in range(20_000)]
    trees.old_file("table.csv", "".join(lines))
    lines[10_000] = "changed\n"
    trees.new_file("table.csv", "".join(lines))
    assert trees.report().split("\n")[4:9] == [
        "@@ -9998,7 +9998,7 @@",
        " x = 97",
        " x = 98",
        " x = 99",
        "-x = 100",
    ]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (lambda trees: None, "not available"),
        (lambda trees: trees.lower / "absent", "No such file or directory"),
        (lambda trees: trees.lower, "not a regular file"),
    ],
    ids=["none", "missing", "directory"],
)
def test_unreadable_versions(
    trees: Trees, source: Callable[[Trees], Path | None], reason: str
) -> None:
    trees.old_file("f", "old\n")
    trees.new_file("f", "new!\n")
    trees.new_file("added", "x\n")
    diff = trees.diff()

    def bad(rel: str) -> Path | None:
        return source(trees)

    assert render_report(diff, bad, trees.new).split("\n")[-1] == (
        f"f: cannot read old version ({reason})"
    )
    assert render_report(diff, trees.old, bad).split("\n")[3:] == [
        f"added: cannot read ({reason})",
        f"f: cannot read new version ({reason})",
    ]
    assert render_stat(diff, trees.old, bad).split("\n")[:2] == ["A added | ?", "M f     | ?"]


def test_permission_denied(trees: Trees, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = trees.new_file("secret", "top secret\n")
    diff = trees.diff()
    real_open = os.open

    def denying_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsencode(path) == os.fsencode(secret):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", denying_open)
        report = render_report(diff, trees.old, trees.new)
    assert report.split("\n")[2:] == ["secret: cannot read (Permission denied)"]


# --- links, modes, types, special files ---------------------------------------------------


def test_symlinks_are_shown_not_followed(trees: Trees, monkeypatch: pytest.MonkeyPatch) -> None:
    (trees.lower / "link").symlink_to("a")
    (trees.new_root / "link").symlink_to("b\x1b[0m")
    (trees.new_root / "passwd").symlink_to("/etc/passwd")
    with monkeypatch.context() as patch:
        opened = spy_open(patch)
        report = trees.report()
    assert report.split("\n") == [
        "M link (-> a => b\\x1b[0m)",
        "A passwd",
        "",
        "Symlink link: a => b\\x1b[0m",
        "Symlink passwd -> /etc/passwd",
    ]
    assert opened == []


def test_list_and_details_say_unknown_the_same_way(trees: Trees) -> None:
    # A target readlink could not give, a type or mode a record lacks: "?" in both places.
    diff = TreeDiff(
        (
            Change("gone", ChangeKind.MODIFIED, None, "fifo"),
            Change("link", ChangeKind.MODIFIED, "symlink", "symlink", new_target="b"),
            Change("mode", ChangeKind.MODE, "file", "file", None, 0o600),
        )
    )
    assert render_report(diff, trees.old, trees.new).split("\n") == [
        "M gone (? -> fifo)",
        "M link (-> ? => b)",
        "P mode (? -> 0600)",
        "",
        "gone: ? -> fifo",
        "Symlink link: ? => b",
        "Mode mode: ? -> 0600",
    ]


def test_file_replaced_by_symlink_is_not_read(trees: Trees) -> None:
    trees.old_file("f", "old\n")
    (trees.new_root / "f").symlink_to("/etc/passwd")
    diff = TreeDiff((Change("f", ChangeKind.MODIFIED, "file", "file"),))  # a stale diff
    assert render_report(diff, trees.old, trees.new).split("\n")[2:] == [
        "f: cannot read new version (not a regular file)"
    ]


def test_mode_changes(trees: Trees) -> None:
    trees.old_file("run.sh", "#!/bin/sh\n", mode=0o644)
    trees.new_file("run.sh", "#!/bin/sh\n", mode=0o755)
    os.utime(trees.new_root / "run.sh", ns=(OLD_TIME, OLD_TIME))
    assert trees.report() == "P run.sh (0644 -> 0755)\n\nMode run.sh: 0644 -> 0755"
    owner = TreeDiff((Change("d", ChangeKind.MODE, "dir", "dir", 0o755, 0o755),))
    assert render_report(owner, trees.old, trees.new) == (
        "P d/ (owner changed)\n\nMode d: owner changed"
    )


def test_type_changes(trees: Trees) -> None:
    (trees.lower / "config").mkdir()
    trees.new_file("config", "key = 1\n")
    trees.old_file("current", "v1\n")
    (trees.new_root / "current").symlink_to("releases/v2")
    trees.old_file("queue", "x\n")
    os.mkfifo(trees.new_root / "queue")
    assert trees.report().split("\n") == [
        "M config (dir -> file)",
        "M current (file -> symlink)",
        "M queue (file -> fifo)",
        "",
        "config: dir -> file",
        "--- /dev/null",
        "+++ b/config",
        "@@ -0,0 +1 @@",
        "+key = 1",
        "current: file -> symlink",
        "Symlink current -> releases/v2",
        "queue: file -> fifo",
    ]


def test_fifo_is_never_opened(
    trees: Trees, monkeypatch: pytest.MonkeyPatch, hang_guard: None
) -> None:
    os.mkfifo(trees.new_root / "pipe")
    trees.old_file("data", "old\n")
    os.mkfifo(trees.new_root / "data")
    # A stale diff that still calls "data" a file: the report must check before opening.
    stale = TreeDiff(
        (
            Change("data", ChangeKind.MODIFIED, "file", "file"),
            Change("pipe", ChangeKind.ADDED, new_type="fifo"),
        )
    )
    with monkeypatch.context() as patch:
        opened = spy_open(patch)
        report = render_report(trees.diff(), trees.old, trees.new)
        stale_report = render_report(stale, trees.old, trees.new)
        stale_stat = render_stat(stale, trees.old, trees.new)
    assert report.split("\n") == [
        "M data (file -> fifo)",
        "A pipe",
        "",
        "data: file -> fifo",
        "fifo pipe",
    ]
    assert stale_report.split("\n")[3:] == [
        "data: cannot read new version (not a regular file)",
        "fifo pipe",
    ]
    assert stale_stat.split("\n")[:2] == ["M data | ?", "A pipe | -"]
    assert os.fsencode(trees.new_root / "pipe") not in opened
    assert os.fsencode(trees.new_root / "data") not in opened


# --- hostile names and content -------------------------------------------------------------

HOSTILE_NAMES = [
    "\x1b[31mred",
    "new\nline",
    "bidi\u202etxt.exe",
    os.fsdecode(b"bad\xff.txt"),
]


def test_hostile_names_are_inert(trees: Trees) -> None:
    for name in HOSTILE_NAMES:
        trees.new_file(name, "x\n")
    report = trees.report(ReportOptions(max_lines=None))
    assert inert(report)
    assert "\x1b" not in report
    assert "+++ b/\\x1b[31mred" in report.split("\n")
    assert "+++ b/new\\nline" in report.split("\n")
    assert "+++ b/bidi\\u202etxt.exe" in report.split("\n")
    assert "+++ b/bad\\xff.txt" in report.split("\n")
    assert report.count("\n") == 4 + 1 + 4 * 4 - 1  # list, blank line, 4 lines a file
    names = render_name_only(trees.diff()).split("\n")
    assert names == ["\\x1b[31mred", "bad\\xff.txt", "bidi\\u202etxt.exe", "new\\nline"]


def test_hostile_content_is_inert(trees: Trees) -> None:
    content = (
        b"ok\x1b[2J\x1b]0;pwned\x07 bell\n"
        b"cr\rmid\n"
        + "bidi \u202e reversed\n".encode()
        + "sep\u2028x\n".encode()
        + b"c1 \xc2\x9b csi\n"
        b"latin1 caf\xe9, a few bytes that are not UTF-8\n"
        b"\ttab kept, \\x1b literal\n"
    )
    trees.new_file("evil.txt", content)
    report = trees.report()
    assert report.split("\n")[5:] == [
        "+ok\\x1b[2J\\x1b]0;pwned\\x07 bell",
        "+cr\\rmid",
        "+bidi \\u202e reversed",
        "+sep\\u2028x",
        "+c1 \\u009b csi",
        "+latin1 caf\\xe9, a few bytes that are not UTF-8",
        "+\ttab kept, \\x1b literal",
    ]
    assert inert(report)
    # The command line re-checks stored reports with safe_line: that must change nothing.
    assert [safe_line(line) for line in report.split("\n")] == report.split("\n")


def test_hostile_hint_is_inert(trees: Trees) -> None:
    trees.new_file("f", "a\nb\n")
    report = trees.report(ReportOptions(max_lines=1, more_hint="`show 'x\x1b[2J'`"))
    assert report.split("\n")[-1] == (
        "... 5 more lines not shown, of 1 change: 1 added (-v shows more, overlay_diff_lines = 0"
        " shows all; or `show 'x\\x1b[2J'`)"
    )


# --- options --------------------------------------------------------------------------------


@pytest.fixture
def ten_changed_lines(trees: Trees) -> Trees:
    trees.old_file("f", "".join(f"old {i}\n" for i in range(10)))
    trees.new_file("f", "".join(f"new {i}\n" for i in range(10)))
    trees.new_file("g", "g\n")
    return trees  # details: 23 lines for f, 4 for g


def test_truncation_note_and_count(ten_changed_lines: Trees) -> None:
    # The change list counts toward the limit; the note counts every change by kind.
    report = ten_changed_lines.report(ReportOptions(max_lines=5))
    assert report.split("\n") == [
        "M f",
        "A g",
        "",
        "--- a/f",
        "+++ b/f",
        f"... 25 more lines not shown, of 2 changes: 1 added, 1 modified {NOTE}",
    ]


def test_truncation_with_hint_and_singular(ten_changed_lines: Trees) -> None:
    hint = "`pytest-overlay show 'tests/test_x.py::test_y'`"
    report = ten_changed_lines.report(ReportOptions(max_lines=29, more_hint=hint))
    assert report.split("\n")[-2:] == [
        "@@ -0,0 +1 @@",
        "... 1 more line not shown, of 2 changes: 1 added, 1 modified (-v shows more, "
        "overlay_diff_lines = 0 shows all; or `pytest-overlay show 'tests/test_x.py::test_y'`)",
    ]


@pytest.mark.parametrize("limit", [None, 0, 30, 1000])
def test_no_truncation(ten_changed_lines: Trees, limit: int | None) -> None:
    report = ten_changed_lines.report(ReportOptions(max_lines=limit))
    assert report.count("\n") == 2 + 27
    assert report.endswith("\n+g")


def test_a_long_change_list_is_cut_too(trees: Trees) -> None:
    # Issue 21: 500 new files gave some 700 lines; the limit now holds for the whole report.
    for i in range(5):
        trees.new_file(f"f{i}", "x\n")
    lines = trees.report(ReportOptions(max_lines=3)).split("\n")
    assert lines == [
        "A f0",
        "A f1",
        "A f2",
        f"... 22 more lines not shown, of 5 changes: 5 added {NOTE}",
    ]


def test_the_change_list_alone(ten_changed_lines: Trees) -> None:
    report = ten_changed_lines.report(ReportOptions(details=False))
    assert report.split("\n") == ["M f", "A g"]


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_lines"):
        ReportOptions(max_lines=-1)


def test_colour(trees: Trees) -> None:
    trees.old_file("f", "a\nb\n")
    trees.new_file("f", "a\nc\n")
    trees.old_file("gone", "x\n")
    trees.new_file("new", "\x1b[31m\n")
    trees.old_file("perm", "p\n", mode=0o600)
    trees.new_file("perm", "p\n", mode=0o640)
    os.utime(trees.new_root / "perm", ns=(OLD_TIME, OLD_TIME))
    assert trees.report(ReportOptions(color=True)).split("\n") == [
        "\x1b[33mM f\x1b[0m",
        "\x1b[31mD gone\x1b[0m",
        "\x1b[32mA new\x1b[0m",
        "\x1b[36mP perm (0600 -> 0640)\x1b[0m",
        "",
        "\x1b[1m--- a/f\x1b[0m",
        "\x1b[1m+++ b/f\x1b[0m",
        "\x1b[36m@@ -1,2 +1,2 @@\x1b[0m",
        " a",
        "\x1b[31m-b\x1b[0m",
        "\x1b[32m+c\x1b[0m",
        "\x1b[1m--- /dev/null\x1b[0m",
        "\x1b[1m+++ b/new\x1b[0m",
        "\x1b[36m@@ -0,0 +1 @@\x1b[0m",
        "\x1b[32m+\\x1b[31m\x1b[0m",
        "Mode perm: 0600 -> 0640",
    ]
    plain = trees.report()
    assert "\x1b" not in plain
    assert plain.split("\n")[-2] == "+\\x1b[31m"


def test_deterministic_and_empty(ten_changed_lines: Trees) -> None:
    assert ten_changed_lines.report() == ten_changed_lines.report()
    empty = TreeDiff()
    assert render_report(empty, ten_changed_lines.old, ten_changed_lines.new) == ""
    assert render_stat(empty, ten_changed_lines.old, ten_changed_lines.new) == ""
    assert render_name_only(empty) == ""


# --- short forms ----------------------------------------------------------------------------


def test_render_stat(trees: Trees) -> None:
    trees.old_file("src/mod.py", "a\nb\nc\n")
    trees.new_file("src/mod.py", "a\nB\nc\nd\n")
    trees.old_file("old.txt", "1\n2\n3\n")
    trees.new_file("README", "hello\nworld\n")
    trees.old_file("logo.png", b"\x00old")
    trees.new_file("logo.png", b"\x00new!")
    (trees.new_root / "link").symlink_to("README")
    trees.old_file("perm", "p\n", mode=0o600)
    trees.new_file("perm", "p\n", mode=0o640)
    os.utime(trees.new_root / "perm", ns=(OLD_TIME, OLD_TIME))
    assert trees.stat().split("\n") == [
        "A README     | +2 -0",
        "A link       | -",
        "M logo.png   | bin",
        "D old.txt    | +0 -3",
        "P perm       | +0 -0",
        "M src/mod.py | +2 -1",
        "6 files changed, 4 insertions(+), 4 deletions(-)",
    ]


def test_render_stat_singular_and_directories(trees: Trees) -> None:
    trees.new_file("d/f", "x\n")
    assert trees.stat().split("\n") == [
        "A d/  | -",
        "A d/f | +1 -0",
        "2 files changed, 1 insertion(+), 0 deletions(-)",
    ]
    # The old side of a type change counts as deleted, the new one as added.
    trees.old_file("t", "1\n2\n")
    (trees.new_root / "t").mkdir()
    assert trees.stat().split("\n")[2:] == [
        "M t/  | +0 -2",
        "3 files changed, 1 insertion(+), 2 deletions(-)",
    ]


def test_sources_are_called_with_relative_paths(trees: Trees) -> None:
    trees.old_file("a/b.txt", "1\n")
    trees.new_file("a/b.txt", "2\n")
    seen: list[tuple[str, str]] = []

    def recording(side: str, source: ContentSource) -> ContentSource:
        def wrapped(rel: str) -> Path | None:
            seen.append((side, rel))
            return source(rel)

        return wrapped

    render_report(trees.diff(), recording("old", trees.old), recording("new", trees.new))
    assert seen == [("old", "a/b.txt"), ("new", "a/b.txt")]


def test_regular_file_check_uses_lstat(trees: Trees) -> None:
    target = trees.new_file("real.txt", "secret\n")
    (trees.new_root / "alias").symlink_to(target)
    assert stat.S_ISLNK(os.lstat(trees.new_root / "alias").st_mode)
    lying = TreeDiff((Change("alias", ChangeKind.ADDED, new_type="file"),))
    assert render_report(lying, trees.old, trees.new).split("\n")[2:] == [
        "alias: cannot read (not a regular file)"
    ]
    assert _report._read(trees.new, "alias") == "not a regular file"
