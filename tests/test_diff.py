"""Unit tests of the diff model, the layer reader and both diff computations (no mounts).

Upper layers are written by hand in the formats the kernel and fuse-overlayfs produce.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_overlay._checkpoint import diff_states
from pytest_overlay._diff import Change, ChangeKind, TreeDiff, diff_trees, diff_upper
from pytest_overlay._fuse.view import MergedView
from pytest_overlay._layers import WHITEOUT_FILES_MARKER, LayerStack
from tests._gates import gate


@pytest.fixture
def _root() -> None:
    gate("root", None if os.geteuid() == 0 else "mknod of whiteouts, trusted.* xattrs, chown")


needs_root = pytest.mark.usefixtures("_root")

T0 = 1_600_000_000_123_456_789  # a fixed mtime, so that copies compare equal


def write(
    path: Path, data: bytes = b"", *, mode: int | None = None, mtime: int | None = T0
) -> Path:
    """Create *path* (and its parents) with *data*, *mode* and mtime *mtime* in ns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def whiteout(path: Path) -> None:
    """Create a kernel-format whiteout (character device 0/0) at *path*."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def whiteout_files(*layers: Path) -> None:
    """Mark *layers* as using ``.wh.`` files for whiteouts and opaque directories."""
    for layer in layers:
        write(layer / WHITEOUT_FILES_MARKER)


def make_opaque(path: Path, how: str = "trusted.overlay.opaque", layer: Path | None = None) -> None:
    """Create the directory *path* and mark it opaque by xattr *how* or by ``"sentinel"`` (in
    *layer*, which is then marked as using ``.wh.`` files)."""
    path.mkdir(parents=True, exist_ok=True)
    if how == "sentinel":
        assert layer is not None
        whiteout_files(layer)
        (path / ".wh..wh..opq").touch()
    else:
        os.setxattr(path, how, b"y")


def copy_up(lower: Path, upper: Path, rel: str) -> Path:
    """Copy *rel* from *lower* to *upper* as overlayfs copy-up does (metadata preserved)."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        sub = "/".join(parts[:depth])
        if not (upper / sub).exists():
            (upper / sub).mkdir()
            shutil.copystat(lower / sub, upper / sub)
    clone(lower / rel, upper / rel)
    return upper / rel


def clone(src: Path, dst: Path) -> None:
    """Copy the tree *src* to *dst*, FIFOs and symlinks included, keeping modes and times."""
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        dst.symlink_to(src.readlink())
    elif stat.S_ISDIR(st.st_mode):
        dst.mkdir()
        for child in src.iterdir():
            clone(child, dst / child.name)
        shutil.copystat(src, dst)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dst, stat.S_IMODE(st.st_mode))
    else:
        shutil.copy2(src, dst)


def write_raw(directory: Path, name: bytes, data: bytes = b"") -> None:
    """Create the file *name*, given as raw bytes (maybe not UTF-8), in *directory*."""
    fd = os.open(os.fsencode(directory) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def letters(diff: TreeDiff) -> dict[str, str]:
    """The diff as ``{path: letter}``."""
    return {c.path: c.kind.letter for c in diff}


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """Expected modes below assume the usual umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    path = tmp_path / "lower"
    path.mkdir()
    return path


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    path = tmp_path / "upper"
    path.mkdir()
    return path


# --- the data model -------------------------------------------------------------------------


def test_letters() -> None:
    assert [k.letter for k in ChangeKind] == ["A", "M", "D", "P", "T"]
    assert [k.value for k in ChangeKind] == ["added", "modified", "deleted", "mode", "times"]


def test_tree_diff_sorts_by_components_and_indexes() -> None:
    changes = [
        Change("b", ChangeKind.DELETED, old_type="file"),
        Change("a-b", ChangeKind.ADDED, new_type="file"),
        Change("a/b", ChangeKind.MODE, old_type="file", new_type="file"),
        Change("a", ChangeKind.ADDED, new_type="dir"),
        Change("c", ChangeKind.TIMES, old_type="file", new_type="file"),
        Change("d", ChangeKind.MODIFIED, old_type="file", new_type="file"),
    ]
    diff = TreeDiff(tuple(changes))
    assert [c.path for c in diff] == ["a", "a/b", "a-b", "b", "c", "d"]
    assert len(diff) == 6
    assert diff
    assert not TreeDiff()
    assert diff.added == {"a", "a-b"}
    assert diff.modified == {"d"}
    assert diff.deleted == {"b"}
    assert diff.mode_changed == {"a/b"}
    assert diff.times_changed == {"c"}
    assert diff.by_path("a/b") == changes[2]
    assert diff.by_path("zzz") is None
    assert diff == TreeDiff(tuple(reversed(changes)))
    assert str(diff) == "A a/\nP a/b\nA a-b\nD b\nT c\nM d"
    assert str(TreeDiff()) == ""


def test_tree_diff_rejects_duplicate_paths() -> None:
    change = Change("a", ChangeKind.ADDED)
    with pytest.raises(ValueError, match="Two changes"):
        TreeDiff((change, change))


def test_json_round_trip() -> None:
    odd = os.fsdecode(b"bad\xff\nname\x1b")
    diff = TreeDiff(
        (
            Change(odd, ChangeKind.ADDED, new_type="file", new_mode=0o4755, new_size=3),
            Change(
                "l", ChangeKind.MODIFIED, "symlink", "symlink", 0o777, 0o777, None, None, odd, "t"
            ),
            Change("d", ChangeKind.DELETED, old_type="dir", old_mode=0o755),
        )
    )
    text = diff.to_json()
    assert text.isascii()
    assert "\\udcff" in text
    assert TreeDiff.from_json(text) == diff
    for change in diff:
        assert Change.from_dict(json.loads(json.dumps(change.to_dict()))) == change


@pytest.mark.parametrize(
    "text",
    ["[]", '{"changes": 1}', '{"changes": [1]}', '{"changes": [{"path": "a"}]}'],
)
def test_from_json_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="serialised"):
        TreeDiff.from_json(text)


def test_from_dict_rejects_bad_details() -> None:
    with pytest.raises(ValueError, match="old_mode"):
        Change.from_dict({"path": "a", "kind": "mode", "old_mode": "0644"})
    with pytest.raises(ValueError, match="'nope'"):
        Change.from_dict({"path": "a", "kind": "nope"})


# --- LayerStack -----------------------------------------------------------------------------


@needs_root
def test_layer_stack_merges_and_honours_whiteouts(tmp_path: Path) -> None:
    top, mid, bottom = (tmp_path / n for n in ("top", "mid", "bottom"))
    for name in ("a", "b", "c", "gone", "d/x", "d/y", "o/old", "f/child", "realdir/z"):
        write(bottom / name, b"bottom")
    write(bottom / ".wh.hidden-in-bottom")
    whiteout(mid / "gone")  # kernel format
    write(mid / ".wh.c")  # fallback format
    write(mid / "d/x", b"mid")
    whiteout(mid / "d/y")
    make_opaque(mid / "o")
    write(mid / "o/new", b"mid")
    write(top / "f", b"a file over the directory f")
    write(top / "d/t", b"top")
    write(top / ".wh.d")  # hides mid's and bottom's d, but top's d stays
    (top / "link").symlink_to(bottom / "realdir")
    whiteout_files(top, mid, bottom)
    stack = LayerStack([top, mid, bottom])

    assert sorted(stack.listdir("")) == ["a", "b", "d", "f", "link", "o", "realdir"]
    assert stack.listdir("d") == {"t": stack.lookup("d/t")}
    assert sorted(stack.listdir("o")) == ["new"]
    assert stack.lookup("gone") is None
    assert stack.lookup("c") is None
    assert stack.lookup("o/old") is None
    assert stack.lookup("f/child") is None  # a non-directory above stops the descent
    assert stack.lookup("link/z") is None  # symlinks are never traversed
    assert stack.listdir("link") == {}
    assert stack.lookup(".wh.c") is None
    assert stack.lookup(".wh.hidden-in-bottom") is None
    entry = stack.lookup("a")
    assert entry is not None
    assert (entry.layer, entry.real_path) == (2, bottom / "a")
    link = stack.lookup("link")
    assert link is not None
    assert stat.S_ISLNK(link.stat.st_mode)
    root = stack.lookup("")
    assert root is not None
    assert root.real_path == top


@needs_root
@pytest.mark.parametrize("files", [False, True], ids=["kernel-format", "whiteout-files"])
def test_both_readers_of_a_stack_agree(tmp_path: Path, files: bool) -> None:
    """LayerStack and the FUSE server's MergedView share the merge rules (issue 21): every
    name, present, whited out, under an opaque or a file, resolves the same in both."""
    top, mid, bottom = layers = [tmp_path / n for n in ("top", "mid", "bottom")]
    for name in ("a", "b", "c", "gone", "d/x", "d/y", "d/z", "o/old", "f/child", "s/z", "m/k"):
        write(bottom / name, b"bottom")
    write(bottom / ".wh.hidden-in-bottom")
    whiteout(mid / "gone")
    write(mid / ".wh.c")  # a whiteout only with files
    write(mid / "d/x", b"mid")
    whiteout(mid / "d/y")
    make_opaque(mid / "o")
    write(mid / "o/new", b"mid")
    write(mid / "m/.wh..wh..opq")  # opaque only with files
    write(mid / "m/j", b"mid")
    write(top / "f", b"a file over the directory f")
    write(top / "d/t", b"top")
    whiteout(top / "d/z")
    write(top / "b", b"top")
    write(top / ".wh.d")  # with files: top's d stays, the ones below are hidden
    (top / "s").symlink_to(bottom / "s")
    if files:
        whiteout_files(*layers)
    stack = LayerStack(layers)
    view = MergedView([str(layer) for layer in layers])
    rels = {"nowhere", "d/nowhere", "nowhere/x", "s/z"}
    for layer in layers:
        rels |= {str(p.relative_to(layer)) for p in layer.rglob("*")}
    for rel in sorted(rels):
        entry, node = stack.lookup(rel), view.lookup(rel)
        expected = None if entry is None else (entry.layer, str(entry.real_path))
        assert (None if node is None else (node.layer, node.path)) == expected, rel
    for rel in ["", *sorted(rels)]:
        listed = {n: (e.layer, str(e.real_path)) for n, e in stack.listdir(rel).items()}
        assert {n: (e.layer, e.path) for n, e in view.listdir(rel).items()} == listed, rel
        assert {n: e.layer for n, e in view.entries(rel).items()} == {
            n: layer for n, (layer, _) in listed.items()
        }, rel


def test_layer_stack_without_layers() -> None:
    stack = LayerStack([])
    assert stack.lookup("") is None
    assert stack.lookup("a") is None
    assert stack.listdir("") == {}


def test_layer_stack_rejects_missing_layer(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        LayerStack([tmp_path / "missing"]).lookup("a")


# --- diff_upper -----------------------------------------------------------------------------


def test_empty_upper_is_no_change(lower: Path, upper: Path) -> None:
    write(lower / "a", b"a")
    assert diff_upper(upper, [lower]) == TreeDiff()


def test_copy_up_without_change_is_not_reported(lower: Path, upper: Path) -> None:
    write(lower / "d/e/f", b"content")
    (lower / "d/link").symlink_to("e/f")
    copy_up(lower, upper, "d/e/f")
    copy_up(lower, upper, "d/link")
    assert diff_upper(upper, [lower]) == TreeDiff()


def test_added_directory_lists_everything_below(lower: Path, upper: Path) -> None:
    write(lower / "old", b"x")
    write(upper / "new.txt", b"new", mode=0o644)
    write(upper / "nd/sub/deep.txt", b"deep")
    (upper / "nd/empty").mkdir()
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {
        "nd": "A",
        "nd/empty": "A",
        "nd/sub": "A",
        "nd/sub/deep.txt": "A",
        "new.txt": "A",
    }
    assert diff.by_path("new.txt") == Change(
        "new.txt", ChangeKind.ADDED, new_type="file", new_mode=0o644, new_size=3
    )
    assert str(diff) == "A nd/\nA nd/empty/\nA nd/sub/\nA nd/sub/deep.txt\nA new.txt"


def test_modified_content(lower: Path, upper: Path) -> None:
    write(lower / "grow", b"abc")
    write(lower / "same-size", b"abc")
    write(upper / "grow", b"abcd")
    write(upper / "same-size", b"abd")  # same size and even same mtime: content decides
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"grow": "M", "same-size": "M"}
    change = diff.by_path("grow")
    assert change is not None
    assert (change.old_size, change.new_size) == (3, 4)


def test_mode_and_times_only(lower: Path, upper: Path) -> None:
    for name in ("chmod", "touch", "rewrite", "setuid"):
        write(lower / name, b"same", mode=0o644)
    (lower / "dir").mkdir(mode=0o755)
    copy_up(lower, upper, "chmod").chmod(0o600)
    os.utime(copy_up(lower, upper, "touch"), ns=(T0, T0 + 1))
    write(upper / "rewrite", b"same", mode=0o644, mtime=None)
    copy_up(lower, upper, "setuid").chmod(0o4755)
    copy_up(lower, upper, "dir").chmod(0o700)
    os.utime(upper, ns=(0, 0))  # directory times are ignored (and the root never reported)
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"chmod": "P", "dir": "P", "rewrite": "T", "setuid": "P", "touch": "T"}
    change = diff.by_path("setuid")
    assert change is not None
    assert (change.old_mode, change.new_mode) == (0o644, 0o4755)


@needs_root
def test_owner_change_is_mode(lower: Path, upper: Path) -> None:
    write(lower / "f", b"x")
    os.chown(copy_up(lower, upper, "f"), 1234, 1234)
    assert letters(diff_upper(upper, [lower])) == {"f": "P"}


@needs_root
def test_whiteouts_delete_once_at_the_top(lower: Path, upper: Path) -> None:
    write(lower / "file", b"x")
    write(lower / "dir/sub/deep", b"x")
    write(lower / "keep/gone", b"x")
    whiteout(upper / "file")
    whiteout(upper / "dir")
    copy_up(lower, upper, "keep")
    (upper / "keep/gone").unlink()
    whiteout(upper / "keep/gone")
    whiteout(upper / "never-existed")  # whiteouts of absent names mean nothing
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"dir": "D", "file": "D", "keep/gone": "D"}
    assert diff.by_path("dir") == Change("dir", ChangeKind.DELETED, old_type="dir", old_mode=0o755)
    assert str(diff) == "D dir/\nD file\nD keep/gone"


def test_fallback_whiteout_format(lower: Path, upper: Path) -> None:
    write(lower / "file", b"x")
    write(lower / "dir/a", b"x")
    write(lower / "dir/b", b"x")
    write(upper / ".wh.file")
    write(upper / ".wh.absent")
    make_opaque(upper / "dir", "sentinel", upper)
    write(upper / "dir/b", b"x")
    write(lower / "re/a", b"x")
    write(lower / "re/b", b"x")
    write(upper / ".wh.re")  # a whiteout beside a real directory makes it opaque
    write(upper / "re/b", b"x")
    for name in ("dir", "re"):
        shutil.copystat(lower / name, upper / name)
    assert letters(diff_upper(upper, [lower])) == {"dir/a": "D", "file": "D", "re/a": "D"}


def test_wh_names_are_ordinary_in_the_kernels_format(lower: Path, upper: Path) -> None:
    # Issue 18: the kernel's whiteouts are character devices 0/0 and its opaque marks xattrs,
    # so a project's .wh.x is a file like any other; our readers took it for a whiteout.
    write(lower / "a", b"a")
    write(lower / ".wh.a", b"not a whiteout")
    write(lower / "d/f", b"f")
    write(lower / "d/.wh..wh..opq", b"not an opaque marker")
    write(upper / ".wh.new", b"new")
    write(upper / ".wh.a", b"changed")
    stack = LayerStack([lower])
    assert sorted(stack.listdir("")) == [".wh.a", "a", "d"]
    assert sorted(stack.listdir("d")) == [".wh..wh..opq", "f"]
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {".wh.a": "M", ".wh.new": "A"}
    assert diff_states(None, upper, [lower]) == diff


@needs_root
@pytest.mark.parametrize("how", ["trusted.overlay.opaque", "user.overlay.opaque", "sentinel"])
def test_opaque_dir_partially_recreated(lower: Path, upper: Path, how: str) -> None:
    """``rm -r d; mkdir d``, then one file recreated identical and one different."""
    write(lower / "d/same", b"same")
    write(lower / "d/changed", b"old")
    write(lower / "d/lost", b"lost")
    write(lower / "d/lostdir/x", b"x")
    write(lower / "other", b"o")
    if how == "user.overlay.opaque":
        try:
            os.setxattr(upper, how, b"y")
            os.removexattr(upper, how)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            gate("user-xattrs", f"the tmp filesystem refuses user.* xattrs: {exc}")
    make_opaque(upper / "d", how, upper)
    shutil.copystat(lower / "d", upper / "d")
    write(upper / "d/same", b"same")
    write(upper / "d/changed", b"new")
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"d/changed": "M", "d/lost": "D", "d/lostdir": "D"}


@needs_root
def test_opaque_dir_compares_every_level(lower: Path, upper: Path) -> None:
    write(lower / "d/s/kept", b"k")
    write(lower / "d/s/lost", b"l")
    write(lower / "d/s/t/lost-deeper", b"l")
    write(lower / "d/s/t/kept-deeper", b"k")
    make_opaque(upper / "d")
    (upper / "d/s/t").mkdir(parents=True)
    write(upper / "d/s/kept", b"k")
    write(upper / "d/s/t/kept-deeper", b"k")
    whiteout(upper / "d/s/t/stale")  # meaningless inside an opaque directory
    for sub in ("d", "d/s", "d/s/t"):
        shutil.copystat(lower / sub, upper / sub)
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"d/s/lost": "D", "d/s/t/lost-deeper": "D"}


def test_merge_dir_over_non_directory(lower: Path, upper: Path) -> None:
    """An upper directory over a lower file or symlink holds all of its new content."""
    write(lower / "realdir/x", b"x")
    (lower / "sym").symlink_to("realdir")
    write(lower / "f", b"file")
    write(upper / "sym/x", b"x")
    write(upper / "f/y", b"y")
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"f": "M", "f/y": "A", "sym": "M", "sym/x": "A"}
    change = diff.by_path("sym")
    assert change is not None
    assert (change.old_type, change.new_type, change.old_target) == ("symlink", "dir", "realdir")


@pytest.mark.usefixtures("hang_guard")
def test_symlinks_are_never_followed(lower: Path, upper: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", b"outside")
    os.mkfifo(lower / "fifo")
    (lower / "retarget").symlink_to("a")
    (lower / "out").symlink_to(outside)
    (lower / "tofifo").symlink_to("fifo")
    (lower / "same").symlink_to("x")
    (upper / "retarget").symlink_to("b")
    (upper / "out").symlink_to(tmp_path / "elsewhere")
    (upper / "tofifo").symlink_to(lower / "fifo")
    (upper / "same").symlink_to("x")
    (upper / "root").symlink_to("/")
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"out": "M", "retarget": "M", "root": "A", "tofifo": "M"}
    assert diff.by_path("retarget") == Change(
        "retarget", ChangeKind.MODIFIED, "symlink", "symlink", 0o777, 0o777, None, None, "a", "b"
    )


@pytest.mark.usefixtures("hang_guard")
def test_fifos_are_never_opened(lower: Path, upper: Path) -> None:
    os.mkfifo(lower / "same", 0o644)
    os.mkfifo(lower / "chmod", 0o644)
    os.mkfifo(lower / "to-file", 0o644)
    write(lower / "from-file", b"x")
    os.mkfifo(upper / "new", 0o644)
    os.mkfifo(upper / "same", 0o644)
    os.mkfifo(upper / "chmod", 0o600)
    write(upper / "to-file", b"x")
    os.mkfifo(upper / "from-file", 0o644)
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"chmod": "P", "from-file": "M", "new": "A", "to-file": "M"}
    change = diff.by_path("new")
    assert change is not None
    assert (change.new_type, change.new_size) == ("fifo", None)


@needs_root
def test_device_numbers(lower: Path, upper: Path) -> None:
    os.mknod(lower / "same", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(lower / "rdev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(lower / "kind", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(upper / "same", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(upper / "rdev", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.mknod(upper / "kind", stat.S_IFBLK | 0o600, os.makedev(1, 3))
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {"kind": "M", "rdev": "M"}
    change = diff.by_path("kind")
    assert change is not None
    assert (change.old_type, change.new_type) == ("chardev", "blockdev")


def test_type_changes(lower: Path, upper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(lower / "f2d", b"x")
    write(lower / "d2f/child", b"x")
    write(lower / "d2l/child", b"x")
    write(lower / "f2l", b"x")
    write(lower / "f2s", b"x")
    write(upper / "f2d/new", b"x")
    write(upper / "d2f", b"x")
    (upper / "d2l").symlink_to("f2d")
    (upper / "f2l").symlink_to("d2f")
    monkeypatch.chdir(upper)  # sun_path is short: bind by relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("f2s")
    diff = diff_upper(upper, [lower])
    assert letters(diff) == {
        "d2f": "M",
        "d2l": "M",
        "f2d": "M",
        "f2d/new": "A",
        "f2l": "M",
        "f2s": "M",
    }
    change = diff.by_path("f2s")
    assert change is not None
    assert (change.old_type, change.new_type) == ("file", "socket")


@needs_root
def test_multiple_lowers(tmp_path: Path, upper: Path) -> None:
    top, mid, bottom = (tmp_path / n for n in ("top", "mid", "bottom"))
    write(bottom / "x", b"bottom")
    write(bottom / "y", b"bottom")
    write(bottom / "d/old", b"bottom")
    write(bottom / "z", b"bottom")
    whiteout(mid / "x")
    write(mid / ".wh.y")
    whiteout_files(mid)
    make_opaque(mid / "d")
    write(mid / "d/mid", b"mid")
    write(top / "z", b"top")
    write(upper / "x", b"new")  # the lowers show no x: added, not modified
    write(upper / "y", b"bottom")
    whiteout(upper / "d/old")  # hidden by mid's opaque d already: nothing to delete
    shutil.copystat(mid / "d", upper / "d")
    write(upper / "z", b"top")
    whiteout(upper / "d/mid")
    diff = diff_upper(upper, [top, mid, bottom])
    assert letters(diff) == {"d/mid": "D", "x": "A", "y": "A"}


def test_odd_names(lower: Path, upper: Path) -> None:
    names = [b"new\nline", b"esc\x1b[2J", b"bad\xff\xfe", b"tab\there", b"caf\xc3\xa9"]
    for name in names:
        write_raw(lower, name, b"old")
        write_raw(upper, name, b"new!")
    (upper / os.fsdecode(b"dir\xff")).mkdir()
    write_raw(upper, b"dir\xff/in\x1b", b"x")
    assert b"dir\xff" in os.listdir(os.fsencode(upper))  # raw bytes wanted
    diff = diff_upper(upper, [lower])
    expected = {os.fsdecode(n): "M" for n in names}
    expected |= {os.fsdecode(b"dir\xff"): "A", os.fsdecode(b"dir\xff/in\x1b"): "A"}
    assert letters(diff) == expected
    assert TreeDiff.from_json(diff.to_json()) == diff
    text = str(diff)
    assert text == (
        "M bad\\xff\\xfe\nM caf\u00e9\nA dir\\xff/\nA dir\\xff/in\\x1b\n"
        "M esc\\x1b[2J\nM new\\nline\nM tab\\there"
    )
    assert "\x1b" not in text
    assert len(text.splitlines()) == len(diff)


@needs_root
def test_ignore(lower: Path, upper: Path) -> None:
    write(lower / "gone", b"x")
    write(lower / "keep/gone", b"x")
    whiteout(upper / "gone")
    whiteout(upper / "keep/gone")
    shutil.copystat(lower / "keep", upper / "keep")
    write(upper / "build/out/x.o", b"x")
    write(upper / "new", b"x")
    seen: list[str] = []

    def ignore(rel: str) -> bool:
        seen.append(rel)
        return rel in ("build", "gone", "keep/gone")

    assert letters(diff_upper(upper, [lower], ignore=ignore)) == {"new": "A"}
    assert "build/out" not in seen
    assert "" not in seen


def test_unreadable_directory(lower: Path, upper: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(lower / "locked/a", b"x")
    write(upper / "locked/a", b"changed")
    write(upper / "newlocked/b", b"x")
    shutil.copystat(lower / "locked", upper / "locked")
    real_scandir = os.scandir
    refused = {upper / "locked", upper / "newlocked"}

    def scandir(path: Path) -> Iterator[os.DirEntry[str]]:
        if Path(path) in refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert letters(diff_upper(upper, [lower])) == {"locked": "M", "newlocked": "A"}
    refused.add(upper)
    with pytest.raises(PermissionError):
        diff_upper(upper, [lower])


@pytest.mark.parametrize(
    ("mtime", "expected"),
    [(T0, {"chmod": "P"}), (T0 + 1, {"chmod": "M", "same": "M"})],
)
def test_unreadable_file_is_judged_by_mtime(
    lower: Path, upper: Path, monkeypatch: pytest.MonkeyPatch, mtime: int, expected: dict[str, str]
) -> None:
    """Content that cannot be read counts as written exactly when the mtime moved."""
    for name, mode in (("same", 0o644), ("chmod", 0o600)):
        write(lower / name, b"abc", mode=0o644)
        write(upper / name, b"abc", mode=mode, mtime=mtime)
    real_open = os.open

    def refuse(path: Path, flags: int, mode: int = 0o777) -> int:
        if Path(path).parent == upper:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    diff = diff_upper(upper, [lower])
    monkeypatch.undo()
    assert letters(diff) == expected


def test_no_lowers(upper: Path) -> None:
    write(upper / "d/f", b"x")
    assert letters(diff_upper(upper, [])) == {"d": "A", "d/f": "A"}


# --- diff_trees, and the same diff from both -------------------------------------------------


def build_lower(lower: Path) -> None:
    for name in ("keep", "edit", "chmod", "touch", "rewrite", "gone", "f2d", "merge/inner"):
        write(lower / name, b"content of " + name.encode())
    write(lower / "same-size", b"aaaa")
    write(lower / "gone-dir/sub/deep", b"x")
    write(lower / "d2f/child", b"x")
    for name in ("same", "changed", "lost", "sub/deep-kept", "sub/deep-lost"):
        write(lower / "opq" / name, b"opq " + name.encode())
    (lower / "link").symlink_to("keep")
    os.mkfifo(lower / "fifo", 0o644)


def apply_ops(root: Path) -> None:
    """What the test did, applied to a full copy of the lower tree."""
    write(root / "edit", b"a longer new content", mtime=None)
    write(root / "same-size", b"bbbb", mtime=None)
    (root / "chmod").chmod(0o600)
    os.utime(root / "touch", ns=(T0, T0 + 10**9))
    write(root / "rewrite", b"content of rewrite", mtime=None)
    (root / "gone").unlink()
    shutil.rmtree(root / "gone-dir")
    (root / "link").unlink()
    (root / "link").symlink_to("edit")
    (root / "f2d").unlink()
    write(root / "f2d/child", b"x")
    shutil.rmtree(root / "d2f")
    write(root / "d2f", b"now a file")
    shutil.rmtree(root / "opq")
    (root / "opq/sub").mkdir(parents=True)
    write(root / "opq/same", b"opq same")
    write(root / "opq/changed", b"opq new", mtime=None)
    write(root / "opq/sub/deep-kept", b"opq sub/deep-kept")
    write(root / "merge/new", b"x")
    write(root / "new-dir/a/b", b"x")
    (root / "fifo").chmod(0o600)


def build_upper(lower: Path, upper: Path) -> None:
    """The same operations, as overlayfs records them in its upper layer."""
    write(upper / "edit", b"a longer new content", mtime=None)
    write(upper / "same-size", b"bbbb", mtime=None)
    copy_up(lower, upper, "chmod").chmod(0o600)
    os.utime(copy_up(lower, upper, "touch"), ns=(T0, T0 + 10**9))
    write(upper / "rewrite", b"content of rewrite", mtime=None)
    whiteout(upper / "gone")
    whiteout(upper / "gone-dir")
    (upper / "link").symlink_to("edit")
    make_opaque(upper / "f2d")
    write(upper / "f2d/child", b"x")
    write(upper / "d2f", b"now a file")
    make_opaque(upper / "opq")
    (upper / "opq/sub").mkdir()
    write(upper / "opq/same", b"opq same")
    write(upper / "opq/changed", b"opq new", mtime=None)
    write(upper / "opq/sub/deep-kept", b"opq sub/deep-kept")
    copy_up(lower, upper, "merge")
    write(upper / "merge/new", b"x")
    write(upper / "new-dir/a/b", b"x")
    copy_up(lower, upper, "fifo").chmod(0o600)


EXPECTED = {
    "chmod": "P",
    "d2f": "M",
    "edit": "M",
    "f2d": "M",
    "f2d/child": "A",
    "fifo": "P",
    "gone": "D",
    "gone-dir": "D",
    "link": "M",
    "merge/new": "A",
    "new-dir": "A",
    "new-dir/a": "A",
    "new-dir/a/b": "A",
    "opq/changed": "M",
    "opq/lost": "D",
    "opq/sub/deep-lost": "D",
    "rewrite": "T",
    "same-size": "M",
    "touch": "T",
}


@needs_root
@pytest.mark.usefixtures("hang_guard")
def test_diff_trees_matches_diff_upper(lower: Path, upper: Path, tmp_path: Path) -> None:
    build_lower(lower)
    new = tmp_path / "new"
    clone(lower, new)
    assert diff_trees(new, [lower]) == TreeDiff()
    apply_ops(new)
    build_upper(lower, upper)
    from_trees = diff_trees(new, [lower])
    assert letters(from_trees) == EXPECTED
    assert diff_upper(upper, [lower]) == from_trees


@needs_root
def test_diff_trees_over_several_lowers(tmp_path: Path) -> None:
    top, bottom, new = tmp_path / "top", tmp_path / "bottom", tmp_path / "new"
    write(bottom / "hidden", b"x")
    write(bottom / "d/old", b"x")
    write(bottom / "kept", b"x")
    whiteout(top / "hidden")
    make_opaque(top / "d")
    write(top / "d/new", b"x")
    write(new / "kept", b"x")
    write(new / "hidden", b"x")
    (new / "d").mkdir()
    shutil.copystat(top / "d", new / "d")
    assert letters(diff_trees(new, [top, bottom])) == {"d/new": "D", "hidden": "A"}


def test_diff_trees_trusts_unchanged_stat(lower: Path, tmp_path: Path) -> None:
    """Same size, mtime, mode and owner: diff_trees does not read; diff_upper does."""
    write(lower / "f", b"old!")
    write(tmp_path / "new/f", b"new!")
    write(tmp_path / "upper/f", b"new!")
    assert diff_trees(tmp_path / "new", [lower]) == TreeDiff()
    assert letters(diff_upper(tmp_path / "upper", [lower])) == {"f": "M"}


def test_diff_trees_skip_and_ignore(lower: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    write(lower / "mnt/a", b"x")
    write(new / "mnt/b", b"x")
    write(new / "private/state", b"x")
    write(new / "added", b"x")
    write(new / "cache/x", b"x")
    diff = diff_trees(
        new,
        [lower],
        skip=[new / "mnt", new / "private", tmp_path / "elsewhere"],
        ignore=lambda rel: rel == "cache",
    )
    assert letters(diff) == {"added": "A"}
    assert diff_trees(new, [lower], skip=[new]) == TreeDiff()


def test_diff_trees_on_odd_names(lower: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    bname = b"\xff\x1b\n"
    write_raw(lower, bname, b"x")
    write_raw(new, b"other\xfe", b"x")
    diff = diff_trees(new, [lower])
    assert letters(diff) == {os.fsdecode(bname): "D", os.fsdecode(b"other\xfe"): "A"}
    assert str(diff) == "A other\\xfe\nD \\xff\\x1b\\n"


def ignore_nothing(rel: str) -> bool:
    return False


@pytest.mark.parametrize("differ", [diff_upper, diff_trees])
def test_ignore_callback_type(differ: Callable[..., TreeDiff], lower: Path, upper: Path) -> None:
    write(upper / "a", b"x")
    assert letters(differ(upper, [lower], ignore=ignore_nothing)) == {"a": "A"}
