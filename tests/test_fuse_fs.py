"""The FUSE overlay filesystem (``pytest_overlay._fuse``), mounted for real.

Every mount is served by its own server process and closed by the fixture, which then checks
that no mount is left.  The differential tests run the same shell script on a kernel overlayfs
mount (in a private mount namespace made by ``unshare``) and on the FUSE mount, and compare
the merged view and ``diff_upper`` of the upper layer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_overlay._diff import TreeDiff, diff_upper
from pytest_overlay._errors import MountError
from pytest_overlay._fuse import client
from pytest_overlay._layerwrite import make_whiteout, set_opaque
from tests._gates import gate, kernel_reason, server_libfuse
from tests._run import run, started
from tests._unpriv import Namespace
from tests._waits import alive, mounted, wait_until

Snapshot = dict[str, tuple[Any, ...]]


@pytest.fixture(autouse=True)
def needs_fuse() -> None:
    """Every test here mounts FUSE, in a private mount namespace so the host never sees it."""
    gate("fuse", client.availability())
    if os.geteuid() == 0:
        from pytest_overlay import _namespaces

        _namespaces.ensure_private_mount_namespace()


class Layers:
    """Two lower layers, an upper and a work directory, and a mount point."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.top = root / "l1"
        self.bottom = root / "l2"
        self.upper = root / "upper"
        self.work = root / "work"
        self.mnt = root / "mnt"
        for path in (self.top, self.bottom, self.upper, self.work, self.mnt):
            path.mkdir()

    @property
    def lowers(self) -> list[Path]:
        return [self.top, self.bottom]

    def diff(self) -> list[dict[str, Any]]:
        return [change.to_dict() for change in diff_upper(self.upper, self.lowers)]


def _populate(layers: Layers) -> None:
    """A small tree over two layers, with a whiteout and an opaque directory in the top one."""
    bottom, top = layers.bottom, layers.top
    (bottom / "a").write_text("a from bottom\n")
    (bottom / "d").mkdir()
    (bottom / "d" / "b").write_text("b\n")
    (bottom / "d" / "c").write_text("c\n")
    (bottom / "d" / "sub").mkdir()
    (bottom / "d" / "sub" / "deep").write_text("deep\n")
    (bottom / "gone").write_text("whited out by the top layer\n")
    (bottom / "opq").mkdir()
    (bottom / "opq" / "hidden").write_text("hidden by an opaque directory\n")
    (bottom / "link").symlink_to("a")
    (bottom / "mode").write_text("mode\n")
    os.chmod(bottom / "mode", 0o640)
    (top / "a").write_text("a from top\n")
    (top / "t").write_text("t\n")
    (top / "d").mkdir()
    (top / "d" / "e").write_text("e\n")
    make_whiteout(str(top), "gone", layer=str(top))
    (top / "opq").mkdir()
    set_opaque(str(top / "opq"), as_root=os.geteuid() == 0, layer=str(top))
    (top / "opq" / "shown").write_text("shown\n")


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    """Populated layers, not mounted."""
    result = Layers(tmp_path)
    _populate(result)
    return result


@pytest.fixture
def fuse(layers: Layers) -> Iterator[Layers]:
    """The layers mounted over FUSE; unmounted (and checked gone) afterwards."""
    handle = client.start(layers.lowers, layers.upper, layers.work, layers.mnt)
    try:
        yield layers
    finally:
        handle.close()
        assert handle.process.returncode is not None
        assert not mounted(layers.mnt)


def snapshot(root: Path) -> Snapshot:
    """The tree under *root*: type, permission bits, owner, size or hash, link target."""
    result: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            detail: Any = None
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            result[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, detail)
    return result


# -- the merged view ----------------------------------------------------------------------


def test_view_of_lowers(fuse: Layers) -> None:
    mnt = fuse.mnt
    assert sorted(os.listdir(mnt)) == ["a", "d", "link", "mode", "opq", "t"]
    assert (mnt / "a").read_text() == "a from top\n"
    assert sorted(os.listdir(mnt / "d")) == ["b", "c", "e", "sub"]
    assert os.listdir(mnt / "opq") == ["shown"]
    assert not (mnt / "gone").exists()
    assert os.readlink(mnt / "link") == "a"
    assert stat.S_IMODE((mnt / "mode").stat().st_mode) == 0o640
    assert (mnt / "d" / "sub" / "deep").read_text() == "deep\n"
    # readdir gives types and inode numbers, so no stat is needed to tell a directory
    with os.scandir(mnt / "d") as it:
        kinds = {entry.name: (entry.is_dir(follow_symlinks=False), entry.inode()) for entry in it}
    assert kinds["sub"][0]
    assert not kinds["b"][0]
    assert kinds["b"][1] == (fuse.bottom / "d" / "b").stat().st_ino
    assert (mnt / "a").stat().st_ino == (fuse.top / "a").stat().st_ino
    assert (mnt / "a").stat().st_mtime_ns == (fuse.top / "a").stat().st_mtime_ns
    assert fuse.diff() == []
    assert os.listdir(fuse.upper) == []


def test_find_lists_everything(fuse: Layers) -> None:
    out = subprocess.run(
        ["find", ".", "-type", "f"], cwd=fuse.mnt, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(out) == sorted(
        ["./a", "./t", "./mode", "./d/b", "./d/c", "./d/e", "./d/sub/deep", "./opq/shown"]
    )


def test_readdir_agrees_with_lstat(fuse: Layers) -> None:
    # readdir answers from d_type and d_ino without an lstat per name: what it says of every
    # kind of entry, from every layer and after copy-up, must match what lstat says.
    mnt = fuse.mnt
    with open(mnt / "d" / "b", "a") as f:
        f.write("copied up\n")
    (mnt / "d" / "new").write_text("new\n")
    os.mkfifo(mnt / "d" / "fifo")
    os.mknod(mnt / "d" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.symlink("b", mnt / "d" / "to-b")
    (mnt / "d" / "c").unlink()
    for directory in (mnt, mnt / "d", mnt / "d" / "sub", mnt / "opq"):
        with os.scandir(directory) as it:
            listed = {
                entry.name: (
                    entry.inode(),
                    entry.is_dir(follow_symlinks=False),
                    entry.is_file(follow_symlinks=False),
                    entry.is_symlink(),
                )
                for entry in it
            }
        for name, (ino, is_dir, is_file, is_link) in listed.items():
            st = (directory / name).lstat()
            assert ino == st.st_ino, name
            assert (is_dir, is_file, is_link) == (
                stat.S_ISDIR(st.st_mode),
                stat.S_ISREG(st.st_mode),
                stat.S_ISLNK(st.st_mode),
            ), name
    with os.scandir(mnt / "d") as it:
        kinds = {entry.name: entry for entry in it}
    assert "c" not in kinds
    assert not kinds["fifo"].is_file()
    assert not kinds["fifo"].is_dir()


# -- copy-up ------------------------------------------------------------------------------


def test_write_append_truncate_copy_up(fuse: Layers) -> None:
    mnt = fuse.mnt
    ino = (mnt / "d" / "b").stat().st_ino
    with open(mnt / "d" / "b", "a") as f:
        f.write("more\n")
    (mnt / "d" / "c").write_text("rewritten\n")
    os.truncate(mnt / "mode", 2)
    assert (mnt / "d" / "b").read_text() == "b\nmore\n"
    assert (mnt / "d" / "c").read_text() == "rewritten\n"
    assert (mnt / "mode").read_text() == "mo"
    assert (mnt / "d" / "b").stat().st_ino == ino  # stable across the copy-up
    assert (fuse.bottom / "d" / "b").read_text() == "b\n"  # lowers untouched
    assert (fuse.upper / "d" / "b").read_text() == "b\nmore\n"
    assert stat.S_IMODE((fuse.upper / "mode").stat().st_mode) == 0o640
    assert sorted(os.listdir(fuse.upper / "d")) == ["b", "c"]  # parent copied, not its children
    assert {c["path"]: c["kind"] for c in fuse.diff()} == {
        "d/b": "modified",
        "d/c": "modified",
        "mode": "modified",
    }


def test_read_only_open_does_not_copy_up(fuse: Layers) -> None:
    with open(fuse.mnt / "d" / "b", "rb") as f:
        assert f.read() == b"b\n"
    assert os.listdir(fuse.upper) == []


def test_chmod_chown_utime(fuse: Layers) -> None:
    mnt = fuse.mnt
    os.chmod(mnt / "a", 0o600)
    os.utime(mnt / "d" / "b", ns=(1_000_000_000_123_456_789, 1_000_000_000_987_654_321))
    os.chown(mnt / "t", 1234, 4321)
    assert stat.S_IMODE((mnt / "a").stat().st_mode) == 0o600
    assert (mnt / "d" / "b").stat().st_mtime_ns == 1_000_000_000_987_654_321
    assert (mnt / "t").stat().st_uid == 1234
    assert (fuse.upper / "d" / "b").stat().st_mtime_ns == 1_000_000_000_987_654_321
    kinds = {c["path"]: c["kind"] for c in fuse.diff()}
    assert kinds == {"a": "mode", "d/b": "times", "t": "mode"}


def test_xattrs(fuse: Layers) -> None:
    path = fuse.mnt / "d" / "c"
    os.setxattr(path, "user.test", b"value")
    assert os.getxattr(path, "user.test") == b"value"
    assert os.getxattr(fuse.upper / "d" / "c", "user.test") == b"value"
    assert os.listxattr(fuse.mnt / "opq") == []  # the overlay's own are hidden
    # As the kernel: as root it keeps trusted.overlay.* for itself, and user.overlay.* are a
    # file's own; an ordinary user's overlay (userxattr) keeps user.overlay.* (issue 18).
    own = "trusted.overlay.x" if os.geteuid() == 0 else "user.overlay.x"
    with pytest.raises(OSError, match="not supported"):
        os.setxattr(path, own, b"y")
    if os.geteuid() == 0:
        os.setxattr(path, "user.overlay.x", b"the file's")
        assert os.listxattr(path) == ["user.test", "user.overlay.x"]


# -- deleting -----------------------------------------------------------------------------


def _is_kernel_whiteout(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_unlink_and_rmdir_make_whiteouts(fuse: Layers) -> None:
    mnt = fuse.mnt
    (mnt / "a").unlink()
    (mnt / "d" / "sub" / "deep").unlink()
    (mnt / "d" / "sub").rmdir()
    (mnt / "new").write_text("upper only\n")
    (mnt / "new").unlink()
    assert not (mnt / "a").exists()
    assert sorted(os.listdir(mnt / "d")) == ["b", "c", "e"]
    assert _is_kernel_whiteout(fuse.upper / "a")
    assert _is_kernel_whiteout(fuse.upper / "d" / "sub")
    assert not (fuse.upper / "new").exists()  # nothing below: no whiteout
    with pytest.raises(OSError, match="not empty"):
        (mnt / "d").rmdir()
    assert {c["path"]: c["kind"] for c in fuse.diff()} == {"a": "deleted", "d/sub": "deleted"}


def test_recreated_directory_is_opaque(fuse: Layers) -> None:
    mnt = fuse.mnt
    subprocess.run(["rm", "-r", str(mnt / "d")], check=True)
    (mnt / "d").mkdir()
    (mnt / "d" / "only").write_text("only\n")
    assert os.listdir(mnt / "d") == ["only"]
    name = "trusted.overlay.opaque" if os.geteuid() == 0 else "user.overlay.opaque"
    assert os.getxattr(fuse.upper / "d", name) == b"y"
    kinds = {c["path"]: c["kind"] for c in fuse.diff()}
    assert kinds == {
        "d/b": "deleted",
        "d/c": "deleted",
        "d/e": "deleted",
        "d/sub": "deleted",
        "d/only": "added",
    }


def test_whiteout_names_are_ordinary_names(fuse: Layers) -> None:
    # Issue 18: as in kernel overlayfs (whiteouts are 0/0 character devices), a name starting
    # with .wh. is a file like any other, in a lower layer and in the upper.
    (fuse.bottom / "d" / ".wh.b").write_text("a lower file, not a whiteout\n")
    (fuse.mnt / ".wh.x").write_text("x")
    assert (fuse.mnt / ".wh.x").read_text() == "x"
    assert {".wh.x", "a"} <= set(os.listdir(fuse.mnt))
    assert {"b", ".wh.b"} <= set(os.listdir(fuse.mnt / "d"))
    os.rename(fuse.mnt / ".wh.x", fuse.mnt / "d" / ".wh.c")
    assert diff_upper(fuse.upper, fuse.lowers).added == {"d/.wh.c"}


# -- renaming and links -------------------------------------------------------------------


def test_rename_lower_file(fuse: Layers) -> None:
    mnt = fuse.mnt
    ino = (mnt / "d" / "b").stat().st_ino
    (mnt / "d" / "b").rename(mnt / "b2")
    (mnt / "t").rename(mnt / "a")  # over a file of both layers
    assert (mnt / "b2").read_text() == "b\n"
    assert (mnt / "b2").stat().st_ino == ino
    assert (mnt / "a").read_text() == "t\n"
    assert sorted(os.listdir(mnt)) == ["a", "b2", "d", "link", "mode", "opq"]
    assert {c["path"]: c["kind"] for c in fuse.diff()} == {
        "a": "modified",
        "b2": "added",
        "d/b": "deleted",
        "t": "deleted",
    }


def test_rename_lower_directory(fuse: Layers) -> None:
    """The kernel says EXDEV here (without redirect_dir); we move the whole merged tree."""
    mnt = fuse.mnt
    before = snapshot(mnt / "d")
    (mnt / "d").rename(mnt / "moved")
    assert not (mnt / "d").exists()
    assert snapshot(mnt / "moved") == before
    assert _is_kernel_whiteout(fuse.upper / "d")
    (mnt / "moved").rename(mnt / "opq2")
    (mnt / "opq").rename(mnt / "d")  # back over the whited-out name: opaque
    assert os.listdir(mnt / "d") == ["shown"]
    changes = {c["path"]: c["kind"] for c in fuse.diff()}
    assert changes == {
        "d/b": "deleted",
        "d/c": "deleted",
        "d/e": "deleted",
        "d/shown": "added",
        "d/sub": "deleted",
        "opq": "deleted",
        "opq2": "added",
        "opq2/b": "added",
        "opq2/c": "added",
        "opq2/e": "added",
        "opq2/sub": "added",
        "opq2/sub/deep": "added",
    }


def test_rename_onto_non_empty_directory_fails(fuse: Layers) -> None:
    (fuse.mnt / "x").mkdir()
    with pytest.raises(OSError, match="not empty"):
        (fuse.mnt / "x").rename(fuse.mnt / "d")


def test_symlink_and_hardlink(fuse: Layers) -> None:
    mnt = fuse.mnt
    (mnt / "sl").symlink_to("d/b")
    os.link(mnt / "d" / "c", mnt / "hl")
    assert (mnt / "sl").read_text() == "b\n"
    assert (mnt / "hl").stat().st_ino == (mnt / "d" / "c").stat().st_ino
    assert (mnt / "hl").stat().st_nlink == 2
    (mnt / "hl").write_text("through the link\n")
    assert (fuse.upper / "d" / "c").read_text() == "through the link\n"
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO((mnt / "fifo").lstat().st_mode)
    assert {c["path"]: c["kind"] for c in fuse.diff()} == {
        "d/c": "modified",
        "fifo": "added",
        "hl": "added",
        "sl": "added",
    }


def _hard_link_limit(request: pytest.FixtureRequest) -> None:
    if server_libfuse() == 2:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="known limitation on libfuse 2: each name of a hard link is its own "
                "kernel inode in libfuse's path API, and nothing can invalidate the others",
            )
        )


def test_write_through_hard_link_seen_by_other_link(
    fuse: Layers, request: pytest.FixtureRequest
) -> None:
    _hard_link_limit(request)
    other = fuse.mnt / "d" / "c"
    assert other.read_text() == "c\n"  # the kernel now caches this name's size and pages
    os.link(other, fuse.mnt / "hl")
    assert other.stat().st_nlink == 2
    (fuse.mnt / "hl").write_text("through the link\n")
    assert other.read_text() == "through the link\n"
    assert other.stat().st_size == len("through the link\n")
    os.chmod(fuse.mnt / "hl", 0o600)
    assert stat.S_IMODE(other.stat().st_mode) == 0o600
    with open(fuse.mnt / "hl", "a") as f:
        f.write("appended\n")
    assert other.read_text() == "through the link\nappended\n"
    os.unlink(fuse.mnt / "hl")
    assert other.stat().st_nlink == 1
    assert other.read_text() == "through the link\nappended\n"


def test_write_through_a_descriptor_opened_before_the_link(
    fuse: Layers, request: pytest.FixtureRequest
) -> None:
    # Issue 18 (the state machine at 250 sequences): a descriptor opened for writing while
    # its file had one name wrote without invalidating a name linked to it later.
    _hard_link_limit(request)
    path = fuse.mnt / "new"
    with open(path, "ab", buffering=0) as writer:
        os.link(path, fuse.mnt / "hl")
        assert (fuse.mnt / "hl").read_bytes() == b""
        writer.write(b"later\n")
        assert (fuse.mnt / "hl").read_bytes().endswith(b"later\n")
        assert (fuse.mnt / "hl").stat().st_size == path.stat().st_size


@contextlib.contextmanager
def _served(layers: Layers) -> Iterator[Path]:
    handle = client.start(layers.lowers, layers.upper, layers.work, layers.mnt)
    try:
        yield layers.mnt
    finally:
        handle.close()


def test_read_handle_follows_copy_up(fuse: Layers) -> None:
    # Issue 18: a descriptor open for reading on the lower file kept reading it after the
    # copy-up, and put its old pages in the kernel's cache for every later open.
    path = fuse.mnt / "d" / "b"
    with open(path, "rb", buffering=0) as reader:
        assert reader.read() == b"b\n"
        path.write_bytes(b"rewritten, longer\n")
        assert os.pread(reader.fileno(), 64, 0) == b"rewritten, longer\n"
        with open(path, "r+b", buffering=0) as writer:
            writer.write(b"R")
        assert os.pread(reader.fileno(), 64, 0) == b"Rewritten, longer\n"
    assert path.read_bytes() == b"Rewritten, longer\n"


@pytest.mark.parametrize("where", ["lower", "upper"])
def test_unlinked_open_file_lives_on(fuse: Layers, where: str) -> None:
    # Issue 18: fstat and fchmod failed with ESTALE, ftruncate with EBADF.
    path = fuse.mnt / "d" / "b"
    if where == "upper":
        path.write_bytes(b"b\n")
    with open(path, "r+b", buffering=0) as held, open(path, "rb", buffering=0) as reader:
        os.unlink(path)
        assert not path.exists()
        assert os.fstat(held.fileno()).st_size == 2
        os.fchmod(held.fileno(), 0o600)
        assert stat.S_IMODE(os.fstat(held.fileno()).st_mode) == 0o600
        os.ftruncate(held.fileno(), 1)
        held.write(b"xyz")
        assert os.pread(reader.fileno(), 64, 0) == b"xyz"
        assert [c["path"] for c in fuse.diff()] == ["d/b"]
    # Gone with its last descriptor (the kernel sends RELEASE after close() returns).
    deadline = time.monotonic() + 5
    while os.listdir(fuse.work) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(fuse.work) == []
    assert [c["kind"] for c in fuse.diff()] == ["deleted"]


def test_unlinked_open_file_counts_a_link_less_on_its_other_name(
    fuse: Layers, request: pytest.FixtureRequest
) -> None:
    # The other name of a hard link counts one link less, as the kernel shows it, though
    # the server keeps the open file in its work directory.
    _hard_link_limit(request)
    os.link(fuse.mnt / "t", fuse.mnt / "t2")
    with open(fuse.mnt / "t", "rb") as held:
        os.unlink(fuse.mnt / "t")
        assert (fuse.mnt / "t2").stat().st_nlink == 1
        assert os.fstat(held.fileno()).st_nlink == 0


def test_unlinked_open_lower_file_is_not_copied_up(fuse: Layers) -> None:
    # A lower file open read-only cannot be copied up once unlinked: the kernel answers
    # EEXIST to fchmod.
    with open(fuse.mnt / "d" / "b", "rb") as lower:
        os.unlink(fuse.mnt / "d" / "b")
        with pytest.raises(FileExistsError):
            os.fchmod(lower.fileno(), 0o600)


def test_unlinked_open_file_in_a_removed_directory_or_fifo(fuse: Layers) -> None:
    # Documented (docs/backends.md, differences): libfuse has no path for them any more.
    with open(fuse.mnt / "d" / "sub" / "deep", "r+b", buffering=0) as held:
        shutil.rmtree(fuse.mnt / "d" / "sub")
        if server_libfuse() == 2:
            # libfuse 2 passes the server no path for it at all: writes fail too.
            with pytest.raises(FileNotFoundError):
                held.write(b"still")
            return
        held.write(b"still")
        assert os.pread(held.fileno(), 64, 0) == b"still"
        with pytest.raises(OSError, match="Stale file handle") as stale:
            os.fstat(held.fileno())
        assert stale.value.errno == errno.ESTALE
    os.mkfifo(fuse.mnt / "fifo")
    fifo = os.open(fuse.mnt / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.unlink(fuse.mnt / "fifo")
        with pytest.raises(OSError, match="Stale file handle"):
            os.fstat(fifo)
    finally:
        os.close(fifo)


def test_a_fuse_hidden_name_is_libfuses(fuse: Layers) -> None:
    # Documented (docs/backends.md, differences): libfuse hides a file unlinked while open
    # under this shape of name, so a test's own rename to one is taken for that.
    hidden = fuse.mnt / ".fuse_hidden0000000a00000001"
    os.rename(fuse.mnt / "t", hidden)
    assert hidden.read_text() == "t\n"
    assert hidden.name not in os.listdir(fuse.mnt)
    assert [(c["path"], c["kind"]) for c in fuse.diff()] == [("t", "deleted")]


def test_lower_hard_links_as_in_the_kernel(tmp_path: Path) -> None:
    # Issue 18: the copy-up of one name kept its former partner's inode number, and
    # rename() between two names of a lower file did nothing.
    layers = Layers(tmp_path)
    (layers.bottom / "a").write_text("a\n")
    os.link(layers.bottom / "a", layers.bottom / "a2")
    os.link(layers.bottom / "a", layers.bottom / "a3")
    with _served(layers) as mnt:
        assert os.path.samefile(mnt / "a", mnt / "a2")
        (mnt / "a").write_text("new a\n")
        assert not os.path.samefile(mnt / "a", mnt / "a2")
        assert ((mnt / "a").stat().st_nlink, (mnt / "a2").stat().st_nlink) == (1, 3)
        os.rename(mnt / "a2", mnt / "a3")
        assert sorted(os.listdir(mnt)) == ["a", "a3"]
        assert (mnt / "a3").read_text() == "a\n"
    assert [(c["path"], c["kind"]) for c in layers.diff()] == [
        ("a", "modified"),
        ("a2", "deleted"),
    ]


# -- real programs ------------------------------------------------------------------------


def test_sqlite(fuse: Layers) -> None:
    db = fuse.mnt / "d" / "db.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table t (x integer)")
        con.executemany("insert into t values (?)", [(i,) for i in range(1000)])
    con.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("select count(*), sum(x) from t").fetchone() == (1000, 499500)
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    finally:
        con.close()
    assert (fuse.upper / "d" / "db.sqlite").exists()


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd.parent)}
    return subprocess.run(
        ["git", "-c", "safe.directory=*", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_git_status(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    repo = layers.top
    for i in range(20):
        (repo / "src" / f"p{i % 3}").mkdir(parents=True, exist_ok=True)
        (repo / "src" / f"p{i % 3}" / f"m{i}.py").write_text(f"x = {i}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    with client.start(layers.lowers, layers.upper, layers.work, layers.mnt) as handle:
        mnt = handle.mountpoint
        assert _git(mnt, "status", "--porcelain") == ""
        (mnt / "src" / "p0" / "m0.py").write_text("x = 'changed'\n")
        (mnt / "src" / "p1" / "m1.py").unlink()
        (mnt / "new.py").write_text("")
        status = sorted(_git(mnt, "status", "--porcelain").splitlines())
        assert status == [" D src/p1/m1.py", " M src/p0/m0.py", "?? new.py"]
        found = subprocess.run(
            ["find", ".", "-name", "*.py", "-not", "-path", "./.git/*"],
            cwd=mnt,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(found) == 20
    assert not mounted(layers.mnt)


# -- the server process -------------------------------------------------------------------


def test_start_failure_reports_server_output(layers: Layers) -> None:
    with pytest.raises(MountError, match="bad mount point"):
        client.start(layers.lowers, layers.upper, layers.work, layers.root / "missing")


def test_sigterm_unmounts(layers: Layers) -> None:
    handle = client.start(layers.lowers, layers.upper, layers.work, layers.mnt)
    try:
        handle.process.send_signal(signal.SIGTERM)
        assert handle.process.wait(10) == 0
        assert not mounted(layers.mnt)
    finally:
        handle.close()


def test_server_dies_with_parent(layers: Layers) -> None:
    """SIGKILL the process that started the server: it dies and its mount goes too."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pytest_overlay._fuse import client
        handle = client.start({[str(p) for p in layers.lowers]!r}, {str(layers.upper)!r},
                              {str(layers.work)!r}, {str(layers.mnt)!r})
        print(handle.process.pid, flush=True)
        time.sleep(60)
        """
    )
    argv = [sys.executable, "-c", script]
    with started(argv, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            server = int(parent.stdout.readline())
            assert mounted(layers.mnt)
            assert (layers.mnt / "t").read_text() == "t\n"
            parent.kill()
            parent.wait()
            assert wait_until(lambda: not alive(server))
            assert wait_until(lambda: not mounted(layers.mnt))
        finally:
            if mounted(layers.mnt):
                subprocess.run(["umount", "-l", str(layers.mnt)], check=False)


# -- differential: kernel overlayfs as the oracle -----------------------------------------

SCENARIOS = {
    "write": "echo new > a; echo more >> d/b; : > d/c; printf x > d/sub/deep",
    "delete": "rm a d/b; rm -r d/sub; rm -r opq; rm link",
    "recreate_dir": "rm -r d; mkdir d; echo z > d/z; mkdir opq2",
    "recreate_file": "rm a; echo again > a; rm t; mkdir t",
    "rename_file": "mv a a2; mv d/b b3; mv t d/c",
    "links": "ln -s d/b sl; ln d/c hl; mkfifo p; ln -s nowhere dangling",
    "metadata": "chmod 600 a; touch -h -d @1000000000 d/b; chmod 700 d; chmod 644 mode",
    "new_tree": "mkdir -p x/y/z; echo 1 > x/y/z/f; cp -a d x/copy; rm -r x/copy/sub",
    "move_upper_dir": "mkdir n; echo 1 > n/f; mv n d/n; mv d/n/f d/n/g",
}


def _kernel_run(layers: Layers, script: str) -> Snapshot:
    """Run *script* in a kernel overlay mount in a private mount namespace of its own (the
    suite's prelude, ``tests._run.run``); snapshot the view."""
    lowerdir = ":".join(str(p) for p in layers.lowers)
    options = f"lowerdir={lowerdir},upperdir={layers.upper},workdir={layers.work}"
    dump = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); "
        "from tests.test_fuse_fs import snapshot; from pathlib import Path; "
        "print(json.dumps(snapshot(Path(sys.argv[1]))))"
    )
    shell = (
        f'mount -t overlay overlay -o "$1" "$2" && cd "$2" && ({script}) && cd / && '
        f'"$3" -c "$4" "$2" "$5"; rc=$?; umount "$2"; exit $rc'
    )
    repo = Path(__file__).parent.parent
    argv = ["sh", "-c", shell, "sh", options, str(layers.mnt), sys.executable, dump, str(repo)]
    result = run(argv, cwd=repo, namespace=Namespace(), timeout=120)
    assert result.returncode == 0, result.output
    return {k: tuple(v) for k, v in json.loads(result.stdout).items()}


def _fuse_run(layers: Layers, script: str) -> Snapshot:
    with client.start(layers.lowers, layers.upper, layers.work, layers.mnt) as handle:
        subprocess.run(["sh", "-c", script], cwd=handle.mountpoint, check=True)
        view = snapshot(handle.mountpoint)
    assert not mounted(layers.mnt)
    return {k: tuple(v) for k, v in json.loads(json.dumps(view)).items()}


def _diff_dicts(diff: TreeDiff) -> list[dict[str, Any]]:
    return [change.to_dict() for change in diff]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_as_kernel(tmp_path: Path, name: str) -> None:
    gate("kernel", kernel_reason())
    (tmp_path / "k").mkdir()
    (tmp_path / "f").mkdir()
    kernel, fuse = Layers(tmp_path / "k"), Layers(tmp_path / "f")
    for layers in (kernel, fuse):
        _populate(layers)
    script = SCENARIOS[name]
    kernel_view = _kernel_run(kernel, script)
    fuse_view = _fuse_run(fuse, script)
    assert fuse_view == kernel_view
    kernel_diff = _diff_dicts(diff_upper(kernel.upper, kernel.lowers))
    fuse_diff = _diff_dicts(diff_upper(fuse.upper, fuse.lowers))
    assert fuse_diff == kernel_diff
    assert kernel_diff


def test_directory_rename_is_exdev_in_kernel_only(tmp_path: Path) -> None:
    """The one deliberate difference: moving a lower directory (``mv`` falls back to copying
    on EXDEV in the kernel, so both end with the same view and the same diff)."""
    gate("kernel", kernel_reason())
    (tmp_path / "k").mkdir()
    (tmp_path / "f").mkdir()
    kernel, fuse = Layers(tmp_path / "k"), Layers(tmp_path / "f")
    for layers in (kernel, fuse):
        _populate(layers)
    script = "mv d moved"
    probe = 'python3 -c \'import os; os.rename("opq", "opq3")\' 2>/dev/null && echo renamed'
    kernel_view = _kernel_run(kernel, f"{script}; {probe} > /dev/null || true")
    fuse_view = _fuse_run(fuse, f"{script}; {probe} > /dev/null")
    assert "opq" in kernel_view  # rename(2) failed with EXDEV
    assert "opq3" in fuse_view
    assert {k: v for k, v in fuse_view.items() if not k.startswith("opq")} == {
        k: v for k, v in kernel_view.items() if not k.startswith("opq")
    }
    kernel_diff = _diff_dicts(diff_upper(kernel.upper, kernel.lowers))
    fuse_diff = _diff_dicts(diff_upper(fuse.upper, fuse.lowers))
    strip = [c for c in fuse_diff if not c["path"].startswith("opq")]
    assert strip == [c for c in kernel_diff if not c["path"].startswith("opq")]
