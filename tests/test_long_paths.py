"""Paths longer than ``PATH_MAX`` (4,096 bytes), made by a test or already in the tree, on
every backend: the runs pass or fail as the suite says, the failure report says why it has no
diff without printing a path of 5,000 bytes, the views are cleaned up and the tree is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests._gates import gate_backend
from tests._run import Result, assert_clean, counts, run_pytest
from tests._sample_project import make_project

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
    """Like :func:`tests._sample_project.tree_digest`, but through directory descriptors, so
    that paths may pass PATH_MAX."""
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
) -> tuple[Result, str, str]:
    """Run :data:`DEEP_SUITE`, its placeholders filled from *fill*, in *project* on *backend*.

    :returns: the run, its whole output, and the project's digest just before the run.
    """
    gate_backend(backend)
    suite = DEEP_SUITE
    for key, value in fill.items():
        suite = suite.replace("{" + key + "}", value)
    (project / "test_deep.py").write_text(suite)
    before = fd_tree_digest(project)
    result = run_pytest(
        project,
        "-rA",
        f"--overlay-backend={backend}",
        "--overlay-keep=none",
        f"--basetemp={tmp_path / 'basetemp'}",
    )
    return result, result.output, before


@pytest.mark.parametrize("backend", ["kernel", "fuse", "copy"])
@pytest.mark.usefixtures("no_leaked_mounts")
def test_paths_beyond_path_max_made_by_a_test(tmp_path: Path, backend: str) -> None:
    project = make_project(tmp_path, {"pytest.ini": "[pytest]\n"})
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
@pytest.mark.usefixtures("no_leaked_mounts")
def test_paths_beyond_path_max_in_the_lower_layer(tmp_path: Path, backend: str) -> None:
    # pytest's own collection cannot walk the deep tree; tell it not to.
    project = make_project(tmp_path, {"pytest.ini": "[pytest]\nnorecursedirs = deep\n"})
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
