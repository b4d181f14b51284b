"""Machines unlike this one: each environment is simulated for one child pytest, for real.

The child runs a small suite under the plugin in a world that lacks something or differs:

* no ``/dev/fuse`` (a container started without ``--device /dev/fuse``), alone and together
  with blocked user namespaces;
* no libfuse (``FUSE_LIBRARY_PATH`` naming a missing file, or the libraries hidden);
* the project tree on overlayfs, as in a Docker container, once and stacked twice;
* paths longer than ``PATH_MAX`` (4,096 bytes), made by a test or already in the tree;
* an 8 GiB sparse file that a test appends to.

The first three are built in a private mount namespace of the child (``unshare --mount``, see
:data:`ENVIRONMENT`): a tmpfs over ``/dev`` holding everything but ``fuse``, empty files bound
over the libfuse libraries plus a dynamic-linker cache rebuilt without them, overlayfs mounts
holding the project.  Nothing of it is visible on the host, and all of it dies with the child.
Every run checks the outcome, the header or the error, that the project tree is unchanged
(hashed before and after), and that no mount is left on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate, kernel_reason
from tests._sample_project import SUITE_TESTS, build_project, overlay_mounts, tree_digest

ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark", "-rA")
REPO_ROOT = Path(__file__).resolve().parents[1]
USAGE_ERROR = int(pytest.ExitCode.USAGE_ERROR)
_SETUP_FAILED = 125  # the exit status of ENVIRONMENT when it cannot build the environment

ENVIRONMENT = r"""
import json
import os
import subprocess
import sys

from pytest_overlay import _syscalls

MS_BIND = 0x1000
spec = json.loads(sys.argv[1])
scratch = spec["scratch"]


def bind(source, target, recursive=False):
    _syscalls.mount(source, target, None, MS_BIND | (_syscalls.MS_REC if recursive else 0))


try:
    if spec["hide_dev_fuse"]:
        # A tmpfs over /dev showing every host node but fuse, each bound from the host's /dev.
        host_dev = os.path.join(scratch, "host-dev")
        os.mkdir(host_dev)
        bind("/dev", host_dev, recursive=True)
        _syscalls.mount("tmpfs", "/dev", "tmpfs", _syscalls.MS_NOSUID, "mode=0755")
        for name in os.listdir(host_dev):
            source, target = os.path.join(host_dev, name), os.path.join("/dev", name)
            if name == "fuse":
                continue
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            elif os.path.isdir(source):
                os.mkdir(target)
                bind(source, target, recursive=True)
            else:
                open(target, "w").close()
                bind(source, target)
        _syscalls.umount(host_dev, _syscalls.MNT_DETACH)
    if spec["hide_libfuse"]:
        # Empty files over the libraries, and a linker cache that no longer lists them, which
        # is what ctypes.util.find_library consults.
        ldconfig = "/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else "ldconfig"
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True)
        empty = os.path.join(scratch, "empty")
        open(empty, "w").close()
        hidden = set()
        for line in listing.stdout.splitlines():
            if "libfuse" in line and "=>" in line:
                library = os.path.realpath(line.split("=>", 1)[1].strip())
                if library not in hidden:
                    hidden.add(library)
                    bind(empty, library)
        cache = os.path.join(scratch, "ld.so.cache")
        subprocess.run([ldconfig, "-X", "-C", cache], capture_output=True, check=True)
        bind(cache, "/etc/ld.so.cache")
    for lower, upper, work, merged in spec["overlays"]:
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        _syscalls.mount("overlay", merged, "overlay", 0, options)
    os.chdir(spec["cwd"])
except (OSError, subprocess.CalledProcessError) as exc:
    sys.stderr.write(f"environment-setup: {exc}\n")
    sys.exit(125)
os.execvp(spec["argv"][0], spec["argv"])
"""

AS_USER = r"""
import json
import sys
from pathlib import Path

spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["repo"])
from tests import _unpriv

done = _unpriv.run_as_user(
    spec["argv"], cwd=Path(spec["cwd"]), env=spec["env"], block_userns=True
)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
sys.exit(done.returncode)
"""

SMALL_SUITE = """
def test_write(overlay_root):
    (overlay_root / "f").write_text("x")
    assert overlay_root.diff().added == {"f"}

def test_pristine(overlay_root):
    assert not (overlay_root / "f").exists()
    assert (overlay_root / "data.txt").read_text() == "precious\\n"
"""


# --- running a child ----------------------------------------------------------------------------


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "the suite is not running as root (mount namespaces and bind mounts need it)"
    if shutil.which("unshare") is None:
        return "unshare is not installed (apt: util-linux)"
    return None


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def pytest_argv(*args: str) -> list[str]:
    """The argv of a child pytest with the house options."""
    return [sys.executable, "-m", "pytest", *ARGS, *args]


def run_in_environment(
    argv: Sequence[str],
    *,
    cwd: Path,
    scratch: Path,
    hide_dev_fuse: bool = False,
    hide_libfuse: bool = False,
    overlays: Sequence[tuple[Path, Path, Path, Path]] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as root in a private mount namespace built as the flags say; unchecked.

    *overlays* are ``(lower, upper, work, merged)`` mounts, made in order.  *scratch* is an
    empty directory for the environment's own files.
    """
    spec = {
        "scratch": os.fspath(scratch),
        "hide_dev_fuse": hide_dev_fuse,
        "hide_libfuse": hide_libfuse,
        "overlays": [[os.fspath(p) for p in mount] for mount in overlays],
        "cwd": os.fspath(cwd),
        "argv": list(argv),
    }
    command = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c"]
    result = subprocess.run(
        [*command, ENVIRONMENT, json.dumps(spec)],
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != _SETUP_FAILED, result.stderr
    return result


def run_here(argv: Sequence[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run *argv* without any simulation; unchecked."""
    return subprocess.run(
        argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def counts(text: str) -> dict[str, int]:
    """The outcome counts of pytest's last summary line (``errors`` as ``error``)."""
    lines = [line for line in text.splitlines() if re.search(r" in [\d.]+s", line)]
    assert lines, text
    found = re.findall(r"(\d+) (passed|failed|errors?|xfailed|skipped|warnings?)", lines[-1])
    return {kind.rstrip("s"): int(number) for number, kind in found}


def assert_clean(text: str) -> None:
    """No Python traceback and no internal error reached the user."""
    assert "Traceback (most recent call last)" not in text, text
    assert "INTERNALERROR" not in text, text


@pytest.fixture
def root_env() -> None:
    gate("root", _root_reason())


@pytest.fixture
def mounts() -> Iterator[None]:
    """Fail the test if it leaves a mount visible on the host."""
    before = overlay_mounts()
    yield
    assert overlay_mounts() == before


# --- no /dev/fuse -------------------------------------------------------------------------------


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "data.txt").write_text("precious\n")
    (root / "test_small.py").write_text(SMALL_SUITE)
    return root


@pytest.mark.usefixtures("root_env", "mounts")
def test_without_dev_fuse_the_fuse_backend_is_a_usage_error(
    small_project: Path, tmp_path: Path
) -> None:
    before = tree_digest(small_project)
    explicit = run_in_environment(
        pytest_argv("--overlay-backend=fuse"),
        cwd=small_project,
        scratch=tmp_path,
        hide_dev_fuse=True,
    )
    assert explicit.returncode == USAGE_ERROR, output(explicit)
    assert (
        "ERROR: the fuse backend cannot work here: /dev/fuse does not exist" in explicit.stderr
    ), output(explicit)
    assert "To run anyway, use --overlay-backend=" in explicit.stderr
    assert_clean(output(explicit))
    # As root, auto never needs FUSE: the kernel backend serves, and nothing mentions FUSE.
    (tmp_path / "again").mkdir()
    auto = run_in_environment(
        pytest_argv(), cwd=small_project, scratch=tmp_path / "again", hide_dev_fuse=True
    )
    assert auto.returncode == 0, output(auto)
    assert "overlay: backend=kernel (root)" in auto.stdout
    assert counts(auto.stdout) == {"passed": 2}
    assert "fuse not used" not in auto.stdout
    assert tree_digest(small_project) == before


@pytest.mark.usefixtures("root_env", "mounts")
def test_without_dev_fuse_and_user_namespaces_auto_falls_back_to_copy(tmp_path: Path) -> None:
    # An ordinary user whose user namespaces are blocked (chrooted, see _unpriv) on a machine
    # without /dev/fuse: both reasons in the header, and the run passes on copy.
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        uid, gid = _unpriv.ensure_test_user()
        files = {"pytest.ini": "[pytest]\n", "data.txt": "precious\n", "test_small.py": SMALL_SUITE}
        for name, text in files.items():
            (workdir / name).write_text(text)
            os.chown(workdir / name, uid, gid)
        before = tree_digest(workdir)
        spec = {
            "repo": os.fspath(REPO_ROOT),
            "argv": pytest_argv(),
            "cwd": os.fspath(workdir),
            "env": {"PYTHONDONTWRITEBYTECODE": "1"},
        }
        result = run_in_environment(
            [sys.executable, "-c", AS_USER, json.dumps(spec)],
            cwd=REPO_ROOT,
            scratch=tmp_path,
            hide_dev_fuse=True,
        )
        text = output(result)
        assert result.returncode == 0, text
        assert counts(result.stdout) == {"passed": 2}
        assert "overlay: backend=copy" in result.stdout
        assert "kernel not used: creating a user namespace is not permitted here" in text
        assert "fuse not used: /dev/fuse does not exist" in text
        assert_clean(text)
        assert tree_digest(workdir) == before


# --- no libfuse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["FUSE_LIBRARY_PATH names a missing file", "libraries hidden"])
@pytest.mark.usefixtures("root_env", "mounts")
def test_without_libfuse_the_fuse_backend_is_a_usage_error(
    small_project: Path, tmp_path: Path, how: str
) -> None:
    before = tree_digest(small_project)
    if how == "libraries hidden":
        # Nothing can load libfuse, and ctypes.util.find_library no longer finds it.
        explicit = run_in_environment(
            pytest_argv("--overlay-backend=fuse"),
            cwd=small_project,
            scratch=tmp_path,
            hide_libfuse=True,
        )
        reason = "libfuse not installed: install the fuse3 package (apt install fuse3"
    else:
        # mfusepy loads FUSE_LIBRARY_PATH instead of what find_library finds.
        missing = tmp_path / "nowhere" / "libfuse.so.2"
        explicit = run_in_environment(
            pytest_argv("--overlay-backend=fuse"),
            cwd=small_project,
            scratch=tmp_path,
            env={"FUSE_LIBRARY_PATH": os.fspath(missing)},
        )
        reason = f"libfuse cannot be loaded ({missing}: cannot open shared object file"
    text = output(explicit)
    assert explicit.returncode == USAGE_ERROR, text
    assert f"ERROR: the fuse backend cannot work here: {reason}" in explicit.stderr, text
    assert "apt install fuse3" in explicit.stderr
    assert_clean(text)
    # The plugin itself does not need libfuse: the copy backend still runs.
    (tmp_path / "again").mkdir()
    copy = run_in_environment(
        pytest_argv("--overlay-backend=copy"),
        cwd=small_project,
        scratch=tmp_path / "again",
        hide_libfuse=how == "libraries hidden",
        env={} if how == "libraries hidden" else {"FUSE_LIBRARY_PATH": "/nowhere/libfuse.so"},
    )
    assert copy.returncode == 0, output(copy)
    assert counts(copy.stdout) == {"passed": 2}
    assert tree_digest(small_project) == before


# --- the project tree on overlayfs (Docker) -----------------------------------------------------


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.fixture
def container(tmp_path: Path) -> Path:
    """A container's root filesystem, unmounted: ``lower`` (the image), ``upper``, ``work``.

    The project sits in the image, with one file rewritten by the container (in the upper
    layer) and one deleted (a whiteout there); ``tmp`` holds pytest's basetemp, on overlayfs
    too, as in a container.
    """
    base = tmp_path / "container"
    for name in ("lower", "upper", "work", "merged"):
        (base / name).mkdir(parents=True)
    project = base / "lower" / "project"
    project.mkdir()
    build_project(project)
    (project / "notes.txt").write_text("as built into the image\n")
    (project / "gone.txt").write_text("deleted by the container\n")
    for layer in ("lower", "upper"):
        # The container has used /tmp already, so the upper layer holds it too.
        (base / layer / "tmp").mkdir()
        (base / layer / "tmp").chmod(0o1777)
    (base / "upper" / "project").mkdir()
    (base / "upper" / "project" / "notes.txt").write_text("one\ntwo\n")
    _whiteout(base / "upper" / "project" / "gone.txt")
    return base


def _layers_digest(base: Path, *, in_place: bool) -> tuple[str, str]:
    # The merged view is unchanged exactly when neither the image nor the container's upper
    # layer changed; pytest's basetemp in tmp, and in place its cache directory, may change.
    skip = ("tmp", ".pytest_cache") if in_place else ("tmp",)
    return tree_digest(base / "lower"), tree_digest(base / "upper", skip, dir_times=not in_place)


@pytest.mark.parametrize(
    "mode",
    [
        ("--overlay-backend=kernel",),
        ("--overlay-backend=fuse",),
        ("--overlay-backend=copy",),
        ("--overlay", "--overlay-backend=kernel"),
    ],
    ids=["kernel", "fuse", "copy", "in-place"],
)
@pytest.mark.usefixtures("root_env", "mounts")
def test_project_on_overlayfs(container: Path, tmp_path: Path, mode: tuple[str, ...]) -> None:
    gate("kernel", kernel_reason())
    if "--overlay-backend=fuse" in mode:
        gate("fuse", fuse_reason())
    in_place = "--overlay" in mode
    before = _layers_digest(container, in_place=in_place)
    merged = container / "merged"
    basetemp = merged / "tmp" / "basetemp"
    result = run_in_environment(
        pytest_argv(*mode, f"--basetemp={basetemp}"),
        cwd=merged / "project",
        scratch=tmp_path,
        overlays=[(container / "lower", container / "upper", container / "work", merged)],
    )
    text = output(result)
    assert result.returncode == 0, text
    assert counts(result.stdout) == {"passed": SUITE_TESTS}
    backend = mode[-1].split("=")[1]
    described = (
        "a copy of the tree per session, reset after each test" if backend == "copy" else "root"
    )
    assert f"overlay: backend={backend} ({described})" in result.stdout
    assert_clean(text)
    assert _layers_digest(container, in_place=in_place) == before, "the project was modified"


@pytest.mark.usefixtures("root_env", "mounts")
def test_project_on_overlayfs_stacked_twice_falls_back_or_says_why(
    container: Path, tmp_path: Path
) -> None:
    # The container's root is itself on overlayfs (a container in a container): a third
    # level exceeds the kernel's stacking limit.  auto finds that out with a test mount of the
    # project and falls back to fuse, in place too; an explicit kernel makes each test's
    # error say why and what to use.
    gate("kernel", kernel_reason())
    outer = tmp_path / "outer"
    for name in ("upper", "work", "merged"):
        (outer / name).mkdir(parents=True)
    overlays = [
        (container / "lower", container / "upper", container / "work", container / "merged"),
        (container / "merged", outer / "upper", outer / "work", outer / "merged"),
    ]
    before = _layers_digest(container, in_place=False)
    hint = "the kernel stacks overlayfs at most two levels deep"
    modes = [(), ("--overlay",), ("--overlay-backend=kernel",), ("--overlay-backend=copy",)]
    for number, mode in enumerate(modes):
        scratch = tmp_path / f"scratch{number}"
        scratch.mkdir()
        result = run_in_environment(
            pytest_argv(*mode, f"--basetemp={tmp_path / f'basetemp{number}'}"),
            cwd=outer / "merged" / "project",
            scratch=scratch,
            overlays=overlays,
        )
        text = output(result)
        assert_clean(text)
        if "--overlay-backend=kernel" not in mode:
            assert result.returncode == 0, text
            assert counts(result.stdout) == {"passed": SUITE_TESTS}
            if mode in ((), ("--overlay",)):
                # In place too: as root the view can cover the project in a private namespace.
                assert "overlay: backend=fuse (root)" in result.stdout, text
            if "--overlay-backend=copy" not in mode:
                assert "kernel not used: the kernel refuses" in result.stdout, text
                assert "overlayfs stacks at most two levels deep" in result.stdout
            continue
        assert counts(result.stdout) == {"error": SUITE_TESTS}, text
        assert "overlay: backend=kernel (root)" in result.stdout
        assert text.count(hint) >= SUITE_TESTS, text
        assert "'maximum fs stacking depth exceeded'" in text
        assert "use --overlay-backend=fuse (as root also with --overlay), or" in text
    assert _layers_digest(container, in_place=False) == before
    # In place, the plugin makes its store in the cache directory; nothing else was written.
    written = {p.relative_to(outer / "upper").as_posix() for p in (outer / "upper").rglob("*")}
    assert {p for p in written if not p.startswith("project/.pytest_cache")} <= {"project"}


# --- paths longer than PATH_MAX -----------------------------------------------------------------

SEGMENT = "d" * 200
DEPTH = 25  # "d/" * 25 of these is 5,025 bytes: beyond PATH_MAX (4,096) below any root

DEEP_SUITE = r"""
import errno
import os

import pytest

SEGMENT = "d" * 200
DEPTH = 25


def descend(root, names, *, create):
    # One component at a time through directory descriptors: no path is longer than a name.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        try:
            if create:
                os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def write(fd, name, data, flags):
    file = os.open(name, os.O_WRONLY | flags, 0o644, dir_fd=fd)
    os.write(file, data)
    os.close(file)


def read(fd, name):
    file = os.open(name, os.O_RDONLY, dir_fd=fd)
    data = os.read(file, 1000)
    os.close(file)
    return data


def test_{where}(overlay_root):
    chain = ["{top}", *[SEGMENT] * DEPTH]
    assert sum(len(name) + 1 for name in chain) > 4096
    if overlay_root.backend == "fuse":
        # The server reaches the layers by path: beyond PATH_MAX it must say so.
        with pytest.raises(OSError) as excinfo:
            os.close(descend(overlay_root, chain, create={create}))
        assert excinfo.value.errno == errno.ENAMETOOLONG
        (overlay_root / "after.txt").write_text("the view still works\n")
        assert (overlay_root / "after.txt").read_text() == "the view still works\n"
        return
    fd = descend(overlay_root, chain, create={create})
    try:
        write(fd, "leaf.txt", b"more\n", os.O_CREAT | os.O_APPEND)
        assert read(fd, "leaf.txt") == {expected}
    finally:
        os.close(fd)


def test_{where}_then_fail(overlay_root):
    chain = ["{top}", *[SEGMENT] * DEPTH]
    try:
        os.close(descend(overlay_root, chain, create={create}))
    except OSError as exc:
        assert overlay_root.backend == "fuse" and exc.errno == errno.ENAMETOOLONG
    assert False, "deliberate, for the failure report"
"""


def make_chain(root: Path, names: Sequence[str], leaf: bytes) -> None:
    """Make the directories *names* below *root*, one inside the other, and ``leaf.txt``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file, leaf)
        os.close(file)
    finally:
        os.close(fd)


def fd_tree_digest(root: Path) -> str:
    """Like :func:`tree_digest`, through directory descriptors, so paths may pass PATH_MAX."""
    digest = hashlib.sha256()
    for directory, dirnames, filenames, dirfd in os.fwalk(root):
        dirnames.sort()
        rel = os.fsencode(os.path.relpath(directory, root))
        for name in sorted([*dirnames, *filenames]):
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            digest.update(
                b"%s/%s %o %d %d %d\0"
                % (rel, os.fsencode(name), st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            )
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.fsencode(os.readlink(name, dir_fd=dirfd)))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                with open(fd, "rb") as file:
                    digest.update(file.read())
    return digest.hexdigest()


def _scratch_left(basetemp: Path) -> list[str]:
    scratch = basetemp / "overlay"
    return sorted(os.listdir(scratch)) if scratch.exists() else []


def _run_deep_suite(
    tmp_path: Path, project: Path, backend: str, **fill: str
) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """Run :data:`DEEP_SUITE`, its placeholders filled from *fill*, in *project* on *backend*.

    :returns: the run, its whole output, and the project's digest just before the run.
    """
    if backend == "kernel":
        gate("kernel", kernel_reason())
    if backend == "fuse":
        gate("fuse", fuse_reason())
    suite = DEEP_SUITE
    for key, value in fill.items():
        suite = suite.replace("{" + key + "}", value)
    (project / "test_deep.py").write_text(suite)
    before = fd_tree_digest(project)
    result = run_here(
        pytest_argv(
            f"--overlay-backend={backend}",
            "--overlay-keep=none",
            f"--basetemp={tmp_path / 'basetemp'}",
        ),
        cwd=project,
    )
    return result, output(result), before


@pytest.mark.parametrize("backend", ["kernel", "fuse", "copy"])
@pytest.mark.usefixtures("mounts")
def test_paths_beyond_path_max_made_by_a_test(tmp_path: Path, backend: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    result, text, before = _run_deep_suite(
        tmp_path, project, backend, where="made_deep", top="new", create="True",
        expected="b'more\\n'",
    )  # fmt: skip
    basetemp = tmp_path / "basetemp"
    assert counts(result.stdout) == {"passed": 1, "failed": 1}, text
    # The failure report prints, whatever it makes of paths it cannot name in full.
    assert f"overlay changes ({backend})" in result.stdout, text
    # The report says why it has no diff, without printing a path of 5,000 bytes (on fuse
    # the chain could not be made, so there is a diff).
    if backend != "fuse":
        assert "a path in the view is longer than the system allows (PATH_MAX" in result.stdout
    assert "d" * 1000 not in result.stdout
    assert_clean(text)
    assert _scratch_left(basetemp) == [], "the test's views were not cleaned up"
    assert fd_tree_digest(project) == before


@pytest.mark.parametrize(
    "backend",
    [
        "kernel",
        "fuse",
        "copy",
    ],
)
@pytest.mark.usefixtures("mounts")
def test_paths_beyond_path_max_in_the_lower_layer(tmp_path: Path, backend: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # pytest's own collection cannot walk the deep tree; tell it not to.
    (project / "pytest.ini").write_text("[pytest]\nnorecursedirs = deep\n")
    make_chain(project, ["deep", *[SEGMENT] * DEPTH], b"leaf\n")
    result, text, before = _run_deep_suite(
        tmp_path, project, backend, where="deep_lower", top="deep", create="False",
        expected="b'leaf\\nmore\\n'",
    )  # fmt: skip
    basetemp = tmp_path / "basetemp"
    assert_clean(text)
    if backend == "copy":
        # A known limit: the copy backend copies the tree by path, and says so at setup.
        assert counts(result.stdout) == {"error": 2}, text
        assert (
            "pytest-overlay could not set up the overlay: a path in the tree is longer than "
            "the system allows (PATH_MAX, 4,096 bytes), and the copy backend copies the tree "
            "by path. Use --overlay-backend=kernel" in text
        ), text
    else:
        assert counts(result.stdout) == {"passed": 1, "failed": 1}, text
        assert f"overlay changes ({backend})" in result.stdout, text
    assert _scratch_left(basetemp) == [], "the test's views were not cleaned up"
    assert fd_tree_digest(project) == before


# --- an 8 GiB sparse file -----------------------------------------------------------------------

SPARSE_SIZE = 8 << 30
SPARSE_SUITE = r"""
import os
import time

from pytest_overlay import ChangeKind

SIZE = 8 << 30
ALLOCATED_LIMIT = 64 << 20  # what a copy that kept the holes may take on disk, at most


def test_append_copies_up_sparsely(overlay_root):
    start = time.monotonic()
    path = overlay_root / "huge.img"
    with open(path, "ab") as f:
        f.write(b"tail\n")
    took = time.monotonic() - start
    st = os.stat(path)
    assert st.st_size == SIZE + 5
    assert st.st_blocks * 512 < ALLOCATED_LIMIT, f"{st.st_blocks * 512} bytes allocated"
    with open(path, "rb") as f:
        assert f.read(5) == b"head\n"
        f.seek(SIZE // 2)
        assert f.read(7) == b"middle\n"
        f.seek(SIZE)
        assert f.read() == b"tail\n"
    change = overlay_root.diff().by_path("huge.img")
    assert change is not None and change.kind is ChangeKind.MODIFIED
    assert (change.old_size, change.new_size) == (SIZE, SIZE + 5)
    assert time.monotonic() - start < 30, f"the append alone took {took:.1f} s"


def test_the_next_test_sees_the_original(overlay_root):
    assert os.stat(overlay_root / "huge.img").st_size == SIZE
"""

SPARSE_FAILURE = """
def test_append_then_fail(overlay_root):
    with open(overlay_root / "huge.img", "ab") as f:
        f.write(b"tail\\n")
    assert False, "deliberate, for the failure report and the kept layer"
"""


@pytest.fixture
def sparse_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    with open(root / "huge.img", "wb") as f:
        f.write(b"head\n")
        f.seek(SPARSE_SIZE // 2)
        f.write(b"middle\n")
        f.truncate(SPARSE_SIZE)
    (root / "test_sparse.py").write_text(SPARSE_SUITE)
    (root / "failing.py").write_text(SPARSE_FAILURE)
    assert os.stat(root / "huge.img").st_blocks * 512 < 1 << 20, "no sparse files here"
    return root


def _sparse_state(project: Path, *, kept: bool = False) -> tuple[str, tuple[int, int, int]]:
    # Hashing the 8 GiB would take longer than the runs: its metadata and extents instead.
    # Where a layer is kept, pytest's cache directory appears in the project (and its mtime
    # changes).
    st = os.stat(project / "huge.img")
    skip = ("huge.img", ".pytest_cache")
    return tree_digest(project, skip, dir_times=not kept), (
        st.st_size,
        st.st_mtime_ns,
        st.st_blocks,
    )


@pytest.mark.parametrize(
    "backend",
    [
        "kernel",
        "copy",
        pytest.param("fuse", marks=pytest.mark.stress),
    ],
)
@pytest.mark.usefixtures("mounts")
def test_sparse_8gib_file_appended_to(sparse_project: Path, tmp_path: Path, backend: str) -> None:
    if backend == "kernel":
        gate("kernel", kernel_reason())
    if backend == "fuse":
        gate("fuse", fuse_reason())
    before = _sparse_state(sparse_project)
    start = time.monotonic()
    result = run_here(
        pytest_argv(
            f"--overlay-backend={backend}", f"--basetemp={tmp_path / 'basetemp'}", "test_sparse.py"
        ),
        cwd=sparse_project,
    )
    took = time.monotonic() - start
    text = output(result)
    assert counts(result.stdout) == {"passed": 2}, text
    assert took < 60, f"the run took {took:.0f} s"
    assert _sparse_state(sparse_project) == before


@pytest.mark.stress
@pytest.mark.parametrize("backend", ["kernel", "copy"])
@pytest.mark.usefixtures("mounts")
def test_sparse_8gib_file_in_a_failure_report_and_a_kept_layer(
    sparse_project: Path, tmp_path: Path, backend: str
) -> None:
    # Slow by design: the report states each version's SHA-256, so it reads 8 GiB four times
    # (old and new, for the terminal and for the kept record).
    if backend == "kernel":
        gate("kernel", kernel_reason())
    before = _sparse_state(sparse_project, kept=True)
    start = time.monotonic()
    result = run_here(
        pytest_argv(
            f"--overlay-backend={backend}", f"--basetemp={tmp_path / 'basetemp'}", "failing.py"
        ),
        cwd=sparse_project,
    )
    took = time.monotonic() - start
    text = output(result)
    assert counts(result.stdout) == {"failed": 1}, text
    assert (
        f"Large file huge.img: {SPARSE_SIZE} -> {SPARSE_SIZE + 5} bytes (not hashed, over 64 MiB)"
        in result.stdout
    )
    assert_clean(text)
    assert took < 120, f"the run took {took:.0f} s"
    kept = list((sparse_project / ".pytest_cache" / "d" / "overlay").glob("runs/*/tests/*/upper"))
    assert len(kept) == 1, text
    st = os.stat(kept[0] / "huge.img")
    assert st.st_size == SPARSE_SIZE + 5
    assert st.st_blocks * 512 < 64 << 20, "the kept layer's copy is not sparse"
    assert _sparse_state(sparse_project, kept=True) == before


# --- root without CAP_SYS_ADMIN -----------------------------------------------------------------


@pytest.mark.usefixtures("root_env", "mounts")
def test_root_without_cap_sys_admin_uses_a_user_namespace(small_project: Path) -> None:
    # A container's root is root without CAP_SYS_ADMIN (Docker's default): it cannot mount in
    # the host's namespaces, but, where user namespaces are allowed, it can in its own.
    gate("setpriv", None if shutil.which("setpriv") else "setpriv is not installed (util-linux)")
    before = tree_digest(small_project, skip=(".pytest_cache",), dir_times=False)
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    result = run_here([*drop, *pytest_argv()], cwd=small_project)
    text = output(result)
    assert result.returncode == 0, text
    assert counts(result.stdout) == {"passed": 2}, text
    assert "overlay: backend=kernel (user namespace)" in result.stdout, text
    assert_clean(text)
    assert tree_digest(small_project, skip=(".pytest_cache",), dir_times=False) == before


@pytest.mark.usefixtures("root_env", "mounts")
def test_docker_like_container_falls_back_to_copy_and_says_why(small_project: Path) -> None:
    # Docker's default: root without CAP_SYS_ADMIN, and a seccomp profile that refuses
    # unshare, mount and namespace clones (tests/_seccomp.py), so neither a user namespace
    # nor a FUSE mount (fusermount3 is refused too) can be had.
    gate("setpriv", None if shutil.which("setpriv") else "setpriv is not installed (util-linux)")
    gate("x86-64", None if platform.machine() == "x86_64" else "the filter is for x86-64")
    before = tree_digest(small_project, skip=(".pytest_cache",), dir_times=False)
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    seccomp = [sys.executable, str(Path(__file__).with_name("_seccomp.py"))]
    result = run_here([*drop, *seccomp, *pytest_argv()], cwd=small_project)
    text = output(result)
    assert result.returncode == 0, text
    assert counts(result.stdout) == {"passed": 2}, text
    assert (
        "overlay: backend=copy (a copy of the tree per session, reset after each test)"
        in result.stdout
    ), text
    # Each reason says what blocked it and what to change.
    assert (
        "kernel not used: creating a user namespace is not permitted here (a container's "
        "seccomp profile, such as Docker's default, or a chroot blocks it); run the container "
        "with `--security-opt seccomp=unconfined --cap-add SYS_ADMIN`" in result.stdout
    ), text
    assert "fuse not used: a FUSE test mount failed:" in result.stdout, text
    assert "(fusermount3: mount failed: Operation not permitted)" in result.stdout, text
    assert_clean(text)
    assert tree_digest(small_project, skip=(".pytest_cache",), dir_times=False) == before
