"""``pytest-overlay layers`` and ``clean --layers``: the cached snapshot layers.

Most tests write a cache the way :class:`~pytest_overlay._snapshot.cache.LayerCache` leaves it
(``<name>-<key>/layer/`` and ``meta.json``) and run :func:`main` in-process; the last ones
let a real pytest run build the layers and run the command as a program.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_overlay._cli import clean as cli_clean
from pytest_overlay._cli import main
from pytest_overlay._cli.layers import age
from pytest_overlay._keep import Store
from pytest_overlay._snapshot.cache import LAYER_DIR, META_FILE, LayerCache, default_layer_root
from tests._run import counts, run_module
from tests._sample_project import LAYER_FIXTURES

UTC = dt.timezone.utc
GONE_KEY = "0123456789ab" + "c" * 52


def fake_layer(
    root: Path,
    name: str,
    *,
    created: dt.datetime,
    size: int = 0,
    below: Sequence[str] = (),
) -> str:
    """Cache a layer *name* the way ``LayerCache.get_or_build`` does; returns its key."""
    key = hashlib.sha256(name.encode()).hexdigest()
    directory = root / f"{name}-{key[:20]}"
    (directory / LAYER_DIR).mkdir(parents=True)
    (directory / LAYER_DIR / "file.txt").write_text(name)
    meta = {
        "inputs": ["requirements.txt"],
        "key_repr": "None",
        "name": name,
        "key": key,
        "below": list(below),
        "created": created.isoformat(timespec="seconds"),
        "build_seconds": 0.5,
        "size": size,
        "run_id": "20250101-100000-11",
        "format": "1",
    }
    (directory / META_FILE).write_text(json.dumps(meta))
    return key


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty layer cache; the current directory is an empty project beside it."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "layers"
    root.mkdir()
    return root


@pytest.fixture
def keys(cache: Path) -> dict[str, str]:
    """base; tools on base; extra on tools and on a layer no longer cached."""
    now = dt.datetime.now(UTC)
    base = fake_layer(cache, "base", created=now - dt.timedelta(days=5, hours=1), size=2048)
    tools = fake_layer(
        cache, "tools", created=now - dt.timedelta(hours=2, minutes=1), size=3 << 20, below=[base]
    )
    extra = fake_layer(
        cache,
        "extra",
        created=now - dt.timedelta(minutes=3, seconds=5),
        size=100,
        below=[tools, GONE_KEY],
    )
    return {"base": base, "tools": tools, "extra": extra}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- layers -----------------------------------------------------------------------------------


def test_layers_lists_name_key_size_age_and_what_each_stacks_on(
    cache: Path, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"snapshot layers in {cache} (--layer-dir)"
    assert lines[1].split() == ["NAME", "KEY", "SIZE", "AGE", "ON"]
    # Oldest first; an unknown key below is shown as its first 12 hex digits.
    assert [line.split() for line in lines[2:5]] == [
        ["base", keys["base"][:12], "2.0", "KiB", "5", "d", "-"],
        ["tools", keys["tools"][:12], "3.0", "MiB", "2", "h", "base"],
        ["extra", keys["extra"][:12], "100", "B", "3", "min", f"tools,{GONE_KEY[:12]}"],
    ]
    # The columns line up.
    assert lines[1].index("SIZE") == lines[2].index("2.0 KiB") == lines[4].index("100 B")
    assert lines[1].index("ON") == lines[2].rindex("-") == lines[3].rindex("base")
    assert lines[5] == "3 layers, 3.0 MiB"
    assert len(lines) == 6


def test_layer_dir_is_relative_to_the_current_directory(
    cache: Path, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "layers", "--layer-dir", "../proj/../layers")
    assert code == 0
    assert out.startswith(f"snapshot layers in {cache} (--layer-dir)\n")
    assert "tools" in out


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_no_layers_is_not_an_error(
    cache: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = cache / "missing" if where == "missing" else cache
    code, out, err = run_main(capsys, "layers", "--layer-dir", str(root))
    assert (code, err) == (0, "")
    assert out.startswith(f"no snapshot layers cached in {root} (--layer-dir)\n")
    assert "overlay_layer" in out


def test_the_default_cache_is_the_projects(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project found by its config file, from a subdirectory.
    project = tmp_path / "proj"
    (project / "pkg").mkdir()
    monkeypatch.chdir(project / "pkg")
    default = default_layer_root(project)
    assert default.is_relative_to(tmp_path / "xdg")
    code, out, _ = run_main(capsys, "layers")
    assert code == 0
    assert out.startswith(f"no snapshot layers cached in {default} (of the project {project})")
    fake_layer(default, "tools", created=dt.datetime.now(UTC))
    code, out, _ = run_main(capsys, "layers")
    assert code == 0
    assert out.startswith(f"snapshot layers in {default} (of the project {project})")
    assert out.splitlines()[2].split()[0] == "tools"
    # A project found by its .pytest_cache.
    other = tmp_path / "other"
    (other / ".pytest_cache").mkdir(parents=True)
    monkeypatch.chdir(other)
    _, out, _ = run_main(capsys, "layers")
    assert f"in {default_layer_root(other)} (of the project {other})" in out


def test_hostile_meta_is_printed_inert(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = fake_layer(cache, "evil", created=dt.datetime.now(UTC))
    meta_file = cache / f"evil-{key[:20]}" / META_FILE
    meta = json.loads(meta_file.read_text())
    meta.update(name="ev\x1b[2Jil\nFAKE", key="\x1b]0;t\x07" + key, below=["\u202e" + key])
    meta_file.write_text(json.dumps(meta))
    code, out, _ = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert code == 0
    assert len(out.splitlines()) == 4
    for char in out:
        assert char == "\n" or char.isprintable(), f"{char!r} in {out!r}"


@pytest.mark.parametrize("meta", ["[]", '{"name": "x", "size": "big"}', '{"below": 3}'])
def test_a_meta_file_that_is_not_a_layers_is_skipped(
    cache: Path, meta: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (cache / "odd").mkdir()
    (cache / "odd" / META_FILE).write_text(meta)
    code, out, err = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert code == 0
    assert out.startswith("no snapshot layers cached in")
    assert "Traceback" not in err
    assert (cache / "odd").is_dir()


def test_torn_meta_files_are_skipped(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cache / "torn").mkdir()
    (cache / "torn" / META_FILE).write_text("{not json")
    code, out, _ = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert code == 0
    assert out.startswith("no snapshot layers cached in")


@pytest.mark.parametrize(
    ("ago", "shown"),
    [
        (dt.timedelta(0), "0 s"),
        (dt.timedelta(seconds=59), "59 s"),
        (dt.timedelta(seconds=60), "1 min"),
        (dt.timedelta(minutes=59, seconds=59), "59 min"),
        (dt.timedelta(hours=2), "2 h"),
        (dt.timedelta(hours=23, minutes=59), "23 h"),
        (dt.timedelta(days=5, hours=23), "5 d"),
        (dt.timedelta(days=400), "400 d"),
        (dt.timedelta(minutes=-5), "0 s"),  # a clock that moved back
    ],
)
def test_age(ago: dt.timedelta, shown: str) -> None:
    now = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert age((now - ago).isoformat(timespec="seconds"), now) == shown


def test_age_of_odd_times() -> None:
    now = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert age("2025-06-01T11:00:00", now) == "1 h"  # no zone: UTC, as we write it
    assert age("2025-06-01T13:00:00+02:00", now) == "1 h"
    assert age("", now) == "?"
    assert age("yesterday", now) == "?"


# --- clean --layers ---------------------------------------------------------------------------


def test_clean_layers_asks_then_removes_only_the_layers(
    cache: Path, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(Path.cwd() / ".pytest_cache" / "d" / "overlay")
    store.start_run("20250102-100000-22", Path.cwd(), "failed", 10)
    (cache / ".failed-broken-0000.json").write_text("{}")
    (cache / "notes.txt").write_text("not a layer\n")

    code, out, err = run_main(capsys, "clean", "--layers", "--layer-dir", str(cache))
    assert (code, out) == (1, "")
    assert "nothing removed (3 snapshot layers cached)" in err
    assert "--yes" in err
    assert len(list(cache.glob("*/meta.json"))) == 3

    # Plain clean removes the kept layers of tests, not the snapshot layers.
    code, out, _ = run_main(capsys, "clean", "--yes")
    assert code == 0
    assert store.run_ids() == []
    assert len(list(cache.glob("*/meta.json"))) == 3

    store.start_run("20250103-100000-33", Path.cwd(), "failed", 10)
    code, out, err = run_main(capsys, "clean", "--layers", "--layer-dir", str(cache), "-y")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"removed layer base ({keys['base'][:12]}, 2.0 KiB)",
        f"removed layer tools ({keys['tools'][:12]}, 3.0 MiB)",
        f"removed layer extra ({keys['extra'][:12]}, 100 B)",
        f"removed 3 snapshot layers (3.0 MiB) from {cache}",
    ]
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]
    assert store.run_ids() == ["20250103-100000-33"]

    code, out, _ = run_main(capsys, "clean", "--layers", "--layer-dir", str(cache), "--yes")
    assert code == 0
    assert out == f"no snapshot layers in {cache} (--layer-dir); nothing to clean\n"
    code, out, _ = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert (code, out.startswith("no snapshot layers cached")) == (0, True)


def test_clean_layers_of_a_cache_built_by_layer_cache(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer_cache = LayerCache(cache, "20250101-100000-11", rebuild=False)

    def build(scratch: Path) -> Path:
        (scratch / LAYER_DIR).mkdir()
        (scratch / LAYER_DIR / "tool").write_text("tool\n")
        return scratch / LAYER_DIR

    base = layer_cache.get_or_build("base", "a" * 64, build, (), {"inputs": []})
    layer_cache.get_or_build("top", "b" * 64, build, (base,), {"inputs": []})
    code, out, _ = run_main(capsys, "layers", "--layer-dir", str(cache))
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:4]]
    assert rows == [
        ["base", "a" * 12, "5", "B", "0", "s", "-"],
        ["top", "b" * 12, "5", "B", "0", "s", "base"],
    ]
    code, out, _ = run_main(capsys, "clean", "--layers", "--layer-dir", str(cache), "--yes")
    assert code == 0
    assert out.endswith(f"removed 2 snapshot layers (10 B) from {cache}\n")
    assert not list(cache.glob("*/meta.json"))


def test_clean_layers_refuses_while_a_view_uses_one(
    cache: Path,
    keys: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Path] = []

    def views_of(directory: Path) -> list[Path]:
        seen.append(directory)
        return [Path("/mnt/view")]

    monkeypatch.setattr(cli_clean, "views_of", views_of)
    code, out, err = run_main(capsys, "clean", "--layers", "--layer-dir", str(cache), "--yes")
    assert (code, out) == (1, "")
    assert seen == [cache]
    assert "is part of the view mounted at /mnt/view" in err
    assert "hint: unmount it first: pytest-overlay umount /mnt/view" in err
    assert len(list(cache.glob("*/meta.json"))) == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["clean", "--layers", "--run", "latest", "--yes"],
        ["clean", "--layer-dir", "LAYERS", "--yes"],  # would remove the kept layers instead
        ["layers", "--yes"],
        ["layers", "--layer-dir"],
    ],
)
def test_usage_errors(
    cache: Path, keys: dict[str, str], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(Path.cwd() / ".pytest_cache" / "d" / "overlay")
    store.start_run("20250102-100000-22", Path.cwd(), "failed", 10)
    argv = [str(cache) if arg == "LAYERS" else arg for arg in argv]
    code, out, err = run_main(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(("usage: pytest-overlay", "pytest-overlay: error: --layer-dir"))
    assert len(list(cache.glob("*/meta.json"))) == 3
    assert store.run_ids() == ["20250102-100000-22"]


# --- help -------------------------------------------------------------------------------------


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert "layers              List the cached snapshot layers" in out
    assert "Snapshot layers are cached outside the project: see `pytest-overlay layers --help`" in (
        " ".join(out.split())
    )

    code, out, _ = run_main(capsys, "layers", "--help")
    assert code == 0
    assert out.startswith("usage: pytest-overlay layers [-h] [--layer-dir DIR]\n")
    text = " ".join(re.sub(r"-\n\s+", "-", out).split())  # argparse may wrap at a hyphen
    for phrase in (
        "first 12 hex digits of the cache key",
        "the layers each one stacks on",
        ".pytest_cache or a pytest config file",
        "A project that sets overlay_layer_dir needs --layer-dir",
        "--overlay-layer-dir",
        "`pytest-overlay clean --layers` removes them",
        "exit codes: 0 success 1 not found, ambiguous, or nothing to act on 2 usage error",
    ):
        assert phrase in text, phrase

    code, out, _ = run_main(capsys, "clean", "--help")
    assert code == 0
    assert "[--run RUN_ID | --layers] [--layer-dir DIR]" in " ".join(out.split())
    text = " ".join(out.split())
    for phrase in (
        "the cached snapshot layers stay",
        "With --layers, remove every cached snapshot layer instead",
        "and nothing else",
        "elsewhere --yes is needed",
        "3 the view cannot be mounted here (neither kernel overlayfs nor FUSE)",
    ):
        assert phrase in text, phrase


# --- end to end -------------------------------------------------------------------------------

CONFTEST = (
    r"""
import pytest


def build_tools(root):
    (root / "tools").mkdir()
    (root / "tools" / "tool.sh").write_text("echo tool\n")


def build_extra(root):
    (root / "extra.txt").write_text("extra\n")

"""
    + LAYER_FIXTURES
)

TESTS = r"""
import pytest


@pytest.mark.overlay(layers=["tools_layer"])
def test_tools(overlay_root):
    assert (overlay_root / "tools" / "tool.sh").read_text() == "echo tool\n"


@pytest.mark.overlay(layers=["extra_layer"])
def test_extra(overlay_root):
    assert (overlay_root / "extra.txt").exists()
    assert (overlay_root / "tools" / "tool.sh").exists()
"""


def _layered_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_layered.py").write_text(TESTS)
    (project / "requirements.txt").write_text("tool==1\n")
    return project


def _env(tmp_path: Path) -> dict[str, str | None]:
    return {"XDG_CACHE_HOME": str(tmp_path / "xdg")}


PYTEST = ("pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "--overlay-backend=copy")


def test_layers_built_by_pytest_are_listed_and_cleaned(tmp_path: Path) -> None:
    project = _layered_project(tmp_path)
    env = _env(tmp_path)
    layers = tmp_path / "layers"
    done = run_module(project, env, *PYTEST, f"--overlay-layer-dir={layers}")
    assert counts(done.stdout).get("passed") == 2, done.stdout + done.stderr

    listed = run_module(project, env, "pytest_overlay", "layers", "--layer-dir", str(layers))
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"snapshot layers in {layers} (--layer-dir)"
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert sorted(rows) == ["extra", "tools"]
    assert rows["tools"][-1] == "-"
    assert rows["extra"][-1] == "tools"
    assert lines[4].startswith("2 layers, ")

    refused = run_module(
        project, env, "pytest_overlay", "clean", "--layers", "--layer-dir", str(layers)
    )
    assert refused.returncode == 1
    assert "nothing removed (2 snapshot layers cached)" in refused.stderr
    assert len(list(layers.glob("tools-*"))) == 1

    cleaned = run_module(
        project, env, "pytest_overlay", "clean", "--layers", "--yes", "--layer-dir", str(layers)
    )
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed layer tools (" in cleaned.stdout
    assert "removed 2 snapshot layers" in cleaned.stdout
    assert "Traceback" not in cleaned.stderr
    assert not list(layers.glob("tools-*"))
    assert not list(layers.glob("extra-*"))
    listed = run_module(project, env, "pytest_overlay", "layers", "--layer-dir", str(layers))
    assert listed.returncode == 0
    assert listed.stdout.startswith(f"no snapshot layers cached in {layers}")


def test_the_command_finds_the_cache_pytest_used_by_default(tmp_path: Path) -> None:
    project = _layered_project(tmp_path)
    env = _env(tmp_path)
    done = run_module(project, env, *PYTEST, "test_layered.py::test_tools")
    assert counts(done.stdout).get("passed") == 1, done.stdout + done.stderr
    listed = run_module(project / "sub", env, "pytest_overlay", "layers")
    assert listed.returncode == 0, listed.stderr
    assert f"(of the project {project})" in listed.stdout.splitlines()[0]
    assert listed.stdout.splitlines()[2].split()[0] == "tools"
    cleaned = run_module(project / "sub", env, "pytest_overlay", "clean", "--layers", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed 1 snapshot layer (" in cleaned.stdout
