"""Public warning categories."""

from __future__ import annotations

from typing import final

import pytest

__all__ = ["OverlayWarning"]


@final
class OverlayWarning(pytest.PytestWarning):
    """Something went wrong that did not fail the test, such as a mount still in use."""

    __module__ = "pytest_overlay"
