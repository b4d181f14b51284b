"""The ``pytest-overlay`` command, on stores made with the plugin's own ``_keep`` functions.

Commands that only read run in-process through :func:`main`.  Every real mount runs in a child
in a private mount namespace (:func:`tests._run.run` with a :class:`tests._unpriv.Namespace`,
or, unprivileged, the test-user harness), so nothing is ever mounted in the namespace of the
test process.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_overlay import _probe
from pytest_overlay._backends import fuse as fuse_backend
from pytest_overlay._cli import main
from pytest_overlay._cli import mount as cli_mount
from pytest_overlay._cli.common import human_size
from pytest_overlay._diff import diff_upper
from pytest_overlay._keep import RECORD_FILE, Record, Store, keep_test
from pytest_overlay._layers import WHITEOUT_FILES_MARKER
from pytest_overlay._safetext import safe_path
from tests import _unpriv
from tests._gates import fuse_reason, gate, kernel_reason
from tests._run import Result, run, run_module
from tests._unpriv import Namespace

RUN_OLD = "20250101-100000-11"
RUN_NEW = "20250102-100000-22"
HOSTILE_ID = "test_evil.py::test_x[\x1b[2J\nFAKE\u202e]"
HOSTILE_FILE = "bad\x1b]0;title\x07\nname"


@dataclass
class Project:
    """A project directory, its lower tree and its kept-layer store."""

    root: Path
    scratch: Path

    @property
    def store(self) -> Store:
        return Store(self.root / ".pytest_cache" / "d" / "overlay")

    def run(self, run_id: str = RUN_NEW, store: Store | None = None) -> Path:
        return (store or self.store).start_run(run_id, self.root, "failed", 10)

    def keep(
        self,
        run_dir: Path,
        nodeid: str,
        files: dict[str, str | None],
        *,
        outcome: str = "failed",
        report: str | None = None,
        upper: bool = True,
    ) -> Path:
        """Keep a test whose upper layer writes *files* (None: a kernel whiteout)."""
        layer = self.scratch / f"upper{len(list(self.scratch.iterdir()))}"
        layer.mkdir()
        for name, text in files.items():
            path = layer / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if text is None:
                os.mknod(path, stat.S_IFCHR | 0o600, 0)
            else:
                path.write_text(text)
        diff = diff_upper(layer, [self.root])
        if report is None:
            report = f"{diff}\n--- a/keep.txt\n+++ b/keep.txt\n-old\n+new"
        record = Record(
            nodeid=nodeid,
            outcome=outcome,
            phases={"setup": "passed", "call": outcome},
            backend="kernel" if upper else "copy",
            lowers=[str(self.root)],
            time="2025-01-02T10:00:01+00:00",
            diff=json.loads(diff.to_json()),
            report=report,
        )
        return keep_test(run_dir, record, layer if upper else None)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "keep.txt").write_text("old\n")
    (root / "gone.txt").write_text("bye\n")
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return Project(root, scratch)


@pytest.fixture
def kept(project: Project) -> Project:
    """Two runs; the latest keeps three tests."""
    old = project.run(RUN_OLD)
    project.keep(old, "tests/test_old.py::test_legacy", {"legacy.txt": "l"})
    new = project.run(RUN_NEW)
    files = {"keep.txt": "new\n", "added.txt": "hello\n", "gone.txt": None}
    project.keep(new, "tests/test_a.py::test_alpha", files)
    project.keep(new, "tests/test_a.py::test_alpha2", {"more.txt": "m"}, outcome="error")
    project.keep(new, "tests/test_b.py::test_beta", {"b.txt": "b"}, outcome="passed")
    return project


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_inert(text: str) -> None:
    """Nothing a terminal would act on: no control characters but newline, no bidi marks."""
    for char in text:
        assert char == "\n" or char.isprintable(), f"{char!r} in {text!r}"


# --- list -----------------------------------------------------------------------------------


def test_list_shows_the_latest_run(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"run {RUN_NEW} (started 20")
    assert lines[0].endswith(f"in {kept.store.root}")
    assert lines[1].split() == ["NODE", "ID", "OUTCOME", "CHANGES", "SIZE"]
    assert lines[2].split() == [
        "tests/test_a.py::test_alpha",
        "failed",
        "+1",
        "~1",
        "-1",
        "10",
        "B",
    ]
    assert lines[3].split()[:2] == ["tests/test_a.py::test_alpha2", "error"]
    assert lines[4].split()[:2] == ["tests/test_b.py::test_beta", "passed"]
    assert lines[-1] == "3 kept tests"
    assert "test_legacy" not in out
    assert "\x1b" not in out  # no colour when not a terminal


def test_list_shows_incomplete_and_torn_records(
    kept: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = kept.store.runs_dir / RUN_NEW / "tests"
    (tests / "crashed-0123456789").mkdir()  # the upper was being copied
    torn = kept.keep(kept.store.runs_dir / RUN_NEW, "tests/test_c.py::test_torn", {"t": "t"})
    (torn / RECORD_FILE).write_text('{"nodeid": "tests/test_c.py::test_torn", "outc')
    wrong = kept.keep(kept.store.runs_dir / RUN_NEW, "tests/test_c.py::test_wrong", {"w": "w"})
    (wrong / RECORD_FILE).write_text(
        json.dumps({**json.loads((wrong / RECORD_FILE).read_text()), "nodeid": 5})
    )
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert "(incomplete: crashed-0123456789)" in out
    assert f"(incomplete: {torn.name})" in out
    assert f"(incomplete: {wrong.name})" in out
    assert "3 kept tests, 3 incomplete" in out


def test_list_unreadable_diff_shows_question_mark(
    kept: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    test_dir = kept.keep(kept.store.runs_dir / RUN_NEW, "tests/test_d.py::test_odd", {"o": "o"})
    data = json.loads((test_dir / RECORD_FILE).read_text())
    data["diff"] = {"changes": [{"path": "x", "kind": "exploded"}]}
    (test_dir / RECORD_FILE).write_text(json.dumps(data))
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines() if "test_odd" in line] == ["?"]
    code, _, err = run_main(capsys, "show", "test_odd", "--stat")
    assert code == 1
    assert "stored changes of tests/test_d.py::test_odd cannot be read" in err


def test_list_other_runs(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "list", "--run", RUN_OLD)
    assert code == 0
    assert out.startswith(f"run {RUN_OLD} ")
    assert "test_legacy" in out
    assert "test_alpha" not in out
    code, out, _ = run_main(capsys, "list", "--all-runs")
    assert code == 0
    assert out.index(f"run {RUN_OLD}") < out.index(f"run {RUN_NEW}")
    assert "test_legacy" in out
    assert "test_alpha" in out
    code, out, err = run_main(capsys, "list", "--run", "nope/../..")
    assert (code, out) == (1, "")
    assert "pytest-overlay: error: no run 'nope/../..'" in err
    assert RUN_NEW in err  # the hint names the runs there are


def test_list_without_kept_layers(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "list")
    assert (code, err) == (0, "")
    assert f"no kept layers in {project.store.root}" in out
    assert "--overlay-keep=all" in out


def test_list_of_a_run_that_kept_nothing(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    project.run()
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert "no tests were kept in this run" in out


def test_store_is_found_from_a_subdirectory_or_given(
    kept: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(kept.root / "pkg")
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert "test_alpha" in out
    # --cache-dir, before or after the command, relative to the current directory.
    other = kept.scratch / "other"
    other.mkdir()
    run = kept.run(store=Store(other / "build" / "cache" / "d" / "overlay"))
    kept.keep(run, "tests/test_t.py::test_moved", {"t": "t"})
    monkeypatch.chdir(other)
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert f"no kept layers in {other / '.pytest_cache' / 'd' / 'overlay'}" in out
    for argv in (["--cache-dir", "build/cache", "list"], ["list", "--cache-dir", "build/cache"]):
        code, out, _ = run_main(capsys, *argv)
        assert code == 0
        assert "test_moved" in out


# --- show -----------------------------------------------------------------------------------


def test_show_exact_node_id_prints_the_report(
    kept: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "show", "tests/test_a.py::test_alpha")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"tests/test_a.py::test_alpha: failed (kernel backend, run {RUN_NEW})"
    assert lines[1].startswith("kept upper layer: ")
    assert lines[1].endswith("/upper")
    assert Path(lines[1].split(": ", 1)[1]).is_dir()
    assert lines[3:] == [
        "A added.txt",
        "D gone.txt",
        "M keep.txt",
        "--- a/keep.txt",
        "+++ b/keep.txt",
        "-old",
        "+new",
    ]


def test_show_unique_substring(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "show", "beta")
    assert code == 0
    assert out.startswith("tests/test_b.py::test_beta: passed")


def test_show_ambiguous_substring_lists_candidates(
    kept: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "show", "test_alpha")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"pytest-overlay: error: 'test_alpha' matches 2 kept tests of run {RUN_NEW}:",
        "  tests/test_a.py::test_alpha",
        "  tests/test_a.py::test_alpha2",
        "hint: give more of the node id, or all of it",
    ]


def test_ambiguous_list_is_capped(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    run = project.run()
    for index in range(12):
        project.keep(run, f"tests/test_many.py::test_{index:02}", {f"f{index}": "x"})
    code, _, err = run_main(capsys, "show", "test_many")
    assert code == 1
    assert "matches 12 kept tests" in err
    assert "tests/test_many.py::test_09" in err
    assert "tests/test_many.py::test_10" not in err
    assert "  ... and 2 more" in err


def test_show_unknown(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "show", "test_nothing")
    assert (code, out) == (1, "")
    assert f"pytest-overlay: error: no kept test of run {RUN_NEW} matches 'test_nothing'" in err
    assert "pytest-overlay list" in err
    # A test kept in an older run: the hint says which.
    code, _, err = run_main(capsys, "show", "legacy")
    assert code == 1
    assert f"--run {RUN_OLD}" in err
    code, out, _ = run_main(capsys, "show", "legacy", "--run", RUN_OLD)
    assert code == 0
    assert "test_legacy: failed" in out


def test_show_stat_name_only_and_json(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "show", "test_alpha", "--stat", "--run", "latest")
    assert code == 1  # still ambiguous
    code, out, _ = run_main(capsys, "show", "tests/test_a.py::test_alpha", "--stat")
    assert code == 0
    lines = out.splitlines()
    assert [line.split(" |")[0].rstrip() for line in lines[:3]] == [
        "A added.txt",
        "D gone.txt",
        "M keep.txt",
    ]
    assert lines[-1].startswith("3 files changed,")
    code, out, _ = run_main(capsys, "show", "tests/test_a.py::test_alpha", "--name-only")
    assert (code, out) == (0, "added.txt\ngone.txt\nkeep.txt\n")
    code, out, _ = run_main(capsys, "show", "tests/test_a.py::test_alpha", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["nodeid"] == "tests/test_a.py::test_alpha"
    assert data["outcome"] == "failed"
    assert data["lowers"] == [str(kept.root)]
    assert [c["path"] for c in data["diff"]["changes"]] == ["added.txt", "gone.txt", "keep.txt"]
    assert "+new" in data["report"]
    assert Record.from_dict(data).tree_diff().added == {"added.txt"}
    code, _, err = run_main(capsys, "show", "beta", "--stat", "--json")
    assert code == 2
    assert "not allowed with argument" in err


def test_hostile_names_are_printed_inert(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    run = project.run()
    # Paths are escaped when the report is rendered; raw content as if the store was tampered.
    report = f"A {safe_path(HOSTILE_FILE)}\n+\x1b[31mred\u202e\r"
    project.keep(run, HOSTILE_ID, {HOSTILE_FILE: "x"}, report=report)
    project.keep(run, HOSTILE_ID + "2", {"plain": "x"})
    outputs = []
    for argv in (
        ["list"],
        ["show", HOSTILE_ID],
        ["show", HOSTILE_ID, "--stat"],
        ["show", HOSTILE_ID, "--name-only"],
        ["show", HOSTILE_ID, "--json"],
        ["show", "evil"],  # ambiguous: the candidates are printed
        ["show", "\x1b[2J"],  # ambiguous too, and the query itself is echoed
    ):
        code, out, err = run_main(capsys, *argv)
        assert code == (1 if argv[1:] in (["evil"], ["\x1b[2J"]) else 0), argv
        assert_inert(out)
        assert_inert(err)
        outputs.append(out + err)
    listing, shown, stat_out, names, as_json, ambiguous, echoed = outputs
    safe_id = "test_evil.py::test_x[\\x1b[2J\\nFAKE\\u202e]"
    safe_file = "bad\\x1b]0;title\\x07\\nname"
    assert safe_id in listing
    assert shown.startswith(safe_id + ": failed")
    assert f"A {safe_file}" in shown
    assert "+\\x1b[31mred\\u202e\\r" in shown
    assert f"A {safe_file}" in stat_out
    assert names == safe_file + "\n"
    assert json.loads(as_json)["nodeid"] == HOSTILE_ID  # JSON escapes, and round-trips
    assert safe_id in ambiguous
    assert "'\\x1b[2J'" in echoed


def test_colour_only_when_asked_or_on_a_terminal(
    kept: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_main(capsys, "--color", "always", "show", "tests/test_a.py::test_alpha")
    assert code == 0
    assert "\x1b[32m+new\x1b[0m" in out
    assert "\x1b[31m-old\x1b[0m" in out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    code, out, _ = run_main(capsys, "show", "tests/test_a.py::test_alpha")
    assert "\x1b" not in out


# --- clean ----------------------------------------------------------------------------------


def test_clean(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "clean")
    assert (code, out) == (1, "")
    assert "nothing removed (2 runs kept)" in err
    assert "--yes" in err
    assert kept.store.run_ids() == [RUN_OLD, RUN_NEW]

    code, out, _ = run_main(capsys, "clean", "--run", RUN_OLD, "--yes")
    assert code == 0
    assert f"removed run {RUN_OLD}: 1 kept test, 1 B" in out
    assert "removed 1 run (1 test, 1 B) from" in out
    assert kept.store.run_ids() == [RUN_NEW]

    code, out, _ = run_main(capsys, "clean", "-y")
    assert code == 0
    assert f"removed run {RUN_NEW}: 3 kept tests" in out
    assert "removed 1 run (3 tests" in out
    assert kept.store.run_ids() == []
    assert kept.store.latest_run() is None

    code, out, _ = run_main(capsys, "clean", "--yes")
    assert code == 0
    assert "nothing to clean" in out
    code, out, _ = run_main(capsys, "list")
    assert (code, "no kept layers" in out) == (0, True)


def test_clean_unknown_run(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "clean", "--run", "../../..", "--yes")
    assert code == 1
    assert "no run '../../..'" in err
    assert kept.store.run_ids() == [RUN_OLD, RUN_NEW]


# --- help, usage and unexpected errors --------------------------------------------------------


@pytest.mark.parametrize("command", [None, "list", "show", "layers", "mount", "umount", "clean"])
def test_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, *([command] if command else []), "--help")
    assert code == 0
    assert "exit codes:" in out
    assert "3  the view cannot be mounted here (neither kernel overlayfs nor FUSE)" in out
    assert "usage: pytest-overlay" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["show"], ["frobnicate"], ["mount", "x"], ["--color", "pink", "list"]):
        code, _, err = run_main(capsys, *argv)
        assert code == 2, argv
        assert "usage: pytest-overlay" in err


def test_module_and_help_run_as_a_program(project: Project) -> None:
    done = run_module(project.root, None, "pytest_overlay", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("list", "show", "layers", "mount", "umount", "clean", "exit codes:"):
        assert command in done.stdout
    done = run_module(project.root, None, "pytest_overlay", "show", "x")
    assert done.returncode == 1
    assert done.stderr.startswith("pytest-overlay: error: no kept layers in ")
    assert "Traceback" not in done.stderr


def test_os_errors_are_reported_without_traceback(
    kept: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Store) -> list[str]:
        raise PermissionError(13, "Permission denied", str(self.runs_dir))

    monkeypatch.setattr(Store, "run_ids", denied)
    code, out, err = run_main(capsys, "clean", "--yes")
    assert (code, out) == (1, "")
    assert err == f"pytest-overlay: error: Permission denied: {kept.store.runs_dir}\n"


def test_corrupt_run_file_and_latest(kept: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (kept.store.runs_dir / RUN_NEW / "run.json").write_text("{not json")
    (kept.store.root / "latest").write_text("no-such-run\n")
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    assert out.startswith(f"run {RUN_NEW} (started unknown time)")


def test_latest_file_cannot_point_outside_the_runs(
    kept: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    (kept.store.root / "latest").write_text("..\n")
    code, out, _ = run_main(capsys, "clean", "--run", "latest", "--yes")
    assert code == 0
    assert f"removed run {RUN_NEW}: 3 kept tests" in out
    assert kept.store.run_ids() == [RUN_OLD]


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 << 30, "5.0 GiB"),
        (1 << 50, "1024.0 TiB"),
    ],
)
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown


# --- mount: what is refused before anything is mounted ----------------------------------------


def test_mount_checks_its_arguments_first(
    kept: Project, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "view"
    code, _, err = run_main(capsys, "mount", "test_beta", str(target))
    assert (code, "does not exist" in err) == (1, True)
    target.write_text("")
    code, _, err = run_main(capsys, "mount", "test_beta", str(target))
    assert (code, "is not a directory" in err) == (1, True)
    target.unlink()
    (target / "sub").mkdir(parents=True)
    code, _, err = run_main(capsys, "mount", "test_beta", str(target))
    assert (code, "is not empty" in err) == (1, True)
    code, _, err = run_main(capsys, "mount", "test_alpha", str(target))
    assert (code, "matches 2 kept tests" in err) == (1, True)


def test_mount_refuses_a_test_without_upper_or_lowers(
    project: Project, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = project.run()
    project.keep(run, "tests/test_c.py::test_copy", {"c": "c"}, upper=False)
    gone = project.keep(run, "tests/test_c.py::test_gone", {"g": "g"})
    data = json.loads((gone / RECORD_FILE).read_text())
    (gone / RECORD_FILE).write_text(json.dumps({**data, "lowers": [str(tmp_path / "moved")]}))
    (tmp_path / "view").mkdir()
    code, _, err = run_main(capsys, "mount", "test_copy", str(tmp_path / "view"))
    assert code == 1
    assert "kept without an upper layer (copy backend)" in err
    assert "`pytest-overlay show tests/test_c.py::test_copy`" in err
    code, _, err = run_main(capsys, "mount", "test_gone", str(tmp_path / "view"))
    assert code == 1
    assert f"lower layer {tmp_path / 'moved'} of tests/test_c.py::test_gone no longer exists" in err


def test_mount_says_why_it_cannot_mount(
    kept: Project,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = "mounting overlayfs is not permitted here (a container without CAP_SYS_ADMIN)"
    monkeypatch.setattr(_probe, "probe_kernel", lambda: _probe.ProbeResult(False, "root", reason))
    monkeypatch.setattr(fuse_backend, "probe_fuse", lambda: "/dev/fuse does not exist")
    (tmp_path / "view").mkdir()
    code, out, err = run_main(capsys, "mount", "test_beta", str(tmp_path / "view"))
    assert (code, out) == (3, "")
    assert (
        f"pytest-overlay: error: kernel overlayfs cannot be mounted here: {reason}; "
        "nor FUSE: /dev/fuse does not exist"
    ) in err
    assert "`pytest-overlay show tests/test_b.py::test_beta`" in err
    assert "copy backend" in err


def test_mount_where_neither_works_gives_no_advice_for_pytest(
    kept: Project,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 21: on Ubuntu's AppArmor the reason ended "meanwhile the overlay_root fixture
    # works ...", which a kept layer's view cannot use.
    reason = _probe.explain_mount_denied("a mount", errno.EACCES)
    assert "overlay_root fixture" in reason
    monkeypatch.setattr(_probe, "probe_kernel", lambda: _probe.ProbeResult(False, "user", reason))
    monkeypatch.setattr(fuse_backend, "probe_fuse", lambda: "/dev/fuse does not exist")
    (tmp_path / "view").mkdir()
    code, out, err = run_main(capsys, "mount", "test_beta", str(tmp_path / "view"))
    assert (code, out) == (3, "")
    assert "the user namespace was created, but a mount in it was denied (EACCES)" in err
    assert "; nor FUSE: /dev/fuse does not exist" in err
    assert "overlay_root" not in err
    assert "--overlay-backend" not in err


def test_mount_falls_back_to_fuse_where_the_kernel_cannot(
    kept: Project,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the fixture does: a kernel below 5.11 for an ordinary user, say, gets FUSE."""
    gate("fuse", fuse_reason())
    reason = "Linux 5.10 cannot mount overlayfs without root (needs 5.11 or newer)"
    monkeypatch.setattr(_probe, "probe_kernel", lambda: _probe.ProbeResult(False, "root", reason))
    view = tmp_path / "view"
    view.mkdir()
    v = shlex.quote(str(view))
    command = f"cat {v}/keep.txt {v}/added.txt; test -e {v}/gone.txt || echo gone; {WRITE} {v}/n"
    code = main(["mount", "tests/test_a.py::test_alpha", str(view), "--command", command])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.splitlines() == ["new", "hello", "gone", "write: EROFS"], err
    assert f"kernel overlayfs cannot be mounted here ({reason}): mounting with FUSE" in err
    assert os.listdir(view) == []  # unmounted when the command exited
    assert not (_alpha_upper(kept) / "n").exists()


def test_umount_of_something_not_mounted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(capsys, "umount", str(tmp_path))
    assert code == 1
    assert f"{tmp_path} is not a mount point" in err or "exit that shell" in err


# --- real mounts, as root, in a private mount namespace ---------------------------------------


def _needs_root_mounts() -> None:
    gate("kernel", kernel_reason())


def in_private_namespace(script: str, cwd: Path) -> Result:
    """Run a sh *script* in a new private mount namespace; ``$PO`` runs the command."""
    env = {"PO": f"{shlex.quote(sys.executable)} -m pytest_overlay"}
    return run(["sh", "-c", script], cwd=cwd, env=env, namespace=Namespace(), timeout=120)


WRITE = (
    f"{shlex.quote(sys.executable)} -c 'import errno, sys\n"
    'try:\n    open(sys.argv[1], "w").write("written")\n'
    'except OSError as e:\n    print("write:", errno.errorcode[e.errno])\n'
    'else:\n    print("write: ok")\''
)


@pytest.fixture
def mounted_project(kept: Project, tmp_path: Path) -> tuple[Project, Path]:
    _needs_root_mounts()
    opaque = kept.keep(
        kept.store.runs_dir / RUN_NEW, "tests/test_o.py::test_opaque", {"pkg/new.py": "y = 2\n"}
    )
    os.setxattr(opaque / "upper" / "pkg", "trusted.overlay.opaque", b"y")
    view = tmp_path / "view"
    view.mkdir()
    return kept, view


def _alpha_upper(project: Project) -> Path:
    return next((project.store.runs_dir / RUN_NEW / "tests").glob("test_alpha-*")) / "upper"


def test_root_mount_is_read_only_and_umount_removes_it(
    mounted_project: tuple[Project, Path],
) -> None:
    project, view = mounted_project
    v = shlex.quote(str(view))
    script = f"""
        $PO mount tests/test_a.py::test_alpha {v} || exit 9
        cat {v}/keep.txt {v}/added.txt {v}/pkg/mod.py
        test -e {v}/gone.txt && echo gone.txt-still-there
        {WRITE} {v}/new.txt
        {WRITE} {v}/keep.txt
        grep -c ' - overlay pytest-overlay ' /proc/self/mountinfo
        $PO mount beta {v}; echo "second mount: $?"
        $PO umount {v}; echo "umount: $?"
        grep -c ' - overlay pytest-overlay ' /proc/self/mountinfo
        $PO umount {v}; echo "again: $?"
    """
    done = in_private_namespace(script, project.root)
    assert done.stdout.splitlines() == [
        f"mounted the view of tests/test_a.py::test_alpha (read-only) at {view}",
        f"unmount it with: pytest-overlay umount {view}",
        "new",
        "hello",
        "x = 1",
        "write: EROFS",
        "write: EROFS",
        "1",
        "second mount: 1",
        f"unmounted {view}",
        "umount: 0",
        "0",
        "again: 1",
    ], done.stderr
    assert "is not empty" in done.stderr or "already a mount point" in done.stderr
    assert f"{view} is not a mount point" in done.stderr
    assert "Traceback" not in done.stderr
    # The store lies inside the lower layer, so a work directory was needed, and is gone.
    assert sorted(p.name for p in _alpha_upper(project).parent.iterdir()) == [
        "record.json",
        "upper",
    ]
    assert not (_alpha_upper(project) / "new.txt").exists()


def test_root_mount_of_a_store_outside_the_lowers(
    mounted_project: tuple[Project, Path], tmp_path: Path
) -> None:
    project, view = mounted_project
    cache = tmp_path / "elsewhere"
    (project.root / ".pytest_cache").rename(cache)
    v = shlex.quote(str(view))
    script = f"""
        $PO --cache-dir {shlex.quote(str(cache))} mount test_opaque {v} || exit 9
        ls {v}/pkg
        {WRITE} {v}/new.txt
        grep ' - overlay pytest-overlay ' /proc/self/mountinfo | grep -c upperdir
        $PO umount {v}
    """
    done = in_private_namespace(script, project.scratch)
    lines = done.stdout.splitlines()
    # Only lower layers: nothing could be written, no work directory was needed.
    assert lines[2:] == ["new.py", "write: EROFS", "0", f"unmounted {view}"], done.stderr
    assert not list(cache.glob("d/overlay/runs/*/tests/*/work"))


def test_root_mount_rw_writes_into_the_kept_layer(mounted_project: tuple[Project, Path]) -> None:
    project, view = mounted_project
    v = shlex.quote(str(view))
    script = f"""
        $PO mount tests/test_a.py::test_alpha {v} --rw || exit 9
        {WRITE} {v}/new.txt
        rm {v}/added.txt
        $PO umount {v}
    """
    done = in_private_namespace(script, project.root)
    assert "write: ok" in done.stdout.splitlines(), done.stderr
    assert "(writable: changes go to the kept layer)" in done.stdout
    upper = _alpha_upper(project)
    assert (upper / "new.txt").read_text() == "written"
    assert not (upper / "added.txt").exists()
    assert not (upper.parent / "work").exists()


def test_root_mount_with_a_command_stays_private(mounted_project: tuple[Project, Path]) -> None:
    project, view = mounted_project
    v = shlex.quote(str(view))
    script = f"""
        $PO mount test_opaque {v} --command 'ls pkg; echo "in $PYTEST_OVERLAY_VIEW"; exit 7'
        echo "status: $?"
        grep -c ' - overlay pytest-overlay ' /proc/self/mountinfo
    """
    done = in_private_namespace(script, project.root)
    assert done.stdout.splitlines() == ["new.py", f"in {view}", "status: 7", "0"], done.stderr


def test_umount_refuses_other_mounts(mounted_project: tuple[Project, Path]) -> None:
    project, view = mounted_project
    v = shlex.quote(str(view))
    script = f"""
        mount -t tmpfs scratch {v} || exit 9
        $PO umount {v}; echo "umount: $?"
        grep -c ' - tmpfs scratch ' /proc/self/mountinfo
    """
    done = in_private_namespace(script, project.root)
    assert done.stdout.splitlines() == ["umount: 1", "1"], done.stderr
    assert f"{view} is not a view mounted by pytest-overlay (it is a tmpfs mount" in done.stderr


def test_clean_refuses_a_mounted_run(mounted_project: tuple[Project, Path]) -> None:
    project, view = mounted_project
    v = shlex.quote(str(view))
    script = f"""
        $PO mount beta {v} >/dev/null || exit 9
        $PO clean --yes; echo "clean: $?"
        $PO umount {v} >/dev/null
        $PO clean --yes >/dev/null; echo "clean: $?"
    """
    done = in_private_namespace(script, project.root)
    assert done.stdout.splitlines() == ["clean: 1", "clean: 0"], done.stderr
    assert f"run {RUN_NEW} is mounted at {view}" in done.stderr
    assert project.store.run_ids() == []


# --- real mounts, as an ordinary user -------------------------------------------------------


@pytest.fixture
def user_project(tmp_path: Path) -> Iterator[Project]:
    gate("unprivileged-user", _unpriv.can_run_as_user())
    with _unpriv.user_workdir_ctx() as workdir:
        root = workdir / "proj"
        root.mkdir()
        (root / "pytest.ini").write_text("[pytest]\n")
        (root / "keep.txt").write_text("old\n")
        (root / "gone.txt").write_text("bye\n")
        scratch = workdir / "scratch"
        scratch.mkdir()
        project = Project(root, scratch)
        run = project.run()
        project.keep(run, "tests/test_u.py::test_user", {"keep.txt": "kept\n", "gone.txt": None})
        (workdir / "view").mkdir()
        uid, gid = _unpriv.ensure_test_user()
        for path in [workdir, *workdir.rglob("*")]:
            os.lchown(path, uid, gid)
        yield project


def _as_user(project: Project, argv: Sequence[str]) -> Result:
    argv = [sys.executable, "-m", "pytest_overlay", *argv]
    env = {"PYTHONPATH": str(_unpriv.REPO_ROOT)}  # this checkout, not the editable install's
    return run(argv, cwd=project.root, user=True, env=env)


def test_user_mount_runs_the_command_in_a_private_view(user_project: Project) -> None:
    view = user_project.root.parent / "view"
    v = shlex.quote(str(view))
    command = f"cat {v}/keep.txt; test -e {v}/gone.txt || echo gone; {WRITE} {v}/new; id -u"
    done = _as_user(user_project, ["mount", "test_user", str(view), "--command", command])
    assert done.returncode == 0, done.stderr
    uid, _ = _unpriv.ensure_test_user()
    assert done.stdout.splitlines() == ["kept", "gone", "write: EROFS", str(uid)], done.stderr
    done = _as_user(user_project, ["umount", str(view)])
    assert done.returncode == 1
    assert "exit that shell to unmount it" in done.stderr


def test_user_mount_rw_writes_into_the_kept_layer(user_project: Project) -> None:
    view = user_project.root.parent / "view"
    command = f"{WRITE} {shlex.quote(str(view))}/new"
    done = _as_user(user_project, ["mount", "test_user", str(view), "--rw", "--command", command])
    assert (done.returncode, done.stdout) == (0, "write: ok\n"), done.stderr
    upper = next((user_project.store.runs_dir / RUN_NEW / "tests").glob("*/upper"))
    assert (upper / "new").read_text() == "written"


def test_scan_upper_finds_user_xattrs_and_wh_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".wh.gone").touch()
    # Issue 18: a .wh. name is an ordinary name, but in a layer marked as using .wh. files.
    assert cli_mount._scan_upper(tmp_path) == (False, [])
    (tmp_path / WHITEOUT_FILES_MARKER).touch()
    assert cli_mount._scan_upper(tmp_path) == (False, ["d/.wh.gone"])
    try:
        os.setxattr(tmp_path / "d", "user.overlay.opaque", b"y")
    except OSError as exc:
        gate("user-xattrs", f"no user xattrs on {tmp_path}: {exc}")
    assert cli_mount._scan_upper(tmp_path) == (True, ["d/.wh.gone"])
    if os.geteuid() == 0:
        os.setxattr(tmp_path, "trusted.overlay.opaque", b"y")
        assert cli_mount._scan_upper(tmp_path) == (False, ["d/.wh.gone"])
