"""The mount table: the one reader of ``/proc/<pid>/mountinfo``.

Each line is ``ID PARENT MAJ:MIN ROOT POINT MOUNT-OPTIONS [OPTIONAL...] - FSTYPE SOURCE
SUPER-OPTIONS`` (proc(5)).  The kernel escapes space, tab, newline and backslash in paths and
sources, and overlayfs also the ``,`` ``:`` and ``=`` of its option values, as a backslash and
three octal digits; nothing else is escaped, and bytes that are not UTF-8 come through raw.
:func:`unescape` undoes that, and names come out through :func:`os.fsdecode`, so a path turns
back into the same bytes.  Standard library only (and the overlay option syntax).

A mount's table belongs to a thread's mount namespace, so the default is
``/proc/thread-self/mountinfo``: the kernel backend unshares per thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _overlayopts

__all__ = ["MountInfo", "containing_mount", "parse", "read", "unescape"]

THREAD_TABLE = "/proc/thread-self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")
# overlayfs shows these as they were given, in the legacy option syntax; "lowerdir+" and
# "datadir+" (Linux 6.8) as plain paths.
_AS_GIVEN = ("upperdir", "workdir")
_PLAIN = ("lowerdir+", "datadir+")


def unescape(field: bytes) -> str:
    """A mountinfo field with its ``\\NNN`` octal escapes undone, decoded as a file name."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


@dataclass(frozen=True)
class MountInfo:
    """One line of a mount table."""

    mount_id: int
    parent_id: int
    root: str
    """The directory of the mounted filesystem that is mounted here (``/`` for all of it)."""
    point: Path
    mount_options: tuple[str, ...]
    """Per-mount options: ``rw``, ``nosuid``, ``relatime``..."""
    fstype: str
    source: str
    raw_super_options: bytes
    """The filesystem's options as the kernel wrote them; see :meth:`super_options`."""

    def super_options(self) -> list[tuple[str, str | None]]:
        """The filesystem's options in order, unescaped; a flag's value is None.

        A name may occur more than once (``lowerdir+`` once per layer).
        """
        options: list[tuple[str, str | None]] = []
        for option in self.raw_super_options.split(b","):
            if option:
                key, equals, value = option.partition(b"=")
                options.append((unescape(key), unescape(value) if equals else None))
        return options

    def option_values(self, name: str) -> list[str]:
        """Every value of the super option *name*."""
        return [v for k, v in self.super_options() if k == name and v is not None]

    def layer_dirs(self) -> list[Path]:
        """The directories an overlay mount uses: its lower layers, upper and work directory.

        overlayfs shows ``lowerdir``, ``upperdir`` and ``workdir`` as they were given, so in
        the legacy syntax of :mod:`pytest_overlay._overlayopts` (``lowerdir=A:B``, a ``:`` or
        ``,`` in a path escaped with a backslash); ``lowerdir+`` as plain paths.
        """
        paths: list[Path] = []
        for name, value in self.super_options():
            if not value:
                continue
            if name == "lowerdir":
                layers = _overlayopts.split(value, ":")
                paths += [Path(_overlayopts.unescape(p)) for p in layers if p]
            elif name in _AS_GIVEN:
                paths.append(Path(_overlayopts.unescape(value)))
            elif name in _PLAIN:
                paths.append(Path(value))
        return paths


def parse(lines: Iterable[bytes]) -> list[MountInfo]:
    """The mounts of a table's *lines*, in mount order; a line not in the format is skipped."""
    mounts = []
    for line in lines:
        fields = line.rstrip(b"\n").split(b" ")
        try:
            tail = fields.index(b"-", 6)
            fstype, source, options = fields[tail + 1 : tail + 4]
            mount = MountInfo(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=unescape(fields[3]),
                point=Path(unescape(fields[4])),
                mount_options=tuple(unescape(o) for o in fields[5].split(b",")),
                fstype=unescape(fstype),
                source=unescape(source),
                raw_super_options=options,
            )
        except ValueError:
            continue
        mounts.append(mount)
    return mounts


def read(table: str = THREAD_TABLE) -> list[MountInfo]:
    """The mounts in *table* (default: the calling thread's), in mount order.

    :raises OSError: when the table cannot be read.
    """
    with open(table, "rb") as f:
        return parse(f)


def containing_mount(path: Path, mounts: Sequence[MountInfo]) -> MountInfo | None:
    """The mount *path* (already resolved) is on: the deepest mount point above it, and of
    several on that point the last one mounted, which covers the others."""
    found: MountInfo | None = None
    for mount in mounts:
        point = mount.point
        if (point == path or point in path.parents) and (
            found is None or len(point.parts) >= len(found.point.parts)
        ):
            found = mount
    return found
