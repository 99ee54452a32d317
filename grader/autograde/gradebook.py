"""The class gradebook as `python -m grader autograde --workers N` keeps it.

Each graded submission leaves three things, all written by the parent process alone (see
parallel.py): its rows in nbgrader's gradebook (`db_url` in nbgrader_config.py: SQLite's
gradebook.db by default, or any database SQLAlchemy reaches, PostgreSQL included), its autograded
notebook in autograded/STUDENT/ASSIGNMENT/, and, written last, a JSON record in
feedback/.grader/ASSIGNMENT/STUDENT.json. The record holds everything the rows were made from,
which decides what a rerun does with a submission:

- the gradebook holds its rows as the record says: already graded, skipped;
- its rows are missing or differ (deleted by hand, a gradebook moved away and made anew): they
  are written back from the record, without running the notebook again;
- no record, or one that no longer fits the assignment's cells (its source changed since): it is
  graded again.

Before a run touches anything, `check_gradebook` makes sure the gradebook can be opened (its
database driver installed, the file a database) and `course_lock` that no other grader runs on
the course: two would each grade every submission into the same rows.
"""

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import sqlalchemy
from nbgrader.api import Gradebook, MissingEntry
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from grader.autograde.pipeline import GradingError
from grader.autograde.plain_copy import copy_plain

LOCK_NAME = ".grader.lock"

# The package to install for each database driver SQLAlchemy may import (by module name).
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
}


# ----------------------------------------------------------------------------- where things are


def load_config(root: Path) -> Config:
    """The course's nbgrader_config.py, as nbgrader reads it."""
    loader = PyFileConfigLoader("nbgrader_config.py", path=str(root))
    return loader.load_config()


def db_url(root: Path) -> str:
    """The class gradebook's URL: nbgrader_config.py's CourseDirectory.db_url, or nbgrader's
    default, sqlite:///ROOT/gradebook.db."""
    from nbgrader.coursedir import CourseDirectory

    config = load_config(root)
    config.CourseDirectory.root = str(root)
    return CourseDirectory(config=config).db_url


def course_id(root: Path) -> str:
    config = load_config(root)
    return config.CourseDirectory.get("course_id", "default_course") or "default_course"


def records_dir(root: Path, assignment: str) -> Path:
    return root / "feedback" / ".grader" / assignment


def record_path(root: Path, assignment: str, student: str) -> Path:
    return records_dir(root, assignment) / f"{student}.json"


def read_record(root: Path, assignment: str, student: str) -> dict:
    """The student's record, or None where there is none."""
    path = record_path(root, assignment, student)
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def open_gradebook(url: str, cid: str):
    """nbgrader's Gradebook, without the warnings its API makes SQLAlchemy 2 print (autoflush)."""
    with warnings.catch_warnings(), Gradebook(url, cid) as gradebook:
        warnings.simplefilter("ignore")
        yield gradebook


# ----------------------------------------------------------------------------- before a run


@contextlib.contextmanager
def course_lock(root: Path, assignment: str):
    """Hold the course's lock file, .grader.lock, for a grading run; refuse with GradingError
    while another run holds it.

    A record lock (fcntl.lockf), not flock: the workers a run forks would inherit an flock and
    keep holding it after their parent was killed, until their current submission ended. A record
    lock belongs to the process that took it alone, and the system drops it when that process
    dies: the file a killed run leaves behind is unlocked, and never blocks the next run. (The
    file is never deleted: a run that opened it just before would lock a file no one else sees.)
    """
    path = root / LOCK_NAME
    with open(path, "a+") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "a process that has not said which"
            raise GradingError(
                f"another grader is running on this course ({holder}; its lock is {path}). "
                "Two would both grade every submission into the same gradebook: wait for it to "
                "finish (or stop it) and run again. Nothing was graded or changed."
            ) from None
        lock.truncate(0)
        lock.write(
            f"pid {os.getpid()}, grading {assignment} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        )
        lock.flush()
        yield


def check_gradebook(url: str) -> None:
    """Raise GradingError, saying what to do, if the gradebook at `url` cannot be opened: its
    database driver is not installed, it is not a database, or its server cannot be reached.
    Called before anything is graded or written, so a bad gradebook changes nothing."""
    try:
        address = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise GradingError(
            "the gradebook's db_url is not a database URL; fix CourseDirectory.db_url in "
            "nbgrader_config.py (e.g. sqlite:///gradebook.db, postgresql://USER@HOST/DATABASE)."
        ) from None
    shown = address.render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(address)
    except ModuleNotFoundError as missing:  # SQLAlchemy imports the database's driver here
        package = DRIVER_PACKAGES.get(missing.name, missing.name)
        raise GradingError(
            f"the gradebook's db_url, {shown}, needs the Python package {package}, which is not "
            f"installed: `{sys.executable} -m pip install {package}`, then run again."
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise GradingError(
            f"the gradebook's db_url, {shown}, names a database SQLAlchemy does not know; "
            "fix CourseDirectory.db_url in nbgrader_config.py."
        ) from None
    if address.get_backend_name() == "sqlite" and not Path(address.database or "").is_file():
        return  # nothing to read yet: nbgrader makes the file
    try:
        with engine.connect() as connection:
            if address.get_backend_name() == "sqlite":
                verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
                if verdict != "ok":
                    raise GradingError(unreadable_sqlite(address.database, verdict))
            else:
                sqlalchemy.inspect(connection).get_table_names()
    except sqlalchemy.exc.DatabaseError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        # SQLite reports a file that is not a database, or a damaged one, as a DatabaseError;
        # one it cannot open or that another program has locked, as an OperationalError
        broken = not isinstance(error, sqlalchemy.exc.OperationalError)
        if address.get_backend_name() == "sqlite" and broken:
            raise GradingError(unreadable_sqlite(address.database, reason)) from None
        raise GradingError(
            f"could not open the gradebook at {shown}: {reason}. Check CourseDirectory.db_url "
            "in nbgrader_config.py and that the database server runs. Nothing was graded or "
            "changed."
        ) from None
    finally:
        engine.dispose()


def unreadable_sqlite(path: str, reason: str) -> str:
    """What is true, and what to do, when the gradebook file is not a readable database."""
    return (
        f"the gradebook at {path} is not a readable SQLite database ({reason}). Nothing was "
        f"graded or changed. Move it away (`mv {path} {path}.broken`) and, for each assignment, "
        "run `python -m grader autograde ASSIGNMENT --workers N` again: a new gradebook is made, "
        "every submission with a record in feedback/.grader/ASSIGNMENT/ is written back into it "
        "from its record without being run again, and the others (graded without --workers, "
        "which leaves no record) are graded anew. Manual grades lived only in the gradebook."
    )


# ----------------------------------------------------------------------------- rows


def registered_cells(gradebook: Gradebook, assignment: str) -> dict:
    """{(kind, notebook, cell): max score}: the rows nbgrader gives every submission, 'grade'
    rows for graded and task cells, 'comment' rows (no score) for solution and task cells."""
    cells = {}
    for notebook in gradebook.find_assignment(assignment).notebooks:
        for cell in [*notebook.grade_cells, *notebook.task_cells]:
            cells["grade", notebook.name, cell.name] = cell.max_score
        for cell in [*notebook.solution_cells, *notebook.task_cells]:
            cells["comment", notebook.name, cell.name] = None
    return cells


def find_submission(gradebook: Gradebook, assignment: str, student: str):
    """The student's submission, or None."""
    try:
        return gradebook.find_submission(assignment, student)
    except MissingEntry:
        return None


def submission_rows(submission) -> dict:
    """{(kind, notebook, cell): what autograde wrote}: a grade row's auto score, a comment
    row's auto comment; {} for no submission."""
    rows = {}
    for notebook in submission.notebooks if submission else []:
        rows.update({("grade", notebook.name, g.name): g.auto_score for g in notebook.grades})
        rows.update({("comment", notebook.name, c.name): c.auto_comment for c in notebook.comments})
    return rows


def recorded_rows(record: dict, cells: dict) -> dict:
    """The rows `write_rows` makes from `record`, for the registered `cells`: a grade the record
    does not name scores 0 (a submission that failed before nbgrader ran names none)."""
    grades = {("grade", g["notebook"], g["name"]): g["auto_score"] for g in record["grades"]}
    comments = {
        ("comment", c["notebook"], c["name"]): c["auto_comment"] for c in record["comments"]
    }
    return {key: grades.get(key, 0) if key[0] == "grade" else comments.get(key) for key in cells}


def fits(record: dict, cells: dict) -> bool:
    """Whether `record` graded the cells the assignment has now, with the same points. A record
    made before the source changed is no account of the submission any more."""
    graded = {("grade", g["notebook"], g["name"]): g["max_score"] for g in record["grades"]}
    registered = {key: points for key, points in cells.items() if key[0] == "grade"}
    return not graded or graded == registered


def whole_submission(gradebook: Gradebook, assignment: str, student: str, cells: dict, timestamp):
    """The student's submission with a row for every registered cell. nbgrader makes a
    submission's rows only when it makes the submission, so one that lost rows (deleted by
    hand) is made anew; what only those rows held, manual grades, has no other copy to restore."""
    found = find_submission(gradebook, assignment, student)
    if found is not None and set(submission_rows(found)) != set(cells):
        gradebook.remove_submission(assignment, student)
    when = {"timestamp": datetime.fromisoformat(timestamp)} if timestamp else {}
    return gradebook.update_or_create_submission(assignment, student, **when)


def write_rows(gradebook: Gradebook, assignment: str, result: dict) -> None:
    """Write a graded submission (a worker's result, or the record made of it) into the
    gradebook: a row for every registered cell, as `recorded_rows` says."""
    student = result["student"]
    gradebook.update_or_create_student(student)
    cells = registered_cells(gradebook, assignment)
    submission = whole_submission(gradebook, assignment, student, cells, result.get("timestamp"))
    rows = recorded_rows(result, cells)
    graded = {(g["notebook"], g["name"]): g for g in result["grades"]}
    for notebook in submission.notebooks:
        for grade in notebook.grades:
            grade.auto_score = rows["grade", notebook.name, grade.name]
            mine = graded.get((notebook.name, grade.name))
            grade.needs_manual_grade = mine["needs_manual_grade"] if mine else False
            if mine and mine["extra_credit"] is not None:
                grade.extra_credit = mine["extra_credit"]
        for comment in notebook.comments:
            comment.auto_comment = rows["comment", notebook.name, comment.name]
        if result.get("penalty", {}).get(notebook.name) is not None:
            notebook.late_submission_penalty = result["penalty"][notebook.name]
    gradebook.db.commit()


# ----------------------------------------------------------------------------- the parent's writes


def record(root: Path, assignment: str, result: dict, url: str, cid: str) -> dict:
    """Write one result into the class gradebook (the only writer), then its notebook and record."""
    student = result["student"]
    with open_gradebook(url, cid) as gradebook:
        write_rows(gradebook, assignment, result)
        submission = gradebook.find_submission(assignment, student)
        result["score"], result["max_score"] = submission.score, submission.max_score
    target = root / "autograded" / student / assignment
    if target.exists():
        _rmtree(target)
    if result.get("autograded") and Path(result["autograded"]).is_dir():
        left_out = copy_plain(Path(result["autograded"]), target)
        result["notes"] = result.get("notes", []) + [f"not kept: {line}" for line in left_out]
    # the grader's source and this run's seeds are in the record, never the hidden tests' source
    result.pop("autograded", None)
    path = record_path(root, assignment, student)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)
    return result


def _rmtree(path: Path):
    def writable(func, p, _):
        os.chmod(p, 0o755)
        os.chmod(os.path.dirname(p), 0o755)
        func(p)

    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, onerror=writable)


def settle_recorded(root: Path, assignment: str, students: list, url: str, cid: str) -> tuple:
    """Of `students`, (those the gradebook holds as their records say, those whose rows were
    missing or differed and were written back from their records). Every other one has no
    record, or one that no longer fits the assignment, and is to be graded."""
    in_gradebook, restored = [], []
    with open_gradebook(url, cid) as gradebook:
        cells = registered_cells(gradebook, assignment)
        for student in students:
            saved = read_record(root, assignment, student)
            if saved is None or not fits(saved, cells):
                continue
            now = submission_rows(find_submission(gradebook, assignment, student))
            if now == recorded_rows(saved, cells):
                in_gradebook.append(student)
            else:
                write_rows(gradebook, assignment, saved)
                restored.append(student)
    return in_gradebook, restored
