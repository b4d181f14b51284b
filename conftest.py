"""Project-wide test configuration for pytest-overlay's own suite."""

from __future__ import annotations

import os

import pytest

from tests._gates import REQUIRE_ENV

# The suite reads the output of the pytest runs it starts, and pytest fits that output to
# COLUMNS: a wide CI terminal un-truncates the short summary and repeats what the
# assertions count. Children get pytest's default width whatever the terminal is.
os.environ["COLUMNS"] = "80"


def pytest_report_header(config: pytest.Config) -> str:
    required = os.environ.get(REQUIRE_ENV) or "none (missing capabilities skip)"
    return f"pytest-overlay self-test: required capabilities: {required}"
