"""Faults: a full upper layer, killed pytest processes, xdist workers and FUSE servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._gates import fuse_reason, gate, kernel_reason
from tests._sample_project import overlay_mounts, processes_with, tree_digest

ARGS = ("-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:randomly")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


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
    result = pytester.runpytest_subprocess(*ARGS, "--overlay-upper-size=2M")
    result.assert_outcomes(passed=2)


def test_bad_upper_size_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(overlay_root): pass")
    result = pytester.runpytest_subprocess(*ARGS, "--overlay-upper-size=lots")
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
    if "--overlay-backend=fuse" in mode:
        gate("fuse", fuse_reason())
    else:
        gate("kernel", kernel_reason())
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "data.txt").write_text("precious\n")
    marker = tmp_path / "started"
    (project / "test_slow.py").write_text(
        "import os, time\n"
        "from pathlib import Path\n"
        "def test_fails_first(overlay_root):\n"
        "    (overlay_root / 'kept.txt').write_text('evidence')\n"
        "    assert False\n"
        "def test_hangs(overlay_root):\n"
        "    (overlay_root / 'data.txt').write_text('clobbered')\n"
        "    os.unlink(overlay_root / 'data.txt')\n"
        f"    Path({str(marker)!r}).write_text('go')\n"
        "    time.sleep(60)\n"
    )
    before, mounts = (
        tree_digest(project, skip=(".pytest_cache",), dir_times=False),
        overlay_mounts(),
    )
    run_marker = f"FAULT_RUN={tmp_path}"
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *ARGS, *mode],
        cwd=project,
        env={**_env(), "FAULT_RUN": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the test never started"
        assert process.poll() is None, "pytest ended early"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while processes_with(run_marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # servers in a session of their own die by their parent-death signal
    assert processes_with(run_marker) == [], "a process of the killed run is still alive"
    assert overlay_mounts() == mounts
    assert tree_digest(project, skip=(".pytest_cache",), dir_times=False) == before
    assert (project / "data.txt").read_text() == "precious\n"
    if mode != ("-n", "2"):  # under xdist the failing test may not have run before the kill
        # The layer kept before the crash survives it, and the command reads it.
        listing = subprocess.run(
            [sys.executable, "-m", "pytest_overlay", "show", "fails_first", "--name-only"],
            cwd=project,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listing.returncode == 0, listing.stdout + listing.stderr
        assert "kept.txt" in listing.stdout
    (project / "test_slow.py").write_text("def test_quick(overlay_root):\n    pass\n")
    rerun = subprocess.run(
        [sys.executable, "-m", "pytest", *ARGS, *mode],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


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
    result = pytester.runpytest_subprocess(*ARGS, "--overlay-backend=fuse", timeout=120)
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
    gate(backend, kernel_reason() if backend == "kernel" else fuse_reason())
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "data.txt").write_text("precious\n")
    (project / "test_worker.py").write_text(
        "import os, signal\n"
        "import pytest\n"
        "def test_worker_dies(overlay_root):\n"
        "    (overlay_root / 'data.txt').write_text('clobbered')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_others(overlay_root, i):\n"
        "    (overlay_root / 'data.txt').unlink()\n"
        "    assert overlay_root.diff().deleted == {'data.txt'}\n"
    )
    before, mounts = (
        tree_digest(project, skip=(".pytest_cache",), dir_times=False),
        (overlay_mounts()),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *ARGS, "-n", "2", f"--overlay-backend={backend}"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "crashed while running" in output, output
    assert "1 failed, 6 passed" in result.stdout, output
    time.sleep(0.2)
    assert overlay_mounts() == mounts
    assert tree_digest(project, skip=(".pytest_cache",), dir_times=False) == before
