"""The fallback tests again, with ``/dev/fuse`` in the mode this machine does not have.

Where an ordinary user's kernel backend is out (a thread before the user namespace, blocked
user namespaces), auto falls back to ``fuse`` if the user can open ``/dev/fuse`` and to
``copy`` if not.  Distributions ship ``/dev/fuse`` mode 0666; CI's machine hands it out 0600
(root only), and a container's or a private mount namespace's ``/dev`` can show either.  The
main run tests the mode this machine has; this runs the tests whose expectation depends on it
once more in a child pytest that sees the other mode.

The child runs in a private mount namespace (:class:`tests._unpriv.Namespace`, every mount
made private first) in which a character device 10,229 (FUSE's) of the wanted mode, made on a
small tmpfs, is bound over ``/dev/fuse``.  The host's node is not touched, nothing propagates out,
and all of it dies with the child.  Before the run, the plugin's own FUSE probe, run as the
test user inside that namespace, must agree with the mode: it mounts through ``fusermount3``
with 0666 and is refused ``/dev/fuse`` with 0600.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import fuse_reason, gate
from tests._run import counts, run, run_pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = (
    "tests/test_userns.py::test_thread_at_import_falls_back_and_says_why",
    "tests/test_userns.py::test_xdist_controller_with_a_thread_falls_back_instead_of_crashing",
    "tests/test_userns.py::test_blocked_user_namespaces_fall_back_with_the_reason[as shipped here]",
)
EXPECTED_PASSED = 4  # the first one is parametrized twice

PROBE = """
import json
from tests._gates import user_fuse_reason
print(json.dumps(user_fuse_reason()))
"""


@pytest.mark.parametrize("mode", [0o666, 0o600], ids=["0666", "0600"])
def test_fallback_tests_pass_with_dev_fuse_mode(tmp_path: Path, mode: int) -> None:
    gate("root", None if os.geteuid() == 0 else "only root can bind a device node over /dev/fuse")
    gate("fuse", fuse_reason())
    gate("unprivileged-user", _unpriv.can_run_as_user())
    here = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if here == mode:
        pytest.skip(f"/dev/fuse is mode {mode:04o} here, which the main run tests")
    namespace = _unpriv.Namespace(dev_fuse_mode=mode)
    probe_argv = [sys.executable, "-c", PROBE]
    probe = run(probe_argv, cwd=REPO, namespace=namespace, timeout=120, expect_rc=0)
    reason = json.loads(probe.stdout.splitlines()[-1])
    if mode == 0o666:
        gate("fuse-as-user", reason)  # fusermount3 missing or refused: the fuse branch untested
    else:
        assert isinstance(reason, str), probe.stdout
        assert reason.startswith("/dev/fuse cannot be opened: Permission denied"), reason
    args = ("-q", "-rA", "-p", "no:xdist", f"--basetemp={tmp_path / 'base'}", *TESTS)
    result = run_pytest(REPO, *args, namespace=namespace, timeout=600, expect_rc=0)
    assert counts(result.stdout) == {"passed": EXPECTED_PASSED}, result.output
