"""The layer writer on a filesystem without xattrs: opaque directories survive being copied.

A kept layer or a snapshot layer is copied from where the backend wrote it (a tmpfs with
xattrs) into pytest's cache directory, which may be on a filesystem that refuses ``user.*`` and
``trusted.*`` xattrs.  An opaque directory must then carry the ``.wh..wh..opq`` sentinel, or
the files the test deleted below it come back when the layer is read over the lowers.  ramfs
refuses every xattr and is mounted here for real (root, in this thread's private mount
namespace); the copied layer is read back through :mod:`pytest_overlay._layers` and through
the FUSE server.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_overlay import _namespaces, _syscalls
from pytest_overlay._backends.base import Backend
from pytest_overlay._backends.copying import CopyBackend
from pytest_overlay._backends.fuse import FuseBackend
from pytest_overlay._backends.kernel import KernelBackend
from pytest_overlay._diff import TreeDiff
from pytest_overlay._fuse import client
from pytest_overlay._keep import Record, keep_test
from pytest_overlay._layers import LayerStack
from pytest_overlay._layerwrite import copy_layer
from tests._gates import fuse_reason, gate, kernel_reason


@pytest.fixture
def no_xattrs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs, which refuses user and trusted xattrs alike."""
    gate("ramfs", None if os.geteuid() == 0 else "mounting a ramfs needs root")
    _namespaces.ensure_private_mount_namespace()
    path = tmp_path / "ramfs"
    path.mkdir()
    _syscalls.mount("ramfs", path, "ramfs", 0, "mode=0755")
    try:
        for name in ("user.overlay.opaque", "trusted.overlay.opaque"):
            with pytest.raises(OSError, match="not supported") as refused:
                os.setxattr(path, name, b"y")
            assert refused.value.errno == errno.EOPNOTSUPP
        yield path
    finally:
        _syscalls.umount(path, _syscalls.MNT_DETACH)


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    """The lower tree: what the test deletes below its opaque directories, and a file."""
    root = tmp_path / "lower"
    for rel in ("d/old", "d/sub/older", "gone", "keep/other", "keep/deep/old"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{rel} from the lower layer\n")
    return root


def _upper(tmp_path: Path) -> Path:
    """An upper layer as kernel overlayfs writes it after ``rm -rf d keep/deep gone`` and
    ``mkdir d keep/deep`` with a new file in each: two opaque directories and a whiteout."""
    upper = tmp_path / "upper"
    name = "trusted.overlay.opaque" if os.geteuid() == 0 else "user.overlay.opaque"
    for rel in ("d", "keep/deep"):
        (upper / rel).mkdir(parents=True)
        (upper / rel / "new").write_text("new\n")
        os.setxattr(upper / rel, name, b"y")
    os.mknod(upper / "gone", stat.S_IFCHR, 0)
    return upper


def _assert_test_view(names: Callable[[str], list[str]], exists: Callable[[str], bool]) -> None:
    """What the test left: the deleted lower files stay deleted."""
    assert names("d") == ["new"]
    assert names("keep") == ["deep", "other"]
    assert names("keep/deep") == ["new"]
    assert not exists("gone")
    assert not exists("d/old")
    assert not exists("d/sub")


def _assert_read_back(layer: Path, lower: Path) -> None:
    stack = LayerStack([layer, lower])
    _assert_test_view(
        lambda rel: list(stack.listdir(rel)), lambda rel: stack.lookup(rel) is not None
    )


def _record(lower: Path) -> Record:
    return Record(
        nodeid="tests/test_x.py::test_opaque",
        outcome="failed",
        phases={"call": "failed"},
        backend="kernel",
        lowers=[str(lower)],
        time="2026-01-01T00:00:00+00:00",
        diff=json.loads(TreeDiff().to_json()),
        report="",
    )


def _copy_kept(upper: Path, lower: Path, store: Path) -> Path:
    return keep_test(store, _record(lower), upper) / "upper"


def _copy_snapshot(upper: Path, lower: Path, store: Path) -> Path:
    # What the layer cache does with the layer a build left.
    copy_layer(upper, store / "layer")
    return store / "layer"


COPIES = {"kept layer": _copy_kept, "snapshot layer": _copy_snapshot}


@pytest.mark.parametrize("copy", COPIES.values(), ids=COPIES.keys())
def test_copied_layer_keeps_opaque_directories_without_xattrs(
    copy: Callable[[Path, Path, Path], Path], tmp_path: Path, lower: Path, no_xattrs: Path
) -> None:
    layer = copy(_upper(tmp_path), lower, no_xattrs)
    _assert_read_back(layer, lower)


def test_fuse_server_reads_the_copied_layer(tmp_path: Path, lower: Path, no_xattrs: Path) -> None:
    gate("fuse", client.availability())
    layer = _copy_kept(_upper(tmp_path), lower, no_xattrs)
    for name in ("upper2", "work2", "mnt"):
        (tmp_path / name).mkdir()
    mnt = tmp_path / "mnt"
    with client.start([layer, lower], tmp_path / "upper2", tmp_path / "work2", mnt):
        _assert_test_view(
            lambda rel: sorted(os.listdir(mnt / rel)), lambda rel: os.path.lexists(mnt / rel)
        )


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "kernel": lambda scratch: KernelBackend(lambda: scratch),
    "fuse": lambda scratch: FuseBackend(lambda: scratch),
    "copy": lambda scratch: CopyBackend(lambda: scratch),
}


@pytest.mark.parametrize("name", BACKENDS)
def test_export_writes_the_test_changes_as_a_layer(
    name: str, tmp_path: Path, lower: Path, no_xattrs: Path
) -> None:
    """Every backend's mount exports what the test did, whatever it keeps it in."""
    if name != "copy":
        gate(name, kernel_reason() if name == "kernel" else fuse_reason())
    backend = BACKENDS[name](tmp_path / "scratch")
    try:
        mount = backend.mount([lower], label="export")
        try:
            view = mount.path
            shutil.rmtree(view / "d")
            shutil.rmtree(view / "keep" / "deep")
            (view / "gone").unlink()
            for rel in ("d", "keep/deep"):
                (view / rel).mkdir()
                (view / rel / "new").write_text("new\n")
            size = mount.export(no_xattrs / "layer")
        finally:
            assert mount.close() == []
        assert size == 2 * len("new\n")
        _assert_read_back(no_xattrs / "layer", lower)
    finally:
        backend.shutdown()
