"""Running a snapshot layer's build function, and saying in a few lines why it failed.

A build that fails (a ``pip install`` that finds no matching version, say) is the user's
problem to fix, so its message gives what the user needs and nothing of pytest-overlay: the
exception, the tail of what the build and the command it ran printed, and the user's frames
where it was raised.  The build's output is captured at file-descriptor level, so that the
output of its subprocesses is captured too; a build that succeeds writes it on to pytest's
capture, where it was before.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep
_STDLIB = str(Path(sysconfig.get_path("stdlib")).resolve()) + os.sep

# How much of each part a message shows: enough to see the error, few enough to stay on one
# screen (the failure section of a test stays under 25 lines).
COMMAND_STDERR_LINES = 5
COMMAND_STDOUT_LINES = 3
BUILD_OUTPUT_LINES = 5
USER_FRAMES = 2
LINE_WIDTH = 160


def build_failed(name: str, reason: str) -> str:
    """The first line of every build failure; the summary repeats it."""
    return f"building snapshot layer {name!r} failed: {reason}"


def run_build(
    name: str, build: Callable[[Path], object], root: Path, *, project: Path, capture: bool
) -> str | None:
    """Run ``build(root)``; None if it succeeded, else the message that says why it failed.

    :param capture: capture the build's output (off under ``-s``, where it is shown live).
    """
    with _captured(capture) as output:
        try:
            build(root)
        except Exception as exc:  # any failure of the build is the build's to report
            error: Exception | None = exc
        else:
            error = None
    if error is None:
        if output.text:
            sys.stdout.write(output.text)
        return None
    return describe_failure(name, error, output.text, project)


def describe_failure(name: str, exc: BaseException, output: str, project: Path) -> str:
    """A few lines: the exception, the failed command's output, the build's, where it raised."""
    command = _subprocess_error(exc)
    if command is not None and command is exc:
        headline = _command_failure(command)
    else:
        headline = _exception_line(exc)
    lines = [build_failed(name, headline)]
    if exc.__cause__ is not None and exc.__cause__ is not command:
        lines.append(f"  caused by {_exception_line(exc.__cause__)}")
    if command is not None:
        if command is not exc:
            lines.append(f"  the command: {_command_failure(command)}")
        lines += _tail("its stderr", command.stderr, COMMAND_STDERR_LINES)
        lines += _tail("its stdout", command.stdout, COMMAND_STDOUT_LINES)
    lines += _tail("the build's output", output, BUILD_OUTPUT_LINES)
    frames = _user_frames(exc, project)
    if frames:
        lines.append("  raised at:")
        lines += [f"    {frame}" for frame in frames]
    lines.append(
        "  Fix the build (or what it runs) and run again; a failed build is not cached, and "
        f"the tests that need {name!r} error until it succeeds."
    )
    return "\n".join(lines)


def _subprocess_error(
    exc: BaseException,
) -> subprocess.CalledProcessError | subprocess.TimeoutExpired | None:
    """The failed command behind *exc*: itself, or what it was raised from."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (subprocess.CalledProcessError, subprocess.TimeoutExpired)):
            return seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


def _command_failure(exc: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    cmd = exc.cmd
    shown = cmd if isinstance(cmd, str) else shlex.join(str(part) for part in cmd)
    shown = _clip(shown.replace("\n", "\\n"), 120)
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"{type(exc).__name__}: `{shown}` timed out after {exc.timeout:g} seconds"
    if exc.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-exc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-exc.returncode}"
    else:
        how = f"exited with status {exc.returncode}"
    return f"{type(exc).__name__}: `{shown}` {how}"


def _exception_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    if len(message) > 1:
        text += f" (+{len(message) - 1} more lines)"
    return _clip(text, LINE_WIDTH)


def _tail(label: str, data: object, count: int) -> list[str]:
    if isinstance(data, bytes):
        data = data.decode("utf-8", "backslashreplace")
    if not isinstance(data, str):
        return []
    lines = [line for line in data.rstrip().splitlines() if line.strip()]
    if not lines:
        return []
    shown = lines[-count:]
    which = f"last {len(shown)} of {len(lines)} lines" if len(shown) < len(lines) else ""
    header = f"  {label} ({which}):" if which else f"  {label}:"
    return [header, *(f"    {_clip(line.rstrip(), LINE_WIDTH)}" for line in shown)]


def _user_frames(exc: BaseException, project: Path) -> list[str]:
    """The innermost frames of the user's code (not pytest-overlay's, not the stdlib's)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_PACKAGE)
    ]
    outside_stdlib = [f for f in frames if not os.path.abspath(f.filename).startswith(_STDLIB)]
    chosen = (outside_stdlib or frames)[-USER_FRAMES:]
    shown = []
    for frame in chosen:
        where = _relative(frame.filename, project)
        source = f": {frame.line.strip()}" if frame.line else ""
        shown.append(_clip(f"{where}:{frame.lineno} in {frame.name}{source}", LINE_WIDTH))
    return shown


def _relative(filename: str, project: Path) -> str:
    try:
        return str(Path(filename).relative_to(project))
    except ValueError:
        return filename


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class _Output:
    """What a build wrote to fds 1 and 2, filled in when the capture ends."""

    text = ""


@contextlib.contextmanager
def _captured(enabled: bool) -> Iterator[_Output]:
    """Send fds 1 and 2, and ``sys.stdout``/``sys.stderr``, to one file while the build runs.

    One file for both keeps their lines in the order they were written.  Without usable
    descriptors (closed ones, say) the build runs uncaptured.
    """
    output = _Output()
    if not enabled:
        yield output
        return
    with tempfile.TemporaryFile() as file:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:
            yield output
            return
        writer: IO[str] = io.TextIOWrapper(
            open(file.fileno(), "wb", closefd=False),  # noqa: SIM115 - closed below
            encoding="utf-8",
            errors="backslashreplace",
            # Each line reaches the file before a subprocess can write the next one.
            line_buffering=True,
        )
        previous = sys.stdout, sys.stderr
        try:
            os.dup2(file.fileno(), 1)
            os.dup2(file.fileno(), 2)
            sys.stdout = sys.stderr = writer
            yield output
        finally:
            sys.stdout, sys.stderr = previous
            writer.close()
            for fd, copy in ((1, saved[0]), (2, saved[1])):
                os.dup2(copy, fd)
                os.close(copy)
            file.seek(0)
            output.text = file.read().decode("utf-8", "backslashreplace")
