"""The kernel matrix: Debian's kernels booted under qemu, a small project run in each mode.

Each kernel of :data:`tests._kernels.KERNELS` boots under emulation (virtme-ng, the host's root
filesystem shared) and runs ``tests/_kernel_guest.py``: the kernel backend as root and as an
ordinary user (``auto``), in place as both, FUSE as both, snapshot layers in every run, and the
kernel-oracle differential tests as root.  A boot and its runs take a few minutes, so the
matrix runs only where ``PYTEST_OVERLAY_REQUIRE`` asks for ``kernels`` (``all``, as ``.ci/run``
sets it, does); there a missing qemu, virtme-ng or kernel image fails the test.

The table of docs/kernels.md is this matrix's result: each kernel's row, rendered from what
the guest reported, must be there verbatim (:func:`tests._kernels.table_row`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests import _kernels, _unpriv
from tests._gates import REQUIRE_ENV, gate, kernel_reason, required
from tests._kernel_guest import MODES, XATTR_RUNS, XATTRS, XATTRS_TMP

pytestmark = pytest.mark.kernels

DOCS = Path(__file__).absolute().parents[1] / "docs" / "kernels.md"
PASSED = {"passed": 3}  # the small project's two tests and the snapshot-layer test
ROOT_KERNEL = "overlay: backend=kernel (root)"
USER_KERNEL = "overlay: backend=kernel (user namespace)"
USER_FUSE = "overlay: backend=fuse (fusermount3)"


@pytest.fixture(scope="module")
def guest_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The interpreter, its libraries and the checkout, packed for the guests (once).

    Skips the matrix unless this run requires it; fails where it is required and qemu or
    virtme-ng is missing.
    """
    if not required("kernels"):
        pytest.skip(
            f"the kernel matrix boots VMs for minutes; set {REQUIRE_ENV}=kernels (or all, as "
            ".ci/run does) to run it"
        )
    gate("kernels", _tools_reason())
    tar = tmp_path_factory.mktemp("kernel-matrix") / "guest-env.tar"
    return tar, _kernels.pack_guest_env(tar)


def _tools_reason() -> str | None:
    if os.geteuid() != 0:
        return "the suite is not running as root (the guest shares the host's root as root)"
    return _kernels.missing_tools()


def _image_reason(kernel: _kernels.Kernel) -> str | None:
    if kernel.image() is None:
        return (
            f"no {kernel.series} kernel image in {kernel.directory}: run "
            f"`python -m tests._kernels fetch` (.ci/run does)"
        )
    return None


def boot(kernel: _kernels.Kernel, guest_env: tuple[Path, list[Path]]) -> dict[str, object]:
    """Boot *kernel*, run every mode in it, and return the guest's result."""
    gate("kernels", _image_reason(kernel))
    _unpriv.ensure_test_user()  # the guest sees the host's /etc
    image = kernel.image()
    assert image is not None
    tar, mounts = guest_env
    result, console = _kernels.run_guest(image, tar, mounts)
    assert result is not None, f"the guest printed no result {console}"
    print(json.dumps(result, indent=1, sort_keys=True))
    return result


@pytest.mark.parametrize("kernel", _kernels.KERNELS, ids=lambda k: k.series)
def test_kernel(kernel: _kernels.Kernel, guest_env: tuple[Path, list[Path]]) -> None:
    result = boot(kernel, guest_env)
    guest = result["guest"]
    assert isinstance(guest, dict)
    assert guest["returncode"] == 0, guest
    assert str(guest["release"]).startswith(kernel.series + "."), guest
    runs = result["runs"]
    assert isinstance(runs, dict)
    assert set(runs) == {*MODES, *XATTR_RUNS, "differential"}
    for name, run in runs.items():
        assert run["identical"], f"{name} changed the real tree"

    def check(
        name: str, header: str | None, *, returncode: int = 0, passed: dict[str, int] = PASSED
    ) -> list[str]:
        run = runs[name]
        assert run["returncode"] == returncode, (name, run["tail"])
        if returncode == 0:
            assert run["counts"] == passed, (name, run["counts"], run["tail"])
        if header is not None:
            assert run["header"][:1] == [header], (name, run["header"])
        return list(run["header"])

    # Where tmpfs stores no user.* xattrs the upper layers go on the disk, and the header says
    # so in its one indented line (on the guest's ext4, as on a Debian install's /tmp).
    old = version(kernel) < (6, 6)
    tmpfs = f"tmpfs on Linux {kernel.series} stores no user.* xattrs (6.6 does)"
    root_note = (
        "  upper layers on the disk, in pytest's temporary directory, unless that is on tmpfs, "
        f"overlayfs or FUSE: {tmpfs}, and a project's files may carry them"
    )
    user_note = (
        f"  upper layers on the disk, in pytest's temporary directory: {tmpfs}, and the overlay "
        "marks directories with them"
    )

    def check_kernel(name: str, header: str, passed: dict[str, int] = PASSED) -> None:
        lines = check(name, header, passed=passed)
        note = root_note if header == ROOT_KERNEL else user_note
        assert [line for line in lines if line.startswith("  ")] == ([note] if old else [])

    check_kernel("root-kernel", ROOT_KERNEL)
    check_kernel("root-inplace", ROOT_KERNEL)
    # The project's files carry user.* xattrs: copy-up keeps them and a test sets more; where
    # the temporary directory is on overlayfs, they are lost before 6.6 as documented.
    check_kernel(XATTRS, ROOT_KERNEL, passed={"passed": 4})
    check_kernel(XATTRS_TMP, ROOT_KERNEL, passed={"passed": 4})
    check("root-fuse", "overlay: backend=fuse (root)")
    check("user-fuse", USER_FUSE)
    # The differential (one test, three backends) and the change flags (kernel, fuse).
    check("differential", None, passed={"passed": 3})
    if kernel.unprivileged:
        check_kernel("user-auto", USER_KERNEL)
        check_kernel("user-inplace", USER_KERNEL)
    else:
        # Below the floor: one line says why, and auto falls back to FUSE.
        header = check("user-auto", USER_FUSE)
        assert header[1:] == [
            f"  kernel not used: Linux {kernel.series} cannot mount overlayfs without root "
            "(needs 5.11 or newer); run the tests as root or upgrade the kernel"
        ]
        tail = runs["user-inplace"]["tail"]
        check("user-inplace", None, returncode=4)
        assert "Linux 5.10 cannot mount overlayfs without root" in tail, tail
    row = _kernels.table_row(kernel, result)
    assert row in DOCS.read_text().splitlines(), (
        f"docs/kernels.md's table does not have the row the matrix measured for "
        f"{kernel.series}; put this row there:\n{row}"
    )


def version(kernel: _kernels.Kernel) -> tuple[int, ...]:
    """The kernel's series as numbers, ``(6, 1)``."""
    return tuple(int(part) for part in kernel.series.split("."))


def test_docs_table_has_a_row_per_kernel() -> None:
    """The table lists exactly the kernels the matrix boots, oldest first (no VM needed)."""
    rows = _kernels.table_rows(DOCS.read_text())
    assert [row.split("|")[1].strip() for row in rows] == [k.series for k in _kernels.KERNELS]
    for kernel, row in zip(_kernels.KERNELS, rows, strict=True):
        picked = row.split("|")[5].strip()
        assert (picked == "kernel (user namespace)") == kernel.unprivileged, row


def test_readme_names_the_kernels_tested() -> None:
    """The README's promise is the matrix's: the kernels it boots, the unprivileged floor."""
    readme = " ".join((DOCS.parents[1] / "README.md").read_text().split())
    *older, newest = [k.series for k in _kernels.KERNELS]
    assert f"CI boots Debian's {', '.join(older)} and {newest} kernels" in readme
    oldest = _kernels.KERNELS[0]
    assert not oldest.unprivileged, "the matrix boots a kernel below the unprivileged floor"
    assert f"as root {oldest.series}+, as an ordinary user 5.11+" in readme

    for kernel in _kernels.KERNELS:
        assert kernel.unprivileged == (version(kernel) >= (5, 11)), kernel


# Linux 5.11 to 6.5 on this machine's kernel: tmpfs refuses user.* xattrs (patched in the child).
NO_TMPFS_XATTRS = """
from pathlib import Path

from pytest_overlay import _overlayopts
from pytest_overlay._backends.kernel import _filesystem_type

_real = _overlayopts.user_xattrs


def _before_6_6(directory):
    return False if _filesystem_type(Path(directory)) == "tmpfs" else _real(directory)


_overlayopts.user_xattrs = _before_6_6

# In place, or as an ordinary user, the kernel probe started before this conftest was read,
# with the real function: probe again with this one.
from pytest_overlay import _probe

_ahead = _probe._take_ahead()
if _ahead is not None:
    _ahead.result()
"""


@pytest.mark.parametrize("mode", [(), ("--overlay",)], ids=["fixture", "in-place"])
def test_unprivileged_upper_on_disk_where_tmpfs_has_no_user_xattrs(mode: tuple[str, ...]) -> None:
    """What the matrix found on Debian 12's 6.1: the upper layers go on the disk instead."""
    from tests import _run
    from tests._sample_project import SMALL_PROJECT, tree_digest

    gate("unprivileged-user", _unpriv.can_run_as_user())

    def build(root: Path) -> None:
        for name, text in {**SMALL_PROJECT, "conftest.py": NO_TMPFS_XATTRS}.items():
            (root / name).write_text(text)

    with _unpriv.user_project_ctx(build) as root:
        if _filesystem_of(root.parent) == "tmpfs":
            gate("user-xattrs", f"{root.parent} is on tmpfs, not on a disk filesystem")
        # In place, the run makes pytest's cache directory (the kept-layer store) in the tree.
        before = tree_digest(root, (".pytest_cache",), dir_times=False)
        env = {"PYTHONPATH": str(_unpriv.REPO_ROOT)}  # this checkout, whatever is installed
        result = _run.run_pytest(root, "-W", "error", *mode, user=True, env=env, expect_rc=0)
        assert "overlay: backend=kernel (user namespace)" in result.output.splitlines()
        assert _run.counts(result.output) == {"passed": 2}
        assert tree_digest(root, (".pytest_cache",), dir_times=False) == before
        assert not list(root.parent.glob("pytest-of-*/*/overlay/kernel/*"))


def _filesystem_of(path: Path) -> str | None:
    from pytest_overlay._backends.kernel import _filesystem_type

    return _filesystem_type(path)


# Inside the project: whether its own upper layer is on a tmpfs mounted there.
UPPER_ON_TMPFS_TEST = """
def test_upper_layer_where_expected(overlay_root):
    with open("/proc/self/mountinfo") as f:
        points = {{line.split()[4] for line in f}}
    assert (str(overlay_root.path.parent) in points) is {on_tmpfs}
"""


@pytest.mark.parametrize(
    ("mode", "basetemp_fs"),
    [((), "disk"), (("--overlay",), "disk"), ((), "tmpfs")],
    ids=["fixture", "in-place", "basetemp-on-tmpfs"],
)
def test_root_upper_on_disk_where_tmpfs_has_no_user_xattrs(
    mode: tuple[str, ...], basetemp_fs: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As root too, where tmpfs stores no user.* xattrs (5.10 and 6.1 in the matrix): the upper
    layers go on the disk, so copy-up keeps a project file's own (the matrix's root-xattrs);
    with pytest's temporary directory on tmpfs as well they stay on tmpfs."""
    from tests import _run
    from tests._sample_project import SMALL_PROJECT, tree_digest

    gate("kernel", kernel_reason())
    if os.geteuid() != 0:
        pytest.skip("the root case; the ordinary user's is the test above")
    if _filesystem_of(tmp_path) == "tmpfs":
        gate("user-xattrs", f"{tmp_path} is on tmpfs, not on a disk filesystem")
    root = tmp_path / "project"
    root.mkdir()
    tests = {**SMALL_PROJECT, "conftest.py": NO_TMPFS_XATTRS}
    if not mode:  # in place, overlay_root.path is the project's own path
        on_tmpfs = basetemp_fs == "tmpfs"
        tests["test_upper.py"] = UPPER_ON_TMPFS_TEST.format(on_tmpfs=on_tmpfs)
    for name, text in tests.items():
        (root / name).write_text(text)
    before = tree_digest(root, (".pytest_cache",), dir_times=False)
    basetemp = tmp_path / "basetemp"
    if basetemp_fs == "tmpfs":
        shm = Path("/dev/shm")
        if _filesystem_of(shm) != "tmpfs":
            gate("user-xattrs", "/dev/shm is not a tmpfs here")
        shm_dir = tempfile.TemporaryDirectory(dir=shm)
        request.addfinalizer(shm_dir.cleanup)
        basetemp = Path(shm_dir.name) / "basetemp"
    env = {"PYTHONPATH": str(_unpriv.REPO_ROOT), "PYTEST_OVERLAY_REQUIRE": None}
    args = ("-W", "error", "--overlay-backend=kernel", f"--basetemp={basetemp}", *mode)
    result = _run.run_pytest(root, *args, env=env, expect_rc=0)
    lines = result.output.splitlines()
    backend = lines.index("overlay: backend=kernel (root)")
    assert lines[backend + 1].startswith("  upper layers on the disk, in pytest's temporary"), lines
    assert _run.counts(result.output) == {"passed": 3 if not mode else 2}
    assert tree_digest(root, (".pytest_cache",), dir_times=False) == before
    assert not list(basetemp.glob("overlay/kernel/*"))
