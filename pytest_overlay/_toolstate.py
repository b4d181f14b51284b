"""Tool state that must reach the disk in place: pass-through paths a test creates.

A pass-through directory that exists when a test starts is bound into its view, so writes
there reach the disk as they happen (:mod:`._backends.mounted`).  One that does not exist yet
cannot be bound: a test that creates it (Hypothesis creating ``.hypothesis/`` on a fresh
checkout) writes it into its upper layer, and it would go with the layer.  So before the
view is closed, what the test created at such a path (and at the coverage files of
:data:`pytest_overlay._choices.TOOL_STATE_FILES`) is copied aside, and once the view is
gone, into the real tree; from the next test on, the directory exists and is bound like any
other.  Some directories are never bound, only carried this way after every test that writes
them: those written at the end of the session, after the last view (pytest's cache,
``.benchmarks``), where a bound directory would cost every test two moves in its busy check.

Only additions are carried over: a whiteout (a deletion) in the upper layer is not, and
neither is anything that is not a directory, a regular file or a symbolic link.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from . import _namespaces

__all__ = ["Carried", "carry_aside"]


class Carried:
    """What a test created at pass-through paths, set aside until its view is closed."""

    def __init__(self, moves: list[tuple[Path, Path]]) -> None:
        self._moves = moves

    def land(self) -> list[str]:
        """Put everything in the real tree (the view must be gone); returns problems."""
        problems = []
        for staged, real in self._moves:
            try:
                _merge(staged, real)
            except OSError as exc:
                problems.append(f"could not write {real} to the disk: {exc}")
            finally:
                if staged.is_dir():
                    shutil.rmtree(staged, ignore_errors=True)
                else:
                    staged.unlink(missing_ok=True)
        return problems


def carry_aside(
    upper: Path,
    target: Path,
    passthrough: Sequence[Path],
    file_globs: Sequence[str],
    scratch: Path,
) -> Carried:
    """Copy what the test created at *passthrough* paths (and at root files matching
    *file_globs*) from its *upper* layer, a view of *target*, to a new directory in
    *scratch*."""
    moves: list[tuple[Path, Path]] = []
    names = _names(upper)
    # Only what the upper layer has at its root can hold anything (the test wrote there).
    wanted = [rel for rel in _relative(tuple(passthrough), target) if rel[0] in names]
    wanted += [(n, "") for n in sorted(names) if any(fnmatch.fnmatchcase(n, g) for g in file_globs)]
    if not wanted:
        return Carried(moves)  # the usual case: as an ordinary user, no capability raised
    # A test may leave unreadable files behind.
    with _namespaces.privileged():
        for first, rest in wanted:
            rel = f"{first}/{rest}" if rest else first
            source = upper / rel
            try:
                st = source.lstat()
            except OSError:
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue  # a whiteout: the test deleted it
            scratch.mkdir(parents=True, exist_ok=True)
            staged = scratch / f"{len(moves)}"
            _merge(source, staged)
            moves.append((staged, target / rel))
    return Carried(moves)


def _names(upper: Path) -> set[str]:
    """The names at the root of *upper*: its mode is the project root's, which its owner
    can list, so capabilities are raised only where that was taken away."""
    try:
        return set(os.listdir(upper))
    except PermissionError:
        pass
    except OSError:
        return set()
    with _namespaces.privileged():
        try:
            return set(os.listdir(upper))
        except OSError:
            return set()


@functools.lru_cache(maxsize=16)
def _relative(passthrough: tuple[Path, ...], target: Path) -> tuple[tuple[str, str], ...]:
    """The *passthrough* paths inside *target*, as (first component, the rest) relative to it
    (the same for every test: computed once)."""
    found = []
    for path in passthrough:
        with contextlib.suppress(ValueError):
            first, _, rest = path.relative_to(target).as_posix().partition("/")
            found.append((first, rest))
    return tuple(found)


def _merge(source: Path, destination: Path) -> None:
    """Copy *source* over *destination*: directories merged, files replaced, specials left."""
    st = source.lstat()
    if stat.S_ISDIR(st.st_mode):
        destination.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(source):
            _merge(Path(entry.path), destination / entry.name)
    elif stat.S_ISREG(st.st_mode):
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Not copy2: it would carry the upper layer's trusted.overlay.* attributes along.
        shutil.copyfile(source, destination)
        os.chmod(destination, stat.S_IMODE(st.st_mode))
        os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            destination.unlink()
        destination.symlink_to(os.readlink(source))
