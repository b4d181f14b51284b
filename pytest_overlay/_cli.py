"""The ``pytest-overlay`` command: look at, mount and remove the layers kept of tests.

pytest keeps the upper layer of failed tests (``--overlay-keep``) in its cache directory; this
command lists them, prints what a test changed, rebuilds a test's view of the tree with kernel
overlayfs (:mod:`pytest_overlay._cli_mount`), and removes them.  It also lists the snapshot
layers that ``overlay_layer`` cached for the project (``layers``); ``clean --layers`` removes
them.  Every name that came from a test (node ids, file names, file contents, layer names) is
printed through the escaping of :mod:`pytest_overlay._render`, so a hostile name cannot forge
lines or drive the terminal.

Exit codes:

* 0: success;
* 1: not found, ambiguous, or nothing to act on (and expected errors: unreadable store,
  permission denied);
* 2: usage error (argparse);
* 3: kernel overlayfs cannot be mounted here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from ._diff import ChangeKind, TreeDiff
from ._errors import OverlayError
from ._keep import RUN_FILE, STORE_DIR, Record, Store, read_record
from ._layers import LayerStack
from ._render import render_changes, safe_line, safe_path
from ._report import render_name_only, render_stat
from ._version import __version__

__all__ = ["EXIT_CANNOT_MOUNT", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "CliError", "main"]

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
  3  kernel overlayfs cannot be mounted here"""

KEEP_HINT = (
    "pytest keeps the layers of failed tests when it runs with --overlay; "
    "keep every test's with `pytest --overlay --overlay-keep=all`"
)
LIST_HINT = "run `pytest-overlay list` to see the kept tests"
LAYERS_HINT = (
    "the overlay_layer fixture builds snapshot layers when a test marked "
    "@pytest.mark.overlay(layers=[...]) needs one; a project that sets overlay_layer_dir "
    "needs --layer-dir"
)
CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
_MAX_CANDIDATES = 10
_COLORS = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1"}


class CliError(OverlayError):
    """An expected failure: printed as ``pytest-overlay: error: ...``, then exit *code*."""

    def __init__(self, message: str, *, code: int = EXIT_NOT_FOUND, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


# --- finding the store ----------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """The store the command works on, and how it was found."""

    store: Store
    how: str

    def require(self) -> Store:
        """The store, or an error saying that nothing was kept yet."""
        if self.store.latest_run() is None:
            raise CliError(f"no kept layers in {shown_path(self.store.root)}", hint=KEEP_HINT)
        return self.store


def locate_store(cache_dir: str | None, cwd: Path) -> Located:
    """Find the kept-layer store: ``--cache-dir``, else the nearest one upward from *cwd*.

    With no store anywhere upward, the first directory holding a pytest config file (or
    *cwd*) names the store that would be used, so the command can say that it is empty.
    """
    if cache_dir is not None:
        root = cwd / os.path.expanduser(cache_dir)
        return Located(Store(root / "d" / STORE_DIR), "--cache-dir")
    project: Path | None = None
    for directory in (cwd, *cwd.parents):
        candidate = directory / ".pytest_cache" / "d" / STORE_DIR
        if candidate.is_dir():
            return Located(Store(candidate), f"found from {cwd}")
        if project is None and any((directory / name).is_file() for name in CONFIG_FILES):
            project = directory
    fallback = (project or cwd) / ".pytest_cache" / "d" / STORE_DIR
    return Located(Store(fallback), f"nothing found upward from {cwd}")


# --- reading kept tests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """One kept test's directory, and its record when complete and readable."""

    run_id: str
    directory: Path
    record: Record | None

    @property
    def upper(self) -> Path | None:
        """The kept upper layer, for a record that has one."""
        if self.record is None or self.record.upper is None:
            return None
        return self.directory / self.record.upper


def _well_formed(record: Record) -> bool:
    """Whether a record's fields have the types the command relies on."""
    values: dict[str, object] = asdict(record)
    strings = ("nodeid", "outcome", "backend", "time", "report")
    lowers = values["lowers"]
    upper = values["upper"]
    return (
        all(isinstance(values[name], str) for name in strings)
        and isinstance(lowers, list)
        and all(isinstance(item, str) for item in lowers)
        and isinstance(values["diff"], dict)
        and isinstance(values["size"], int)
        # A plain name inside the test's directory: a record must not point elsewhere.
        and (upper is None or (isinstance(upper, str) and _plain_name(upper)))
    )


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name


def load_record(test_dir: Path) -> Record | None:
    """The test's record, or None when it is missing, torn, or not one we can use."""
    record = read_record(test_dir)
    if record is None or not _well_formed(record):
        return None
    return record


def tests_of(store: Store, run_id: str) -> list[Kept]:
    """The kept tests of a run: complete ones by node id, then incomplete ones."""
    kept = [Kept(run_id, path, load_record(path)) for path in store.test_dirs(run_id)]
    return sorted(
        kept,
        key=lambda k: (k.record is None, k.record.nodeid if k.record else "", k.directory.name),
    )


def tree_diff(kept: Kept) -> TreeDiff | None:
    """The test's changes, or None when the stored diff cannot be read."""
    assert kept.record is not None
    try:
        return kept.record.tree_diff()
    except (ValueError, TypeError):
        return None


def select_run(store: Store, run: str | None) -> str:
    """The run named by ``--run`` (an id, or ``latest``), or the latest run."""
    runs = store.run_ids()
    if run is None or run == "latest":
        latest = store.latest_run()
        if latest is None:
            raise CliError(f"no kept layers in {shown_path(store.root)}", hint=KEEP_HINT)
        # ``latest`` is a file anyone could have edited: only ever a directory in runs/.
        return latest if latest in runs else runs[-1]
    if run in runs:
        return run
    known = ", ".join(safe_path(r) for r in runs[-5:]) if runs else "none"
    raise CliError(
        f"no run {safe_path(run)!r} in {shown_path(store.root)}",
        hint=f"the newest runs are: {known} (`pytest-overlay list --all-runs` shows all)",
    )


def find_test(store: Store, run_id: str, query: str) -> Kept:
    """The kept test whose node id is *query*, else the only one that contains it."""
    complete = [k for k in tests_of(store, run_id) if k.record is not None]
    for kept in complete:
        assert kept.record is not None
        if kept.record.nodeid == query:
            return kept
    matches = [k for k in complete if k.record is not None and query in k.record.nodeid]
    if len(matches) == 1:
        return matches[0]
    shown = safe_path(query)
    if matches:
        names = [safe_path(k.record.nodeid) for k in matches if k.record is not None]
        lines = [f"  {name}" for name in names[:_MAX_CANDIDATES]]
        if len(names) > _MAX_CANDIDATES:
            lines.append(f"  ... and {len(names) - _MAX_CANDIDATES} more")
        raise CliError(
            f"'{shown}' matches {len(matches)} kept tests of run {safe_path(run_id)}:\n"
            + "\n".join(lines),
            hint="give more of the node id, or all of it",
        )
    hint = LIST_HINT
    for other in reversed(store.run_ids()):
        if other != run_id and any(
            k.record is not None and query in k.record.nodeid for k in tests_of(store, other)
        ):
            shown_run = safe_path(other)
            hint += f"; a test matching it was kept in run {shown_run} (add --run {shown_run})"
            break
    raise CliError(f"no kept test of run {safe_path(run_id)} matches '{shown}'", hint=hint)


def run_info(store: Store, run_id: str) -> dict[str, Any]:
    """The run's ``run.json``, or an empty dict when it cannot be read."""
    try:
        data = json.loads((store.runs_dir / run_id / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shown_path(path: Path) -> str:
    """*path*, printable (see :func:`~pytest_overlay._render.safe_path`)."""
    return safe_path(os.fspath(path))


def _counts(diff: TreeDiff) -> tuple[int, int, int]:
    added = sum(1 for c in diff if c.kind is ChangeKind.ADDED)
    deleted = sum(1 for c in diff if c.kind is ChangeKind.DELETED)
    return added, len(diff) - added - deleted, deleted


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


# --- list -----------------------------------------------------------------------------------


def cmd_list(ctx: Context) -> int:
    """``pytest-overlay list``."""
    store = ctx.located.store
    if store.latest_run() is None:
        ctx.print(f"no kept layers in {shown_path(store.root)} ({ctx.located.how})")
        ctx.print(KEEP_HINT)
        return EXIT_OK
    runs = store.run_ids() if ctx.args.all_runs else [select_run(store, ctx.args.run)]
    for index, run_id in enumerate(runs):
        if index:
            ctx.print()
        _list_run(ctx, store, run_id)
    return EXIT_OK


def _list_run(ctx: Context, store: Store, run_id: str) -> None:
    started = run_info(store, run_id).get("started")
    when = safe_path(started) if isinstance(started, str) else "unknown time"
    ctx.print(f"run {safe_path(run_id)} (started {when}) in {shown_path(store.root)}")
    kept = tests_of(store, run_id)
    if not kept:
        ctx.print("no tests were kept in this run")
        return
    rows: list[tuple[str, str, str, str]] = []
    incomplete: list[str] = []
    for item in kept:
        if item.record is None:
            incomplete.append(f"(incomplete: {safe_path(item.directory.name)})")
            continue
        diff = tree_diff(item)
        counts = "?" if diff is None else "+{} ~{} -{}".format(*_counts(diff))
        size = human_size(item.record.size)
        rows.append((safe_path(item.record.nodeid), safe_path(item.record.outcome), counts, size))
    header = ("NODE ID", "OUTCOME", "CHANGES", "SIZE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        nodeid, outcome, counts, size = row
        padding = " " * (widths[1] - len(outcome))
        if row is not header:
            outcome = ctx.style.outcome(outcome)
        ctx.print(
            f"{nodeid.ljust(widths[0])}  {outcome}{padding}  {counts.ljust(widths[2])}  {size}"
        )
    for line in incomplete:
        ctx.print(line)
    summary = plural(len(rows), "kept test")
    if incomplete:
        summary += f", {len(incomplete)} incomplete (cut short while being kept, or unreadable)"
    ctx.print(summary)


# --- show -----------------------------------------------------------------------------------


def cmd_show(ctx: Context) -> int:
    """``pytest-overlay show``."""
    store = ctx.located.require()
    kept = find_test(store, select_run(store, ctx.args.run), ctx.args.nodeid)
    record = kept.record
    assert record is not None
    if ctx.args.json:
        data = {k: v for k, v in asdict(record).items() if k != "extra"}
        data.update(record.extra)
        # ensure_ascii: control characters and odd code points come out as \u escapes.
        ctx.print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))
        return EXIT_OK
    if ctx.args.stat or ctx.args.name_only:
        diff = tree_diff(kept)
        if diff is None:
            raise CliError(f"the stored changes of {safe_path(record.nodeid)} cannot be read")
        if ctx.args.name_only:
            if diff:
                ctx.print(render_name_only(diff))
            return EXIT_OK
        # Old versions come from the lowers as they are now, new ones from the kept layer.
        stack = LayerStack([Path(p) for p in record.lowers if Path(p).is_dir()])

        def old(rel: str) -> Path | None:
            entry = stack.lookup(rel)
            return None if entry is None else entry.real_path

        def new(rel: str) -> Path | None:
            path = None if kept.upper is None else kept.upper / rel
            return path if path is not None and os.path.lexists(path) else None

        ctx.print(render_stat(diff, old, new))
        return EXIT_OK
    title = f"{safe_path(record.nodeid)}: {ctx.style.outcome(safe_path(record.outcome))}"
    ctx.print(f"{title} ({safe_path(record.backend)} backend, run {safe_path(kept.run_id)})")
    if kept.upper is not None:
        ctx.print(f"kept upper layer: {shown_path(kept.upper)}")
    ctx.print()
    report = record.report.rstrip("\n")
    if not report:
        diff = tree_diff(kept)
        report = render_changes(diff) if diff else "(no changes)"
    for line in report.split("\n"):
        # The report was rendered safely when kept; this only re-checks it (a no-op on safe
        # text) in case the store was tampered with.
        ctx.print(ctx.style.report_line(safe_line(line)))
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------


def _wrap(text: str) -> str:
    # RawDescriptionHelpFormatter keeps the exit-code table as written, and so wraps nothing.
    return textwrap.fill(text, 78)


def subparser(
    subparsers: Any, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """Add the command *name*, with the exit codes in its help and the global options."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=_wrap(description),
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pytest-overlay``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_wrap(
            "Inspect the layers pytest-overlay kept of tests: list them, show what a test "
            "changed, mount a test's view of the tree, remove them.  List and remove the "
            "snapshot layers cached by the overlay_layer fixture."
        ),
        epilog=EXIT_CODES
        + "\n\n"
        + _wrap(
            "The kept layers are found upward from the current directory, in "
            ".pytest_cache/d/overlay; a project whose ini sets cache_dir needs --cache-dir.  "
            "Snapshot layers are cached outside the project: see `pytest-overlay layers --help`.  "
            "Run `pytest-overlay COMMAND --help` for each command."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--cache-dir",
        metavar="PATH",
        help="pytest's cache directory, when the project sets cache_dir (default: found upward)",
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

    sub = subparser(
        subparsers,
        "list",
        "List the kept tests of a run",
        "List the kept tests of the latest run: node id, outcome, changes (+added ~modified "
        "-deleted) and the size of the kept layer.",
    )
    add_run_option(sub)
    sub.add_argument("--all-runs", action="store_true", help="List the tests of every kept run")
    sub.set_defaults(handler=cmd_list)

    sub = subparser(
        subparsers,
        "show",
        "Print what a kept test changed",
        "Print the report of a kept test: its changes and the unified diff of changed files. "
        "NODEID is a node id, or any part of one that matches a single kept test.",
    )
    sub.add_argument("nodeid", metavar="NODEID", help="The test's node id, or a unique part of it")
    form = sub.add_mutually_exclusive_group()
    form.add_argument("--stat", action="store_true", help="Only the changed paths and totals")
    form.add_argument("--name-only", action="store_true", help="Only the changed paths")
    form.add_argument("--json", action="store_true", help="The whole record, as JSON")
    add_run_option(sub)
    sub.set_defaults(handler=cmd_show)

    from . import _cli_layers, _cli_mount  # they import this module: not at the top

    _cli_layers.add_parsers(subparsers)

    _cli_mount.add_parsers(subparsers)
    return parser


# --- entry point ------------------------------------------------------------------------------


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


if __name__ == "__main__":  # pragma: no cover - python -m pytest_overlay is the usual way
    sys.exit(main())
