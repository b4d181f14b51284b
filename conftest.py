"""Project-wide test configuration for pytest-overlay's own suite."""

from __future__ import annotations

import os

import pytest

from tests._gates import REQUIRE_ENV


def pytest_report_header(config: pytest.Config) -> str:
    required = os.environ.get(REQUIRE_ENV) or "none (missing capabilities skip)"
    return f"pytest-overlay self-test: required capabilities: {required}"
