"""Names of directories: derived from test names, and the id of a run."""

from __future__ import annotations

import datetime as _dt
import os
import re

_NOT_WORD = re.compile(r"\W")


def safe_label(name: str, limit: int = 30) -> str:
    """A short directory name derived from a test name, the way ``tmp_path`` names them
    (cut first: each character is replaced by one, and a parametrized name can be long)."""
    return _NOT_WORD.sub("_", name[:limit]) or "test"


def name_in_module(nodeid: str, name: str) -> str:
    """A test's name within its module (``test_x[param]``, ``TestClass::test_x``): what its
    golden record is named after."""
    _, sep, rest = nodeid.partition("::")
    return rest if sep else name


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A sortable, unique id for a run (xdist workers share their controller's)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{os.getpid()}"
