"""The plugin's keys into ``config.stash``: light, so the thin plugin module can hold them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._session import OverlaySession
    from ._settings import Settings

settings_key: pytest.StashKey[Settings] = pytest.StashKey()
run_id_key = pytest.StashKey[str]()
# Set once the plugin is in use in this process; absent, the plugin has done nothing.
session_key: pytest.StashKey[OverlaySession] = pytest.StashKey()
# The report header already showed the backend (an option asked for the plugin).
header_shown_key = pytest.StashKey[bool]()
# What xdist workers told the controller: their notices, and whether they used the plugin.
worker_notices_key = pytest.StashKey[list[str]]()
