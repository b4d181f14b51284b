"""Project files whose owner or group the user namespace does not map (issue 10, item 4).

As an ordinary user the kernel backend mounts in a user namespace that maps only the user's
own uid and gid; overlayfs cannot copy up a file with another owner or group, so a test's
write to it would fail with a bare EOVERFLOW.  ``auto`` must pass over the kernel for such a
tree and say why; an explicit ``kernel`` must be a usage error naming the file; a write that
still fails that way (a marker's lowers the session did not check) is explained in the report.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay import _namespaces
from pytest_overlay._backends import idmap
from tests import _unpriv
from tests._gates import gate
from tests._run import counts, run_pytest
from tests._sample_project import tree_digest

MODIFYING_TESTS = """
def test_modifies_project_files(overlay_root):
    config = overlay_root / "data" / "config.txt"
    config.write_text(config.read_text() + "changed\\n")
    (overlay_root / "data" / "new.txt").write_text("new\\n")
    (overlay_root / "data" / "old.txt").unlink()
    diff = overlay_root.diff()
    assert diff.modified == {"data/config.txt"}
    assert diff.added == {"data/new.txt"}
    assert diff.deleted == {"data/old.txt"}

def test_sees_the_original(overlay_root):
    assert (overlay_root / "data" / "config.txt").read_text() == "setting = 1\\n"
    assert (overlay_root / "data" / "old.txt").exists()
"""


def _build(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data" / "config.txt").write_text("setting = 1\n")
    (root / "data" / "old.txt").write_text("old\n")
    (root / "test_modify.py").write_text(MODIFYING_TESTS)
    (root / "pytest.ini").write_text("[pytest]\n")


def _regroup(path: Path, gid: int) -> None:
    """Give *path* and everything below it group *gid*, as ``chown -R user dir`` leaves root's."""
    for directory, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(Path(directory, name), -1, gid)
    os.lchown(path, -1, gid)


@pytest.fixture
def grouped_project() -> Iterator[Path]:
    """A project owned by the test user whose files' group is root's, not the user's."""
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(_build) as root:
        _regroup(root, 0)
        yield root


def _run(root: Path, *args: str) -> tuple[int, str, str]:
    result = run_pytest(root, "-W", "default", *args, user=True)
    return result.returncode, result.stdout, result.stderr


def test_auto_passes_over_the_kernel_and_the_modifying_test_passes(
    grouped_project: Path,
) -> None:
    before = tree_digest(grouped_project)
    code, out, err = _run(grouped_project, "-v")
    text = out + err
    assert code == 0, text
    assert counts(out).get("passed") == 2, text
    assert "INTERNALERROR" not in text
    assert "overlay: backend=kernel" not in out, text
    assert "overlay: backend=fuse" in out or "overlay: backend=copy" in out, text
    # The header says why, naming a file and its group, and how to fix the tree.
    reason = next(line for line in out.splitlines() if "kernel not used:" in line)
    assert f"{grouped_project}/" in reason, reason
    assert "has group root (gid 0)" in reason, reason
    assert "does not map" in reason, reason
    assert "EOVERFLOW" in reason, reason
    assert "chgrp -R" in reason, reason
    assert tree_digest(grouped_project) == before


def test_the_same_tree_with_the_users_group_uses_the_kernel(grouped_project: Path) -> None:
    # The control: the tree regrouped to the user's own group is mapped, so auto keeps the
    # kernel, and the same tests pass there.
    _, gid = _unpriv.ensure_test_user()
    _regroup(grouped_project, gid)
    before = tree_digest(grouped_project)
    code, out, err = _run(grouped_project)
    assert code == 0, out + err
    assert counts(out).get("passed") == 2, out + err
    assert "overlay: backend=kernel (user namespace)" in out, out + err
    assert "kernel not used" not in out, out + err
    assert tree_digest(grouped_project) == before


def test_explicit_kernel_is_a_usage_error_naming_the_file(grouped_project: Path) -> None:
    before = tree_digest(grouped_project)
    code, out, err = _run(grouped_project, "--overlay-backend=kernel")
    assert code == pytest.ExitCode.USAGE_ERROR, out + err
    assert "Traceback" not in out + err
    assert "the kernel backend cannot work here: " in err, err
    assert f"{grouped_project}/" in err, err
    assert "has group root (gid 0)" in err, err
    assert "chgrp -R" in err, err
    assert "To run anyway, use --overlay-backend=" in err, err
    assert tree_digest(grouped_project) == before


MARKER_TESTS = """
import pytest

@pytest.mark.overlay(lowers=["foreign"])
def test_writes_a_file_of_another_group(overlay_root):
    (overlay_root / "config.txt").write_text("changed\\n")
"""


def test_eoverflow_from_a_marker_lower_is_explained_in_the_report(
    grouped_project: Path,
) -> None:
    # The session's lowers (src) are the user's and pass the check; the marker's lowers are
    # not checked (they are only known when the test runs), so the write meets EOVERFLOW.
    uid, gid = _unpriv.ensure_test_user()
    src = grouped_project / "src"
    src.mkdir()
    (src / "test_marker.py").write_text(MARKER_TESTS)
    for path in (src, src / "test_marker.py"):
        os.chown(path, uid, gid)
    (grouped_project / "foreign").mkdir()
    (grouped_project / "foreign" / "config.txt").write_text("setting = 1\n")
    for path in (grouped_project / "foreign", grouped_project / "foreign" / "config.txt"):
        os.chown(path, uid, 0)
    (grouped_project / "pytest.ini").write_text("[pytest]\noverlay_lowers = src\n")
    code, out, err = _run(grouped_project, "src/test_marker.py")
    assert code == 1, out + err
    assert "overlay: backend=kernel (user namespace)" in out, out + err
    assert counts(out).get("failed") == 1, out + err
    assert "Errno 75" in out, out + err
    assert "EOVERFLOW on a write" in out, out + err
    assert "maps only uid" in out, out + err
    assert "chown -R" in out, out + err


# --- the detection itself, without another user ---------------------------------------------


def test_find_unmapped_names_the_first_file_and_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_text("x")
    (tmp_path / "a" / "link").symlink_to("/nonexistent")
    os.lchown(tmp_path / "a" / "b" / "deep.txt", -1, 4242)
    uid, gid = os.geteuid(), os.getegid()

    found = idmap.find_unmapped([tmp_path], uid, gid)

    assert found is not None
    assert found.path == tmp_path / "a" / "b" / "deep.txt"
    assert (found.uid, found.gid) == (uid, 4242)
    text = found.describe()
    assert text.startswith(f"{tmp_path}/a/b/deep.txt has group ")
    assert "(gid 4242)" in text
    assert "owner" not in text.split(", which")[0]
    assert f"`chgrp -R {gid} {tmp_path}`" in text


def test_find_unmapped_checks_owners_of_symlinks_and_directories(tmp_path: Path) -> None:
    uid, gid = os.geteuid(), os.getegid()
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    assert idmap.find_unmapped([tmp_path], uid, gid) is None
    os.lchown(tmp_path / "link", 4242, -1)  # the link's own owner, not its target's
    found = idmap.find_unmapped([tmp_path], uid, gid)
    assert found is not None
    assert found.path == tmp_path / "link"
    assert "(uid 4242)" in found.describe()
    assert "`chown -R" in found.describe()
    os.lchown(tmp_path / "link", uid, gid)
    os.chown(tmp_path / "dir", -1, 4242)
    found = idmap.find_unmapped([tmp_path], uid, gid)
    assert found is not None
    assert found.path == tmp_path / "dir"


def test_find_unmapped_ignores_the_lower_roots_and_checks_every_lower(tmp_path: Path) -> None:
    uid, gid = os.geteuid(), os.getegid()
    first, second = tmp_path / "first", tmp_path / "second"
    for lower in (first, second):
        lower.mkdir()
        (lower / "f").write_text("x")
    # A lower's root is never copied up (the merged root is the upper directory).
    os.chown(first, 4242, 4242)
    assert idmap.find_unmapped([first, second], uid, gid) is None
    os.chown(second / "f", -1, 4242)
    found = idmap.find_unmapped([first, second], uid, gid)
    assert found is not None
    assert (found.path, found.lower) == (second / "f", second)


def test_find_unmapped_escapes_the_file_name(tmp_path: Path) -> None:
    uid, gid = os.geteuid(), os.getegid()
    name = tmp_path / "evil\n\x1b[31mname"
    name.write_text("x")
    os.chown(name, -1, 4242)
    found = idmap.find_unmapped([tmp_path], uid, gid)
    assert found is not None
    text = found.describe()
    assert "\n" not in text
    assert "\x1b" not in text
    assert "evil\\n\\x1b[31mname" in text


def test_unmapped_owner_is_not_checked_as_real_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_text("x")
    os.chown(tmp_path / "f", -1, 4242)
    monkeypatch.setattr(_namespaces, "is_real_root", lambda: True)
    assert idmap.unmapped_owner([tmp_path]) is None
    monkeypatch.setattr(_namespaces, "is_real_root", lambda: False)
    reason = idmap.unmapped_owner([tmp_path])
    assert reason is not None
    assert reason.startswith(f"{tmp_path}/f has group ")


def test_overflow_note_only_for_eoverflow_anywhere_in_the_chain() -> None:
    overflow = OSError(errno.EOVERFLOW, "Value too large for defined data type", "/p/f.txt")
    assert "EOVERFLOW on a write (/p/f.txt)" in idmap.overflow_note(overflow)
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = overflow
    assert idmap.overflow_note(wrapped).startswith("EOVERFLOW on a write")
    context = ValueError("while handling")
    context.__context__ = overflow
    assert idmap.overflow_note(context).startswith("EOVERFLOW on a write")
    assert idmap.overflow_note(OSError(errno.EACCES, "Permission denied")) == ""
    assert idmap.overflow_note(AssertionError("no")) == ""
    assert idmap.overflow_note(None) == ""
