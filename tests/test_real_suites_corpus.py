"""Real projects' own test suites: the same outcome for every test with and without
``--overlay``, and their trees byte-identical after the run in place.

The corpus (``tests/_corpus.py``) is fetched at CI-install time; each suite runs plain on one
unpacked copy and in place on another, as root and as an ordinary user on the kernel backend,
and the small one also on fuse.  Outcomes are compared test by test from JUnit XML.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import _corpus, _unpriv
from tests._gates import fuse_reason, gate, kernel_reason
from tests._run import junit_outcomes, run_pytest
from tests._sample_project import inplace_digest

MODES = {
    "root-kernel": ("root", ()),
    "user-kernel": ("user", ()),
    "root-fuse": ("root", ("--overlay-backend=fuse",)),
}
CASES = [
    pytest.param(project, mode, id=f"{project.name}-{mode}")
    for project in _corpus.CORPUS
    for mode in MODES
    if project.fuse or mode != "root-fuse"
]
_plain: dict[tuple[str, str], dict[str, str]] = {}


def _corpus_dir() -> Path:
    directory = _corpus.corpus_dir()
    if directory is None:
        reason = f"{_corpus.CORPUS_ENV} is not set (.ci/run fetches the corpus and sets it)"
    else:
        lost = _corpus.missing(directory)
        names = ", ".join(p.sdist for p in lost)
        reason = f"{names} missing from {directory}: python -m tests._corpus fetch" if lost else ""
    gate("corpus", reason or None)
    assert directory is not None
    return directory


def _unpack(project: _corpus.Project, directory: Path, into: Path, user: bool) -> Path:
    into.mkdir()
    root = _corpus.extract(project, directory, into)
    if user:
        uid, gid = _unpriv.ensure_test_user()
        for path in [into, *into.rglob("*")]:
            os.lchown(path, uid, gid)
    return root


def _run_suite(
    project: _corpus.Project, root: Path, junit: Path, user: bool, *args: str
) -> dict[str, str]:
    pythonpath = [str(root / p) for p in project.pythonpath]
    env = {"PYTHONPATH": os.pathsep.join([*pythonpath, str(_unpriv.REPO_ROOT)])}
    argv = [*project.args, "-q", f"--junitxml={junit}", *args, *project.tests]
    result = run_pytest(root, *argv, user=user, env=env, timeout=600)
    # The project's own failures may print tracebacks; pytest's internal errors may not.
    assert "INTERNALERROR" not in result.output, result.output
    assert result.returncode in (0, 1), result.output
    return junit_outcomes(junit)


@pytest.mark.parametrize(("project", "mode"), CASES)
def test_a_real_suite_has_the_same_outcomes_in_place(
    project: _corpus.Project, mode: str, user_workdir: Path
) -> None:
    directory = _corpus_dir()
    who, backend_args = MODES[mode]
    gate("kernel", kernel_reason())
    if backend_args:
        gate("fuse", fuse_reason())
    user = who == "user"
    if user:
        gate("unprivileged-user", _unpriv.can_run_as_user())
    key = (project.name, who)
    if key not in _plain:
        plain = _unpack(project, directory, user_workdir / "plain", user)
        _plain[key] = _run_suite(project, plain, user_workdir / "plain.xml", user)
    expected = _plain[key]
    assert expected, f"{project.label} ran no test"
    root = _unpack(project, directory, user_workdir / "overlay", user)
    before = inplace_digest(root)
    got = _run_suite(project, root, user_workdir / "overlay.xml", user, "--overlay", *backend_args)
    assert inplace_digest(root) == before
    differ = {name: (expected.get(name), got.get(name)) for name in {*expected, *got}}
    differ = {name: pair for name, pair in differ.items() if pair[0] != pair[1]}
    isolated = {name: ("passed", "failed") for name in project.isolated}
    assert differ == isolated
