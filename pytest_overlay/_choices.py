"""The words the options and the marker accept: one home, standard library only.

Both the thin plugin module (imported in every pytest run) and the machinery behind it read
these, so they live apart from anything that is costly to import.
"""

from __future__ import annotations

BACKEND_CHOICES = ("auto", "kernel", "fuse", "copy")
KEEP_CHOICES = ("failed", "all", "none")
USERNS_CHOICES = ("lazy", "early")
TOOL_STATE_CHOICES = ("disk", "discard")
TOOL_STATE_DIRS = (".hypothesis", ".benchmarks")
"""Directories of the project passed through in place by default (``overlay_tool_state``):
Hypothesis's example database and pytest-benchmark's saved runs."""
TOOL_STATE_FILES = (".coverage", ".coverage.*")
"""Files of the project root whose writes reach the disk in place by default: coverage data."""
MARKER_ARGUMENTS = ("lowers", "backend", "layers")
GOLDEN_MARKER = "overlay_golden"
GOLDEN_MARKER_ARGUMENTS = ("ignore", "replace", "timestamps")
RECORDS_DIR = "__effects__"
"""The directory beside a test module that holds its golden records, one subdirectory per
module (see :mod:`pytest_overlay._golden`)."""
