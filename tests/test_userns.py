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

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate, user_fuse_reason

THREAD = (
    "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
)
TESTS = """
def test_one(overlay_root):
    (overlay_root / "f").write_text("x")
    assert overlay_root.diff().added == {"f"}

def test_two(overlay_root):
    assert not (overlay_root / "f").exists()
"""
ARGS = ("-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly", "-W", "default")


@pytest.fixture
def user_dir() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        yield workdir


def _write(root: Path, files: dict[str, str]) -> None:
    uid, gid = _unpriv.ensure_test_user()
    for name, text in files.items():
        (root / name).write_text(text)
        os.chown(root / name, uid, gid)


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


def _run(root: Path, *args: str) -> str:
    result = _unpriv.run_as_user(
        [sys.executable, "-m", "pytest", *ARGS, *args],
        cwd=root,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "INTERNALERROR" not in output
    return output


@pytest.mark.parametrize("ini", ["", "filterwarnings = error"])
def test_thread_at_import_falls_back_and_says_why(user_dir: Path, ini: str) -> None:
    _write(user_dir, {"test_threads.py": THREAD + TESTS, "pytest.ini": f"[pytest]\n{ini}\n"})
    output = _run(user_dir)
    assert "2 passed" in output
    fallback = _fallback()
    notice = f"overlay: kernel backend unusable, using the {fallback} backend instead"
    assert notice in output
    other = "copy" if fallback == "fuse" else "fuse"
    assert f"using the {other} backend instead" not in output
    assert "overlay_userns = early" in output
    assert "= pytest-overlay =" in output  # repeated in the terminal summary


def test_early_userns_survives_threads_started_by_tests(user_dir: Path) -> None:
    _write(user_dir, {"test_threads.py": THREAD + TESTS, "pytest.ini": "[pytest]\n"})
    output = _run(user_dir, "--overlay-userns=early")
    assert "2 passed" in output
    assert "copy backend instead" not in output
    assert "overlay: backend=kernel (user namespace)" in output


def test_xdist_controller_with_a_thread_falls_back_instead_of_crashing(user_dir: Path) -> None:
    _write(user_dir, {"conftest.py": THREAD, "test_x.py": TESTS, "pytest.ini": "[pytest]\n"})
    output = _run(user_dir, "-n", "2")
    assert "2 passed" in output
    assert f"using the {_fallback()} backend instead" in output
    _assert_fallback_header(output)


def test_explicit_kernel_with_threads_errors_each_test_clearly(user_dir: Path) -> None:
    _write(user_dir, {"test_threads.py": THREAD + TESTS, "pytest.ini": "[pytest]\n"})
    result = _unpriv.run_as_user(
        [sys.executable, "-m", "pytest", *ARGS, "--overlay-backend=kernel"],
        cwd=user_dir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "2 errors" in output or "2 error" in output, output
    assert "the kernel backend cannot work here" in output
    assert "Traceback" not in output
    assert "During handling" not in output


@pytest.mark.parametrize("dev_fuse", ["as shipped here", "open to users"])
def test_blocked_user_namespaces_fall_back_with_the_reason(user_dir: Path, dev_fuse: str) -> None:
    _write(user_dir, {"test_x.py": TESTS, "pytest.ini": "[pytest]\n"})
    open_dev_fuse = dev_fuse == "open to users"
    result = _unpriv.run_as_user(
        [sys.executable, "-m", "pytest", *ARGS],
        cwd=user_dir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        block_userns=True,
        open_dev_fuse=open_dev_fuse,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output
    assert "kernel not used: creating a user namespace is not permitted here" in output
    if open_dev_fuse:
        assert "overlay: backend=fuse (fusermount3)" in output
        return
    _assert_fallback_header(output)
    explicit = _unpriv.run_as_user(
        [sys.executable, "-m", "pytest", *ARGS, "--overlay-backend=kernel"],
        cwd=user_dir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        block_userns=True,
    )
    assert explicit.returncode == pytest.ExitCode.USAGE_ERROR, explicit.stdout + explicit.stderr
    assert "the kernel backend cannot work here: creating a user namespace" in explicit.stderr
    assert "Traceback" not in explicit.stdout + explicit.stderr
