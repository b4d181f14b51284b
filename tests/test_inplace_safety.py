"""In place, no test's write may reach the real tree, on any machine.

``pytest --overlay`` runs only on a backend whose view stands at the project's real paths
(kernel overlayfs, or FUSE as root).  Where none can, the run stops with a usage error before
any test runs; the copy backend, which cannot redirect absolute paths, is never a fallback in
place.  Each run here deletes project data through absolute paths and hashes the real tree
before and after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay import _probe
from tests import _unpriv
from tests._gates import gate, kernel_reason
from tests._run import assert_clean, counts, docker_like, run_pytest
from tests._sample_project import tree_digest as full_digest
from tests._unpriv import Namespace

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR
THREAD = (
    "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
)
DESTRUCTIVE = """
import shutil
from pathlib import Path

HERE = Path(__file__).parent

def test_deletes_project_data():
    shutil.rmtree(HERE / "data")
    (HERE / "notes.txt").write_text("clobbered\\n")

def test_starts_pristine():
    assert (HERE / "data" / "a.txt").read_text() == "alpha\\n"
    assert (HERE / "notes.txt").read_text() == "one\\n"
"""


def build(root: Path, conftest: str = "") -> None:
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("alpha\n")
    (root / "notes.txt").write_text("one\n")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_destructive.py").write_text(DESTRUCTIVE)
    if conftest:
        (root / "conftest.py").write_text(conftest)


def tree_digest(root: Path) -> str:
    # In place the plugin makes its kept-layer store in .pytest_cache (and with it the root's
    # mtime moves); everything else must be byte-identical.
    return full_digest(root, skip=(".pytest_cache", "__pycache__"), dir_times=False)


def run_user(root: Path, *args: str, block_userns: bool = False) -> tuple[int, str]:
    namespace = Namespace(block_userns=block_userns)
    result = run_pytest(root, "-rA", *args, user=True, namespace=namespace)
    return result.returncode, result.output


@pytest.fixture
def threaded_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_project_ctx(lambda root: build(root, conftest=THREAD)) as root:
        yield root


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_conftest_thread_cannot_stop_the_user_namespace(
    threaded_project: Path, xdist: tuple[str, ...]
) -> None:
    # The namespace is entered before any conftest is imported, so the thread comes too late
    # to matter: the suite runs sandboxed on the kernel.
    gate("kernel", kernel_reason())
    before = tree_digest(threaded_project)
    code, text = run_user(threaded_project, "--overlay", *xdist)
    assert code == 0, text
    assert counts(text).get("passed") == 2, text
    assert "overlay: backend=kernel (user namespace)" in text, text
    assert_clean(text)
    assert tree_digest(threaded_project) == before


def test_without_user_namespaces_in_place_is_a_usage_error(threaded_project: Path) -> None:
    # An ordinary user whose user namespaces are blocked has no backend that can stand at
    # the real paths: no test runs, and the message says what to do.
    before = tree_digest(threaded_project)
    code, text = run_user(threaded_project, "--overlay", block_userns=True)
    assert code == USAGE_ERROR, text
    assert "in-place mode (--overlay) needs a backend whose view stands at" in text, text
    assert "kernel not used:" in text, text
    assert "fuse not used: in place, FUSE needs root" in text, text
    # Only the fixes that fit this machine (issue 21): Docker's recipe in a container, the
    # sysctl where AppArmor restricts namespaces, sudo to an ordinary user, and the fixture.
    fixes = text[text.index("To fix it, either:") :]
    in_container = any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv"))
    assert ("`docker run --cap-add SYS_ADMIN --device /dev/fuse" in fixes) == in_container, text
    assert ("apparmor_restrict" in fixes) == _probe.apparmor_restricts_userns(), text
    assert "  - run pytest as root (`sudo -E python -m pytest --overlay`)\n" in fixes, text
    assert fixes.rstrip().endswith("instead of the real paths"), text
    assert "passed" not in text, text
    assert_clean(text)
    assert tree_digest(threaded_project) == before


def test_thread_from_a_plugin_is_a_usage_error_in_place() -> None:
    # A plugin imported before ours (-p) starts a thread: the namespace cannot be entered, and
    # the hint is not to set overlay_userns = early, which cannot help there.
    gate("unprivileged-user", _unpriv.can_run_as_user())
    gate("kernel", kernel_reason())

    def make(root: Path) -> None:
        build(root)
        (root / "threadplugin.py").write_text(THREAD)

    with _unpriv.user_project_ctx(make) as root:
        before = tree_digest(root)
        args = ("-rA", "-p", "threadplugin", "--overlay")
        env = {"PYTHONPATH": str(root)}
        text = run_pytest(root, *args, user=True, env=env, expect_rc=USAGE_ERROR).output
        assert "only a single-threaded process may enter a user namespace" in text, text
        assert "-p no:NAME" in text, text
        assert "overlay_userns = early" not in text, text
        assert_clean(text)
        assert tree_digest(root) == before


@pytest.mark.parametrize("where", ["option", "ini"])
def test_copy_backend_in_place_is_refused(tmp_path: Path, where: str) -> None:
    root = tmp_path / "project"
    root.mkdir()
    build(root)
    if where == "ini":
        (root / "pytest.ini").write_text("[pytest]\noverlay = true\noverlay_backend = copy\n")
        args: tuple[str, ...] = ()
    else:
        args = ("--overlay", "--overlay-backend=copy")
    before = tree_digest(root)
    text = run_pytest(root, "-rA", *args, expect_rc=USAGE_ERROR).output
    assert "in-place mode (--overlay) cannot run on the copy backend" in text, text
    assert "use the overlay_root fixture" in text, text
    assert_clean(text)
    assert tree_digest(root) == before


def test_docker_like_container_in_place_is_a_usage_error(tmp_path: Path) -> None:
    # Docker's default profile (tests/_seccomp.py, and no CAP_SYS_ADMIN): neither a user
    # namespace nor a FUSE mount; in place, that is a usage error naming Docker's flags.
    wrapper = docker_like()
    root = tmp_path / "project"
    root.mkdir()
    build(root)
    before = tree_digest(root)
    text = run_pytest(root, "-rA", "--overlay", wrapper=wrapper, expect_rc=USAGE_ERROR).output
    assert "kernel not used: creating a user namespace is not permitted here" in text, text
    assert "--cap-add SYS_ADMIN --device /dev/fuse" in text, text
    assert "passed" not in text, text
    assert_clean(text)
    assert tree_digest(root) == before


def test_off_linux_in_place_offers_no_linux_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # On macOS neither Docker's recipe nor Ubuntu's sysctl nor sudo can help (issue 21): the
    # error names Linux and the fixture, and nothing else.
    from pytest_overlay._backends import inplace

    monkeypatch.setattr("sys.platform", "darwin")
    text = inplace.in_place_impossible([("kernel", "kernel overlayfs needs Linux, this is darwin")])
    assert text.splitlines()[-3:] == [
        "To fix it, either:",
        "  - run the tests on Linux (a container or a virtual machine will do): in place needs "
        "kernel overlayfs, or FUSE in a private mount namespace",
        "  - drop --overlay and use the overlay_root fixture, which works everywhere (on the "
        "copy backend too): tests then write into overlay_root instead of the real paths",
    ]
