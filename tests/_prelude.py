"""The root prelude of a child's private mount namespace: ``python -I -S _prelude.py SPEC``.

``tests/_unpriv.py`` (:func:`tests._unpriv.prelude_command`) writes the JSON *SPEC* and runs
this file as a script, as root; it uses the standard library only (``-I -S``: the test user's
interpreter may not reach site-packages yet).  In order, it

1. ``unshare(CLONE_NEWNS)`` and makes every mount private, so nothing propagates to the host;
2. mounts a tmpfs on the spec's fresh root-owned scratch directory, which holds the stand-ins;
3. builds each stand-in (deepest first): a directory (mode 0755) holding recursive bind mounts
   of just the children to show, under their own names (symlinks are recreated, files bound),
   recursively bound over the directory it stands in for, so every path stays the same (the
   test user's way to the interpreter, and ``/dev`` without ``fuse``);
4. hides libfuse (empty files over its libraries, a linker cache rebuilt without them), makes
   the overlayfs mounts, binds a ``/dev/fuse`` of another mode, chroots, as the spec says;
5. for the test user: clears the supplementary groups, sets the real, effective and saved gid
   and uid, clears the inheritable capabilities (the uid change clears the permitted,
   effective and ambient ones);
6. changes to the working directory and executes the command.

A failure exits 125 (setting up), 126 (cannot execute) or 127 (not found), as env(1) and
chroot(1) do, with a message starting :data:`PREFIX`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

PREFIX = "unpriv-prelude:"
"""How the prelude's own error messages start."""
EXIT_SETUP = 125
"""The prelude's exit status when it cannot build the namespace."""
_EXIT_CANNOT_EXEC = 126
_EXIT_NOT_FOUND = 127

_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_FUSE_DEVICE = (10, 229)  # major and minor of /dev/fuse on Linux (devices.txt)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _checked(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(
    libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str
) -> None:
    encoded = [None if s is None else os.fsencode(s) for s in (source, target, fstype, data)]
    result = libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3])
    _checked(result, f"mount {source or fstype or ''} on {target}")


def _build_standin(libc: ctypes.CDLL, index: int, directory: Path, children: list[str]) -> None:
    # Relative to the scratch tmpfs (the working directory), which stays reachable even when a
    # later stand-in covers the path it was mounted at.
    standin = Path(str(index))
    standin.mkdir()
    standin.chmod(0o755)
    for name in children:
        source = directory / name
        target = standin / name
        if source.is_symlink():
            target.symlink_to(source.readlink())
        elif source.is_dir():
            target.mkdir()
            _mount(libc, os.fspath(source), os.fspath(target), None, _MS_BIND | _MS_REC, "")
        else:
            target.touch(exist_ok=False)
            _mount(libc, os.fspath(source), os.fspath(target), None, _MS_BIND, "")
    _mount(libc, os.fspath(standin), os.fspath(directory), None, _MS_BIND | _MS_REC, "")


def _drop_privileges(libc: ctypes.CDLL, uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    # Leaving uid 0 for good clears the permitted, effective and ambient capabilities.
    os.setresuid(uid, uid, uid)
    _checked(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: no inheritable capabilities either
    _checked(libc.capset(ctypes.byref(header), data), "capset")


def _fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"{PREFIX} {message}\n")
    sys.stderr.flush()
    os._exit(code)


def _hide_libfuse(libc: ctypes.CDLL) -> None:
    # Empty files over the libraries, and a linker cache that no longer lists them, which is
    # what ctypes.util.find_library consults.
    ldconfig = "/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else "ldconfig"
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True)
    Path("empty").touch()
    hidden: set[str] = set()
    for line in listing.stdout.splitlines():
        if "libfuse" in line and "=>" in line:
            library = os.path.realpath(line.split("=>", 1)[1].strip())
            if library not in hidden:
                hidden.add(library)
                _mount(libc, "empty", library, None, _MS_BIND, "")
    subprocess.run([ldconfig, "-X", "-C", "ld.so.cache"], capture_output=True, check=True)
    _mount(libc, "ld.so.cache", "/etc/ld.so.cache", None, _MS_BIND, "")


def _bind_dev_fuse(libc: ctypes.CDLL, mode: int) -> None:
    # The scratch tmpfs is nodev; the device node needs a filesystem that allows it.
    os.mkdir("dev")
    _mount(libc, "tmpfs", "dev", "tmpfs", _MS_NOSUID, "mode=0755,size=64k")
    os.mknod("dev/fuse", stat.S_IFCHR | mode, os.makedev(*_FUSE_DEVICE))
    os.chmod("dev/fuse", mode)  # mknod applies the umask
    _mount(libc, "dev/fuse", "/dev/fuse", None, _MS_BIND, "")


def _prelude(spec_json: str) -> NoReturn:
    spec = json.loads(spec_json)
    argv: list[str] = spec["argv"]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _checked(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        # A new namespace's mounts stay peers of the host's: make them private before anything.
        _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE, "")
        flags = _MS_NOSUID | _MS_NODEV
        _mount(libc, "tmpfs", spec["scratch"], "tmpfs", flags, "mode=0700,size=16m")
        os.chdir(spec["scratch"])
        for index, (directory, children) in enumerate(spec["standins"]):
            _build_standin(libc, index, Path(directory), children)
        if spec["hide_libfuse"]:
            _hide_libfuse(libc)
        for lower, upper, work, merged in spec["overlays"]:
            options = f"lowerdir={lower},upperdir={upper},workdir={work}"
            _mount(libc, "overlay", merged, "overlay", 0, options)
        if spec["dev_fuse_mode"] is not None:
            _bind_dev_fuse(libc, spec["dev_fuse_mode"])
        if spec["block_userns"]:
            # unshare(CLONE_NEWUSER) fails with EPERM for a chrooted process, even when the
            # new root shows the very same tree.
            os.mkdir("root")
            _mount(libc, "/", "root", None, _MS_BIND | _MS_REC, "")
            os.chroot("root")
        if spec["uid"] is not None:
            _drop_privileges(libc, spec["uid"], spec["gid"])
        os.chdir(spec["cwd"])
    except (OSError, subprocess.CalledProcessError) as exc:
        _fail(EXIT_SETUP, str(exc))
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - argv is a list, no shell is wanted
    except OSError as exc:
        _fail(_EXIT_NOT_FOUND if exc.errno == errno.ENOENT else _EXIT_CANNOT_EXEC, str(exc))


if __name__ == "__main__":
    _prelude(sys.argv[1])
