"""The corpus of real projects whose own test suites run plain and under ``--overlay``.

Each project is an sdist from PyPI that ships its tests, fetched once at CI-install time
(``python -m tests._corpus fetch DIR``, which ``.ci/run`` calls) into a cache directory named
by ``PYTEST_OVERLAY_CORPUS``; nothing is downloaded at test time.  Small suites, chosen for
what they do: pluggy (pytest's own plugin system, fast: also run on fuse), pyfakefs's tests of
its pytest plugin (fake filesystems of every fixture scope, the case that made 2,429 errors),
and cookiecutter (its tests render templates into the project's own tree and remove them).

``tests/test_real_suites_corpus.py`` compares outcomes test by test and fingerprints the tree;
``benchmarks/bench_real_suites.py`` prints the wall-time ratio of each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CORPUS", "CORPUS_ENV", "TEST_DEPENDENCIES", "Project", "corpus_dir", "extract"]

CORPUS_ENV = "PYTEST_OVERLAY_CORPUS"


@dataclass(frozen=True)
class Project:
    """A project of the corpus: its sdist and how to run its tests from the unpacked tree."""

    name: str
    version: str
    tests: tuple[str, ...]
    """Test paths, relative to the unpacked tree."""
    pythonpath: tuple[str, ...]
    """Where its own package is imported from, relative to the unpacked tree."""
    args: tuple[str, ...] = ()
    """Further pytest arguments (its ini file's addopts may name plugins not installed)."""
    fuse: bool = False
    """Also run in place on the fuse backend (small suites only: FUSE costs per file access)."""
    isolated: tuple[str, ...] = ()
    """Tests that pass only because an earlier test left a file in the tree: in place that
    file goes with the earlier test's layer, as it should, so they fail (JUnit names)."""

    @property
    def sdist(self) -> str:
        """The file name of its sdist."""
        return f"{self.name}-{self.version}.tar.gz"

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


CORPUS = (
    Project("pluggy", "1.6.0", ("testing",), ("src",), fuse=True),
    Project(
        "pyfakefs",
        "6.3.2",
        ("pyfakefs/pytest_tests",),
        (".",),
        # A conftest hook writes hook_test/report.txt while test_1 and test_3 run, and the
        # next test asserts that it exists (and deletes it).
        isolated=(
            "pyfakefs.pytest_tests.hook_test.pytest_hook_test::test_2_report_in_real_fs",
            "pyfakefs.pytest_tests.hook_test.pytest_hook_test::test_4_report_in_real_fs",
        ),
    ),
    # setup.cfg's addopts asks for pytest-cov; -vvv would only lengthen the log.
    Project("cookiecutter", "2.6.0", ("tests",), (".",), ("-o", "addopts=")),
)
TEST_DEPENDENCIES = (
    # cookiecutter's own dependencies and the plugins its tests use
    "binaryornot>=0.4.4",
    "python-slugify>=4.0.0",
    "arrow",
    "rich",
    "pytest-mock",
    "freezegun",
)


def corpus_dir() -> Path | None:
    """The directory with the corpus's sdists, or None when it was not fetched."""
    value = os.environ.get(CORPUS_ENV)
    return Path(value) if value else None


def missing(directory: Path) -> list[Project]:
    """The projects whose sdist is not in *directory*."""
    return [p for p in CORPUS if not (directory / p.sdist).is_file()]


def extract(project: Project, directory: Path, into: Path) -> Path:
    """Unpack *project*'s sdist from *directory* into *into*; returns the tree's root."""
    with tarfile.open(directory / project.sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
            archive.extractall(into, filter="data")
        else:  # pragma: no cover - a sdist from PyPI, fetched by our own CI
            archive.extractall(into)  # noqa: S202
    return into / project.label


def fetch(directory: Path) -> None:
    """Download what is missing (sdists, no dependencies) and install the test dependencies."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [f"{p.name}=={p.version}" for p in missing(directory)]
    pip = [sys.executable, "-m", "pip"]
    if wanted:
        command = [*pip, "download", "--no-binary", ":all:", "--no-deps", "-d", str(directory)]
        subprocess.run([*command, *wanted], check=True)
    subprocess.run([*pip, "install", "-q", *TEST_DEPENDENCIES], check=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "fetch":
        sys.exit("usage: python -m tests._corpus fetch DIR")
    fetch(Path(sys.argv[2]))
