"""Machines without FUSE: no ``/dev/fuse`` (a container started without ``--device
/dev/fuse``), alone and with blocked user namespaces, and no libfuse (``FUSE_LIBRARY_PATH``
naming a missing file, or the libraries hidden).

Each is simulated for one child pytest in a private mount namespace
(:class:`tests._unpriv.Namespace`): a stand-in ``/dev`` showing every host node but ``fuse``;
empty files bound over the libfuse libraries plus a dynamic-linker cache rebuilt without them.
Nothing of it is visible on the host, and all of it dies with the child.  Every run checks
the outcome, the header or the error, that the project tree is unchanged, and that no mount is
left on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import _unpriv
from tests._gates import gate
from tests._run import assert_clean, counts, run_pytest
from tests._sample_project import SMALL_PROJECT, tree_digest
from tests._unpriv import Namespace

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR
NO_DEV_FUSE = Namespace(hide_dev_fuse=True)
NO_LIBFUSE = Namespace(hide_libfuse=True)


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_without_dev_fuse_the_fuse_backend_is_a_usage_error(small_project: Path) -> None:
    before = tree_digest(small_project)
    explicit = run_pytest(
        small_project,
        "-rA",
        "--overlay-backend=fuse",
        namespace=NO_DEV_FUSE,
        expect_rc=USAGE_ERROR,
    )
    assert (
        "ERROR: the fuse backend cannot work here: /dev/fuse does not exist" in explicit.stderr
    ), explicit.output
    assert "To run anyway, use --overlay-backend=" in explicit.stderr
    assert_clean(explicit.output)
    # As root, auto never needs FUSE: the kernel backend serves, and nothing mentions FUSE.
    auto = run_pytest(small_project, "-rA", namespace=NO_DEV_FUSE, expect_rc=0)
    assert "overlay: backend=kernel (root)" in auto.stdout
    assert counts(auto.stdout) == {"passed": 2}
    assert "fuse not used" not in auto.stdout
    assert tree_digest(small_project) == before


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_without_dev_fuse_and_user_namespaces_auto_falls_back_to_copy() -> None:
    # An ordinary user whose user namespaces are blocked (chrooted, see _unpriv) on a machine
    # without /dev/fuse: both reasons in the header, and the run passes on copy.
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        _unpriv.write_user_files(workdir, SMALL_PROJECT)
        before = tree_digest(workdir)
        blocked = Namespace(hide_dev_fuse=True, block_userns=True)
        result = run_pytest(workdir, "-rA", user=True, namespace=blocked, expect_rc=0)
        text = result.output
        assert counts(result.stdout) == {"passed": 2}
        assert "overlay: backend=copy" in result.stdout
        assert "kernel not used: creating a user namespace is not permitted here" in text
        assert "fuse not used: /dev/fuse does not exist" in text
        assert_clean(text)
        assert tree_digest(workdir) == before


@pytest.mark.parametrize("how", ["FUSE_LIBRARY_PATH names a missing file", "libraries hidden"])
@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_without_libfuse_the_fuse_backend_is_a_usage_error(
    small_project: Path, tmp_path: Path, how: str
) -> None:
    before = tree_digest(small_project)
    if how == "libraries hidden":
        # Nothing can load libfuse, and ctypes.util.find_library no longer finds it.
        namespace, env = NO_LIBFUSE, {}
        reason = "libfuse not installed: install the fuse3 package (apt install fuse3"
    else:
        # mfusepy loads FUSE_LIBRARY_PATH instead of what find_library finds.
        missing = tmp_path / "nowhere" / "libfuse.so.2"
        namespace, env = None, {"FUSE_LIBRARY_PATH": os.fspath(missing)}
        reason = f"libfuse cannot be loaded ({missing}: cannot open shared object file"
    explicit = run_pytest(
        small_project,
        "-rA",
        "--overlay-backend=fuse",
        namespace=namespace,
        env=env,
        expect_rc=USAGE_ERROR,
    )
    text = explicit.output
    assert f"ERROR: the fuse backend cannot work here: {reason}" in explicit.stderr, text
    assert "apt install fuse3" in explicit.stderr
    assert_clean(text)
    # The plugin itself does not need libfuse: the copy backend still runs.
    copy = run_pytest(
        small_project,
        "-rA",
        "--overlay-backend=copy",
        namespace=namespace,
        env={"FUSE_LIBRARY_PATH": "/nowhere/libfuse.so"} if env else {},
        expect_rc=0,
    )
    assert counts(copy.stdout) == {"passed": 2}
    assert tree_digest(small_project) == before
