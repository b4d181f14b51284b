"""The copy backend and a process the test left running in its copy (issue 11).

The kernel and FUSE backends detach a busy view lazily and warn; the copy backend cannot
detach anything, so a copy that a process still holds (its working directory, or an open file)
is set aside with a warning naming the process, and the next test gets a fresh copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay._backends.copy_tracking import _NewPids
from pytest_overlay._backends.copying import CopyBackend

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="processes are found in /proc, on Linux only"
)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[CopyBackend]:
    result = CopyBackend(lambda: tmp_path / "scratch")
    yield result
    result.shutdown()


def _exec_finished(
    process: subprocess.Popen[bytes], command: bytes | None = None
) -> subprocess.Popen[bytes]:
    """*process* once its command line can be read (and is *command*, NUL-separated, if
    given).  ``Popen`` returns when ``execve`` closed the error pipe, which the kernel does
    before it sets up the new program's arguments: a look at ``/proc/PID/cmdline`` in between
    finds it empty, and the report names the process ``[sleep]`` (seen once in CI).  Waiting
    here keeps the race out of the tests; the report line is right either way."""
    cmdline = Path("/proc", str(process.pid), "cmdline")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = cmdline.read_bytes()
        if seen and command in (None, seen):
            break
        time.sleep(0.001)
    return process


def _holding(how: str, view: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    if how == "cwd":
        return _exec_finished(subprocess.Popen(["sleep", "60"], cwd=view))
    # Started elsewhere, holding a file of the view open.
    return subprocess.Popen(
        ["sh", "-c", f"exec 3< '{view / 'seen'}'; echo open; exec sleep 60"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
    )


@pytest.mark.parametrize("how", ["cwd", "open file"])
def test_a_copy_still_in_use_is_set_aside(
    how: str, backend: CopyBackend, lower: Path, tmp_path: Path
) -> None:
    first = backend.mount([lower], label="t")
    (first.path / "seen").write_text("by the process\n")
    process = _holding(how, first.path, tmp_path)
    try:
        if process.stdout is not None:
            assert process.stdout.readline() == b"open\n"
            # The shell goes on to exec sleep: wait until it has, for the same race.
            _exec_finished(process, b"sleep\x0060\x00")
        messages = first.close()
        assert len(messages) == 1
        assert f"{first.path} was still in use by pid {process.pid} (" in messages[0]
        assert "set aside" in messages[0]
        assert f"pid {process.pid} (sleep 60) through " in messages[0]
        second = backend.mount([lower], label="t")
        assert second.path != first.path
        assert not (second.path / "seen").exists()
        # The process still has the copy as the test left it.
        assert (first.path / "seen").read_text() == "by the process\n"
        assert second.close() == []
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    # Nothing holds the second copy: it is reset and handed out again.
    third = backend.mount([lower], label="t")
    assert third.path == second.path
    assert third.close() == []
    backend.shutdown()
    assert not first.path.exists()


def test_a_copy_nothing_holds_is_reused(backend: CopyBackend, lower: Path) -> None:
    first = backend.mount([lower], label="t")
    subprocess.run(["true"], cwd=first.path, check=True)  # ended with the test: no warning
    assert first.close() == []
    second = backend.mount([lower], label="t")
    assert second.path == first.path
    assert second.close() == []


def test_the_process_is_named_by_its_command_line_shown_safely(
    backend: CopyBackend, lower: Path
) -> None:
    """The line names the process by its command line, escapes made visible and cut to 60
    characters (not by its 15-character comm), and the path through which it holds the copy."""
    first = backend.mount([lower], label="t")
    hostile = "sleep\x1b[2J\nforged line\u202e"  # its argv[0]: the test chose it
    sleep = shutil.which("sleep")
    assert sleep is not None
    argv = [hostile, "60", *["0"] * 40]  # sleep adds them up
    process = _exec_finished(subprocess.Popen(argv, executable=sleep, cwd=first.path))
    try:
        (message,) = first.close()
    finally:
        process.kill()
        process.wait()
    shown = (r"sleep\x1b[2J\nforged line\u202e 60" + " 0" * 40)[:57] + "..."
    assert message == (
        f"{first.path} was still in use by pid {process.pid} ({shown}) through {first.path} "
        "when the test ended, so that copy was set aside: the process may go on using it until "
        "the end of the run, when it is removed, and the next test gets a fresh copy"
    )
    backend.shutdown()


def test_a_held_file_with_a_hostile_name_is_shown_safely(
    backend: CopyBackend, lower: Path, tmp_path: Path
) -> None:
    first = backend.mount([lower], label="t")
    held = first.path / "log\x1b[31m\n.txt"
    held.write_text("")
    fd = os.open(held, os.O_RDONLY)
    try:
        process = _exec_finished(subprocess.Popen(["sleep", "60"], cwd=tmp_path, pass_fds=(fd,)))
    finally:
        os.close(fd)
    try:
        (message,) = first.close()
    finally:
        process.kill()
        process.wait()
    expected = rf"by pid {process.pid} (sleep 60) through {first.path}/log\x1b[31m\n.txt when"
    assert expected in message, message


def test_a_process_started_in_an_earlier_test_is_still_watched(
    backend: CopyBackend, lower: Path, tmp_path: Path
) -> None:
    """A process a test left running, holding nothing when it ended, that opens a file of the
    copy during a later test: that later test's copy is set aside (the scans remember every
    process started since pytest, not only those started since the last scan)."""
    go = tmp_path / "go"
    first = backend.mount([lower], label="t")
    script = f"while [ ! -e '{go}' ]; do sleep 0.02; done; exec 3< '{first.path / 'f'}'; "
    process = subprocess.Popen(
        ["sh", "-c", script + "echo open; exec sleep 60"], cwd=tmp_path, stdout=subprocess.PIPE
    )
    try:
        assert first.close() == []  # it holds nothing yet
        second = backend.mount([lower], label="t")
        assert second.path == first.path
        go.touch()
        assert process.stdout is not None
        assert process.stdout.readline() == b"open\n"
        messages = second.close()
        assert len(messages) == 1
        assert f"was still in use by pid {process.pid} (" in messages[0]
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_only_processes_started_since_pytest_are_looked_at() -> None:
    """The pids scanned: ours and those handed out since the previous scan (cyclically, after
    a wrap-around), plus those of earlier scans still alive; never an older one above ours."""
    new = _NewPids()
    # First scan: 500 is us; 900 and 30 are older than us (above our pid after a wrap-around
    # before we started), 501 and 502 were started since.
    assert new.candidates(500, [30, 500, 501, 502, 900], 502) == {500, 501, 502}
    # 501 died; 600 is new; the kernel has reached 650.
    assert new.candidates(500, [30, 500, 502, 600, 900], 650) == {500, 502, 600}
    # The pids wrapped around since (650 up to pid_max, then from the bottom up to 310): every
    # living pid on the way may be new, the older ones too, so all of them are looked at.
    assert new.candidates(500, [30, 310, 500, 502, 600, 900, 32000], 310) == {
        30,
        310,
        500,
        502,
        600,
        900,
        32000,
    }
    # Nothing started since; 30 and 900 stay looked at (one wrap-around may have reused them).
    assert new.candidates(500, [30, 310, 500, 600, 900], 310) == {30, 310, 500, 600, 900}
    # A forked child starts again from its own pid.
    assert new.candidates(700, [30, 500, 700, 701, 900], 701) == {700, 701}
    # Without ns_last_pid: every pid from ours up, as before.
    assert new.candidates(700, [30, 500, 700, 701, 900], None) == {700, 701, 900}
