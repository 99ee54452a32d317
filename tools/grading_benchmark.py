"""Benchmark: the same synthetic class of every day graded by stock `nbgrader autograde` and by
`python -m grader autograde --workers N` (sandbox, limits and verdicts outside the kernel on),
into two gradebooks whose honest grades must be identical.

    python -m tools.grading_benchmark                          4 submissions of every day
    python -m tools.grading_benchmark --days day01-sdpa day04-kv-cache --per-day 8
    python -m tools.grading_benchmark --scheduler tcp://HOST:8786   ours on a Dask cluster
    python -m tools.grading_benchmark --cold-kernels               ours without warm kernels

Each day's class is built from its release (exercises/DAY/) and its solution, whole notebooks as
a student hands them in (every exploration, benchmark and training cell included):
    correct   every answer filled in from the solution
    partial   the first answer filled in, the others left as stubs
    broken    the release untouched: every answer a stub that raises
    hostile   the stubs, with check() replaced by one that always passes: stock nbgrader gives it
              full marks, ours grades the real answers (0); left out of the comparison

Prints, per day: seconds per submission for each mode (the wall clock of the whole run over the
class, start-up included), the speed-up, whether the honest grades are identical, and where one
submission's time goes in our run (means over its records: kernel start, imports of torch, the
course and the grader, graded cells, ungraded cells, and nbgrader's work around them).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["correct", "partial", "broken", "hostile"]
HONEST = {"correct", "partial", "broken"}
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
# A student who fakes every pass: stock nbgrader's test cells call this check()
FAKE_CHECK = "\n\ncheck = lambda *args, **kwargs: None  # every test cell 'passes'\n"
# Where one submission's time goes: (label, the key of execute.py's record)
PHASES = [
    ("kernel", "kernel_start"),
    ("imports", "imports"),
    ("graded", "checks"),
    ("ungraded", "other_cells"),
    ("watch", "watch"),
]


def days() -> list:
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.py").is_file())


def answers(day: str) -> dict:
    """grade id -> the solution's code of every answer cell of `day`, without the markers."""
    source = nbformat.read(ROOT / "solutions" / day / f"{day}.ipynb", as_version=4)
    return {
        c.metadata.nbgrader["grade_id"]: "\n".join(
            line for line in c.source.splitlines() if line.strip() not in SOLUTION_MARKERS
        )
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def submission(day: str, kind: str) -> nbformat.NotebookNode:
    """The release of `day` as a student of `kind` hands it in."""
    notebook = nbformat.read(ROOT / "exercises" / day / f"{day}.ipynb", as_version=4)
    solved = answers(day)
    filled = {"correct": list(solved), "partial": list(solved)[:1]}.get(kind, [])
    answer_cells = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("solution")]
    for cell in answer_cells:
        if cell.metadata.nbgrader["grade_id"] in filled:
            cell.source = solved[cell.metadata.nbgrader["grade_id"]]
    if kind == "hostile":
        answer_cells[0].source += FAKE_CHECK
    return notebook


def make_course(course: Path, day_names: list, per_day: int) -> None:
    """A course folder holding `day_names`' sources and releases and `per_day` submissions each."""
    course.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    for day in day_names:
        shutil.copytree(ROOT / "solutions" / day, course / "solutions" / day)
        shutil.copytree(ROOT / "exercises" / day, course / "exercises" / day)
        for i in range(per_day):
            kind = KINDS[i % len(KINDS)]
            path = course / "submitted" / f"s{i:02d}-{kind}" / day / f"{day}.ipynb"
            path.parent.mkdir(parents=True)
            nbformat.write(submission(day, kind), path)


def grades(course: Path, day: str) -> dict:
    """(student, cell) -> score, from the course's gradebook."""
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        return {
            (s.student_id, g.name): g.score
            for s in gradebook.assignment_submissions(day)
            for nb in s.notebooks
            for g in nb.grades
        }


def timed(command: list, cwd: Path) -> float:
    """Seconds `command` took in `cwd`, with this Python's scripts first on PATH (nbgrader runs
    `alembic` from there)."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    began = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  `{' '.join(command[1:])}` exit {done.returncode}: {done.stderr[-300:]}")
    return time.monotonic() - began


def phases(course: Path, day: str) -> dict:
    """Mean seconds per submission of each phase, over our run's records of `day`."""
    records = [
        json.loads(p.read_text()) for p in (course / "feedback/.grader" / day).glob("*.json")
    ]
    seconds = [r["seconds"] for r in records if "kernel_start" in r.get("seconds", {})]
    if not seconds:
        return {}
    mean = {key: statistics.mean(s.get(key, 0.0) for s in seconds) for _, key in PHASES}
    mean["around"] = statistics.mean(s["submission"] - s["total"] for s in seconds)
    return mean


def bench_day(stock: Path, ours: Path, day: str, args) -> dict:
    """Grade `day` both ways; its row of the table."""
    py = sys.executable
    release = f"--CourseDirectory.release_directory={stock / 'release'}"
    timed([py, "-m", "nbgrader", "generate_assignment", day, "--force", release], stock)
    t_stock = timed([py, "-m", "nbgrader", "autograde", day], stock)
    where = ["--scheduler", args.scheduler] if args.scheduler else ["--workers", str(args.workers)]
    cold = ["--cold-kernels"] if args.cold_kernels else []
    t_ours = timed([py, "-m", "grader", "autograde", day, *where, *cold], ours)
    a, b = grades(stock, day), grades(ours, day)
    honest = {k for k in set(a) & set(b) if k[0].split("-", 1)[1] in HONEST}
    hostile = {k for k in set(a) | set(b) if k[0].endswith("hostile")}
    return {
        "day": day,
        "stock": t_stock / args.per_day,
        "ours": t_ours / args.per_day,
        "identical": bool(honest) and all(a[k] == b[k] for k in honest),
        "differ": sorted(k for k in honest if a[k] != b[k]),
        "hostile": (sum(a.get(k, 0) for k in hostile), sum(b.get(k, 0) for k in hostile)),
        "phases": phases(ours, day),
    }


def print_table(rows: list, args, load: float) -> None:
    print(
        f"\n{args.per_day} submissions per day ({', '.join(KINDS[: args.per_day])}...), "
        f"{args.workers} workers{' on ' + args.scheduler if args.scheduler else ''}; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before the run\n"
    )
    head = f"{'day':<24}{'stock':>7}{'ours':>7}{'x':>6}  same  {'hostile pts':>11}  |"
    print(head + "".join(f"{label:>9}" for label, _ in PHASES) + f"{'around':>9}")
    print(
        f"{'':<24}{'s/sub':>7}{'s/sub':>7}{'':>6}  {'':<4}  {'stock/ours':>11}  |  ours, s per submission"
    )
    for r in rows:
        p = r["phases"]
        cells = "".join(f"{p.get(key, float('nan')):>9.2f}" for _, key in PHASES)
        print(
            f"{r['day']:<24}{r['stock']:>7.2f}{r['ours']:>7.2f}{r['stock'] / r['ours']:>6.1f}  "
            f"{'yes' if r['identical'] else 'NO':<4}  {r['hostile'][0]:>5.0f}/{r['hostile'][1]:<5.0f}  |"
            f"{cells}{p.get('around', float('nan')):>9.2f}"
        )
    for r in rows:
        if r["differ"]:
            print(f"{r['day']}: grades differ at {r['differ'][:5]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.grading_benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--days", nargs="+", choices=days(), default=days())
    parser.add_argument("--per-day", type=int, default=4, help="submissions per day (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", metavar="ADDRESS", help="grade ours on this Dask scheduler")
    parser.add_argument(
        "--cold-kernels", action="store_true", help="ours with kernels started cold, with bwrap"
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="grader-bench-"))
    stock, ours = scratch / "stock", scratch / "ours"
    for where in (stock, ours):
        shutil.rmtree(where, ignore_errors=True)
        make_course(where, args.days, args.per_day)
    load, rows = os.getloadavg()[0], []
    for day in args.days:
        rows.append(bench_day(stock, ours, day, args))
        print(f"{day}: stock {rows[-1]['stock']:.1f} s/sub, ours {rows[-1]['ours']:.1f} s/sub")
    print_table(rows, args, load)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
