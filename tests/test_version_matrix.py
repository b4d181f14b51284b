"""The corners of the version matrix (noxfile.py): Python 3.10 with pytest's floor and 3.13
with the latest pytest, run from the suite so that `.ci/run` keeps one test command.

`.ci/run` prepares the two venvs in its install phase (``nox -t compat --install-only``, from
the package registry); this test then runs them with ``-R`` (reuse, install nothing), so
nothing is downloaded at test time.  A venv holding an older copy of the package than the
checkout is reported, not run: its result would be about code that no longer exists.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from tests._gates import gate
from tests._run import run

ROOT = Path(__file__).resolve().parent.parent
VENVS = {"compat-3-10-floor": "3.10", "compat-3-13-latest": "3.13"}
PREPARE = "python -m nox -t compat --install-only"


def _digest(package: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        hasher.update(path.relative_to(package).as_posix().encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def _stale_reason() -> str | None:
    """Why the prepared venvs cannot be run as they are, or None."""
    checkout = _digest(ROOT / "pytest_overlay")
    for name, python in VENVS.items():
        installed = ROOT / ".nox" / name / "lib" / f"python{python}" / "site-packages"
        package = installed / "pytest_overlay"
        if not package.is_dir():
            return f"no prepared venv {name} (run: {PREPARE})"
        if _digest(package) != checkout:
            return f"venv {name} holds an older pytest-overlay than the checkout (run: {PREPARE})"
    return None


def test_compat_corners_pass() -> None:
    gate("matrix", _stale_reason())
    done = run([sys.executable, "-m", "nox", "-t", "compat", "-R"], cwd=ROOT, timeout=1800)
    output = done.output
    assert done.returncode == 0, output[-6000:]
    for session in ("compat-3.10(floor)", "compat-3.13(latest)"):
        assert f"Session {session} was successful" in output, output[-6000:]
