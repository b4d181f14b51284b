"""The FUSE backend: an overlay filesystem served by a Python process of its own.

* :mod:`.ops` is the filesystem (an ``mfusepy.Operations`` subclass) over read-only lower
  layers and one writable upper layer, writing the kernel overlayfs on-disk format;
* :mod:`.server` is the process that mounts and serves it
  (``python -m pytest_overlay._fuse.server``);
* :mod:`.client` starts and stops that process, and says why FUSE cannot work here.

Nothing here imports ``mfusepy`` at import time except :mod:`.ops` and :mod:`.server`, which only
ever run in the server process: the client never serves a mount it uses.
"""

from __future__ import annotations
