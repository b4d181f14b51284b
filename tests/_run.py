"""Run a child pytest, or any command, for the suite's tests of real runs, and keep what it said.

One place owns how the tests start a process: :func:`run_pytest` and :func:`run` run it as
root or as the ordinary test user (``tests/_unpriv.py``), under a wrapper command (a seccomp
filter, dropped capabilities), in a simulated machine (:class:`tests._unpriv.Namespace`), with
the environment below and a timeout that kills the child's whole process group.

A root child gets the caller's environment without pytest's own variables, which would hand it
the outer run's options or make it believe it is an xdist worker, but with
``PYTEST_OVERLAY_REQUIRE``, so that a child running this suite's own tests keeps its gates
strict; a child as the test user gets :func:`tests._unpriv.user_env`.  Either way bytecode is
not written unless asked for, so that project trees hash the same after a run.

Every run prints its command, exit status and output into the test's captured output, which
pytest shows when the test fails, so a CI log says what the child said whichever assertion
failed.  A child that the namespace prelude could not set up is a missing capability
(:func:`tests._gates.gate`), not the test's failure.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pytest

from tests import _seccomp, _unpriv
from tests._gates import REQUIRE_ENV, gate

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+; only mypy reads it here

__all__ = [
    "CHILD_OPTIONS",
    "PLUGINS_OFF",
    "Options",
    "Result",
    "assert_clean",
    "child_env",
    "counts",
    "docker_like",
    "drop_sys_admin",
    "junit_outcomes",
    "mount_denied",
    "pytest_argv",
    "run",
    "run_module",
    "run_pytest",
    "started",
]

PLUGINS_OFF = ("-p", "no:randomly", "-p", "no:benchmark")
"""Plugins a child pytest runs without: random order and benchmarks would only add noise."""
_NO_CACHE = ("-p", "no:cacheprovider")  # pytest's cache would write into the tree under test
CHILD_OPTIONS = (*PLUGINS_OFF, *_NO_CACHE)
"""The options of a child pytest started by pytester (``runpytest_subprocess``), which
:func:`pytest_argv` gives the others: :data:`PLUGINS_OFF` and no cache."""
_NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Result:
    """A finished child: its exit status and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:
        # Short in assertion messages: the whole output is in the test's captured stdout.
        return f"Result(returncode={self.returncode}, {len(self.output)} characters of output)"

    @property
    def output(self) -> str:
        """Both streams, stdout first."""
        return self.stdout + self.stderr


def drop_sys_admin() -> list[str]:
    """The wrapper that makes root a container's root: no ``CAP_SYS_ADMIN`` (gated on setpriv)."""
    gate("setpriv", None if shutil.which("setpriv") else "setpriv is not installed (util-linux)")
    return ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]


def docker_like() -> list[str]:
    """The wrapper of Docker's default: no ``CAP_SYS_ADMIN`` and its seccomp profile."""
    drop = drop_sys_admin()
    gate("x86-64", _seccomp.reason())
    return [*drop, *_seccomp.wrapper()]


def mount_denied(err: str) -> list[str]:
    """The wrapper that denies mounts with *err* and allows namespaces (Ubuntu's AppArmor)."""
    gate("x86-64", _seccomp.reason())
    return _seccomp.wrapper(mount_only=err)


def pytest_argv(*args: str, cache: bool = False) -> list[str]:
    """The command line of a child pytest with :data:`PLUGINS_OFF` (and the cache, unless
    *cache*) and *args*."""
    return [sys.executable, "-m", "pytest", *PLUGINS_OFF, *(() if cache else _NO_CACHE), *args]


def _updated(base: Mapping[str, str], env: Mapping[str, str | None] | None) -> dict[str, str]:
    result = {**base, **(env or {})}
    return {key: value for key, value in result.items() if value is not None}


def child_env(
    env: Mapping[str, str | None] | None = None,
    *,
    write_bytecode: bool = False,
    inherit: bool = True,
) -> dict[str, str]:
    """The environment of a root child (see the module docstring), updated with *env*.

    A variable given as None is removed.  Without *inherit* the child gets *env* alone
    (with ``PYTHONDONTWRITEBYTECODE`` unless *write_bytecode*): nothing of the caller's, not
    even ``PYTHONPATH``, as a fresh login shell would.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if inherit and (not key.startswith("PYTEST_") or key == REQUIRE_ENV)
    }
    return _updated({**inherited, **({} if write_bytecode else _NO_BYTECODE)}, env)


class Options(TypedDict, total=False):
    """The keyword arguments of :func:`run`, which :func:`run_pytest` passes on."""

    user: bool
    wrapper: Sequence[str]
    namespace: _unpriv.Namespace | None
    env: Mapping[str, str | None] | None
    inherit_env: bool
    write_bytecode: bool
    timeout: float
    expect_rc: int | None


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    user: bool = False,
    wrapper: Sequence[str] = (),
    namespace: _unpriv.Namespace | None = None,
    env: Mapping[str, str | None] | None = None,
    inherit_env: bool = True,
    write_bytecode: bool = False,
    timeout: float = 300,
    expect_rc: int | None = None,
) -> Result:
    """Run *wrapper* + *argv* in *cwd*, as the test user if *user*, and return it finished.

    *namespace* runs it in a private mount namespace built so (always so for *user*); *cwd*
    is entered after that namespace is built, so it may lie in one of its overlay mounts.
    *env* updates the child's environment (see the module docstring; None removes a
    variable); a root child without *inherit_env* gets nothing else (:func:`child_env`).
    With *expect_rc* another exit status fails the test, showing the output.  On timeout
    the child's process group is killed and :class:`subprocess.TimeoutExpired` raised.
    """
    command = [*wrapper, *argv]
    environment = _environment(cwd, user, env, write_bytecode, inherit_env)
    if user or namespace is not None:
        with _unpriv.prelude_command(
            command, cwd=cwd, user=user, namespace=namespace or _unpriv.Namespace()
        ) as prelude:
            done = _unpriv.communicate(prelude, env=environment, timeout=timeout)
    else:
        done = _unpriv.communicate(command, cwd=cwd, env=environment, timeout=timeout)
    result = Result(done.returncode, done.stdout, done.stderr)
    failure = _unpriv.setup_failure(done)
    who = f"as {_unpriv.TEST_USER}" if user else "as root"
    print(f"$ {shlex.join(command)}\n  (in {cwd}, {who}) exited {result.returncode}")
    print(f"--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}", flush=True)
    if failure is not None:
        gate("mount-namespace", f"the child's namespace cannot be built: {failure}")
    if expect_rc is not None and result.returncode != expect_rc:
        raise AssertionError(
            f"{shlex.join(command)} exited {result.returncode}, not {expect_rc}:\n{result.output}"
        )
    return result


def _environment(
    cwd: Path,
    user: bool,
    env: Mapping[str, str | None] | None,
    write_bytecode: bool = False,
    inherit_env: bool = True,
) -> dict[str, str]:
    if user:
        return _updated(_unpriv.user_env(cwd, _NO_BYTECODE), env)
    return child_env(env, write_bytecode=write_bytecode, inherit=inherit_env)


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    *,
    cwd: Path,
    user: bool = False,
    namespace: _unpriv.Namespace | None = None,
    env: Mapping[str, str | None] | None = None,
    stdout: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start *argv* as :func:`run` would, and yield it running, for a test that kills it.

    The child runs in a session of its own, its output going where the test's goes (or its
    standard output to *stdout*, such as :data:`subprocess.PIPE`); when the context ends its
    whole process group is killed with SIGKILL and it is reaped.
    """
    environment = _environment(cwd, user, env)
    with contextlib.ExitStack() as stack:
        if user or namespace is not None:
            namespace = namespace or _unpriv.Namespace()
            command = stack.enter_context(
                _unpriv.prelude_command(argv, cwd=cwd, user=user, namespace=namespace)
            )
            where = None  # the prelude enters cwd once the namespace is built
        else:
            command, where = list(argv), cwd
        print(f"$ {shlex.join(argv)}\n  (in {cwd}, {'as a user' if user else 'as root'})")
        with subprocess.Popen(
            command,
            cwd=where,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            start_new_session=True,
        ) as process:  # its exit closes the pipes and reaps the child
            try:
                yield process
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def run_module(cwd: Path, env: Mapping[str, str | None] | None, *argv: str) -> Result:
    """``python -m ARGV`` in *cwd* as root (:func:`run`, *env* updating the environment):
    the command-line tool, or a pytest run with options of the caller's choosing."""
    return run([sys.executable, "-m", *argv], cwd=cwd, env=env)


def run_pytest(cwd: Path, *args: str, cache: bool = False, **options: Unpack[Options]) -> Result:
    """Run a child pytest (:func:`pytest_argv`) in *cwd*; *options* as for :func:`run`."""
    return run(pytest_argv(*args, cache=cache), cwd=cwd, **options)


def counts(text: str) -> dict[str, int]:
    """The outcome counts of pytest's last summary line in *text*, read by pytest's own
    parser (``RunResult.parseoutcomes``), nouns singular: ``error``, ``warning``.

    For a child pytest not started through pytester; ``counts(out) == {"passed": 2}`` also
    says that nothing failed, where ``"2 passed" in out`` would match "12 passed".
    """
    try:
        nouns = pytest.RunResult.parse_summary_nouns(text.splitlines())
    except ValueError:
        raise AssertionError(f"no pytest summary line in:\n{text}") from None
    return {noun.rstrip("s"): number for noun, number in nouns.items()}


def assert_clean(text: str) -> None:
    """No Python traceback and no internal error reached the user."""
    assert "Traceback (most recent call last)" not in text, text
    assert "INTERNALERROR" not in text, text


def junit_outcomes(junit: Path) -> dict[str, str]:
    """Each test's outcome from a child pytest's JUnit XML report (``--junitxml``): passed,
    failed, error or skipped, by ``classname::name``.

    pytest records a teardown error as a second entry of a test that passed; the error wins.
    """
    found: dict[str, str] = {}
    # Our own child pytest wrote it: not untrusted input.
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = {"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"
        if found.get(name, "passed") == "passed":
            found[name] = outcome
    return found
