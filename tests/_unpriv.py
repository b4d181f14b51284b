"""Run a command as a real unprivileged user, for tests of the plugin's unprivileged code path.

The suite runs as root, but the unprivileged path (a user namespace, overlayfs with
``userxattr``) has to be exercised by a process that really is an ordinary user: uid not 0,
no capabilities, still allowed to create user namespaces.  :func:`run_as_user` runs a command
as :data:`TEST_USER`, created on demand; :func:`prelude_command` gives the command line
that does it, which can also simulate another machine for the child (:class:`Namespace`),
as root or as that user (``tests/_run.py`` runs it).

The interpreter and its site-packages usually live where that user cannot go (``/root`` is
mode 0700 here).  Nothing on the host is chmod-ed; instead a root *prelude*
(``tests/_prelude.py``), in a private mount namespace of the child's own, binds a stand-in over
every directory on the way that the user could not traverse, showing just what is needed, so
that every path stays the same; then it becomes the user and executes the command.  The mount
namespace dies with the command; the empty scratch directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import _prelude

__all__ = [
    "OPEN_DEV_FUSE",
    "STANDIN_PARENT",
    "TEST_USER",
    "HarnessError",
    "Namespace",
    "StandIn",
    "can_run_as_user",
    "communicate",
    "ensure_test_user",
    "exposure_plan",
    "make_user_dir",
    "prelude_command",
    "run_as_user",
    "setup_failure",
    "user_env",
    "user_workdir",
    "user_workdir_ctx",
    "write_user_files",
]

TEST_USER = "pytest-overlay-test"
"""The unprivileged user that :func:`run_as_user` runs commands as."""

STANDIN_PARENT = Path("/tmp")
"""Where each call makes its root-owned scratch directory for stand-ins (tests may repoint it)."""

_PRELUDE_FILE = Path(_prelude.__file__).absolute()
REPO_ROOT = Path(__file__).absolute().parents[1]
"""The checkout, which every child can reach (an editable install's ``.pth`` points here)."""

_LOCK_PATH = "/tmp/pytest-overlay-test-user.lock"
_SCRATCH_PREFIX = "pytest-overlay-standins-"

_MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)

_X = 0o1  # permission triads: search, then read plus search
_RX = 0o5


class HarnessError(RuntimeError):
    """The unprivileged-run harness cannot work here; the message says why and what to do."""


@dataclass(frozen=True)
class StandIn:
    """A directory the test user cannot traverse, and the entries of it to show."""

    directory: Path
    children: tuple[str, ...]


@dataclass(frozen=True)
class Namespace:
    """How a child's private mount namespace differs from the host's (by default, not at all).

    Each field simulates a machine unlike this one, for the child only: the host never sees it.
    """

    hide_dev_fuse: bool = False
    """``/dev`` without ``fuse``, as in a container started without ``--device /dev/fuse``."""
    hide_libfuse: bool = False
    """Empty files over libfuse's libraries and a linker cache rebuilt without them."""
    dev_fuse_mode: int | None = None
    """A ``/dev/fuse`` of this mode over the host's (distributions ship 0666; CI has 0600)."""
    overlays: tuple[tuple[Path, Path, Path, Path], ...] = ()
    """Overlayfs mounts ``(lower, upper, work, merged)`` made in order, as in a container."""
    block_userns: bool = False
    """Chrooted into a bind mount of ``/``: the kernel refuses user namespaces to the child."""


OPEN_DEV_FUSE = Namespace(dev_fuse_mode=0o666)
"""``/dev/fuse`` as distributions ship it, so that the test user's ``fusermount3`` can open it."""


# --- the test user ------------------------------------------------------------------------------


def _lookup_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        return None


def _useradd() -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("useradd", path=search)


def ensure_test_user() -> tuple[int, int]:
    """Return ``(uid, gid)`` of :data:`TEST_USER`, creating the user first if needed (root only).

    Creation is serialized with a file lock in ``/tmp`` so that xdist workers do not race.
    """
    entry = _lookup_user()
    if entry is None:
        if os.geteuid() != 0:
            raise HarnessError(f"user {TEST_USER!r} does not exist and only root can create it")
        useradd = _useradd()
        if useradd is None:
            raise HarnessError(f"user {TEST_USER!r} does not exist and useradd is not installed")
        from filelock import FileLock  # not at the top: the root prelude runs with -S

        with FileLock(_LOCK_PATH, timeout=120):
            entry = _lookup_user()
            if entry is None:
                argv = [useradd, "--system", "--user-group", "--no-create-home"]
                argv += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
                argv += ["--comment", "pytest-overlay unprivileged tests", TEST_USER]
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                entry = _lookup_user()
                if entry is None:
                    raise HarnessError(
                        f"useradd {TEST_USER} failed ({done.returncode}): {done.stderr.strip()}"
                    )
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise HarnessError(f"user {TEST_USER!r} has uid or gid 0; remove it and let it be remade")
    return entry.pw_uid, entry.pw_gid


def make_user_dir(parent: Path) -> Path:
    """Make a fresh directory inside *parent*, mode 0755 and owned by the test user."""
    uid, gid = ensure_test_user()
    path = Path(tempfile.mkdtemp(prefix="user-", dir=parent))
    os.chown(path, uid, gid)
    path.chmod(0o755)
    return path


def user_workdir() -> Path:
    """Make a fresh empty directory in ``/tmp``, mode 0755, owned by the test user.

    The caller removes it; :func:`user_workdir_ctx` does that for you.
    """
    uid, gid = ensure_test_user()
    path = Path(tempfile.mkdtemp(prefix="pytest-overlay-user-", dir="/tmp"))
    os.chown(path, uid, gid)
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def user_workdir_ctx() -> Iterator[Path]:
    """Yield :func:`user_workdir` and remove it afterwards, whatever modes the child left."""
    path = user_workdir()
    try:
        yield path
    finally:
        shutil.rmtree(path)  # as root, modes such as 000 do not stop the removal


def write_user_files(root: Path, files: Mapping[str, str]) -> None:
    """Write *files* (name to text) into *root*, each owned by the test user."""
    uid, gid = ensure_test_user()
    for name, text in files.items():
        (root / name).write_text(text)
        os.chown(root / name, uid, gid)


@contextlib.contextmanager
def user_project_ctx(build: Callable[[Path], None]) -> Iterator[Path]:
    """A project directory built by *build* and owned by the test user, removed afterwards."""
    with user_workdir_ctx() as workdir:
        root = workdir / "project"
        root.mkdir()
        build(root)
        uid, gid = ensure_test_user()
        for directory, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                os.lchown(Path(directory, name), uid, gid)
        os.chown(root, uid, gid)
        yield root


# --- what to expose -----------------------------------------------------------------------------


def _touched(path: Path) -> set[Path]:
    """Resolve *path* as the kernel would, returning each symlink passed and the final path.

    Every returned path has a parent free of symlinks, so its ancestors are real directories.
    """
    found: set[Path] = set()
    pending = list(path.parts[1:])
    current = Path("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        if candidate.is_symlink() and links < _MAX_SYMLINKS:
            links += 1
            found.add(candidate)
            target = candidate.readlink()
            if target.is_absolute():
                current = Path("/")
            pending[:0] = [p for p in target.parts if p not in ("/", ".")]
        else:
            current = candidate
    found.add(current)
    return found


def _permits(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    """Whether mode bits give *uid* (primary group *gid*, no other groups) the *need* triad."""
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def exposure_plan(paths: Iterable[str | os.PathLike[str]], uid: int, gid: int) -> list[StandIn]:
    """Return the stand-ins that make every existing path in *paths* reachable for *uid*.

    A directory on the way that *uid* cannot search gets a stand-in showing the child on the
    way; a needed directory that *uid* cannot list and search itself gets one showing all its
    entries (new entries made directly in such a directory then land in the stand-in and are
    lost).  Deepest first, the order in which they must be mounted.
    """
    leaves: set[Path] = set()
    for path in paths:
        leaves |= {p for p in _touched(Path(path).absolute()) if os.path.lexists(p)}
    blocked: dict[Path, set[str]] = {}
    for leaf in sorted(leaves):
        for ancestor in leaf.parents:
            if not _permits(ancestor.stat(), uid, gid, _X):
                name = leaf.parts[len(ancestor.parts)]
                blocked.setdefault(ancestor, set()).add(name)
        if leaf.is_dir() and not leaf.is_symlink() and not _permits(leaf.stat(), uid, gid, _RX):
            blocked.setdefault(leaf, set()).update(entry.name for entry in leaf.iterdir())
    if Path("/") in blocked:
        raise HarnessError(f"user {uid} cannot search '/', which no stand-in can cover")
    ordered = sorted(blocked, key=lambda d: (-len(d.parts), d))
    return [StandIn(d, tuple(sorted(blocked[d]))) for d in ordered]


def _needed_paths(cwd: Path, extra: Sequence[Path]) -> list[Path]:
    executable = Path(sys.executable)
    needed = [executable, executable.parent, REPO_ROOT, cwd, *extra]
    needed += [Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)]
    needed += [Path(entry) for entry in sys.path if entry and Path(entry).exists()]
    return needed


# --- running ------------------------------------------------------------------------------------


def user_env(cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of a child run as the test user in *cwd*, updated with *env*."""
    search = [os.fspath(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    result = {
        "PATH": os.pathsep.join(search),
        "HOME": os.fspath(cwd),
        "LANG": "C.UTF-8",
        "USER": TEST_USER,
        "LOGNAME": TEST_USER,
    }
    result.update(env or {})
    return result


def communicate(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* in a session of its own with *env*, stdin closed; return it finished, unchecked.

    On timeout the child's whole process group is killed (servers and workers with it, not
    just the child) and :class:`subprocess.TimeoutExpired` is raised with what it printed.
    """
    with subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # still unreaped, so the group is ours
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


@contextlib.contextmanager
def prelude_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    user: bool = True,
    namespace: Namespace = Namespace(),
    extra_paths: Sequence[Path] = (),
) -> Iterator[list[str]]:
    """Yield the root command line that runs *argv* in *cwd* in a private mount namespace.

    The command is the root prelude (see the module docstring): it builds *namespace*, and
    with *user* it also shows the test user what it needs and becomes that user, before it
    executes *argv*.  Run the command as root, with the environment the child is to have
    (:func:`user_env` for the test user), while the context is open: its scratch directory is
    removed on exit.  The other arguments mean what they mean for :func:`run_as_user`.
    """
    if not argv:
        raise ValueError("argv must name a command")
    cwd = cwd.absolute()  # the prelude changes directory before it enters cwd
    ids = ensure_test_user() if user else None
    plan = exposure_plan(_needed_paths(cwd, extra_paths), *ids) if ids else []
    if namespace.hide_dev_fuse:
        # A stand-in for /dev showing every host node but fuse, each bound from the host's.
        plan.append(StandIn(Path("/dev"), tuple(sorted(set(os.listdir("/dev")) - {"fuse"}))))
    scratch = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=STANDIN_PARENT)
    try:
        spec = {
            "uid": ids and ids[0],
            "gid": ids and ids[1],
            "scratch": scratch,
            "standins": [[os.fspath(s.directory), list(s.children)] for s in plan],
            "hide_libfuse": namespace.hide_libfuse,
            "overlays": [[os.fspath(p) for p in mount] for mount in namespace.overlays],
            "dev_fuse_mode": namespace.dev_fuse_mode,
            "block_userns": namespace.block_userns,
            "cwd": os.fspath(cwd),
            "argv": list(argv),
        }
        yield [sys.executable, "-I", "-S", os.fspath(_PRELUDE_FILE), json.dumps(spec)]
    finally:
        shutil.rmtree(scratch)  # only ever an empty directory on the host


def run_as_user(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    extra_paths: Sequence[Path] = (),
    block_userns: bool = False,
    open_dev_fuse: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as :data:`TEST_USER` in *cwd* and return the finished process, unchecked.

    The child gets a minimal environment (``PATH``, ``HOME`` = *cwd*, ``LANG``, ``USER``,
    ``LOGNAME``) updated with *env*; nothing else of the caller's leaks in.  It can reach the
    interpreter, ``sys.path``, the repository, *cwd* and *extra_paths* through stand-ins in a
    private mount namespace (see the module docstring).  Exit codes 125 to 127 with a message
    starting ``unpriv-prelude:`` mean the harness itself failed.  On timeout the child's whole
    process group is killed and :class:`subprocess.TimeoutExpired` is raised.

    With *block_userns* the child runs chrooted (into a bind mount of ``/``, so it sees the
    same files): the kernel refuses user namespaces to chrooted processes, which is how a
    machine that blocks them looks to the plugin.  With *open_dev_fuse* the child sees a
    ``/dev/fuse`` of mode 0666, as most distributions ship it (this machine's is 0600, and
    fusermount3 opens it with the user's own rights), without changing the host's.
    """
    mode = OPEN_DEV_FUSE.dev_fuse_mode if open_dev_fuse else None
    namespace = Namespace(block_userns=block_userns, dev_fuse_mode=mode)
    with prelude_command(argv, cwd=cwd, namespace=namespace, extra_paths=extra_paths) as prelude:
        done = communicate(prelude, env=user_env(cwd, env), timeout=timeout)
    return subprocess.CompletedProcess(list(argv), done.returncode, done.stdout, done.stderr)


def setup_failure(done: subprocess.CompletedProcess[str]) -> str | None:
    """What the prelude said if it could not build the child's namespace, else None."""
    failed = done.returncode == _prelude.EXIT_SETUP and done.stderr.startswith(_prelude.PREFIX)
    return done.stderr.strip() if failed else None


@functools.cache
def can_run_as_user() -> str | None:
    """Return ``None`` when :func:`run_as_user` works here, else the reason it does not.

    Needs root; creates :data:`TEST_USER` if missing and runs a probe through the harness.
    """
    if not sys.platform.startswith("linux"):
        return f"running as another user needs Linux namespaces, not {sys.platform}"
    if os.geteuid() != 0:
        return f"running as {TEST_USER} needs root, and the tests run as uid {os.geteuid()}"
    if _lookup_user() is None and _useradd() is None:
        return f"user {TEST_USER!r} does not exist and useradd is not installed (apt: passwd)"
    probe = "import os, sys; print(os.getuid()); sys.exit(os.geteuid() == 0)"
    try:
        uid, _ = ensure_test_user()
        with user_workdir_ctx() as workdir:
            done = run_as_user([sys.executable, "-c", probe], cwd=workdir, timeout=60)
    except (OSError, HarnessError, subprocess.SubprocessError) as exc:
        return f"running a probe as {TEST_USER} failed: {exc}"
    if done.returncode != 0 or done.stdout.strip() != str(uid):
        return f"a probe run as {TEST_USER} failed ({done.returncode}): {done.stderr.strip()}"
    return None
