"""What the release-shape test (``tests/test_package.py``) installs offline: a wheelhouse.

``python -m tests._wheelhouse fetch DIR`` (which ``.ci/run`` calls) downloads, from the package
registry, the build requirements and the runtime dependencies of pytest-overlay for every
Python in :data:`PYTHONS`, into a cache directory named by ``PYTEST_OVERLAY_WHEELHOUSE``.  At
test time ``python -m build`` and ``pip install`` read only that directory
(``--no-index --find-links``): nothing is downloaded while the suite runs.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["PYTHONS", "WHEELHOUSE_ENV", "find_python", "offline_pip_env", "wheelhouse_reason"]

WHEELHOUSE_ENV = "PYTEST_OVERLAY_WHEELHOUSE"
ROOT = Path(__file__).resolve().parents[1]

PYTHONS = ("3.10", "3.13")
"""The oldest and the newest Python the package claims: the wheel is installed into each."""


def find_python(version: str) -> str | None:
    """An interpreter for *version* (``"3.10"``): pyenv's newest patch release, else PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    found = glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / "python"))

    def patch(path: str) -> int:
        match = re.search(rf"/{re.escape(version)}\.(\d+)/", path)
        return int(match.group(1)) if match else -1

    found = [path for path in found if patch(path) >= 0]
    if found:
        return max(found, key=patch)
    return shutil.which(f"python{version}")


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def build_requirements() -> list[str]:
    """``[build-system] requires`` from pyproject.toml."""
    block = re.search(r"^\[build-system\]\n(.*?)(?=^\[)", _pyproject(), re.M | re.S)
    assert block is not None, "pyproject.toml has no [build-system] table"
    requires = re.search(r"^requires = \[(.*?)\]", block.group(1), re.M | re.S)
    assert requires is not None, "pyproject.toml's [build-system] has no requires"
    return re.findall(r'"([^"]+)"', requires.group(1))


def dependencies() -> list[str]:
    """``[project] dependencies`` from pyproject.toml (a regular expression, not a TOML
    parser: ``tomllib`` is missing from Python 3.10, the oldest this runs on)."""
    block = re.search(r"^dependencies = \[(.*?)^\]", _pyproject(), re.M | re.S)
    assert block is not None, "pyproject.toml's [project] has no dependencies"
    lines = [line.split("#", 1)[0] for line in block.group(1).splitlines()]
    return re.findall(r'"([^"]+)"', "\n".join(lines))


def wheelhouse() -> Path | None:
    """The wheelhouse directory, or None when ``PYTEST_OVERLAY_WHEELHOUSE`` is not set."""
    value = os.environ.get(WHEELHOUSE_ENV)
    return Path(value) if value else None


def wheelhouse_reason() -> str | None:
    """Why the release-shape tests cannot run offline here, or None."""
    directory = wheelhouse()
    if directory is None:
        return f"{WHEELHOUSE_ENV} is not set (run: python -m tests._wheelhouse fetch DIR)"
    if not any(directory.glob("*.whl")):
        return f"{directory} holds no wheels (run: python -m tests._wheelhouse fetch {directory})"
    return None


def offline_pip_env(directory: Path) -> dict[str, str]:
    """The environment in which pip, and ``python -m build``'s isolated pip, read only
    *directory*."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(directory),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def fetch(directory: Path) -> None:
    """Download the build requirements and the dependencies, as wheels, for every Python."""
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(directory)]
    # `build` runs setuptools in an isolated venv of the running Python.
    subprocess.run([*pip, "--only-binary", ":all:", *build_requirements()], check=True)
    for version in PYTHONS:
        python = find_python(version)
        if python is None:
            sys.exit(f"no Python {version} found (pyenv or python{version} on PATH)")
        command = [python, "-m", "pip", "download", "-q", "-d", str(directory)]
        subprocess.run([*command, "--only-binary", ":all:", *dependencies()], check=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "fetch":
        sys.exit("usage: python -m tests._wheelhouse fetch DIR")
    fetch(Path(sys.argv[2]))
