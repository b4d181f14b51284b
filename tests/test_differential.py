"""The same operations give the same merged view and the same diff on every backend.

Kernel overlayfs is the oracle.  Each scenario runs inside a pytest subprocess once per backend
and writes what it saw (the diff as JSON and a listing of the merged view) to a file; this test
compares the files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests._gates import fuse_reason, gate, kernel_reason

# Each scenario is the body of a function taking `root` (the merged view).  Directory renames
# of lower directories are left out on purpose: the kernel answers EXDEV there (documented).
SCENARIOS = {
    "rename_file": "os.rename(root / 'a.txt', root / 'renamed.txt')",
    "rename_new_dir": "(root / 'n').mkdir(); (root / 'n' / 'f').write_text('x'); "
    "os.rename(root / 'n', root / 'm')",
    "nested_mkdir": "(root / 'x' / 'y' / 'z').mkdir(parents=True)",
    "rmdir_empty_lower": "(root / 'empty').rmdir()",
    "symlink_new": "(root / 'ln').symlink_to('a.txt')",
    "symlink_outside": "(root / 'out').symlink_to('/etc/passwd')",
    "hardlink": "os.link(root / 'a.txt', root / 'hard')",
    "truncate": "os.truncate(root / 'a.txt', 2)",
    "chmod_dir": "os.chmod(root / 'd', 0o700)",
    "touch": "os.utime(root / 'a.txt', ns=(1, 1_000_000_000))",
    "identical_rewrite": "(root / 'a.txt').write_text('alpha\\n'); "
    "os.utime(root / 'a.txt', ns=(1, 2_000_000_000))",
    "fifo": "os.mkfifo(root / 'pipe')",
    "recreate_dir_partly": "shutil.rmtree(root / 'd'); (root / 'd').mkdir(); "
    "(root / 'd' / 'keep.txt').write_text('keep\\n'); (root / 'd' / 'new.txt').write_text('n')",
    "file_to_dir": "(root / 'a.txt').unlink(); (root / 'a.txt').mkdir(); "
    "(root / 'a.txt' / 'inner').write_text('i')",
    "dir_to_file": "shutil.rmtree(root / 'd'); (root / 'd').write_text('now a file')",
    "delete_nested": "(root / 'd' / 'sub' / 'deep.txt').unlink()",
    "delete_symlink": "(root / 'link').unlink()",
    "append_and_chmod": "open(root / 'a.txt', 'a').write('more'); os.chmod(root / 'a.txt', 0o600)",
    "odd_names": "(root / 'new\\nline').write_text('x'); (root / '\\x1b[31mred').write_text('y'); "
    "open(os.path.join(os.fsencode(root), b'bad\\xff'), 'w').close()",
    "sqlite": "import sqlite3; c = sqlite3.connect(root / 'db'); "
    "c.execute('create table t (x)'); c.commit(); c.close()",
    # Issue 18: names overlayfs uses for itself in other formats, and the overlay's xattr
    # namespace, are a project's own to the kernel (as root); truncating to the same size is
    # a change on every backend alike.
    "wh_names": "(root / '.wh.new').write_text('n'); (root / '.wh.x').write_text('changed'); "
    "(root / 'd' / '.wh..wh..opq').unlink(); os.mkfifo(root / '.wh.fifo')",
    "overlay_xattrs": "os.setxattr(root / 'a.txt', 'user.overlay.t', b'changed'); "
    "os.setxattr(root / 'd' / 'keep.txt', 'user.overlay.opaque', b'y'); "
    "os.chmod(root / 'd' / 'keep.txt', 0o600)",  # diff() leaves xattrs out: a change it shows
    "truncate_same_size": "os.truncate(root / 'a.txt', 6)",
}
INNER = """
import json
import os
import shutil
from pathlib import Path

import pytest

SCENARIOS = {scenarios!r}


def listing(root):
    seen = {{}}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            xattrs = [] if os.path.islink(path) else sorted(
                [name, os.getxattr(path, name).hex()] for name in os.listxattr(path)
                if name.startswith("user."))
            seen[os.fsencode(rel).hex()] = [st.st_mode, st.st_size if os.path.isfile(path)
                                            and not os.path.islink(path) else 0, xattrs]
    return seen


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(overlay_root, name):
    root = overlay_root.path
    exec(SCENARIOS[name])
    result = {{"diff": json.loads(overlay_root.diff().to_json()), "view": listing(root)}}
    out = Path(os.environ["DIFF_OUT"]) / f"{{overlay_root.backend}}-{{name}}.json"
    out.write_text(json.dumps(result, sort_keys=True))
"""


def _lower(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "keep.txt").write_text("keep\n")
    (root / "d" / "gone.txt").write_text("gone\n")
    (root / "d" / "sub" / "deep.txt").write_text("deep\n")
    (root / "a.txt").write_text("alpha\n")
    (root / "empty").mkdir()
    (root / "link").symlink_to("a.txt")
    (root / ".wh.x").write_text("not a whiteout\n")
    (root / "d" / ".wh..wh..opq").write_text("not an opaque marker\n")
    os.setxattr(root / "a.txt", "user.overlay.t", b"the project's own")


def test_backends_agree_with_the_kernel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate("kernel", kernel_reason())
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("DIFF_OUT", str(out))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    lower = tmp_path / "lower"
    lower.mkdir()
    _lower(lower)
    pytester.makepyfile(test_inner=INNER.format(scenarios=SCENARIOS))
    gate("fuse", fuse_reason())
    for backend in ("kernel", "copy", "fuse"):
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",
            f"--overlay-backend={backend}",
            f"--overlay-lower={lower}",
            f"--basetemp={tmp_path / backend}",
        )
        result.assert_outcomes(passed=len(SCENARIOS))
    for name, backend in ((n, b) for n in SCENARIOS for b in ("copy", "fuse")):
        oracle = json.loads((out / f"kernel-{name}.json").read_text())
        other = json.loads((out / f"{backend}-{name}.json").read_text())
        assert other["diff"] == oracle["diff"], (name, backend)
        only_kernel = set(oracle["view"]) - set(other["view"])
        only_copy = set(other["view"]) - set(oracle["view"])
        assert (only_kernel, only_copy) == (set(), set()), name
        assert other["view"] == oracle["view"], name
        assert oracle["diff"]["changes"], f"{name} changed nothing"
