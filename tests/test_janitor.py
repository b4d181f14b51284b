"""The janitor of a private mount namespace while pytest runs normally (``_janitor.py``).

It watches the namespace for as long as a session of the process may mount in it, a session
run in-process inside another one (pytester's inline runs, ``pytest.main``) included, and
nothing of the run outlives pytest: the janitors are killed once the last session has shut
down, and reaped at exit.  That a killed run leaves no mount is ``test_real_suites_kill.py``.
"""

from __future__ import annotations

from pathlib import Path

from tests._gates import gate, kernel_reason
from tests._run import counts, run_pytest
from tests._sample_project import processes_with

# The outer test sees its janitor (a process with the run's marker that is not itself), runs
# a session of its own in-process, and sees the janitor still there.
OUTER = """
import os
from pathlib import Path

import pytest

MARKER = os.environ["JANITOR_MARKER"].encode()


def others():
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if MARKER in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_outer():
    assert others(), "no janitor watches the namespace"
    inner = Path(__file__).parent / "inner"
    args = ["-q", "-p", "no:cacheprovider", "--overlay-backend=copy", "--rootdir", str(inner)]
    assert pytest.main([*args, str(inner)]) == 0
    assert others(), "the inner session's end let the janitor go"
"""
INNER = "def test_inner(overlay_root):\n    (overlay_root / 'x').write_text('x')\n"


def test_an_inline_session_leaves_the_janitor_and_none_outlives_the_run(tmp_path: Path) -> None:
    gate("kernel", kernel_reason())
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "test_inner.py").write_text(INNER)
    (tmp_path / "test_outer.py").write_text(OUTER)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = test_outer.py\n")
    marker = f"JANITOR_MARKER={tmp_path.name}"
    env = {"JANITOR_MARKER": tmp_path.name}
    result = run_pytest(tmp_path, "--overlay", env=env, timeout=120)
    assert counts(result.output) == {"passed": 1}, result.output
    # Killed once the session shut down, reaped at exit: gone when pytest has returned.
    assert processes_with(marker) == []
