"""The harness that runs commands as a real unprivileged user (``tests/_unpriv.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate
from tests._run import Result, run
from tests._unpriv import (
    REPO_ROOT,
    TEST_USER,
    StandIn,
    can_run_as_user,
    ensure_test_user,
    exposure_plan,
    make_user_dir,
    run_as_user,
)

_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


@pytest.fixture(autouse=True)
def _needs_unpriv() -> None:
    gate("unprivileged-user", can_run_as_user())


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A root-owned directory in /tmp that everyone may search but only root may write."""
    path = Path(tempfile.mkdtemp(prefix="pytest-overlay-rootdir-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _python(
    code: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = run_as_user([sys.executable, "-c", code], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return result


def _status(text: str) -> dict[str, str]:
    fields = (line.partition(":") for line in text.splitlines())
    return {key: value.strip() for key, _, value in fields}


def test_child_is_an_unprivileged_user_with_pytest(user_workdir: Path) -> None:
    code = (
        "import os, pytest, json; "
        "print(json.dumps([os.getuid(), os.geteuid(), open('/proc/self/status').read(), "
        "pytest.__file__, os.getcwd(), os.environ['HOME']]))"
    )
    uid, gid = ensure_test_user()
    out = json.loads(_python(code, user_workdir).stdout)
    real, effective, status_text, pytest_file, cwd, home = out
    assert real == effective == uid != 0
    status = _status(status_text)
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"] == ""
    for field in _CAP_FIELDS:
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "0"
    assert Path(pytest_file).is_relative_to(Path(pytest.__file__).parents[1])
    assert cwd == home == os.fspath(user_workdir)


def _import_outcome(result: subprocess.CompletedProcess[str] | Result) -> str:
    lines = result.stderr.strip().splitlines()
    return "ok" if result.returncode == 0 else (lines[-1] if lines else str(result.returncode))


def test_child_sees_the_project_as_root_does(user_workdir: Path) -> None:
    """The child imports ``pytest_overlay`` exactly as well as root does with the same env.

    The package may be unfinished (or not installed), so root's outcome is the oracle; when it
    is not installed, the checkout is handed over with ``PYTHONPATH``.
    """
    clean = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    argv = [sys.executable, "-c", "import pytest_overlay"]
    as_root = run(argv, cwd=Path("/"), env=clean, inherit_env=False)
    env = {} if as_root.returncode == 0 else {"PYTHONPATH": os.fspath(REPO_ROOT)}
    if env:
        as_root = run(argv, cwd=Path("/"), env=clean | env, inherit_env=False)
    package = REPO_ROOT / "pytest_overlay"
    listing = "import os, sys; print(sorted(os.listdir(sys.argv[1])))"

    as_user = run_as_user(argv, cwd=user_workdir, env=env)
    seen = run_as_user([sys.executable, "-c", listing, os.fspath(package)], cwd=user_workdir)

    assert _import_outcome(as_user) == _import_outcome(as_root)
    assert seen.stdout.strip() == str(sorted(entry.name for entry in package.iterdir())), (
        seen.stderr
    )


def test_child_can_create_a_user_namespace(user_workdir: Path) -> None:
    code = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "result = libc.unshare(0x10000000 | 0x00020000); "
        "print(result, ctypes.get_errno())"
    )
    assert _python(code, user_workdir).stdout.split() == ["0", "0"]


def test_child_writes_only_where_it_may(user_workdir: Path, root_dir: Path) -> None:
    code = (
        "import sys\n"
        "open('mine.txt', 'w').write('ok')\n"
        "try:\n"
        "    open(sys.argv[1], 'w')\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    result = run_as_user(
        [sys.executable, "-c", code, os.fspath(root_dir / "theirs.txt")], cwd=user_workdir
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "denied"
    uid, _ = ensure_test_user()
    assert (user_workdir / "mine.txt").stat().st_uid == uid
    assert not (root_dir / "theirs.txt").exists()


def test_host_is_left_as_it_was(
    user_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch_parent = tmp_path / "standins"
    scratch_parent.mkdir()
    monkeypatch.setattr(_unpriv, "STANDIN_PARENT", scratch_parent)
    root_mode = Path("/root").stat().st_mode
    before = Path("/proc/self/mountinfo").read_text()

    child = run_as_user(["cat", "/proc/self/mountinfo"], cwd=user_workdir)

    assert child.returncode == 0, child.stderr
    assert Path("/proc/self/mountinfo").read_text() == before
    assert list(scratch_parent.iterdir()) == []
    assert Path("/root").stat().st_mode == root_mode
    uid, gid = ensure_test_user()
    plan = exposure_plan([sys.executable], uid, gid)
    mountpoints = {line.split()[4] for line in child.stdout.splitlines()}
    assert {os.fspath(standin.directory) for standin in plan} <= mountpoints


def test_nested_blocked_directories_and_symlinks(user_workdir: Path, tmp_path: Path) -> None:
    # tmp_path is under /tmp/pytest-of-root (0700), so that is a third blocked level.
    outer = tmp_path / "outer"
    shown = outer / "inner" / "shown"
    shown.mkdir(parents=True)
    (shown / "data.txt").write_text("payload")
    (outer / "hidden.txt").write_text("secret")
    (outer / "link").symlink_to("inner/shown")
    (outer / "inner").chmod(0o700)
    outer.chmod(0o700)
    wanted = outer / "link" / "data.txt"
    uid, gid = ensure_test_user()

    plan = exposure_plan([wanted], uid, gid)

    assert plan[:2] == [
        StandIn(outer / "inner", ("shown",)),
        StandIn(outer, ("inner", "link")),
    ]
    code = (
        "import os, sys, json; d = sys.argv[1]; "
        "print(json.dumps([open(d + '/link/data.txt').read(), sorted(os.listdir(d))]))"
    )
    result = run_as_user(
        [sys.executable, "-c", code, os.fspath(outer)], cwd=user_workdir, extra_paths=[wanted]
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["payload", ["inner", "link"]]
    assert outer.stat().st_mode & 0o777 == 0o700


def test_workdir_under_tmp_path(tmp_path: Path) -> None:
    cwd = make_user_dir(tmp_path)

    result = run_as_user(["sh", "-c", "echo hi > made.txt && pwd"], cwd=cwd)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.fspath(cwd)
    assert (cwd / "made.txt").read_text() == "hi\n"


def test_environment_is_clean(user_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/leaked")
    monkeypatch.setenv("PYTEST_OVERLAY_LEAK", "1")
    code = "import os, json; print(json.dumps(dict(os.environ)))"

    env = json.loads(_python(code, user_workdir, env={"EXTRA": "given"}).stdout)

    assert "PYTHONPATH" not in env
    assert "PYTEST_OVERLAY_LEAK" not in env
    assert env["EXTRA"] == "given"
    assert env["HOME"] == os.fspath(user_workdir)
    assert env["LANG"] == "C.UTF-8"
    assert env["USER"] == TEST_USER


def test_exit_codes_pass_through(user_workdir: Path) -> None:
    assert run_as_user(["sh", "-c", "exit 3"], cwd=user_workdir).returncode == 3
    missing = run_as_user(["no-such-command-here"], cwd=user_workdir)
    assert missing.returncode == 127
    assert missing.stderr.startswith("unpriv-prelude:")


def test_timeout_kills_the_child(user_workdir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_as_user(["sh", "-c", "sleep 60 & sleep 60"], cwd=user_workdir, timeout=1)
    assert time.monotonic() - started < 30
