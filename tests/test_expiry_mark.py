"""The busy check's expiry mark (``_backends/mounted.py``, :func:`idle`), on the real kernel.

``umount2(MNT_EXPIRE)`` marks an idle mount, and a second call unmounts it unless something
let go of a reference to the mount in between.  In place, the check moves the view's
pass-through mounts back onto directories of the view after it, which the kernel counts as
such a use: so the next check needs no ``stat`` to clear the mark, and ``idle`` says so.
Without that, a reused view would be unmounted by its next check.  The checks run in a child
in a mount namespace of its own, on tmpfs mounts standing in for a view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._gates import gate, kernel_reason

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pytest_overlay import _namespaces, _syscalls
from pytest_overlay._backends.mounted import Aside, idle

_namespaces.ensure_private_mount_namespace()
base = Path(sys.argv[2])
view, real = base / "view", base / "real"
_syscalls.mount("tmpfs", base, "tmpfs", 0, "mode=0755")
view.mkdir()
real.mkdir()
_syscalls.mount("tmpfs", view, "tmpfs", 0, "mode=0755")
(view / "cache").mkdir()
_syscalls.mount(str(real), view / "cache", None, 4096)  # MS_BIND
os.chdir("/")
bind = os.open(view / "cache", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
aside = Aside(view, {view / "cache": bind}, base / "park")
nothing = Aside(view, {}, base / "park2")
results = {"with pass-through": [], "without, no stat": []}
for _ in range(3):
    # As a reused view in place: no stat before the check, where the last one said so.
    results["with pass-through"].append(idle(str(view), aside, marked=False))
results["cache back"] = os.path.ismount(view / "cache")
os.close(bind)
_syscalls.umount(view / "cache")  # a view without pass-through mounts, as in fixture mode
for _ in range(2):
    results["without, no stat"].append(idle(str(view), nothing, marked=False))
results["view still mounted"] = os.path.ismount(view)
# In place without pass-through mounts: the setup enters the view, the teardown leaves it for
# the check and goes back; leaving a working directory lets go of a reference to the mount.
_syscalls.mount("tmpfs", view, "tmpfs", 0, "mode=0755")
results["working directory left"] = []
for leaves in (False, True, False, False):
    os.chdir(view)  # the setup
    if leaves:
        os.chdir(base)  # a test that goes elsewhere and stays there
    os.chdir("/")  # the teardown, before the check
    results["working directory left"].append(idle(str(view), nothing, marked=False))
    os.chdir(view)  # back where the test started
os.chdir("/")
results["view mounted after leaving"] = os.path.ismount(view)
print(json.dumps(results))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="mounts: Linux only")
def test_moving_back_clears_the_expiry_mark(tmp_path: Path) -> None:
    gate("kernel", kernel_reason())
    if os.geteuid() != 0:
        pytest.skip("mounts tmpfs directly: as root")
    base = tmp_path / "base"
    base.mkdir()
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", CHILD, str(REPO), str(base)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    # Idle every time, and never left marked: the next check may skip its stat.
    assert results["with pass-through"] == [[True, False]] * 3
    assert results["cache back"]
    # Nothing moved back: the first check leaves the mark, and a second one without the
    # stat unmounts the view (which idle reports as not idle: it is never reused).
    assert results["without, no stat"] == [[True, True], [False, False]]
    assert not results["view still mounted"]
    # A working directory entered after a check and left before the next clears its mark:
    # every check finds the view idle (and marks it), and none unmounts it.
    assert results["working directory left"] == [[True, True]] * 4
    assert results["view mounted after leaving"]


# In place, pytest's cache is not bound into the view: the view has no pass-through mount to
# move back after its check, so only the working directory clears the expiry mark (and the
# view must stay the same one through any number of reading tests, wherever they chdir to).
SUITE = """
import os

import pytest

DEVICES = []


def seen():
    DEVICES.append(os.stat(os.environ["PROJECT"]).st_dev)


@pytest.mark.parametrize("i", range(4))
def test_reads(i):
    assert open("data.txt").read() == "data\\n"
    seen()


def test_leaves_for_good(tmp_path):
    os.chdir(tmp_path)
    seen()


def test_goes_deeper():
    os.chdir("sub")
    seen()


def test_monkeypatched(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    seen()


def test_cache(request):
    request.config.cache.set("overlay/seen", len(DEVICES))
    assert not os.path.ismount(os.path.join(os.environ["PROJECT"], ".pytest_cache"))
    seen()


def test_zz_one_view_for_every_reading_test():
    seen()
    # test_cache wrote (the cache is carried): the tests after it have a new view.
    assert len(set(DEVICES[:-1])) == 1, DEVICES
    assert DEVICES[-1] != DEVICES[0]
"""


@pytest.mark.skipif(sys.platform != "linux", reason="mounts: Linux only")
def test_reading_tests_keep_one_view_in_place(tmp_path: Path) -> None:
    gate("kernel", kernel_reason())
    if os.geteuid() != 0:
        pytest.skip("the ordinary user's run is covered by test_view_reuse")
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "data.txt").write_text("data\n")
    (project / "test_suite.py").write_text(SUITE)
    (project / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PROJECT": str(project)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:randomly",
            "--overlay",
            "--overlay-backend=kernel",
            "-q",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9 passed" in done.stdout
    # What the test wrote into pytest's cache reached the disk.
    value = project / ".pytest_cache" / "v" / "overlay" / "seen"
    assert value.read_text() == "7"
