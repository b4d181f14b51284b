"""What every command of ``pytest-overlay`` shares; it imports no other module of the CLI.

Exit codes and the expected-error type, the hints that say how layers come to be kept, the
kept-layer store the command works on (found through :mod:`pytest_overlay._storepath`), the
output context and its colours, counting and sizes, and the helpers that give each command
the same global options and exit-code table.  Every name that came from a test is printed
through :func:`shown_path` or :mod:`pytest_overlay._render`, so it cannot drive a terminal.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pytest_overlay._errors import OverlayError
from pytest_overlay._keep import Store
from pytest_overlay._safetext import safe_path
from pytest_overlay._storepath import default_cache_dir, find_project, resolve_cache_dir, store_dir

PROG = "pytest-overlay"
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CANNOT_MOUNT = 3

EXIT_CODES = """\
exit codes:
  0  success
  1  not found, ambiguous, or nothing to act on
  2  usage error
  3  the view cannot be mounted here (neither kernel overlayfs nor FUSE)"""

KEEP_HINT = (
    "pytest-overlay keeps the upper layer of each failed test (--overlay-keep=failed, the "
    "default), with the overlay_root fixture and in place (--overlay) alike; "
    "--overlay-keep=all keeps every test's, passed or failed"
)
CACHE_DIR_HINT = (
    "if pytest ran with another cache directory (-o cache_dir=... or --rootdir), "
    "give it with --cache-dir"
)
LIST_HINT = "run `pytest-overlay list` to see the kept tests"
_COLORS = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1"}


class CliError(OverlayError):
    """An expected failure: printed as ``pytest-overlay: error: ...``, then exit *code*."""

    def __init__(self, message: str, *, code: int = EXIT_NOT_FOUND, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def human_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 MiB``..."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def shown_path(path: Path) -> str:
    """*path*, printable (see :func:`~pytest_overlay._safetext.safe_path`)."""
    return safe_path(os.fspath(path))


# --- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """The store the command works on, and how it was found."""

    store: Store
    how: str

    def nothing_kept(self) -> str:
        """The line saying that the store holds nothing, and where the command looked."""
        return f"no kept layers in {shown_path(self.store.root)} ({safe_path(self.how)})"

    def require(self) -> Store:
        """The store, or an error saying that nothing was kept yet."""
        if self.store.latest_run() is None:
            raise CliError(self.nothing_kept(), hint=f"{KEEP_HINT}; {CACHE_DIR_HINT}")
        return self.store


def locate_store(cache_dir: str | None, cwd: Path) -> Located:
    """The kept-layer store: in ``--cache-dir``, else in the cache of the project of *cwd*.

    The project and its ``cache_dir`` setting are found as pytest finds them
    (:func:`~pytest_overlay._storepath.find_project`); with no project upward, the store
    pytest would use when run in *cwd*.
    """
    if cache_dir is not None:
        return Located(Store(store_dir(resolve_cache_dir(cache_dir, cwd))), "--cache-dir")
    project = find_project(cwd)
    if project is None:
        cache = resolve_cache_dir(default_cache_dir(), cwd)
        return Located(Store(store_dir(cache)), f"no pytest project found upward from {cwd}")
    return Located(Store(store_dir(project.cache_path)), project.describe())


# --- output -----------------------------------------------------------------------------------


class Style:
    """ANSI colour, only for a terminal and only without ``NO_COLOR``."""

    def __init__(self, choice: str, stream: TextIO) -> None:
        if choice == "auto":
            tty = stream.isatty()
            self.enabled = (
                tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
            )
        else:
            self.enabled = choice == "always"

    def __call__(self, text: str, color: str) -> str:
        """*text* in *color* (a key of ``_COLORS``), when colour is on."""
        if not self.enabled or not text:
            return text
        return f"\x1b[{_COLORS[color]}m{text}\x1b[0m"

    def outcome(self, outcome: str) -> str:
        """A test outcome: red for failures, green for passes."""
        color = {"failed": "red", "error": "red", "passed": "green", "skipped": "yellow"}
        return self(outcome, color.get(outcome, "bold"))

    def report_line(self, line: str) -> str:
        """One line of a report, coloured the way ``git diff`` colours it."""
        if line.startswith(("+++", "---")):
            return self(line, "bold")
        if line.startswith("+"):
            return self(line, "green")
        if line.startswith("-"):
            return self(line, "red")
        if line.startswith("@@"):
            return self(line, "cyan")
        return line


@dataclass
class Context:
    """What every command gets: the parsed arguments, the store, the output streams."""

    args: argparse.Namespace
    located: Located
    out: TextIO
    err: TextIO
    style: Style

    def print(self, text: str = "") -> None:
        """Print a line of output."""
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        """Print a warning to stderr."""
        print(f"{PROG}: warning: {text}", file=self.err)


# --- the parser -------------------------------------------------------------------------------


def wrap(text: str) -> str:
    """*text* filled to 78 columns (RawDescriptionHelpFormatter, which keeps the exit-code
    table as written, wraps nothing itself)."""
    return textwrap.fill(text, 78)


def subparser(
    subparsers: Any, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """Add the command *name*, with the exit codes in its help and the global options."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=wrap(description),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Global options are accepted after the command too; SUPPRESS keeps an earlier value.
    parser.add_argument(
        "--cache-dir", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    return parser


def add_run_option(
    parser: argparse.ArgumentParser, text: str = "Use this run instead of the latest"
) -> None:
    """The ``--run`` option of the commands that work on one run."""
    parser.add_argument("--run", metavar="RUN_ID", help=f"{text} (a run id, or latest)")
