"""grader/autograde/gradebook.py, through `python -m grader` as an instructor runs it: a rerun
trusts the gradebook only where it holds what the records say, a gradebook that cannot be opened
is named before anything is touched, one grader runs on a course at a time, and `grader report`
and stock `grader feedback` keep each other's pages."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
import sqlalchemy.dialects.postgresql
from nbgrader.api import Gradebook

from grader.autograde.gradebook import DRIVER_PACKAGES
from helpers import ROOT, grader, nbgrader_cell

pytestmark = pytest.mark.slow

DAY = "tiny"
ANSWERS = {"ann": "2 * x", "bob": "x + 2"}  # bob's passes twice(2) == 4 only: 1 point of 2
TOTALS = {"ann": 2.0, "bob": 1.0}
COURSE = "attention-from-scratch"  # nbgrader_config.py's course_id


def tiny(answer="2 * x", sleep=0):
    """Two one-point tests of twice(x), the solution returning `answer`; a submission with
    `sleep` takes that many seconds before its tests."""
    cells = [
        nbgrader_cell(
            f"def twice(x):\n    ### BEGIN SOLUTION\n    return {answer}\n    ### END SOLUTION",
            "twice",
        ),
        nbgrader_cell("assert twice(2) == 4", "test_two", 1),
        nbgrader_cell("assert twice(0) == 0", "test_zero", 1),
    ]
    if sleep:
        cells.insert(1, nbformat.v4.new_code_cell(f"import time\ntime.sleep({sleep})"))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return notebook


def course_with(where, students: dict):
    """A course folder whose one assignment is tiny(), with `students` {id: notebook} submitted."""
    (where / "solutions" / DAY).mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", where)
    nbformat.write(tiny(), where / "solutions" / DAY / f"{DAY}.ipynb")
    for student, notebook in students.items():
        path = where / "submitted" / student / DAY / f"{DAY}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(notebook, path)
    return where


def class_rows(course) -> dict:
    """{(student, cell): (score, max score, needs manual grade, submission time)}."""
    with Gradebook(f"sqlite:///{course}/gradebook.db", COURSE) as gradebook:
        return {
            (s.student_id, g.name): (g.score, g.max_score, g.needs_manual_grade, s.timestamp)
            for s in gradebook.assignment_submissions(DAY)
            for nb in s.notebooks
            for g in nb.grades
        }


def totals(course) -> dict:
    with Gradebook(f"sqlite:///{course}/gradebook.db", COURSE) as gradebook:
        return {s.student_id: s.score for s in gradebook.assignment_submissions(DAY)}


def execute(course, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(course / "gradebook.db")) as db, db:
        db.execute(sql)


def autograde(course, *args, **kwargs):
    return grader("--course-dir", str(course), "autograde", DAY, "--workers", "2", *args, **kwargs)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """ann (full marks) and bob (half) graded with --workers 2; tests change copies of it."""
    course = course_with(
        tmp_path_factory.mktemp("graded") / "course",
        {student: tiny(answer) for student, answer in ANSWERS.items()},
    )
    done = autograde(course)
    assert done.returncode == 0, done.stdout + done.stderr
    assert totals(course) == TOTALS
    return course


@pytest.fixture
def course(graded, tmp_path):
    return shutil.copytree(graded, tmp_path / "course")


# ----------------------------------------------------------------------------- "already graded"


def test_rows_the_gradebook_lost_are_written_back_from_the_records(course):
    before = class_rows(course)
    execute(course, "DELETE FROM grade")  # the case: everyone was skipped, left at 0
    again = autograde(course)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "graded 0 submissions" in again.stdout
    assert "0 already graded (skipped), 2 written back" in again.stdout
    assert class_rows(course) == before

    execute(course, "UPDATE grade SET auto_score = 0")  # scores changed behind the grader's back
    again = autograde(course)
    assert "0 already graded (skipped), 2 written back" in again.stdout, again.stdout
    assert class_rows(course) == before

    again = autograde(course)
    assert "2 already graded (skipped), 0 written back" in again.stdout, again.stdout


def test_a_record_that_no_longer_fits_the_assignment_is_graded_again(course):
    path = course / "feedback" / ".grader" / DAY / "ann.json"
    stale = json.loads(path.read_text())
    stale["grades"][0]["max_score"] = 5.0  # graded when the cell was worth 5 points
    path.write_text(json.dumps(stale))
    again = autograde(course)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "graded 1 submissions" in again.stdout and "1 already graded" in again.stdout
    assert json.loads(path.read_text())["grades"][0]["max_score"] == 1.0
    assert totals(course) == TOTALS


# ----------------------------------------------------------------------------- a bad gradebook


def snapshot(course) -> dict:
    """{path: digest} of every file in the course but the lock file."""
    return {
        str(p.relative_to(course)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(course.rglob("*"))
        if p.is_file() and p.name != ".grader.lock"
    }


@pytest.mark.parametrize(
    "command",
    [
        ["autograde", DAY, "--workers", "2"],
        ["autograde", DAY, "--workers", "2", "--force"],
        ["autograde", DAY],
        ["report", DAY],
        ["feedback", DAY, "--force"],
        ["export", "--to", "grades.csv"],
    ],
    ids=["parallel", "parallel forced", "stock", "report", "feedback", "export"],
)
def test_a_corrupt_gradebook_is_named_and_nothing_is_touched(course, command):
    (course / "gradebook.db").write_bytes(os.urandom(8192))
    before = snapshot(course)
    done = grader("--course-dir", str(course), *command, cwd=course)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"the gradebook at {course}/gradebook.db is not a readable SQLite database" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr and "mv " in done.stderr
    assert snapshot(course) == before


def test_what_the_corrupt_gradebook_message_promises_holds(course):
    """Moved away, the gradebook is rebuilt from the records: nothing is run again."""
    before = class_rows(course)
    (course / "gradebook.db").write_bytes(os.urandom(8192))
    (course / "gradebook.db").rename(course / "gradebook.db.broken")
    again = autograde(course)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "graded 0 submissions" in again.stdout and "2 written back" in again.stdout
    assert class_rows(course) == before


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "postgresql+psycopg"])
def test_a_missing_database_driver_is_named_before_anything_is_graded(tmp_path, scheme):
    # postgresql:// means SQLAlchemy's default driver: psycopg2 before SQLAlchemy 2.1, psycopg after
    driver = scheme.partition("+")[2] or sqlalchemy.dialects.postgresql.dialect.driver
    package = DRIVER_PACKAGES[driver]
    course = course_with(tmp_path / "course", {"ann": tiny()})
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.CourseDirectory.db_url = '{scheme}://grader:secret@127.0.0.1:9/class'\n")
    # the driver as it is where it was never installed, whether or not it is installed here
    shim = tmp_path / "shim" / driver
    shim.mkdir(parents=True)
    missing = f"No module named {driver!r}"
    (shim / "__init__.py").write_text(f"raise ModuleNotFoundError({missing!r}, name={driver!r})\n")
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    for workers in (["--workers", "2"], []):
        done = grader("--course-dir", str(course), "autograde", DAY, *workers, env=env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"needs the Python package {package}, which is not installed" in done.stderr
        assert f"-m pip install {package}`" in done.stderr
        assert "secret" not in done.stderr and "Traceback" not in done.stderr
    assert not (course / "autograded").exists() and not (course / "feedback").exists()


# ----------------------------------------------------------------------------- one grader at a time


def wait_for(condition, what: str, process, log, seconds: float = 120):
    """Wait until `condition()` while `process` runs (else fail with its `log`)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"it ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def runs_a_kernel(pid: int) -> bool:
    """Whether a process started by process `pid` runs a Jupyter kernel: one started cold
    (ipykernel on its command line), or a warm process (warm.py) with a kernel forked."""
    for process in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            command = " ".join(process.cmdline())
            if "ipykernel" in command or ("autograde.warm" in command and process.children()):
                return True
    return False


def holds_the_lock(course, pid: int) -> bool:
    lock = course / ".grader.lock"
    return lock.is_file() and lock.read_text().startswith(f"pid {pid},")


def test_one_grader_at_a_time_and_a_killed_ones_lock_blocks_no_one(tmp_path):
    course = course_with(tmp_path / "course", {"sleepy": tiny(sleep=60), "ann": tiny()})
    log = tmp_path / "first.log"
    with log.open("w") as output:
        first = subprocess.Popen(
            [sys.executable, "-m", "grader", "--course-dir", str(course), "autograde", DAY]
            + ["--workers", "1", "--student", "sleepy"],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    left_behind = []
    try:
        # the first grader holds the lock, and its worker's kernel runs the sleepy notebook
        wait_for(lambda: holds_the_lock(course, first.pid), "taking the lock", first, log)
        wait_for(lambda: runs_a_kernel(first.pid), "starting its kernel", first, log)
        second = autograde(course, "--student", "ann")
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"another grader is running on this course (pid {first.pid}, grading {DAY}" in (
            second.stderr
        )
        assert not (course / "feedback" / ".grader" / DAY / "ann.json").exists()

        left_behind = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)
        first.wait()
        # its worker, which the fork gave the lock file's descriptor, still grades: no matter
        assert any(p.is_running() for p in left_behind)
        third = autograde(course, "--student", "ann")
        assert third.returncode == 0, third.stdout + third.stderr
        assert "graded 1 submissions" in third.stdout
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for process in left_behind:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


# ----------------------------------------------------------------------------- report and feedback


@pytest.mark.parametrize("order", [("report", "feedback"), ("feedback", "report")])
def test_report_and_stock_feedback_keep_each_others_pages(course, order):
    ran = set()
    for command in order + order:  # the second round: feedback --force rewrites its folder
        forced = ["--force"] if command == "feedback" and command in ran else []
        done = grader("--course-dir", str(course), command, DAY, *forced)
        assert done.returncode == 0, done.stdout + done.stderr
        ran.add(command)
        for student in ANSWERS:
            if "feedback" in ran:
                assert (course / "feedback" / student / DAY / f"{DAY}.html").is_file(), command
            if "report" in ran:
                assert (course / "feedback" / student / f"{DAY}-checks.html").is_file(), command
    assert "Score: 1 / 2" in (course / "feedback" / "bob" / f"{DAY}-checks.html").read_text()
