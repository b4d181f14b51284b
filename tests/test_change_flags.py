"""What view reuse rests on: reading a view raises no change flag, and every kind of change does.

A view goes to the next test when inotify saw nothing happen in its upper layer's directories
(``pytest_overlay._inotify.ChangeFlags``, ``_backends/mounted.py``).  Here, on real kernel
overlayfs and FUSE mounts, every way of reading a view (listing, stat, reading, mapping,
following links, xattrs, running a program from it) leaves it untouched and reusable, and every
way of changing one (data, names, metadata of the root, of a file deep down, of a directory,
xattrs, a file made and removed again, a write-open that writes nothing) is seen.  The kernel
matrix runs this file in every guest kernel too.  The mounts are made in a pytest subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay._inotify import ChangeFlags
from tests._gates import gate_backend
from tests._run import CHILD_OPTIONS

INNER = r"""
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from pytest_overlay._backends.fuse import FuseBackend
from pytest_overlay._backends.kernel import KernelBackend

BACKEND = os.environ["FLAGS_BACKEND"]


@pytest.fixture
def view(tmp_path):
    lower = tmp_path / "lower"
    (lower / "d" / "e").mkdir(parents=True)
    (lower / "d" / "e" / "deep.txt").write_text("deep\n")
    (lower / "a.txt").write_text("a\n")
    (lower / "run.sh").write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/a.txt\"\n")
    os.chmod(lower / "run.sh", 0o755)
    os.symlink("a.txt", lower / "link")
    os.setxattr(lower / "a.txt", "user.tag", b"1")
    scratch = tmp_path / "scratch"
    make = KernelBackend if BACKEND == "kernel" else FuseBackend
    backend = make(lambda: scratch / BACKEND)
    mount = backend.mount([lower], label="flags")
    try:
        yield mount
    finally:
        mount.close()
        backend.shutdown()


def test_reading_leaves_it_untouched(view):
    root = view.path
    for _ in range(2):  # the second time, with every cache warm
        sorted(os.walk(root))
        for path in (root, root / "a.txt", root / "d" / "e" / "deep.txt", root / "link"):
            os.lstat(path)
            os.stat(path)
            os.access(path, os.R_OK | os.W_OK)
            os.listxattr(path, follow_symlinks=False)
        assert os.getxattr(root / "a.txt", "user.tag") == b"1"
        assert os.readlink(root / "link") == "a.txt"
        assert (root / "link").read_text() == "a\n"
        with open(root / "d" / "e" / "deep.txt", "rb") as f:
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[:4] == b"deep"
        fd = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY)
        os.listdir(fd)
        os.close(fd)
        os.close(os.open(root / "a.txt", os.O_PATH))
        os.statvfs(root)
        assert subprocess.run([root / "run.sh"], capture_output=True).stdout == b"a\n"
        assert view.untouched()
    assert view.reusable()
    assert view.untouched()


def _times(path):
    os.utime(path, (1, 1), follow_symlinks=False)


def _made_and_removed(root):
    (root / "new.txt").write_text("x")
    (root / "new.txt").unlink()


def _chmod_and_back(path):
    mode = os.lstat(path).st_mode
    os.chmod(path, 0o700)
    os.chmod(path, mode)


def _open_for_writing(path):
    os.close(os.open(path, os.O_WRONLY))


def _removed_and_put_back(root):
    data = (root / "a.txt").read_bytes()
    (root / "a.txt").unlink()
    (root / "a.txt").write_bytes(data)


CHANGES = {
    "new file": lambda root: (root / "new.txt").write_text("x"),
    "new file deep down": lambda root: (root / "d" / "e" / "new.txt").write_text("x"),
    "made and removed": _made_and_removed,
    "removed": lambda root: (root / "a.txt").unlink(),
    "removed deep down": lambda root: (root / "d" / "e" / "deep.txt").unlink(),
    "removed and put back": _removed_and_put_back,
    "appended": lambda root: (root / "a.txt").open("a").write("more\n"),
    "opened for writing only": lambda root: _open_for_writing(root / "a.txt"),
    "renamed": lambda root: os.rename(root / "a.txt", root / "b.txt"),
    "hard link": lambda root: os.link(root / "a.txt", root / "d" / "hard"),
    "symlink": lambda root: os.symlink("a.txt", root / "d" / "e" / "new-link"),
    "directory made": lambda root: (root / "d" / "new").mkdir(),
    "root chmod and back": _chmod_and_back,
    "root times": _times,
    "root xattr": lambda root: os.setxattr(root, "user.new", b"1"),
    "file chmod and back": lambda root: _chmod_and_back(root / "d" / "e" / "deep.txt"),
    "file times": lambda root: _times(root / "d" / "e" / "deep.txt"),
    "file xattr removed": lambda root: os.removexattr(root / "a.txt", "user.tag"),
    "directory times": lambda root: _times(root / "d"),
    "symlink times": lambda root: _times(root / "link"),
    "truncated to the same size": lambda root: os.truncate(root / "a.txt", 2),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_is_seen(view, change):
    assert view.untouched()
    CHANGES[change](view.path)
    assert not view.untouched()
    assert not view.reusable()
"""


@pytest.mark.parametrize("backend", ["kernel", "fuse"])
def test_change_flags(pytester: pytest.Pytester, backend: str) -> None:
    gate_backend(backend)
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAGS_BACKEND", backend)
        result = pytester.runpytest_subprocess(*CHILD_OPTIONS, "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes == {"passed": 22}, result.stdout.str()


# The flags themselves, on plain directories (no mount needed).


@pytest.fixture
def flags() -> Iterator[ChangeFlags]:
    made = ChangeFlags()
    try:
        yield made
    finally:
        made.close()


def watched(flags: ChangeFlags, tmp_path: Path, *keys: str) -> list[Path]:
    """A new directory per key under *tmp_path*, each watched for its key."""
    directories = []
    for key in keys:
        (tmp_path / key).mkdir()
        assert flags.watch(key, [str(tmp_path / key)])
        directories.append(tmp_path / key)
    return directories


def test_a_flag_is_raised_by_a_change_to_its_own_directories_only(
    flags: ChangeFlags, tmp_path: Path
) -> None:
    first, second = watched(flags, tmp_path, "first", "second")
    os.listdir(first)  # reading is no change
    assert not flags.changed("first")
    (first / "new").write_text("x")
    assert flags.changed("first")
    assert not flags.changed("second")
    flags.forget("first")
    assert flags.changed("first")  # no longer watched: nothing can be vouched for
    os.chmod(second, 0o700)
    assert flags.changed("second")


def test_an_overflowing_queue_raises_every_flag(flags: ChangeFlags, tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    busy, _ = watched(flags, tmp_path, "busy", "quiet")
    for index in range(limit + 10):  # one event each, more than the queue holds
        os.mkdir(busy / str(index))
    assert flags.changed("quiet")


def test_a_forked_child_trusts_no_flag_and_takes_no_event(
    flags: ChangeFlags, tmp_path: Path
) -> None:
    # It shares the parent's inotify queue: reading it there would hide the parent's events.
    (directory,) = watched(flags, tmp_path, "key")
    (directory / "new").write_text("x")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os._exit(0 if flags.changed("key") and not flags.watch("other", [str(tmp_path)]) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flags.changed("key")  # the event is still the parent's
