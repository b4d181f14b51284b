"""``pytest-overlay-fs``: the FUSE mount helper, ``pytest-overlay-fs SOURCE MOUNTPOINT -o OPTIONS``.

It follows the convention of FUSE file systems mounted by ``mount(8)``:
``mount -t fuse.pytest-overlay-fs pytest-overlay-fs MNT -o lowerdir=A:B,upperdir=U,workdir=W``
runs ``mount.fuse3``, which runs ``pytest-overlay-fs pytest-overlay-fs MNT -o rw,lowerdir=…``.
The options are those of kernel overlayfs (see :data:`USAGE`).

It starts the server (:mod:`.server`) detached, in a session of its own, waits until the mount
is live, and exits 0; the server then serves until the mount is unmounted (``umount MNT`` or
``fusermount3 -u MNT``) and exits by itself.  Every failure is one line on standard error and
exit status 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, NoReturn

from pytest_overlay._overlayopts import split, unescape

from . import client
from .server import _check_layers

__all__ = ["MountOptions", "OptionError", "main", "parse_options"]

PROG = "pytest-overlay-fs"
EXIT_FAILED = 1
EXIT_USAGE = 2
READY_TIMEOUT = 30.0
"""Seconds to wait for the mount to become live."""

# Generic mount options that mean nothing to this file system, or that it always does.
_IGNORED = frozenset(
    {
        "rw",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "async",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
        "default_permissions",
        "allow_other",
    }
)

USAGE = f"""\
Mount an overlay of read-only lower directories and one writable upper directory over FUSE,
like kernel overlayfs, served by pytest-overlay's FUSE server.

  {PROG} SOURCE MOUNTPOINT -o lowerdir=A:B,upperdir=U,workdir=W
  mount -t fuse.{PROG} {PROG} MOUNTPOINT -o lowerdir=A:B,upperdir=U,workdir=W

SOURCE is ignored (mount(8) shows it as the source).  OPTIONS is a comma-separated list
(-o may be repeated):

  lowerdir=A:B   the read-only lower directories, colon-separated, topmost first (required)
  upperdir=U     the writable upper directory, in the kernel overlayfs format; without it
                 (and workdir) the mount is a read-only merge of the lower directories
  workdir=W      an empty directory on the file system of U (required with upperdir)
  ro             mount read-only: every write fails with EROFS, and U is only read
  redirect_dir=on|off|follow|nofollow
                 "on" (the default) renames directories that a lower directory has, as
                 overlayfs with redirect_dir=on does; the others answer EXDEV to such a
                 rename, as overlayfs does without redirect_dir (mv then copies)

As in overlayfs, a backslash escapes the next character: write "\\:" and "\\," for a colon or
a comma inside a path, and "\\\\" for a backslash.  An unknown option is ignored with a
warning.  These generic mount options are ignored silently:

{textwrap.fill(", ".join(sorted(_IGNORED)), width=92, initial_indent="  ", subsequent_indent="  ")}

The command returns once the mount is live.  The server keeps serving in the background,
detached (a session of its own, standard input, output and error on /dev/null, not tied to the
process that started it), until the file system is unmounted (umount MOUNTPOINT, or
fusermount3 -u MOUNTPOINT); then it exits by itself.

Exit status: 0 mounted, 1 bad options, missing directories or a failed mount, 2 usage error.
"""


_REDIRECT_DIR = ("on", "off", "follow", "nofollow")


class OptionError(ValueError):
    """A mount option that cannot be used (the message says which, and why)."""


@dataclass(frozen=True)
class MountOptions:
    """What ``-o`` asked for."""

    lowers: tuple[str, ...]
    """Topmost first."""
    upper: str | None
    """None for a read-only merge of the lower directories."""
    work: str | None
    unknown: tuple[str, ...] = ()
    """Options ignored with a warning."""
    rename_lower_dirs: bool = True
    """False for ``redirect_dir=off|follow|nofollow``: renaming a lower directory is EXDEV."""
    read_only: bool = False
    """``ro``, or no upper directory."""


def parse_options(options: Sequence[str]) -> MountOptions:
    """Parse the ``-o`` arguments (each a comma-separated list).

    :raises OptionError: for a missing required option or an empty value.
    """
    values: dict[str, str] = {}
    unknown: list[str] = []
    read_only = False
    for argument in options:
        for option in split(argument, ","):
            if not option or option in _IGNORED:
                continue
            if option == "ro":
                read_only = True
                continue
            key, has_value, value = option.partition("=")
            if key in ("lowerdir", "upperdir", "workdir"):
                if not has_value or not value:
                    raise OptionError(f"{key} needs a value: {key}=DIR")
                values[key] = value
            elif key == "redirect_dir":
                if value not in _REDIRECT_DIR:
                    choices = "|".join(_REDIRECT_DIR)
                    raise OptionError(f"redirect_dir must be one of {choices}, not {value!r}")
                values[key] = value
            else:
                unknown.append(unescape(option))
    # As in overlayfs: lowerdir always; workdir with upperdir; neither means read-only.
    required = ["lowerdir"]
    if "upperdir" in values or "workdir" in values:
        required += ["upperdir", "workdir"]
    missing = [key for key in required if key not in values]
    if missing:
        raise OptionError("missing option " + ", ".join(f"{key}=" for key in missing))
    lowers = tuple(unescape(part) for part in split(values["lowerdir"], ":"))
    if "" in lowers:
        raise OptionError(f"lowerdir has an empty directory: {values['lowerdir']}")
    upper = values.get("upperdir")
    work = values.get("workdir")
    return MountOptions(
        lowers=lowers,
        upper=None if upper is None else unescape(upper),
        work=None if work is None else unescape(work),
        unknown=tuple(unknown),
        rename_lower_dirs=values.get("redirect_dir", "on") == "on",
        read_only=read_only or upper is None,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {PROG} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} SOURCE MOUNTPOINT -o OPTIONS",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE", help="Ignored; mount(8) shows it")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="Where to mount")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="Comma-separated mount options (see above); may be repeated",
    )
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _spawn(options: MountOptions, mountpoint: str, log: IO[bytes]) -> str | None:
    """Start the detached server and wait until it is ready; return why it failed, or None."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [client.PACKAGE_ROOT, env.get("PYTHONPATH")]))
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    command = client._command(
        options.lowers,
        options.upper,
        options.work,
        mountpoint,
        write_fd,
        detach=True,
        extra=(
            *(() if options.rename_lower_dirs else ("--exdev-dir-rename",)),
            *(("--read-only",) if options.read_only else ()),
        ),
    )
    try:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(write_fd,),
                env=env,
                cwd="/",  # keep no file system busy
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        try:
            reason = client._wait_ready(read_fd, process, READY_TIMEOUT)
        except BaseException:
            process.kill()
            raise
    finally:
        os.close(read_fd)
    if reason is None:
        # Detached on purpose: it is not ours to wait for.  Without a return code, Popen's
        # finaliser would warn that the subprocess is still running.
        process.returncode = 0
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # libfuse unmounts on SIGTERM
        try:
            process.wait(2.0)
        except subprocess.TimeoutExpired:
            process.kill()  # auto_unmount's fusermount then unmounts
            process.wait()
    log.seek(0)
    text = log.read().decode(errors="replace")
    refusal = client.fusermount_refusal(text)
    if refusal is not None:
        return refusal
    output = _one_line(text)
    return f"{reason}: {output}" if output else reason


def main(argv: Sequence[str] | None = None) -> int:
    """Mount, leave the server serving in the background, and return the exit status."""
    args = _parser().parse_args(argv)
    try:
        options = parse_options(args.options)
    except OptionError as exc:
        return _fail(str(exc))
    for option in options.unknown:
        print(f"{PROG}: warning: unknown option {option!r} ignored", file=sys.stderr, flush=True)
    mountpoint = os.path.abspath(args.mountpoint)
    options = dataclasses.replace(
        options,
        lowers=tuple(os.path.abspath(lower) for lower in options.lowers),
        upper=None if options.upper is None else os.path.abspath(options.upper),
        work=None if options.work is None else os.path.abspath(options.work),
    )
    if not os.path.isdir(mountpoint):
        return _fail(f"mount point is not a directory: {mountpoint}")
    try:
        problem = _check_layers(options.lowers, options.upper, options.work)
    except OSError as exc:
        problem = str(exc)
    if problem is not None:
        return _fail(problem)
    unavailable = client.availability()
    if unavailable is not None:
        return _fail(f"FUSE cannot work here: {unavailable}")
    try:
        with tempfile.TemporaryFile(prefix="pytest-overlay-fs-") as log:
            reason = _spawn(options, mountpoint, log)
    except OSError as exc:
        return _fail(f"mounting {mountpoint} failed: {exc}")
    except KeyboardInterrupt:
        return _fail(f"mounting {mountpoint} interrupted")
    if reason is not None:
        return _fail(f"mounting {mountpoint} failed: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
