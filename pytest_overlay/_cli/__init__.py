"""The ``pytest-overlay`` command: look at, mount and remove the layers kept of tests.

pytest keeps the upper layer of failed tests (``--overlay-keep``) in its cache directory; this
command lists them, prints what a test changed, rebuilds a test's view of the tree with kernel
overlayfs, and removes them.  It also lists the snapshot layers that ``overlay_layer`` cached
for the project; ``clean --layers`` removes them.

The package is layered, each module importing only those below it:

* this module: the parser of the whole command and :func:`main`;
* :mod:`.clean` (``clean``), which asks :mod:`.mount` whether a view still uses a layer;
* :mod:`.kept` (``list``, ``show``), :mod:`.mount` (``mount``, ``umount``) and
  :mod:`.layers` (``layers``), one module per command group;
* :mod:`.records`: reading the kept tests of a store;
* :mod:`.common`: exit codes, errors, the store, output, parser helpers.

Exit codes:

* 0: success;
* 1: not found, ambiguous, or nothing to act on (and expected errors: unreadable store,
  permission denied);
* 2: usage error (argparse);
* 3: the view cannot be mounted here (neither kernel overlayfs nor FUSE).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from pytest_overlay._safetext import safe_path
from pytest_overlay._version import __version__

from . import clean, kept, layers, mount
from .common import (
    EXIT_CANNOT_MOUNT,
    EXIT_CODES,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CliError,
    Context,
    Style,
    locate_store,
    wrap,
)

__all__ = [
    "EXIT_CANNOT_MOUNT",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pytest-overlay``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=wrap(
            "Inspect the layers pytest-overlay kept of tests: list them, show what a test "
            "changed, mount a test's view of the tree, remove them.  List and remove the "
            "snapshot layers cached by the overlay_layer fixture."
        ),
        epilog=EXIT_CODES
        + "\n\n"
        + wrap(
            "The kept layers are found in pytest's cache directory (d/overlay in it) of the "
            "project pytest would find from the current directory, with the cache_dir its "
            "ini file sets; --cache-dir names another.  Snapshot layers are cached outside "
            "the project: see `pytest-overlay layers --help`.  "
            "Run `pytest-overlay COMMAND --help` for each command."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--cache-dir",
        metavar="PATH",
        help="pytest's cache directory, relative to the current directory (default: the "
        "project's, from its ini file's cache_dir or .pytest_cache)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="Colour the output (auto: on a terminal, unless NO_COLOR is set)",
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    kept.add_parsers(subparsers)
    layers.add_parsers(subparsers)
    mount.add_parsers(subparsers)
    clean.add_parsers(subparsers)
    return parser


@contextlib.contextmanager
def _errors_replaced(stream: TextIO) -> Iterator[None]:
    # Text printed here is already escaped; an encoding that cannot show it (LANG=C on an old
    # Python) must not turn into a traceback.
    if isinstance(stream, io.TextIOWrapper):
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors="backslashreplace")
    yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with *argv* (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        with _errors_replaced(out), _errors_replaced(err):
            located = locate_store(args.cache_dir, Path.cwd())
            ctx = Context(args, located, out, err, Style(args.color, out))
            code: int = args.handler(ctx)
            out.flush()
            return code
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
        return exc.code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # about the unflushed stdout at exit.  141 is what a program killed by SIGPIPE
        # reports, as git does here.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 128 + 13
    except OSError as exc:
        where = f": {safe_path(os.fsdecode(exc.filename))}" if exc.filename else ""
        print(f"{PROG}: error: {safe_path(exc.strerror or str(exc))}{where}", file=err)
        return EXIT_NOT_FOUND
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
