"""Golden records without mounts: the format, the normalisers, the diff of diffs, the names.

The plugin side (real backends, xdist, in place) is ``tests/test_golden.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_overlay import Change, ChangeKind, TreeDiff
from pytest_overlay._golden import (
    Digest,
    FileContent,
    Normalisers,
    compare_records,
    parse_marker,
    record_name,
    record_path,
    render_record,
    unused_records,
)

A, M, D, P, T = (
    ChangeKind.ADDED,
    ChangeKind.MODIFIED,
    ChangeKind.DELETED,
    ChangeKind.MODE,
    ChangeKind.TIMES,
)


def record(diff: TreeDiff, files: dict[str, FileContent], **normalisers: object) -> str:
    return render_record(
        diff,
        lambda rel: files.get(rel, "not available"),
        Normalisers(**normalisers),  # type: ignore[arg-type]
        title="tests/test_x.py::test_y",
        update_command="pytest --overlay-update tests/test_x.py::test_y",
    )


def body(text: str) -> list[str]:
    """The record without its two header comment lines."""
    return text.splitlines()[3:]


EFFECTS = TreeDiff(
    (
        Change("gone.txt", D, old_type="file", old_mode=0o644, old_size=3),
        Change("run.sh", P, "file", "file", 0o644, 0o755, 9, 9),
        Change("link", M, "file", "symlink", 0o644, 0o777, 2, None, None, "target.txt"),
        Change("out", A, new_type="dir", new_mode=0o755),
        Change("out/a.py", A, new_type="file", new_mode=0o644, new_size=9),
        Change("out/b.bin", A, new_type="file", new_mode=0o600, new_size=3),
        Change("out/big", A, new_type="file", new_mode=0o644, new_size=1 << 20),
        Change("stamp", T, "file", "file", 0o644, 0o644, 0, 0),
    )
)
FILES: dict[str, FileContent] = {
    "out/a.py": b"x = 1\n\tkeep\\n\n",
    "out/b.bin": b"\0\1\2",
    "out/big": Digest(1 << 20, "ab" * 32),
}


def test_a_record_says_what_happened_to_every_path() -> None:
    text = record(EFFECTS, FILES)
    assert text.splitlines()[0] == "# pytest-overlay: what tests/test_x.py::test_y did to the tree."
    assert body(text) == [
        "deleted gone.txt",
        "  was file",
        "",
        "modified link",
        "  was file",
        "  symlink -> target.txt",
        "",
        "added out/",
        "  dir 0755",
        "",
        "added out/a.py",
        "  file 0644",
        "  | x = 1",
        "  ~ \\tkeep\\\\n",
        "",
        "added out/b.bin",
        "  file 0600",
        "  binary, 3 bytes, sha256 "
        + "ae4b3280e56e2faf83f414a6e3dabe9d5fbe18976544c05fed121accb85b53fc",
        "",
        "added out/big",
        "  file 0644",
        "  large, 1048576 bytes, sha256 " + "ab" * 32,
        "",
        "mode run.sh",
        "  0644 -> 0755",
        "",
        "times stamp",
        "  modification time only",
    ]
    assert text.endswith("\n")


def test_text_ends_and_empty_files_are_recorded() -> None:
    diff = TreeDiff(
        (
            Change("e", A, new_type="file", new_mode=0o644, new_size=0),
            Change("n", A, new_type="file", new_mode=0o644, new_size=2),
        )
    )
    lines = body(record(diff, {"e": b"", "n": b"a\n\nb"}))
    assert lines == [
        "added e",
        "  file 0644",
        "  empty",
        "",
        "added n",
        "  file 0644",
        "  | a",
        "  |",
        "  | b",
        "  \\ no newline at end of file",
    ]


def test_hostile_names_and_content_stay_one_inert_line() -> None:
    name = "evil\n\x1b[2Jname\u202e"
    diff = TreeDiff((Change(name, A, new_type="file", new_mode=0o644, new_size=9),))
    text = record(diff, {name: b"line\x1b[31m\r\n"})
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert body(text) == [
        "added evil\\n\\x1b[2Jname\\u202e",
        "  file 0644",
        "  ~ line\\x1b[31m\\r",
    ]


def test_normalisers_roots_timestamps_replacements_ignores() -> None:
    diff = TreeDiff(
        (
            Change("build.log", A, new_type="file", new_mode=0o644, new_size=1),
            Change("cache", A, new_type="dir", new_mode=0o755),
            Change("cache/x", A, new_type="file", new_mode=0o644, new_size=1),
            Change("l", A, new_type="symlink", new_mode=0o777, new_target="/tmp/view1/data"),
        )
    )
    files: dict[str, FileContent] = {
        "build.log": b"at /tmp/view1/src on 2024-05-01T12:30:00Z, id=4711\n",
    }
    lines = body(
        record(
            diff,
            files,
            ignore=("cache",),
            replace=((r"id=\d+", "id=<id>"),),
            roots=("/tmp/view1", "/tmp"),
            timestamps=True,
        )
    )
    assert lines == [
        "added build.log",
        "  file 0644",
        "  | at <root>/src on <timestamp>, id=<id>",
        "",
        "added l",
        "  symlink -> <root>/data",
    ]


def test_no_changes_is_a_record_too() -> None:
    assert body(record(TreeDiff(), {})) == ["(no changes)"]


def test_diff_of_diffs_names_paths_on_one_side_and_diffs_the_rest() -> None:
    expected = record(EFFECTS, FILES)
    changed = TreeDiff(
        (
            *(c for c in EFFECTS if c.path not in ("gone.txt", "run.sh")),
            Change("new.txt", A, new_type="file", new_mode=0o644, new_size=2),
        )
    )
    actual = record(changed, {**FILES, "out/a.py": b"x = 2\n", "new.txt": b"n\n"})
    lines = compare_records(expected, actual)
    assert lines is not None
    assert lines[:4] == [
        "- deleted gone.txt   (only in the record)",
        "+ added new.txt   (only in this run)",
        "~ added out/a.py   (differs)",
        "- mode run.sh   (only in the record)",
    ]
    diff = "\n".join(lines[4:])
    assert "--- record: out/a.py\n+++ this run: out/a.py" in diff
    assert "-  | x = 1\n-  ~ \\tkeep\\\\n\n+  | x = 2" in diff


def test_header_comments_do_not_count() -> None:
    text = record(EFFECTS, FILES)
    other = text.replace("tests/test_x.py::test_y", "tests/test_x.py::renamed")
    assert compare_records(text, other) is None
    assert compare_records(text, text) is None


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("test_x", "test_x.txt"),
        ("test_x[a-1]", "test_x[a-1].txt"),
        ("TestC::test_x", "TestC.test_x.txt"),
        ("test_x[a/b c]", "test_x[a%2fb%20c].txt"),
        ("test_x[\n]", "test_x[%0a].txt"),
    ],
)
def test_record_names(name: str, file: str) -> None:
    assert record_name(name) == file
    assert record_path(Path("/p/tests/test_m.py"), name) == Path(
        "/p/tests/__effects__/test_m", file
    )


def test_long_names_stay_short_and_distinct() -> None:
    one, two = record_name("test_x[" + "a" * 300 + "]"), record_name("test_x[" + "a" * 301 + "]")
    assert one != two
    assert len(one.encode()) <= 210


def test_unused_records_are_the_unclaimed_record_files() -> None:
    module = Path("/p/tests/test_m.py")
    listings = {module: ["test_a.txt", "test_b.txt", ".test_c.txt.1.tmp", "notes.md"]}
    claimed = {module: {"test_a.txt"}}
    assert unused_records(listings, claimed) == [Path("/p/tests/__effects__/test_m/test_b.txt")]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("x",), {}, "positional arguments ('x') are not accepted"),
        ((), {"ignor": "x"}, "unknown argument ignor="),
        ((), {"ignore": 3}, "ignore=3 is not a glob or a list of globs"),
        ((), {"replace": ["x"]}, "is not a {regex: replacement} dict"),
        ((), {"replace": {"(": "x"}}, "'(' is not a regular expression"),
        ((), {"timestamps": "yes"}, "timestamps='yes' is not True or False"),
    ],
)
def test_marker_mistakes_are_named(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_marker(args, kwargs, Normalisers())


def test_marker_adds_to_the_project_normalisers() -> None:
    base = Normalisers(ignore=("a",), replace=(("x", "y"),), roots=("/r",), timestamps=True)
    mine = parse_marker((), {"ignore": "b", "replace": {"z": "w"}, "timestamps": False}, base)
    assert mine == Normalisers(("a", "b"), (("x", "y"), ("z", "w")), ("/r",), False)


def test_tree_diff_dict_round_trip() -> None:
    data = EFFECTS.to_dict()
    assert TreeDiff.from_dict(data) == EFFECTS
    assert TreeDiff.from_json(EFFECTS.to_json()) == EFFECTS
    with pytest.raises(ValueError, match="Not a serialised tree diff"):
        TreeDiff.from_dict({"changes": "no"})
