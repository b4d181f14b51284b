"""The ``os`` names that exist on Linux but not everywhere, in one place.

The kernel and FUSE backends are Linux-only, but the plugin and the copy backend run on macOS
and Windows too, and must import there: every module reads these instead of ``os.O_CLOEXEC``
and its kin at import time.  A flag the system lacks is 0 (Windows handles are not inherited
by child processes unless asked, so ``O_CLOEXEC`` has nothing to add there; where there is no
``O_NOFOLLOW`` the callers have already ``lstat``-ed the name).
"""

from __future__ import annotations

import os
import sys

__all__ = ["LINUX", "O_CLOEXEC", "O_DIRECTORY", "O_NOFOLLOW", "O_NONBLOCK", "effective_ids"]

LINUX = sys.platform.startswith("linux")
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)


def effective_ids() -> tuple[int, int] | None:
    """The effective uid and gid, or None where there are none (Windows)."""
    if not hasattr(os, "geteuid"):
        return None
    return os.geteuid(), os.getegid()
