"""python -m grader: the instructor's nbgrader flow on this course, and a local check for students."""

import argparse
import sys
from pathlib import Path

from grader.autograde import gradebook, pipeline

DESCRIPTION = """\
Grade Attention from Scratch with nbgrader. Run from the repository root (or pass --course-dir):
solutions/DAY/DAY.ipynb is the source, exercises/DAY/ the student release, and grading work
(submitted/, autograded/, feedback/, gradebook.db) lives beside them, never committed.

instructors:
  python -m grader release                        regenerate exercises/ from solutions/
  python -m grader autograde day01-sdpa --submissions ~/downloads/day01
                                                  grade a folder of STUDENT.ipynb files
  python -m grader autograde day01-sdpa --workers 2
                                                  grade submitted/*/day01-sdpa/ in parallel,
                                                  with limits and a tamper watch
  python -m grader report day01-sdpa              per-student HTML feedback (no hidden test
                                                  source), class report with plot, CSV by exercise
  python -m grader feedback day01-sdpa            HTML feedback per student in feedback/
  python -m grader export --to grades.csv         the gradebook as CSV
students:
  python -m grader check exercises/day01-sdpa/day01-sdpa.ipynb
                                                  grade your notebook as the autograder would
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grader",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--course-dir",
        default=".",
        type=Path,
        help="the course folder, holding nbgrader_config.py (default: .)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    release = commands.add_parser("release", help="regenerate exercises/ from solutions/")
    release.add_argument(
        "assignments",
        nargs="*",
        metavar="ASSIGNMENT",
        help="e.g. day01-sdpa (default: every assignment)",
    )

    autograde = commands.add_parser(
        "autograde",
        help="grade every submission of an assignment into the gradebook",
        description="Grade every notebook in submitted/STUDENT/ASSIGNMENT/ with `nbgrader "
        "autograde`, after recording the assignment in the gradebook. Already graded "
        "submissions are skipped unless --force (with --workers: those whose gradebook rows "
        "are as their records in feedback/.grader/ say; rows the gradebook lost are written "
        "back from the records). One grader runs on a course at a time.",
    )
    autograde.add_argument("assignment", metavar="ASSIGNMENT")
    autograde.add_argument(
        "--submissions",
        type=Path,
        metavar="DIR",
        help="first copy DIR/STUDENT.ipynb (or DIR/STUDENT/*.ipynb) into submitted/",
    )
    autograde.add_argument("--force", action="store_true", help="grade again what was graded")
    autograde.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="grade across N processes with limits, a tamper watch and a per-submission record "
        "(feedback/.grader/); without it, stock `nbgrader autograde` runs sequentially",
    )
    autograde.add_argument(
        "--timeout",
        type=int,
        metavar="S",
        help="with --workers: seconds per cell (default: Execute.timeout in nbgrader_config.py)",
    )
    autograde.add_argument(
        "--wall-limit",
        type=int,
        default=600,
        metavar="S",
        help="with --workers: seconds per submission (default: 600; 0: none)",
    )
    autograde.add_argument(
        "--memory-limit",
        default="4G",
        metavar="SIZE",
        help="with --workers: data size (heap and private mappings) of a submission's kernel, "
        "e.g. 4G, 512M (default: 4G; 0: none)",
    )
    autograde.add_argument(
        "--student",
        action="append",
        metavar="ID",
        help="with --workers: grade only this student (repeatable)",
    )

    feedback = commands.add_parser("feedback", help="write HTML feedback for graded submissions")
    feedback.add_argument("assignment", metavar="ASSIGNMENT")
    feedback.add_argument("--force", action="store_true", help="write again what was written")

    report = commands.add_parser(
        "report",
        help="HTML feedback per student, a class report and a CSV by exercise",
        description="From what `autograde --workers` recorded: feedback/STUDENT/ASSIGNMENT-"
        "checks.html per student, beside stock feedback's feedback/STUDENT/ASSIGNMENT/ "
        "(verdicts and hints of every check, never the hidden "
        "tests' source), feedback/ASSIGNMENT-class-report.html (checks that fail most, "
        "their hints, a plot, failed submissions, tampering and shortcuts) and "
        "a CSV with one row per student and one column per exercise.",
    )
    report.add_argument("assignment", metavar="ASSIGNMENT")
    report.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="where to write the CSV (default: feedback/ASSIGNMENT-grades.csv)",
    )

    export = commands.add_parser("export", help="write the gradebook as a CSV file")
    export.add_argument(
        "--to",
        type=Path,
        default=Path("grades.csv"),
        metavar="FILE",
        help="where to write (default: grades.csv)",
    )

    check = commands.add_parser(
        "check",
        help="grade one notebook as the autograder would, and print the verdicts",
        description="Grade NOTEBOOK exactly as `autograde` would (hidden tests included) in a "
        "throwaway course folder, and print each graded cell's points and output. "
        "Exit status 0 means full marks.",
    )
    check.add_argument("notebook", type=Path, metavar="NOTEBOOK")
    check.add_argument("--assignment", help="the assignment (default: the notebook's file name)")

    args = parser.parse_args(argv)
    try:
        root = pipeline.course_root(args.course_dir)
        return COMMANDS[args.command](root, args)
    except pipeline.GradingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_release(root, args) -> int:
    for name in pipeline.release(root, args.assignments):
        print(f"released exercises/{name}/")
    return 0


def parse_size(text: str) -> int:
    text = str(text).strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
    except ValueError:
        raise pipeline.GradingError(f"--memory-limit {text!r}: expected a size such as 4G or 512M.")


def run_autograde(root, args) -> int:
    if args.workers is not None:
        return run_parallel_autograde(root, args)
    pipeline.check_assignment(root, args.assignment)
    usable_gradebook(root)
    with gradebook.course_lock(root, args.assignment):
        rows = pipeline.autograde(root, args.assignment, args.submissions, args.force)
    print(f"\n{'student':<24} {'score':>12}")
    for row in rows:
        print(f"{row['student']:<24} {row['score']:>5.1f} / {row['max_score']:<5.1f}")
    print(f"{len(rows)} submissions of {args.assignment} in the gradebook.")
    return 0


def run_parallel_autograde(root, args) -> int:
    from grader.autograde import parallel

    if args.workers < 1:
        raise pipeline.GradingError("--workers must be at least 1.")
    limits = parallel.Limits(
        cell_timeout=args.timeout,
        wall_limit=args.wall_limit,
        memory_limit=parse_size(args.memory_limit),
    )
    done = parallel.autograde(
        root,
        args.assignment,
        args.workers,
        force=args.force,
        limits=limits,
        only=args.student,
        submissions=args.submissions,
        progress_stream=sys.stderr,
    )
    results = done["results"]
    failed = [r for r in results if r["status"] != "graded"]
    tampered = [r for r in results if r["tamper"]]
    print(f"\n{'student':<24} {'score':>12}  note")
    for r in sorted(results, key=lambda r: r["student"]):
        note = r["reason"] or ("; ".join(t["what"] for t in r["tamper"][:2]) if r["tamper"] else "")
        print(f"{r['student']:<24} {r['score']:>5.1f} / {r['max_score']:<5.1f}  {note}")
    seconds = done["seconds"]
    print(
        f"{args.assignment}: graded {len(results)} submissions in {seconds:.0f} s with "
        f"{args.workers} workers ({seconds / max(len(results), 1):.1f} s each); "
        f"{len(results) - len(failed)} ok, {len(failed)} failed or stopped at a limit, "
        f"{len(tampered)} with tampering or shortcuts; {len(done['skipped'])} already graded "
        f"(skipped), {len(done['restored'])} written back to the gradebook from their records. "
        f"Records: feedback/.grader/{args.assignment}/"
    )
    return min(len(failed), 125)


def run_report(root, args) -> int:
    from grader.autograde import reports

    pipeline.check_assignment(root, args.assignment)
    written = reports.write_all(root, args.assignment, args.csv)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


def run_feedback(root, args) -> int:
    pipeline.check_assignment(root, args.assignment)
    usable_gradebook(root)
    where = pipeline.feedback(root, args.assignment, args.force)
    print(f"feedback written under {where}/STUDENT/{args.assignment}/")
    return 0


def run_export(root, args) -> int:
    usable_gradebook(root)
    print(f"grades written to {pipeline.export(root, args.to)}")
    return 0


def usable_gradebook(root) -> None:
    """Stop, saying what to do, before a command opens a gradebook that cannot be opened (a
    database driver not installed, a file that is not a database): nbgrader's own error there
    is "Please see the above traceback", with no traceback."""
    gradebook.check_gradebook(gradebook.db_url(root))


def run_check(root, args) -> int:
    print(f"Grading {args.notebook} as the autograder would (hidden tests included)...\n")
    cells = pipeline.check_notebook(root, args.notebook, args.assignment)
    for cell in cells:
        print(f"{cell['name']:<48} {cell['score']:>4.1f} / {cell['max_score']:.1f}")
        for line in cell["output"].rstrip().splitlines():
            print(f"    {line}")
    score, max_score = sum(c["score"] for c in cells), sum(c["max_score"] for c in cells)
    print(f"\nTotal: {score:.1f} / {max_score:.1f}")
    return 0 if score == max_score else 1


COMMANDS = {
    "release": run_release,
    "autograde": run_autograde,
    "feedback": run_feedback,
    "report": run_report,
    "export": run_export,
    "check": run_check,
}

if __name__ == "__main__":
    sys.exit(main())
