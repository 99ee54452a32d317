"""The instructor's flow, run through the stock nbgrader commands on this course's layout.

solutions/DAY/DAY.ipynb is nbgrader's source and exercises/DAY/ its release (nbgrader_config.py
says so), so every step here is a plain `nbgrader ...` command run in the course folder; these
functions add the checks and the summaries an instructor wants around them. The one step before
nbgrader: `release` first builds DAY.ipynb from its text, solutions/DAY/DAY.py (see sources.py).
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from grader.autograde import selfcheck, sources


class GradingError(Exception):
    """Bad input or a failed nbgrader step, with a message that says what to do."""


def course_root(course_dir) -> Path:
    """The course folder, checked: it holds nbgrader_config.py and solutions/."""
    root = Path(course_dir).resolve()
    if not (root / "nbgrader_config.py").is_file() or not (root / "solutions").is_dir():
        raise GradingError(
            f"{root} is not a course folder: expected nbgrader_config.py and "
            "solutions/ in it. Run from the repository root or pass --course-dir."
        )
    return root


def assignments(root: Path) -> list:
    """Every assignment in solutions/: a folder DAY holding DAY.ipynb or its text, DAY.py."""
    return sorted(
        p.name
        for p in (root / "solutions").iterdir()
        if (p / f"{p.name}.ipynb").is_file() or (p / f"{p.name}.py").is_file()
    )


def check_assignment(root: Path, assignment: str) -> str:
    if assignment not in assignments(root):
        raise GradingError(
            f"no assignment {assignment!r} in {root / 'solutions'}; "
            f"expected one of {assignments(root)}."
        )
    return assignment


def nbgrader(root: Path, *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGS` in the course folder with this Python; raise GradingError on failure."""
    command = [sys.executable, "-m", "nbgrader", *args]
    # nbgrader runs `alembic` from PATH to set up the gradebook: put this Python's scripts first,
    # so a virtual environment works without being activated.
    scripts = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    done = subprocess.run(
        command,
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    )
    if done.returncode != 0:
        log = f"\n{done.stdout[-4000:]}" if quiet else " (its log is above)"
        raise GradingError(
            f"`nbgrader {' '.join(args)}` failed with exit status {done.returncode}{log}"
        )
    return done


# ----------------------------------------------------------------------------- release


def release(root: Path, names: list = None, release_dir: Path = None) -> list:
    """Regenerate the student notebooks of `names` (all by default) from solutions/.

    First each solution notebook is built from its text, solutions/DAY/DAY.py, with its install
    cell and Colab link, and the packaged course is brought up to date (sources.build_release
    writes only what changed); then nbgrader generates the release from DAY.ipynb. Writes
    exercises/DAY/ unless `release_dir` says otherwise (the staleness test generates elsewhere
    and compares). The gradebook is not touched.
    """
    names = [check_assignment(root, name) for name in names] if names else assignments(root)
    where = [f"--CourseDirectory.release_directory={release_dir}"] if release_dir else []
    sources.build_release(root, names, assignments(root))
    for name in names:
        nbgrader(root, "generate_assignment", name, "--force", "--no-db", *where, quiet=True)
    return names


def register(root: Path, assignment: str) -> None:
    """Record the assignment's cells in the gradebook, which autograde needs, leaving exercises/
    as it is (the release goes to a throwaway folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        nbgrader(
            root,
            "generate_assignment",
            assignment,
            "--force",
            f"--CourseDirectory.release_directory={scratch}",
            quiet=True,
        )


# ----------------------------------------------------------------------------- autograde


def collect(root: Path, assignment: str, submissions: Path) -> list:
    """Copy a folder of submissions into nbgrader's submitted/STUDENT/ASSIGNMENT/ layout.

    `submissions` holds either STUDENT.ipynb files or STUDENT/ folders with one notebook each.
    Returns the student ids.
    """
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise GradingError(f"--submissions {submissions}: no such folder.")
    found = {}
    for path in sorted(submissions.iterdir()):
        notebooks = (
            [path]
            if path.suffix == ".ipynb"
            else sorted(path.glob("*.ipynb"))
            if path.is_dir()
            else []
        )
        if len(notebooks) > 1:
            raise GradingError(
                f"{path} holds {len(notebooks)} notebooks; expected one per student."
            )
        if notebooks:
            found[path.stem if path.is_file() else path.name] = notebooks[0]
    if not found:
        raise GradingError(
            f"no submissions in {submissions}: expected STUDENT.ipynb files or "
            "STUDENT/ folders holding one notebook each."
        )
    for student, notebook in found.items():
        target = root / "submitted" / student / assignment / f"{assignment}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, target)
    return sorted(found)


def autograde(root: Path, assignment: str, submissions: Path = None, force: bool = False) -> list:
    """Grade every submission of `assignment` into the gradebook; return its score rows.

    Submissions already graded are skipped unless `force`, so a rerun after an interruption
    grades only what is missing.
    """
    check_assignment(root, assignment)
    if submissions is not None:
        collect(root, assignment, submissions)
    if not any((root / "submitted").glob(f"*/{assignment}")):
        raise GradingError(
            f"nothing to grade: no {root}/submitted/STUDENT/{assignment}/ folders "
            "(pass --submissions DIR to copy them in)."
        )
    register(root, assignment)
    nbgrader(root, "autograde", assignment, *(["--force"] if force else []))
    return scores(root, assignment)


def scores(root: Path, assignment: str) -> list:
    """[{'student': ..., 'score': ..., 'max_score': ...}] for `assignment`, from `nbgrader export`."""
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "grades.csv"
        nbgrader(root, "export", f"--to={table}", quiet=True)
        with open(table, newline="") as f:
            rows = [row for row in csv.DictReader(f) if row["assignment"] == assignment]
    return [
        {
            "student": row["student_id"],
            "score": float(row["score"] or 0),
            "max_score": float(row["max_score"] or 0),
        }
        for row in rows
    ]


def feedback(root: Path, assignment: str, force: bool = False) -> Path:
    """Write HTML feedback for every graded submission into feedback/STUDENT/ASSIGNMENT/."""
    check_assignment(root, assignment)
    nbgrader(root, "generate_feedback", assignment, *(["--force"] if force else []))
    return root / "feedback"


def export(root: Path, to: Path) -> Path:
    """Write the whole gradebook as CSV, one row per student and assignment."""
    nbgrader(root, "export", f"--to={Path(to).resolve()}", quiet=True)
    return Path(to)


# ----------------------------------------------------------------------------- check one notebook


def read_notebook(path: Path) -> nbformat.NotebookNode:
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"{path}: no such notebook.")
    try:
        return nbformat.read(path, as_version=4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError, nbformat.ValidationError) as exc:
        raise GradingError(f"{path} is not a readable notebook: {exc}") from exc


def check_notebook(root: Path, notebook: Path, assignment: str = None) -> dict:
    """Grade one notebook as `autograde` would (hidden tests included), against the course
    folder `root` (the packaged course by default, see `python -m grader check --help`), in a
    throwaway copy with its own gradebook: `root` is only read.

    With nbgrader installed, the grading is `autograde --workers`'s own (its limits, tamper
    watch and, where bubblewrap runs, sandbox); without it, selfcheck.py does the same steps
    with nbclient. Returns {"cells": one dict per graded cell in the assignment's order (name,
    score, max_score, the text the cell printed), "note": why grading stopped early, or ""}."""
    submitted = read_notebook(notebook)
    if assignment is None and Path(notebook).stem not in assignments(root):
        raise GradingError(
            f"{notebook}: its name is not an assignment's; pass --assignment, "
            f"one of {assignments(root)}."
        )
    assignment = check_assignment(root, assignment or Path(notebook).stem)
    with tempfile.TemporaryDirectory(prefix="grader-check-") as scratch:
        course = Path(scratch) / "course"
        (course / "solutions").mkdir(parents=True)
        config = (root / "nbgrader_config.py").read_text()
        (course / "nbgrader_config.py").write_text(
            f"{config}\n# A private gradebook: checking one notebook never touches the class's.\n"
            f"c.CourseDirectory.root = {str(course)!r}\n"
            f"c.CourseDirectory.db_url = 'sqlite:///{course}/gradebook.db'\n"
        )
        shutil.copytree(root / "solutions" / assignment, course / "solutions" / assignment)
        if importlib.util.find_spec("nbgrader") is None:
            try:
                return selfcheck.grade(course, assignment, submitted)
            except selfcheck.NotPackaged:
                raise GradingError(
                    f"{root} is a course folder of solutions: grading against it needs nbgrader "
                    f"(pip install '{sources.DISTRIBUTION}[grader]'). Without --course-dir, "
                    "check grades against the course as installed."
                ) from None
        return check_with_nbgrader(course, assignment, Path(notebook), Path(scratch))


def check_with_nbgrader(course: Path, assignment: str, notebook: Path, scratch: Path) -> dict:
    """Grade `notebook` in the throwaway `course` with `autograde --workers`'s code: one worker,
    its default limits, and a sandbox where one can start here (none on a laptop without
    bubblewrap, and then no warning: the only code at risk is the student's own)."""
    from nbgrader.api import Gradebook

    from grader.autograde import parallel, sandbox

    inbox = scratch / "inbox"
    inbox.mkdir()
    shutil.copyfile(notebook, inbox / f"{selfcheck.STUDENT}.ipynb")
    limits = parallel.Limits(sandbox="off" if sandbox.unavailable() else "auto")
    (result,) = parallel.autograde(course, assignment, 1, limits=limits, submissions=inbox)[
        "results"
    ]
    autograded = course / "autograded" / selfcheck.STUDENT / assignment / f"{assignment}.ipynb"
    outputs = {}
    if autograded.is_file():
        outputs = {
            selfcheck.grade_id(cell): selfcheck.cell_text(cell)
            for cell in nbformat.read(autograded, as_version=4).cells
            if selfcheck.grade_id(cell)
        }
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        grades = {
            grade.name: grade
            for grade in gradebook.find_submission_notebook(
                assignment, assignment, selfcheck.STUDENT
            ).grades
        }
        source = nbformat.read(
            course / "solutions" / assignment / f"{assignment}.ipynb", as_version=4
        )
        cells = [
            {
                "name": name,
                "score": grades[name].score,
                "max_score": grades[name].max_score,
                "output": outputs.get(name, ""),
            }
            for name in (selfcheck.grade_id(cell) for cell in source.cells)
            if name in grades
        ]
    return {"cells": cells, "note": result["reason"]}
