"""A FUSE mount that ``fusermount3`` refuses says why, in fusermount3's words, and what to do.

Checked on fusermount3's messages, then for real as the ordinary test user (with a ``/dev/fuse``
it may open): a mount on a directory the user may not write to, through the plugin's client
and through the ``pytest-overlay-fs`` mount helper.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pytest_overlay._fuse.client import fusermount_refusal
from tests import _unpriv
from tests._gates import fuse_reason, gate
from tests._run import run


@pytest.mark.parametrize(
    ("line", "fix"),
    [
        (
            "fusermount3: option allow_other only allowed if 'user_allow_other' is set in "
            "/etc/fuse.conf",
            "add the line user_allow_other to /etc/fuse.conf",
        ),
        ("fusermount3: mountpoint /tmp/x not owned by user", "a directory they own"),
        ("fusermount3: user has no write access to mountpoint /m", "they may write to"),
        ("fusermount3: mount failed: Operation not permitted", "setuid root"),
        ("fusermount3: failed to open /dev/fuse: Permission denied", "chmod 0666 /dev/fuse"),
        ("fusermount: fuse device not found, try 'modprobe fuse' first", "modprobe fuse"),
        (
            "fusermount3: too many FUSE filesystems mounted; mount_max=N can be set in "
            "/etc/fuse.conf",
            "raise mount_max",
        ),
    ],
)
def test_refusals_say_why_and_what_to_do(line: str, fix: str) -> None:
    output = f"some libfuse noise\n{line}\nmounting /m failed: 4\n"
    refusal = fusermount_refusal(output)
    assert refusal is not None
    tool, message = line.split(": ", 1)
    assert refusal.startswith(f"{tool} refused it: {message}; ")
    assert fix in refusal


def test_other_output_is_no_refusal() -> None:
    assert fusermount_refusal("") is None
    assert fusermount_refusal("fuse: unknown option 'x'\nmounting /m failed: 4") is None
    # A line of fusermount3 without a known fix is still named.
    assert (
        fusermount_refusal("fusermount3: something new") == "fusermount3 refused it: something new"
    )


CHILD = """
import json, subprocess, sys
from pytest_overlay._fuse.client import start
lower, upper, work, target = sys.argv[1:5]
try:
    start([lower], upper, work, target)
except Exception as exc:
    client = str(exc)
else:
    client = "mounted"
helper = subprocess.run(
    [sys.executable, "-m", "pytest_overlay._fuse.helper", "src", target, "-o",
     f"lowerdir={lower},upperdir={upper},workdir={work}"],
    capture_output=True, text=True,
)
print(json.dumps({"client": client, "helper": [helper.returncode, helper.stderr]}))
"""


def test_a_refused_mount_as_an_ordinary_user(tmp_path: Path) -> None:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    gate("fuse", fuse_reason())
    with _unpriv.user_workdir_ctx() as workdir:
        uid, gid = _unpriv.ensure_test_user()
        for name in ("lower", "upper", "work"):
            (workdir / name).mkdir()
            os.chown(workdir / name, uid, gid)
        target = workdir / "roots"  # root's, mode 0755: the user may not write to it
        target.mkdir()
        paths = [str(workdir / name) for name in ("lower", "upper", "work", "roots")]
        argv = [sys.executable, "-c", CHILD, *paths]
        env = {"PYTHONPATH": str(_unpriv.REPO_ROOT)}  # this checkout, not the editable install's
        namespace = _unpriv.OPEN_DEV_FUSE
        done = run(argv, cwd=workdir, user=True, namespace=namespace, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    refused = f"fusermount3 refused it: user has no write access to mountpoint {target}; "
    first_line = result["client"].splitlines()[0]
    assert first_line.startswith(f"[Errno 5] FUSE overlay mount failed: {refused}"), result
    assert "a directory they may write to" in first_line
    assert "--- server output ---" in result["client"]  # the whole story stays below
    code, stderr = result["helper"]
    assert code == 1
    assert stderr == f"pytest-overlay-fs: mounting {target} failed: {refused}" + (
        "an ordinary user may mount FUSE only on a directory they may write to: mount on one "
        "of your own, or run as root\n"
    )
