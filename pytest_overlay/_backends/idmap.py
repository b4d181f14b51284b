"""Owners the kernel backend's user namespace does not map (issue 10).

Unprivileged, the kernel backend mounts inside a user namespace that maps only the user's own
uid and gid (see :func:`pytest_overlay._namespaces.enter_user_namespace`).  Reading any file
works, but overlayfs refuses to copy up a file or directory whose owner or group is another
id: the first write to it fails with ``EOVERFLOW`` ("Value too large for defined data type"),
because the copy in the upper layer could not be given that owner.  A typical cause is
``chown -R user dir`` that left the group as root.  :func:`unmapped_owner` finds such a file
before the session picks the kernel; :func:`overflow_note` explains a write that still fails.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_overlay import _namespaces, _oscompat
from pytest_overlay._safetext import safe_path

__all__ = ["Unmapped", "find_unmapped", "overflow_note", "unmapped_owner"]


@dataclass(frozen=True)
class Unmapped:
    """The first file found whose owner or group the user namespace does not map."""

    path: Path
    lower: Path
    uid: int
    gid: int
    mapped_uid: int
    mapped_gid: int

    def describe(self) -> str:
        """What is wrong with the file, and how to fix it, for a header or a usage error."""
        wrong = []
        if self.uid != self.mapped_uid:
            wrong.append(f"owner {_user_name(self.uid)} (uid {self.uid})")
        if self.gid != self.mapped_gid:
            wrong.append(f"group {_group_name(self.gid)} (gid {self.gid})")
        lower = safe_path(str(self.lower))
        if self.uid != self.mapped_uid:
            fix = f"`chown -R {self.mapped_uid}:{self.mapped_gid} {lower}`"
        else:
            fix = f"`chgrp -R {self.mapped_gid} {lower}`"
        return (
            f"{safe_path(str(self.path))} has {' and '.join(wrong)}, which the user namespace "
            f"of the kernel backend does not map (it maps only uid {self.mapped_uid} and gid "
            f"{self.mapped_gid}), so overlayfs cannot copy it up and a test's write to it "
            f"would fail with EOVERFLOW; make the tree yours with {fix}"
        )


# grp and pwd are imported where used: Windows has neither, and this module is imported
# wherever the backends are.
def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def find_unmapped(lowers: Sequence[Path], uid: int, gid: int) -> Unmapped | None:
    """The first entry below one of *lowers* not owned by exactly *uid* and *gid*, or None.

    One ``scandir`` and one ``lstat`` per entry, symlinks not followed, stopping at the first
    hit.  A lower's own root is not checked: the merged root is the upper directory, never a
    copy.  Other filesystems mounted inside a lower are not entered, as overlayfs does not
    cross them either; unreadable directories are passed over.
    """
    for lower in lowers:
        try:
            device = os.stat(lower).st_dev
        except OSError:
            continue
        stack = [os.fspath(lower)]
        while stack:
            directory = stack.pop()
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                # Through the directory's descriptor each lstat is an fstatat of a bare name,
                # about 15% faster than resolving the whole path every time.
                with os.scandir(fd) as entries:
                    for entry in entries:
                        st = entry.stat(follow_symlinks=False)
                        if st.st_uid != uid or st.st_gid != gid:
                            path = Path(directory, entry.name)
                            return Unmapped(path, lower, st.st_uid, st.st_gid, uid, gid)
                        if stat.S_ISDIR(st.st_mode) and st.st_dev == device:
                            stack.append(os.path.join(directory, entry.name))
            except OSError:
                continue
            finally:
                os.close(fd)
    return None


def unmapped_owner(lowers: Sequence[Path]) -> str | None:
    """Why the kernel backend in a user namespace cannot give tests a writable view, or None.

    Only the user-namespace mode is checked: real root maps every id.  The mapped ids are the
    effective uid and gid; inside our namespace they still are (it maps each to itself, and
    every other id reads as the overflow id), so the answer is the same before and after
    entering it.
    """
    ids = _oscompat.effective_ids()
    if ids is None or _namespaces.is_real_root():  # no uids (Windows), or all mapped
        return None
    found = find_unmapped(lowers, *ids)
    return None if found is None else found.describe()


def overflow_note(error: BaseException | None) -> str:
    """A paragraph explaining *error* if it is (or was caused by) an ``EOVERFLOW``, else ``""``.

    Meant for a kernel-backend test run in a user namespace, where that errno on a write
    means a copy-up of a file with an unmapped owner.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.EOVERFLOW:
            break
        error = error.__cause__ or error.__context__
    else:
        return ""
    assert isinstance(error, OSError)
    which = f" ({safe_path(str(error.filename))})" if error.filename is not None else ""
    return (
        f"EOVERFLOW on a write{which}: the kernel backend runs in a user namespace that maps "
        f"only uid {os.geteuid()} and gid {os.getegid()}, and overlayfs cannot copy up a file "
        "or directory whose owner or group is another id (`ls -ln` in the view shows 65534); "
        "`chown -R` (or `chgrp -R`) the project to the user, or use --overlay-backend=fuse or "
        "copy"
    )
