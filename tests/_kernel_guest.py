"""The kernel matrix's driver: runs inside a booted guest kernel, prints one JSON result line.

``tests/test_kernel_matrix.py`` boots a distribution kernel under qemu (virtme-ng, the host's
root filesystem shared read-only) and runs ``python -m tests._kernel_guest`` in it as root.
Python starts slowly under emulation, so this runs one small project in a handful of modes,
each a child pytest, and records what each said: the report header's ``overlay:`` lines, the
outcome counts, and for in-place runs whether the real tree hashed the same afterwards.  The
host-side test asserts on the result; nothing here asserts.

Everything runs in a fresh ext4 filesystem, the children's ``TMPDIR``, as a Debian 12 install
has its ``/tmp``: the shared root is 9p, and virtme-ng's own ``/tmp`` is an overlay of the
host's, which would stack our overlays one level deeper than on a real machine.  It is not
mounted over ``/tmp`` itself, which may hold the checkout (the guest unpacked it there).
The ordinary user is :data:`tests._unpriv.TEST_USER`, which the host created before booting
(the guest sees the host's ``/etc``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

RESULT_MARK = "KERNEL-MATRIX-RESULT "
"""The prefix of the one stdout line that carries the JSON result to the host."""

SCRATCH = Path("/run/kernel-matrix")
"""The ext4 filesystem the runs use, and their ``TMPDIR``."""

LAYER_CONFTEST = r"""
import pytest


def build_tools(root):
    (root / "tools").mkdir()
    (root / "tools" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (root / "notes.txt").unlink()


@pytest.fixture(scope="session")
def tools_layer(overlay_layer):
    return overlay_layer("tools", build_tools)
"""

LAYER_TEST = r"""
import pytest


@pytest.mark.overlay(layers=["tools_layer"])
def test_on_a_snapshot_layer(overlay_root):
    assert (overlay_root / "tools" / "tool.sh").exists()
    assert not (overlay_root / "notes.txt").exists()
    (overlay_root / "tools" / "tool.sh").write_text("changed\n")
    assert [(c.kind.letter, c.path) for c in overlay_root.diff()] == [("M", "tools/tool.sh")]
"""

XATTR_TEST = r"""
import os


def test_user_xattrs(overlay_root):
    tagged = overlay_root / "tagged.txt"
    assert os.getxattr(tagged, "user.project.tag") == b"lower"
    tagged.write_text("changed\n")  # copy-up keeps the file's own xattrs
    assert os.getxattr(tagged, "user.project.tag") == b"lower"
    os.setxattr(tagged, "user.project.tag", b"upper")
    os.setxattr(overlay_root / "notes.txt", "user.overlay.t", b"the project's own")
    assert os.getxattr(overlay_root / "notes.txt", "user.overlay.t") == b"the project's own"
    assert os.getxattr(tagged, "user.project.tag") == b"upper"
"""
# Where the upper layers cannot go on the disk (pytest's temporary directory on virtme-ng's
# overlayfs /tmp) they stay on tmpfs, which before Linux 6.6 stores no user.* xattrs: the
# difference docs/backends.md documents.
XATTR_LOSS_TEST = r"""
import errno
import os
import platform

import pytest


def test_user_xattrs_where_the_upper_stays_on_tmpfs(overlay_root):
    tagged = overlay_root / "tagged.txt"
    tagged.write_text("changed\n")
    release = tuple(int(part) for part in platform.release().split("-")[0].split(".")[:2])
    if release >= (6, 6):
        assert os.getxattr(tagged, "user.project.tag") == b"lower"
        os.setxattr(tagged, "user.project.tag", b"upper")
        return
    assert "user.project.tag" not in os.listxattr(tagged)  # copy-up left it out
    with pytest.raises(OSError) as refused:
        os.setxattr(tagged, "user.project.tag", b"upper")
    assert refused.value.errno == errno.EOPNOTSUPP
"""
XATTRS = "root-xattrs"
"""A mode of its own: the kernel backend as root, a project whose files carry user.* xattrs."""
XATTRS_TMP = "root-xattrs-overlay-tmp"
"""The same where pytest's temporary directory is on overlayfs (``XATTR_LOSS_TEST``)."""
XATTR_RUNS = {
    XATTRS: (XATTR_TEST, ()),
    XATTRS_TMP: (XATTR_LOSS_TEST, ("--basetemp=/tmp/kernel-matrix-xattrs",)),
}

# name: (as the ordinary user, command-line options).  Fixture mode runs under auto unless the
# options name a backend; "--overlay" is in-place mode.
MODES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "root-kernel": (False, ("--overlay-backend=kernel",)),
    "root-inplace": (False, ("--overlay",)),
    "root-fuse": (False, ("--overlay-backend=fuse",)),
    "user-auto": (True, ()),
    "user-inplace": (True, ("--overlay",)),
    "user-fuse": (True, ("--overlay-backend=fuse",)),
}
# A FUSE server's Python starts in seconds under emulation, not milliseconds.
SLOW_MACHINE = {"PYTEST_OVERLAY_FUSE_READY_TIMEOUT": "120", "TMPDIR": os.fspath(SCRATCH)}
SKIP = (".pytest_cache",)  # pytest's own cache (the layer store lives there too)


def _project(parent: Path, *, user: bool, xattr_test: str | None = None) -> Path:
    from tests import _unpriv
    from tests._sample_project import SMALL_PROJECT

    parent.mkdir(parents=True, exist_ok=True)
    root = parent / "project"
    root.mkdir()
    for name, text in SMALL_PROJECT.items():
        (root / name).write_text(text)
    (root / "conftest.py").write_text(LAYER_CONFTEST)
    (root / "test_layer.py").write_text(LAYER_TEST)
    (root / "notes.txt").write_text("one\n")
    if xattr_test is not None:
        (root / "test_xattrs.py").write_text(xattr_test)
        (root / "tagged.txt").write_text("tagged\n")
        os.setxattr(root / "tagged.txt", "user.project.tag", b"lower")
    if user:
        uid, gid = _unpriv.ensure_test_user()
        for path in [parent, root, *root.rglob("*")]:
            os.lchown(path, uid, gid)
        parent.chmod(0o755)
    return root


def _header(output: str) -> list[str]:
    lines = output.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.startswith("overlay: backend=") or line.startswith("overlay: in-place"):
            found.append(line)
            found += [more for more in lines[index + 1 : index + 4] if more.startswith("  ")]
    return found


def _counts(output: str) -> dict[str, int]:
    from tests._run import counts

    try:
        return counts(output)
    except AssertionError:
        return {}


def _run_mode(project: Path, *, user: bool, args: Sequence[str]) -> dict[str, object]:
    from tests import _run, _unpriv
    from tests._sample_project import tree_digest

    before = tree_digest(project, SKIP, dir_times=False)
    started = time.monotonic()
    result = _run.run_pytest(
        project,
        *args,
        user=user,
        timeout=900,
        env={
            "PYTEST_OVERLAY_REQUIRE": None,
            "PYTHONPATH": os.fspath(_unpriv.REPO_ROOT),
            # The layer store's default is under ~/.cache, read-only in the guest.
            "XDG_CACHE_HOME": os.fspath(project.parent / "cache"),
            **SLOW_MACHINE,
        },
    )
    output = result.output
    return {
        "returncode": result.returncode,
        "header": _header(output),
        "counts": _counts(output),
        "identical": tree_digest(project, SKIP, dir_times=False) == before,
        "seconds": round(time.monotonic() - started, 1),
        "tail": output[-3000:] if result.returncode or "warning" in output else "",
    }


def _differential() -> dict[str, object]:
    from tests import _run, _unpriv

    started = time.monotonic()
    result = _run.run(
        # Short tracebacks and the summary: the tail shows which scenario and assertion.
        _run.pytest_argv(
            "-q",
            "--tb=short",
            "-rfE",
            f"--basetemp={SCRATCH / 'differential'}",
            "tests/test_differential.py",
            "tests/test_change_flags.py::test_change_flags",
        ),
        cwd=_unpriv.REPO_ROOT,
        timeout=900,
        env={"PYTEST_OVERLAY_REQUIRE": "all", **SLOW_MACHINE},
    )
    return {
        "returncode": result.returncode,
        "header": [],
        "counts": _counts(result.output),
        "identical": True,
        "seconds": round(time.monotonic() - started, 1),
        "tail": result.output[-3000:] if result.returncode else "",
    }


def _safely(run: Callable[[], dict[str, object]]) -> dict[str, object]:
    try:
        return run()
    except BaseException:  # a harness failure is a result too: the host shows it
        return {
            "returncode": -1,
            "header": [],
            "counts": {},
            "identical": False,
            "seconds": 0,
            "tail": traceback.format_exc()[-3000:],
        }


def _prepare() -> dict[str, object]:
    """A fresh ext4 at :data:`SCRATCH`, overlay and fuse loaded; what the guest offers."""
    # The kernel's messages share the console with the result line: keep them off it.
    subprocess.run(["dmesg", "--console-level", "emerg"], check=False)
    loaded = {}
    for module in ("overlay", "fuse", "loop", "ext4"):
        done = subprocess.run(["modprobe", module], capture_output=True, text=True, check=False)
        loaded[module] = done.returncode == 0
    # A temporary directory on an ext4 disk, as a Debian 12 install has it (the image lives on
    # a tmpfs).
    image = Path("/run/kernel-matrix.img")
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", os.fspath(image)], check=True)
    SCRATCH.mkdir()
    subprocess.run(["mount", "-o", "loop", os.fspath(image), os.fspath(SCRATCH)], check=True)
    SCRATCH.chmod(0o1777)
    os.environ["TMPDIR"] = os.fspath(SCRATCH)  # root's children inherit it
    tempfile.tempdir = None
    fuse = Path("/dev/fuse")
    if fuse.exists():
        fuse.chmod(0o666)  # as distributions ship it (udev's rule); devtmpfs makes it 0600
    return {
        "release": platform.release(),
        "modules": loaded,
        "dev_fuse_mode": oct(fuse.stat().st_mode & 0o777) if fuse.exists() else None,
    }


def main(argv: Sequence[str]) -> int:
    """Run the modes named in *argv* (default: all, and the differential tests), two at a time."""
    started = time.monotonic()
    only = set(argv)
    # The console is the host's log: the children's chatter (tests/_run.py prints it) stays out.
    real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
    result: dict[str, object] = {"guest": _safely(lambda: {"returncode": 0, **_prepare()})}
    jobs: dict[str, Callable[[], dict[str, object]]] = {}
    for name, (user, args) in MODES.items():
        if not only or name in only:
            project = _project(SCRATCH / name, user=user)
            jobs[name] = functools.partial(_run_mode, project, user=user, args=args)
    for name, (test, more) in XATTR_RUNS.items():
        if not only or name in only:
            project = _project(SCRATCH / name, user=False, xattr_test=test)
            jobs[name] = functools.partial(
                _run_mode, project, user=False, args=("--overlay-backend=kernel", *more)
            )
    if not only or "differential" in only:
        jobs["differential"] = _differential
    # Two vCPUs: python's start-up under emulation is the cost, so two children at a time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_safely, job) for name, job in jobs.items()}
        result["runs"] = {name: future.result() for name, future in futures.items()}
    result["seconds"] = round(time.monotonic() - started, 1)
    sys.stdout = real_stdout
    line = RESULT_MARK + json.dumps(result, sort_keys=True)
    for _ in range(2):  # a kernel message may still cut into one copy (tests/_kernels.py)
        print(f"\n{line}", flush=True)
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
