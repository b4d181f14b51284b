"""Directory names derived from test names."""

from __future__ import annotations

import re


def safe_label(name: str, limit: int = 30) -> str:
    """A short directory name derived from a test name, the way ``tmp_path`` names them."""
    return re.sub(r"[\W]", "_", name)[:limit] or "test"
