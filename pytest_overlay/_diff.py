"""What a test changed on disk: the data model, its serialisation, and the ways of computing it.

The model is :class:`TreeDiff`, a sorted tuple of :class:`Change` (one per path, with a
:class:`ChangeKind` and the type, mode, size and link target before and after); its one
serialisation is :meth:`TreeDiff.to_dict` / :meth:`TreeDiff.from_dict`.  The words people read
for a change live in :mod:`._render`, not here.

One comparison rule, four walks: :func:`diff_upper` reads an overlay upper layer (kernel
overlayfs or FUSE) and costs in proportion to what changed; :func:`diff_paths` compares the
paths a tracker saw change in a copy (the copy backend) with the lower layers, at the same
cost; :func:`diff_trees` compares a whole materialised copy with the lower layers;
:func:`diff_stacks` compares two merged stacks of layers at given paths (checkpoints, see
:mod:`._checkpoint`).  All compare entries with the same rules, so the same operations give
the same :class:`TreeDiff` on every backend.

None follows a symbolic link, opens anything but a regular file (and that only with
``O_NOFOLLOW | O_NONBLOCK``), or compares xattrs; overlay-private xattrs are thus ignored.
"""

from __future__ import annotations

import enum
import errno
import itertools
import json
import os
import stat
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, final

from ._layers import LayerStack, is_opaque, read_layer_dir, uses_whiteout_files
from ._oscompat import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK
from ._safetext import safe_path

__all__ = [
    "Change",
    "ChangeKind",
    "TreeDiff",
    "diff_paths",
    "diff_stacks",
    "diff_trees",
    "diff_upper",
    "display_path",
]

_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC


class ChangeKind(enum.Enum):
    """What happened to a path."""

    __module__ = "pytest_overlay"

    ADDED = "added"
    """The path did not exist before."""
    MODIFIED = "modified"
    """Content, symbolic link target, device number or file type changed."""
    DELETED = "deleted"
    """The path no longer exists (reported once, at the top of a deleted subtree)."""
    MODE = "mode"
    """Only the permission bits or the owner changed."""
    TIMES = "times"
    """Only the modification time of a file changed (``touch``, or an identical rewrite)."""

    @property
    def letter(self) -> str:
        """The one-letter code used in listings: ``A``, ``M``, ``D``, ``P`` or ``T``."""
        return _LETTERS[self]


_LETTERS = dict(zip(ChangeKind, "AMDPT", strict=True))

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}

_DETAILS = tuple(
    f"{side}_{what}" for what in ("type", "mode", "size", "target") for side in ("old", "new")
)


@final
@dataclass(frozen=True)
class Change:
    """One changed path, with what is known of it before (``old_*``) and after (``new_*``).

    Detail fields are None where they do not apply: the ``old_*`` side of an added path, sizes
    of anything but regular files, targets of anything but symbolic links.
    """

    __module__ = "pytest_overlay"

    path: str
    """POSIX path relative to the root, without a leading slash.  Names that are not valid
    UTF-8 are kept as :func:`os.fsdecode` gives them (lone surrogates)."""
    kind: ChangeKind
    """What happened."""
    old_type: str | None = None
    """``"file"``, ``"dir"``, ``"symlink"``, ``"fifo"``, ``"socket"``, ``"chardev"`` or
    ``"blockdev"``."""
    new_type: str | None = None
    """Like :attr:`old_type`, after the test."""
    old_mode: int | None = None
    """Permission bits including setuid, setgid and sticky (``stat.S_IMODE``)."""
    new_mode: int | None = None
    """Like :attr:`old_mode`, after the test."""
    old_size: int | None = None
    """Size in bytes of a regular file."""
    new_size: int | None = None
    """Like :attr:`old_size`, after the test."""
    old_target: str | None = None
    """Target of a symbolic link."""
    new_target: str | None = None
    """Like :attr:`old_target`, after the test."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict; None details are left out.

        Strings may hold lone surrogates: serialise with :func:`json.dumps` and its default
        ``ensure_ascii=True``, which writes them as ``\\udcXX`` escapes.
        """
        data: dict[str, Any] = {"path": self.path, "kind": self.kind.value}
        for name in _DETAILS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        """Rebuild a :class:`Change` from :meth:`to_dict` output.

        :raises ValueError: if *data* is not such output.
        """
        path, kind = data.get("path"), data.get("kind")
        if not isinstance(path, str) or not isinstance(kind, str):
            raise ValueError(f"Not a serialised change: {data!r}")
        fields: dict[str, Any] = {}
        for name in _DETAILS:
            value = data.get(name)
            expected = str if name.endswith(("_type", "_target")) else int
            if value is not None and (type(value) is not expected):
                raise ValueError(f"Bad {name} in serialised change: {value!r}")
            fields[name] = value
        return cls(path=path, kind=ChangeKind(kind), **fields)


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def display_path(change: Change) -> str:
    """The safe form of *change*'s path, with a trailing ``/`` when it is (now) a directory."""
    kind = change.new_type if change.new_type is not None else change.old_type
    suffix = "/" if kind == "dir" else ""
    return safe_path(change.path) + suffix


_REPR_CHANGES = 5  # a repr is read inside an assertion message: the first few, then a count


@final
@dataclass(frozen=True, repr=False)
class TreeDiff:
    """The changes a test made to the tree, sorted by path ("a/b" right after "a").

    Iterating yields :class:`Change` objects; an empty diff is false.  ``str()`` gives one
    ``"<letter> <path>"`` line per change (directories end with ``/``), with unsafe characters
    escaped by :func:`~pytest_overlay._safetext.safe_path`.

    :raises ValueError: if two changes have the same path.
    """

    __module__ = "pytest_overlay"

    changes: tuple[Change, ...] = ()
    """The changes, sorted by path components."""

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.changes, key=lambda c: _sort_key(c.path)))
        for before, after in itertools.pairwise(ordered):
            if before.path == after.path:
                raise ValueError(f"Two changes for one path: {before.path!r}")
        object.__setattr__(self, "changes", ordered)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __str__(self) -> str:
        return "\n".join(f"{c.kind.letter} {display_path(c)}" for c in self.changes)

    def __repr__(self) -> str:
        # One short line: pytest's assertion rewriting shows it, maybe several times over.
        shown = [f"{c.kind.letter} {display_path(c)}" for c in self.changes[:_REPR_CHANGES]]
        if len(self.changes) > _REPR_CHANGES:
            shown.append(f"... {len(self.changes) - _REPR_CHANGES} more")
        return f"TreeDiff({', '.join(shown)})"

    @cached_property
    def _by_path(self) -> dict[str, Change]:
        return {c.path: c for c in self.changes}

    def _paths(self, kind: ChangeKind) -> frozenset[str]:
        return frozenset(c.path for c in self.changes if c.kind is kind)

    @property
    def added(self) -> frozenset[str]:
        """Paths of added entries (every entry of an added directory included)."""
        return self._paths(ChangeKind.ADDED)

    @property
    def modified(self) -> frozenset[str]:
        """Paths whose content, target or type changed."""
        return self._paths(ChangeKind.MODIFIED)

    @property
    def deleted(self) -> frozenset[str]:
        """Paths of deleted entries (tops of deleted subtrees only)."""
        return self._paths(ChangeKind.DELETED)

    @property
    def mode_changed(self) -> frozenset[str]:
        """Paths whose permission bits or owner alone changed."""
        return self._paths(ChangeKind.MODE)

    @property
    def times_changed(self) -> frozenset[str]:
        """Paths of files whose modification time alone changed."""
        return self._paths(ChangeKind.TIMES)

    def by_path(self, path: str) -> Change | None:
        """Return the change at *path*, or None if that path did not change."""
        return self._by_path.get(path)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able form, ``{"changes": [...]}`` (see :meth:`Change.to_dict`).

        The one serialisation of a diff: :meth:`to_json`, kept layers and golden records all
        go through it.
        """
        return {"changes": [c.to_dict() for c in self.changes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeDiff:
        """Rebuild a :class:`TreeDiff` from :meth:`to_dict` output.

        :raises ValueError: if *data* is not such output.
        """
        items = data.get("changes") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError("Not a serialised tree diff")
        return cls(tuple(Change.from_dict(item) for item in items))

    def to_json(self) -> str:
        """Serialise to ASCII-only JSON (undecodable names survive as ``\\udcXX`` escapes)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TreeDiff:
        """Rebuild a :class:`TreeDiff` from :meth:`to_json` output.

        :raises ValueError: if *text* is not such output.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("Not a serialised tree diff")
        return cls.from_dict(data)


# --- comparing two entries ----------------------------------------------------------------


class _Node(NamedTuple):
    path: Path
    st: os.stat_result


def _type_name(st: os.stat_result) -> str:
    return _TYPES.get(stat.S_IFMT(st.st_mode), "unknown")


def _is_dir(node: _Node | None) -> bool:
    return node is not None and stat.S_ISDIR(node.st.st_mode)


def _readlink(node: _Node) -> str | None:
    try:
        return os.fspath(node.path.readlink())
    except OSError:
        return None


def _details(prefix: str, node: _Node | None) -> dict[str, Any]:
    if node is None:
        return {}
    mode = node.st.st_mode
    details: dict[str, Any] = {
        prefix + "type": _type_name(node.st),
        prefix + "mode": stat.S_IMODE(mode),
    }
    if stat.S_ISREG(mode):
        details[prefix + "size"] = node.st.st_size
    elif stat.S_ISLNK(mode):
        details[prefix + "target"] = _readlink(node)
    return details


def _change(rel: str, kind: ChangeKind, old: _Node | None, new: _Node | None) -> Change:
    return Change(rel, kind, **_details("old_", old), **_details("new_", new))


def _open_regular(path: Path) -> int:
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "No longer a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_content(old: _Node, new: _Node) -> bool | None:
    """Compare two regular files of equal size; None if either cannot be read."""
    if (old.st.st_dev, old.st.st_ino) == (new.st.st_dev, new.st.st_ino):
        return True
    try:
        with (
            open(_open_regular(old.path), "rb", buffering=_CHUNK) as a,
            open(_open_regular(new.path), "rb", buffering=_CHUNK) as b,
        ):
            while True:
                chunk = a.read(_CHUNK)
                if chunk != b.read(len(chunk) or 1):
                    return False
                if not chunk:
                    return True
    except OSError:
        return None


def _compare(rel: str, old: _Node | None, new: _Node | None, *, trust_stat: bool) -> Change | None:
    """The one comparison rule shared by both diffs; None when *rel* is unchanged.

    With *trust_stat*, regular files of equal type, size, mtime, mode and owner are taken as
    unchanged without reading them.
    """
    if old is None:
        return None if new is None else _change(rel, ChangeKind.ADDED, None, new)
    if new is None:
        return _change(rel, ChangeKind.DELETED, old, None)
    a, b = old.st, new.st
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return _change(rel, ChangeKind.MODIFIED, old, new)
    kind: ChangeKind | None = None
    owner_a, owner_b = (a.st_uid, a.st_gid), (b.st_uid, b.st_gid)
    meta = stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode) or owner_a != owner_b
    if stat.S_ISLNK(a.st_mode):
        target = _readlink(old)
        if target is None or target != _readlink(new):
            kind = ChangeKind.MODIFIED
    elif stat.S_ISDIR(a.st_mode):
        kind = ChangeKind.MODE if meta else None
    elif stat.S_ISREG(a.st_mode):
        times = a.st_mtime_ns != b.st_mtime_ns
        if a.st_size != b.st_size:
            kind = ChangeKind.MODIFIED
        elif trust_stat and not times and not meta:
            kind = None
        else:
            same = _same_content(old, new)
            if same is None:  # unreadable: assume a write if and only if mtime moved
                same = not times
            if not same:
                kind = ChangeKind.MODIFIED
            elif meta:
                kind = ChangeKind.MODE
            elif times:
                kind = ChangeKind.TIMES
    elif a.st_rdev != b.st_rdev:
        kind = ChangeKind.MODIFIED
    elif meta:
        kind = ChangeKind.MODE
    return None if kind is None else _change(rel, kind, old, new)


# --- walking --------------------------------------------------------------------------------


class _Item(NamedTuple):
    rel: str
    old: _Node | None
    new: _Node | None
    merge: bool  # diff_upper only: a merge directory, so only its upper children are visited


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _old_node(stack: LayerStack, rel: str) -> _Node | None:
    entry = stack.lookup(rel)
    return None if entry is None else _Node(entry.real_path, entry.stat)


class _Walker:
    """The walk shared by both diffs: a worklist of items, two listing modes, one comparison."""

    def __init__(
        self,
        stack: LayerStack,
        *,
        layer_format: bool,
        ignore: Callable[[str], bool] | None,
        skip: Collection[str] = (),
        whiteout_files: bool = False,
    ) -> None:
        self.stack = stack
        self.layer_format = layer_format  # the new side is an upper layer, not a plain tree
        self.whiteout_files = whiteout_files  # ... marking whiteouts with .wh. files
        self.ignore = ignore
        self.skip = skip
        self.changes: list[Change] = []

    def _wanted(self, rel: str) -> bool:
        return rel not in self.skip and not (self.ignore is not None and self.ignore(rel))

    def _scan_new(self, directory: Path) -> tuple[dict[str, _Node], set[str]]:
        entries, whiteouts = read_layer_dir(
            directory, layer_format=self.layer_format, whiteout_files=self.whiteout_files
        )
        return {n: _Node(directory / n, st) for n, st in entries.items()}, whiteouts

    def _children(self, item: _Item) -> list[_Item]:
        """The items below the directory *item.new*; raises OSError if it cannot be listed."""
        assert item.new is not None
        new_nodes, whiteouts = self._scan_new(item.new.path)
        children: list[_Item] = []
        if item.merge:
            # Only what the upper holds changed; a whiteout deletes what the lowers show there.
            for name in sorted(whiteouts - new_nodes.keys()):
                rel = _join(item.rel, name)
                if self._wanted(rel):
                    children.append(_Item(rel, _old_node(self.stack, rel), None, False))
            for name, new in new_nodes.items():
                rel = _join(item.rel, name)
                if not self._wanted(rel):
                    continue
                old = _old_node(self.stack, rel)
                merge = (
                    _is_dir(new)
                    and _is_dir(old)
                    and name not in whiteouts
                    and not is_opaque(new.path, whiteout_files=self.whiteout_files)
                )
                children.append(_Item(rel, old, new, merge))
            return children
        # The new side is complete here: compare it name by name with the merged lowers.
        old_nodes: dict[str, _Node] = {}
        if _is_dir(item.old):
            for name, entry in self.stack.listdir(item.rel).items():
                old_nodes[name] = _Node(entry.real_path, entry.stat)
        for name in sorted(old_nodes.keys() | new_nodes.keys()):
            rel = _join(item.rel, name)
            if self._wanted(rel):
                children.append(_Item(rel, old_nodes.get(name), new_nodes.get(name), False))
        return children

    def run(self, root: _Item, *, trust_stat: bool, report_root: bool = False) -> TreeDiff:
        todo = [root]
        while todo:
            item = todo.pop()
            change = _compare(item.rel, item.old, item.new, trust_stat=trust_stat)
            if item is root and not report_root:
                change = None  # the view's root is never reported
            if _is_dir(item.new):
                try:
                    todo.extend(self._children(item))
                except PermissionError:
                    if item is root:
                        raise
                    # Cannot tell what is inside: flag the directory, list nothing below it.
                    if change is None or change.kind is not ChangeKind.ADDED:
                        change = _change(item.rel, ChangeKind.MODIFIED, item.old, item.new)
            if change is not None:
                self.changes.append(change)
        return TreeDiff(tuple(self.changes))


def diff_upper(
    upper: Path,
    lowers: Sequence[Path],
    *,
    ignore: Callable[[str], bool] | None = None,
) -> TreeDiff:
    """Compute the changes recorded in an overlay upper layer.

    Only the upper layer is walked.  Whiteouts (character devices 0/0, or ``.wh.<name>``
    files in a layer that :func:`uses them <._layers.uses_whiteout_files>`) become deletions
    of what the lowers show at that path; a merge directory is
    compared for its own mode and owner and then only for its upper children; an opaque
    directory (or one with nothing below it) is compared in full with the lowers, so what they
    hold that it lacks is reported deleted.

    :param upper: the upper layer directory.
    :param lowers: the lower layer directories, topmost first.
    :param ignore: called with each relative path; true skips that path and its subtree.
    :raises OSError: if the upper layer's root cannot be listed.
    """
    stack = LayerStack(lowers)
    root_new = _Node(Path(upper), Path(upper).stat())
    root_old = _old_node(stack, "")
    walker = _Walker(
        stack, layer_format=True, ignore=ignore, whiteout_files=uses_whiteout_files(upper)
    )
    return walker.run(_Item("", root_old, root_new, _is_dir(root_old)), trust_stat=False)


def diff_trees(
    new_root: Path,
    lowers: Sequence[Path],
    *,
    ignore: Callable[[str], bool] | None = None,
    skip: Collection[Path] = (),
    trust_stat: bool = True,
) -> TreeDiff:
    """Compute the changes between the merged *lowers* and a full tree *new_root*.

    Both trees are walked.  With *trust_stat*, regular files whose type, size, mtime, mode and
    owner all match are taken as unchanged without being read.

    :param new_root: the materialised tree after the test.
    :param lowers: the lower layer directories, topmost first.
    :param ignore: called with each relative path; true skips that path and its subtree.
    :param skip: absolute paths inside *new_root* to leave out entirely (neither compared nor
        descended into, on either side).
    :raises OSError: if *new_root* cannot be listed.
    """
    new_root = Path(new_root)
    base = new_root.absolute()
    skip_rels: set[str] = set()
    for path in skip:
        try:
            rel = Path(path).absolute().relative_to(base).as_posix()
        except ValueError:  # not inside new_root: nothing to skip
            continue
        if rel == ".":
            return TreeDiff()
        skip_rels.add(rel)
    stack = LayerStack(lowers)
    root = _Item("", _old_node(stack, ""), _Node(new_root, new_root.stat()), False)
    walker = _Walker(stack, layer_format=False, ignore=ignore, skip=skip_rels)
    return walker.run(root, trust_stat=trust_stat)


def _lstat_node(path: Path) -> _Node | None:
    try:
        return _Node(path, os.lstat(path))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def diff_paths(
    new_root: Path,
    lowers: Sequence[Path],
    paths: Collection[str],
    *,
    replaced: Collection[str] = (),
    ignore: Callable[[str], bool] | None = None,
    skip: Collection[str] = (),
) -> TreeDiff:
    """What :func:`diff_trees` would say without *trust_stat*, looking only where the caller
    says things changed.

    For a tracked copy (the copy backend): the caller vouches that every path not in *paths*
    (and not below one of *replaced*) is as the lowers have it.  A path that is now a directory
    where the lowers have none is walked whole, as are the directories in *replaced* (put there
    by a rename or made anew, so their contents are unknown); a directory on both sides is
    compared for its own mode and owner only.  The cost is in proportion to the changes: a
    file is read only where its stat result is the lowers' (a rename may put another file of
    the same size and mtime there).

    :param paths: relative paths that may have changed, in any order.
    :param replaced: relative paths of directories whose whole subtree must be compared.
    :param skip: relative paths to leave out with everything below them.
    """
    new_root = Path(new_root)
    stack = LayerStack(lowers)
    walker = _Walker(stack, layer_format=False, ignore=ignore, skip=skip)
    whole = set(replaced)
    covered: set[str] = set()
    for rel in sorted(set(paths) | whole, key=_sort_key):
        if not rel or _hidden(rel, covered, walker):
            continue
        old = _old_node(stack, rel)
        new = _lstat_node(new_root / rel)
        if old is None and new is None:
            continue
        if _is_dir(new) and (rel in whole or not _is_dir(old)):
            walker.run(_Item(rel, old, new, False), trust_stat=False, report_root=True)
            covered.add(rel)
            continue
        if _is_dir(old) and not _is_dir(new):
            covered.add(rel)  # deleted or replaced: reported once, nothing below it
        # Not trusting equal stat results: a rename can put another file with the same
        # size and mtime at *rel* (issue 18); reading costs only where the stat agrees.
        change = _compare(rel, old, new, trust_stat=False)
        if change is not None:
            walker.changes.append(change)
    return TreeDiff(tuple(walker.changes))


def _hidden(rel: str, covered: set[str], walker: _Walker) -> bool:
    """Whether *rel* or a directory above it is already handled, skipped or ignored."""
    prefix = rel
    while True:
        if prefix in covered or not walker._wanted(prefix):
            return True
        cut = prefix.rfind("/")
        if cut < 0:
            return False
        prefix = prefix[:cut]


def diff_stacks(
    old: LayerStack,
    new: LayerStack,
    paths: Collection[str],
    *,
    ignore: Callable[[str], bool] | None = None,
) -> TreeDiff:
    """Compare two merged views of layers, *old* and *new*, at *paths* only.

    The caller vouches that every other path is the same in both.  A path below one reported
    deleted, replaced by something that is not a directory, or ignored, is not compared.
    Files are read wherever their stat results agree (nothing is trusted).

    :param paths: relative paths that may differ, in any order.
    :param ignore: called with each relative path; true skips that path and its subtree.
    """
    changes = []
    cut: list[str] = []  # subtrees already reported as deleted or replaced, or ignored
    for rel in sorted(paths, key=_sort_key):
        if any(rel.startswith(prefix + "/") for prefix in cut):
            continue
        if ignore is not None and ignore(rel):
            cut.append(rel)
            continue
        old_node, new_node = _old_node(old, rel), _old_node(new, rel)
        change = _compare(rel, old_node, new_node, trust_stat=False)
        if change is None:
            continue
        changes.append(change)
        if change.kind is ChangeKind.DELETED or (_is_dir(old_node) and not _is_dir(new_node)):
            cut.append(rel)
    return TreeDiff(tuple(changes))
