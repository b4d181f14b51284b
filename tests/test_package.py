"""The release shape: what ``python -m build`` makes passes ``twine check``, and the wheel,
installed the README's way into a fresh venv of the oldest and the newest Python the package
claims, runs the destructive sample suite with the real tree unchanged.

Offline: the build requirements and the dependencies come from the wheelhouse ``.ci/run``
fetched (``tests/_wheelhouse.py``); a missing wheelhouse or Python fails under
``PYTEST_OVERLAY_REQUIRE=all``.  The build runs on a copy of the checkout's tracked files, as
setuptools writes ``build/`` and ``*.egg-info`` into the tree it builds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_overlay._version import __version__
from tests._gates import gate, gate_backend
from tests._sample_project import SUITE_TESTS, build_project, tree_digest
from tests._wheelhouse import (
    PYTHONS,
    ROOT,
    dependencies,
    find_python,
    offline_pip_env,
    wheelhouse,
    wheelhouse_reason,
)


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    wheelhouse: Path


def _copy_checkout(into: Path) -> Path:
    """The checkout's tracked files (as they are in the work tree), copied into *into*."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted in the work tree, not yet committed
            continue
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return into


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    gate("wheelhouse", wheelhouse_reason())
    house = wheelhouse()
    assert house is not None
    base = tmp_path_factory.mktemp("release")
    checkout = _copy_checkout(base / "checkout")
    out = base / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(checkout)],
        env=offline_pip_env(house),
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel, house)


def test_build_makes_an_sdist_and_a_wheel_of_this_version(dist: Dist) -> None:
    assert dist.sdist.name == f"pytest_overlay-{__version__}.tar.gz"
    assert dist.wheel.name == f"pytest_overlay-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"pytest_overlay-{__version__}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    for module in ("plugin.py", "py.typed", "_backends/copying.py", "_fuse/server.py"):
        assert f"pytest_overlay/{module}" in names
    assert f"{info}/licenses/LICENSE" in names
    assert not any(name.startswith("tests/") for name in names), "the suite is not shipped"
    assert "overlay = pytest_overlay.plugin" in entry_points
    with tarfile.open(dist.sdist) as sdist:
        top = f"pytest_overlay-{__version__}"
        members = {member.name.removeprefix(f"{top}/") for member in sdist.getmembers()}
    assert {"README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "docs/index.md"} <= members


def test_twine_check_passes(dist: Dist) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def _readme_install_command() -> list[str]:
    """The README's install command, which installs the built wheel."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^\$ (python -m pip install dist/\S+\.whl)$", readme, re.M)
    assert match is not None, "the README's install command installs dist/*.whl"
    return match.group(1).split()


def _junit_outcomes(path: Path) -> dict[str, int]:
    # Our own pytest's report, not untrusted input.
    suite = ET.parse(path).getroot().find("testsuite")  # noqa: S314
    assert suite is not None
    return {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}


@pytest.mark.parametrize("version", PYTHONS)
def test_wheel_runs_the_sample_suite_in_a_fresh_venv(
    dist: Dist, version: str, tmp_path: Path
) -> None:
    python = find_python(version)
    gate(f"python{version}", None if python else f"no Python {version} (pyenv or PATH)")
    assert python is not None
    gate_backend("kernel")  # auto picks the kernel as root: the sample suite runs on it
    env = offline_pip_env(dist.wheelhouse)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env)
    venv_python = str(venv / "bin" / "python")

    # The README's command, run where `python -m build` left the wheel, offline.
    (tmp_path / "dist").mkdir()
    shutil.copy2(dist.wheel, tmp_path / "dist")
    python_word, *pip_install = _readme_install_command()
    assert python_word == "python"
    install = [venv_python, *pip_install[:-1], *map(str, (tmp_path / "dist").glob("*.whl"))]
    installed = subprocess.run(install, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    where = subprocess.run(
        [venv_python, "-c", "import pytest_overlay; print(pytest_overlay.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), "the plugin must come from the venv"

    project = tmp_path / "project"
    project.mkdir()
    build_project(project)
    before = tree_digest(project)
    report = tmp_path / "junit.xml"
    run = subprocess.run(
        [venv_python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "overlay: backend=kernel" in run.stdout, run.stdout
    assert _junit_outcomes(report) == {
        "tests": SUITE_TESTS,
        "failures": 0,
        "errors": 0,
        "skipped": 0,
    }
    assert tree_digest(project) == before, "the real tree was modified"

    cli = subprocess.run(
        [str(venv / "bin" / "pytest-overlay"), "--help"], env=env, capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr


def test_pytest_floor_is_the_one_the_matrix_proves() -> None:
    """pyproject.toml's ``pytest>=`` is noxfile.py's ``PYTEST_FLOOR``, the floor it tests."""
    noxfile = (ROOT / "noxfile.py").read_text()
    match = re.search(r'^PYTEST_FLOOR = "([^"]+)"$', noxfile, re.M)
    assert match is not None
    floor = match.group(1).removesuffix(".0")
    assert f"pytest>={floor}" in dependencies()
