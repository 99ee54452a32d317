"""Benchmark: a synthetic class graded by stock `nbgrader autograde` (sequential) and by
`python -m grader autograde --workers N`, into two gradebooks that must hold the same grades.

    python -m tools.grading_benchmark                 40 day01-sdpa submissions, 2 workers
    python -m tools.grading_benchmark --students 10 --workers 2 --keep /tmp/bench

Prints a table: seconds in all and per submission for each mode, the speed-up, whether every
grade is identical, and where the time goes (kernel start, imports of torch and the grader, the
graded check cells, other cells, and nbgrader's own work around them), from the records of the
parallel run. The class mixes correct, partial and broken submissions from tools/corpus.
Submissions drop the notebook's ungraded explorer and benchmark cells (as tools/corpus does)
unless --full-notebooks.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

from tools import corpus

ROOT = Path(__file__).resolve().parents[1]
MIX = [
    "full-marks",
    "planted-axis",
    "missing-scale",
    "untouched",
    "shortcut-softmax",
    "full-marks",
    "cached-answers",
    "bad-json",
    "missing-solution-cell",
    "full-marks",
]


def make_class(course: Path, students: int, full: bool) -> None:
    assignment = corpus.ASSIGNMENT
    course.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / assignment, course / "solutions" / assignment)
    shutil.copytree(ROOT / "exercises" / assignment, course / "exercises" / assignment)
    for i in range(students):
        kind = MIX[i % len(MIX)]
        notebook = corpus.MANIFEST[kind][0]()
        if full and not isinstance(notebook, str):
            answers = corpus.answers()
            notebook = corpus.release()
            for cell in notebook.cells:
                grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
                if grade_id in answers and kind == "full-marks":
                    cell.source = answers[grade_id]
        path = course / "submitted" / f"s{i:03d}-{kind}" / assignment / f"{assignment}.ipynb"
        path.parent.mkdir(parents=True)
        if isinstance(notebook, str):
            path.write_text(notebook)
        else:
            nbformat.write(notebook, path)


def grades(course: Path) -> dict:
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        return {
            (s.student_id, g.name): g.score
            for s in gradebook.assignment_submissions(corpus.ASSIGNMENT)
            for nb in s.notebooks
            for g in nb.grades
        }


def run(command, cwd) -> float:
    scripts = str(Path(sys.executable).parent)
    import os

    env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    began = time.monotonic()
    subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.grading_benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--full-notebooks",
        action="store_true",
        help="keep the explorer and benchmark cells (much slower)",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="grader-bench-"))
    stock, ours = scratch / "stock", scratch / "parallel"
    for where in (stock, ours):
        shutil.rmtree(where, ignore_errors=True)
        make_class(where, args.students, args.full_notebooks)
    assignment = corpus.ASSIGNMENT
    py = sys.executable
    t_stock = run(
        [
            py,
            "-m",
            "nbgrader",
            "generate_assignment",
            assignment,
            "--force",
            "--CourseDirectory.release_directory=" + str(stock / "release"),
        ],
        stock,
    )
    t_stock += run([py, "-m", "nbgrader", "autograde", assignment], stock)
    t_ours = run(
        [py, "-m", "grader", "autograde", assignment, "--workers", str(args.workers)], ours
    )

    a, b = grades(stock), grades(ours)
    # stock nbgrader cannot grade an unreadable notebook: it leaves that submission ungraded
    # (no row); ours records it with 0 points and a reason. Compare what both graded.
    common = set(a) & set(b)
    same = all(a[k] == b[k] for k in common)
    differ = sorted(k for k in common if a[k] != b[k])
    only_ours = sorted({s for s, _ in set(b) - set(a)})
    n = args.students

    import json

    records = [
        json.loads(p.read_text())
        for p in (ours / "feedback" / ".grader" / assignment).glob("*.json")
    ]
    secs = [r["seconds"] for r in records if "kernel_start" in r.get("seconds", {})]

    def mean(key):
        return statistics.mean(s.get(key, 0.0) for s in secs) if secs else float("nan")

    print(
        f"\n{n} {assignment} submissions ({'full' if args.full_notebooks else 'slim'} notebooks), "
        f"{args.workers} workers; machine: {shutil.os.cpu_count()} CPUs (shared: timings are noisy)\n"
    )
    print(f"{'mode':<44} {'seconds':>8} {'s/submission':>13} {'speed-up':>9}")
    print(
        f"{'stock nbgrader autograde (sequential)':<44} {t_stock:>8.1f} {t_stock / n:>13.2f} {1.0:>9.2f}"
    )
    print(
        f"{f'python -m grader autograde --workers {args.workers}':<44} {t_ours:>8.1f} "
        f"{t_ours / n:>13.2f} {t_stock / t_ours:>9.2f}"
    )
    print(
        f"\ngrades identical on the {len({s for s, _ in common})} submissions both graded: "
        f"{'yes' if same else 'NO: ' + str(differ[:5])}"
    )
    if only_ours:
        print(f"graded only by --workers (stock nbgrader failed on them): {', '.join(only_ours)}")
    print(f"\nwhere a submission's time goes (mean over {len(secs)} executed, parallel run):")
    rows = [
        ("kernel start", mean("kernel_start")),
        ("imports (torch, grader, course: prelude + setup cell)", mean("imports")),
        ("graded check cells", mean("checks")),
        ("other cells (the student's code)", mean("other_cells")),
        ("tamper watch + verdict collection", mean("watch")),
        ("nbgrader around it (sanitize, save, copy, db)", mean("submission") - mean("total")),
        ("total per submission (one worker)", mean("submission")),
    ]
    for label, value in rows:
        print(f"  {label:<56} {value:>6.2f} s")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
