"""The portable mode: a process on Linux made to look like macOS or Windows to Python code.

:func:`simulate` fakes ``sys.platform`` and removes what those systems lack: the Linux-only
``os`` names (``O_CLOEXEC``, ``O_NOFOLLOW``, ``O_NONBLOCK``, ``O_DIRECTORY``, ``pipe2``,
``pidfd_open``, the xattr calls, ``copy_file_range``; on Windows also ``geteuid`` and its kin,
``fork``, ``O_NOFOLLOW``...), and the modules ``grp`` and ``pwd`` (and ``fcntl`` on Windows).
The plugin's own platform checks then turn off inotify, ``/proc`` and FICLONE.  What it
cannot fake: the kernel underneath (paths stay POSIX, no drive letters or backslashes), so a
claim that rests on this mode says so.

``python -m tests._portable PLATFORM PYTEST-ARGS...`` runs pytest in such a process
(``native``: in this one as it is).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

__all__ = ["NATIVE", "PLATFORMS", "prepare", "simulate", "under_test"]

_NOT_ON_MACOS = (
    "O_CLOEXEC",  # macOS has it, but not every Unix: the plugin must not need it
    "O_DIRECTORY",
    "O_PATH",
    "pipe2",
    "pidfd_open",
    "copy_file_range",
    "getxattr",
    "setxattr",
    "listxattr",
    "removexattr",
    "sched_getaffinity",
    "unshare",
    "setns",
    "memfd_create",
    "eventfd",
    "splice",
)
_NOT_ON_WINDOWS = (
    *_NOT_ON_MACOS,
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "O_NOCTTY",
    "geteuid",
    "getegid",
    "getuid",
    "getgid",
    "getgroups",
    "fork",
    "setsid",
    "killpg",
    "getpgid",
    "sync",
    "WNOHANG",
    "mkfifo",
    "mknod",
    "major",
    "minor",
    "makedev",
    "lchown",
    "chown",
    "fchown",
    "fchmod",
)

PLATFORMS = {
    "darwin": (_NOT_ON_MACOS, ()),  # macOS has grp, pwd and fcntl
    "win32": (_NOT_ON_WINDOWS, ("grp", "pwd", "fcntl", "termios", "resource")),
}


NATIVE = "native"


def under_test() -> list[str]:
    """The platforms to run as: each simulation on Linux, the machine itself elsewhere."""
    return list(PLATFORMS) if sys.platform.startswith("linux") else [NATIVE]


def simulate(platform: str) -> None:
    """Make this process look like *platform* (``darwin`` or ``win32``) from now on."""
    names, modules = PLATFORMS[platform]
    for name in names:
        if hasattr(os, name):
            delattr(os, name)
    for module in modules:
        # None in sys.modules makes `import module` raise ImportError, as where it is missing.
        sys.modules[module] = None  # type: ignore[assignment]
    if platform == "win32":
        _no_link_times()
    sys.platform = platform


def _no_link_times() -> None:
    """Windows cannot set a symbolic link's own times: ``os.utime(follow_symlinks=False)``
    raises NotImplementedError there, and ``os.supports_follow_symlinks`` lacks it."""
    utime = os.utime

    def windows_utime(path: Any, *args: Any, follow_symlinks: bool = True, **kwargs: Any) -> None:
        if not follow_symlinks:
            raise NotImplementedError("utime: follow_symlinks unavailable on this platform")
        utime(path, *args, **kwargs)

    os.supports_follow_symlinks.discard(utime)
    os.utime = windows_utime


def prepare(platform: str) -> None:
    """Load pytest, the standard library and the dependencies as they would load on that
    system, then :func:`simulate` it: the point is what pytest-overlay does once pytest loads
    it (its entry point, in ``pytest.main``).  ``native`` simulates nothing: the same tests
    on a real macOS or Windows machine (the GitHub Actions workflow)."""
    if platform == NATIVE:
        return
    import sysconfig

    import filelock
    import pytest  # noqa: F401

    sysconfig.get_config_vars()  # cached now: it imports a module named after sys.platform
    # filelock's Unix code, loaded here, keeps the os module it was written for; on the real
    # system its own code for that system runs instead (on Windows it needs msvcrt).
    linux_os = types.ModuleType("os")
    linux_os.__dict__.update(os.__dict__)
    for name, module in list(sys.modules.items()):
        if name.startswith(filelock.__name__) and getattr(module, "os", None) is os:
            module.os = linux_os  # type: ignore[attr-defined]
    simulate(platform)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in [*PLATFORMS, NATIVE]:
        choices = ",".join([*PLATFORMS, NATIVE])
        sys.exit(f"usage: python -m tests._portable {{{choices}}} PYTEST-ARGS...")
    prepare(sys.argv[1])
    import pytest

    sys.exit(pytest.main(sys.argv[2:]))
