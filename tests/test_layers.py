"""Snapshot layers: built once (across runs and xdist workers), stacked, checkpointed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._gates import gate, gate_backend, kernel_reason
from tests._run import Result, counts, run_pytest
from tests._sample_project import LAYER_FIXTURES, tree_digest

CONFTEST = (
    r"""
import os
from pathlib import Path

import pytest

COUNTER = Path(os.environ["LAYER_COUNTER"])


def build_tools(root):
    with open(COUNTER, "a") as f:
        f.write("tools\n")
    (root / "tools").mkdir()
    (root / "tools" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (root / "data.txt").write_text("from the tools layer\n")
    os.unlink(root / "obsolete.txt")


def build_extra(root):
    with open(COUNTER, "a") as f:
        f.write("extra\n")
    assert (root / "tools" / "tool.sh").exists(), "built on top of the tools layer"
    (root / "extra.txt").write_text("extra\n")

"""
    + LAYER_FIXTURES
)

TESTS = r"""
import pytest

pytestmark = pytest.mark.overlay(layers=["tools_layer"])


@pytest.mark.parametrize("i", range(10))
def test_uses_layer(overlay_root, i):
    assert (overlay_root / "tools" / "tool.sh").exists()
    assert (overlay_root / "data.txt").read_text() == "from the tools layer\n"
    assert not (overlay_root / "obsolete.txt").exists()
    assert (overlay_root / "requirements.txt").exists()
    (overlay_root / "tools" / "tool.sh").write_text("changed by a test\n")
    (overlay_root / f"mine{i}").write_text("private\n")
    assert sorted(c.path for c in overlay_root.diff()) == [f"mine{i}", "tools/tool.sh"]
"""

STACKED = r"""
import shutil

import pytest


@pytest.mark.overlay(layers=["extra_layer"])
def test_stacked_and_checkpoints(overlay_root):
    assert (overlay_root / "extra.txt").read_text() == "extra\n"
    assert (overlay_root / "tools" / "tool.sh").exists()
    (overlay_root / "step1.txt").write_text("1\n")
    first = overlay_root.checkpoint()
    assert [(c.kind.letter, c.path) for c in first] == [("A", "step1.txt")]
    (overlay_root / "step1.txt").write_text("one\n")
    shutil.rmtree(overlay_root / "tools")
    (overlay_root / "step2").mkdir()
    second = overlay_root.checkpoint()
    assert [(c.kind.letter, c.path) for c in second] == [
        ("M", "step1.txt"), ("A", "step2"), ("D", "tools"),
    ]
    (overlay_root / "step1.txt").unlink()
    third = overlay_root.checkpoint()
    assert [(c.kind.letter, c.path) for c in third] == [("D", "step1.txt")]
    assert [(c.kind.letter, c.path) for c in overlay_root.diff()] == [
        ("A", "step2"), ("D", "tools"),
    ]
"""


def run(project: Path, counter: Path, cache: Path, *args: str) -> Result:
    """A child pytest in *project* with the layer cache *cache*, each build noted in *counter*."""
    env = {"LAYER_COUNTER": str(counter)}
    return run_pytest(project, f"--overlay-layer-dir={cache}", *args, env=env, timeout=300)


@pytest.fixture
def layered(tmp_path: Path) -> tuple[Path, Path, Path]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_layered.py").write_text(TESTS)
    (project / "requirements.txt").write_text("tool==1\n")
    (project / "obsolete.txt").write_text("old\n")
    (project / "data.txt").write_text("from the project\n")
    return project, tmp_path / "counter", tmp_path / "layers"


@pytest.mark.parametrize("backend", ["kernel", "copy"])
def test_built_once_cached_and_rebuilt_on_change(
    layered: tuple[Path, Path, Path], backend: str
) -> None:
    gate_backend(backend)
    project, counter, cache = layered
    before = tree_digest(project)
    first = run(project, counter, cache, "-n", "2", f"--overlay-backend={backend}")
    assert counts(first.stdout).get("passed") == 10, first.stdout + first.stderr
    assert counter.read_text() == "tools\n"
    assert tree_digest(project) == before
    layer_before = tree_digest(cache)

    second = run(project, counter, cache, f"--overlay-backend={backend}")
    assert counts(second.stdout).get("passed") == 10, second.stdout
    assert counter.read_text() == "tools\n"
    assert tree_digest(cache) == layer_before, "a test changed the cached layer"

    # What a build killed with SIGKILL leaves: its scratch directory.  The next build of
    # that layer removes it; another layer's (here "tools-x") is not its business.
    killed = cache / f".build-tools-{'0' * 20}-999999"
    other = cache / f".build-tools-x-{'0' * 20}-999999"
    for scratch in (killed, other):
        (scratch / "layer").mkdir(parents=True)
        (scratch / "layer" / "half-written").write_text("x")
    (project / "requirements.txt").write_text("tool==2\n")
    third = run(project, counter, cache, "-n", "2", f"--overlay-backend={backend}")
    assert counts(third.stdout).get("passed") == 10, third.stdout
    assert counter.read_text() == "tools\ntools\n"
    assert len(list(cache.glob("tools-*"))) == 1, "the stale layer was not removed"
    assert not killed.exists(), "a killed build's scratch directory was left behind"
    assert other.exists()

    fourth = run(project, counter, cache, "--overlay-rebuild", f"--overlay-backend={backend}")
    assert counts(fourth.stdout).get("passed") == 10, fourth.stdout
    assert counter.read_text() == "tools\ntools\ntools\n"


@pytest.mark.parametrize("backend", ["kernel", "copy"])
def test_stacked_layers_and_checkpoints(layered: tuple[Path, Path, Path], backend: str) -> None:
    gate_backend(backend)
    project, counter, cache = layered
    (project / "test_stacked.py").write_text(STACKED)
    result = run(project, counter, cache, "test_stacked.py", f"--overlay-backend={backend}")
    assert counts(result.stdout).get("passed") == 1, result.stdout + result.stderr
    assert counter.read_text() == "tools\nextra\n"


def test_layers_in_place(layered: tuple[Path, Path, Path]) -> None:
    gate("kernel", kernel_reason())
    project, counter, cache = layered
    (project / "test_inplace_layer.py").write_text(
        "import pytest\n"
        "from pathlib import Path\n"
        "@pytest.mark.overlay(layers=['tools_layer'])\n"
        "def test_sees_layer_at_real_path():\n"
        "    here = Path(__file__).parent\n"
        "    assert (here / 'tools' / 'tool.sh').exists()\n"
        "    (here / 'data.txt').write_text('changed')\n"
    )
    # pytest's cache directory may appear; nothing else may change.
    before = tree_digest(project, skip=(".pytest_cache",), dir_times=False)
    result = run(project, counter, cache, "--overlay", "test_inplace_layer.py")
    assert counts(result.stdout).get("passed") == 1, result.stdout + result.stderr
    assert tree_digest(project, skip=(".pytest_cache",), dir_times=False) == before


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_failing_build_errors_every_dependent_test_once(
    layered: tuple[Path, Path, Path], xdist: tuple[str, ...]
) -> None:
    project, counter, cache = layered
    conftest = (project / "conftest.py").read_text()
    (project / "conftest.py").write_text(
        conftest.replace('    (root / "tools").mkdir()', '    raise RuntimeError("no network")')
    )
    result = run(project, counter, cache, "--overlay-backend=copy", *xdist)
    output = result.stdout + result.stderr
    assert counts(output).get("error") == 10, output
    assert counter.read_text() == "tools\n", "the failing build ran more than once"
    assert output.count("RuntimeError: no network") >= 1
    # In the summary, once, even when xdist workers hit it.
    summary = result.stdout.split("pytest-overlay ==")[-1]
    notice = "building snapshot layer 'tools' failed: RuntimeError: no network"
    assert [line.startswith(notice) for line in summary.splitlines()].count(True) == 1, summary
    assert "(each test that needs it shows why)" in summary
    assert not list(cache.glob("tools-*")), "a half-built layer was published"
    assert not list(cache.glob(".build-*"))


def test_root_and_a_user_get_separate_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their opaque markers differ (trusted.* against user.*), so they must not share one."""
    from pytest_overlay._snapshot.cache import layer_key

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    as_root = layer_key("venv", "k", "digest", ())
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    as_user = layer_key("venv", "k", "digest", ())
    assert as_root != as_user
    assert layer_key("venv", "k", "digest", ()) == as_user
