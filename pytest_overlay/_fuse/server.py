"""The FUSE server process: ``python -m pytest_overlay._fuse.server [options] MOUNTPOINT``.

It mounts the overlay, writes ``ready`` to ``--ready-fd`` once the kernel has initialised the
connection, and serves requests in one thread until it is unmounted (then it exits 0) or gets
SIGTERM, SIGINT or SIGHUP (libfuse then unmounts and it exits 0).

Unless it is started with ``--detach`` (as the mount helper :mod:`.helper` does), it unmounts
and exits as soon as the process that started it dies, whatever killed that process: its
parent-death signal (``PR_SET_PDEATHSIG``) is SIGTERM, on which libfuse leaves its loop and
unmounts lazily (``umount2(MNT_DETACH)`` as root, ``fusermount3 -u -z`` otherwise), even when
a process the test started still uses the mount.  A SIGKILL would leave the mount behind in
whatever mount namespace outlives the server (a process the test left running keeps pytest's
private one alive), answering "Transport endpoint is not connected".  Where the server itself
is killed, ``auto_unmount`` is the backstop (``fusermount3`` keeps watch and unmounts lazily),
and the next run removes what is left (:mod:`pytest_overlay._stale`): the mount's source
names the process it served (``pytest-overlay:PID``), so that a mount whose process has gone
is told apart from a live one of another run.

Exit status 3 means that libfuse could not be loaded, 2 a usage error, 1 a failed mount.

Mount options, and why:

``default_permissions``
    the kernel checks permissions against the attributes we report, so no ``access``
    callback and no per-request checks in Python.
``use_ino``
    report the backing files' inode numbers: git's index compares them, and a file keeps its
    number across a copy-up (see :mod:`.ops`).
``attr_timeout``, ``entry_timeout``, ``negative_timeout`` = one day
    this server is the only writer of the upper layer and the lower layers are read-only, so
    the kernel never needs to ask again (each ``stat`` is then ~15 µs instead of ~60-110 µs;
    ``benchmarks/bench_fuse.py`` measures ``find`` and ``git status`` on a view).
    fuse-overlayfs makes the same argument with a timeout of 1e9 s.
    ``kernel_cache`` keeps the page cache across opens for the same reason.
    The one hole: libfuse's path-based API gives each hard link its own kernel inode, so after
    a write through one link the kernel would show the old size, mtime and pages through the
    others until the timeout.  On libfuse 3, :mod:`.links` invalidates them by path; libfuse 2
    has no way to (``auto_cache`` drops pages but not the cached size), which is why this
    server prefers libfuse 3 (:func:`load_mfusepy`).
no ``hard_remove``
    libfuse renames a file unlinked while open to ``.fuse_hidden*`` and unlinks that name at
    the last close; the operations keep such a file out of the upper layer and serve it under
    that name (:meth:`.copyup.UpperWriter._hide`).  With ``hard_remove`` the kernel's ``fstat``,
    ``fchmod`` or ``ftruncate`` of the open file reached us without a path or handle
    (``ESTALE``, ``EBADF``), where POSIX says the open file lives on (issue 18).
``big_writes`` (libfuse 2 only; libfuse 3 always does it)
    writes of up to 128 KiB per request instead of 4 KiB.
``allow_other`` (root only)
    other users may use the mount, as they may use the tree; an unprivileged user would need
    ``user_allow_other`` in ``/etc/fuse.conf``.
single-threaded (``nothreads``), foreground
    Python callbacks serialise on the GIL anyway; one thread was about twice as fast.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EXIT_NO_LIBFUSE",
    "TIMEOUT",
    "LibfuseMissingError",
    "die_with_parent",
    "load_mfusepy",
    "main",
    "mount_options",
    "serve",
]

EXIT_NO_LIBFUSE = 3
TIMEOUT = 86400.0
"""Seconds the kernel may cache attributes, names and negative lookups."""
FSNAME = "pytest-overlay"
_PR_SET_PDEATHSIG = 1


def mount_options(fuse_major: int, *, as_root: bool) -> dict[str, Any]:
    """The keyword options given to ``mfusepy.FUSE`` (see the module docstring)."""
    options: dict[str, Any] = {
        "foreground": True,
        "nothreads": True,
        "fsname": FSNAME,
        "subtype": FSNAME,
        "default_permissions": True,
        "use_ino": True,
        "attr_timeout": TIMEOUT,
        "entry_timeout": TIMEOUT,
        "negative_timeout": TIMEOUT,
        "kernel_cache": True,
        "auto_unmount": True,
    }
    if fuse_major == 2:
        options["big_writes"] = True
    if as_root:
        options["allow_other"] = True
    return options


def die_with_parent(parent: int | None, sig: int = signal.SIGKILL) -> None:
    """Get *sig* when the parent dies; exit now if it has died already.

    A server holding a mount asks for SIGTERM, on which libfuse unmounts before exiting.
    """
    # The process's own symbols include libc's; find_library("c") would run ldconfig.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if parent is not None and os.getppid() != parent:
        sys.exit(1)  # the parent died before prctl: nobody will use this mount


def _stdio_to_devnull() -> None:
    """Point fds 0, 1 and 2 at ``/dev/null`` (a detached server has nobody to talk to)."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_overlay._fuse.server",
        description="Serve an overlay of read-only lower layers and one upper layer over FUSE",
    )
    parser.add_argument(
        "--lower",
        action="append",
        default=[],
        metavar="DIR",
        help="A read-only lower layer; repeat it, topmost first",
    )
    parser.add_argument(
        "--upper",
        metavar="DIR",
        help="The writable upper layer; without it (and --work) the mount is read-only",
    )
    parser.add_argument("--work", metavar="DIR", help="A work directory on the upper's filesystem")
    parser.add_argument(
        "--read-only", action="store_true", help="Mount read-only (writes fail with EROFS)"
    )
    parser.add_argument(
        "--ready-fd", type=int, metavar="N", help="Write 'ready' to this fd once mounted"
    )
    parser.add_argument(
        "--parent", type=int, metavar="PID", help="Exit at once unless this is the parent"
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="Outlive the starting process (no parent-death signal); once mounted, point "
        "stdin, stdout and stderr at /dev/null.  Start it in a session of its own.",
    )
    parser.add_argument(
        "--exdev-dir-rename",
        action="store_true",
        help="Answer EXDEV to renames of directories that a lower layer has, as kernel "
        "overlayfs does without redirect_dir (by default they are renamed)",
    )
    parser.add_argument("--debug", action="store_true", help="Let libfuse log every request")
    parser.add_argument("mountpoint", help="Where to mount")
    return parser


def _check_layers(lowers: Sequence[str], upper: str | None, work: str | None) -> str | None:
    """Why these layers cannot be served, or None (no upper and work: a read-only mount)."""
    if not lowers:
        return "no lower directory"
    if (upper is None) != (work is None):
        return "an upper directory and a work directory go together"
    for path in (*lowers, upper, work):
        if path is not None and not os.path.isdir(path):
            return f"not a directory: {path}"
    if upper is not None and work is not None and os.stat(upper).st_dev != os.stat(work).st_dev:
        return f"the work directory {work} is not on the filesystem of the upper {upper}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Mount and serve until unmounted; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = _check_layers(args.lower, args.upper, args.work)
    if problem is not None:
        parser.error(problem)
    if args.detach:
        if args.parent is not None:
            parser.error("--detach and --parent exclude each other")
    else:
        die_with_parent(args.parent, signal.SIGTERM)
    scratch = None
    upper, work = args.upper, args.work
    if upper is None:
        # A lower-only mount is read-only, as in overlayfs; the view still wants an upper
        # layer, so it gets an empty one that nothing can write (the mount is read-only).
        scratch = tempfile.mkdtemp(prefix="pytest-overlay-fs-ro-")
        upper, work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
        os.mkdir(upper)
        os.mkdir(work)
    try:
        return serve(
            args.lower,
            upper,
            work,
            args.mountpoint,
            ready_fd=args.ready_fd,
            detach=args.detach,
            debug=args.debug,
            rename_lower_dirs=not args.exdev_dir_rename,
            read_only=args.read_only or scratch is not None,
            owner=args.parent,
        )
    except LibfuseMissingError as exc:
        print(f"libfuse not installed: apt install fuse3 ({exc})", file=sys.stderr)
        return EXIT_NO_LIBFUSE
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class LibfuseMissingError(Exception):
    """mfusepy could not load libfuse."""


def load_mfusepy() -> Any:
    """Import mfusepy; raise :class:`LibfuseMissingError` when libfuse is unusable.

    Where both libfuse 3 and 2 are installed and nothing says which (``FUSE_LIBRARY_NAME``,
    ``FUSE_LIBRARY_PATH``), it takes libfuse 3, which mfusepy would not: only libfuse 3 can
    tell the kernel that the other names of a hard link changed (:mod:`.links`).
    """
    if not ({"FUSE_LIBRARY_NAME", "FUSE_LIBRARY_PATH"} & os.environ.keys()):
        import ctypes.util

        if sys.platform.startswith("linux") and ctypes.util.find_library("fuse3"):
            os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    except (OSError, AttributeError) as exc:  # mfusepy raises these when libfuse is unusable
        raise LibfuseMissingError(str(exc)) from exc
    return mfusepy


def _layers_by_fd(lowers: Sequence[str], upper: str, work: str) -> tuple[list[str], str, str]:
    """The layers as ``/proc/self/fd/N`` paths of descriptors opened now, before the mount.

    Such a path jumps to the directory the descriptor holds, whatever is mounted over its
    old path since; the descriptors stay open for the life of the process.
    """

    def pin(path: str) -> str:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/self/fd/{fd}"

    return [pin(lower) for lower in lowers], pin(upper), pin(work)


def _stay_off(mountpoint: str) -> None:
    """Keep this process from reaching *mountpoint* by path once it is mounted."""
    os.chdir("/")
    inside = os.path.join(os.path.realpath(mountpoint), "")
    # Everything the server runs is imported already; a later import must not look there.
    sys.path[:] = [
        entry
        for entry in sys.path
        if not os.path.join(os.path.realpath(entry or "."), "").startswith(inside)
    ]
    # A logged traceback reads source lines, perhaps from a package under the project.
    import linecache

    linecache.getlines = lambda filename, module_globals=None: []


def serve(
    lowers: Sequence[str],
    upper: str,
    work: str,
    mountpoint: str,
    *,
    ready_fd: int | None = None,
    detach: bool = False,
    debug: bool = False,
    auto_unmount: bool = True,
    rename_lower_dirs: bool = True,
    read_only: bool = False,
    over_itself: bool = False,
    owner: int | None = None,
) -> int:
    """Mount the overlay on *mountpoint* and serve it in this thread until it is unmounted.

    :param ready_fd: gets ``ready`` (and is closed) once the kernel has initialised the mount.
    :param auto_unmount: let ``fusermount`` unmount if this process is killed.  Only a mount
        in a private mount namespace, which dies with its processes, can do without; it then
        skips starting ``fusermount`` (a few milliseconds per mount).
    :param rename_lower_dirs: see :class:`.ops.OverlayOperations`.
    :param read_only: mount read-only: the kernel answers every write with ``EROFS`` before
        it reaches the server, so *upper* is only read.
    :param over_itself: the mount will cover paths this server needs (in-place mode: the
        project, and perhaps pytest's basetemp inside it).  The layers are then reached
        through descriptors opened before the mount (:func:`_layers_by_fd`), and nothing in
        this process may go through *mountpoint* again: that would be a request to itself,
        which a single-threaded server never answers.
    :param owner: the process this mount serves (pytest), named in the mount's source so
        that a later run can tell a mount it left behind (:mod:`pytest_overlay._stale`).
    :returns: the exit status (0 after an unmount, 1 if mounting failed).
    """
    os.umask(0)  # the kernel has applied the caller's umask to every mode we get
    if over_itself:
        lowers, upper, work = _layers_by_fd(lowers, upper, work)
        _stay_off(mountpoint)
    mfusepy = load_mfusepy()
    from .ops import OverlayOperations
    from .statpack import fuse_class

    served = False
    from .links import LinkNames, PathInvalidator

    invalidator = PathInvalidator(mfusepy._libfuse) if mfusepy.fuse_version_major == 3 else None

    def on_init() -> None:
        nonlocal ready_fd, served
        served = True
        if invalidator is not None:
            invalidator.capture()
        if detach:
            _stdio_to_devnull()
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
            ready_fd = None

    operations = OverlayOperations(
        lowers,
        upper,
        work,
        on_init=on_init,
        rename_lower_dirs=rename_lower_dirs,
        links=LinkNames(invalidator),
    )
    options = mount_options(mfusepy.fuse_version_major, as_root=os.geteuid() == 0)
    options["auto_unmount"] = auto_unmount
    if owner is not None:
        options["fsname"] = f"{FSNAME}:{owner}"
    if read_only:
        options["ro"] = True
    if over_itself and mfusepy.fuse_version_major == 2:
        options["nonempty"] = True  # libfuse 2 refuses a non-empty mount point without it
    if debug:
        options["debug"] = True
    try:
        fuse_class(mfusepy)(operations, mountpoint, **options)
    except RuntimeError as exc:  # libfuse's own message is on stderr already
        if served and mfusepy.fuse_version_major == 3:
            # libfuse 3 reports a loop ended by SIGTERM, SIGINT or SIGHUP as an error
            # (status 7 or 8, by version); it has unmounted by then, which is the end we
            # asked for.
            return 0
        print(f"mounting {mountpoint} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
