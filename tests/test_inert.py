"""Installed but unused, the plugin does nothing: no probe, no process, no mount, no imports.
And in use, a run whose tests pass imports none of the code that only a failure, a kept layer
or a snapshot layer needs.

Each run starts a child pytest with an audit hook installed by ``sitecustomize`` (so before
any plugin is imported).  The hook records every process start, exec and ``ctypes`` library
load made from a frame inside ``pytest_overlay``; at exit the child writes those events, the
``pytest_overlay`` modules it imported and whether its mount or user namespace changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests import _unpriv
from tests._gates import gate, kernel_reason
from tests._run import counts, run_pytest

AUDIT = r"""
import atexit, json, os, sys

EVENTS = ("os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "os.spawn",
          "subprocess.Popen", "ctypes.dlopen", "os.unshare", "os.setns")
PACKAGE = os.sep + "pytest_overlay" + os.sep
seen = []

def _namespaces():
    return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("mnt", "user")}

def _mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)

before = (_namespaces(), _mounts())

def _hook(event, args):
    if event in EVENTS:
        frame = sys._getframe(1)
        while frame is not None:
            if PACKAGE in frame.f_code.co_filename:
                seen.append(f"{event} from {frame.f_code.co_filename}:{frame.f_lineno}")
                return
            frame = frame.f_back

sys.addaudithook(_hook)

@atexit.register
def _report():
    record = {
        "events": seen,
        "modules": sorted(m for m in sys.modules if m.split(".")[0] == "pytest_overlay"),
        "namespaces_changed": _namespaces() != before[0],
        "mounts_changed": _mounts() != before[1],
    }
    with open(os.path.join(os.environ["INERT_REPORTS"], f"{os.getpid()}.json"), "w") as f:
        json.dump(record, f)
"""

# The thin part: what pytest imports wherever pytest-overlay is installed.
THIN = {
    "pytest_overlay",
    "pytest_overlay._choices",
    # --overlay-hermetic's options and their parsing live with the areas they name (standard
    # library and pytest only); the per-test work runs only when the option is on.
    "pytest_overlay._hermetic",
    "pytest_overlay._keys",
    "pytest_overlay._names",
    # Holds the real os functions, taken when pytest loads the plugin, before a test can
    # patch them (standard library only).
    "pytest_overlay._realfs",
    # The backend registry and our hookspecs (standard library and pluggy): a backend's module
    # is imported only by its factory, once a test needs it.
    "pytest_overlay._registry",
    "pytest_overlay._settings",
    "pytest_overlay._version",
    "pytest_overlay.hookspecs",
    "pytest_overlay.plugin",
}
# What only a failed test's report (or a kept layer, a snapshot layer's build, a golden record)
# needs: a passing run, in place or not, must not pay for importing it.
FOR_FAILURES = {
    "pytest_overlay._ci_reports",
    "pytest_overlay._golden",
    "pytest_overlay._goldenrun",
    "pytest_overlay._report",
    "pytest_overlay._snapshot.build",
    "pytest_overlay._snapshot.cache",
}
TRIVIAL = """
def test_one():
    assert 1

def test_two(tmp_path):
    (tmp_path / "f").write_text("x")
"""
USES_FIXTURE = "def test_uses(overlay_root):\n    (overlay_root / 'f').write_text('x')\n"


def _project(root: Path, tests: str) -> Path:
    """A project whose ``_site`` holds the audit hook and whose ``_reports`` gets the records:
    inside the project, so a child run as the test user reaches them too."""
    (root / "_site").mkdir()
    (root / "_site" / "sitecustomize.py").write_text(AUDIT)
    (root / "_reports").mkdir()
    (root / "test_it.py").write_text(tests)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def _env(root: Path) -> dict[str, str | None]:
    paths = [str(root / "_site"), *[p for p in os.environ.get("PYTHONPATH", "").split(":") if p]]
    return {"PYTHONPATH": ":".join(paths), "INERT_REPORTS": str(root / "_reports")}


def _merged(root: Path) -> dict[str, Any]:
    """Every process's record in one: pytest's own, and each xdist worker's."""
    records = [json.loads(p.read_text()) for p in (root / "_reports").glob("*.json")]
    assert records, "the audit hook wrote no record"
    return {
        "events": [e for r in records for e in r["events"]],
        "modules": sorted({m for r in records for m in r["modules"]}),
        "namespaces_changed": any(r["namespaces_changed"] for r in records),
        "mounts_changed": any(r["mounts_changed"] for r in records),
    }


def _assert_inert(record: dict[str, Any]) -> None:
    assert record["events"] == [], record
    assert set(record["modules"]) <= THIN, record["modules"]
    assert not record["namespaces_changed"], record
    assert not record["mounts_changed"], record


def _run_root(root: Path, *args: str) -> tuple[str, dict[str, Any]]:
    result = run_pytest(root, *args, env=_env(root), timeout=120, expect_rc=0)
    return result.output, _merged(root)


@pytest.mark.parametrize("args", [(), ("-q",), ("-n", "2")], ids=["plain", "quiet", "xdist"])
def test_unused_plugin_does_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    _project(tmp_path, TRIVIAL)
    output, record = _run_root(tmp_path, *args)
    assert counts(output) == {"passed": 2}, output
    _assert_inert(record)
    assert "overlay:" not in output, output
    assert "pytest-overlay" not in output, output


def test_unused_plugin_does_nothing_as_a_user() -> None:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        project = _project(workdir, TRIVIAL)
        uid, gid = _unpriv.ensure_test_user()
        for path in (project, *project.rglob("*")):
            os.chown(path, uid, gid)
        run_pytest(project, "-q", user=True, env=_env(project), timeout=120, expect_rc=0)
        record = _merged(project)
    _assert_inert(record)


def test_a_test_that_uses_the_fixture_brings_the_plugin_in(tmp_path: Path) -> None:
    _project(tmp_path, TRIVIAL + USES_FIXTURE)
    output, record = _run_root(tmp_path)
    assert counts(output).get("passed") == 3
    lines = output.splitlines()
    collected = next(i for i, line in enumerate(lines) if line.startswith("collected 3 items"))
    assert lines[collected + 1].startswith("overlay: backend="), output
    assert "pytest_overlay._activation" in record["modules"]


def test_an_explicit_backend_is_in_the_report_header(tmp_path: Path) -> None:
    _project(tmp_path, TRIVIAL)
    output, _ = _run_root(tmp_path, "--overlay-backend=copy")
    header = output.split("collected", 1)[0]
    assert "overlay: backend=copy" in header, output
    assert output.count("overlay: backend=") == 1, output


def test_the_fixture_line_is_left_out_with_quiet(tmp_path: Path) -> None:
    _project(tmp_path, USES_FIXTURE)
    output, _ = _run_root(tmp_path, "-q")
    assert counts(output).get("passed") == 1
    assert "overlay: backend=" not in output, output


READS = """
from pathlib import Path

def test_reads():
    assert Path("test_it.py").exists()
"""
WRITES_AND_FAILS = """
from pathlib import Path

def test_writes():
    Path("new.txt").write_text("x")
    assert False
"""


@pytest.mark.parametrize("passes", [True, False], ids=["passing", "failing"])
def test_a_passing_run_in_place_imports_no_report_code(tmp_path: Path, passes: bool) -> None:
    gate("kernel", kernel_reason())
    _project(tmp_path, READS if passes else WRITES_AND_FAILS)
    result = run_pytest(tmp_path, "--overlay", env=_env(tmp_path), timeout=120)
    assert counts(result.output) == ({"passed": 1} if passes else {"failed": 1}), result.output
    imported = FOR_FAILURES & set(_merged(tmp_path)["modules"])
    # A failing test's report does import them (so the names above are the modules it uses).
    report = {"pytest_overlay._report", "pytest_overlay._ci_reports"}
    assert imported == (set() if passes else report), imported
