"""Which backends may run in place, and what to tell a user whose machine has none of them.

In-place mode (``--overlay``) promises that no test's write reaches the real tree.  Only a
backend whose view stands at the project's real paths can keep that promise: kernel overlayfs,
or FUSE mounted in a private mount namespace.  A copy cannot stand there, so a test writing
through an absolute path would change the real tree; in place, the copy backend is refused
rather than used as a fallback.  This module owns those messages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pytest_overlay._probe import (
    APPARMOR_FIX,
    LACKS_SYS_ADMIN,
    apparmor_restricts_userns,
    docker_fix,
    lacks_sys_admin,
    root_fix,
)

__all__ = [
    "COPY_IN_PLACE",
    "IN_PLACE_NEEDS_PRIVATE_NAMESPACE",
    "fuse_in_place_needs_root",
    "fuse_in_place_refused",
    "in_place_impossible",
]

_FIXTURE_MODE = (
    "drop --overlay and use the overlay_root fixture, which works everywhere (on the copy "
    "backend too): tests then write into overlay_root instead of the real paths"
)

_FUSE_NOT_IN_PLACE = (
    "in-place mode (--overlay) on the fuse backend needs root: the view is mounted over the "
    "project in a private mount namespace, and an ordinary user's FUSE mounts are made by "
    "fusermount3 for the whole machine instead."
)
# What a FUSE view asked to mount in place without a private namespace says (the usage error
# of an explicit --overlay-backend=fuse comes first, with the kernel's verdict).
IN_PLACE_NEEDS_PRIVATE_NAMESPACE = (
    f"{_FUSE_NOT_IN_PLACE} Run pytest as root (a container's root with CAP_SYS_ADMIN will do), "
    "or use the overlay_root fixture without --overlay"
)


def fuse_in_place_refused(kernel_reason: str | None) -> str:
    """The usage error of ``--overlay --overlay-backend=fuse`` without a private namespace.

    :param kernel_reason: why the kernel backend cannot run here, or None if it can: the
        message is then the whole story, no report header having been printed.
    """
    if kernel_reason is None:
        kernel = (
            "Use --overlay-backend=kernel (auto picks it here), which runs in place in a "
            "user namespace"
        )
    else:
        kernel = f"The kernel backend cannot run in place here either: {kernel_reason}. Or"
    return (
        f"{_FUSE_NOT_IN_PLACE} {kernel}; or {root_fix(docker_fix(fuse=True))}; or use the "
        "overlay_root fixture without --overlay"
    )


def fuse_in_place_needs_root() -> str:
    """Why auto passes FUSE over in place, in a line."""
    if lacks_sys_admin():
        return f"in place, FUSE needs a private mount namespace, and {LACKS_SYS_ADMIN}"
    return "in place, FUSE needs root (a private mount namespace)"


COPY_IN_PLACE = (
    "in-place mode (--overlay) cannot run on the copy backend: a copy cannot stand at the "
    "project's real paths, so a test writing through an absolute path would change the real "
    "tree. Use --overlay-backend=auto (kernel overlayfs, or FUSE as root), or " + _FIXTURE_MODE
)


def _in_container() -> bool:
    return any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv"))


def _fixes() -> list[str]:
    """The remedies that fit this machine, the likeliest first, and the fixture last.

    A remedy is offered only where it can apply: the sysctl where AppArmor sets it, the
    ``docker run`` recipe in a container (or to a root without the capability), sudo to an
    ordinary user; off Linux there is no mount to fix at all.
    """
    if not sys.platform.startswith("linux"):
        return [
            "run the tests on Linux (a container or a virtual machine will do): in place needs "
            "kernel overlayfs, or FUSE in a private mount namespace",
            _FIXTURE_MODE,
        ]
    fixes = []
    if apparmor_restricts_userns():
        fixes.append(f"allow unprivileged user namespaces (Ubuntu 23.10+): {APPARMOR_FIX}")
    if _in_container() or lacks_sys_admin():
        docker = f"give the container what a mount needs: {docker_fix(fuse=True)}"
        fixes.insert(0 if _in_container() else len(fixes), docker)
    if os.geteuid() != 0:
        fixes.append("run pytest as root (`sudo -E python -m pytest --overlay`)")
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
