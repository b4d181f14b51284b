"""The kernel matrix's host side: which kernels, where they are cached, how one is booted.

Distribution kernels come from Debian's archive as packages: ``python -m tests._kernels fetch``
(``.ci/run`` calls it) downloads each one's ``linux-image`` package through apt, with a private
apt configuration that adds the suites below without touching the machine's own sources, and
unpacks it into :data:`CACHE` (``boot/vmlinuz-*``, ``lib/modules/*``), installing nothing
system-wide.  virtme-ng (``vng``) boots such an image under qemu with the host's root filesystem
shared read-only over 9p; it finds the modules beside the image (the root of the unpacked
package) and links them in as the guest's ``/lib/modules``.

9p under emulation costs a round trip per ``stat``: Python needs some 15 s to start from it and
50 s to import pytest.  So :func:`pack_guest_env` puts the interpreter, the part of its standard
library and site-packages that the matrix imports, and the checkout into one tar file that the
guest unpacks onto tmpfs mounted over the same paths (one sequential read): every path stays
what it is on the host.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests._kernel_guest import RESULT_MARK

CACHE_ENV = "PYTEST_OVERLAY_KERNEL_CACHE"
_XDG_CACHE = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
CACHE = Path(os.environ.get(CACHE_ENV) or os.path.join(_XDG_CACHE, "pytest-overlay-kernels"))
"""Where the unpacked kernels live (``$PYTEST_OVERLAY_KERNEL_CACHE`` moves it).

Not under ``/var/cache`` or ``/tmp``: virtme-ng's guest mounts its own over those, and the
guest must see the modules here."""

REPO_ROOT = Path(__file__).absolute().parents[1]
_ARCHIVE = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
_SOURCES = {
    "bullseye": "http://deb.debian.org/debian bullseye main",
    "bookworm": "http://deb.debian.org/debian bookworm main",
    "bookworm-backports": "http://deb.debian.org/debian bookworm-backports main",
}


@dataclass(frozen=True)
class Kernel:
    """One kernel of the matrix: Debian's ``linux-image-amd64`` of *suite*."""

    series: str
    """The upstream series (``6.1``), as the docs' table names it."""
    suite: str
    """The Debian suite whose ``linux-image-amd64`` depends on the image to boot."""
    unprivileged: bool
    """Whether an ordinary user can mount overlayfs on it (Linux 5.11 and newer)."""

    @property
    def directory(self) -> Path:
        return CACHE / self.suite

    def image(self) -> Path | None:
        """The unpacked ``vmlinuz``, or None if :func:`fetch` has not run."""
        found = sorted(self.directory.glob("boot/vmlinuz-*"))
        return found[-1] if found else None


KERNELS = (
    Kernel("5.10", "bullseye", unprivileged=False),
    Kernel("6.1", "bookworm", unprivileged=True),
    Kernel("6.12", "bookworm-backports", unprivileged=True),
)
"""The kernels the matrix boots, oldest first."""

TOOLS = {
    "mkfs.ext4": "apt-get install e2fsprogs",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "vng": "pip install virtme-ng (the dev extra has it)",
    "depmod": "apt-get install kmod",
    "busybox": "apt-get install busybox-static",
}


def missing_tools() -> str | None:
    """What of qemu, virtme-ng and their helpers is missing, with how to install it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [
        f"{tool} ({how})" for tool, how in TOOLS.items() if not shutil.which(tool, path=search)
    ]
    return "missing " + ", ".join(missing) if missing else None


# --- fetching -----------------------------------------------------------------------------------


def _apt_options(state: Path) -> list[str]:
    return [
        f"-oDir::Etc::SourceList={state / 'sources.list'}",
        "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oDir::State::status=/dev/null",
        "-oAPT::Sandbox::User=root",
    ]


def fetch() -> None:
    """Download and unpack every kernel of :data:`KERNELS` that :data:`CACHE` lacks."""
    wanted = [kernel for kernel in KERNELS if kernel.image() is None]
    if not wanted:
        print(f"kernel matrix: every kernel is in {CACHE}")
        return
    state = CACHE / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"deb {_ARCHIVE} {_SOURCES[kernel.suite]}" for kernel in wanted]
    (state / "sources.list").write_text("\n".join(lines) + "\n")
    options = _apt_options(state)
    subprocess.run(["apt-get", *options, "-qq", "update"], check=True)
    for kernel in wanted:
        shown = subprocess.run(
            ["apt-cache", *options, "show", f"linux-image-amd64/{kernel.suite}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"^Depends: (linux-image-[^ ,]+)", shown, re.MULTILINE)
        if match is None:
            raise SystemExit(f"linux-image-amd64/{kernel.suite} names no linux-image package")
        package = match.group(1)
        debs = state / "debs"
        for old in debs.glob("*.deb"):
            old.unlink()
        subprocess.run(
            ["apt-get", *options, "-qq", "download", f"{package}/{kernel.suite}"],
            cwd=debs,
            check=True,
        )
        (deb,) = debs.glob("*.deb")
        partial = kernel.directory.with_name(kernel.suite + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", deb, partial], check=True)
        shutil.rmtree(partial / "usr/share", ignore_errors=True)
        shutil.rmtree(kernel.directory, ignore_errors=True)
        partial.rename(kernel.directory)
        deb.unlink()
        print(f"kernel matrix: {package} ({kernel.suite}) unpacked in {kernel.directory}")


# --- the guest's environment --------------------------------------------------------------------

_DISTRIBUTIONS = ("pytest", "pluggy", "filelock", "mfusepy", "pytest-overlay")
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages"}
_REPO_PARTS = ("pytest_overlay", "tests", "conftest.py", "pyproject.toml")


def _distributions() -> Iterator[importlib.metadata.Distribution]:
    """The distributions of :data:`_DISTRIBUTIONS` and everything they require."""
    from packaging.requirements import Requirement

    pending, seen = list(_DISTRIBUTIONS), set()
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        # From site-packages first: run from a checkout that pip installed in editable mode,
        # the checkout's own pytest_overlay.egg-info comes first on sys.path and names no
        # file in site-packages, where the editable install's entry point is.
        site = sysconfig.get_paths()["purelib"]
        found = list(importlib.metadata.distributions(name=name, path=[site]))
        dist = found[0] if found else importlib.metadata.distribution(name)
        yield dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)


def guest_env_paths() -> list[Path]:
    """Every file the guest's Python needs, and the checkout's (absolute host paths)."""
    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    paths = [*prefix.glob("bin/python3*"), *prefix.glob("lib/libpython*")]
    paths += [Path(sys.executable)]  # a symlink to one of them
    for entry in stdlib.iterdir():
        if entry.name not in _STDLIB_SKIP:
            paths.append(entry)
    for dist in _distributions():
        files = [Path(os.path.normpath(str(dist.locate_file(f)))) for f in dist.files or []]
        if dist.metadata["Name"] == "pytest-overlay":
            # The editable install's package is the checkout, packed below; its entry point
            # (the pytest11 plugin) is in its dist-info.
            files = [f for f in files if f.parent.name.endswith(".dist-info")]
        paths += [f for f in files if f.exists() and site in f.parents]
    paths += [REPO_ROOT / part for part in _REPO_PARTS]
    return paths


def pack_guest_env(tar_path: Path) -> list[Path]:
    """Write :func:`guest_env_paths` to *tar_path*; return the directories to mount tmpfs on."""
    with tarfile.open(tar_path, "w") as tar:
        for path in guest_env_paths():
            tar.add(path, arcname=os.fspath(path).lstrip("/"), filter=_no_caches_of_tests)
    return [Path(sys.base_prefix), REPO_ROOT]


def _no_caches_of_tests(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # The standard library's bytecode saves the guest compiling it; the checkout's is stale.
    if "__pycache__" in info.name and REPO_ROOT.as_posix().lstrip("/") in info.name:
        return None
    return info


# --- booting ------------------------------------------------------------------------------------


def guest_script(tar_path: Path, mounts: list[Path], modes: list[str]) -> str:
    """The shell command the guest runs: unpack the environment, then the driver."""
    steps = ["set -e"]
    steps += [f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(os.fspath(m))}" for m in mounts]
    steps.append(f"tar -C / -xf {shlex.quote(os.fspath(tar_path))}")
    steps.append(f"cd {shlex.quote(os.fspath(REPO_ROOT))}")
    driver = [sys.executable, "-m", "tests._kernel_guest", *modes]
    steps.append(f"PYTHONPATH={shlex.quote(os.fspath(REPO_ROOT))} {shlex.join(driver)}")
    return "; ".join(steps)


def boot_argv(image: Path, script: str, *, cpus: int = 2) -> list[str]:
    """The ``vng`` command that boots *image* under emulation and runs *script* as root."""
    # --verbose: without it virtme-ng sends the script's output nowhere when the guest has no
    # virtio-serial port for it (the console fallback).
    return [
        "vng",
        "--run",
        os.fspath(image),
        "--disable-kvm",
        "--cpus",
        str(cpus),
        "--memory",
        "2G",
        "--verbose",
        "--exec",
        script,
    ]


def run_guest(
    image: Path, tar: Path, mounts: list[Path], modes: Sequence[str] = ()
) -> tuple[dict[str, object] | None, str]:
    """Boot *image*, run the driver's *modes* (default: all) in it; its result and console."""
    argv = boot_argv(image, guest_script(tar, mounts, list(modes)))
    done = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800, check=False
    )
    # virtme-ng --verbose copies the guest's console to its standard error.
    console = done.stdout + done.stderr
    return parse_result(console), f"(exit {done.returncode})\n{console[-6000:]}"


def parse_result(output: str) -> dict[str, object] | None:
    """The driver's JSON result from the guest's console output, or None if it printed none."""
    # The console also carries the kernel's messages, which may land inside a line: the driver
    # prints the result twice, and the first copy that parses counts.
    for line in output.splitlines():
        if RESULT_MARK in line:
            try:
                result = json.loads(line.split(RESULT_MARK, 1)[1])
            except ValueError:
                continue
            if isinstance(result, dict):
                return result
    return None


# --- the docs' table -----------------------------------------------------------------------------

TABLE_HEAD = (
    "| Kernel | Root: kernel backend | Root: in place | Root: FUSE | User: `auto` picks "
    "| User: in place | User: FUSE | Differential tests |"
)
_COLUMNS = (
    "root-kernel",
    "root-inplace",
    "root-fuse",
    "user-auto",
    "user-inplace",
    "user-fuse",
    "differential",
)


def _cell(name: str, run: dict[str, object]) -> str:
    if name == "user-auto":
        header = run.get("header") or [""]
        assert isinstance(header, list)
        picked = str(header[0]).removeprefix("overlay: backend=")
        return picked if run.get("returncode") == 0 else f"{picked}, failed"
    return "works" if run.get("returncode") == 0 else "refused"


def table_row(kernel: Kernel, result: dict[str, object]) -> str:
    """The docs' table row of *kernel*, from what its guest reported (the driver's result)."""
    runs = result["runs"]
    assert isinstance(runs, dict)
    cells = [kernel.series, *(_cell(name, runs[name]) for name in _COLUMNS)]
    return "| " + " | ".join(cells) + " |"


def table_rows(text: str) -> list[str]:
    """The rows of the kernel table in *text* (docs/kernels.md), header and rule left out."""
    lines = text.splitlines()
    start = lines.index(TABLE_HEAD) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _boot_one(series: str, modes: Sequence[str]) -> None:
    """Boot one kernel of the matrix and print its guest's result (a quicker look than the
    test: ``python -m tests._kernels boot 6.1 differential`` runs just the differential)."""
    kernel = next((k for k in KERNELS if k.series == series), None)
    image = None if kernel is None else kernel.image()
    if image is None:
        known = ", ".join(k.series for k in KERNELS)
        raise SystemExit(f"no kernel {series} fetched (the matrix boots {known})")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp, "guest-env.tar")
        result, console = run_guest(image, tar, pack_guest_env(tar), modes)
    print(console if result is None else json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch()
    elif sys.argv[1:2] == ["boot"] and len(sys.argv) > 2:
        _boot_one(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit("usage: python -m tests._kernels fetch | boot SERIES [MODE ...]")
