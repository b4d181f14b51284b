"""The fallback tests again, with ``/dev/fuse`` in the mode this machine does not have.

Where an ordinary user's kernel backend is out (a thread before the user namespace, blocked
user namespaces), auto falls back to ``fuse`` if the user can open ``/dev/fuse`` and to
``copy`` if not.  Distributions ship ``/dev/fuse`` mode 0666; CI's machine hands it out 0600
(root only), and a container's or a private mount namespace's ``/dev`` can show either.  The
main run tests the mode this machine has; this runs the tests whose expectation depends on it
once more in a child pytest that sees the other mode.

The child runs in a private mount namespace (``unshare(CLONE_NEWNS)``, every mount made
private first) in which a character device 10,229 (FUSE's) of the wanted mode, made on a small
tmpfs, is bound over ``/dev/fuse``.  The host's node is not touched, nothing propagates out,
and all of it dies with the child.  Before the run, the plugin's own FUSE probe, run as the
test user inside that namespace, must agree with the mode: it mounts through ``fusermount3``
with 0666 and is refused ``/dev/fuse`` with 0600.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate

REPO = Path(__file__).resolve().parents[1]
TESTS = (
    "tests/test_userns.py::test_thread_at_import_falls_back_and_says_why",
    "tests/test_userns.py::test_xdist_controller_with_a_thread_falls_back_instead_of_crashing",
    "tests/test_userns.py::test_blocked_user_namespaces_fall_back_with_the_reason[as shipped here]",
)
EXPECTED_PASSED = 4  # the first one is parametrized twice
_SETUP_FAILED = 125  # the exit status of NAMESPACE when it cannot build the namespace
_FUSE_DEVICE = (10, 229)  # major and minor of /dev/fuse on Linux (devices.txt)

NAMESPACE = r"""
import json
import os
import stat
import sys

from pytest_overlay import _syscalls

MS_BIND = 0x1000
spec = json.loads(sys.argv[1])
try:
    _syscalls.unshare(_syscalls.CLONE_NEWNS)
    # A new namespace's mounts stay peers of the host's: make them private before anything.
    _syscalls.mount(None, "/", None, _syscalls.MS_REC | _syscalls.MS_PRIVATE)
    # A tmpfs of its own, not nodev (a device node on a nodev mount cannot be opened).
    _syscalls.mount("tmpfs", spec["scratch"], "tmpfs", _syscalls.MS_NOSUID, "mode=0755,size=64k")
    node = os.path.join(spec["scratch"], "fuse")
    mode = spec["mode"]
    os.mknod(node, stat.S_IFCHR | mode, os.makedev(*spec["device"]))
    os.chmod(node, mode)  # mknod applies the umask
    _syscalls.mount(node, "/dev/fuse", None, MS_BIND)
    os.chdir(spec["cwd"])
except OSError as exc:
    sys.stderr.write(f"namespace-setup: {exc}\n")
    sys.exit(125)
os.execvp(spec["argv"][0], spec["argv"])
"""

PROBE = """
import json
from tests._gates import user_fuse_reason
print(json.dumps(user_fuse_reason()))
"""


def _env() -> dict[str, str]:
    # PYTEST_OVERLAY_REQUIRE reaches the child; the outer run's own pytest variables do not.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run_with_dev_fuse(
    mode: int, argv: Sequence[str], scratch: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as root in the repository, in a namespace whose /dev/fuse has *mode*."""
    spec = {
        "mode": mode,
        "device": list(_FUSE_DEVICE),
        "scratch": os.fspath(scratch),
        "cwd": os.fspath(REPO),
        "argv": list(argv),
    }
    result = subprocess.run(
        [sys.executable, "-c", NAMESPACE, json.dumps(spec)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode == _SETUP_FAILED and "namespace-setup:" in result.stderr:
        gate("mount-namespace", f"cannot present /dev/fuse as {mode:04o}: {result.stderr.strip()}")
    return result


def _counts(text: str) -> dict[str, int]:
    """The outcome counts of pytest's last summary line."""
    lines = [line for line in text.splitlines() if re.search(r" in [\d.]+s", line)]
    assert lines, text
    found = re.findall(r"(\d+) (passed|failed|errors?|xfailed|xpassed|skipped)", lines[-1])
    return {kind.rstrip("s"): int(number) for number, kind in found}


@pytest.mark.parametrize("mode", [0o666, 0o600], ids=["0666", "0600"])
def test_fallback_tests_pass_with_dev_fuse_mode(tmp_path: Path, mode: int) -> None:
    gate("root", None if os.geteuid() == 0 else "only root can bind a device node over /dev/fuse")
    gate("fuse", fuse_reason())
    gate("unprivileged-user", _unpriv.can_run_as_user())
    here = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if here == mode:
        pytest.skip(f"/dev/fuse is mode {mode:04o} here, which the main run tests")
    (tmp_path / "probe").mkdir()
    probe = _run_with_dev_fuse(mode, [sys.executable, "-c", PROBE], tmp_path / "probe", timeout=120)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    reason = json.loads(probe.stdout.splitlines()[-1])
    if mode == 0o666:
        gate("fuse-as-user", reason)  # fusermount3 missing or refused: the fuse branch untested
    else:
        assert isinstance(reason, str), probe.stdout
        assert reason.startswith("/dev/fuse cannot be opened: Permission denied"), reason
    (tmp_path / "run").mkdir()
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly"]
    pytest_argv += ["-p", "no:xdist", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'base'}"]
    pytest_argv += TESTS
    result = _run_with_dev_fuse(mode, pytest_argv, tmp_path / "run", timeout=600)
    text = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, text
    assert _counts(result.stdout) == {"passed": EXPECTED_PASSED}, text
