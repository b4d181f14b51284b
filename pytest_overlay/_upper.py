"""Turn a diff and the new tree into an upper layer in overlayfs format.

The copy backend has no upper layer of its own; a kept test still needs one, so that the
``pytest-overlay`` command reads every backend's kept layers the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from ._diff import ChangeKind, TreeDiff
from ._filecopy import copy_file_data


def make_whiteout(path: Path) -> None:
    """A kernel whiteout (character device 0/0), or a ``.wh.`` file where mknod is refused."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, 0)
    except (PermissionError, AttributeError):
        (path.parent / f".wh.{path.name}").touch()


def synthesize_upper(diff: TreeDiff, new_root: Path, upper: Path) -> None:
    """Write into *upper* (created) the layer that turns the lowers into *new_root*."""
    upper.mkdir(mode=0o700)
    directories: list[tuple[Path, Path]] = []
    for change in diff:
        target = upper / change.path
        _make_parents(upper, new_root, change.path, directories)
        if change.kind is ChangeKind.DELETED:
            make_whiteout(target)
            continue
        source = new_root / change.path
        st = source.lstat()
        if stat.S_ISDIR(st.st_mode):
            if not target.is_dir():
                target.mkdir(mode=0o700)
            directories.append((source, target))
        elif stat.S_ISREG(st.st_mode):
            copy_file_data(source, target)
            shutil.copystat(source, target, follow_symlinks=False)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(target, stat.S_IMODE(st.st_mode))
        else:
            with contextlib.suppress(OSError):
                os.mknod(target, st.st_mode, st.st_rdev)
    # Directory modes and times last, deepest first, so read-only ones could be filled; the
    # root too, since a merged view takes its root's mode from the topmost layer.
    for source, target in sorted(directories, key=lambda pair: len(pair[1].parts), reverse=True):
        shutil.copystat(source, target, follow_symlinks=False)
    shutil.copystat(new_root, upper, follow_symlinks=False)


def _make_parents(
    upper: Path, new_root: Path, rel: str, directories: list[tuple[Path, Path]]
) -> None:
    parts = rel.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        target = upper / sub
        if not target.is_dir():
            target.mkdir(mode=0o700)
            directories.append((new_root / sub, target))
