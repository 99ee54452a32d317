"""python -m grader: the instructor's nbgrader flow on this course, and a local check for students.

Only `check` (and `--help`, `--version`) works with the course's core install; the other commands
are the instructor's and need the `grader` extra (nbgrader), which they ask for when missing."""

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

# jsonschema, as nbformat imports it, builds 38 grammars from rfc3987_syntax where that is
# installed (1 s, in the grader and in every worker), only to check the "iri" format, which no
# notebook or nbgrader schema uses. Without it, jsonschema leaves that one format unchecked.
sys.modules.setdefault("rfc3987_syntax", None)

from grader.autograde import pipeline, sources  # noqa: E402

DESCRIPTION = """\
Grade Attention from Scratch with nbgrader. Run from the repository root (or pass --course-dir):
solutions/DAY/DAY.ipynb is the source, exercises/DAY/ the student release, and grading work
(submitted/, autograded/, feedback/, gradebook.db) lives beside them, never committed.
Every command but check needs nbgrader: pip install 'attention-from-scratch[grader]'.

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
students (the course installed is enough: no solutions/, no nbgrader_config.py):
  python -m grader check day01-sdpa.ipynb         grade your notebook as the autograder would
"""


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command != "check" and importlib.util.find_spec("nbgrader") is None:
            raise pipeline.GradingError(
                f"`python -m grader {args.command}` needs nbgrader, the instructor's tools: "
                f"pip install '{sources.DISTRIBUTION}[grader]'. (`check` works without it.)"
            )
        return COMMANDS[args.command](args)
    except pipeline.GradingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def version() -> str:
    """The installed distribution's version: pyproject.toml's, its one source."""
    try:
        return importlib.metadata.version(sources.DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e . in the repository)"


COURSE_DIR_HELP = "the course folder, holding nbgrader_config.py and solutions/ (default: .)"


def parser() -> argparse.ArgumentParser:
    """The command line: `python -m grader [--course-dir DIR] COMMAND [options]`; --course-dir
    is also taken after the command, and each command's --help lists it."""
    main = argparse.ArgumentParser(
        prog="python -m grader",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument("--version", action="version", version=f"{sources.DISTRIBUTION} {version()}")
    main.add_argument("--course-dir", type=Path, metavar="DIR", help=COURSE_DIR_HELP)
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, course_dir_help: str = COURSE_DIR_HELP, **kwargs):
        sub = commands.add_parser(name, **kwargs)
        # SUPPRESS: given before the command, the value stays; given after, it wins
        sub.add_argument(
            "--course-dir",
            type=Path,
            metavar="DIR",
            default=argparse.SUPPRESS,
            help=course_dir_help,
        )
        return sub

    release = command("release", help="regenerate exercises/ from solutions/")
    release.add_argument(
        "assignments",
        nargs="*",
        metavar="ASSIGNMENT",
        help="e.g. day01-sdpa (default: every assignment)",
    )

    autograde = command(
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
        "--cold-kernels",
        action="store_true",
        help="with --workers: start each sandboxed kernel as a new program, with bwrap, instead "
        "of forking it from a warm process that has imported torch, the course and the grader "
        "(slower; the same sandbox and grades)",
    )
    autograde.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="grade on the Dask distributed cluster whose scheduler is at ADDRESS "
        "(tcp://host:8786) instead of local processes, with --workers' limits and records; its "
        "workers must see the course folder at the same path "
        "(pip install 'attention-from-scratch[cluster]')",
    )
    autograde.add_argument(
        "--student",
        action="append",
        metavar="ID",
        help="with --workers: grade only this student (repeatable)",
    )

    feedback = command("feedback", help="write HTML feedback for graded submissions")
    feedback.add_argument("assignment", metavar="ASSIGNMENT")
    feedback.add_argument("--force", action="store_true", help="write again what was written")

    report = command(
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

    export = command("export", help="write the gradebook as a CSV file")
    export.add_argument(
        "--to",
        type=Path,
        default=Path("grades.csv"),
        metavar="FILE",
        help="where to write (default: grades.csv)",
    )

    check = command(
        "check",
        course_dir_help="grade against this course folder's solutions/ and nbgrader_config.py "
        "(an instructor trying answers before a release; needs nbgrader). Default: the course "
        "as installed, which carries what grading needs",
        help="grade one notebook as the autograder would, and print the verdicts",
        description="Grade NOTEBOOK as `autograde` would, hidden tests included, in a "
        "throwaway course folder, and print each exercise's points, each graded cell's "
        "points and output, and the total. Needs only the course installed and the notebook. "
        "With nbgrader installed it grades with `autograde --workers`'s own code (in a "
        "bubblewrap sandbox where one can start); without it, the same cells run with "
        "nbclient and score as nbgrader scores them. Exit status 0 means full marks.",
    )
    check.add_argument(
        "notebook", type=Path, metavar="NOTEBOOK", help="the notebook, e.g. day01-sdpa.ipynb"
    )
    check.add_argument(
        "--assignment",
        metavar="ASSIGNMENT",
        help="the assignment, e.g. day01-sdpa (default: the notebook's file name)",
    )
    return main


def course_root(args) -> Path:
    """The course folder the command works on: --course-dir, else the current folder."""
    return pipeline.course_root(args.course_dir or ".")


def run_release(args) -> int:
    for name in pipeline.release(course_root(args), args.assignments):
        print(f"released exercises/{name}/")
    return 0


def parse_size(text: str) -> int:
    text = str(text).strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
    except ValueError:
        raise pipeline.GradingError(f"--memory-limit {text!r}: expected a size such as 4G or 512M.")


def run_autograde(args) -> int:
    from grader.autograde import gradebook

    root = course_root(args)
    if args.workers is not None or args.scheduler:
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

    if args.workers is None:  # --scheduler alone: the cluster's workers do the grading
        args.workers = 1
    if args.workers < 1:
        raise pipeline.GradingError("--workers must be at least 1.")
    limits = parallel.Limits(
        cell_timeout=args.timeout,
        wall_limit=args.wall_limit,
        memory_limit=parse_size(args.memory_limit),
        warm_kernels=not args.cold_kernels,
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
        scheduler=args.scheduler,
    )
    results = done["results"]
    failed = [r for r in results if r["status"] != "graded"]
    tampered = [r for r in results if r["tamper"]]
    print(f"\n{'student':<24} {'score':>12}  note")
    for r in sorted(results, key=lambda r: r["student"]):
        note = r["reason"] or ("; ".join(t["what"] for t in r["tamper"][:2]) if r["tamper"] else "")
        print(f"{r['student']:<24} {r['score']:>5.1f} / {r['max_score']:<5.1f}  {note}")
    seconds = done["seconds"]
    where = f"on {args.scheduler}" if args.scheduler else f"with {args.workers} workers"
    print(
        f"{args.assignment}: graded {len(results)} submissions in {seconds:.0f} s {where} "
        f"({seconds / max(len(results), 1):.1f} s each); "
        f"{len(results) - len(failed)} ok, {len(failed)} failed or stopped at a limit, "
        f"{len(tampered)} with tampering or shortcuts; {len(done['skipped'])} already graded "
        f"(skipped), {len(done['restored'])} written back to the gradebook from their records. "
        f"Records: feedback/.grader/{args.assignment}/"
    )
    return min(len(failed), 125)


def run_report(args) -> int:
    from grader.autograde import reports

    root = course_root(args)
    pipeline.check_assignment(root, args.assignment)
    written = reports.write_all(root, args.assignment, args.csv)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


def run_feedback(args) -> int:
    root = course_root(args)
    pipeline.check_assignment(root, args.assignment)
    usable_gradebook(root)
    where = pipeline.feedback(root, args.assignment, args.force)
    print(f"feedback written under {where}/STUDENT/{args.assignment}/")
    return 0


def run_export(args) -> int:
    root = course_root(args)
    usable_gradebook(root)
    print(f"grades written to {pipeline.export(root, args.to)}")
    return 0


def usable_gradebook(root) -> None:
    """Stop, saying what to do, before a command opens a gradebook that cannot be opened (a
    database driver not installed, a file that is not a database): nbgrader's own error there
    is "Please see the above traceback", with no traceback."""
    from grader.autograde import gradebook

    gradebook.check_gradebook(gradebook.db_url(root))


def run_check(args) -> int:
    """Grade the notebook and print, per exercise, its points and its graded cells' points and
    output, then the total; exit status 0 only for full marks."""
    root = pipeline.course_root(args.course_dir) if args.course_dir else sources.PACKAGED_COURSE
    print(f"Grading {args.notebook} as the autograder would (hidden tests included)...\n")
    checked = pipeline.check_notebook(root, args.notebook, args.assignment)
    for exercise, cells in by_exercise(checked["cells"]).items():
        score, max_score = points(cells)
        print(f"{exercise:<50} {score:>5.1f} / {max_score:.1f}")
        for cell in cells:
            print(f"  {cell['name']:<48} {cell['score']:>5.1f} / {cell['max_score']:.1f}")
            for line in cell["output"].rstrip().splitlines():
                print(f"      {line}")
    if checked["note"]:
        print(f"\nGrading stopped early: {checked['note']}")
    score, max_score = points(checked["cells"])
    print(f"\nTotal: {score:.1f} / {max_score:.1f}")
    return 0 if score == max_score else 1


def points(cells: list) -> tuple:
    """(score, max_score) of graded cells, added up."""
    return sum(c["score"] for c in cells), sum(c["max_score"] for c in cells)


def by_exercise(cells: list) -> dict:
    """{exercise: its graded cells}, in order: check_NAME and hidden_NAME grade exercise NAME."""
    exercises = {}
    for cell in cells:
        name = cell["name"].removeprefix("check_").removeprefix("hidden_")
        exercises.setdefault(name, []).append(cell)
    return exercises


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
