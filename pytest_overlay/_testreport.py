"""What a test's changes look like to the user: the failure report's section (cut, encoded,
following ``--tb`` and ``-v``), the report of every view of a test, and the end-of-run line
about kept layers.

Every test's outcome passes through :func:`failure_report`, so this module is imported in every
run that uses the plugin; the report's own code (:mod:`._report`) only once a test fails."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import _namespaces
from ._errors import path_too_long
from ._keep import Store
from ._keys import state_key
from ._render import ReportOptions, count_changes
from ._safetext import safe_path
from ._storepath import cache_dir_of, store_dir

if TYPE_CHECKING:
    from ._backends import Mount
    from ._diff import TreeDiff
    from ._runtest import TestState
    from ._session import OverlaySession

SECTION = "overlay changes"


def render_changes_report(mount: Mount, diff: TreeDiff, options: ReportOptions) -> str:
    """The failure report of a view: change list, then unified diffs."""
    # Imported here: a run whose tests all pass never needs the report's code.
    from ._layers import LayerStack
    from ._report import render_report

    stack = LayerStack(mount.lowers)

    def old(rel: str) -> Path | None:
        entry = stack.lookup(rel)
        return None if entry is None else entry.real_path

    def new(rel: str) -> Path | None:
        path = mount.new_root / rel
        return path if os.path.lexists(path) else None

    return render_report(diff, old, new, options)


def all_targets_report(state: TestState, diffs: list[TreeDiff], options: ReportOptions) -> str:
    """The report of every view of the test, given their *diffs*.

    One view (the fixture, or in place with one sandboxed directory): its report as it is.
    In place with several: one block per directory, headed by its path.
    """
    texts = [
        render_changes_report(mount, diff, options) if diff else "(no changes)"
        for mount, diff in zip(state.mounts, diffs, strict=True)
    ]
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(
        f"changes under {safe_path(str(target))}:\n{text}"
        for target, text in zip(state.targets, texts, strict=True)
    )


def failure_section(
    item: pytest.Item,
    state: TestState,
    session: OverlaySession,
    *,
    color: bool,
    encoding: str = "utf-8",
) -> tuple[str, str] | None:
    """The report section that shows a failed test's changes, as pytest's ``--tb`` asks.

    ``--tb=no`` shows none, ``--tb=line`` one line counting the changes, ``--tb=short`` the
    change list alone; each is cut at ``overlay_diff_lines`` (times 5 with ``-v``, whole with
    ``-vv``) and ends with a line counting what was left out.  The text is made encodable in
    *encoding*, the terminal's: pytest writes a section it cannot encode as one line of
    escapes.  What the failure itself means on the test's backend (its ``failure_note``) is
    put before it by the caller.
    """
    style = item.config.getoption("tbstyle", "auto")
    if style == "no":
        return None
    verbosity = item.config.get_verbosity()
    limit: int | None = session.settings.diff_lines
    if limit == 0 or verbosity >= 2:
        limit = None
    elif verbosity == 1 and limit is not None:
        limit *= 5
    hint = f"`pytest-overlay show '{item.nodeid}'`"
    try:
        options = ReportOptions(
            max_lines=limit, color=color, more_hint=hint, details=style != "short"
        )
        with _namespaces.privileged():
            diffs = [mount.diff(state.ignore) for mount in state.mounts]
            if style == "line":
                text = f"{count_changes(diffs)}; {hint} shows them"
            else:
                text = all_targets_report(state, diffs, options)
    except Exception as exc:
        text = f"(could not compute the changes: {describe_error(exc)})"
    return f"{SECTION} ({state.backend})", _encodable(text, encoding)


def _encodable(text: str, encoding: str) -> str:
    """*text* with what *encoding* cannot hold as backslash escapes, its lines kept."""
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: leave it to pytest
        return text


def describe_error(exc: Exception) -> str:
    """An exception for a report line: a path beyond PATH_MAX explained, not printed whole."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return (
            f"{path_too_long('view')}, and the diff reaches files by path; inspect the view "
            "while the test runs instead"
        )
    return f"{type(exc).__name__}: {exc}"


def kept_summary(config: pytest.Config, session: OverlaySession) -> str | None:
    """The end-of-run line saying how many layers this run kept, where, and how to look."""
    if session.run_id is None:
        return None
    store = Store(store_dir(cache_dir_of(config)))
    count = sum(
        1 for test_dir in store.test_dirs(session.run_id) if (test_dir / "record.json").exists()
    )
    if not count:
        return None
    where = store.runs_dir / session.run_id
    with contextlib.suppress(ValueError):
        where = where.relative_to(Path.cwd())
    layers = "layer" if count == 1 else "layers"
    return (
        f"kept {count} {layers} in {where}; inspect them with `pytest-overlay list` and "
        "`pytest-overlay show <part of a node id>`"
    )


def failure_report(
    item: pytest.Item, session: OverlaySession, when: str, outcome: str, error: BaseException | None
) -> tuple[str, str] | None:
    """Record a phase's outcome; for a failed setup or call, the section of its changes."""
    state = item.stash.get(state_key, None)
    if state is None:
        return None
    state.phases[when] = outcome
    if outcome != "failed" or when not in ("setup", "call"):
        return None
    section = failure_section(item, state, session, color=_color(item), encoding=_encoding(item))
    if section is None:
        return None
    title, text = section
    backend = session.created(state.backend)
    note = backend.failure_note(error) if backend is not None else ""
    return title, f"{note}\n\n{text}" if note else text


def _color(item: pytest.Item) -> bool:
    inherited = getattr(item.config, "workerinput", {}).get("pytest_overlay")
    if inherited is not None and "color" in inherited:
        return bool(inherited["color"])
    return item.config.get_terminal_writer().hasmarkup


def terminal_encoding(config: pytest.Config) -> str:
    """The encoding pytest writes its report in (its terminal writer's file's)."""
    # TerminalWriter has no public attribute for it; its file is sys.stdout as pytest found it.
    file = getattr(config.get_terminal_writer(), "_file", None)
    return getattr(file, "encoding", None) or "utf-8"


def _encoding(item: pytest.Item) -> str:
    inherited = getattr(item.config, "workerinput", {}).get("pytest_overlay")
    if inherited is not None and "encoding" in inherited:
        return str(inherited["encoding"])
    return terminal_encoding(item.config)
