"""Mounting kernel overlayfs: the one builder of its options, and of their legacy syntax.

Two ways to hand overlayfs its layers exist, and this module chooses between them:

* ``mount(2)`` with one option string, ``lowerdir=A:B,upperdir=U,workdir=W,...``.  In that
  string a backslash escapes the next character, so ``,``, ``:`` and ``\\`` inside a path are
  written ``\\,`` ``\\:`` ``\\\\`` (:func:`escape`), and the kernel cuts the string at one page:
  beyond :data:`LEGACY_LIMIT` bytes only the new API works.  One call: the cheap common case.
* The new mount API (``fsopen``/``fsconfig``, :func:`~pytest_overlay._syscalls.
  mount_overlay_new_api`), one ``lowerdir+`` per layer (Linux 6.8).  ``lowerdir+`` takes a
  path as it is, but overlayfs still undoes backslash escapes in ``upperdir`` and ``workdir``
  given this way, so a backslash there is doubled.

:func:`feature_options` pins what our upper-layer reader understands.  The same legacy syntax
is read back by the FUSE mount helper (:func:`split`, :func:`unescape`) and from the mount
table, where overlayfs shows ``lowerdir``, ``upperdir`` and ``workdir`` as they were given.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping, Sequence

from . import _syscalls
from ._errors import MountError

__all__ = [
    "LEGACY_LIMIT",
    "USER_XATTR",
    "escape",
    "feature_options",
    "legacy_data",
    "mount_overlay",
    "split",
    "unescape",
    "user_xattrs",
    "view_options",
]

LEGACY_LIMIT = 4095
"""The longest option string ``mount(2)`` passes on (a page, with its final NUL)."""
# fsconfig refuses "lowerdir+" before Linux 6.8 with one of these; mount(2) it is, then.
_NEW_API_MISSING = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
# The kernel does not change under a running process: once refused, not asked again.
_new_api_refused = False
_SPECIAL = ("\\", ":", ",")
_FLAGS = {"ro": _syscalls.MS_RDONLY}


def escape(path: str | os.PathLike[str]) -> str:
    """*path* for a ``mount(2)`` option string: ``\\``, ``:`` and ``,`` escaped."""
    text = os.fspath(path)
    for char in _SPECIAL:
        text = text.replace(char, "\\" + char)
    return text


def split(text: str, separator: str) -> Iterator[str]:
    """Split *text* at each *separator* not escaped by a backslash; the escapes stay."""
    part: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            part += [char, next(chars, "")]
        elif char == separator:
            yield "".join(part)
            part = []
        else:
            part.append(char)
    yield "".join(part)


def unescape(text: str) -> str:
    """Drop each escaping backslash, as overlayfs does (so a trailing lone one goes too)."""
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


USER_XATTR = "user.pytest-overlay.probe"
"""The attribute :func:`user_xattrs` sets and removes."""


def user_xattrs(directory: str | os.PathLike[str]) -> bool:
    """Whether the filesystem of *directory* stores ``user.*`` xattrs, as an unprivileged upper
    layer needs (``userxattr``: opaque directories are marked with ``user.overlay.opaque``).

    tmpfs stores them since Linux 6.6 only: on 5.11 to 6.5 an unprivileged overlay mounts over
    a tmpfs upper, and then fails with EIO the first time a directory is recreated.
    """
    try:
        os.setxattr(directory, USER_XATTR, b"y")
        os.removexattr(directory, USER_XATTR)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True


def feature_options(*, userxattr: bool) -> dict[str, str | None]:
    """The features to ask for: ``userxattr`` in a user namespace, else the pinned ones.

    Without ``userxattr`` an unprivileged mount succeeds but recreating a directory fails
    with EIO.  As root, pin what our upper-layer reader understands, whatever the kernel's
    defaults: no directory redirects, no metadata-only copy-up, no index.
    """
    if userxattr:
        return {"userxattr": None}
    return {"redirect_dir": "off", "metacopy": "off", "index": "off"}


def view_options(
    upper: str | os.PathLike[str],
    work: str | os.PathLike[str],
    *,
    userxattr: bool,
    volatile: bool = False,
) -> dict[str, str | None]:
    """The options of a test's view: its upper and work directories, the pinned features,
    and ``volatile`` where the upper layer is on a disk (a throw-away upper needs no syncs;
    on tmpfs a sync costs nothing, and ``volatile`` costs every mount a directory in the work
    directory, about 20 us).

    The backend's mounts and the probe both take them from here, so the probe asks the
    kernel exactly what a view will ask.
    """
    options: dict[str, str | None] = {
        "upperdir": os.fspath(upper),
        "workdir": os.fspath(work),
        **feature_options(userxattr=userxattr),
    }
    if volatile:
        options["volatile"] = None
    return options


def legacy_data(lowers: Sequence[str | os.PathLike[str]], options: Mapping[str, str | None]) -> str:
    """The ``mount(2)`` option string for *lowers* (topmost first) and *options*.

    Flags that are mount flags (``ro``) are left out: :func:`mount_overlay` passes them as such.
    """
    return ",".join(
        ["lowerdir=" + ":".join(escape(p) for p in lowers)]
        + [k if v is None else f"{k}={escape(v)}" for k, v in options.items() if k not in _FLAGS]
    )


def mount_overlay(
    target: str | os.PathLike[str],
    lowers: Sequence[str | os.PathLike[str]],
    options: Mapping[str, str | None],
    *,
    source: str = "overlay",
) -> None:
    """Mount overlayfs at *target* over *lowers* (topmost first) with *options*.

    *options* maps names to values, or None for a flag (``userxattr``, ``volatile``, ``ro``).

    :raises MountError: (``E2BIG``) when the paths need more option bytes than ``mount(2)``
        takes on a kernel without ``lowerdir+``; the message says so and what to do.
    :raises OSError: when the kernel refuses the mount.
    """
    global _new_api_refused
    data = legacy_data(lowers, options)
    flags = sum(flag for name, flag in _FLAGS.items() if name in options)
    plain = not any(c in os.fspath(p) for p in (*lowers, *_values(options)) for c in _SPECIAL)
    if plain and len(data) <= LEGACY_LIMIT:
        _syscalls.mount(source, target, "overlay", flags, data)
        return
    if not _new_api_refused:
        given = {k: _fsconfig_value(k, v) for k, v in options.items()}
        try:
            _syscalls.mount_overlay_new_api(target, lowers, {**given, "source": source})
            return
        except OSError as exc:
            if exc.errno not in _NEW_API_MISSING:
                raise
            _new_api_refused = True
    if len(data) > LEGACY_LIMIT:
        raise MountError(
            errno.E2BIG,
            f"the layer paths need {len(data)} bytes of mount options, more than the 4 KiB "
            "mount(2) takes on this kernel (Linux 6.8 lifts the limit); use fewer or shorter "
            "layer paths, or a newer kernel",
            os.fspath(target),
        )
    _syscalls.mount(source, target, "overlay", flags, data)


def _values(options: Mapping[str, str | None]) -> list[str]:
    return [v for v in options.values() if v is not None]


def _fsconfig_value(name: str, value: str | None) -> str | None:
    # overlayfs unescapes these two even through fsconfig (Linux 6.18 still does).
    if value is not None and name in ("upperdir", "workdir"):
        return value.replace("\\", "\\\\")
    return value
