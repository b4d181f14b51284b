"""Property-based differential testing: random operation sequences, kernel overlayfs as oracle.

Hypothesis draws sequences of filesystem operations over a small tree of nested directories,
symlinks and a read-only file; each sequence runs on the kernel, copy and FUSE backends.  The
merged views (types, contents, modes, link targets), the errno of every failing operation and
the diffs must agree, and the lower layer must hash the same before and after.  Renaming a
directory is left out: the kernel answers EXDEV for lower directories on purpose (documented),
while the copy and FUSE backends rename; a second property compares those renames between FUSE
and copy, copy as the oracle.  Sequences with hard links are not compared on FUSE
when its server runs on libfuse 2 (a documented limit of libfuse 2's path API).

The budget is small by default; ``PYTEST_OVERLAY_EXAMPLES`` raises it (the stress run does).
"""

from __future__ import annotations

import os

import pytest

from tests._gates import fuse_reason, gate, kernel_reason, server_libfuse

INNER = r"""
import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from pytest_overlay._backends.copy import CopyBackend
from pytest_overlay._backends.fuse import FuseBackend
from pytest_overlay._backends.kernel import KernelBackend
from pytest_overlay._diff import diff_trees

NAMES = ["a", "b", "ro", "d", "d/x", "d/y", "d/s", "d/s/deep", "e", "e/z", "l", "n"]
EXAMPLES = int(os.environ.get("PYTEST_OVERLAY_EXAMPLES", "40"))
SCRATCH = Path(os.environ["PROPERTY_SCRATCH"])


def build_lower(root):
    (root / "d" / "s").mkdir(parents=True)
    (root / "e").mkdir()
    (root / "a").write_text("alpha\n")
    (root / "ro").write_text("read only\n")
    (root / "ro").chmod(0o444)
    (root / "d" / "x").write_text("x\n")
    (root / "d" / "s" / "deep").write_text("deep\n")
    (root / "e" / "z").write_bytes(b"\0\1\2")
    (root / "l").symlink_to("a")
    os.setxattr(root / "a", "user.origin", b"lower")
    for path in [*root.rglob("*"), root]:
        if not path.is_symlink():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        h.update(f"{path.relative_to(root)} {st_.st_mode:o} {st_.st_mtime_ns}".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def xattrs(path):
    names = os.listxattr(path, follow_symlinks=False)
    return sorted(
        (name, os.getxattr(path, name, follow_symlinks=False))
        for name in names
        if name.startswith("user.")
    )


def view(root):
    seen = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            st_ = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                seen[rel] = ("dir", stat.S_IMODE(st_.st_mode), xattrs(path))
            else:
                seen[rel] = ("file", stat.S_IMODE(st_.st_mode), path.read_bytes(), xattrs(path))
    return seen


def apply(root, op):
    kind, name, other, data = op
    path, target = root / name, root / other
    try:
        if kind == "write":
            path.write_bytes(data)
        elif kind == "append":
            with open(path, "ab") as f:
                f.write(data)
        elif kind == "truncate":
            os.truncate(path, len(data))
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "mkdir":
            os.mkdir(path)
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind == "rmtree":
            shutil.rmtree(path)
        elif kind == "rename":
            if path.is_dir() and not path.is_symlink():
                return "skipped"
            os.rename(path, target)
        elif kind == "rename_any":
            os.rename(path, target)
        elif kind == "symlink":
            os.symlink(other, path)
        elif kind == "link":
            os.link(path, target)
        elif kind == "chmod":
            os.chmod(path, 0o600 + len(data) % 2 * 0o55)
        elif kind == "utime":
            os.utime(path, ns=(2_000_000_000, 2_000_000_000 + len(data)), follow_symlinks=False)
        elif kind == "setxattr":
            os.setxattr(path, "user.t" + str(len(data) % 2), data or b"v", follow_symlinks=False)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


OPS = st.tuples(
    st.sampled_from(["write", "append", "truncate", "unlink", "mkdir", "rmdir", "rmtree",
                     "rename", "symlink", "link", "chmod", "utime", "setxattr"]),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.binary(max_size=8),
)

KERNEL = KernelBackend(lambda: SCRATCH / "kernel")
COPY = CopyBackend(lambda: SCRATCH / "copy")
# Where inotify is missing (or overflowed), the copy backend finds changes by a stat walk.
WALKING_COPY = CopyBackend(lambda: SCRATCH / "walking-copy", watch=False)
FUSE = FuseBackend(lambda: SCRATCH / "fuse")


def run_everywhere(lower, backends, ops):
    # Apply *ops* on a fresh view of each backend: by name, (errnos, merged view, diff).
    results = {}
    for backend in backends:
        results[backend.name] = run_once(backend, lower, ops)
        if isinstance(backend, CopyBackend):
            check_copy_reset(backend, lower, ops, results[backend.name])
    return results


def run_once(backend, lower, ops):
    mount = backend.mount([lower], label="prop")
    try:
        errors = [apply(mount.path, op) for op in ops]
        diff = mount.diff()
        if isinstance(backend, CopyBackend):
            # The tracked diff (O(changes)) against a full comparison of the copy.
            assert diff == diff_trees(mount.path, [lower]), "tracked diff differs from a walk"
        return errors, view(mount.path), diff
    finally:
        mount.close()


def check_copy_reset(backend, lower, ops, first):
    # The copy is reset after the test and handed to the next: it must be the pristine tree
    # again, and the same operations must do the same there.
    mount = backend.mount([lower], label="prop-reset")
    try:
        assert view(mount.path) == view(lower), "the reset copy is not the pristine tree"
        assert digest(mount.path) == digest(lower), "the reset copy's modes or times differ"
        assert not mount.diff(), "the reset copy reports changes"
    finally:
        mount.close()
    assert run_once(backend, lower, ops) == first, "a reset copy behaves differently"


def assert_agree(results, oracle, other):
    assert results[other][0] == results[oracle][0], f"errno differ on {other}"
    assert results[other][1] == results[oracle][1], f"merged views differ on {other}"
    assert results[other][2] == results[oracle][2], f"diffs differ on {other}"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=1, max_size=12))
def test_backends_agree(tmp_path_factory, ops):
    lower = tmp_path_factory.mktemp("lower")
    build_lower(lower)
    before = digest(lower)
    results = run_everywhere(lower, (KERNEL, COPY, FUSE), ops)
    results["walking-copy"] = run_everywhere(lower, (WALKING_COPY,), ops)["copy"]
    # FUSE's known limit on libfuse 2: through libfuse's path API each hard link is its own
    # inode, so a change through one name can leave the other's cached attributes stale
    # (documented); libfuse 3 lets the server invalidate the other names.
    stale_links = os.environ["SERVER_LIBFUSE"] == "2" and any(op[0] == "link" for op in ops)
    for other in ("copy", "walking-copy") if stale_links else ("copy", "walking-copy", "fuse"):
        assert_agree(results, "kernel", other)
    assert digest(lower) == before, "the lower layer changed"


DIR_OPS = st.tuples(
    st.sampled_from(["rename_any", "rename_any", "write", "mkdir", "unlink", "rmtree"]),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.binary(max_size=8),
)


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.lists(DIR_OPS, min_size=1, max_size=8))
def test_directory_renames_agree_between_fuse_and_copy(tmp_path_factory, ops):
    # The deliberate difference from the kernel: fuse and copy rename lower directories
    # (the kernel answers EXDEV), so here copy is the oracle for fuse.
    lower = tmp_path_factory.mktemp("lower")
    build_lower(lower)
    before = digest(lower)
    assert_agree(run_everywhere(lower, (COPY, FUSE), ops), "copy", "fuse")
    assert digest(lower) == before, "the lower layer changed"
"""


def test_random_operation_sequences_agree_with_the_kernel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate("kernel", kernel_reason())
    gate("fuse", fuse_reason())
    monkeypatch.setenv("PROPERTY_SCRATCH", str(pytester.path / "scratch"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("SERVER_LIBFUSE", str(server_libfuse()))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly", timeout=600
    )
    result.assert_outcomes(passed=2)


@pytest.mark.stress
def test_larger_budget_of_random_sequences(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate("kernel", kernel_reason())
    gate("fuse", fuse_reason())
    monkeypatch.setenv("PROPERTY_SCRATCH", str(pytester.path / "scratch"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTEST_OVERLAY_EXAMPLES", os.environ.get("PYTEST_OVERLAY_EXAMPLES", "500"))
    monkeypatch.setenv("SERVER_LIBFUSE", str(server_libfuse()))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly", timeout=1200
    )
    result.assert_outcomes(passed=2)
