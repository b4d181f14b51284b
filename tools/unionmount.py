"""Run the unionmount-testsuite overlay conformance suite against several overlay implementations.

Usage (as root, from the repository root)::

    git clone https://github.com/amir73il/unionmount-testsuite /tmp/unionmount-testsuite
    python tools/unionmount.py --suite /tmp/unionmount-testsuite
    python tools/unionmount.py --suite /tmp/unionmount-testsuite --impl pytest-overlay-fs rmtree
    python tools/unionmount.py --suite /tmp/unionmount-testsuite --xdev

The suite (GPL-2.0) is not vendored in this repository: pass ``--suite`` the path of a checkout.

Every test script of the suite (``tests/*.py``, or the names given on the command line) runs
once per implementation, as ``./run --ov [--fuse=NAME] SCRIPT``, with a timeout per script:

* ``kernel``: kernel overlayfs, for reference;
* ``fuse-overlayfs``: the ``fuse-overlayfs`` program, mounted as ``mount -t fuse.fuse-overlayfs``;
* ``pytest-overlay-fs``: this project's FUSE mount helper, as ``mount -t fuse.pytest-overlay-fs``.

All implementations run in the same configuration: the lower layer on a tmpfs of its own, the
upper and work directories on another tmpfs (``UNIONMOUNT_LOWERDIR`` and
``UNIONMOUNT_BASEDIR``), the union mounted on a directory next to them
(``UNIONMOUNT_MNTPOINT``). Both tmpfs are mounted fresh for every script. A script passes when
``run`` exits 0. The table marks the scripts that ``run`` would not select itself in this
configuration, and the totals are given for all scripts and for the suite's own selection.
By default ``run`` expects directory renames to work (redirect_dir; it turns that on for the
kernel), so it does not select ``rename-exdev``; with ``--xdev`` (passed on to ``run``) it
expects EXDEV from directory renames instead, and selects ``rename-exdev`` but not the
``rename-*dir`` scripts that move directories; ours is then mounted with
``redirect_dir=off`` (through ``UNIONMOUNT_MNTOPTIONS``), its option for that behaviour.
``dir-weird-open-dir`` is never in its list.

What this does to the machine: nothing that outlives it. It moves itself into a private mount
namespace (``unshare(CLONE_NEWNS)``, mounts made private), so every mount it or the suite makes
is invisible outside. ``mount(8)`` runs FUSE helpers with the standard PATH
(``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``), so inside that namespace only
it bind-mounts a temporary directory over ``/usr/local/sbin`` that holds symlinks to what that
directory holds plus ``pytest-overlay-fs`` (the console script next to this Python, or
``--helper``). The host's ``/usr/local/sbin`` is not changed. Everything lives in a temporary
directory under ``/tmp``, removed at the end. After every script, every mount under that
directory is unmounted (``umount -l``; a FUSE connection that does not let go is aborted
through ``/sys/fs/fuse/connections``, where it mounts the fusectl file system, in the private
namespace, if the host has not), and FUSE servers still running with that directory on their
command line are killed by process id. A script that exceeds the timeout is killed with its
process group, after its FUSE connection is aborted. The temporary directory is made
world-searchable (0755) because the ``impermissible`` script opens files as the bin user.

Exit status: 0 when ``pytest-overlay-fs`` passes at least as many of the scripts ``run`` selects
as ``fuse-overlayfs`` does (or when they were not both run), 1 when it passes fewer, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

KERNEL = "kernel"
FUSE_OVERLAYFS = "fuse-overlayfs"
OURS = "pytest-overlay-fs"
IMPLEMENTATIONS = (KERNEL, FUSE_OVERLAYFS, OURS)
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
"""The PATH that mount(8) gives mount.fuse3, which runs the helper named by ``-t fuse.NAME``."""

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
UMOUNT_TIMEOUT = 20.0
FUSECTL = Path("/sys/fs/fuse/connections")
SERVER_EXIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Outcome:
    """How one script ended on one implementation."""

    status: str
    """``PASS``, ``FAIL`` or ``TIMEOUT``."""
    seconds: float
    output: str


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    device: str
    """``major:minor``"""
    target: str
    fstype: str


class _Libc:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    def unshare(self, flags: int) -> None:
        self._check(int(self._libc.unshare(ctypes.c_int(flags))), "unshare")

    def mount(self, source: str, target: str, flags: int) -> None:
        result = self._libc.mount(
            source.encode(), target.encode(), None, ctypes.c_ulong(flags), None
        )
        self._check(int(result), f"mount {source} on {target}")


def _die(message: str) -> NoReturn:
    print(f"unionmount: {message}", file=sys.stderr)
    sys.exit(2)


def _unescape_mountinfo(text: str) -> str:
    r"""Decode the octal escapes (``\040`` for a space) of a mountinfo field."""
    out: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == "\\" and text[index + 1 : index + 4].isdigit():
            out.append(chr(int(text[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def mounts_under(root: Path) -> list[Mount]:
    """The mounts on *root* or below it, last mounted first."""
    prefix = str(root)
    found: list[Mount] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        target = _unescape_mountinfo(fields[4])
        if target == prefix or target.startswith(prefix + "/"):
            found.append(Mount(int(fields[0]), fields[2], target, fields[separator + 1]))
    return sorted(found, key=lambda mount: mount.mount_id, reverse=True)


def abort_fuse(mount: Mount) -> None:
    """Abort the FUSE connection of *mount*, which fails every pending and later request."""
    abort = FUSECTL / mount.device.split(":")[1] / "abort"
    try:
        abort.write_text("1")
    except OSError as exc:
        print(f"unionmount: cannot abort {mount.target}: {exc}", file=sys.stderr)


def unmount_all(root: Path, *, abort_first: bool) -> None:
    """Lazily unmount everything under *root*."""
    for _ in range(10):  # a lazy unmount can uncover a mount below; a few passes are enough
        mounts = mounts_under(root)
        if not mounts:
            break
        for mount in mounts:
            fuse = mount.fstype == "fuse" or mount.fstype.startswith("fuse.")
            if fuse and abort_first:
                abort_fuse(mount)
            command = ["umount", "-l", "--no-canonicalize", mount.target]
            try:
                subprocess.run(command, check=False, timeout=UMOUNT_TIMEOUT, capture_output=True)
            except subprocess.TimeoutExpired:
                if fuse:
                    abort_fuse(mount)
                    subprocess.run(
                        command, check=False, timeout=UMOUNT_TIMEOUT, capture_output=True
                    )
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"cannot unmount {', '.join(mount.target for mount in left)}")


def _processes_naming(root: Path) -> Iterator[int]:
    """Process ids whose command line mentions *root* (FUSE servers of the suite's mounts)."""
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            yield int(entry.name)


def reap_servers(root: Path) -> None:
    """Give FUSE servers of unmounted file systems time to exit, then kill those left."""
    deadline = time.monotonic() + SERVER_EXIT_TIMEOUT
    while time.monotonic() < deadline:
        if not any(True for _ in _processes_naming(root)):
            return
        time.sleep(0.1)
    for pid in _processes_naming(root):
        print(f"unionmount: killing leftover process {pid}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Selection:
    """The scripts that ``run`` selects itself, read from its source."""

    always: frozenset[str]
    xdev: frozenset[str]
    """Only without redirect_dir (``--xdev``)."""
    redirect: frozenset[str]
    """Only with redirect_dir (the default)."""

    def selects(self, script: str, *, xdev: bool) -> bool:
        return script in self.always or script in (self.xdev if xdev else self.redirect)

    def mark(self, script: str, *, xdev: bool) -> str:
        if self.selects(script, xdev=xdev):
            return ""
        if script in self.xdev:
            return " (xdev)"
        return " (redirect)" if script in self.redirect else " (extra)"


def suite_selection(run_script: Path) -> Selection:
    """Read the scripts that ``run`` selects from the list literals it assigns to ``tests``.

    In an ``if`` that adds to the list, the ``if`` branch is the no-redirect_dir (``--xdev``)
    case, the ``else`` branch the redirect_dir one.
    """

    def names(node: ast.AST) -> set[str]:
        return {
            item.value
            for item in ast.walk(node)
            if isinstance(item, ast.Constant) and isinstance(item.value, str)
        }

    def assigns_tests(statement: ast.stmt) -> ast.expr | None:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "tests" for target in statement.targets
        ):
            return statement.value
        if (
            isinstance(statement, ast.AugAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id == "tests"
        ):
            return statement.value
        return None

    default: set[str] = set()
    xdev: set[str] = set()
    redirect: set[str] = set()
    for statement in ast.parse(run_script.read_text()).body:
        value = assigns_tests(statement)
        if isinstance(value, ast.List):
            default |= names(value)
        elif isinstance(statement, ast.If):
            for branch, into in ((statement.body, xdev), (statement.orelse, redirect)):
                for inner in branch:
                    value = assigns_tests(inner)
                    if isinstance(value, ast.List):
                        into |= names(value)
    return Selection(frozenset(default), frozenset(xdev), frozenset(redirect))


def find_helper(explicit: str | None) -> Path:
    """The ``pytest-overlay-fs`` console script, resolved to a real file."""
    candidates: list[str | None] = [explicit] if explicit else []
    candidates.append(str(Path(sysconfig.get_path("scripts")) / OURS))
    candidates.append(shutil.which(OURS))
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    _die(f"cannot find the {OURS} console script; install the project or pass --helper")


def enter_private_namespace(libc: _Libc, root: Path, helper: Path) -> Path:
    """Unshare the mount namespace, and make *helper* reachable on mount(8)'s PATH in it.

    Return the directory shadowed by the bind mount.
    """
    libc.unshare(CLONE_NEWNS)
    libc.mount("none", "/", MS_REC | MS_PRIVATE)
    if not any(mount.fstype == "fusectl" for mount in mounts_under(FUSECTL)):
        # The FUSE control file system, to abort a connection that hangs; in here only.
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], check=False)
    shadow_target = next(Path(d) for d in STANDARD_PATH if Path(d).is_dir())
    shadow = root / "path"
    shadow.mkdir()
    for entry in shadow_target.iterdir():
        (shadow / entry.name).symlink_to(entry)
    (shadow / OURS).unlink(missing_ok=True)
    (shadow / OURS).symlink_to(helper)
    libc.mount(str(shadow), str(shadow_target), MS_BIND)
    return shadow_target


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_script(
    suite: Path, work: Path, implementation: str, script: str, timeout: float, *, xdev: bool
) -> Outcome:
    """Run one script of the suite on one implementation, and clean up after it."""
    base, lower, union = work / "base", work / "lower", work / "mnt"
    for directory in (base, lower, union):
        directory.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "umt_base", str(base)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "umt_lower", str(lower)], check=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("UNIONMOUNT_")}
    env.update(
        UNIONMOUNT_BASEDIR=str(base),
        UNIONMOUNT_LOWERDIR=str(lower),
        UNIONMOUNT_MNTPOINT=str(union),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    if xdev and implementation == OURS:
        # Ours renames lower directories by default (as overlayfs with redirect_dir=on);
        # --xdev expects the EXDEV of overlayfs without redirect_dir, which is what
        # redirect_dir=off asks our helper for.
        env["UNIONMOUNT_MNTOPTIONS"] = "rw,redirect_dir=off"
    command = [str(suite / "run"), "--ov"]
    if implementation != KERNEL:
        command.append(f"--fuse={implementation}")
    if xdev:
        command.append("--xdev")
    command.append(script)
    log = work / "output.log"
    started = time.monotonic()
    status = "FAIL"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=suite,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = "PASS" if process.wait(timeout=timeout) == 0 else "FAIL"
        except subprocess.TimeoutExpired:
            status = "TIMEOUT"
            for mount in mounts_under(work):
                if mount.fstype.startswith("fuse"):
                    abort_fuse(mount)
            _kill_group(process)
            process.wait(timeout=30)
        finally:
            if process.returncode is None:
                _kill_group(process)
                process.wait(timeout=30)
    seconds = time.monotonic() - started
    unmount_all(work, abort_first=status == "TIMEOUT")
    reap_servers(work)
    text = log.read_text(errors="replace")
    log.unlink()
    if status == "TIMEOUT":
        text += f"\n[unionmount: killed after {timeout:g} s]\n"
    return Outcome(status, seconds, text)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def report(
    scripts: Sequence[str],
    implementations: Sequence[str],
    results: dict[tuple[str, str], Outcome],
    selection: Selection,
    tail: int,
    *,
    xdev: bool,
) -> None:
    """Print the table, the totals and the tails of the failures of ours."""
    width = max(len(name) for name in scripts) + 10
    header = f"{'script':<{width}}" + "".join(f"{impl:>19}" for impl in implementations)
    print(header)
    print("-" * len(header))
    for script in scripts:
        mark = selection.mark(script, xdev=xdev)
        cells = "".join(f"{results[script, impl].status:>19}" for impl in implementations)
        print(f"{script + mark:<{width}}{cells}")
    print("-" * len(header))
    selected = [script for script in scripts if selection.selects(script, xdev=xdev)]
    for label, subset in (
        (f"passed, all {len(scripts)} scripts", scripts),
        (f"passed, run's own {len(selected)}", selected),
    ):
        counts = [sum(results[s, i].status == "PASS" for s in subset) for i in implementations]
        print(f"{label:<{width}}" + "".join(f"{count:>19}" for count in counts))
    print()
    print(
        "not selected by run in this configuration: (xdev) only with --xdev, "
        "(redirect) only without --xdev, (extra) never"
    )
    if OURS not in implementations:
        return
    for script in scripts:
        outcome = results[script, OURS]
        if outcome.status == "PASS":
            continue
        others = ", ".join(
            f"{impl} {results[script, impl].status}" for impl in implementations if impl != OURS
        )
        print()
        print(f"=== {script} on {OURS}: {outcome.status}" + (f" ({others})" if others else ""))
        print(_tail(outcome.output, tail))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run unionmount-testsuite against overlay implementations (as root).",
    )
    parser.add_argument("--suite", type=Path, required=True, help="unionmount-testsuite checkout")
    parser.add_argument(
        "--impl",
        action="append",
        choices=IMPLEMENTATIONS,
        help=f"implementation to test (repeatable; default: all of {', '.join(IMPLEMENTATIONS)})",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per script")
    parser.add_argument("--tail", type=int, default=25, help="output lines per failure of ours")
    parser.add_argument("--helper", help=f"path of the {OURS} console script")
    parser.add_argument(
        "--xdev",
        action="store_true",
        help="pass --xdev to run: expect EXDEV from directory renames (no redirect_dir)",
    )
    parser.add_argument("scripts", nargs="*", help="script names (default: every tests/*.py)")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and print the comparison; see the module docstring."""
    args = _parse(argv)
    suite: Path = args.suite.resolve()
    if not (suite / "run").is_file() or not (suite / "tests").is_dir():
        _die(f"{suite} is not a unionmount-testsuite checkout (no run, no tests/)")
    if os.geteuid() != 0:
        _die("must run as root: the suite mounts file systems")
    implementations: list[str] = [i for i in IMPLEMENTATIONS if i in (args.impl or IMPLEMENTATIONS)]
    available = sorted(path.stem for path in (suite / "tests").glob("*.py"))
    scripts: list[str] = args.scripts or available
    unknown = sorted(set(scripts) - set(available))
    if unknown:
        _die(f"no such script in {suite / 'tests'}: {', '.join(unknown)}")
    helper = find_helper(args.helper) if OURS in implementations else None
    if FUSE_OVERLAYFS in implementations and not any(
        Path(d, FUSE_OVERLAYFS).is_file() for d in STANDARD_PATH
    ):
        _die(f"{FUSE_OVERLAYFS} is not installed on mount(8)'s PATH")
    selection = suite_selection(suite / "run")

    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="unionmount-"))
    # The impermissible script opens files as the bin user (uid 1), who must reach them.
    root.chmod(0o755)
    results: dict[tuple[str, str], Outcome] = {}
    shadowed: Path | None = None
    try:
        shadowed = enter_private_namespace(_Libc(), root, helper or Path("/nonexistent"))
        work = root / "w"
        work.mkdir()
        for script in scripts:
            for impl in implementations:
                outcome = run_script(suite, work, impl, script, args.timeout, xdev=args.xdev)
                results[script, impl] = outcome
                print(
                    f"{script:<28} {impl:<18} {outcome.status:<8} {outcome.seconds:6.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        try:
            unmount_all(root / "w", abort_first=True)
            reap_servers(root / "w")
        finally:
            # The bind mount over the PATH directory exists in this process's namespace only,
            # and would go with it; take it down anyway before removing what it shows.
            if shadowed is not None:
                subprocess.run(["umount", "-l", str(shadowed)], check=False)
            shutil.rmtree(root, ignore_errors=True)
    report(scripts, implementations, results, selection, args.tail, xdev=args.xdev)
    if FUSE_OVERLAYFS in implementations and OURS in implementations:
        selected = [s for s in scripts if selection.selects(s, xdev=args.xdev)]
        ours = sum(results[s, OURS].status == "PASS" for s in selected)
        theirs = sum(results[s, FUSE_OVERLAYFS].status == "PASS" for s in selected)
        return 0 if ours >= theirs else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
