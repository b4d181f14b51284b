"""The session's FUSE server (``pytest_overlay._fuse.session``): one process forks each mount's.

Real mounts in this process's private mount namespace (as root), no mocks: many mounts served
by one session server, each by a process of its own; a dead mount server or a dead session
server; and the process tree going away with the process that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay._errors import MountError
from pytest_overlay._fuse import client
from pytest_overlay._fuse.client import FuseMount
from pytest_overlay._fuse.session import SessionServer
from tests._gates import gate
from tests._run import started
from tests._waits import alive, mounted, wait_until

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def needs_fuse() -> None:
    gate("fuse", client.availability())
    if os.geteuid() == 0:
        from pytest_overlay import _namespaces

        _namespaces.ensure_private_mount_namespace()


@pytest.fixture
def server() -> Iterator[SessionServer]:
    session = SessionServer()
    try:
        yield session
    finally:
        session.close()


def _slot(root: Path, name: str) -> tuple[Path, Path, Path]:
    """An upper, a work directory and a mount point under *root*/*name*."""
    paths = (root / name / "upper", root / name / "work", root / name / "mnt")
    for path in paths:
        path.mkdir(parents=True)
    return paths


def test_one_session_server_serves_many_mounts_each_in_its_own_process(
    server: SessionServer, lower: Path, tmp_path: Path
) -> None:
    handles: list[FuseMount] = []
    try:
        for n in range(5):
            upper, work, mnt = _slot(tmp_path, f"m{n}")
            handles.append(server.start([lower], upper, work, mnt, auto_unmount=False))
            (mnt / "f").write_text(f"mount {n}\n")
        pids = {handle.process.pid for handle in handles}
        assert len(pids) == 5
        assert 0 not in pids
        for n, handle in enumerate(handles):
            assert (handle.mountpoint / "f").read_text() == f"mount {n}\n"
            handle.close()
            assert handle.process.returncode == 0
            assert not mounted(handle.mountpoint)
    finally:
        for handle in handles:
            handle.close()
    assert (lower / "f").read_text() == "lower\n"


def test_a_killed_mount_server_fails_its_mount_only(
    server: SessionServer, lower: Path, tmp_path: Path
) -> None:
    first = server.start([lower], *_slot(tmp_path, "a"), auto_unmount=False)
    second = server.start([lower], *_slot(tmp_path, "b"), auto_unmount=False)
    os.kill(first.process.pid, signal.SIGKILL)
    assert first.process.wait(10) == -signal.SIGKILL
    with pytest.raises(OSError, match="not connected"):
        (first.mountpoint / "f").read_text()
    assert (second.mountpoint / "f").read_text() == "lower\n"
    first.close()
    assert not mounted(first.mountpoint)
    second.close()
    assert second.process.returncode == 0


def test_a_dead_session_server_is_replaced(
    server: SessionServer, lower: Path, tmp_path: Path
) -> None:
    before = server.start([lower], *_slot(tmp_path, "a"), auto_unmount=False)
    before.close()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(server.pid or 0))
    after = server.start([lower], *_slot(tmp_path, "b"), auto_unmount=False)
    assert (after.mountpoint / "f").read_text() == "lower\n"
    after.close()
    assert after.process.returncode == 0


def test_mount_servers_die_with_the_session_server(
    server: SessionServer, lower: Path, tmp_path: Path
) -> None:
    handle = server.start([lower], *_slot(tmp_path, "a"), auto_unmount=False)
    child = handle.process.pid
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    assert handle.process.wait(10) == -signal.SIGKILL
    assert wait_until(lambda: not alive(child))
    handle.close()
    assert not mounted(handle.mountpoint)


def test_a_failed_mount_reports_the_server_output(
    server: SessionServer, lower: Path, tmp_path: Path
) -> None:
    upper, work, _ = _slot(tmp_path, "a")
    with pytest.raises(MountError, match="FUSE overlay mount failed"):
        server.start([lower], upper, work, tmp_path / "missing", auto_unmount=False)
    # The session server is still there for the next mount.
    handle = server.start([lower], *_slot(tmp_path, "b"), auto_unmount=False)
    handle.close()
    assert handle.process.returncode == 0


def test_everything_goes_when_the_starting_process_is_killed(lower: Path, tmp_path: Path) -> None:
    """SIGKILL the process that started the session server: both servers and the mount go."""
    upper, work, mnt = _slot(tmp_path, "a")
    script = textwrap.dedent(
        f"""
        import time
        from pytest_overlay._fuse.session import SessionServer
        server = SessionServer()
        handle = server.start([{str(lower)!r}], {str(upper)!r}, {str(work)!r}, {str(mnt)!r})
        print(server.pid, handle.process.pid, flush=True)
        time.sleep(60)
        """
    )
    argv = [sys.executable, "-c", script]
    with started(argv, cwd=REPO, stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            session_pid, mount_pid = map(int, parent.stdout.readline().split())
            assert mounted(mnt)
            parent.kill()
            parent.wait()
            assert wait_until(lambda: not alive(session_pid))
            assert wait_until(lambda: not alive(mount_pid))
            assert wait_until(lambda: not mounted(mnt))  # auto_unmount's fusermount3 unmounts it
        finally:
            if mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
