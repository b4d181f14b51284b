"""The plugin's keys into ``config.stash``: light, so the thin plugin module can hold them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._goldenrun import Outcome
    from ._registry import BackendRegistry
    from ._session import OverlaySession
    from ._settings import Settings

settings_key: pytest.StashKey[Settings] = pytest.StashKey()
run_id_key = pytest.StashKey[str]()
# The backends this run can use, by name (pytest_overlay_register_backends).
registry_key: pytest.StashKey[BackendRegistry] = pytest.StashKey()
# Set once the plugin is in use in this process; absent, the plugin has done nothing.
session_key: pytest.StashKey[OverlaySession] = pytest.StashKey()
# The report header already showed the backend (an option asked for the plugin).
header_shown_key = pytest.StashKey[bool]()
# What xdist workers told the controller: their notices, and whether they used the plugin.
worker_notices_key = pytest.StashKey[list[str]]()
# Golden records: every collected module, and the golden tests' names by module (the thin
# plugin notes them; the records are read only if a golden test or a record directory exists).
golden_modules_key = pytest.StashKey[set[Path]]()
golden_tests_key = pytest.StashKey[dict[Path, set[str]]]()
# What this process did to golden records (and, on an xdist controller, what its workers did).
golden_outcome_key: pytest.StashKey[Outcome] = pytest.StashKey()
