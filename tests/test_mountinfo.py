"""The mount-table reader (``_mountinfo``) and the overlay option builder (``_overlayopts``).

The parser is checked on lines written the way the kernel writes them, then both are checked
together on real mounts at hostile paths (space, tab, newline, backslash, ``:``, ``,``, ``=``
and a byte that is not UTF-8), made in a child with a private mount namespace, through
``mount(2)`` and through the new mount API.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from pytest_overlay import _mountinfo, _overlayopts
from pytest_overlay._errors import MountError
from tests._gates import gate, kernel_reason
from tests._run import run
from tests._unpriv import Namespace

HOSTILE = os.fsdecode(b"a b\tc\nd\\e:f,g=h\xff")


def _octal(text: str, special: bytes) -> bytes:
    """*text* escaped the way the kernel's seq_escape escapes the bytes in *special*."""
    out = bytearray()
    for byte in os.fsencode(text):
        out += b"\\%03o" % byte if byte in special else bytes([byte])
    return bytes(out)


def _kernel_escape(path: str) -> bytes:
    # seq_path and mangle: space, tab, newline, backslash.
    return _octal(path, b" \t\n\\")


def _super_options(*options: tuple[str, str | None]) -> bytes:
    # seq_show_option: a value also has its commas escaped.
    return b",".join(
        os.fsencode(k) + (b"" if v is None else b"=" + _octal(v, b", \t\n\\")) for k, v in options
    )


def test_unescape_is_octal_only() -> None:
    assert _mountinfo.unescape(b"/a\\040b\\134c\\012d\\011e") == "/a b\\c\nd\te"
    # Not an escape: fewer than three digits, or digits that are not octal.
    assert _mountinfo.unescape(b"/plain\\x\\12\\089") == "/plain\\x\\12\\089"
    assert os.fsencode(_mountinfo.unescape(b"/\xff\\376")) == b"/\xff\xfe"


def test_parse_hostile_mount_points() -> None:
    point = "/mnt/" + HOSTILE
    line = (
        b"36 35 98:0 / "
        + _kernel_escape(point)
        + b" rw,noatime master:1 shared:2 - ext4 "
        + _kernel_escape("/dev/my disk")
        + b" rw,errors=continue\n"
    )
    (mount,) = _mountinfo.parse([line])
    assert mount.point == Path(point)
    assert os.fsencode(mount.point) == os.fsencode(point)
    assert (mount.mount_id, mount.parent_id, mount.root) == (36, 35, "/")
    assert mount.mount_options == ("rw", "noatime")
    assert (mount.fstype, mount.source) == ("ext4", "/dev/my disk")
    assert mount.super_options() == [("rw", None), ("errors", "continue")]


def test_parse_skips_lines_it_does_not_understand() -> None:
    good = b"1 0 0:1 / / rw - tmpfs tmpfs rw\n"
    lines = [b"garbage\n", b"1 0 0:1 / /x rw no-separator\n", b"x y 0:1 / /y rw - a b c\n", good]
    assert [m.point for m in _mountinfo.parse(lines)] == [Path("/")]
    # An empty source is a field of its own.
    (mount,) = _mountinfo.parse([b"2 1 0:2 / /z rw - tmpfs  rw\n"])
    assert (mount.source, mount.super_options()) == ("", [("rw", None)])


def test_layer_dirs_of_both_ways_overlayfs_shows_them() -> None:
    lower, upper = "/l" + HOSTILE, "/u" + HOSTILE
    # mount(2): lowerdir, upperdir and workdir shown as given, in the legacy syntax.
    legacy = _super_options(
        ("rw", None),
        ("lowerdir", f"{_overlayopts.escape(lower)}:/plain"),
        ("upperdir", _overlayopts.escape(upper)),
        ("workdir", "/w"),
        ("userxattr", None),
    )
    (mount,) = _mountinfo.parse([b"3 1 0:3 / /m rw - overlay overlay " + legacy + b"\n"])
    assert mount.layer_dirs() == [Path(lower), Path("/plain"), Path(upper), Path("/w")]
    assert mount.option_values("workdir") == ["/w"]
    assert ("userxattr", None) in mount.super_options()
    # The new API: one lowerdir+ per layer, shown as the plain path.
    plus = _super_options(("ro", None), ("lowerdir+", lower), ("lowerdir+", "/p:q"))
    (mount,) = _mountinfo.parse([b"4 1 0:4 / /n rw - overlay x " + plus + b"\n"])
    assert mount.layer_dirs() == [Path(lower), Path("/p:q")]


def test_containing_mount_is_the_deepest_and_the_last() -> None:
    table = _mountinfo.parse(
        [
            b"1 0 0:1 / / rw - ext4 root rw\n",
            b"2 1 0:2 / /a rw - tmpfs first rw\n",
            b"3 2 0:3 / /a/b rw - tmpfs deep rw\n",
            b"4 1 0:4 / /a rw - overlay second rw\n",
        ]
    )

    def source_of(path: str) -> str | None:
        mount = _mountinfo.containing_mount(Path(path), table)
        return None if mount is None else mount.source

    assert [source_of(p) for p in ("/a/x", "/a/b/c", "/ab")] == ["second", "deep", "root"]
    assert _mountinfo.containing_mount(Path("/a/x"), []) is None


def test_this_threads_table_has_the_root() -> None:
    assert any(mount.point == Path("/") for mount in _mountinfo.read())


# --- the option builder ------------------------------------------------------------------------


def test_legacy_escaping_round_trips() -> None:
    assert _overlayopts.escape("/a\\b:c,d") == "/a\\\\b\\:c\\,d"
    for path in ("/a\\b:c,d", "/plain", "/end\\", HOSTILE):
        escaped = _overlayopts.escape(path)
        assert list(_overlayopts.split(escaped, ":")) == [escaped]
        assert _overlayopts.unescape(escaped) == path
    assert list(_overlayopts.split("a\\:b:c", ":")) == ["a\\:b", "c"]
    assert _overlayopts.unescape("trailing\\") == "trailing"  # as overlayfs drops it


def test_legacy_data_and_feature_options() -> None:
    options = {
        "upperdir": "/u,1",
        "workdir": "/w",
        **_overlayopts.feature_options(userxattr=False),
        "ro": None,
    }
    assert _overlayopts.legacy_data(["/a:b", "/c"], options) == (
        "lowerdir=/a\\:b:/c,upperdir=/u\\,1,workdir=/w,redirect_dir=off,metacopy=off,index=off"
    )
    assert _overlayopts.feature_options(userxattr=True) == {"userxattr": None}


def test_too_long_for_mount2_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A kernel without "lowerdir+" (before 6.8) has only mount(2), and its one page.
    monkeypatch.setattr(_overlayopts, "_new_api_refused", True)
    lowers = [tmp_path / ("x" * 200 + str(i)) for i in range(25)]
    with pytest.raises(MountError) as info:
        _overlayopts.mount_overlay(tmp_path, lowers, {"upperdir": "/u", "workdir": "/w"})
    assert info.value.errno == errno.E2BIG
    assert "more than the 4 KiB mount(2) takes" in str(info.value)
    assert "use fewer or shorter layer paths" in str(info.value)


# --- real mounts at hostile paths ------------------------------------------------------------

CHILD = r"""
import json, os, sys
from pathlib import Path
from pytest_overlay import _mountinfo, _overlayopts, _syscalls

base = Path(sys.argv[1])
name = os.fsdecode(bytes.fromhex(sys.argv[2]))
results = {}
point = base / ("tmpfs" + name)
point.mkdir()
_syscalls.mount("tmpfs", point, "tmpfs", 0, "mode=0755")
mount = _mountinfo.containing_mount(point, _mountinfo.read())
results["tmpfs"] = mount is not None and mount.point == point and mount.fstype == "tmpfs"
for way in ("mount2", "newapi"):
    _overlayopts._new_api_refused = way == "mount2"
    lowers = [base / way / ("lo" + name), base / way / "l2" / ("lo" + name)]
    upper, work, merged = (base / way / (k + name) for k in ("up", "wk", "mg"))
    for d in (*lowers, upper, work, merged):
        d.mkdir(parents=True)
    options = {"upperdir": str(upper), "workdir": str(work)}
    _overlayopts.mount_overlay(merged, lowers, options, source="pytest-overlay")
    (merged / "f").write_text("x")
    mount = _mountinfo.containing_mount(merged, _mountinfo.read())
    results[way] = {
        "point": mount is not None and mount.point == merged,
        "source": mount.source if mount else None,
        "layers": mount is not None and mount.layer_dirs() == [*lowers, upper, work],
        "written": (upper / "f").read_text(),
    }
print(json.dumps(results))
"""


@pytest.mark.parametrize(
    "name", [HOSTILE, os.fsdecode(b"back\\slash only"), "a:b,c"], ids=["all", "backslash", "sep"]
)
def test_real_mounts_at_hostile_paths(tmp_path: Path, name: str) -> None:
    gate("kernel", kernel_reason())
    argv = [sys.executable, "-c", CHILD, str(tmp_path), os.fsencode(name).hex()]
    # From the checkout, which python -c puts first on the child's path.
    done = run(argv, cwd=Path(__file__).parents[1], namespace=Namespace(), timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["tmpfs"]
    for way in ("mount2", "newapi"):
        expected = {"point": True, "source": "pytest-overlay", "layers": True, "written": "x"}
        assert results[way] == expected, way
