"""Sample projects for child runs: a destructive suite against ``overlay_root``, and a small one.

The same suite runs on every backend, as root and as an ordinary user, with and without xdist;
each test asserts that it started from the pristine tree and that the diff is exactly what it
did.
The small project (:data:`SMALL_PROJECT`) is for runs whose point is the header, the
fallback or the error rather than the suite.  Also here: the digests, mounts and processes
that such runs check before and after.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

SUITE = r"""
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

BINARY = bytes(range(256)) * 4


def assert_pristine(root):
    assert (root / "data" / "a.txt").read_text() == "alpha\n"
    assert (root / "data" / "sub" / "b.txt").read_text() == "beta\n"
    assert (root / "notes.txt").read_text() == "one\ntwo\n"
    assert (root / "blob.bin").read_bytes() == BINARY
    assert os.readlink(root / "current") == "data/a.txt"
    assert not (root / "new").exists()
    assert oct((root / "script.sh").stat().st_mode & 0o777) == oct(0o644)


def kinds(diff):
    return sorted((change.kind.letter, change.path) for change in diff)


def test_rmtree_data(overlay_root):
    assert_pristine(overlay_root)
    shutil.rmtree(overlay_root / "data")
    assert not (overlay_root / "data").exists()
    assert kinds(overlay_root.diff()) == [("D", "data")]


def test_append(overlay_root):
    assert_pristine(overlay_root)
    with open(overlay_root / "notes.txt", "a") as f:
        f.write("three\n")
    assert (overlay_root / "notes.txt").read_text() == "one\ntwo\nthree\n"
    assert kinds(overlay_root.diff()) == [("M", "notes.txt")]


def test_create(overlay_root):
    assert_pristine(overlay_root)
    (overlay_root / "new").mkdir()
    (overlay_root / "new" / "x.txt").write_text("x\n")
    diff = overlay_root.diff()
    assert kinds(diff) == [("A", "new"), ("A", "new/x.txt")]
    assert diff.added == {"new", "new/x.txt"}


def test_delete_file(overlay_root):
    assert_pristine(overlay_root)
    (overlay_root / "data" / "sub" / "b.txt").unlink()
    assert kinds(overlay_root.diff()) == [("D", "data/sub/b.txt")]


def test_sqlite(overlay_root):
    assert_pristine(overlay_root)
    with sqlite3.connect(overlay_root / "app.db") as db:
        db.execute("create table t (x)")
        db.execute("insert into t values (42)")
    db.close()
    with sqlite3.connect(os.fspath(overlay_root / "app.db")) as again:
        assert again.execute("select x from t").fetchall() == [(42,)]
    again.close()
    assert kinds(overlay_root.diff()) == [("A", "app.db")]


def test_shell_subprocess(overlay_root):
    assert_pristine(overlay_root)
    subprocess.run(
        ["sh", "-c", "echo hi > out.txt && mv notes.txt moved.txt && rm data/a.txt"],
        cwd=overlay_root,
        check=True,
    )
    assert kinds(overlay_root.diff()) == [
        ("A", "moved.txt"), ("A", "out.txt"), ("D", "data/a.txt"), ("D", "notes.txt"),
    ]


def test_chmod(overlay_root):
    assert_pristine(overlay_root)
    os.chmod(overlay_root / "script.sh", 0o755)
    diff = overlay_root.diff()
    assert kinds(diff) == [("P", "script.sh")]
    assert diff.modified == frozenset()


def test_symlink_replacement(overlay_root):
    assert_pristine(overlay_root)
    (overlay_root / "current").unlink()
    (overlay_root / "current").symlink_to("data/sub/b.txt")
    assert (overlay_root / "current").read_text() == "beta\n"
    assert kinds(overlay_root.diff()) == [("M", "current")]


def test_rewrite_binary(overlay_root):
    assert_pristine(overlay_root)
    (overlay_root / "blob.bin").write_bytes(BINARY[::-1])
    assert kinds(overlay_root.diff()) == [("M", "blob.bin")]


def test_read_only_file_stays_read_only(overlay_root):
    assert_pristine(overlay_root)
    target = overlay_root / "locked.txt"
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            target.write_text("changed")
        shell = subprocess.run(
            ["sh", "-c", "echo changed > locked.txt"], cwd=overlay_root, capture_output=True
        )
        assert shell.returncode != 0, "a program the test started could write a 0444 file"
    assert target.read_text() == "locked\n"
    assert kinds(overlay_root.diff()) == []


def test_copy_up_without_change_is_not_reported(overlay_root):
    assert_pristine(overlay_root)
    with open(overlay_root / "notes.txt", "a"):
        pass
    assert kinds(overlay_root.diff()) == []


def test_identity_and_capabilities(overlay_root):
    # Tests keep seeing their own uid, and neither they nor what they start hold capabilities.
    assert os.getuid() == overlay_root.lowers[0].stat().st_uid
    assert (overlay_root / "notes.txt").stat().st_uid == os.getuid()
    if os.getuid() != 0:
        child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True)
        for status in (open("/proc/self/status").read(), child.stdout):
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert int(fields["CapEff"], 16) == 0, fields["CapEff"]
            assert int(fields["CapAmb"], 16) == 0, fields["CapAmb"]
        assert int(child.stdout.split("CapPrm:\t")[1].split()[0], 16) == 0


def test_fspath_and_division(overlay_root):
    assert os.fspath(overlay_root) == os.fspath(overlay_root.path)
    assert isinstance(overlay_root / "x", Path)
    assert overlay_root.backend in ("kernel", "fuse", "copy")
    assert overlay_root.lowers[0].name == overlay_root.path.name
    assert_pristine(overlay_root)
"""

SUITE_TESTS = SUITE.count("\ndef test_")

SMALL_SUITE = """
def test_write(overlay_root):
    (overlay_root / "f").write_text("x")
    assert overlay_root.diff().added == {"f"}

def test_pristine(overlay_root):
    assert not (overlay_root / "f").exists()
    assert (overlay_root / "data.txt").read_text() == "precious\\n"
"""
SMALL_PROJECT = {"pytest.ini": "[pytest]\n", "data.txt": "precious\n", "test_small.py": SMALL_SUITE}
"""A two-test project, name to text: a write, then a check that the next test starts pristine."""

LAYER_FIXTURES = r"""

@pytest.fixture(scope="session")
def tools_layer(overlay_layer):
    return overlay_layer("tools", build_tools, inputs=["requirements.txt"])


@pytest.fixture(scope="session")
def extra_layer(overlay_layer, tools_layer):
    return overlay_layer("extra", build_extra, below=[tools_layer])
"""
"""The end of the snapshot-layer tests' child conftests (after ``import pytest`` and their
``build_tools`` and ``build_extra``): layer ``tools``, rebuilt when requirements.txt changes,
and layer ``extra`` on top of it."""


def make_project(parent: Path, files: Mapping[str, str]) -> Path:
    """Write *files* (name to text) into a new directory ``project`` in *parent*; return it."""
    root = parent / "project"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def build_project(root: Path) -> None:
    """Write the sample project's files (the lower layer) under *root*."""
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("alpha\n")
    (root / "data" / "sub" / "b.txt").write_text("beta\n")
    (root / "notes.txt").write_text("one\ntwo\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o644)
    (root / "locked.txt").write_text("locked\n")
    (root / "locked.txt").chmod(0o444)
    (root / "current").symlink_to("data/a.txt")
    (root / "test_destructive.py").write_text(SUITE)
    (root / "pytest.ini").write_text("[pytest]\n")


def tree_digest(root: Path, skip: Sequence[str] = (), *, dir_times: bool = True) -> str:
    """A hash of everything under *root*: names, types, modes, owners, times and contents.

    Entries named in *skip* are left out with everything below them; *dir_times* False leaves
    out directory modification times (for runs that legitimately add and remove a file).
    """
    digest = hashlib.sha256()
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted([*dirnames, *(f for f in filenames if f not in skip)]):
            path = Path(directory, name)
            st = path.lstat()
            rel = os.fsencode(path.relative_to(root))
            mtime = 0 if stat.S_ISDIR(st.st_mode) and not dir_times else st.st_mtime_ns
            digest.update(b"%s %o %d %d %d\0" % (rel, st.st_mode, st.st_uid, st.st_gid, mtime))
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.fsencode(os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                digest.update(path.read_bytes())
    st = root.lstat()
    digest.update(b"%o %d" % (st.st_mode, st.st_mtime_ns if dir_times else 0))
    return digest.hexdigest()


def inplace_digest(root: Path) -> str:
    """:func:`tree_digest` of a project a run used in place: byte-identical but for the
    plugin's layer store and pytest's cache (``.pytest_cache``) and bytecode, and directory
    times (pytest itself may create ``.pytest_cache`` in the root)."""
    return tree_digest(root, skip=(".pytest_cache", "__pycache__"), dir_times=False)


def overlay_mounts() -> list[str]:
    """Overlay, tmpfs-in-basetemp and FUSE mounts visible on the host right now."""
    with open("/proc/1/mountinfo") as f:
        lines = f.read().splitlines()
    return [
        line
        for line in lines
        if " - overlay " in line
        or "pytest-overlay" in line
        or "/overlay/" in line
        or " - fuse" in line
    ]


def processes_with(marker: str) -> list[int]:
    """Processes whose environment has *marker* (a run's servers, whoever their parent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
