"""The FUSE mount helper ``pytest-overlay-fs`` (``pytest_overlay._fuse.helper``).

Option parsing is tested directly.  The real mounts run the helper in a child in a private
mount namespace (``tests._run.run`` with a namespace), so the host never sees them, and check
that the detached server outlives the helper, serves the overlay, and exits by itself once
unmounted.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay._fuse.client import PACKAGE_ROOT
from pytest_overlay._fuse.helper import MountOptions, OptionError, parse_options
from tests._gates import fuse_reason, gate
from tests._run import Result, run
from tests._unpriv import Namespace
from tests._waits import mounted, wait_until

HELPER = [sys.executable, "-m", "pytest_overlay._fuse.helper"]
SERVER_MODULE = b"pytest_overlay._fuse.server"


def _env() -> dict[str, str]:
    """The helper's package first on its path, whatever an editable install points at."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    }


# --- options ----------------------------------------------------------------------------------


def test_options_as_mount_fuse3_passes_them() -> None:
    options = parse_options(["rw,lowerdir=/a:/b,upperdir=/u,workdir=/w,dev,suid"])
    assert options == MountOptions(lowers=("/a", "/b"), upper="/u", work="/w")


def test_options_escapes_and_repeated_o() -> None:
    options = parse_options([r"lowerdir=/x\:y:/p\,q:/back\\slash", r"upperdir=/u\,1,workdir=/w"])
    assert options.lowers == ("/x:y", "/p,q", "/back\\slash")
    assert options.upper == "/u,1"
    assert options.work == "/w"


def test_options_generic_ignored_unknown_kept() -> None:
    generic = "nosuid,nodev,noexec,exec,noatime,relatime,default_permissions,allow_other,,"
    options = parse_options([f"{generic}lowerdir=/a,upperdir=/u,workdir=/w,xino=on,volatile"])
    assert options.unknown == ("xino=on", "volatile")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("lowerdir=/a,workdir=/w", "missing option upperdir="),
        ("ro,lowerdir=/a,upperdir=/u", "missing option workdir="),
        ("rw", "missing option lowerdir="),
        ("upperdir=/u,workdir=/w", "missing option lowerdir="),
        ("lowerdir=,upperdir=/u,workdir=/w", "lowerdir needs a value"),
        ("lowerdir=/a::/b,upperdir=/u,workdir=/w", "lowerdir has an empty directory"),
        ("lowerdir=/a,upperdir,workdir=/w", "upperdir needs a value"),
        ("lowerdir=/a,upperdir=/u,workdir=/w,redirect_dir=yes", "redirect_dir must be one of"),
    ],
)
def test_options_errors(argument: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_options([argument])


def test_options_read_only() -> None:
    # As in overlayfs: "ro" makes any mount read-only, and no upper directory means one.
    options = parse_options(["ro,lowerdir=/a,upperdir=/u,workdir=/w"])
    assert (options.upper, options.work, options.read_only) == ("/u", "/w", True)
    options = parse_options(["lowerdir=/a:/b"])
    assert options == MountOptions(lowers=("/a", "/b"), upper=None, work=None, read_only=True)
    assert not parse_options(["lowerdir=/a,upperdir=/u,workdir=/w"]).read_only


@pytest.mark.parametrize(("value", "renames"), [("on", True), ("off", False), ("follow", False)])
def test_options_redirect_dir(value: str, renames: bool) -> None:
    options = parse_options([f"lowerdir=/a,upperdir=/u,workdir=/w,redirect_dir={value}"])
    assert options.rename_lower_dirs is renames
    assert options.unknown == ()


# --- errors from the command ------------------------------------------------------------------


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    """``a`` and ``b`` (lower), ``u``, ``w`` and ``m`` under *tmp_path*; returns *tmp_path*."""
    for name in ("a", "b", "u", "w", "m"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "top").write_text("from a\n")
    (tmp_path / "a" / "shared").write_text("a wins\n")
    (tmp_path / "b" / "bottom").write_text("from b\n")
    (tmp_path / "b" / "shared").write_text("b loses\n")
    return tmp_path


def _run_helper(cwd: Path, *args: str) -> Result:
    return run([*HELPER, *args], cwd=cwd, env=_env(), timeout=60)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("lowerdir={t}/a,workdir={t}/w", "missing option upperdir="),
        ("lowerdir={t}/a:{t}/nope,upperdir={t}/u,workdir={t}/w", "not a directory: {t}/nope"),
        ("ro,lowerdir={t}/a,upperdir={t}/nope,workdir={t}/w", "not a directory: {t}/nope"),
    ],
    ids=["missing-upperdir", "nonexistent-lower", "nonexistent-upper-read-only"],
)
def test_errors_are_one_clear_line(layers: Path, options: str, message: str) -> None:
    result = _run_helper(layers, "src", str(layers / "m"), "-o", options.format(t=layers))
    assert result.returncode == 1
    assert result.stderr == f"pytest-overlay-fs: {message.format(t=layers)}\n"
    assert not _servers(layers / "m")


def test_usage_error_exits_2(layers: Path) -> None:
    result = _run_helper(layers, "src")
    assert result.returncode == 2
    assert "MOUNTPOINT" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_help_documents_the_options(tmp_path: Path) -> None:
    result = _run_helper(tmp_path, "--help")
    assert result.returncode == 0
    for word in ("lowerdir=", "upperdir=", "workdir=", r"\:", "read-only", "umount", "detached"):
        assert word in result.stdout


# --- real mounts in a private mount namespace -------------------------------------------------


@pytest.fixture(scope="module")
def fuse_unavailable() -> str | None:
    """Why FUSE mounts cannot be tested here (one real test mount per module decides)."""
    if os.geteuid() != 0:
        return "the suite is not running as root (mount namespaces and umount need it)"
    return fuse_reason()


def _servers(mountpoint: Path) -> list[int]:
    """Server processes serving *mountpoint* (zombies have no command line and do not count)."""
    found = []
    target = os.fsencode(mountpoint)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if SERVER_MODULE in argv and target in argv:
            found.append(int(entry))
    return found


def _gone(mountpoint: Path, timeout: float = 10.0) -> bool:
    return wait_until(lambda: not _servers(mountpoint), timeout)


@pytest.fixture
def mnt(layers: Path, fuse_unavailable: str | None) -> Iterator[Path]:
    """The mount point; afterwards, stop any server a failed test left serving it."""
    gate("fuse", fuse_unavailable)
    mountpoint = layers / "m"
    yield mountpoint
    leftovers = _servers(mountpoint)
    for pid in leftovers:
        os.kill(pid, signal.SIGTERM)  # libfuse unmounts on SIGTERM
    if not _gone(mountpoint, 5.0):
        for pid in _servers(mountpoint):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"servers left running: {leftovers}"


def _in_namespace(script: str, cwd: Path) -> Result:
    """Run a sh *script* (``set -e``) in a private mount namespace; ``$HELPER`` runs the helper."""
    env = {**_env(), "HELPER": shlex.join(HELPER)}
    argv = ["sh", "-c", "set -e\n" + script]
    return run(argv, cwd=cwd, namespace=Namespace(), env=env, timeout=120)


def _check_unmounted(result: Result, mountpoint: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "STILL MOUNTED" not in result.stdout
    assert _gone(mountpoint), "the server did not exit after the unmount"
    assert not mounted(mountpoint)  # on the host


def test_mount_write_umount(layers: Path, mnt: Path) -> None:
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    script = f"""
        $HELPER src {m} -o rw,lowerdir={t}/a:{t}/b,upperdir={t}/u,workdir={t}/w,dev,suid
        echo "mounted: $(grep -c " {m} " /proc/self/mountinfo)"
        ls {m}
        cat {m}/shared
        echo new > {m}/new
        echo changed >> {m}/bottom
        umount {m}
        if grep -q " {m} " /proc/self/mountinfo; then echo STILL MOUNTED; fi
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stderr == ""
    assert result.stdout.split() == ["mounted:", "1", "bottom", "shared", "top", "a", "wins"]
    assert (layers / "u" / "new").read_text() == "new\n"
    assert (layers / "u" / "bottom").read_text() == "from b\nchanged\n"
    assert (layers / "b" / "bottom").read_text() == "from b\n"  # the lower is untouched


@pytest.mark.parametrize(("redirect_dir", "expected"), [("on", "renamed"), ("off", "EXDEV")])
def test_redirect_dir_decides_lower_directory_renames(
    layers: Path, mnt: Path, redirect_dir: str, expected: str
) -> None:
    (layers / "b" / "dir").mkdir()
    (layers / "b" / "dir" / "inside").write_text("x\n")
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    options = f"lowerdir={t}/a:{t}/b,upperdir={t}/u,workdir={t}/w,redirect_dir={redirect_dir}"
    script = f"""
        $HELPER src {m} -o {options}
        python3 -c '
import errno, os, sys
try:
    os.rename(sys.argv[1] + "/dir", sys.argv[1] + "/moved")
    print("renamed")
except OSError as exc:
    print(errno.errorcode[exc.errno])
' {m}
        umount {m}
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stdout.split() == [expected]
    assert (layers / "b" / "dir" / "inside").read_text() == "x\n"


def _ro_scratch() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if "pytest-overlay-fs-ro-" in name}


@pytest.mark.parametrize("how", ["ro", "lower-only"])
def test_read_only_mount(layers: Path, mnt: Path, how: str) -> None:
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    (layers / "u" / "from-upper").write_text("upper\n")
    options = {
        "ro": f"ro,lowerdir={t}/a:{t}/b,upperdir={t}/u,workdir={t}/w",
        "lower-only": f"lowerdir={t}/a:{t}/b",
    }[how]
    before = _ro_scratch()
    script = f"""
        $HELPER src {m} -o {options}
        ls {m}
        cat {m}/shared
        for action in "echo x > {m}/new" "echo x >> {m}/top" "rm {m}/bottom" "mkdir {m}/d"; do
            if sh -c "$action" 2>/dev/null; then echo "WROTE: $action"; fi
        done
        python3 -c 'import errno, os, sys
try:
    os.open(sys.argv[1] + "/top", os.O_WRONLY)
except OSError as exc:
    print(errno.errorcode[exc.errno])' {m}
        umount {m}
        if grep -q " {m} " /proc/self/mountinfo; then echo STILL MOUNTED; fi
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    shown = ["bottom", "shared", "top"] + (["from-upper"] if how == "ro" else [])
    lines = result.stdout.split()
    assert sorted(lines[: len(shown)]) == sorted(shown), result.stdout
    assert lines[len(shown) :] == ["a", "wins", "EROFS"], result.stdout
    assert sorted(os.listdir(layers / "u")) == ["from-upper"]  # nothing written
    assert os.listdir(layers / "w") == []
    assert (layers / "a" / "top").read_text() == "from a\n"
    if how == "lower-only":  # the only test that makes such a directory
        assert _ro_scratch() == before, "the lower-only mount's empty upper was left behind"


def test_server_outlives_the_helper_detached(layers: Path, mnt: Path) -> None:
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    script = f"""
        $HELPER src {m} -o lowerdir={t}/a,upperdir={t}/u,workdir={t}/w
        pid=$(pgrep -f "pytest_overlay._fuse.server.* {m}\\$")
        echo "session $(ps -o sid= -p $pid | tr -d ' ') pid $pid"
        for fd in 0 1 2; do readlink /proc/$pid/fd/$fd; done
        cat {m}/top
        fusermount3 -u {m} || umount {m}
        if grep -q " {m} " /proc/self/mountinfo; then echo STILL MOUNTED; fi
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    lines = result.stdout.splitlines()
    _, sid, _, pid = lines[0].split()
    assert sid == pid  # a session of its own
    assert lines[1:4] == ["/dev/null"] * 3
    assert lines[4] == "from a"


def test_escaped_lowerdir(layers: Path, mnt: Path) -> None:
    odd = layers / "odd:name,with comma"
    odd.mkdir()
    (odd / "f").write_text("odd\n")
    upper = layers / "u:1,2"
    upper.mkdir()
    escaped = str(odd).replace(":", r"\:").replace(",", r"\,")
    escaped_upper = str(upper).replace(":", r"\:").replace(",", r"\,")
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    options = shlex.quote(f"lowerdir={escaped}:{layers}/b,upperdir={escaped_upper},workdir={t}/w")
    script = f"""
        $HELPER src {m} -o {options}
        cat {m}/f {m}/bottom
        echo x > {m}/x
        umount {m}
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stdout == "odd\nfrom b\n"
    assert (upper / "x").read_text() == "x\n"


def test_unknown_option_warns(layers: Path, mnt: Path) -> None:
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    script = f"""
        $HELPER src {m} -o lowerdir={t}/a,upperdir={t}/u,workdir={t}/w,xino=auto
        cat {m}/top
        umount {m}
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stderr == "pytest-overlay-fs: warning: unknown option 'xino=auto' ignored\n"
    assert result.stdout == "from a\n"


def test_through_mount_8(layers: Path, mnt: Path) -> None:
    """``mount -t fuse.pytest-overlay-fs`` finds the helper on mount's own PATH.

    mount(8) does not pass PATH on, so a wrapper script is bind-mounted over
    ``/usr/local/sbin``, inside the private mount namespace only.
    """
    if shutil.which("mount.fuse3") is None and not os.path.exists("/usr/sbin/mount.fuse3"):
        gate("fuse", "mount.fuse3 is not installed (apt install fuse3)")
    bin_dir = layers / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "pytest-overlay-fs"
    wrapper.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pytest_overlay._fuse.helper "$@"\n'
    )
    wrapper.chmod(0o755)
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    mount = f"mount -t fuse.pytest-overlay-fs pytest-overlay-fs {m} -o"
    script = f"""
        mount --bind {shlex.quote(str(bin_dir))} /usr/local/sbin
        {mount} ro,lowerdir={t}/a,upperdir={t}/u,workdir={t}/w
        grep " {m} " /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1
        if echo no > {m}/top; then echo WROTE; fi
        umount {m}
        {mount} lowerdir={t}/a:{t}/b,upperdir={t}/u,workdir={t}/w
        cat {m}/shared {m}/bottom
        echo via-mount > {m}/new
        umount {m}
        if grep -q " {m} " /proc/self/mountinfo; then echo STILL MOUNTED; fi
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stdout == "ro\na wins\nfrom b\n"
    assert "Read-only file system" in result.stderr
    assert (layers / "u" / "new").read_text() == "via-mount\n"


def test_failed_mount_is_one_line(layers: Path, mnt: Path) -> None:
    """A mount the server cannot make: one line with libfuse's reason, no server left."""
    import ctypes.util

    # Only libfuse 2 refuses a non-empty mount point, so the server is told to load it.
    gate("libfuse2", None if ctypes.util.find_library("fuse") else "libfuse2 is not installed")
    (mnt / "occupied").write_text("")
    t, m = (shlex.quote(str(p)) for p in (layers, mnt))
    script = f"""
        export FUSE_LIBRARY_NAME=fuse
        if $HELPER src {m} -o lowerdir={t}/a,upperdir={t}/u,workdir={t}/w; then echo MOUNTED; fi
        if grep -q " {m} " /proc/self/mountinfo; then echo STILL MOUNTED; fi
    """
    result = _in_namespace(script, layers)
    _check_unmounted(result, mnt)
    assert result.stdout == ""
    assert result.stderr.startswith(f"pytest-overlay-fs: mounting {mnt} failed: ")
    assert "mountpoint is not empty" in result.stderr
    assert len(result.stderr.splitlines()) == 1
