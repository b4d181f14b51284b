"""Project-wide test configuration for pytest-overlay's own suite, and fixtures the real-run
tests share: a small project, root and no mount left behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests._gates import REQUIRE_ENV, fuse_reason, gate, kernel_reason, required, server_libfuse
from tests._sample_project import SMALL_PROJECT, make_project, overlay_mounts
from tests._unpriv import user_workdir_ctx

# The suite reads the output of the pytest runs it starts, and pytest fits that output to
# COLUMNS: a wide CI terminal un-truncates the short summary and repeats what the
# assertions count. Children get pytest's default width whatever the terminal is.
os.environ["COLUMNS"] = "80"


def pytest_report_header(config: pytest.Config) -> str:
    required = os.environ.get(REQUIRE_ENV) or "none (missing capabilities skip)"
    return f"pytest-overlay self-test: required capabilities: {required}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``stress`` tests (minutes each) unless asked for: by a ``-m`` expression
    that names them, or by ``PYTEST_OVERLAY_REQUIRE`` with ``stress`` or ``all`` (CI)."""
    if "stress" in (config.option.markexpr or "") or required("stress"):
        return
    stress = [item for item in items if item.get_closest_marker("stress") is not None]
    if stress:
        config.hook.pytest_deselected(items=stress)
        items[:] = [item for item in items if item.get_closest_marker("stress") is None]


@pytest.fixture
def root_env() -> None:
    """Gate on root, which private mount namespaces and bind mounts need."""
    reason = "the suite is not running as root (mount namespaces and bind mounts need it)"
    gate("root", None if os.geteuid() == 0 else reason)


@pytest.fixture
def no_leaked_mounts() -> Iterator[None]:
    """Fail the test if it leaves a mount visible on the host."""
    before = overlay_mounts()
    yield
    assert overlay_mounts() == before


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    """:data:`tests._sample_project.SMALL_PROJECT` written to a fresh directory."""
    return make_project(tmp_path, SMALL_PROJECT)


@pytest.fixture
def kernel_and_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a child pytest that compares the FUSE backend with kernel overlayfs, the oracle:
    gate on both, and tell the child which libfuse the server loads (``SERVER_LIBFUSE``:
    libfuse 2 and 3 differ in a few documented places) and not to write bytecode."""
    gate("kernel", kernel_reason())
    gate("fuse", fuse_reason())
    monkeypatch.setenv("SERVER_LIBFUSE", str(server_libfuse()))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    """A lower layer, ``tmp_path/lower``, holding one file, ``f`` (``lower``); a module that
    needs another lower tree defines its own."""
    path = tmp_path / "lower"
    path.mkdir()
    (path / "f").write_text("lower\n")
    return path


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fail, rather than hang, if the code under test blocks (opening a FIFO would)."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the code under test blocked for 10 s: was a FIFO opened?")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def user_workdir() -> Iterator[Path]:
    """A directory in /tmp that the test user (``tests/_unpriv.py``) owns, removed after the
    test whatever the child left in it; gate on ``can_run_as_user`` before a child uses it."""
    with user_workdir_ctx() as path:
        yield path
