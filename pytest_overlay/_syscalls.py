"""Thin ctypes wrappers over the Linux system calls the kernel backend needs.

Every wrapper raises :class:`OSError` with the errno and the path involved, so callers can
branch on ``errno`` and users see which path failed.  Nothing here decides policy.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Iterable

from . import _oscompat

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

MNT_DETACH = 0x2
MNT_EXPIRE = 0x4

# The new mount API has one syscall numbering on every architecture (they were added after the
# tables were unified), so these numbers hold on x86_64 and aarch64 alike.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = _oscompat.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


AT_FDCWD = -100

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@functools.cache
def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise OSError(0, "Linux system calls are not available on " + sys.platform)
    # The process's own symbols include libc's (as in _fuse.server): find_library("c") would
    # run ldconfig in a subprocess, about 2 ms of every run that mounts.
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "syscall"):  # a statically linked interpreter exports none of them
        from ctypes.util import find_library

        libc = ctypes.CDLL(find_library("c") or None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str, path: str | os.PathLike[str] | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        message = f"{what}: {os.strerror(err)}"
        if path is None:
            raise OSError(err, message)
        raise OSError(err, message, os.fspath(path))
    return result


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling thread into new namespaces (``unshare(2)``)."""
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """Call ``mount(2)``; *data* is the filesystem's option string."""
    _check(
        _libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {fstype or ''}".rstrip(),
        target,
    )


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    """Call ``umount2(2)``."""
    _check(_libc().umount2(_b(target), ctypes.c_int(flags)), "umount", target)


def _syscall(number: int, *args: object) -> int:
    return int(_libc().syscall(ctypes.c_long(number), *args))


def mount_overlay_new_api(
    target: str | os.PathLike[str],
    lowers: Iterable[str | os.PathLike[str]],
    options: dict[str, str | None],
) -> None:
    """Mount overlayfs through ``fsopen``/``fsconfig``/``fsmount``/``move_mount``.

    Each lower layer is passed on its own with ``lowerdir+`` (Linux 6.8), so neither the 4 KiB
    limit of ``mount(2)`` option data nor ``:`` and ``,`` in paths are a problem.  *options*
    maps option names to a string value, or ``None`` for a flag such as ``userxattr``.
    """
    fs_fd = _check(_syscall(_SYS_FSOPEN, b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC)), "fsopen")
    try:
        for lower in lowers:
            _fsconfig(fs_fd, FSCONFIG_SET_STRING, "lowerdir+", os.fspath(lower))
        for key, value in options.items():
            if value is None:
                _fsconfig(fs_fd, FSCONFIG_SET_FLAG, key, None)
            else:
                _fsconfig(fs_fd, FSCONFIG_SET_STRING, key, value)
        _fsconfig(fs_fd, FSCONFIG_CMD_CREATE, None, None)
        mount_fd = _check(
            _syscall(_SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), 0),
            "fsmount",
            target,
        )
        try:
            attach_tree(mount_fd, target)
        finally:
            os.close(mount_fd)
    finally:
        os.close(fs_fd)


def clone_tree(
    path: str | os.PathLike[str], *, readonly: bool = False, recursive: bool = True
) -> int:
    """A detached bind mount of *path* (``open_tree(2)``), to attach elsewhere later.

    With *readonly* the clone refuses writes (``mount_setattr(2)``), whatever the original.
    Not *recursive*, the clone shows none of the mounts below *path*; in a user namespace the
    kernel refuses that (EINVAL) where one of them came from a more privileged namespace (it
    would uncover what that mount hides), and the clone is then recursive after all.
    """
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
    result = -1
    if not recursive:
        result = _syscall(_SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags))
    if recursive or (result < 0 and ctypes.get_errno() == errno.EINVAL):
        flags |= AT_RECURSIVE
        result = _syscall(_SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags))
    tree_fd = _check(result, "open_tree", path)
    if readonly:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        result = _syscall(
            _SYS_MOUNT_SETATTR,
            ctypes.c_int(tree_fd),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        # Linux before 5.12 has no mount_setattr: the clone then stays writable, and only our
        # own read-only use of it keeps the lower safe.
        if result < 0 and ctypes.get_errno() != errno.ENOSYS:
            os.close(tree_fd)
            _check(result, "mount_setattr", path)
    return tree_fd


def attach_tree(tree_fd: int, target: str | os.PathLike[str]) -> None:
    """Attach a detached mount from :func:`clone_tree` at *target* (``move_mount(2)``)."""
    _check(
        _syscall(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(tree_fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            _b(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        "move_mount",
        target,
    )


def move_attached(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the mount attached at *source* (with its children) to *target* (``move_mount(2)``).

    Unlike an unmount, a move waits for no RCU grace period.
    """
    _check(
        _syscall(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(AT_FDCWD),
            _b(source),
            ctypes.c_int(AT_FDCWD),
            _b(target),
            ctypes.c_uint(0),
        ),
        "move_mount",
        source,
    )


_MOVE_MOUNT_NUMBER = ctypes.c_long(_SYS_MOVE_MOUNT)


def move_tree(tree_fd: int, to_fd: int, to_path: bytes = b"") -> None:
    """Move the attached mount whose root *tree_fd* is (with its children) to *to_path* under
    the directory *to_fd*, or onto *to_fd* itself (``move_mount(2)``): by descriptor, the
    kernel walks no path on the way from, and only *to_path* on the way to."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (0 if to_path else MOVE_MOUNT_T_EMPTY_PATH)
    # Four times per test in place (a busy check moves each pass-through mount aside and
    # back): plain ints, which ctypes passes as C ints (what the descriptors and the flags
    # are), and the number made once, instead of four ctypes objects per call (2 us of 3).
    result = _libc().syscall(_MOVE_MOUNT_NUMBER, tree_fd, b"", to_fd, to_path, flags)
    if result < 0:
        _check(result, "move_mount", os.fsdecode(to_path) if to_path else None)


def _fsconfig(fs_fd: int, command: int, key: str | None, value: str | None) -> None:
    result = _syscall(
        _SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(command), _b(key), _b(value), 0
    )
    _check(result, f"fsconfig {key}" if key else "fsconfig create", value)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def get_capabilities() -> tuple[int, int, int]:
    """Return the calling thread's (effective, permitted, inheritable) sets as bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (``capset(2)``)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in range(2):
        shift = 32 * index
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def raise_ambient(capability: int) -> None:
    """Add *capability* to the ambient set, so that it survives ``execve``."""
    _check(
        _libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, ctypes.c_ulong(capability), 0, 0),
        "prctl(PR_CAP_AMBIENT_RAISE)",
    )


def clear_ambient() -> None:
    """Empty the ambient set, so that programs started from here get no capabilities."""
    _check(
        _libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
    )
