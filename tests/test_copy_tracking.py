"""The copy backend's reset and diff cost in proportion to a test's changes, not to the tree.

The session's copy is made once; a test that changes ten files leaves the tracker with a
handful of candidate paths, the diff is computed from them alone, and the reset leaves the
copy equal to the lowers (checked with a full walk, the old way of diffing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_overlay._backends.copying import CopyBackend
from pytest_overlay._diff import diff_trees


def _tree(root: Path, files: int) -> list[str]:
    names = []
    for index in range(files):
        rel = f"d{index // 1000:03}/e{index // 100 % 10}/f{index}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {index}\n")
        names.append(rel)
    return names


def _check(tmp_path: Path, files: int, *, watch: bool) -> None:
    lower = tmp_path / "lower"
    names = _tree(lower, files)
    backend = CopyBackend(lambda: tmp_path / "scratch", watch=watch)
    try:
        backend.mount([lower], label="first").close()  # the one copy of the session
        mount = backend.mount([lower], label="second")
        changed = names[:: files // 10][:10]
        for rel in changed:
            (mount.path / rel).write_text("changed\n")
        (mount.path / changed[0]).unlink()
        (mount.path / "new.txt").write_text("new\n")
        diff = mount.diff()
        copy = mount._copy  # the tracker's candidates are what is measured
        candidates = copy.tracker.dirty | copy.tracker.replaced
        if watch:
            assert copy.tracker.watching
            # The files and their directories, nothing more: O(changes), not O(tree).
            assert len(candidates) <= 2 * len(changed) + 2, sorted(candidates)
        assert diff == diff_trees(mount.path, [lower])
        assert diff.modified == set(changed[1:])
        assert diff.deleted == {changed[0]}
        assert diff.added == {"new.txt"}
        mount.close()
        again = backend.mount([lower], label="third")
        assert not diff_trees(again.path, [lower]), "the reset left a change behind"
        assert not again.diff()
        again.close()
    finally:
        backend.shutdown()


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "stat-walk"])
def test_ten_changes_in_a_tree_of_two_thousand(tmp_path: Path, watch: bool) -> None:
    _check(tmp_path, 2_000, watch=watch)


@pytest.mark.stress
def test_ten_changes_in_a_tree_of_a_hundred_thousand(tmp_path: Path) -> None:
    _check(tmp_path, 100_000, watch=True)


def _link_escapes(root: Path) -> None:
    """Writes that reach pristine files through names the directory watches never see."""
    (root / "new").mkdir()
    os.link(root / "a", root / "new" / "x")  # a hard link in a directory the test made
    (root / "new" / "x").write_text("through a new directory\n")
    os.mkdir(root / "other")
    os.link(root / "sub" / "f", root / "other" / "y")
    with open(root / "other" / "y", "r+") as held:
        os.unlink(root / "other" / "y")  # the name is gone, the open file is not
        held.write("through an unlinked name")
    os.rename(root / "sub", root / "moved")
    os.link(root / "moved" / "g", root / "new" / "z")
    os.rename(root / "moved", root / "sub")
    (root / "new" / "z").write_text("through a moved directory\n")


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "stat-walk"])
def test_a_write_through_any_name_is_seen_and_reset(tmp_path: Path, watch: bool) -> None:
    # Issue 18: a change made through a hard link in a new or moved directory, or through
    # a name unlinked since, was missing from the diff and survived the reset.
    lower = tmp_path / "lower"
    (lower / "sub").mkdir(parents=True)
    for rel in ("a", "sub/f", "sub/g"):
        (lower / rel).write_text(f"{rel}\n")
    backend = CopyBackend(lambda: tmp_path / "scratch", watch=watch)
    try:
        mount = backend.mount([lower], label="first")
        _link_escapes(mount.path)
        expected = diff_trees(mount.path, [lower])
        assert {"a", "sub/f", "sub/g"} <= expected.modified
        assert mount.diff() == expected
        mount.close()
        again = backend.mount([lower], label="second")
        assert not diff_trees(again.path, [lower]), "the reset left a change behind"
        again.close()
    finally:
        backend.shutdown()
