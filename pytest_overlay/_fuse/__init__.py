"""The FUSE backend: an overlay filesystem served by a Python process of its own.

Which process each module runs in, the one thing to know before changing any of them:

In the server process (standard library and mfusepy only; never pytest):

* :mod:`.server`: the process that mounts and serves one view
  (``python -m pytest_overlay._fuse.server``);
* :mod:`.forkserver`: the session's server, which forks one :mod:`.server` per view
  (``python -m pytest_overlay._fuse.forkserver``);
* :mod:`.ops`: the filesystem (an ``mfusepy.Operations`` subclass) over read-only lower
  layers and one writable upper layer, in the kernel overlayfs on-disk format;
* :mod:`.view` (the merged view), :mod:`.copyup` (changing the upper layer), :mod:`.links`
  (hard links), :mod:`.statpack` (``getattr`` answers).

In the process that asks for a mount (pytest's, or the mount helper's):

* :mod:`.client`: starts and stops a server, and says why FUSE cannot work here;
* :mod:`.session`: talks to the session's :mod:`.forkserver`;
* :mod:`.helper`: ``pytest-overlay-fs``, the helper ``mount -t fuse.pytest-overlay-fs`` runs.

The backend that pytest uses, :mod:`pytest_overlay._backends.fuse`, stands on :mod:`.client`
and :mod:`.session`; nothing on this side imports ``mfusepy``.
"""

from __future__ import annotations
