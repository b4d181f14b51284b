"""Run a command under a seccomp filter like Docker's default profile for a container without
``CAP_SYS_ADMIN``: ``python tests/_seccomp.py COMMAND [ARG...]``.

Docker's profile refuses the namespace and mount system calls to such a container: ``unshare``,
``setns``, ``mount``, ``umount2``, the new mount API, and ``clone`` with a namespace flag, all
with ``EPERM``; ``clone3`` gets ``ENOSYS`` so that the C library falls back to ``clone``.  This
installs that part of it (x86-64 only) with ``no_new_privs`` set, as Docker does, so a setuid
``fusermount3`` gains nothing either, then executes the command.

``python tests/_seccomp.py --mount-only[=EACCES] COMMAND [ARG...]`` refuses only the mount
calls (``mount``, ``umount2``, ``pivot_root`` and the new mount API), with ``EPERM`` or the
errno named, and lets namespaces be created: how Ubuntu 23.10+ looks to an ordinary user, whose
AppArmor ``unprivileged_userns`` profile lets ``unshare(CLONE_NEWUSER)`` succeed and then denies
the mounts inside (``kernel.apparmor_restrict_unprivileged_userns=1``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS_W = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
# x86-64 numbers: mount, umount2, pivot_root, open_tree, move_mount, fsopen, fsconfig, fsmount,
# fspick, mount_setattr; then unshare and setns.
_MOUNT_CALLS = (165, 166, 155, 428, 429, 430, 431, 432, 433, 442)
_REFUSED = (272, 308, *_MOUNT_CALLS)
_CLONE, _CLONE3 = 56, 435
_MOUNT_ONLY = "--mount-only"


def _program(mount_only: int | None = None) -> list[tuple[int, int, int, int]]:
    program = [
        (_LD_ABS_W, 0, 0, 4),  # arch
        (_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, _RET_ALLOW),
        (_LD_ABS_W, 0, 0, 0),  # syscall number
    ]
    if mount_only is not None:
        for number in _MOUNT_CALLS:
            program += [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, _RET_ERRNO | mount_only)]
        return [*program, (_RET_K, 0, 0, _RET_ALLOW)]
    for number in _REFUSED:
        program += [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    program += [(_JEQ_K, 0, 1, _CLONE3), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    program += [
        (_JEQ_K, 0, 3, _CLONE),
        (_LD_ABS_W, 0, 0, 16),  # the low half of clone's flags
        (_JSET_K, 0, 1, _NAMESPACE_FLAGS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return program


def install(mount_only: int | None = None) -> None:
    """Install the filter on this process (and everything it executes).

    With *mount_only* (an errno), only the mount calls are refused, with that errno.
    """
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, "the filter knows only x86-64 system call numbers")
    libc = ctypes.CDLL(None, use_errno=True)
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in _program(mount_only))
    filters = ctypes.create_string_buffer(code)

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = _Program(len(code) // 8, ctypes.addressof(filters))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def wrapper(mount_only: str | None = None) -> list[str]:
    """The command prefix that runs a command under the filter (Docker's, or *mount_only*).

    *mount_only* names the errno (``EPERM``, ``EACCES``) that the mount calls alone get.
    """
    option = [] if mount_only is None else [f"{_MOUNT_ONLY}={mount_only}"]
    return [sys.executable, os.path.abspath(__file__), *option]


def reason() -> str | None:
    """Why the filter cannot be installed here, or None (it knows only x86-64's numbers)."""
    return None if platform.machine() == "x86_64" else "the filter is for x86-64"


def _parse(argv: list[str]) -> tuple[int | None, list[str]]:
    """The mount-only errno (None for Docker's profile) and the command, from *argv*."""
    first, _, name = argv[0].partition("=")
    if first != _MOUNT_ONLY:
        return None, argv
    return getattr(errno, name or "EPERM"), argv[1:]


if __name__ == "__main__":
    mount_only, command = _parse(sys.argv[1:])
    install(mount_only)
    os.execvp(command[0], command)  # noqa: S606  # exactly the command given, no shell
