"""Every key into ``config.stash`` and ``item.stash``, in one place: light, so the thin plugin
module can hold them (the types they hold are only named for mypy)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._goldenrun import Outcome, _TestRecord
    from ._registry import BackendRegistry
    from ._runtest import TestState
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

# --- per test (item.stash) ---
# A wrong overlay marker, failed with at setup (an xdist worker cannot stop the run with it).
marker_problem_key = pytest.StashKey[str]()
# In place: the tests that pytest_runtest_setup sandboxes (the others have IN_PLACE_FIXTURE).
in_place_by_hook_key = pytest.StashKey[bool]()
# Whether the test has the overlay_golden marker (asked five times per test: looked up once).
golden_item_key = pytest.StashKey[bool]()
# What a running test holds: its mounts, its phases' outcomes (_runtest.TestState).
state_key: pytest.StashKey[TestState] = pytest.StashKey()
# A golden test's record, read at setup, compared after the call, written after teardown.
golden_test_key: pytest.StashKey[_TestRecord] = pytest.StashKey()
# --overlay-report=writes: what the test wrote outside its tmp_path; and whether strict mode
# already failed it (no second error in teardown).
writes_key = pytest.StashKey[list[dict[str, str]]]()
strict_flagged_key = pytest.StashKey[bool]()

# --- per run (config.stash), of the machinery ---
# How many tests' leftovers the summary reported (the first few in full, the rest counted).
reports_key = pytest.StashKey[list[int]]()
# In place: each sandboxed directory's device number on the real disk (_contain).
real_devices_key = pytest.StashKey[dict[Path, int]]()
# In place: the problems of the setups that failed in a row (_contain.SetupFailures).
setup_failures_key = pytest.StashKey[list[str]]()
