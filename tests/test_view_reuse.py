"""A view a test left untouched goes to the next test as it is; no test ever sees another's change.

One suite, run for real on every backend, in fixture mode and in place, as root and as the
ordinary user: its tests take turns, each *hazard* test leaving something behind that could
reach the next test through a reused view (a descriptor kept in a global and written through
later, a process left running in the view, a shared mapping, a change to metadata only, a file
created and deleted again), and each *check* test after it first makes the late write happen
and then compares the whole view with what the first test saw.  A pair of untouched tests
proves that reuse happens at all (kernel, and fuse in a private mount namespace); the real
tree is hashed before and after.  The views' checks watch the upper layer with inotify; the
suite runs again where inotify is out of reach, and the checks compare its state instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, gate_backend
from tests._run import counts, run_pytest
from tests._sample_project import overlay_mounts, tree_digest

SUITE = r'''
import errno
import hashlib
import mmap
import os
import subprocess
import time

import pytest

BACKEND = os.environ["REUSE_BACKEND"]
EXPECT_REUSE = os.environ["REUSE_EXPECTED"] == "1"
SEEN = {}


def state(root):
    """Everything a test can see of the tree, except the root's times."""
    paths = [str(root)]
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".pytest_cache"))
        paths += [os.path.join(directory, name) for name in [*dirs, *sorted(files)]]
    seen = {}
    for path in paths:
        st = os.lstat(path)
        entry = [st.st_mode, st.st_uid, st.st_gid, st.st_size]
        if path != str(root):
            entry.append(st.st_mtime_ns)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                entry.append(hashlib.sha256(f.read()).hexdigest())
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            names = []
        entry.append(sorted(n for n in names if n.startswith("user.")))
        seen[os.path.relpath(path, root)] = entry
    return seen


def identity(root):
    """What tells views apart: a fresh view's root has the times of its own upper layer."""
    st = os.lstat(root)
    return str(root), st.st_mtime_ns, st.st_ctime_ns


def before_hazard(root):
    SEEN["hazard"] = os.lstat(root).st_mtime_ns


@pytest.fixture(autouse=True)
def _time_apart():
    # Coarse file times: the next view's times must fall after everything this test did.
    yield
    SEEN["end"] = time.time_ns()
    time.sleep(0.03)


def assert_pristine(root):
    assert state(root) == SEEN["pristine"]
    # A fresh view's root has times of its own, later than the end of the test before; a
    # reused one must still have the times it had before that test's hazard.
    mtime = os.lstat(root).st_mtime_ns
    assert mtime == SEEN["hazard"] or mtime > SEEN["end"]


def test_00_record(overlay_root):
    SEEN["pristine"] = state(overlay_root.path)
    SEEN["first"] = identity(overlay_root.path)


def test_01_untouched_view_is_reused(overlay_root):
    assert state(overlay_root.path) == SEEN["pristine"]
    if EXPECT_REUSE:
        assert identity(overlay_root.path) == SEEN["first"]


def test_10_keeps_read_only_descriptors(overlay_root):
    # Nothing is copied up: the upper layer stays empty, only the busy check can tell.
    root = overlay_root.path
    before_hazard(root)
    SEEN["ro"] = os.open(root / "data" / "a.txt", os.O_RDONLY)
    SEEN["dir"] = os.open(root / "data", os.O_RDONLY | os.O_DIRECTORY)
    SEEN["rootfd"] = os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def test_11_writes_through_them_later(overlay_root):
    os.fchmod(SEEN["ro"], 0o600)
    with open(f"/proc/self/fd/{SEEN['ro']}", "w") as f:  # opened again, for writing
        f.write("late")
    os.close(os.open("late-in-dir", os.O_CREAT | os.O_WRONLY, dir_fd=SEEN["dir"]))
    os.close(os.open("late-in-root", os.O_CREAT | os.O_WRONLY, dir_fd=SEEN["rootfd"]))
    for name in ("ro", "dir", "rootfd"):
        os.close(SEEN.pop(name))
    assert_pristine(overlay_root.path)


def test_12_keeps_a_writable_descriptor(overlay_root):
    before_hazard(overlay_root.path)
    SEEN["rw"] = os.open(overlay_root.path / "data" / "b.txt", os.O_RDWR)


def test_13_writes_through_it_later(overlay_root):
    os.write(SEEN["rw"], b"LATE")
    os.close(SEEN.pop("rw"))
    assert_pristine(overlay_root.path)


def test_20_leaves_a_process_running(overlay_root):
    before_hazard(overlay_root.path)
    subprocess.Popen(
        ["sh", "-c", "sleep 1; echo late > late.txt; echo late > data/a.txt; chmod 700 ."],
        cwd=overlay_root.path,
    )


def test_21_process_wrote_later(overlay_root):
    time.sleep(2)
    assert_pristine(overlay_root.path)


def _mapped_range(path):
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip("\n").endswith(" " + str(path)):
                return line.split()[0]
    raise AssertionError(f"{path} is not mapped")


def test_30_maps_a_file_read_only(overlay_root):
    # Nothing is copied up; as root the mapping's file can be opened again for writing.
    before_hazard(overlay_root.path)
    path = overlay_root.path / "data" / "c.txt"
    with open(path, "rb") as f:
        SEEN["map_ro"] = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    SEEN["map_ro_range"] = _mapped_range(path)


def test_31_writes_through_its_file_later(overlay_root):
    try:
        with open(f"/proc/self/map_files/{SEEN['map_ro_range']}", "r+b") as f:
            f.write(b"LATE")
    except PermissionError:
        pass  # an ordinary user may not: then the mapping cannot write at all
    SEEN.pop("map_ro").close()
    assert_pristine(overlay_root.path)


def test_32_maps_a_file_shared_and_writable(overlay_root):
    before_hazard(overlay_root.path)
    with open(overlay_root.path / "data" / "a.txt", "r+b") as f:
        SEEN["map"] = mmap.mmap(f.fileno(), 0)


def test_33_writes_through_the_mapping_later(overlay_root):
    SEEN["map"][:4] = b"LATE"
    SEEN["map"].flush()
    SEEN.pop("map").close()
    assert_pristine(overlay_root.path)


def test_40_chmods_the_root(overlay_root):
    before_hazard(overlay_root.path)
    os.chmod(overlay_root.path, 0o700)


def test_41_check(overlay_root):
    assert_pristine(overlay_root.path)


def test_42_chmods_the_root_and_back(overlay_root):
    before_hazard(overlay_root.path)
    mode = os.lstat(overlay_root.path).st_mode
    os.chmod(overlay_root.path, 0o700)
    os.chmod(overlay_root.path, mode)


def test_43_check(overlay_root):
    assert_pristine(overlay_root.path)


def test_44_sets_the_root_times(overlay_root):
    before_hazard(overlay_root.path)
    os.utime(overlay_root.path, (1, 1))


def test_45_check(overlay_root):
    assert_pristine(overlay_root.path)


def test_46_sets_an_xattr_on_the_root(overlay_root):
    before_hazard(overlay_root.path)
    try:
        os.setxattr(overlay_root.path, "user.reuse", b"1")
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


def test_47_check(overlay_root):
    assert_pristine(overlay_root.path)


def test_48_chmods_a_file_and_back(overlay_root):
    before_hazard(overlay_root.path)
    path = overlay_root.path / "data" / "a.txt"
    mode = os.lstat(path).st_mode
    os.chmod(path, 0o600)
    os.chmod(path, mode)


def test_49_check(overlay_root):
    assert_pristine(overlay_root.path)


def test_50_creates_and_deletes(overlay_root):
    root = overlay_root.path
    before_hazard(root)
    for path in (root / "gone.txt", root / "data" / "gone.txt"):
        path.write_text("x")
        path.unlink()
    (root / "gone-dir").mkdir()
    (root / "gone-dir").rmdir()


def test_51_check(overlay_root):
    assert_pristine(overlay_root.path)
'''


def build(root: Path) -> None:
    (root / "data").mkdir()
    for name in ("a", "b", "c"):
        (root / "data" / f"{name}.txt").write_text(f"{name} " * 20 + "\n")
    (root / "notes.txt").write_text("one\n")
    (root / "test_reuse_suite.py").write_text(SUITE)
    (root / "pytest.ini").write_text("[pytest]\n")


REPO = Path(__file__).resolve().parents[1]
SUITE_TESTS = SUITE.count("\ndef test_")
MODES = pytest.mark.parametrize("inplace", [False, True], ids=["fixture", "in-place"])


def digest(root: Path) -> str:
    return tree_digest(root, skip=(".pytest_cache", "__pycache__"), dir_times=False)


def run_suite(
    root: Path,
    backend: str,
    *,
    inplace: bool,
    user: bool,
    expect_reuse: bool,
    namespace: _unpriv.Namespace | None = None,
) -> None:
    before, mounts = digest(root), overlay_mounts()
    args: Sequence[str] = (f"--overlay-backend={backend}", *(("--overlay",) if inplace else ()))
    env = {"REUSE_BACKEND": backend, "REUSE_EXPECTED": "1" if expect_reuse else "0"}
    if user:
        env["PYTHONPATH"] = str(REPO)  # this checkout's plugin, wherever it is installed from
    result = run_pytest(root, "-rA", *args, user=user, env=env, namespace=namespace)
    outcomes = counts(result.output)
    outcomes.pop("warning", None)  # views kept busy are detached lazily, with a warning
    assert outcomes == {"passed": SUITE_TESTS}, result.output
    assert digest(root) == before
    assert overlay_mounts() == mounts


@pytest.mark.parametrize("backend", ["kernel", "fuse", "copy"])
@MODES
def test_no_test_sees_another_s_change_as_root(tmp_path: Path, backend: str, inplace: bool) -> None:
    if inplace and backend == "copy":
        pytest.skip("in place never runs on the copy backend (a usage error)")
    gate_backend(backend)
    root = tmp_path / "project"
    root.mkdir()
    build(root)
    run_suite(root, backend, inplace=inplace, user=False, expect_reuse=backend != "copy")


# inotify out of reach (``fs.inotify.max_user_instances`` reached, as on a machine where other
# programs hold them all): the views' checks compare the upper layer's state instead.
NO_INOTIFY = """
import errno

from pytest_overlay import _inotify


def _refused(self):
    raise OSError(errno.EMFILE, "inotify_init1: Too many open files")


_inotify.Inotify.__init__ = _refused
"""


@pytest.mark.parametrize("backend", ["kernel", "fuse"])
@MODES
def test_no_test_sees_another_s_change_without_inotify(
    tmp_path: Path, backend: str, inplace: bool
) -> None:
    gate_backend(backend)
    root = tmp_path / "project"
    root.mkdir()
    build(root)
    (root / "conftest.py").write_text(NO_INOTIFY)
    run_suite(root, backend, inplace=inplace, user=False, expect_reuse=True)


@pytest.fixture
def user_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(build) as root:
        yield root


@MODES
def test_no_test_sees_another_s_change_as_user_on_kernel(user_project: Path, inplace: bool) -> None:
    run_suite(user_project, "kernel", inplace=inplace, user=True, expect_reuse=True)


@pytest.mark.parametrize("backend", ["fuse", "copy"])
def test_no_test_sees_another_s_change_as_user_in_fixture_mode(
    user_project: Path, backend: str
) -> None:
    # fuse through fusermount3: no private mount namespace to check the view in, so no reuse.
    namespace = _unpriv.OPEN_DEV_FUSE if backend == "fuse" else None
    run_suite(
        user_project, backend, inplace=False, user=True, expect_reuse=False, namespace=namespace
    )
