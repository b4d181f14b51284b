"""The words the options and the marker accept: one home, standard library only.

Both the thin plugin module (imported in every pytest run) and the machinery behind it read
these, so they live apart from anything that is costly to import.
"""

from __future__ import annotations

from typing import Literal, get_args

Keep = Literal["failed", "all", "none"]
"""Which tests' upper layers are kept (``overlay_keep``); the first is the default."""
KEEP_CHOICES: tuple[Keep, ...] = get_args(Keep)
Userns = Literal["lazy", "early"]
"""When an ordinary user's run enters its user namespace (``overlay_userns``)."""
USERNS_CHOICES: tuple[Userns, ...] = get_args(Userns)
ToolState = Literal["disk", "discard"]
"""What becomes of tools' state written in place (``overlay_tool_state``)."""
TOOL_STATE_CHOICES: tuple[ToolState, ...] = get_args(ToolState)
TOOL_STATE_DIRS = (".hypothesis", ".benchmarks")
"""Directories of the project whose writes reach the disk in place by default
(``overlay_tool_state``): Hypothesis's example database and pytest-benchmark's saved runs."""
TOOL_STATE_BOUND = (".hypothesis",)
"""Those of :data:`TOOL_STATE_DIRS` passed through (bound into every view): Hypothesis writes
its database while tests run, and deletes from it.  The others are *carried*: pytest-benchmark
writes ``.benchmarks`` once the run is over, after the views are gone, so what a test itself
writes there is copied to the disk after the test, as for a pass-through directory that does
not exist yet, and a test that writes nothing there costs nothing (a bound directory costs
every test two mount moves in its view's busy check)."""
TOOL_STATE_FILES = (".coverage", ".coverage.*")
"""Files of the project root whose writes reach the disk in place by default: coverage data."""
MARKER_ARGUMENTS = ("lowers", "backend", "layers")
GOLDEN_MARKER = "overlay_golden"
GOLDEN_MARKER_ARGUMENTS = ("ignore", "replace", "timestamps")
RECORDS_DIR = "__effects__"
"""The directory beside a test module that holds its golden records, one subdirectory per
module (see :mod:`pytest_overlay._golden`)."""
