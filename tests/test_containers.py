"""Projects in containers: the tree on overlayfs (once, and stacked twice), root without
``CAP_SYS_ADMIN``, and Docker's default profile (that and its seccomp filter).

The overlayfs mounts are made for one child pytest in a private mount namespace
(:class:`tests._unpriv.Namespace`), invisible on the host; the capability and the filter are
wrappers of the child's command (``setpriv``, ``tests/_seccomp.py``).  Every run checks the
outcome and the header, that the project is unchanged, and that no mount is left on the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests._gates import fuse_reason, gate, kernel_reason
from tests._run import Result, assert_clean, counts, docker_like, drop_sys_admin, run_pytest
from tests._sample_project import SUITE_TESTS, build_project, tree_digest
from tests._unpriv import Namespace

# --- the project tree on overlayfs (Docker) -----------------------------------------------------


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.fixture
def container(tmp_path: Path) -> Path:
    """A container's root filesystem, unmounted: ``lower`` (the image), ``upper``, ``work``.

    The project sits in the image, with one file rewritten by the container (in the upper
    layer) and one deleted (a whiteout there); ``tmp`` holds pytest's basetemp, on overlayfs
    too, as in a container.
    """
    base = tmp_path / "container"
    for name in ("lower", "upper", "work", "merged"):
        (base / name).mkdir(parents=True)
    project = base / "lower" / "project"
    project.mkdir()
    build_project(project)
    (project / "notes.txt").write_text("as built into the image\n")
    (project / "gone.txt").write_text("deleted by the container\n")
    for layer in ("lower", "upper"):
        # The container has used /tmp already, so the upper layer holds it too.
        (base / layer / "tmp").mkdir()
        (base / layer / "tmp").chmod(0o1777)
    (base / "upper" / "project").mkdir()
    (base / "upper" / "project" / "notes.txt").write_text("one\ntwo\n")
    _whiteout(base / "upper" / "project" / "gone.txt")
    return base


def _layers_digest(base: Path, *, in_place: bool) -> tuple[str, str]:
    # The merged view is unchanged exactly when neither the image nor the container's upper
    # layer changed; pytest's basetemp in tmp, and in place its cache directory, may change.
    skip = ("tmp", ".pytest_cache") if in_place else ("tmp",)
    return tree_digest(base / "lower"), tree_digest(base / "upper", skip, dir_times=not in_place)


@pytest.mark.parametrize(
    "mode",
    [
        ("--overlay-backend=kernel",),
        ("--overlay-backend=fuse",),
        ("--overlay-backend=copy",),
        ("--overlay", "--overlay-backend=kernel"),
    ],
    ids=["kernel", "fuse", "copy", "in-place"],
)
@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_project_on_overlayfs(container: Path, mode: tuple[str, ...]) -> None:
    gate("kernel", kernel_reason())
    if "--overlay-backend=fuse" in mode:
        gate("fuse", fuse_reason())
    in_place = "--overlay" in mode
    before = _layers_digest(container, in_place=in_place)
    merged = container / "merged"
    basetemp = merged / "tmp" / "basetemp"
    in_container = Namespace(
        overlays=((container / "lower", container / "upper", container / "work", merged),)
    )
    result = run_pytest(
        merged / "project",
        "-rA",
        *mode,
        f"--basetemp={basetemp}",
        namespace=in_container,
        expect_rc=0,
    )
    text = result.output
    assert counts(result.stdout) == {"passed": SUITE_TESTS}
    backend = mode[-1].split("=")[1]
    described = (
        "a copy of the tree per session, reset after each test" if backend == "copy" else "root"
    )
    assert f"overlay: backend={backend} ({described})" in result.stdout
    assert_clean(text)
    assert _layers_digest(container, in_place=in_place) == before, "the project was modified"


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_project_on_overlayfs_stacked_twice_falls_back_or_says_why(
    container: Path, tmp_path: Path
) -> None:
    # The container's root is itself on overlayfs (a container in a container): a third
    # level exceeds the kernel's stacking limit.  auto finds that out with a test mount of the
    # project and falls back to fuse, in place too; an explicit kernel makes each test's
    # error say why and what to use.
    gate("kernel", kernel_reason())
    outer = tmp_path / "outer"
    for name in ("upper", "work", "merged"):
        (outer / name).mkdir(parents=True)
    in_containers = Namespace(
        overlays=(
            (container / "lower", container / "upper", container / "work", container / "merged"),
            (container / "merged", outer / "upper", outer / "work", outer / "merged"),
        )
    )
    before = _layers_digest(container, in_place=False)
    hint = "the kernel stacks overlayfs at most two levels deep"
    modes = [(), ("--overlay",), ("--overlay-backend=kernel",), ("--overlay-backend=copy",)]
    for number, mode in enumerate(modes):
        result = run_pytest(
            outer / "merged" / "project",
            "-rA",
            *mode,
            f"--basetemp={tmp_path / f'basetemp{number}'}",
            namespace=in_containers,
        )
        text = result.output
        assert_clean(text)
        if "--overlay-backend=kernel" not in mode:
            assert result.returncode == 0, text
            assert counts(result.stdout) == {"passed": SUITE_TESTS}
            if mode in ((), ("--overlay",)):
                # In place too: as root the view can cover the project in a private namespace.
                assert "overlay: backend=fuse (root)" in result.stdout, text
            if "--overlay-backend=copy" not in mode:
                assert "kernel not used: the kernel refuses" in result.stdout, text
                assert "overlayfs stacks at most two levels deep" in result.stdout
            continue
        assert counts(result.stdout) == {"error": SUITE_TESTS}, text
        assert "overlay: backend=kernel (root)" in result.stdout
        assert text.count(hint) >= SUITE_TESTS, text
        assert "'maximum fs stacking depth exceeded'" in text
        assert "use --overlay-backend=fuse (as root also with --overlay), or" in text
    assert _layers_digest(container, in_place=False) == before
    # In place, the plugin makes its store in the cache directory; nothing else was written.
    written = {p.relative_to(outer / "upper").as_posix() for p in (outer / "upper").rglob("*")}
    assert {p for p in written if not p.startswith("project/.pytest_cache")} <= {"project"}


# --- root without CAP_SYS_ADMIN -----------------------------------------------------------------


def _passes_under(project: Path, wrapper: list[str]) -> Result:
    """Run the small project under *wrapper*: it passes, cleanly, and leaves the tree alone."""
    before = tree_digest(project, skip=(".pytest_cache",), dir_times=False)
    result = run_pytest(project, "-rA", wrapper=wrapper, expect_rc=0)
    assert counts(result.stdout) == {"passed": 2}, result.output
    assert_clean(result.output)
    assert tree_digest(project, skip=(".pytest_cache",), dir_times=False) == before
    return result


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_root_without_cap_sys_admin_uses_a_user_namespace(small_project: Path) -> None:
    # A container's root is root without CAP_SYS_ADMIN (Docker's default): it cannot mount in
    # the host's namespaces, but, where user namespaces are allowed, it can in its own.
    result = _passes_under(small_project, drop_sys_admin())
    assert "overlay: backend=kernel (user namespace)" in result.stdout, result.output


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_docker_like_container_falls_back_to_copy_and_says_why(small_project: Path) -> None:
    # Docker's default: root without CAP_SYS_ADMIN, and a seccomp profile that refuses
    # unshare, mount and namespace clones (tests/_seccomp.py), so neither a user namespace
    # nor a FUSE mount (fusermount3 is refused too) can be had.
    result = _passes_under(small_project, docker_like())
    text = result.output
    assert (
        "overlay: backend=copy (a copy of the tree per session, reset after each test)"
        in result.stdout
    ), text
    # Each reason says what blocked it and what to change.
    # Root is told what it lacks, not to run as root (issue 21).
    assert (
        "kernel not used: creating a user namespace is not permitted here (a container's "
        "seccomp profile, such as Docker's default, or a chroot blocks it), and this root "
        "lacks CAP_SYS_ADMIN (a container's root does, unless the container is started with "
        "it): run the container with `docker run --cap-add SYS_ADMIN --security-opt "
        "apparmor=unconfined --security-opt seccomp=unconfined` (or `--privileged`)"
        in result.stdout
    ), text
    assert "run as root" not in text, text
    assert "fuse not used: a FUSE test mount failed:" in result.stdout, text
    assert "(fusermount3: mount failed: Operation not permitted)" in result.stdout, text


@pytest.mark.usefixtures("root_env", "no_leaked_mounts")
def test_docker_like_container_in_place_says_what_root_lacks(small_project: Path) -> None:
    # In place nothing can stand at the real paths: the usage error names the missing
    # capability and the container recipe, never "run as root" nor sudo to a root.
    before = tree_digest(small_project, skip=(".pytest_cache",), dir_times=False)
    result = run_pytest(
        small_project, "--overlay", wrapper=docker_like(), expect_rc=pytest.ExitCode.USAGE_ERROR
    )
    text = result.output
    assert (
        "  fuse not used: in place, FUSE needs a private mount namespace, and this root lacks "
        "CAP_SYS_ADMIN (a container's root does, unless the container is started with it)\n"
        "To fix it, either:\n"
        "  - give the container what a mount needs: `docker run --cap-add SYS_ADMIN --device "
        "/dev/fuse --security-opt apparmor=unconfined` (or `--privileged`)\n"
        "  - drop --overlay and use the overlay_root fixture" in text
    ), text
    assert "run as root" not in text, text
    assert "sudo" not in text, text
    assert_clean(text)
    assert tree_digest(small_project, skip=(".pytest_cache",), dir_times=False) == before
