"""Hard links in the FUSE view: telling the kernel that the other names of a file changed.

libfuse's path-based API gives each name its own kernel inode, so after a write through one
name of a hard link the kernel still holds the old size, times and pages for the others, and
trusts them for the whole attribute timeout.  :class:`LinkNames` remembers under which names
the view has shown each multiply-linked file, and when one name changes the file, asks for
the others to be invalidated.  libfuse 3 can do that by path (``fuse_invalidate_path``);
libfuse 2 cannot, and there the limitation remains (the server prefers libfuse 3).
"""

from __future__ import annotations

import ctypes
import os
import queue
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["LinkNames", "PathInvalidator"]

_Key = tuple[int, int]
# How long a change waits for the kernel to take the invalidation.  Normally it takes
# microseconds; the wait only runs out if the kernel needs this server to answer a request
# first (a read of the other name in flight holds its page locked), which it can once the
# change returns.  Not shorter: on a loaded machine the thread can take a tenth of a second
# to get going, and a reply sent before the invalidation lets the caller's next stat see the
# old attributes (issue 18: a copied-up hard link's link count).
_WAIT_S = 1.0


class LinkNames:
    """The names of multiply-linked files shown so far, and the invalidation of the others.

    :param invalidate: called with the other names (``/``-rooted, as libfuse names them) of a
        file that one name changed; None where nothing can invalidate (then nothing is kept).
    """

    def __init__(self, invalidate: Callable[[Sequence[str]], None] | None) -> None:
        self._invalidate = invalidate
        self._names: dict[_Key, set[str]] = {}

    @property
    def active(self) -> bool:
        """Whether names are recorded at all (only where they can be invalidated)."""
        return self._invalidate is not None

    @property
    def tracking(self) -> bool:
        """Whether any multiply-linked file has been shown yet.

        Until one has, no change can have other names to invalidate, so the requests that
        change files skip the extra ``stat`` this would cost them.
        """
        return bool(self._names)

    def seen(self, rel: str, st: os.stat_result) -> None:
        """The view showed *rel*, an upper file with *st*."""
        if self._invalidate is not None and st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self._names.setdefault((st.st_dev, st.st_ino), set()).add(rel)

    def key(self, st: os.stat_result) -> _Key | None:
        """What identifies a multiply-linked file (None for anything else)."""
        # Any non-directory: symbolic links and FIFOs can be hard-linked too.
        if self._invalidate is None or st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            return None
        return (st.st_dev, st.st_ino)

    def changed(self, key: _Key | None, rel: str | None) -> None:
        """The file *key* was changed through *rel*: invalidate its other names."""
        if key is None or self._invalidate is None:
            return
        others = sorted(name for name in self._names.get(key, ()) if name != rel)
        if others:
            self._invalidate(["/" + name for name in others])

    def refresh(self, rel: str) -> None:
        """The kernel's attributes of *rel* are stale (its link count changed under it)."""
        if self._invalidate is not None:
            self._invalidate(["/" + rel])

    def renamed(self, old: str, new: str) -> None:
        """A name moved; if it is a directory, so did every name below it."""
        below = old + "/"
        for names in self._names.values():
            moved = {n for n in names if n == old or n.startswith(below)}
            if moved:
                names -= moved
                names |= {new + n[len(old) :] for n in moved}

    def forget(self, rel: str) -> None:
        """The name *rel* is gone."""
        for names in self._names.values():
            names.discard(rel)


class PathInvalidator:
    """Invalidates kernel inodes by path through libfuse 3, from a thread of its own.

    The request that changed the file waits for the invalidation at most :data:`_WAIT_S`: the
    kernel may need this (single-threaded) server to answer a read before it can take it.

    :param libfuse: mfusepy's loaded libfuse 3 (``mfusepy._libfuse``).
    """

    def __init__(self, libfuse: Any) -> None:
        self._libfuse = libfuse
        libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        libfuse.fuse_invalidate_path.restype = ctypes.c_int
        self._fuse: int | None = None
        self._queue: queue.SimpleQueue[tuple[Sequence[str], threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def capture(self) -> None:
        """Remember this mount's ``struct fuse``; call it from a request (``init``)."""
        self._fuse = self._libfuse.fuse_get_context().contents.fuse

    def __call__(self, paths: Sequence[str]) -> None:
        if self._fuse is None:
            return
        if self._thread is None:  # most mounts never need it: no thread until one does
            self._thread = threading.Thread(target=self._run, name="invalidate", daemon=True)
            self._thread.start()
        done = threading.Event()
        self._queue.put((paths, done))
        done.wait(_WAIT_S)

    def _run(self) -> None:
        while True:
            paths, done = self._queue.get()
            for path in paths:
                # -ENOENT: the kernel never looked that name up, so it holds nothing stale.
                self._libfuse.fuse_invalidate_path(self._fuse, os.fsencode(path))
            done.set()
