"""Which backends may run in place, and what to tell a user whose machine has none of them.

In-place mode (``--overlay``) promises that no test's write reaches the real tree.  Only a
backend whose view stands at the project's real paths can keep that promise: kernel overlayfs,
or FUSE mounted in a private mount namespace.  A copy cannot stand there, so a test writing
through an absolute path would change the real tree; in place, the copy backend is refused
rather than used as a fallback.  This module owns those messages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pytest_overlay._probe import APPARMOR_FIX, apparmor_restricts_userns, docker_fix

__all__ = [
    "COPY_IN_PLACE",
    "FUSE_IN_PLACE_NEEDS_ROOT",
    "IN_PLACE_NEEDS_PRIVATE_NAMESPACE",
    "in_place_impossible",
]

_FIXTURE_MODE = (
    "drop --overlay and use the overlay_root fixture, which works everywhere (on the copy "
    "backend too): tests then write into overlay_root instead of the real paths"
)

# Why auto passes FUSE over in place for an ordinary user, in a line and in full.
IN_PLACE_NEEDS_PRIVATE_NAMESPACE = (
    "in-place mode (--overlay) on the fuse backend needs root: the view is mounted over the "
    "project in a private mount namespace, and an ordinary user's FUSE mounts are made by "
    "fusermount3 for the whole machine instead. Run pytest as root (a container's root with "
    "CAP_SYS_ADMIN will do), or let the kernel backend run in place (allow unprivileged user "
    "namespaces; see 'kernel not used' in the report header), or use the overlay_root fixture "
    "without --overlay"
)
FUSE_IN_PLACE_NEEDS_ROOT = "in place, FUSE needs root (a private mount namespace)"

COPY_IN_PLACE = (
    "in-place mode (--overlay) cannot run on the copy backend: a copy cannot stand at the "
    "project's real paths, so a test writing through an absolute path would change the real "
    "tree. Use --overlay-backend=auto (kernel overlayfs, or FUSE as root), or " + _FIXTURE_MODE
)


def _in_container() -> bool:
    return any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv"))


def _fixes() -> list[str]:
    """The remedies, the one that fits this machine first."""
    apparmor = (
        "on Ubuntu 23.10+ (GitHub's ubuntu-24.04 runners among them), allow unprivileged user "
        f"namespaces: {APPARMOR_FIX}"
    )
    docker = f"in a container, give it what a mount needs: {docker_fix(fuse=True)}"
    root = "run pytest as root (`sudo -E python -m pytest --overlay`)"
    fixes = [apparmor, root, docker]
    if _in_container() and not apparmor_restricts_userns():
        fixes = [docker, root, apparmor]
    return [*fixes, _FIXTURE_MODE]


def in_place_impossible(passed_over: Sequence[tuple[str, str]]) -> str:
    """The usage error of a run in place where no backend can intercept the real paths."""
    lines = [
        "in-place mode (--overlay) needs a backend whose view stands at the project's real "
        "paths (kernel overlayfs, or FUSE as root), and none works here, so no test was run "
        "(the copy backend would let tests write to the real tree):"
    ]
    lines += [f"  {name} not used: {reason}" for name, reason in passed_over]
    lines.append("To fix it, either:")
    lines += [f"  - {fix}" for fix in _fixes()]
    return "\n".join(lines)
