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
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_overlay._backends.copying import CopyBackend

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="processes are found in /proc, on Linux only"
)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[CopyBackend]:
    result = CopyBackend(lambda: tmp_path / "scratch")
    yield result
    result.shutdown()


def _holding(how: str, view: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    if how == "cwd":
        return subprocess.Popen(["sleep", "60"], cwd=view)
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
        messages = first.close()
        assert len(messages) == 1
        assert f"{first.path} was still in use by pid {process.pid} (" in messages[0]
        assert "set aside" in messages[0]
        assert "sleep 60" in messages[0] or "sh -c" in messages[0]
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
    process = subprocess.Popen(argv, executable=sleep, cwd=first.path)
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
        process = subprocess.Popen(["sleep", "60"], cwd=tmp_path, pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        (message,) = first.close()
    finally:
        process.kill()
        process.wait()
    expected = rf"by pid {process.pid} (sleep 60) through {first.path}/log\x1b[31m\n.txt when"
    assert expected in message, message
