"""The unprivileged path's corner cases, run as a real ordinary user.

A process can enter a user namespace only while single-threaded; these runs start threads at
the awkward moments (a test module that starts one when imported, as NumPy's OpenBLAS does; a
conftest that starts one before the plugin is configured) and check that the run still works,
says what happened and how to avoid it.

Where the kernel backend is out, auto falls back to ``fuse`` if the user can mount FUSE
(``/dev/fuse`` mode 0666, as distributions ship it) and to ``copy`` if not (mode 0600, root
only, as on CI's machine).  The tests expect what :func:`tests._gates.user_fuse_reason`, the
plugin's own probe run as the user, says; ``tests/test_fuse_device_modes.py`` runs the fallback
tests again with ``/dev/fuse`` in the other mode, so both branches are tested on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, user_fuse_reason
from tests._run import Result, counts, run_pytest
from tests._sample_project import SMALL_PROJECT, SMALL_SUITE
from tests._unpriv import Namespace

THREAD = (
    "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
)
THREADED = {**SMALL_PROJECT, "test_small.py": THREAD + SMALL_SUITE}
"""The small project, its test module starting a thread when imported."""


@pytest.fixture
def user_dir() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        yield workdir


def _fallback() -> str:
    """The backend auto falls back to for the test user when the kernel backend is out."""
    return "fuse" if user_fuse_reason() is None else "copy"


def _assert_fallback_header(output: str) -> None:
    """The header names the fallback backend, and on copy also why fuse was not used."""
    reason = user_fuse_reason()
    if reason is None:
        assert "overlay: backend=fuse (fusermount3)" in output, output
        assert "fuse not used" not in output, output
    else:
        assert "overlay: backend=copy" in output, output
        # The reason's first part: a failed test mount's details name its scratch directory.
        assert f"fuse not used: {reason.split(':', 1)[0]}:" in output, output


def _run_user(
    root: Path, *args: str, namespace: Namespace | None = None, expect_rc: int | None = None
) -> Result:
    return run_pytest(
        root, "-W", "default", *args, user=True, namespace=namespace, expect_rc=expect_rc
    )


def _run(root: Path, *args: str) -> str:
    output = _run_user(root, *args, expect_rc=0).output
    assert "INTERNALERROR" not in output
    return output


@pytest.mark.parametrize("ini", ["", "filterwarnings = error"])
def test_thread_at_import_falls_back_and_says_why(user_dir: Path, ini: str) -> None:
    _unpriv.write_user_files(user_dir, {**THREADED, "pytest.ini": f"[pytest]\n{ini}\n"})
    output = _run(user_dir)
    assert counts(output).get("passed") == 2
    fallback = _fallback()
    notice = f"overlay: kernel backend unusable, using the {fallback} backend instead"
    assert notice in output
    other = "copy" if fallback == "fuse" else "fuse"
    assert f"using the {other} backend instead" not in output
    assert "overlay_userns = early" in output
    assert "= pytest-overlay =" in output  # repeated in the terminal summary


def test_early_userns_survives_threads_started_by_tests(user_dir: Path) -> None:
    _unpriv.write_user_files(user_dir, THREADED)
    output = _run(user_dir, "--overlay-userns=early")
    assert counts(output).get("passed") == 2
    assert "copy backend instead" not in output
    assert "overlay: backend=kernel (user namespace)" in output


def test_xdist_controller_with_a_thread_falls_back_instead_of_crashing(user_dir: Path) -> None:
    _unpriv.write_user_files(user_dir, {**SMALL_PROJECT, "conftest.py": THREAD})
    output = _run(user_dir, "-n", "2")
    assert counts(output).get("passed") == 2
    # The workers' header, in the summary, says why (their fallback notice would repeat it).
    assert "kernel not used: pytest-xdist workers run several threads" in output, output
    _assert_fallback_header(output)


def test_explicit_kernel_with_threads_errors_each_test_clearly(user_dir: Path) -> None:
    _unpriv.write_user_files(user_dir, THREADED)
    output = _run_user(user_dir, "--overlay-backend=kernel", expect_rc=1).output
    assert counts(output).get("error") == 2, output
    assert "the kernel backend cannot work here" in output
    assert "Traceback" not in output
    assert "During handling" not in output


@pytest.mark.parametrize("dev_fuse", ["as shipped here", "open to users"])
def test_blocked_user_namespaces_fall_back_with_the_reason(user_dir: Path, dev_fuse: str) -> None:
    _unpriv.write_user_files(user_dir, SMALL_PROJECT)
    open_dev_fuse = dev_fuse == "open to users"
    mode = _unpriv.OPEN_DEV_FUSE.dev_fuse_mode if open_dev_fuse else None
    blocked = Namespace(block_userns=True, dev_fuse_mode=mode)
    output = _run_user(user_dir, namespace=blocked, expect_rc=0).output
    assert counts(output).get("passed") == 2
    assert "kernel not used: creating a user namespace is not permitted here" in output
    if open_dev_fuse:
        assert "overlay: backend=fuse (fusermount3)" in output
        return
    _assert_fallback_header(output)
    explicit = _run_user(
        user_dir,
        "--overlay-backend=kernel",
        namespace=Namespace(block_userns=True),
        expect_rc=pytest.ExitCode.USAGE_ERROR,
    )
    assert "the kernel backend cannot work here: creating a user namespace" in explicit.stderr
    assert "Traceback" not in explicit.output


@pytest.mark.parametrize(
    ("dev_fuse_mode", "fallback"), [(0o666, "fuse"), (0o600, "copy")], ids=["fuse", "copy"]
)
def test_xdist_workers_fallback_is_said_once(
    user_dir: Path, dev_fuse_mode: int, fallback: str
) -> None:
    # Issue 21: the workers' reason was printed twice (their notice, then their header).
    _unpriv.write_user_files(user_dir, SMALL_PROJECT)
    namespace = Namespace(dev_fuse_mode=dev_fuse_mode)
    result = _run_user(user_dir, "-n", "2", namespace=namespace, expect_rc=0)
    summary = result.stdout[result.stdout.index("= pytest-overlay =") :]
    assert f"overlay: backend={fallback} (" in summary, result.output
    reason = "pytest-xdist workers run several threads from the start"
    assert summary.count(reason) == 1, result.output
    assert f"  kernel not used: {reason}" in summary, result.output
