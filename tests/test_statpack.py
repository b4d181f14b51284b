"""The packed ``struct stat`` that answers ``getattr`` is byte for byte what mfusepy's own
dict path writes, on this platform's layout and on a layout in another field order."""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests._gates import fuse_reason, gate


@pytest.fixture
def mfusepy() -> Any:
    gate("fuse", fuse_reason())
    from pytest_overlay._fuse.server import load_mfusepy

    return load_mfusepy()


def _entries(tmp_path: Path) -> list[Path]:
    (tmp_path / "file").write_bytes(b"x" * 5000)
    (tmp_path / "dir").mkdir()
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    os.utime(tmp_path / "file", ns=(1_234_567_891_987_654_321, 2_000_000_001))
    return [tmp_path / "file", tmp_path / "dir", tmp_path / "link", tmp_path / "fifo",
            Path("/dev/null")]  # fmt: skip


def test_packed_stat_matches_mfusepy(mfusepy: Any, tmp_path: Path) -> None:
    from pytest_overlay._fuse.statpack import stat_packer

    pack = stat_packer(mfusepy.c_stat)
    assert pack is not None, "this platform's struct stat should be packable"
    for path in _entries(tmp_path):
        st = os.lstat(path)
        ino, nlink = st.st_ino + 7, 1  # what the overlay shows may differ from the layer's
        attrs = {
            "st_mode": st.st_mode, "st_ino": ino, "st_nlink": nlink, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_size": st.st_size, "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize, "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns, "st_rdev": st.st_rdev,
        }  # fmt: skip
        theirs = mfusepy.c_stat()
        mfusepy.set_st_attrs(theirs, attrs, use_ns=True)
        ours = mfusepy.c_stat()  # zeroed, as libfuse hands it over
        pack(ours, st, ino, nlink)
        assert bytes(ours) == bytes(theirs), path


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _OtherOrderStat(ctypes.Structure):
    # The generic 64-bit layout (arm64, riscv64): st_mode before st_nlink, 32-bit nlink.
    _fields_ = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
        ("st_mode", ctypes.c_uint32), ("st_nlink", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
        ("st_rdev", ctypes.c_uint64), ("__pad1", ctypes.c_uint64),
        ("st_size", ctypes.c_int64), ("st_blksize", ctypes.c_int32),
        ("__pad2", ctypes.c_int32), ("st_blocks", ctypes.c_int64),
        ("st_atimespec", _Timespec), ("st_mtimespec", _Timespec),
        ("st_ctimespec", _Timespec), ("__unused", ctypes.c_uint32 * 2),
    ]  # fmt: skip


def test_packed_stat_follows_another_layout(tmp_path: Path) -> None:
    from pytest_overlay._fuse.statpack import stat_packer

    pack = stat_packer(_OtherOrderStat)
    assert pack is not None
    path = _entries(tmp_path)[0]
    st = os.lstat(path)
    ours = _OtherOrderStat()
    pack(ours, st, 99, 3)
    assert (ours.st_ino, ours.st_nlink, ours.st_mode) == (99, 3, st.st_mode)
    assert stat.S_ISREG(ours.st_mode)
    assert (ours.st_uid, ours.st_gid, ours.st_size) == (st.st_uid, st.st_gid, 5000)
    assert (ours.st_blksize, ours.st_blocks) == (st.st_blksize, st.st_blocks)
    assert ours.st_atimespec.tv_sec * 10**9 + ours.st_atimespec.tv_nsec == st.st_atime_ns
    assert (ours.st_mtimespec.tv_sec, ours.st_mtimespec.tv_nsec) == (2, 1)
    assert ours.st_ctimespec.tv_sec * 10**9 + ours.st_ctimespec.tv_nsec == st.st_ctime_ns


def test_unknown_layout_falls_back(tmp_path: Path) -> None:
    from pytest_overlay._fuse.statpack import stat_packer

    class NoTimes(ctypes.Structure):
        _fields_ = [("st_ino", ctypes.c_uint64), ("st_mode", ctypes.c_uint32)]

    class FloatSize(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_double if name == "st_size" else type_)
            for name, type_, *_ in _OtherOrderStat._fields_
        ]

    class _SecondsOnly(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_int64)]

    class HalfTimes(ctypes.Structure):
        _fields_ = [
            (name, _SecondsOnly if type_ is _Timespec else type_)
            for name, type_, *_ in _OtherOrderStat._fields_
        ]

    assert stat_packer(NoTimes) is None
    assert stat_packer(FloatSize) is None
    assert stat_packer(HalfTimes) is None
