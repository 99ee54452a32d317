"""python -m grader: the instructor's nbgrader flow on this course, and a local check for students."""

import argparse
import sys
from pathlib import Path

from grader import pipeline

DESCRIPTION = """\
Grade Attention from Scratch with nbgrader. Run from the repository root (or pass --course-dir):
solutions/DAY/DAY.ipynb is the source, exercises/DAY/ the student release, and grading work
(submitted/, autograded/, feedback/, gradebook.db) lives beside them, never committed.

instructors:
  python -m grader release                        regenerate exercises/ from solutions/
  python -m grader autograde day01-sdpa --submissions ~/downloads/day01
                                                  grade a folder of STUDENT.ipynb files
  python -m grader feedback day01-sdpa            HTML feedback per student in feedback/
  python -m grader export --to grades.csv         the gradebook as CSV
students:
  python -m grader check exercises/day01-sdpa/day01-sdpa.ipynb
                                                  grade your notebook as the autograder would
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--course-dir", default=".", type=Path,
                        help="the course folder, holding nbgrader_config.py (default: .)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    release = commands.add_parser("release", help="regenerate exercises/ from solutions/")
    release.add_argument("assignments", nargs="*", metavar="ASSIGNMENT",
                         help="e.g. day01-sdpa (default: every assignment)")

    autograde = commands.add_parser(
        "autograde", help="grade every submission of an assignment into the gradebook",
        description="Grade every notebook in submitted/STUDENT/ASSIGNMENT/ with `nbgrader "
                    "autograde`, after recording the assignment in the gradebook. Already graded "
                    "submissions are skipped unless --force.")
    autograde.add_argument("assignment", metavar="ASSIGNMENT")
    autograde.add_argument("--submissions", type=Path, metavar="DIR",
                           help="first copy DIR/STUDENT.ipynb (or DIR/STUDENT/*.ipynb) into submitted/")
    autograde.add_argument("--force", action="store_true", help="grade again what was graded")

    feedback = commands.add_parser("feedback", help="write HTML feedback for graded submissions")
    feedback.add_argument("assignment", metavar="ASSIGNMENT")
    feedback.add_argument("--force", action="store_true", help="write again what was written")

    export = commands.add_parser("export", help="write the gradebook as a CSV file")
    export.add_argument("--to", type=Path, default=Path("grades.csv"), metavar="FILE",
                        help="where to write (default: grades.csv)")

    check = commands.add_parser(
        "check", help="grade one notebook as the autograder would, and print the verdicts",
        description="Grade NOTEBOOK exactly as `autograde` would (hidden tests included) in a "
                    "throwaway course folder, and print each graded cell's points and output. "
                    "Exit status 0 means full marks.")
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


def run_autograde(root, args) -> int:
    rows = pipeline.autograde(root, args.assignment, args.submissions, args.force)
    print(f"\n{'student':<24} {'score':>12}")
    for row in rows:
        print(f"{row['student']:<24} {row['score']:>5.1f} / {row['max_score']:<5.1f}")
    print(f"{len(rows)} submissions of {args.assignment} in the gradebook.")
    return 0


def run_feedback(root, args) -> int:
    where = pipeline.feedback(root, args.assignment, args.force)
    print(f"feedback written under {where}/STUDENT/{args.assignment}/")
    return 0


def run_export(root, args) -> int:
    print(f"grades written to {pipeline.export(root, args.to)}")
    return 0


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


COMMANDS = {"release": run_release, "autograde": run_autograde, "feedback": run_feedback,
            "export": run_export, "check": run_check}

if __name__ == "__main__":
    sys.exit(main())
