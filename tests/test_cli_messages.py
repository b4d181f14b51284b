"""What the ``pytest-overlay`` command says: where it looked, why nothing is there, how many.

The store is found where the project's ini puts pytest's cache (``cache_dir`` in every config
file pytest reads), checked in-process against :mod:`pytest_overlay._storepath` and once end to
end: a real pytest run keeps a failed test's layer in a moved cache, and the command, run as a
program from a subdirectory, lists it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_overlay._cli import main
from pytest_overlay._keep import Record, Store, keep_test
from pytest_overlay._storepath import (
    _minimal_toml_setting,
    find_project,
    read_config,
    resolve_cache_dir,
    store_dir,
)
from tests._run import counts, run_module

CONFIGS = {
    "pytest.ini": "[pytest]\ncache_dir = {value}\n",
    ".pytest.ini": "[pytest]\ncache_dir = {value}\n",
    "pytest.toml": '[pytest]\ncache_dir = "{value}"\n',
    "pyproject.toml": '[project]\nname = "x"\n\n[tool.pytest.ini_options]\ncache_dir = "{value}"\n',
    "tox.ini": "[tox]\nenvlist = py\n\n[pytest]\ncache_dir = {value}\n",
    "setup.cfg": "[metadata]\nname = x\n\n[tool:pytest]\ncache_dir = {value}\n",
}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    monkeypatch.chdir(root / "pkg")
    monkeypatch.delenv("TOX_ENV_DIR", raising=False)
    return root


def _keep_a_run(
    store: Store, root: Path, run_id: str = "20250102-100000-22", tests: int = 0
) -> None:
    run_dir = store.start_run(run_id, root, "failed", 10)
    for index in range(tests):
        record = Record(
            nodeid=f"test_x.py::test_{index}",
            outcome="failed",
            phases={"call": "failed"},
            backend="copy",
            lowers=[str(root)],
            time="2025-01-02T10:00:01+00:00",
            diff={"changes": []},
            report="",
            upper=None,
        )
        keep_test(run_dir, record, None)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cache_dir_in_the_ini_reaches_the_command(
    project: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / name).write_text(CONFIGS[name].format(value="build/cache"))
    store = Store(project / "build" / "cache" / "d" / "overlay")
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert out.splitlines()[0] == (
        f"no kept layers in {store.root} (cache_dir = build/cache in {project / name})"
    )
    _keep_a_run(store, project)
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert out.startswith("run 20250102-100000-22 ")
    assert f"in {store.root}" in out.splitlines()[0]


def test_cache_dir_expands_home_and_variables_as_pytest_does(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BUILD", "out")
    assert resolve_cache_dir("~/c", project) == tmp_path / "home" / "c"
    assert resolve_cache_dir("$BUILD/c", project) == project / "out" / "c"
    assert resolve_cache_dir("/abs", project) == Path("/abs")
    monkeypatch.setenv("TOX_ENV_DIR", str(tmp_path / "tox"))
    (project / "pytest.ini").write_text("[pytest]\n")
    found = find_project(project / "pkg")
    assert found is not None
    assert store_dir(found.cache_path) == tmp_path / "tox" / ".pytest_cache" / "d" / "overlay"


def test_project_is_found_as_pytest_finds_its_rootdir(project: Path) -> None:
    # Files without a pytest section do not make the rootdir; the nearest one that has one does.
    (project / "setup.cfg").write_text("[metadata]\nname = x\n")
    (project / "tox.ini").write_text("[tox]\n")
    (project.parent / "pytest.ini").write_text("[pytest]\ncache_dir = c\n")
    found = find_project(project / "pkg")
    assert found is not None
    assert (found.rootdir, found.cache_dir) == (project.parent, "c")
    # A pyproject.toml without a pytest table is the rootdir only if nothing else is found.
    (project.parent / "pytest.ini").unlink()
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    found = find_project(project / "pkg")
    assert found is not None
    assert (found.rootdir, found.inifile) == (project, project / "pyproject.toml")
    # Of two config files in one directory, pytest's order decides (pytest.ini first).
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "tox.ini").write_text("[pytest]\ncache_dir = not-this\n")
    found = find_project(project / "pkg")
    assert found is not None
    assert (found.inifile, found.cache_dir) == (project / "pytest.ini", None)


def test_unreadable_configs_are_not_fatal(project: Path) -> None:
    (project / "pytest.ini").write_text("this is = not [ an ini\n[")
    assert read_config(project / "pytest.ini") == (True, None)
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options\n")
    assert read_config(project / "pyproject.toml") == (False, None)


def test_the_toml_reader_of_python_3_10() -> None:
    text = (
        '[tool.black]\ncache_dir = "no"\n\n'
        "[ tool.pytest.ini_options ]  # pytest\n"
        "addopts = '-q'\n"
        'cache_dir = "build/\\u00e9t\\u00e9"\n'
    )
    tables = ("tool.pytest.ini_options", "tool.pytest")
    assert _minimal_toml_setting(text, tables, "cache_dir") == (True, "build/été")
    assert _minimal_toml_setting(
        "[tool.pytest]\ncache_dir = 'lit\\eral'\n", tables, "cache_dir"
    ) == (
        True,
        "lit\\eral",
    )
    assert _minimal_toml_setting('[project]\nname = "x"\n', tables, "cache_dir") == (False, None)


# --- what the messages say ----------------------------------------------------------------------


def test_list_outside_a_project_ends_its_hint_with_a_whole_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 21: the hint ended "...--overlay-keep=all keeps every test's".
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].endswith(f"(no pytest project found upward from {tmp_path})"), out
    assert lines[1].endswith("; --overlay-keep=all keeps every test's, passed or failed"), out


def test_nothing_kept_says_where_it_looked_and_when_layers_are_kept(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "pytest.ini").write_text("[pytest]\n")
    code, out, err = run_main(capsys, "list")
    assert (code, err) == (0, "")
    first, *hints = out.splitlines()
    assert first == (
        f"no kept layers in {project / '.pytest_cache' / 'd' / 'overlay'} "
        f"(the project of {project / 'pytest.ini'})"
    )
    text = " ".join(hints)
    assert "keeps the upper layer of each failed test (--overlay-keep=failed, the default)" in text
    assert "with the overlay_root fixture and in place (--overlay) alike" in text
    assert "--overlay-keep=all keeps every test's, passed or failed" in text
    assert "only" not in text  # not "only with --overlay"
    assert "--cache-dir" in text
    # The commands that need a kept test say the same, as an error.
    code, out, err = run_main(capsys, "show", "anything")
    assert (code, out) == (1, "")
    assert err.startswith(f"pytest-overlay: error: no kept layers in {project}")
    assert "(the project of" in err
    assert "hint: pytest-overlay keeps the upper layer of each failed test" in err
    assert "--cache-dir" in err
    code, out, _ = run_main(capsys, "clean", "--yes")
    assert code == 0
    assert out.endswith(f"(the project of {project / 'pytest.ini'}); nothing to clean\n")


def test_clean_counts_in_the_singular_and_the_plural(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "pytest.ini").write_text("[pytest]\n")
    store = Store(project / ".pytest_cache" / "d" / "overlay")
    _keep_a_run(store, project, tests=1)
    code, out, _ = run_main(capsys, "clean", "--yes")
    assert code == 0
    assert out.splitlines() == [
        "removed run 20250102-100000-22: 1 kept test, 0 B",
        f"removed 1 run (1 test, 0 B) from {store.root}",
    ]
    _keep_a_run(store, project, "20250103-100000-33", tests=2)
    _keep_a_run(store, project, "20250104-100000-44", tests=1)
    code, out, _ = run_main(capsys, "clean", "--yes")
    assert out.splitlines() == [
        "removed run 20250103-100000-33: 2 kept tests, 0 B",
        "removed run 20250104-100000-44: 1 kept test, 0 B",
        f"removed 2 runs (3 tests, 0 B) from {store.root}",
    ]


# --- end to end ---------------------------------------------------------------------------------

FAILING = """
def test_writes_and_fails(overlay_root):
    (overlay_root / "made.txt").write_text("x")
    assert False
"""


def test_a_layer_kept_in_a_moved_cache_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "sub").mkdir(parents=True)
    (root / "pyproject.toml").write_text(CONFIGS["pyproject.toml"].format(value="$BUILD/cache"))
    (root / "test_kept.py").write_text(FAILING)
    # Not tox's variables: the store would follow TOX_ENV_DIR.
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TOX_")}
    env["BUILD"] = "out"

    done = run_module(root, env, "pytest", "-p", "no:randomly", "--overlay-backend=copy")
    assert counts(done.stdout).get("failed") == 1, done.stdout + done.stderr
    store = root / "out" / "cache" / "d" / "overlay"
    assert store.is_dir(), done.stdout
    listed = run_module(root / "sub", env, "pytest_overlay", "list")
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    assert f"in {store}" in listed.stdout.splitlines()[0]
    assert "test_kept.py::test_writes_and_fails" in listed.stdout
    assert listed.stdout.splitlines()[-1] == "1 kept test"
    cleaned = run_module(root / "sub", env, "pytest_overlay", "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed 1 run (1 test, " in cleaned.stdout
