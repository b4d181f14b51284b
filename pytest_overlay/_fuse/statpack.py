"""Answering ``getattr`` by packing the kernel's ``struct stat`` in one call.

``git status`` on a fresh mount is about 10,000 ``LOOKUP`` requests, each one ``getattr``.
mfusepy answers through a dict of attributes: it zeroes the struct, then sets each field
through ctypes, about 3 µs of the 7 µs of Python a request costs.  Packing the fields into the
struct's memory with one precompiled :class:`struct.Struct` takes 0.5 µs.

The layout is read from mfusepy's own ``c_stat``, so it follows the platform.  Bytes after
the last field packed (reserved space) are left as libfuse hands them over: zeroed.  Where that
struct or mfusepy's ``FUSE`` class is not what this expects, :func:`fuse_class` returns
mfusepy's class unchanged and the dict path answers, only slower.
"""

from __future__ import annotations

import ctypes
import functools
import operator
import struct
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["fuse_class", "stat_packer"]

# Fields of struct stat that getattr fills, and the timespec fields split in seconds and
# nanoseconds; anything else in the struct (st_dev, padding, reserved) is written as zeros.
_PLAIN = ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size",
          "st_blksize", "st_blocks")  # fmt: skip
_TIMES = ("st_atimespec", "st_mtimespec", "st_ctimespec")
_CANONICAL = (*_PLAIN, "a_s", "a_ns", "m_s", "m_ns", "c_s", "c_ns")
_BILLION = 1_000_000_000

Packer = Callable[[Any, Any, int, int], None]
"""``packer(c_stat_object, stat_result, ino, nlink)``."""


def _code(ctype: Any) -> str | None:
    """The :mod:`struct` code, standard size, of a ctypes integer type (None: not one)."""
    if ctype is None:
        return None
    size = ctypes.sizeof(ctype)
    codes = {1: "b", 2: "h", 4: "i", 8: "q"}
    kind = getattr(ctype, "_type_", None)
    if size not in codes or not isinstance(kind, str) or kind not in "bBhHiIlLqQ":
        return None
    return codes[size] if kind.islower() else codes[size].upper()


def stat_packer(c_stat: Any) -> Packer | None:
    """A function filling a *c_stat* (mfusepy's ``struct stat``) from an ``os.stat_result``;
    None when the struct has a layout this does not know."""
    slots: list[tuple[int, int, str, str]] = []  # offset, size, struct code, value name
    for name, ctype, *_ in c_stat._fields_:
        field = getattr(c_stat, name)
        if name in _TIMES:
            for part, value in (("tv_sec", "_s"), ("tv_nsec", "_ns")):
                sub = getattr(ctype, part, None)
                code = _code(dict((n, t) for n, t, *_ in ctype._fields_).get(part))
                if sub is None or code is None:
                    return None
                slots.append((field.offset + sub.offset, sub.size, code, name[3] + value))
        elif name in _PLAIN:
            code = _code(ctype)
            if code is None:
                return None
            slots.append((field.offset, field.size, code, name))
    if sorted(slot[3] for slot in slots) != sorted(_CANONICAL):
        return None
    fmt = "<" if sys.byteorder == "little" else ">"
    end = 0
    for offset, size, code, _name in sorted(slots):
        if offset < end:
            return None
        fmt += "x" * (offset - end) + code
        end = offset + size
    layout = struct.Struct(fmt)
    if layout.size > ctypes.sizeof(c_stat):
        return None
    order = [name for *_, name in sorted(slots)]
    pack_into = layout.pack_into
    if order == list(_CANONICAL):  # Linux on x86-64: no reordering

        def pack(target: Any, st: Any, ino: int, nlink: int) -> None:
            a_s, a_ns = divmod(st.st_atime_ns, _BILLION)
            m_s, m_ns = divmod(st.st_mtime_ns, _BILLION)
            c_s, c_ns = divmod(st.st_ctime_ns, _BILLION)
            pack_into(target, 0, ino, nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev,
                      st.st_size, st.st_blksize, st.st_blocks,
                      a_s, a_ns, m_s, m_ns, c_s, c_ns)  # fmt: skip

    else:
        reorder = operator.itemgetter(*[_CANONICAL.index(name) for name in order])

        def pack(target: Any, st: Any, ino: int, nlink: int) -> None:
            a_s, a_ns = divmod(st.st_atime_ns, _BILLION)
            m_s, m_ns = divmod(st.st_mtime_ns, _BILLION)
            c_s, c_ns = divmod(st.st_ctime_ns, _BILLION)
            values = (ino, nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev,
                      st.st_size, st.st_blksize, st.st_blocks,
                      a_s, a_ns, m_s, m_ns, c_s, c_ns)  # fmt: skip
            pack_into(target, 0, *reorder(values))

    return pack


@functools.cache
def fuse_class(mfusepy: Any) -> Any:
    """mfusepy's ``FUSE`` class, answering ``getattr`` through :func:`stat_packer` where it can.

    The operations object must have ``kernel_stat(path, fh)`` returning
    ``(stat_result, ino, nlink)`` (see :meth:`.ops.OverlayOperations.kernel_stat`).
    """
    base = mfusepy.FUSE
    found = stat_packer(mfusepy.c_stat)
    if found is None or not callable(getattr(base, "fgetattr", None)):
        return base
    packer: Packer = found

    class PackingFUSE(base):  # type: ignore[misc,valid-type]
        # mfusepy routes getattr (libfuse 2 and 3) and fgetattr (libfuse 2) here.
        def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            name = None if path is None else path.decode(self.encoding, self.errors)
            st, ino, nlink = self.operations.kernel_stat(name, fh)
            packer(buf.contents, st, ino, nlink)
            return 0

    return PackingFUSE
