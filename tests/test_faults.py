"""Faults: a full upper layer, killed pytest processes, xdist workers and FUSE servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate, gate_backend, gate_mode, kernel_reason
from tests._run import CHILD_OPTIONS, counts, pytest_argv, run, run_pytest, started
from tests._sample_project import make_project, overlay_mounts, processes_with, tree_digest
from tests._waits import wait_for_file, wait_until


def _project(tmp_path: Path, test_file: str, source: str) -> tuple[Path, tuple[str, list[str]]]:
    """A project with *source* as *test_file*, and its state (digest, host mounts) before."""
    files = {"pytest.ini": "[pytest]\n", "data.txt": "precious\n", test_file: source}
    project = make_project(tmp_path, files)
    return project, _state(project)


def _state(project: Path) -> tuple[str, list[str]]:
    return tree_digest(project, skip=(".pytest_cache",), dir_times=False), overlay_mounts()


def test_full_upper_layer_gives_enospc_and_the_next_test_runs(pytester: pytest.Pytester) -> None:
    gate("kernel", kernel_reason())
    pytester.makepyfile(
        """
        import errno

        import pytest

        def test_fills_it(overlay_root):
            with pytest.raises(OSError) as excinfo:
                with open(overlay_root / "big", "wb") as f:
                    for _ in range(8):
                        f.write(b"x" * (1 << 20))
            assert excinfo.value.errno == errno.ENOSPC

        def test_next_one_is_fine(overlay_root):
            (overlay_root / "small").write_bytes(b"y" * 1000)
            assert overlay_root.diff().added == {"small"}
        """
    )
    result = pytester.runpytest_subprocess(*CHILD_OPTIONS, "--overlay-upper-size=2M")
    result.assert_outcomes(passed=2)


def test_bad_upper_size_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(overlay_root): pass")
    result = pytester.runpytest_subprocess(*CHILD_OPTIONS, "--overlay-upper-size=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'lots' is not a size*"])


@pytest.mark.parametrize(
    "mode",
    [
        (),
        ("--overlay",),
        ("-n", "2"),
        ("--overlay-backend=fuse",),
        ("--overlay", "--overlay-backend=fuse"),
    ],
    ids=["fixture", "inplace", "xdist", "fuse", "fuse-inplace"],
)
def test_sigkill_mid_test_leaves_nothing_behind(tmp_path: Path, mode: tuple[str, ...]) -> None:
    gate_mode(mode)
    marker = tmp_path / "started"
    project, before = _project(
        tmp_path,
        "test_slow.py",
        "import os, time\n"
        "from pathlib import Path\n"
        "def test_fails_first(overlay_root):\n"
        "    (overlay_root / 'kept.txt').write_text('evidence')\n"
        "    assert False\n"
        "def test_hangs(overlay_root):\n"
        "    (overlay_root / 'data.txt').write_text('clobbered')\n"
        "    os.unlink(overlay_root / 'data.txt')\n"
        f"    Path({str(marker)!r}).write_text('go')\n"
        "    time.sleep(60)\n",
    )
    run_marker = f"FAULT_RUN={tmp_path}"
    env = {"FAULT_RUN": str(tmp_path)}
    with started(pytest_argv(*mode), cwd=project, env=env, stdout=subprocess.DEVNULL) as process:
        wait_for_file(marker, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Servers in a session of their own die by their parent-death signal.
    wait_until(lambda: not processes_with(run_marker))
    assert processes_with(run_marker) == [], "a process of the killed run is still alive"
    assert _state(project) == before
    assert (project / "data.txt").read_text() == "precious\n"
    if mode != ("-n", "2"):  # under xdist the failing test may not have run before the kill
        # The layer kept before the crash survives it, and the command reads it.
        show = [sys.executable, "-m", "pytest_overlay", "show", "fails_first", "--name-only"]
        listing = run(show, cwd=project, timeout=60, expect_rc=0)
        assert "kept.txt" in listing.stdout
    (project / "test_slow.py").write_text("def test_quick(overlay_root):\n    pass\n")
    run_pytest(project, *mode, timeout=120, expect_rc=0)


def test_sigkill_after_a_batch_of_views_leaves_nothing_behind(tmp_path: Path) -> None:
    # 40 writing tests close a batch of 32 views, which a reaper process detaches off the
    # tests' path (_backends/reaper.py): the mounts do not pile up, and once pytest is killed
    # neither the reaper nor the janitor nor a mount is left.
    gate("kernel", kernel_reason())
    marker = tmp_path / "started"
    project, before = _project(
        tmp_path,
        "test_batch.py",
        "import time\n"
        "from pathlib import Path\n"
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(40))\n"
        "def test_writes(overlay_root, i):\n"
        "    (overlay_root / 'data.txt').write_text(str(i))\n"
        "def test_hangs(overlay_root):\n"
        "    overlays = [line for line in open('/proc/thread-self/mountinfo')\n"
        "                if ' - overlay ' in line]\n"
        f"    Path({str(marker)!r}).write_text(str(len(overlays)))\n"
        "    time.sleep(60)\n",
    )
    run_marker = f"FAULT_RUN={tmp_path}"
    with started(
        pytest_argv("-p", "no:randomly"),
        cwd=project,
        env={"FAULT_RUN": str(tmp_path)},
        stdout=subprocess.DEVNULL,
    ) as process:
        wait_for_file(marker, process)
        # The first batch's 32 views are gone: a few views at most are left mounted.
        wait_until(lambda: len(processes_with(run_marker)) >= 3)  # pytest, janitor, reaper
        assert int(marker.read_text()) < 10
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wait_until(lambda: not processes_with(run_marker))
    assert processes_with(run_marker) == [], "a process of the killed run is still alive"
    assert _state(project) == before


BATCHES_CONFTEST = r"""
import os


def overlays():
    return sum(1 for line in open("/proc/thread-self/mountinfo") if " - overlay " in line)


def pytest_sessionfinish(session):
    # After the test loop: the reaper has detached every batch, and nothing is mounted.
    with open(os.environ["BATCH_OUT"], "w") as out:
        out.write(str(overlays()))
"""

BATCHES_TESTS = r"""
import pytest

from conftest import overlays


@pytest.mark.parametrize("i", range(70))
def test_writes(overlay_root, i):
    (overlay_root / "data.txt").write_text(str(i))
    # Two batches of 32 closed by now at most: never more than one batch's views mounted.
    assert overlays() <= 33
"""


@pytest.mark.parametrize("inplace", [False, True], ids=["fixture", "in-place"])
def test_batches_of_closed_views_are_detached_as_an_ordinary_user(inplace: bool) -> None:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    files = {"conftest.py": BATCHES_CONFTEST, "test_batches.py": BATCHES_TESTS}

    def build(root: Path) -> None:
        for name, text in {**files, "pytest.ini": "[pytest]\n", "data.txt": "precious\n"}.items():
            (root / name).write_text(text)

    with _unpriv.user_project_ctx(build) as project:
        out = project.parent / "overlays.txt"
        env = {"BATCH_OUT": str(out), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        args = ("-p", "no:randomly", *(("--overlay",) if inplace else ()))
        result = run_pytest(project, *args, user=True, env=env, timeout=300)
        assert counts(result.output) == {"passed": 70}, result.output
        assert out.read_text() == "0"
        assert (project / "data.txt").read_text() == "precious\n"
        assert processes_with(f"BATCH_OUT={out}") == [], "the reaper outlived the run"


@pytest.mark.parametrize("victim", ["mount", "session"])
def test_fuse_server_killed_mid_test(pytester: pytest.Pytester, victim: str) -> None:
    """SIGKILL the test's own server, or the session's server that forked it."""
    gate("fuse", fuse_reason())
    pytester.makeconftest(f"VICTIM = {victim!r}\n")
    pytester.makepyfile(
        """
        import errno
        import os
        import signal

        import pytest

        from pathlib import Path

        def _descendants(pid):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in map(int, children):
                yield child
                yield from _descendants(child)

        def _server_pids():
            # The mounts' servers hold /dev/fuse open; the session's server forked them.
            from conftest import VICTIM

            found = []
            for pid in _descendants(os.getpid()):
                try:
                    if VICTIM == "session":
                        # Parents come first: this is the session's server, and the
                        # mount's server dies with it.
                        if b"_fuse.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            found.append(pid)
                            break
                    else:
                        fds = Path(f"/proc/{pid}/fd").iterdir()
                        if any(os.readlink(fd) == "/dev/fuse" for fd in fds):
                            found.append(pid)
                except FileNotFoundError:
                    pass
            assert found
            return found

        def test_server_dies(overlay_root):
            (overlay_root / "before").write_text("x")
            for pid in _server_pids():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(OSError) as excinfo:
                for _ in range(100):
                    (overlay_root / "after").write_text("y")
            assert excinfo.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENOENT)

        def test_next_test_is_fine(overlay_root):
            (overlay_root / "fresh").write_text("z")
            assert overlay_root.diff().added == {"fresh"}
        """
    )
    mounts = overlay_mounts()
    result = pytester.runpytest_subprocess(*CHILD_OPTIONS, "--overlay-backend=fuse", timeout=120)
    # The test itself passed, but its view died under it: an error in its teardown.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_server_dies*",
            "*pytest-overlay: the FUSE server of * died during the test (killed by SIGKILL)*",
        ]
    )
    assert overlay_mounts() == mounts


@pytest.mark.parametrize("backend", ["kernel", "fuse"])
def test_xdist_worker_killed_mid_test(tmp_path: Path, backend: str) -> None:
    """One worker dies by SIGKILL mid-test: xdist replaces it, the rest of the run passes."""
    gate_backend(backend)
    project, before = _project(
        tmp_path,
        "test_worker.py",
        "import os, signal\n"
        "import pytest\n"
        "def test_worker_dies(overlay_root):\n"
        "    (overlay_root / 'data.txt').write_text('clobbered')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_others(overlay_root, i):\n"
        "    (overlay_root / 'data.txt').unlink()\n"
        "    assert overlay_root.diff().deleted == {'data.txt'}\n",
    )
    result = run_pytest(project, "-n", "2", f"--overlay-backend={backend}", timeout=180)
    assert "crashed while running" in result.output, result.output
    assert counts(result.stdout) == {"failed": 1, "passed": 6}, result.output
    time.sleep(0.2)
    assert _state(project) == before
