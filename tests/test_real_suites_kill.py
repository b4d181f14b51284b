"""A killed run leaves nothing mounted, and the next run removes what a crash left behind.

``kill -9`` of pytest in the middle of a test, as root and as an ordinary user, on the kernel
and the fuse backend: three seconds later no mount of the run is left in any mount table, even
while a process the test started (and never stopped) keeps pytest's private mount namespace
alive.  A FUSE mount whose server was killed with it is removed by the next run, in one line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate, kernel_reason
from tests._run import pytest_argv, run, started
from tests._waits import wait_for_file

# The test saves its pid, and that of a process it starts and never stops (in a session of
# its own, with its working directory outside the view), then waits to be killed.
KILLED = """
import os
import subprocess
from pathlib import Path

def test_killed_in_the_middle({fixture}):
    lingering = subprocess.Popen(["sleep", "30"], cwd="/", start_new_session=True)
    Path("{pids}").write_text(f"{{os.getpid()}} {{lingering.pid}}")
    import time
    time.sleep(60)
"""

MODES = {
    # who, backend: the arguments, and whether the test works in overlay_root or in place
    ("root", "kernel"): (["--overlay"], ""),
    ("root", "fuse"): (["--overlay", "--overlay-backend=fuse"], ""),
    ("user", "kernel"): (["--overlay"], ""),
    # In place FUSE needs root: an ordinary user's view is mounted by fusermount3.
    ("user", "fuse"): (["--overlay-backend=fuse"], "overlay_root"),
}


def our_mounts(under: Path) -> list[str]:
    """Every mount at or below *under*, in every mount namespace on the machine."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for line in Path("/proc", pid, "mountinfo").read_text().splitlines():
                point = line.split()[4]
                if point == str(under) or point.startswith(f"{under}/"):
                    found.add(f"{point} ({line.split(' - ')[1].split()[0]})")
    return sorted(found)


def _gate(who: str, backend: str) -> None:
    gate("kernel", kernel_reason()) if backend == "kernel" else gate("fuse", fuse_reason())
    if who == "user":
        # Its FUSE mounts run with /dev/fuse as distributions ship it (OPEN_DEV_FUSE).
        gate("unprivileged-user", _unpriv.can_run_as_user())


@pytest.mark.parametrize(("who", "backend"), list(MODES), ids=["-".join(m) for m in MODES])
def test_kill_9_leaves_no_mount(who: str, backend: str, user_workdir: Path) -> None:
    _gate(who, backend)
    args, fixture = MODES[(who, backend)]
    project, pids = user_workdir / "project", user_workdir / "pids"
    project.mkdir()
    (project / "test_killed.py").write_text(KILLED.format(fixture=fixture, pids=pids))
    uid, gid = _unpriv.ensure_test_user()
    for path in (project, project / "test_killed.py"):
        os.chown(path, uid, gid)
    argv = pytest_argv(*args, f"--basetemp={user_workdir / 'basetemp'}")
    user = who == "user"
    namespace = _unpriv.OPEN_DEV_FUSE if user else None
    env = {"PYTHONPATH": str(_unpriv.REPO_ROOT)}
    with started(argv, cwd=project, user=user, namespace=namespace, env=env) as process:
        try:
            pytest_pid, lingering = map(int, wait_for_file(pids, process).split())
            assert our_mounts(user_workdir), "the test's view is not mounted"
            os.kill(pytest_pid, signal.SIGKILL)
            time.sleep(3)
            assert our_mounts(user_workdir) == []
        finally:
            with contextlib.suppress(ProcessLookupError, UnboundLocalError):
                os.kill(lingering, signal.SIGKILL)


# Mounts a view whose server is then killed with SIGKILL, without auto_unmount: nothing
# unmounts it, as when a whole session is killed at once.
LEAVE_A_STALE_MOUNT = """
import os, signal, sys, time
from pathlib import Path
from pytest_overlay._fuse.session import SessionServer

stale = Path(sys.argv[1])
for name in ("lower", "upper", "work", "merged"):
    (stale / name).mkdir(parents=True)
pid = os.fork()
if pid == 0:
    server = SessionServer()
    mount = server.start(
        [stale / "lower"], stale / "upper", stale / "work", stale / "merged", auto_unmount=False
    )
    os.kill(server.pid, signal.SIGKILL)
    os.kill(mount.process.pid, signal.SIGKILL)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_the_next_run_removes_a_mount_a_killed_run_left(tmp_path: Path) -> None:
    gate("fuse", fuse_reason())
    temp = tmp_path / "tmp"
    stale = temp / "pytest-of-root" / "pytest-7" / "view"
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_x.py").write_text("def test_x(overlay_root):\n    pass\n")
    (tmp_path / "leave.py").write_text(LEAVE_A_STALE_MOUNT)
    script = (
        f"{sys.executable} {tmp_path / 'leave.py'} {stale}"
        f" && grep -q ' {stale}/merged ' /proc/self/mountinfo"
        f" && {shlex.join(pytest_argv('--overlay-backend=fuse'))}"
        f" && ! grep -q ' {stale}/merged ' /proc/self/mountinfo"
    )
    # In a private mount namespace of its own: whatever happens, nothing is left on the host.
    result = run(
        ["sh", "-c", script],
        cwd=project,
        namespace=_unpriv.Namespace(),
        env={"PYTEST_DEBUG_TEMPROOT": str(temp), "PYTHONPATH": str(_unpriv.REPO_ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, result.output
    line = f"removed 1 FUSE mount that a killed run (pid *) left under {temp}/pytest-of-root"
    pytest.LineMatcher(result.stdout.splitlines()).fnmatch_lines([f"overlay: {line}"])
