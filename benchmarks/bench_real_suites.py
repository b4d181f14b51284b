"""Real projects' own test suites, plain against ``--overlay``: wall time and outcomes.

For each project of the corpus (``tests/_corpus.py``: pluggy, pyfakefs's plugin tests,
cookiecutter), fetched beforehand with ``python -m tests._corpus fetch DIR``, this script
unpacks two copies, runs the suite plain on one and in place on the other (``--overlay``,
the kernel backend as root; pluggy also on fuse), alternating which goes first, and prints the
median wall time of each, their ratio, and whether every test had the same outcome (JUnit
XML; the corpus names the few tests that pass only because an earlier test left a file in
the tree).  The ratio is what ``--overlay`` costs a real suite: a mount and an unmount per
test, against the suite's own work.

    python benchmarks/bench_real_suites.py --corpus DIR [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import (
    REPO_ROOT,
    command_line,
    fmt_ratio,
    fmt_s,
    median,
    print_end,
    print_machine,
    ratio,
    render_table,
    write_json,
)

from tests._corpus import CORPUS, CORPUS_ENV, Project, corpus_dir, extract, missing
from tests._run import junit_outcomes

_ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark")


def run_once(project: Project, root: Path, junit: Path, args: Sequence[str]) -> float:
    """Run the suite in *root*; return its wall time in seconds."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTEST_") and key != "PYTHONPATH"
    }
    paths = [str(root / p) for p in project.pythonpath]
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO_ROOT)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "pytest", *_ARGS, *project.args, f"--junitxml={junit}"]
    started = time.perf_counter()
    subprocess.run(
        [*command, *args, *project.tests],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=900,
    )
    return time.perf_counter() - started


@dataclass(frozen=True)
class Measured:
    """One suite on one backend: median wall times, their ratio, and the outcomes' agreement."""

    project: str
    mode: str
    tests: int
    plain_s: float
    overlay_s: float
    ratio: float | None
    differing: list[str]
    """Tests whose outcome differed, beyond the corpus's known ones."""

    @property
    def same_outcomes(self) -> bool:
        return not self.differing


def measure(
    project: Project, corpus: Path, mode: str, args: Sequence[str], repeat: int, scratch: Path
) -> Measured:
    """Median wall times plain and in place, their ratio, and whether the outcomes agree."""
    work = Path(tempfile.mkdtemp(prefix=f"{project.name}-", dir=scratch))
    try:
        trees = {}
        for kind in ("plain", "overlay"):
            (work / kind).mkdir()
            trees[kind] = extract(project, corpus, work / kind)
        times: dict[str, list[float]] = {"plain": [], "overlay": []}
        for index in range(repeat):
            order = ("plain", "overlay") if index % 2 == 0 else ("overlay", "plain")
            for kind in order:
                extra = ("--overlay", *args) if kind == "overlay" else ()
                junit = work / f"{kind}.xml"
                times[kind].append(run_once(project, trees[kind], junit, extra))
        plain, overlay = junit_outcomes(work / "plain.xml"), junit_outcomes(work / "overlay.xml")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    differ = {n for n in {*plain, *overlay} if plain.get(n) != overlay.get(n)}
    plain_s, overlay_s = median(times["plain"]), median(times["overlay"])
    # The known ones must differ as known; any other difference counts.
    unexpected = differ ^ set(project.isolated)
    return Measured(
        project.label,
        mode,
        len(plain),
        plain_s,
        overlay_s,
        ratio(overlay_s, plain_s),
        sorted(unexpected),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=corpus_dir(),
        help=f"The corpus's sdists (default: ${CORPUS_ENV})",
    )
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each (default: 3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="Write every figure here")
    options = parser.parse_args(argv)
    if options.corpus is None or missing(options.corpus):
        parser.error(
            f"the corpus is not in {options.corpus}: fetch it with "
            "`python -m tests._corpus fetch DIR` and pass --corpus DIR"
        )
    started = time.perf_counter()
    command = command_line(argv)
    machine = print_machine(options.corpus, command)
    results = []
    with tempfile.TemporaryDirectory(prefix="pytest-overlay-real-suites-") as scratch:
        for project in CORPUS:
            modes: list[tuple[str, tuple[str, ...]]] = [("kernel", ())]
            if project.fuse:
                modes.append(("fuse", ("--overlay-backend=fuse",)))
            for mode, args in modes:
                results.append(
                    measure(project, options.corpus, mode, args, options.repeat, Path(scratch))
                )
    rows = [
        [
            r.project,
            r.mode,
            str(r.tests),
            fmt_s(r.plain_s),
            fmt_s(r.overlay_s),
            fmt_ratio(r.ratio),
            "yes" if r.same_outcomes else f"NO: {', '.join(r.differing)}",
        ]
        for r in results
    ]
    headers = ["project", "backend", "tests", "plain", "--overlay", "ratio", "same outcomes"]
    print()
    print(render_table(headers, rows))
    print_end(time.perf_counter() - started)
    if options.json is not None:
        suites = [{**asdict(r), "same_outcomes": r.same_outcomes} for r in results]
        write_json(options.json, command, machine, {"suites": suites}, [])
    return 0 if all(r.same_outcomes for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
