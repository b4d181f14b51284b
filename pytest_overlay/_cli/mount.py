"""``pytest-overlay mount`` and ``umount``: a kept test's view of the tree, with kernel overlayfs
(or FUSE where the kernel cannot, as the fixture does).

:func:`views_of` tells :mod:`.clean` which views still use a layer it would remove.  The
mount options come from :mod:`pytest_overlay._overlayopts`, the mount table from
:mod:`pytest_overlay._mountinfo`.

The view stacks the kept upper layer over the lower layers the test ran on.  Read-only, the
kept upper is the topmost *lower* layer, which writes nothing anywhere.  The default store lies
inside the project, which is itself a lower layer, and overlayfs refuses a lower layer inside
another (``ELOOP``, "overlapping lowerdir path"); the kept upper is then mounted as the upper
layer of a read-only (``ro``) overlay instead, which the kernel allows.  With ``--rw`` it is the
upper layer of a writable overlay, so writes land in the kept layer.  Both need a work
directory, made beside the kept upper (``<test dir>/work``); ``umount`` removes it, and
``clean`` removes what views that lived in a user's shell left.

Real root mounts in the current mount namespace, so the user's shell sees the view until
``umount``.  An ordinary user cannot mount where others would see it, so the command enters a
new user and mount namespace, mounts there, and replaces itself with a shell (or ``--command``)
in the view: the view lives exactly as long as that shell.  The shell gets no capabilities, so
permissions work in the view as they did for the test.

Views carry the mount source ``pytest-overlay``, which is how ``umount`` and ``clean`` tell
them from other mounts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from pytest_overlay import _mountinfo, _namespaces, _overlayopts, _probe, _syscalls
from pytest_overlay._errors import MountError
from pytest_overlay._files import remove_tree
from pytest_overlay._keep import RECORD_FILE
from pytest_overlay._layers import whiteout_file_markers
from pytest_overlay._safetext import safe_path

from .common import (
    EXIT_CANNOT_MOUNT,
    EXIT_OK,
    CliError,
    Context,
    add_run_option,
    plural,
    subparser,
)
from .records import Kept, find_test, select_run

SOURCE = "pytest-overlay"
WORK_DIR = "work"
VIEW_ENV = "PYTEST_OVERLAY_VIEW"


def views_of(directory: Path) -> list[Path]:
    """Where views that use a layer inside *directory* are mounted (best effort)."""
    if not sys.platform.startswith("linux"):
        return []
    directory = directory.resolve()
    try:
        table = _mountinfo.read()
    except OSError:
        return []
    return [
        mount.point
        for mount in table
        if mount.source == SOURCE
        and any(_is_within(path, directory) for path in mount.layer_dirs())
    ]


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


# --- the commands' arguments -------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add ``mount`` and ``umount`` to the parser of ``pytest-overlay``."""
    sub = subparser(
        subparsers,
        "mount",
        "Recreate a kept test's view of the tree at a directory",
        "Mount the tree as the test left it at DIR, an existing empty directory: the test's "
        "kept layer over the layers it ran on, with kernel overlayfs (FUSE where the kernel "
        "cannot).  As root the view is "
        "mounted for everyone until `pytest-overlay umount DIR`; as an ordinary user it lives "
        "in a private namespace, and a shell is started in it: exit the shell to unmount.",
    )
    sub.add_argument("nodeid", metavar="NODEID", help="The test's node id, or a unique part of it")
    sub.add_argument("dir", metavar="DIR", help="An existing empty directory to mount the view at")
    sub.add_argument(
        "--rw",
        action="store_true",
        help="Make the view writable; writes change the kept layer itself",
    )
    sub.add_argument(
        "--command",
        metavar="CMD",
        help="Run CMD with /bin/sh -c in DIR instead of a shell; the view ends with it",
    )
    add_run_option(sub)
    sub.set_defaults(handler=_cmd_mount)

    sub = subparser(
        subparsers,
        "umount",
        "Unmount a view made by mount",
        "Unmount a view that `pytest-overlay mount` mounted at DIR as root.  A view mounted by "
        "an ordinary user lives only as long as the shell it started: exit that shell.",
    )
    sub.add_argument("dir", metavar="DIR", help="Where the view is mounted")
    sub.set_defaults(handler=_cmd_umount)


def _cmd_mount(ctx: Context) -> int:
    store = ctx.located.require()
    kept = find_test(store, select_run(store, ctx.args.run), ctx.args.nodeid)
    return mount_kept(ctx, kept, Path(ctx.args.dir))


def _cmd_umount(ctx: Context) -> int:
    return unmount_view(ctx, Path(ctx.args.dir))


# --- mount ------------------------------------------------------------------------------------


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise CliError(f"views need Linux overlayfs, not {sys.platform}", code=EXIT_CANNOT_MOUNT)


def _check_target(target: Path, test_dir: Path) -> Path:
    shown = safe_path(os.fspath(target))
    if not target.exists():
        raise CliError(f"{shown} does not exist", hint="create an empty directory for the view")
    if not target.is_dir():
        raise CliError(f"{shown} is not a directory", hint="give an empty directory")
    if any(target.iterdir()):
        raise CliError(f"{shown} is not empty", hint="mount the view at an empty directory")
    resolved = target.resolve()
    if any(mount.point == resolved for mount in _mountinfo.read()):
        raise CliError(f"{shown} is already a mount point", hint="give another empty directory")
    if _is_within(resolved, test_dir.resolve()):
        raise CliError(f"{shown} is inside the kept layer itself", hint="give another directory")
    return resolved


def _scan_upper(upper: Path) -> tuple[bool, list[str]]:
    """Whether opaque directories are marked only with ``user.*`` xattrs, and the ``.wh.``
    files that mark whiteouts in a layer written that way (kernel overlayfs shows them)."""
    found = {"trusted.overlay.opaque": False, "user.overlay.opaque": False}
    for directory, _, _ in os.walk(upper):
        for name in found:
            with contextlib.suppress(OSError):
                if os.getxattr(directory, name, follow_symlinks=False) == b"y":
                    found[name] = True
    user_xattrs = found["user.overlay.opaque"] and not found["trusted.overlay.opaque"]
    return user_xattrs, whiteout_file_markers(upper)


def _mount_overlay(target: Path, lowers: list[Path], options: dict[str, str | None]) -> None:
    _overlayopts.mount_overlay(target, lowers, options, source=SOURCE)


def _mount_view(
    target: Path, upper: Path, lowers: list[Path], *, rw: bool, options: dict[str, str | None]
) -> None:
    def with_upper(extra: dict[str, str | None]) -> None:
        work = upper.parent / WORK_DIR
        work.mkdir(mode=0o700, exist_ok=True)
        layers = {"upperdir": os.fspath(upper), "workdir": os.fspath(work)}
        _mount_overlay(target, lowers, {**layers, **options, **extra})

    if rw:
        with_upper({})
        return
    try:
        _mount_overlay(target, [upper, *lowers], options)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        # The store lies inside a lower layer (the default): see the module docstring.
        with_upper({"ro": None})


def mount_kept(ctx: Context, kept: Kept, target: Path) -> int:
    """Mount the view of *kept* at *target*; as an ordinary user, exec a shell inside it."""
    _require_linux()
    record = kept.record
    assert record is not None
    nodeid = safe_path(record.nodeid)
    show_hint = f"`pytest-overlay show {shlex.quote(nodeid)}` prints the test's changes unmounted"
    upper = kept.upper
    if upper is None:
        raise CliError(
            f"{nodeid} was kept without an upper layer ({safe_path(record.backend)} backend), "
            "so there is no view to mount",
            hint=show_hint,
        )
    if not upper.is_dir():
        raise CliError(f"the kept layer of {nodeid} is missing: {safe_path(str(upper))}")
    lowers = [Path(p) for p in record.lowers]
    if not lowers:
        raise CliError(f"the record of {nodeid} names no lower layers", hint=show_hint)
    for lower in lowers:
        if not lower.is_dir():
            raise CliError(
                f"lower layer {safe_path(str(lower))} of {nodeid} no longer exists (or is not a "
                "directory), so the test's view cannot be rebuilt",
                hint=show_hint,
            )
    target = _check_target(target, kept.directory)
    probe = _probe.probe_kernel()
    rw = bool(ctx.args.rw)
    command: str | None = ctx.args.command
    if not probe.ok:
        kernel_reason = _probe.for_the_command_line(probe.reason)
        # As the fixture does: FUSE where the kernel cannot (a kernel below 5.11 for an
        # ordinary user, a container without user namespaces).
        from pytest_overlay._backends.fuse import probe_fuse

        fuse_reason = probe_fuse()
        if fuse_reason is not None:
            raise CliError(
                f"kernel overlayfs cannot be mounted here: {kernel_reason}; "
                f"nor FUSE: {fuse_reason}",
                code=EXIT_CANNOT_MOUNT,
                hint=show_hint + " (the only way for layers kept by the copy backend)",
            )
        ctx.warn(f"kernel overlayfs cannot be mounted here ({kernel_reason}): mounting with FUSE")
        return _fuse_view(ctx, nodeid, target, upper, lowers, rw=rw, command=command)
    user_xattrs, foreign = _scan_upper(upper)
    if foreign:
        ctx.warn(
            f"the kept layer marks whiteouts or opaque directories with "
            f"{plural(len(foreign), '.wh. file')}, which kernel overlayfs shows as ordinary files: "
            + ", ".join(safe_path(name) for name in foreign[:5])
        )
    root = _namespaces.is_real_root()
    # A layer whose opaque directories are marked the way unprivileged overlays mark them
    # needs userxattr even as root.
    options = _overlayopts.feature_options(userxattr=user_xattrs or not root)
    if root and command is None:
        _mount_or_explain(target, upper, lowers, rw=rw, options=options)
        how = "writable: changes go to the kept layer" if rw else "read-only"
        ctx.print(f"mounted the view of {nodeid} ({how}) at {safe_path(str(target))}")
        ctx.print(f"unmount it with: pytest-overlay umount {safe_path(str(target))}")
        return EXIT_OK
    _enter_private_namespace(root)
    with _namespaces.privileged():
        _mount_or_explain(target, upper, lowers, rw=rw, options=options)
    if command is None:
        how = "writable: changes go to the kept layer" if rw else "read-only"
        ctx.err.write(
            f"{nodeid} ({how}) is mounted at {safe_path(str(target))} for this shell only; "
            "exit the shell to unmount\n"
        )
    return _exec_in(target, _shell_argv(command), ctx)


def _shell_argv(command: str | None) -> list[str]:
    """The user's shell, or ``sh -c`` *command*: what runs in a view for ``--command``."""
    return [os.environ.get("SHELL") or "/bin/sh"] if command is None else ["/bin/sh", "-c", command]


def _fuse_view(
    ctx: Context,
    nodeid: str,
    target: Path,
    upper: Path,
    lowers: list[Path],
    *,
    rw: bool,
    command: str | None,
) -> int:
    """The view of a kept test served by our FUSE file system (``pytest-overlay-fs``).

    As root without a command it stays mounted until ``umount``, as a kernel view does.
    Otherwise the shell (or *command*) runs as a child in the view, which is unmounted when
    it exits: a FUSE mount cannot be made private to one shell.
    """
    from pytest_overlay._fuse import helper

    work = upper.parent / WORK_DIR
    work.mkdir(mode=0o700, exist_ok=True)
    data = _overlayopts.legacy_data(lowers, {"upperdir": str(upper), "workdir": str(work)})
    if helper.main([SOURCE, os.fspath(target), "-o", data + ("" if rw else ",ro")]) != 0:
        # pytest-overlay-fs said why on standard error.
        raise CliError(
            f"could not mount the view at {safe_path(str(target))} with FUSE",
            code=EXIT_CANNOT_MOUNT,
        )
    how = "writable: changes go to the kept layer" if rw else "read-only"
    root = _namespaces.is_real_root()
    if root and command is None:
        ctx.print(f"mounted the view of {nodeid} ({how}, FUSE) at {safe_path(str(target))}")
        ctx.print(f"unmount it with: pytest-overlay umount {safe_path(str(target))}")
        return EXIT_OK
    if command is None:
        ctx.err.write(
            f"{nodeid} ({how}, FUSE) is mounted at {safe_path(str(target))} until this shell "
            "exits\n"
        )
    argv = _shell_argv(command)
    ctx.out.flush()
    ctx.err.flush()
    try:
        done = subprocess.run(
            argv, cwd=target, env={**os.environ, VIEW_ENV: os.fspath(target)}, check=False
        )
    finally:
        _unmount_fuse(target, root=root)
    return done.returncode


def _unmount_fuse(target: Path, *, root: bool) -> None:
    if root:
        _syscalls.umount(target, _syscalls.MNT_DETACH)
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    subprocess.run([tool, "-u", "-z", os.fspath(target)], check=False)


def _mount_or_explain(
    target: Path, upper: Path, lowers: list[Path], *, rw: bool, options: dict[str, str | None]
) -> None:
    try:
        _mount_view(target, upper, lowers, rw=rw, options=options)
    except MountError as exc:
        # Already says what is wrong and what to do (the option string is too long).
        raise CliError(
            f"could not mount the view at {safe_path(str(target))}: {exc.strerror}",
            code=EXIT_CANNOT_MOUNT,
        ) from exc
    except OSError as exc:
        unprivileged = not _namespaces.is_real_root()
        reason = _probe.explain_overlay_failure(exc.errno or 0, unprivileged=unprivileged)
        raise CliError(
            f"could not mount the view at {safe_path(str(target))}: {reason}",
            code=EXIT_CANNOT_MOUNT,
        ) from exc


def _enter_private_namespace(root: bool) -> None:
    try:
        if root:
            _syscalls.unshare(_syscalls.CLONE_NEWNS)
            _syscalls.mount(None, "/", None, _syscalls.MS_REC | _syscalls.MS_PRIVATE)
        else:
            # No ambient capabilities: the shell started in the view must not bypass the
            # permissions the test saw.
            _namespaces.enter_user_namespace(for_children=False)
    except OSError as exc:
        reason = _probe.explain_userns_failure("unshare", exc.errno or 0)
        raise CliError(
            f"cannot make a private namespace: {reason}", code=EXIT_CANNOT_MOUNT
        ) from exc


def _exec_in(target: Path, argv: list[str], ctx: Context) -> NoReturn:
    env = dict(os.environ)
    env[VIEW_ENV] = os.fspath(target)
    os.chdir(target)
    ctx.out.flush()
    ctx.err.flush()
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv is a list; the shell is the point
    except OSError as exc:
        raise CliError(f"cannot run {safe_path(argv[0])}: {exc.strerror}") from exc


# --- umount -----------------------------------------------------------------------------------


def unmount_view(ctx: Context, target: Path) -> int:
    """Unmount a view that ``mount`` made as root, and remove its work directory."""
    _require_linux()
    shown = safe_path(os.fspath(target))
    resolved = Path(os.path.realpath(target))
    entries = [mount for mount in _mountinfo.read() if mount.point == resolved]
    root = _namespaces.is_real_root()
    user_hint = (
        "a view mounted by an ordinary user lives in a private namespace only as long as the "
        "shell `pytest-overlay mount` started: exit that shell to unmount it"
    )
    if not entries:
        if not root:
            raise CliError(f"nothing is mounted at {shown} here", hint=user_hint)
        raise CliError(
            f"{shown} is not a mount point",
            hint="give the directory that `pytest-overlay mount` mounted the view at",
        )
    entry = entries[-1]
    if entry.fstype != "overlay" or entry.source != SOURCE:
        raise CliError(
            f"{shown} is not a view mounted by pytest-overlay (it is a {safe_path(entry.fstype)} "
            f"mount of {safe_path(entry.source)})",
            hint="use umount(8) if you really mean to unmount it",
        )
    try:
        _syscalls.umount(resolved)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise CliError(
                f"{shown} is busy: a process has its working directory or an open file in it",
                hint=f"leave it (cd elsewhere) and close those programs, or `umount -l {shown}`",
            ) from exc
        if exc.errno == errno.EPERM:
            raise CliError(
                f"not permitted to unmount {shown}",
                hint=user_hint if not root else "",
            ) from exc
        raise
    _remove_work_dirs(ctx, entry)
    ctx.print(f"unmounted {shown}")
    return EXIT_OK


def _remove_work_dirs(ctx: Context, entry: _mountinfo.MountInfo) -> None:
    still_used = {path for other in _mountinfo.read() for path in other.layer_dirs()}
    for value in entry.option_values("workdir"):
        work = Path(_overlayopts.unescape(value))
        # Only the directory mount made: named "work", beside a kept test's record.
        if work.name != WORK_DIR or not (work.parent / RECORD_FILE).is_file():
            continue
        if work in still_used:
            continue
        try:
            remove_tree(work)
        except OSError as exc:
            ctx.warn(f"could not remove the work directory {safe_path(value)}: {exc.strerror}")
