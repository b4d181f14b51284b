"""Command-line options, their ini twins, and the frozen settings parsed from them once."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ._choices import (
    KEEP_CHOICES,
    MARKER_ARGUMENTS,
    TOOL_STATE_BOUND,
    TOOL_STATE_CHOICES,
    TOOL_STATE_DIRS,
    TOOL_STATE_FILES,
    USERNS_CHOICES,
    Keep,
    Userns,
)
from ._hermetic import Hermetic
from ._hermetic import add_options as add_hermetic_options
from ._hermetic import parse as parse_hermetic
from ._registry import AUTO, BUILTIN_BACKENDS

_Word = TypeVar("_Word", bound=str)


class _Listed:
    """argparse ``choices`` that name *words* in ``--help`` but accept any value: the value is
    checked against the backend registry later, with a message that says how to fix it."""

    def __init__(self, words: Iterable[str]) -> None:
        self._words = words

    def __iter__(self) -> Iterator[str]:
        return iter(self._words)

    def __contains__(self, value: object) -> bool:
        return True


DEFAULT_IGNORE = (
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".coverage",
    ".coverage.*",
    ".hypothesis",
    ".benchmarks",
)


def add_options(parser: pytest.Parser, backends: Iterable[str] = (AUTO, *BUILTIN_BACKENDS)) -> None:
    """Register every option with its ``overlay_*`` ini twin.

    :param backends: what ``--help`` lists for ``--overlay-backend``; iterated when the help
        is shown (a plugin's backends are registered after this option is added).
    """
    group = parser.getgroup("overlay", "per-test filesystem overlays (pytest-overlay)")

    def option(
        name: str, ini_type: Any, help_text: str, ini_default: Any, flag: str = "", **kwargs: Any
    ) -> None:
        dest = "overlay_" + name.replace("-", "_") if name else "overlay"
        flag = flag or (f"--overlay-{name}" if name else "--overlay")
        # argparse %-formats an option's help, pytest prints an ini's as it is: one text,
        # escaped for argparse only (a "10%%" showed in the ini list of ``pytest --help``).
        group.addoption(flag, dest=dest, help=help_text.replace("%", "%%"), **kwargs)
        parser.addini(dest, help=help_text, type=ini_type, default=ini_default)

    option(
        "",
        "bool",
        "Run every test in place on a private overlay of the project tree",
        False,
        action="store_const",
        const=True,
        default=None,
    )
    # argparse only lists these (its %(choices)s); Settings checks the value, in its own words.
    group.addoption(
        "--overlay-backend",
        dest="overlay_backend",
        help="Overlay backend: %(choices)s (default: auto)",
        metavar="NAME",
        choices=_Listed(backends),
    )
    parser.addini(
        "overlay_backend",
        help=f"Overlay backend: {', '.join((AUTO, *BUILTIN_BACKENDS))} or one a plugin "
        "registers (default: auto)",
        type="string",
        default="auto",
    )
    option(
        "lowers",
        "paths",
        "Lower layer directory, topmost first; repeatable (default: the project root)",
        [],
        flag="--overlay-lower",
        metavar="DIR",
        action="append",
    )
    option(
        "userns",
        "string",
        "When an ordinary user's run enters its user namespace: lazy (when a test needs an "
        "overlay) or early (at startup, before any library can start threads)",
        "lazy",
        metavar="WHEN",
    )
    option(
        "keep",
        "string",
        "Which tests' upper layers to keep for `pytest-overlay`: failed, all or none "
        "(default: failed)",
        "failed",
        metavar="WHICH",
    )
    option(
        "keep-count",
        "string",
        "How many runs of kept layers to retain (default: 3)",
        "3",
        metavar="N",
    )
    option(
        "ignore",
        "linelist",
        "Glob of paths never reported as changes, matched against each path component or "
        "the whole relative path; repeatable (adds to the defaults)",
        [],
        metavar="GLOB",
        action="append",
    )
    option(
        "diff-lines",
        "string",
        "Lines of unified diff in a failure report before it is cut short; 0 shows all "
        "(default: 200; -v shows five times as many, -vv all)",
        "200",
        metavar="N",
    )
    option(
        "rebuild",
        "bool",
        "Rebuild every snapshot layer once in this run, whatever the cache holds",
        False,
        action="store_const",
        const=True,
        default=None,
    )
    option(
        "layer-dir",
        "string",
        "Where snapshot layers are cached (default: ~/.cache/pytest-overlay/layers/<project>); "
        "must be outside the project tree",
        "",
        metavar="DIR",
    )
    option(
        "upper-size",
        "string",
        "Size limit of each test's upper layer on the kernel backend, as tmpfs takes it "
        "(e.g. 512M, 2G, 1T, 10%; default: the tmpfs default, half the memory)",
        "",
        metavar="SIZE",
    )
    option(
        "passthrough",
        "paths",
        "Directory inside the project that in-place mode leaves writable on the real disk, "
        "existing or created by a test; repeatable (pytest's basetemp always is, and pytest's "
        "cache reaches the disk after each test)",
        [],
        metavar="DIR",
        action="append",
    )
    option(
        "update",
        "bool",
        "Write missing golden records of tests' effects and rewrite changed ones; remove "
        "records no collected test claims (see docs/golden.md)",
        False,
        action="store_const",
        const=True,
        default=None,
    )
    option(
        "golden-ignore",
        "linelist",
        "Glob of paths left out of golden records, matched as overlay_ignore is; repeatable",
        [],
        metavar="GLOB",
        action="append",
    )
    parser.addini(
        "overlay_golden_replace",
        type="linelist",
        default=[],
        help="Normaliser of golden records: 'REGEX => REPLACEMENT', one a line, applied to "
        "text content and symbolic link targets",
    )
    parser.addini(
        "overlay_golden_timestamps",
        type="bool",
        default=False,
        help="Replace ISO 8601 date-times in golden records' text by <timestamp>",
    )
    option(
        "tool-state",
        "string",
        "In place, whether tools' state in the project (.hypothesis, .benchmarks, .coverage*) "
        "reaches the disk: disk or discard (default: disk)",
        "disk",
        metavar="WHERE",
    )
    add_hermetic_options(option)


@dataclass(frozen=True)
class Settings:
    """The user's choices: the command line beats the ini file, a marker beats both."""

    backend: str = "auto"
    lowers: tuple[Path, ...] = ()
    userns: Userns = "lazy"
    inplace: bool = False
    keep: Keep = "failed"
    keep_count: int = 3
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    diff_lines: int = 200
    passthrough: tuple[Path, ...] = ()
    """Pass-through directories, existing or not; with tool_state "disk", also the
    :data:`TOOL_STATE_BOUND` directories of the project."""
    carried: tuple[Path, ...] = ()
    """In place, directories not bound whose writes are copied to the disk after each test
    (see :mod:`._toolstate`): with tool_state "disk", the other :data:`TOOL_STATE_DIRS` of the
    project, unless passed through by name."""
    carry_files: tuple[str, ...] = ()
    """Globs of files of the project root that a test's writes carry to the disk."""
    rebuild: bool = False
    upper_size: str = ""
    layer_dir: Path | None = None
    update: bool = False
    """Write and rewrite golden records, and remove unused ones (``--overlay-update``)."""
    golden_ignore: tuple[str, ...] = ()
    golden_replace: tuple[tuple[str, str], ...] = ()
    golden_timestamps: bool = False
    hermetic: Hermetic = field(default_factory=Hermetic)
    """In place: more sandboxed directories, the writes report, strict mode (_hermetic.py)."""

    @classmethod
    def from_config(cls, config: pytest.Config, backends: Sequence[str]) -> Settings:
        """Parse and validate; a mistake is a usage error that names the fix.

        :param backends: the names ``--overlay-backend`` accepts (the registry's choices).
        """
        root = config.rootpath

        def value(name: str) -> Any:
            given = config.getoption(name)
            return config.getini(name) if given is None else given

        backend = _choice(value("overlay_backend"), backends, "backend", "overlay backend")
        lowers = resolve_lowers(value("overlay_lowers"), root, "--overlay-lower / overlay_lowers")
        passthrough = resolve_lowers(
            value("overlay_passthrough"),
            root,
            "--overlay-passthrough / overlay_passthrough",
            what="pass-through directory",
            check_overlap=False,
            may_be_missing=True,
        )
        tool_state = _choice(value("overlay_tool_state"), TOOL_STATE_CHOICES, "tool-state")
        project = (lowers or (root,))[0]
        carried: tuple[Path, ...] = ()
        if tool_state == "disk":
            defaults = [project / name for name in TOOL_STATE_DIRS]
            bound = [p for p in defaults if p.name in TOOL_STATE_BOUND]
            passthrough += tuple(p for p in bound if p not in passthrough)
            carried = tuple(p for p in defaults if p not in passthrough)
        inplace = bool(value("overlay"))
        return cls(
            backend=backend,
            lowers=lowers or (root,),
            userns=_choice(value("overlay_userns"), USERNS_CHOICES, "userns"),
            inplace=inplace,
            keep=_choice(value("overlay_keep"), KEEP_CHOICES, "keep"),
            keep_count=_number(value("overlay_keep_count"), "keep-count"),
            ignore=DEFAULT_IGNORE + tuple(str(p) for p in value("overlay_ignore") or ()),
            diff_lines=_number(value("overlay_diff_lines"), "diff-lines"),
            passthrough=passthrough,
            carried=carried,
            carry_files=TOOL_STATE_FILES if tool_state == "disk" else (),
            rebuild=bool(value("overlay_rebuild")),
            upper_size=_size(value("overlay_upper_size")),
            layer_dir=_layer_dir(value("overlay_layer_dir"), root),
            update=bool(value("overlay_update")),
            golden_ignore=tuple(str(p) for p in value("overlay_golden_ignore") or ()),
            golden_replace=_replacements(config.getini("overlay_golden_replace")),
            golden_timestamps=bool(config.getini("overlay_golden_timestamps")),
            hermetic=parse_hermetic(config, inplace=inplace, lowers=lowers or (root,)),
        )


def _replacements(lines: Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in lines:
        try:
            pairs.append(parse_replacement(str(line)))
        except ValueError as exc:
            raise pytest.UsageError(f"overlay_golden_replace: {exc}") from None
    return tuple(pairs)


def parse_replacement(line: str) -> tuple[str, str]:
    """``REGEX => REPLACEMENT`` (the ini form of a golden normaliser) as a pair.

    :raises ValueError: with what is wrong, if *line* is not of that form or the regex is bad.
    """
    pattern, arrow, repl = line.rpartition(" => ")
    if not arrow or not pattern.strip():
        raise ValueError(f"{line!r} is not of the form 'REGEX => REPLACEMENT'")
    check_regex(pattern.strip())
    return pattern.strip(), repl.strip()


def check_regex(pattern: str) -> None:
    """:raises ValueError: naming the mistake, if *pattern* is not a regular expression."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None


def _size(raw: object) -> str:
    text = str(raw or "").strip()
    # tmpfs takes a byte count with a binary suffix up to exabytes, or a share of the memory.
    if text and not re.fullmatch(r"[0-9]+[kKmMgGtTpPeE%]?", text):
        raise pytest.UsageError(
            f"--overlay-upper-size / overlay_upper_size: {text!r} is not a size; write it as "
            "tmpfs does: a number of bytes with k, m, g or t after it, or a percentage of the "
            "memory, such as 512M, 2G, 1T or 10%"
        )
    return text


def _layer_dir(raw: object, root: Path) -> Path | None:
    if not raw:
        return None
    path = Path(os.path.expanduser(str(raw)))
    path = path if path.is_absolute() else (root / path).resolve()
    if path == root or root in path.parents:
        raise pytest.UsageError(
            f"--overlay-layer-dir / overlay_layer_dir: {path} is inside the project tree; "
            "overlayfs refuses a lower layer inside another, so choose a directory outside it"
        )
    return path


def _choice(raw: object, choices: Sequence[_Word], name: str, what: str = "value") -> _Word:
    text = str(raw or choices[0]).strip()
    for choice in choices:
        if text == choice:
            return choice  # the Literal's own word, typed as one
    raise pytest.UsageError(
        f"--overlay-{name} / overlay_{name.replace('-', '_')}: unknown {what} {text!r}; "
        f"choose one of {', '.join(choices)}"
    )


def _number(raw: object, name: str) -> int:
    try:
        number = int(str(raw).strip())
    except ValueError:
        number = -1
    if number < 0:
        raise pytest.UsageError(
            f"--overlay-{name} / overlay_{name.replace('-', '_')}: expected a whole number "
            f"of 0 or more, got {raw!r}"
        )
    return number


def resolve_lowers(
    raw: Sequence[str | Path] | None,
    root: Path,
    where: str,
    *,
    what: str = "lower layer",
    check_overlap: bool = True,
    may_be_missing: bool = False,
) -> tuple[Path, ...]:
    """Absolute, existing directories; relative paths are taken from the project root.

    With *may_be_missing*, a path that does not exist yet is accepted (a test may create it).
    """
    resolved: list[Path] = []
    for item in raw or ():
        path = Path(item) if Path(item).is_absolute() else (root / Path(item)).resolve()
        if may_be_missing and not os.path.lexists(path):
            resolved.append(path)
            continue
        if not path.exists():
            raise pytest.UsageError(
                f"{where}: {what} {str(item)!r} does not exist (looked at {path}); "
                "give an existing directory, relative to the project root or absolute"
            )
        if not path.is_dir():
            raise pytest.UsageError(
                f"{where}: {what} {str(item)!r} is not a directory ({path}); "
                f"a {what} must be a directory"
            )
        for other in resolved if check_overlap else ():
            if other == path or other in path.parents or path in other.parents:
                raise pytest.UsageError(
                    f"{where}: lower layers {str(other)!r} and {str(path)!r} overlap; "
                    "overlayfs refuses a layer inside another, so give separate directories"
                )
        resolved.append(path)
    return tuple(resolved)


def make_ignore(patterns: Sequence[str], prefixes: Sequence[str] = ()) -> Callable[[str], bool]:
    """A predicate on relative POSIX paths: matched by a glob, or inside one of *prefixes*."""
    component_globs = [p for p in patterns if "/" not in p]
    path_globs = [p for p in patterns if "/" in p]

    def ignored(rel: str) -> bool:
        if any(rel == p or rel.startswith(p + "/") for p in prefixes):
            return True
        parts = rel.split("/")
        if any(fnmatch.fnmatchcase(part, glob) for part in parts for glob in component_globs):
            return True
        return any(fnmatch.fnmatchcase(rel, glob) for glob in path_globs)

    return ignored


@dataclass(frozen=True)
class MarkerChoices:
    """What an ``overlay`` marker asks for; ``None`` leaves the setting to the options."""

    lowers: tuple[str, ...] | None = None
    backend: str | None = None
    layers: tuple[str, ...] = ()

    def lowers_for(self, settings: Settings, root: Path) -> tuple[Path, ...]:
        """The lower directories of a test: the marker's, or else the options'."""
        if self.lowers is None:
            return settings.lowers
        return resolve_lowers(self.lowers, root, "overlay marker")


def marker_signature(backends: Sequence[str]) -> str:
    """The arguments the ``overlay`` marker accepts, for its error messages."""
    return (
        "lowers=<a directory or a list of them, relative to the project root>, "
        f"backend=<{' | '.join(backends)}>, layers=<a list of fixture names>"
    )


class MarkerError(ValueError):
    """An ``overlay`` marker written wrong; the message says what and how to write it."""


def parse_marker(
    args: Sequence[object], kwargs: dict[str, object], backends: Sequence[str]
) -> MarkerChoices:
    """Validate an ``overlay`` marker's arguments; raises :class:`MarkerError`.

    :param backends: the names ``backend=`` accepts (the registry's choices).
    """
    if args:
        shown = ", ".join(repr(a) for a in args)
        raise MarkerError(
            f"positional arguments ({shown}) are not accepted; name them, as in "
            f"overlay(lowers=[{args[0]!r}])"
        )
    for name in kwargs:
        if name not in MARKER_ARGUMENTS:
            import difflib  # only on this error path: the module is imported by every run

            close = difflib.get_close_matches(name, MARKER_ARGUMENTS, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise MarkerError(f"unknown argument {name}={kwargs[name]!r}{hint}")
    backend = kwargs.get("backend")
    if backend is not None and backend not in backends:
        raise MarkerError(
            f"backend={backend!r} is not a backend; choose one of {', '.join(backends)}"
        )
    return MarkerChoices(
        lowers=_names_or_none(kwargs, "lowers", "a directory or a list of directories"),
        backend=None if backend in (None, AUTO) else str(backend),
        layers=_names_or_none(kwargs, "layers", "a fixture name or a list of them") or (),
    )


def _names_or_none(kwargs: dict[str, object], name: str, what: str) -> tuple[str, ...] | None:
    raw = kwargs.get(name)
    if raw is None:
        return None
    items = [raw] if isinstance(raw, (str, os.PathLike)) else raw
    if isinstance(items, (list, tuple)) and all(
        isinstance(item, (str, os.PathLike)) for item in items
    ):
        return tuple(os.fspath(item) for item in items)
    raise MarkerError(f"{name}={raw!r} is a {type(raw).__name__}; {name}= takes {what}")
