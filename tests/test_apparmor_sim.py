"""Ubuntu 23.10+ as an ordinary user sees it: a user namespace is created, then mounts are denied.

With ``kernel.apparmor_restrict_unprivileged_userns=1`` (the default there, GitHub's
ubuntu-24.04 runners included), AppArmor lets ``unshare(CLONE_NEWUSER)`` succeed and then
denies every mount in the new namespace with ``EPERM`` or ``EACCES``.  The real runs here
simulate it with ``tests/_seccomp.py --mount-only``, which refuses the mount calls and allows
the namespaces.  The filter also reaches the setuid ``fusermount3`` (``no_new_privs``), so
FUSE fails too and the run falls back to copy; on real Ubuntu, FUSE would still work.  The unit
tests check the message itself, for the sysctl reading 1 and for it absent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_overlay import _namespaces, _overlayopts, _probe, _syscalls
from tests import _unpriv
from tests._gates import gate
from tests._run import Result, assert_clean, counts, mount_denied, run, run_pytest
from tests._sample_project import SMALL_PROJECT, tree_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSCTL_FIX = "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
PERMANENT_FIX = (
    "`echo kernel.apparmor_restrict_unprivileged_userns=0 "
    "| sudo tee /etc/sysctl.d/60-pytest-overlay.conf`"
)


# --- the probe, for real ------------------------------------------------------------------------


@pytest.mark.parametrize("err", ["EPERM", "EACCES"])
def test_probe_names_a_mount_denied_in_a_created_user_namespace(err: str) -> None:
    # The probe's own entry point, in user-namespace mode, under the filter: the namespace is
    # created and mapped, its first mount is refused.
    probe = [sys.executable, "-m", "pytest_overlay._probe", "user"]
    done = run(probe, cwd=REPO_ROOT, wrapper=mount_denied(err), timeout=60, expect_rc=0)
    result = _probe.ProbeResult(**json.loads(done.stdout))
    assert not result.ok
    assert result.mode == "user namespace"
    assert f"the user namespace was created, but a mount in it was denied ({err})" in (
        result.reason
    )
    assert "kernel.apparmor_restrict_unprivileged_userns" in result.reason
    assert SYSCTL_FIX in result.reason


# --- a pytest run as an ordinary user -----------------------------------------------------------


@pytest.fixture
def user_project() -> Iterator[Path]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        _unpriv.write_user_files(workdir, SMALL_PROJECT)
        yield workdir


def _run_denied(root: Path, err: str, *args: str, expect_rc: int) -> Result:
    # /dev/fuse open to users, as distributions ship it, so that FUSE fails at the mount.
    return run_pytest(
        root,
        "-rA",
        *args,
        user=True,
        wrapper=mount_denied(err),
        namespace=_unpriv.OPEN_DEV_FUSE,
        expect_rc=expect_rc,
    )


def _kernel_line(text: str) -> str:
    lines = [line for line in text.splitlines() if "kernel not used:" in line]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("err", ["EPERM", "EACCES"])
def test_mount_denied_in_user_namespace_falls_back_to_copy_and_says_why(
    user_project: Path, err: str
) -> None:
    before = tree_digest(user_project)
    result = _run_denied(user_project, err, expect_rc=0)
    text = result.output
    assert counts(result.stdout).get("passed") == 2, text
    assert "overlay: backend=copy" in result.stdout, text
    line = _kernel_line(result.stdout)
    assert f"the user namespace was created, but a mount in it was denied ({err})" in line
    assert "kernel.apparmor_restrict_unprivileged_userns" in line, line
    assert SYSCTL_FIX in line, line
    assert PERMANENT_FIX in line, line
    assert "sudo -E pytest" in line, line
    # The filter reaches the setuid fusermount3 too (on real Ubuntu, FUSE would work).
    refused = f"(fusermount3: mount failed: {os.strerror(getattr(errno, err))})"
    assert "fuse not used: a FUSE test mount failed:" in result.stdout, text
    assert refused in result.stdout, text
    assert_clean(text)
    assert tree_digest(user_project) == before


def test_mount_denied_in_user_namespace_in_place_is_a_usage_error(user_project: Path) -> None:
    before = tree_digest(user_project)
    result = _run_denied(user_project, "EPERM", "--overlay", expect_rc=pytest.ExitCode.USAGE_ERROR)
    text = result.output
    line = _kernel_line(result.stderr)
    assert "the user namespace was created, but a mount in it was denied (EPERM)" in line
    assert SYSCTL_FIX in line, line
    assert "passed" not in text, text
    assert_clean(text)
    assert tree_digest(user_project) == before


# --- the message --------------------------------------------------------------------------------


def _sysctl(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Make the AppArmor sysctl read *value* (None: absent); other files read as they are."""
    real = _probe._read

    def read(path: str) -> str | None:
        return value if path == _probe._APPARMOR_SYSCTL else real(path)

    monkeypatch.setattr(_probe, "_read", read)


def test_mount_denied_with_the_apparmor_sysctl_set(monkeypatch: pytest.MonkeyPatch) -> None:
    _sysctl(monkeypatch, "1")
    reason = _probe.explain_mount_denied("a tmpfs mount", errno.EACCES)
    assert reason == (
        "AppArmor restricts unprivileged user namespaces "
        "(kernel.apparmor_restrict_unprivileged_userns=1, the default on Ubuntu 23.10+): "
        "the user namespace was created, but a tmpfs mount in it was denied (EACCES); "
        f"lift it with {SYSCTL_FIX} (permanently: {PERMANENT_FIX}), or run as root "
        "(`sudo -E pytest`); meanwhile the overlay_root fixture works on the fuse backend or "
        "with --overlay-backend=copy"
    )


@pytest.mark.parametrize("value", [None, "0"])
def test_mount_denied_without_the_apparmor_sysctl(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    _sysctl(monkeypatch, value)
    reason = _probe.explain_mount_denied("a mount", errno.EPERM)
    assert reason == (
        "the user namespace was created, but a mount in it was denied (EPERM): on Ubuntu "
        "23.10+ AppArmor's kernel.apparmor_restrict_unprivileged_userns does this, lifted with "
        f"{SYSCTL_FIX} (permanently: {PERMANENT_FIX}); in a container a seccomp or LSM "
        "policy, lifted with `docker run --cap-add SYS_ADMIN --security-opt apparmor=unconfined "
        "--security-opt seccomp=unconfined` (or `--privileged`); or run as root "
        "(`sudo -E pytest`); meanwhile the overlay_root fixture works on the fuse backend or with "
        "--overlay-backend=copy"
    )


def test_a_refused_user_namespace_shares_the_sysctl_advice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sysctl(monkeypatch, "1")
    reason = _probe.explain_userns_failure("unshare", errno.EPERM)
    assert reason.startswith("AppArmor restricts unprivileged user namespaces")
    assert f"{SYSCTL_FIX} (permanently: {PERMANENT_FIX})" in reason


# --- which step the probe blames ----------------------------------------------------------------


def _refuse(err: int) -> Callable[..., None]:
    def call(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err))

    return call


@pytest.fixture
def fake_mounts(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Run the probe body in this process with no namespace entered and no mount made."""
    _sysctl(monkeypatch, None)
    monkeypatch.setattr(_namespaces, "enter_user_namespace", lambda **_: None)
    monkeypatch.setattr(_namespaces, "privileged", contextlib.nullcontext)
    monkeypatch.setattr(_syscalls, "mount", lambda *args, **kwargs: None)
    monkeypatch.setattr(_syscalls, "umount", lambda *args, **kwargs: None)
    monkeypatch.setattr(_syscalls, "mount_overlay_new_api", lambda *args, **kwargs: None)
    monkeypatch.setattr(_probe, "_kernel_version", lambda: (6, 8))
    return monkeypatch


@pytest.mark.parametrize("err", [errno.EPERM, errno.EACCES])
def test_probe_blames_a_denied_tmpfs_mount(fake_mounts: pytest.MonkeyPatch, err: int) -> None:
    fake_mounts.setattr(_syscalls, "mount", _refuse(err))
    result = _probe._probe_in_child(unprivileged=True)
    name = errno.errorcode[err]
    assert f"but a tmpfs mount in it was denied ({name})" in result.reason
    assert not result.ok


def test_probe_blames_a_denied_overlay_mount(fake_mounts: pytest.MonkeyPatch) -> None:
    # The probe mounts through the views' own builder (legacy mount(2) or fsconfig).
    fake_mounts.setattr(_overlayopts, "mount_overlay", _refuse(errno.EPERM))
    result = _probe._probe_in_child(unprivileged=True)
    assert "but the overlay mount in it was denied (EPERM)" in result.reason


def test_probe_without_a_new_namespace_keeps_the_unshare_reason(
    fake_mounts: pytest.MonkeyPatch,
) -> None:
    # EPERM from unshare itself (Docker's seccomp profile): no namespace was created.
    fake_mounts.setattr(_namespaces, "enter_user_namespace", _refuse(errno.EPERM))
    result = _probe._probe_in_child(unprivileged=True)
    assert result.reason.startswith("creating a user namespace is not permitted here")


def test_a_root_mount_denied_keeps_its_reason(fake_mounts: pytest.MonkeyPatch) -> None:
    # Root mounts in the host's user namespace: not the AppArmor userns case.
    fake_mounts.setattr(_syscalls, "unshare", lambda flags: None)
    fake_mounts.setattr(_syscalls, "mount", _refuse(errno.EACCES))
    result = _probe._probe_in_child(unprivileged=False)
    assert "user namespace was created" not in result.reason
    assert result.reason.startswith("make mounts private failed: Permission denied")
