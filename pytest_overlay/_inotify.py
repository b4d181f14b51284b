"""inotify through ctypes (the standard library has none), and change flags built on it.

Two users: the copy backend watches every entry of its copy (``copy_tracking``), and the
mounted backends watch the few directories of each view's upper layer (:class:`ChangeFlags`),
where any change to the view has to show.  inotify works unprivileged and in containers;
where it is missing (not Linux, ``fs.inotify.max_user_instances`` reached) or runs out of
watches (``fs.inotify.max_user_watches``), callers fall back to comparing ``lstat`` results.

Events are queued synchronously, inside the system call that makes the change, before it
returns: once the process that made a change is past that call, a read of the queue sees it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Hashable, Iterator, Sequence

from ._oscompat import O_CLOEXEC, O_NONBLOCK

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
# Every change to a directory, its entries or its own attributes (not reads: opening or
# listing a directory is no change).
DIRECTORY_CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")
_READ_SIZE = 1 << 16
_LARGEST_EVENT = _EVENT.size + 256  # a name of NAME_MAX bytes, NUL-terminated and padded


class _Pid:
    """This process's pid, kept current across ``fork`` without a system call per question
    (:class:`ChangeFlags` asks it several times per test)."""

    value = os.getpid()

    @classmethod
    def renew(cls) -> None:
        cls.value = os.getpid()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no inotify either
    os.register_at_fork(after_in_child=_Pid.renew)


class Inotify:
    """An inotify instance, non-blocking and close-on-exec."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, f"no inotify on {sys.platform}")
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._remove = libc.inotify_rm_watch
        self._remove.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = libc.inotify_init1(O_NONBLOCK | O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add(self, path: str | os.PathLike[str], mask: int = DIRECTORY_CHANGES) -> int:
        """Watch *path*; returns the watch descriptor its events carry."""
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", os.fspath(path))
        return wd

    def remove(self, wd: int) -> None:
        """Stop watching (an error, such as a watch already gone with its filesystem, is
        ignored: either way no more events come for *wd*)."""
        self._remove(self.fd, wd)

    def read(self) -> Iterator[tuple[int, int, bytes]]:
        """Every queued event as ``(wd, mask, name)`` (:meth:`read_raw`, parsed)."""
        data = self.read_raw()
        offset, size = 0, _EVENT.size
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            start = offset + size
            yield wd, mask, data[start : start + length].rstrip(b"\0")
            offset = start + length

    def read_raw(self) -> bytes:
        """Every queued event, unparsed (b"" when the queue is empty), for callers that need
        only each event's watch and mask (:func:`watches_and_masks`).  A read that leaves
        room for another event emptied the queue: no second read to learn that it is empty."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            chunks.append(data)
            if len(data) <= _READ_SIZE - _LARGEST_EVENT:
                break
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)


def watches_and_masks(data: bytes) -> Iterator[tuple[int, int]]:
    """``(wd, mask)`` of each event in *data* (from :meth:`Inotify.read_raw`), names skipped."""
    offset, end, size, unpack = 0, len(data), _EVENT.size, _EVENT.unpack_from
    while offset < end:
        wd, mask, _cookie, length = unpack(data, offset)
        yield wd, mask
        offset += size + length


class ChangeFlags:
    """One flag per key: whether anything changed in the directories watched for it.

    A key's flag is raised by any event on its directories (an entry made, removed or renamed
    there, the directory's own mode, owner, times or xattrs changed) and never lowered; an
    overflowing queue raises every flag.  One inotify instance for all keys, made on first
    use: ``fs.inotify.max_user_instances`` is 128 per user on most machines.
    """

    def __init__(self) -> None:
        self._inotify: Inotify | None = None
        self._failed = False
        # The process that made the instance: a forked child shares its queue, and reading
        # it there would take the parent's events away, so a child trusts no flag.
        self._owner = 0
        self._key_of: dict[int, Hashable] = {}
        self._watches: dict[Hashable, list[int]] = {}
        self._changed: set[Hashable] = set()

    def watch(self, key: Hashable, directories: Sequence[str]) -> bool:
        """Start *key*'s flag, lowered, watching *directories*; False (and no flag) where
        inotify cannot watch them: ask :meth:`changed` nothing about *key* then."""
        if self._inotify is None:
            if self._failed:
                return False
            try:
                self._inotify = Inotify()
            except OSError:
                self._failed = True  # not Linux, or no instance left: the callers fall back
                return False
            self._owner = _Pid.value
        elif _Pid.value != self._owner:
            return False
        watches: list[int] = []
        try:
            for directory in directories:
                watches.append(self._inotify.add(directory))
        except OSError:
            for wd in watches:  # ENOSPC: no watch left (fs.inotify.max_user_watches)
                self._inotify.remove(wd)
            return False
        for wd in watches:
            self._key_of[wd] = key
        self._watches[key] = watches
        self._changed.discard(key)
        return True

    def changed(self, key: Hashable) -> bool:
        """Whether anything changed in *key*'s directories since :meth:`watch` (one read of
        an empty queue when nothing did)."""
        inotify = self._inotify
        if inotify is None or key not in self._watches or _Pid.value != self._owner:
            return True
        if key in self._changed:
            return True  # raised already: a flag is never lowered
        data = inotify.read_raw()
        if not data:
            return False  # the usual case: nothing happened, nothing to parse
        for wd, mask in watches_and_masks(data):
            if mask & IN_Q_OVERFLOW:
                self._changed.update(self._watches)
            else:
                owner = self._key_of.get(wd)
                if owner is not None:
                    self._changed.add(owner)
        return key in self._changed

    def forget(self, key: Hashable, *, unwatch: bool = True) -> None:
        """Stop watching for *key*.  *unwatch* False leaves the kernel's watches in place, to
        go with their filesystem when it is unmounted (their events are ignored)."""
        watches = self._watches.pop(key, None)
        self._changed.discard(key)
        if watches is None:
            return
        for wd in watches:
            self._key_of.pop(wd, None)
        if unwatch and self._inotify is not None and _Pid.value == self._owner:
            for wd in watches:
                self._inotify.remove(wd)

    def close(self) -> None:
        """Release the inotify instance (every flag is raised from then on)."""
        if self._inotify is not None and _Pid.value == self._owner:
            self._inotify.close()
        self._inotify = None
        self._watches.clear()
        self._key_of.clear()
