"""Property-based differential testing: random operation sequences, kernel overlayfs as oracle.

Hypothesis draws sequences of filesystem operations over a small tree of nested directories,
symlinks and a read-only file; each sequence runs on the kernel, copy and FUSE backends.  The
merged views (types, contents, modes, link targets), the errno of every failing operation and
the diffs must agree, and the lower layer must hash the same before and after.  Renaming a
directory is left out: the kernel answers EXDEV for lower directories on purpose (documented),
while the copy and FUSE backends rename; a second property compares those renames between FUSE
and copy, copy as the oracle.  Sequences with hard links are not compared on FUSE
when its server runs on libfuse 2 (a documented limit of libfuse 2's path API).

The budget is small by default; ``PYTEST_OVERLAY_EXAMPLES`` raises it (the stress run does, to
500 sequences, and so 250 for the state machine; ``PYTEST_OVERLAY_STATE_EXAMPLES`` sets that
one alone).
"""

from __future__ import annotations

import os

import pytest

from tests._run import CHILD_OPTIONS

INNER = r"""
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from pytest_overlay._backends.copying import CopyBackend
from pytest_overlay._backends.fuse import FuseBackend
from pytest_overlay._backends.kernel import KernelBackend
from pytest_overlay._checkpoint import diff_states
from pytest_overlay._diff import diff_trees

NAMES = ["a", "b", "ro", "d", "d/x", "d/y", "d/s", "d/s/deep", "e", "e/z", "l", "n"]
EXAMPLES = int(os.environ.get("PYTEST_OVERLAY_EXAMPLES", "40"))
SCRATCH = Path(os.environ["PROPERTY_SCRATCH"])


def build_lower(root):
    (root / "d" / "s").mkdir(parents=True)
    (root / "e").mkdir()
    (root / "a").write_text("alpha\n")
    (root / "ro").write_text("read only\n")
    (root / "ro").chmod(0o444)
    (root / "d" / "x").write_text("x\n")
    (root / "d" / "s" / "deep").write_text("deep\n")
    (root / "e" / "z").write_bytes(b"\0\1\2")
    (root / "l").symlink_to("a")
    os.setxattr(root / "a", "user.origin", b"lower")
    for path in [*root.rglob("*"), root]:
        if not path.is_symlink():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        h.update(f"{path.relative_to(root)} {st_.st_mode:o} {st_.st_mtime_ns}".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def xattrs(path):
    names = os.listxattr(path, follow_symlinks=False)
    return sorted(
        (name, os.getxattr(path, name, follow_symlinks=False))
        for name in names
        if name.startswith("user.")
    )


def entries(root):
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            yield str(path.relative_to(root)), path, path.lstat()


def view(root):
    seen = {}
    for rel, path, st_ in entries(root):
        if stat.S_ISLNK(st_.st_mode):
            seen[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st_.st_mode):
            seen[rel] = ("dir", stat.S_IMODE(st_.st_mode), xattrs(path))
        else:
            seen[rel] = ("file", stat.S_IMODE(st_.st_mode), path.read_bytes(), xattrs(path))
    return seen


def apply(root, op):
    kind, name, other, data = op
    path, target = root / name, root / other
    try:
        if kind == "write":
            path.write_bytes(data)
        elif kind == "append":
            with open(path, "ab") as f:
                f.write(data)
        elif kind == "truncate":
            os.truncate(path, len(data))
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "mkdir":
            os.mkdir(path)
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind == "rmtree":
            shutil.rmtree(path)
        elif kind == "rename":
            if path.is_dir() and not path.is_symlink():
                return "skipped"
            os.rename(path, target)
        elif kind == "rename_any":
            os.rename(path, target)
        elif kind == "symlink":
            os.symlink(other, path)
        elif kind == "link":
            os.link(path, target)
        elif kind == "chmod":
            os.chmod(path, 0o600 + len(data) % 2 * 0o55)
        elif kind == "utime":
            os.utime(path, ns=(2_000_000_000, 2_000_000_000 + len(data)), follow_symlinks=False)
        elif kind == "setxattr":
            os.setxattr(path, "user.t" + str(len(data) % 2), data or b"v", follow_symlinks=False)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


OPS = st.tuples(
    st.sampled_from(["write", "append", "truncate", "unlink", "mkdir", "rmdir", "rmtree",
                     "rename", "symlink", "link", "chmod", "utime", "setxattr"]),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.binary(max_size=8),
)

KERNEL = KernelBackend(lambda: SCRATCH / "kernel")
FUSE = FuseBackend(lambda: SCRATCH / "fuse")


def inotify_instances():
    # The per-user limit is 128 (fs.inotify.max_user_instances): each copy holds one.  The
    # kernel and fuse backends above hold one each for the whole module (their views' change
    # flags), and are not counted.
    session = {flags._inotify.fd for flags in (KERNEL._changes, FUSE._changes) if flags._inotify}
    fds = Path("/proc/self/fd")
    return sum(os.readlink(fd) == "anon_inode:inotify" and int(fd.name) not in session
               for fd in fds.iterdir() if os.path.lexists(fd))


@contextlib.contextmanager
def copy_backends():
    # Each example's own copy backends, one watching and one walking (where inotify is missing
    # or overflowed, the copy backend finds changes by a stat walk), shut down after it: every
    # example has lowers of its own, and a backend keeps an idle copy (and its inotify
    # instance) per lowers for the next test.
    before = inotify_instances()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    made = [CopyBackend(lambda: Path(tempfile.mkdtemp(dir=SCRATCH)), watch=watch)
            for watch in (True, False)]
    try:
        yield made
    finally:
        for backend in made:
            backend.shutdown()
    assert inotify_instances() == before, "an example kept an inotify instance"


def run_everywhere(lower, backends, ops):
    # Apply *ops* on a fresh view of each backend: by name, (errnos, merged view, diff).
    results = {}
    for backend in backends:
        results[backend.name] = run_once(backend, lower, ops)
        if isinstance(backend, CopyBackend):
            check_copy_reset(backend, lower, ops, results[backend.name])
    return results


def run_once(backend, lower, ops):
    mount = backend.mount([lower], label="prop")
    try:
        errors = [apply(mount.path, op) for op in ops]
        diff = mount.diff()
        if isinstance(backend, CopyBackend):
            # The tracked diff (O(changes)) against a full comparison of the copy.
            assert diff == diff_trees(mount.path, [lower]), "tracked diff differs from a walk"
        return errors, view(mount.path), diff
    finally:
        mount.close()


def check_copy_reset(backend, lower, ops, first):
    # The copy is reset after the test and handed to the next: it must be the pristine tree
    # again, and the same operations must do the same there.
    mount = backend.mount([lower], label="prop-reset")
    try:
        assert view(mount.path) == view(lower), "the reset copy is not the pristine tree"
        assert digest(mount.path) == digest(lower), "the reset copy's modes or times differ"
        assert not mount.diff(), "the reset copy reports changes"
    finally:
        mount.close()
    assert run_once(backend, lower, ops) == first, "a reset copy behaves differently"


def assert_agree(results, oracle, other):
    assert results[other][0] == results[oracle][0], f"errno differ on {other}"
    assert results[other][1] == results[oracle][1], f"merged views differ on {other}"
    assert results[other][2] == results[oracle][2], f"diffs differ on {other}"


# Reproducible, and no time limit: a mount per example is slow on shared cores.
REPRODUCIBLE = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def unchanged_lower(tmp_path_factory):
    # A fresh lower layer (build_lower) that nothing may change.
    lower = tmp_path_factory.mktemp("lower")
    build_lower(lower)
    before = digest(lower)
    yield lower
    assert digest(lower) == before, "the lower layer changed"


@settings(max_examples=EXAMPLES, **REPRODUCIBLE)
@given(st.lists(OPS, min_size=1, max_size=12))
def test_backends_agree(tmp_path_factory, ops):
    with unchanged_lower(tmp_path_factory) as lower, copy_backends() as (copy, walking_copy):
        results = run_everywhere(lower, (KERNEL, copy, FUSE), ops)
        results["walking-copy"] = run_everywhere(lower, (walking_copy,), ops)["copy"]
    # FUSE's known limit on libfuse 2: through libfuse's path API each hard link is its own
    # inode, so a change through one name can leave the other's cached attributes stale
    # (documented); libfuse 3 lets the server invalidate the other names.
    stale_links = os.environ["SERVER_LIBFUSE"] == "2" and any(op[0] == "link" for op in ops)
    for other in ("copy", "walking-copy") if stale_links else ("copy", "walking-copy", "fuse"):
        assert_agree(results, "kernel", other)


DIR_OPS = st.tuples(
    st.sampled_from(["rename_any", "rename_any", "write", "mkdir", "unlink", "rmtree"]),
    st.sampled_from(NAMES),
    st.sampled_from(NAMES),
    st.binary(max_size=8),
)


@settings(max_examples=max(EXAMPLES // 2, 10), **REPRODUCIBLE)
@given(st.lists(DIR_OPS, min_size=1, max_size=8))
def test_directory_renames_agree_between_fuse_and_copy(tmp_path_factory, ops):
    # The deliberate difference from the kernel: fuse and copy rename lower directories
    # (the kernel answers EXDEV), so here copy is the oracle for fuse.
    with unchanged_lower(tmp_path_factory) as lower, copy_backends() as (copy, _):
        assert_agree(run_everywhere(lower, (copy, FUSE), ops), "copy", "fuse")


# --- The stateful property: every backend beside the kernel after every step -------------
# Two lower layers with hard links (a file, a symbolic link), a FIFO, .wh. names, overlay-
# looking xattrs and a name with a newline; descriptors held open across the steps; hard
# links made and broken, renames over links and directories.  After each step the errno, what
# each open descriptor reads and fstat()s, the merged view (with link counts) and diff() must
# be the kernel's; at the end the copy backend's next view must be pristine (issue 18).

from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule,
)

SM_NAMES = ["a", "a2", "b", "s", "l", "p", ".wh.x", ".wh.new", "d", "d/f", "d/.wh..wh..opq",
            "e", "e/g", "n", "n/m", "nl\nq", "t"]
# The files most steps touch come up more often, so that steps meet on one file.
NAME = st.sampled_from([*SM_NAMES, "a", "a2", "b", "b", "d/f", "d/f", "n/m"])
# Where a lower hard link is, the copy backend shows one copy per name (documented).
SM_LOWER_LINKS = {"a", "a2", "l", "s"}
SM_XATTRS = ["user.t", "user.overlay.t"] if os.geteuid() == 0 else ["user.t"]


def sm_lowers(root):
    bottom, top = root / "bottom", root / "top"
    (bottom / "d").mkdir(parents=True)
    (top / "e").mkdir(parents=True)
    (bottom / "a").write_bytes(b"alpha\n")
    os.link(bottom / "a", bottom / "a2")
    (bottom / "b").write_bytes(b"bottom b\n")
    (bottom / "l").symlink_to("a")
    os.link(bottom / "l", bottom / "s", follow_symlinks=False)
    os.mkfifo(bottom / "p")
    (bottom / ".wh.x").write_bytes(b"not a whiteout\n")
    (bottom / "d" / "f").write_bytes(b"f\n")
    (bottom / "d" / ".wh..wh..opq").write_bytes(b"not an opaque marker\n")
    (top / "b").write_bytes(b"top b, longer\n")
    (top / "e" / "g").write_bytes(b"g\n")
    (top / "nl\nq").write_bytes(b"newline\n")
    os.setxattr(top / "b", SM_XATTRS[-1], b"project's own")
    for path in [*bottom.rglob("*"), *top.rglob("*"), bottom, top]:
        if not path.is_symlink():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return [top, bottom]


def sm_view(root, copy_like=False):
    seen = {}
    for rel, path, st_ in entries(root):
        item = [stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode)]
        if not stat.S_ISDIR(st_.st_mode) and not (copy_like and rel in SM_LOWER_LINKS):
            item.append(st_.st_nlink)
        if stat.S_ISLNK(st_.st_mode):
            item.append(os.readlink(path))
        elif stat.S_ISREG(st_.st_mode):
            item += [st_.st_size, path.read_bytes()]
        if not stat.S_ISLNK(st_.st_mode):
            item.append(xattrs(path))
        seen[rel] = item
    return seen


def same_files(root):
    # The names that are one file, by (st_dev, st_ino), where a file has more than one.
    names = {}
    for rel, _, st_ in entries(root):
        if not stat.S_ISDIR(st_.st_mode):
            names.setdefault((st_.st_dev, st_.st_ino), []).append(rel)
    return sorted(sorted(group) for group in names.values() if len(group) > 1)


def sm_call(fn, *args):
    try:
        result = fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok" if result is None else result


SM_BACKENDS = ("kernel", "fuse", "copy")


def fd_state(fd):
    st_ = os.fstat(fd)
    size = st_.st_size if stat.S_ISREG(st_.st_mode) else None  # a directory's is the fs's
    return sm_call(os.pread, fd, 64, 0), stat.S_IMODE(st_.st_mode), size


class Overlays(RuleBasedStateMachine):
    fds = Bundle("fds")

    def __init__(self):
        super().__init__()
        self.mounts = {}
        self.open = []  # one dict per descriptor: backend -> fd (None: the open failed)
        # Descriptors whose file may differ on a backend, as documented (docs/backends.md).
        self.differs = {"fuse": set(), "copy": set()}
        # Whether a hard link was made in the view: from then on inode identity may differ
        # on fuse, as documented (a new link's own number on the kernel).
        self.linked = False

    @initialize(target=fds)
    def mount(self):
        SCRATCH.mkdir(parents=True, exist_ok=True)
        self.lowers = sm_lowers(Path(tempfile.mkdtemp(dir=SCRATCH)))
        self.before = [digest(lower) for lower in self.lowers]
        self.backends = {
            "kernel": KERNEL,
            "fuse": FUSE,
            "copy": CopyBackend(lambda: Path(tempfile.mkdtemp(dir=SCRATCH))),
        }
        for name, backend in self.backends.items():
            self.mounts[name] = backend.mount(self.lowers, label="sm")
        # Descriptors open from the start, on lower files, a lower hard link and a FIFO.
        return multiple(*(self.open_fd(name, os.O_RDONLY) for name in ("a", "b", "d/f", "p")),
                        self.open_fd("a2", os.O_RDWR))

    def each(self, fn):
        # Apply fn(root) on every backend; the errno or result must be the kernel's.
        results = {name: sm_call(fn, self.mounts[name].path) for name in SM_BACKENDS}
        for name in SM_BACKENDS[1:]:
            assert results[name] == results["kernel"], (name, results)
        return results["kernel"]

    def each_fd(self, index, fn):
        results = {}
        for name in SM_BACKENDS:
            fd = self.open[index][name]
            results[name] = "no fd" if fd is None else sm_call(fn, fd)
        for name in SM_BACKENDS[1:]:
            if index in self.differs[name]:
                continue
            assert results[name] == results["kernel"], (name, results)
        return results

    @rule(name=NAME, offset=st.integers(0, 20), data=st.binary(max_size=6))
    def write(self, name, offset, data):
        def write_at(root):
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.each(write_at)

    @rule(name=NAME, size=st.integers(0, 16))
    def truncate(self, name, size):
        self.each(lambda root: os.truncate(root / name, size))

    @rule(name=NAME)
    def unlink(self, name):
        if self.each(lambda root: os.unlink(root / name)) == "ok":
            self.orphans(directory_removed=False)

    @rule(name=NAME)
    def rmtree(self, name):
        def remove(root):
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        if self.each(remove) == "ok":
            self.orphans(directory_removed=True)

    def orphans(self, *, directory_removed):
        # Documented: libfuse's path-based API loses a file unlinked while open once its
        # directory is removed, and a FIFO unlinked while open (its opens never reach the
        # server); fstat, fchmod and ftruncate on it then fail with ESTALE or EBADF on fuse
        # (reads and writes still work).  Such descriptors are not compared on fuse.
        for index, opened in enumerate(self.open):
            fd = opened["fuse"]
            if fd is None or sm_call(os.fstat, fd) != "ESTALE":
                continue
            if directory_removed or not stat.S_ISREG(os.fstat(opened["kernel"]).st_mode):
                self.differs["fuse"].add(index)

    @rule(name=NAME)
    def mkdir(self, name):
        self.each(lambda root: os.mkdir(root / name))

    @rule(name=NAME)
    def mkfifo(self, name):
        self.each(lambda root: os.mkfifo(root / name))

    @rule(names=st.sampled_from([("a", "a2"), ("a2", "a"), ("l", "s"), ("s", "l")]))
    def rename_between_lower_links(self, names):
        # Two names of one lower file are two files to the kernel (no index): the rename
        # removes the old name (issue 18: fuse did nothing, as for two links of one file).
        self.rename(*names)

    @rule(src=NAME, dst=NAME)
    def rename(self, src, dst):
        # The kernel answers EXDEV for a directory a lower layer has, and at times ESTALE
        # between two names of one file (documented); the others rename, or as POSIX says
        # do nothing, so such a rename is made nowhere.
        oracle = self.mounts["kernel"].path
        over_directory = (oracle / dst).is_dir() and not (oracle / dst).is_symlink()
        kernel = sm_call(os.rename, oracle / src, oracle / dst)
        if kernel in ("EXDEV", "ESTALE"):
            return
        for name in SM_BACKENDS[1:]:
            root = self.mounts[name].path
            assert sm_call(os.rename, root / src, root / dst) == kernel, (name, src, dst)
        if kernel == "ok":
            self.orphans(directory_removed=over_directory)

    @rule(src=NAME, then=st.sampled_from(["keep", "write", "write unlinked"]))
    def link_into_new_directory(self, src, then):
        # A hard link the test makes in a directory it made, perhaps written through, perhaps
        # after the new name is unlinked again: the change is the linked file's.
        def mkdir_link(root):
            with contextlib.suppress(FileExistsError):
                os.mkdir(root / "n")
            os.link(root / src, root / "n" / "m", follow_symlinks=False)
            if then == "keep":
                return
            if not stat.S_ISREG(os.lstat(root / "n" / "m").st_mode):
                return  # a FIFO's new name: see open_fd
            fd = os.open(root / "n" / "m", os.O_WRONLY | os.O_NONBLOCK)
            try:
                if then == "write unlinked":
                    os.unlink(root / "n" / "m")
                os.pwrite(fd, b"via n/m", 0)
            finally:
                os.close(fd)
        self.linked = True
        self.each(mkdir_link)

    @rule(src=NAME, dst=NAME)
    def link(self, src, dst):
        self.linked = True
        self.each(lambda root: os.link(root / src, root / dst, follow_symlinks=False))

    @rule(name=NAME, pointee=st.sampled_from(["a", "d", "gone"]))
    def symlink(self, name, pointee):
        self.each(lambda root: os.symlink(pointee, root / name))

    @rule(name=NAME, mode=st.sampled_from([0o600, 0o755, 0o444]))
    def chmod(self, name, mode):
        self.each(lambda root: os.chmod(root / name, mode))

    @rule(name=NAME, key=st.sampled_from(SM_XATTRS),
          value=st.binary(min_size=1, max_size=4))
    def setxattr(self, name, key, value):
        self.each(lambda root: os.setxattr(root / name, key, value, follow_symlinks=False))

    @rule(target=fds, name=NAME,
          flags=st.sampled_from([os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND]))
    def open_rule(self, name, flags):
        return self.open_fd(name, flags)

    def open_fd(self, name, flags):
        opened = {}
        errors = {}
        for backend in SM_BACKENDS:
            try:
                opened[backend] = os.open(self.mounts[backend].path / name, flags | os.O_NONBLOCK)
                errors[backend] = "ok"
            except OSError as exc:
                opened[backend] = None
                errors[backend] = errno.errorcode.get(exc.errno)
        self.open.append(opened)
        if errors["kernel"] == "ENXIO" and errors["copy"] == "ok":
            # Documented: a FIFO hard-linked in the view is one pipe on copy, where the
            # kernel's copy-up makes the new name a pipe of its own (no reader here).
            os.close(opened["copy"])
            opened["copy"], errors["copy"] = None, "ENXIO"
        assert len(set(errors.values())) == 1, errors
        return len(self.open) - 1

    @rule(index=fds, offset=st.integers(0, 12), data=st.binary(min_size=1, max_size=6))
    def fd_write(self, index, offset, data):
        self.each_fd(index, lambda fd: os.pwrite(fd, data, offset))

    @rule(index=fds, size=st.integers(0, 12))
    def fd_truncate(self, index, size):
        self.each_fd(index, lambda fd: os.ftruncate(fd, size))

    @rule(index=fds, mode=st.sampled_from([0o600, 0o640]))
    def fd_chmod(self, index, mode):
        copy_differs = self.differs["copy"]
        copy_differed = index in copy_differs
        copy_differs.add(index)
        oracle = self.mounts["kernel"].path
        before = {rel for rel, _, _ in entries(oracle)}
        results = self.each_fd(index, lambda fd: os.fchmod(fd, mode))
        for rel in {rel for rel, _, _ in entries(oracle)} - before:
            # Documented kernel quirk: the copy-up of a lower FIFO unlinked while open
            # renames it over its whiteout, and the removed name is back; fuse answers ESTALE
            # (orphans()), a copy changes the FIFO and the name stays removed.  Removed on the
            # kernel again, the views agree (tests/test_backend_differences.py).
            assert stat.S_ISFIFO(os.lstat(oracle / rel).st_mode), (rel, results)
            os.unlink(oracle / rel)
        if results["kernel"] in ("EEXIST", "ENOENT") and self.open[index]["copy"] is not None:
            # Documented (docs/backends.md): a lower file unlinked while open read-only
            # cannot be copied up, and the kernel answers EEXIST, or ENOENT once its
            # directory is removed too (fchmod of an open file fails so for nothing else);
            # a copy has no layers (tests/test_backend_differences.py).
            assert results["copy"] == "ok", results
        else:
            assert results["copy"] == results["kernel"], results
            if not copy_differed:
                copy_differs.discard(index)

    @invariant()
    def agree(self):
        if not self.mounts:
            return
        # What every open descriptor reads and fstat()s, on every backend.
        for index in range(len(self.open)):
            self.each_fd(index, fd_state)
        views = {name: sm_view(m.path, name == "copy") for name, m in self.mounts.items()}
        views["kernel-as-copy"] = sm_view(self.mounts["kernel"].path, copy_like=True)
        diffs = {name: m.diff() for name, m in self.mounts.items()}
        # The oracle's own diff, from its upper layer, against a walk of its merged view.
        walked = diff_trees(self.mounts["kernel"].path, self.lowers, trust_stat=False)
        assert diffs["kernel"] == walked, "the kernel's diff() is not its merged view's"
        if not self.linked:
            # Which names are one file (os.path.samefile): a copy-up breaks a lower hard link
            # (issue 18: the copy kept its partner's number on fuse).  A copy has none.
            kernel, fuse = (same_files(self.mounts[name].path) for name in ("kernel", "fuse"))
            assert fuse == kernel, "hard links differ on fuse"
        for name in SM_BACKENDS[1:]:
            oracle = views["kernel-as-copy" if name == "copy" else "kernel"]
            assert views[name] == oracle, f"merged views differ on {name}"
            assert diffs[name] == diffs["kernel"], f"diffs differ on {name}"

    def teardown(self):
        for opened in self.open:
            for fd in opened.values():
                if fd is not None:
                    os.close(fd)
        copy = self.backends.get("copy") if self.mounts else None
        disagree = []
        for name, mount in self.mounts.items():
            try:
                # A checkpoint's step from the start must say what diff() says.
                if diff_states(None, mount.snapshot(), self.lowers) != mount.diff():
                    disagree.append(name)
            finally:
                mount.close()
        if copy is None:
            return
        try:
            # The copy is handed to the next test: it must be the lowers again.
            again = copy.mount(self.lowers, label="sm-next")
            try:
                changed = diff_trees(again.path, self.lowers, trust_stat=False)
                assert not changed, "the reset copy is not pristine"
                assert not again.diff(), "the reset copy reports changes"
            finally:
                again.close()
        finally:
            copy.shutdown()
        assert not disagree, f"checkpoint() and diff() disagree on {disagree}"
        assert [digest(lower) for lower in self.lowers] == self.before, "a lower changed"


TestOverlaysAgreeStep = Overlays.TestCase
TestOverlaysAgreeStep.settings = settings(
    max_examples=int(os.environ.get("PYTEST_OVERLAY_STATE_EXAMPLES", max(EXAMPLES // 2, 10))),
    stateful_step_count=25, **REPRODUCIBLE,
)
"""


def _run_inner(pytester: pytest.Pytester, timeout: float) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_subprocess(*CHILD_OPTIONS, timeout=timeout)


@pytest.mark.usefixtures("kernel_and_fuse")
def test_random_operation_sequences_agree_with_the_kernel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROPERTY_SCRATCH", str(pytester.path / "scratch"))
    _run_inner(pytester, timeout=600).assert_outcomes(passed=3)


@pytest.mark.stress
@pytest.mark.usefixtures("kernel_and_fuse")
def test_larger_budget_of_random_sequences(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROPERTY_SCRATCH", str(pytester.path / "scratch"))
    monkeypatch.setenv("PYTEST_OVERLAY_EXAMPLES", os.environ.get("PYTEST_OVERLAY_EXAMPLES", "500"))
    # 7 to 14 minutes on two shared cores (the state machine's 250 sequences 6 to 8 of them).
    _run_inner(pytester, timeout=2400).assert_outcomes(passed=3)
