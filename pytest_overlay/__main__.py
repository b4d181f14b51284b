"""``python -m pytest_overlay``: the ``pytest-overlay`` command (see :mod:`pytest_overlay._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
