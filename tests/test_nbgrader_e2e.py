"""nbgrader end to end, for real: the stock commands on this layout, a real SQLite gradebook,
real kernels; then `python -m grader` feedback, export and check on what they produced."""

import csv
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from conftest import ROOT
from grader.pipeline import nbgrader  # the stock `nbgrader ...` command, run in a folder

DAY = "day01-sdpa"
QUERY_AXIS_HINT = "each query's weights must sum to 1 over the keys"

pytestmark = pytest.mark.slow


def grader(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "grader", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def strip_solution_markers(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))


def filled_in(release, edits=None):
    """A student's submission: the release with every stub replaced by the solution's code,
    then `edits` (grade_id -> (old, new)) applied, to plant a bug or a warning."""
    source = nbformat.read(ROOT / "solutions" / DAY / f"{DAY}.ipynb", as_version=4)
    answers = {c.metadata.nbgrader["grade_id"]: strip_solution_markers(c.source)
               for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")}
    notebook = nbformat.read(release, as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            old, new = (edits or {}).get(grade_id, ("", ""))
            assert old in answers[grade_id]
            cell.source = answers[grade_id].replace(old, new)
    return notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A class of four, graded by the stock commands in a copy of this layout."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / DAY, course / "solutions" / DAY)
    nbgrader(course, "generate_assignment", DAY, quiet=True)
    release = course / "exercises" / DAY / f"{DAY}.ipynb"
    submissions = {
        "ada": filled_in(release),
        "bob": nbformat.read(release, as_version=4),  # handed in untouched
        "cy": filled_in(release, {"scaled_dot_product_attention": (
            "attention_scores(q, k), dim=-1)", "attention_scores(q, k), dim=-2)")}),
        "dee": filled_in(release, {"attention_scores": (
            "d = q.shape[-1]", "d = q.shape[-1]\n    import warnings; warnings.warn(f'harmless UserWarning for {tuple(q.shape)}')")}),
    }
    for student, notebook in submissions.items():
        path = course / "submitted" / student / DAY / f"{DAY}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(notebook, path)
    nbgrader(course, "autograde", DAY, quiet=True)
    return course


def score(course, student):
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        return gradebook.find_submission(DAY, student).score


def test_release_keeps_stubs_and_drops_hidden_tests(course):
    release = (course / "exercises" / DAY / f"{DAY}.ipynb").read_text()
    assert "raise NotImplementedError()" in release
    assert "HIDDEN TESTS" not in release and "hidden=True" not in release
    assert "BEGIN SOLUTION" not in release


def test_solution_gets_full_marks_untouched_gets_zero(course):
    assert score(course, "ada") == 9
    assert score(course, "bob") == 0


def test_planted_bug_gets_partial_credit_and_its_hint(course):
    assert score(course, "cy") == 6  # only scaled_dot_product_attention's 3 points are lost
    graded = (course / "autograded" / "cy" / DAY / f"{DAY}.ipynb").read_text()
    assert QUERY_AXIS_HINT in graded


def test_warnings_on_stderr_do_not_zero_a_test(course):
    # dee's attention_scores warns on every call with a new message, so every check cell that
    # calls it writes to stderr; IgnorePattern drops those outputs and the points stay.
    graded = nbformat.read(course / "autograded" / "dee" / DAY / f"{DAY}.ipynb", as_version=4)
    streams = [o for c in graded.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "stream" and o.name == "stderr"]
    assert not any("harmless UserWarning" in o.text for o in streams)
    assert score(course, "dee") == 9


def test_feedback_and_export_through_the_cli(course):
    done = grader("--course-dir", str(course), "feedback", DAY)
    assert done.returncode == 0, done.stderr
    html = (course / "feedback" / "cy" / DAY / f"{DAY}.html").read_text()
    assert QUERY_AXIS_HINT in html

    done = grader("--course-dir", str(course), "export", "--to", str(course / "grades.csv"))
    assert done.returncode == 0, done.stderr
    with open(course / "grades.csv", newline="") as f:
        rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    assert rows == {"ada": 9.0, "bob": 0.0, "cy": 6.0, "dee": 9.0}


def test_cli_autograde_copies_a_folder_of_submissions_and_resumes(course, tmp_path):
    fresh = tmp_path / "course"
    fresh.mkdir()
    shutil.copy(ROOT / "nbgrader_config.py", fresh)
    shutil.copytree(ROOT / "solutions" / DAY, fresh / "solutions" / DAY)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(course / "exercises" / DAY / f"{DAY}.ipynb", inbox / "eve.ipynb")

    done = grader("--course-dir", str(fresh), "autograde", DAY, "--submissions", str(inbox))
    assert done.returncode == 0, done.stderr
    assert re.search(r"eve\s+0\.0 / 9\.0", done.stdout)
    assert (fresh / "submitted" / "eve" / DAY / f"{DAY}.ipynb").is_file()

    again = grader("--course-dir", str(fresh), "autograde", DAY)
    assert again.returncode == 0 and "eve" in again.stdout


def test_cli_check_grades_one_notebook_like_the_autograder(course, tmp_path):
    mine = tmp_path / f"{DAY}.ipynb"
    shutil.copy(course / "submitted" / "cy" / DAY / f"{DAY}.ipynb", mine)
    done = grader("check", str(mine))
    assert done.returncode == 1, done.stderr  # not full marks
    assert "Total: 6.0 / 9.0" in done.stdout
    assert re.search(r"check_scaled_dot_product_attention\s+0\.0 / 2\.0", done.stdout)
    assert re.search(r"hidden_stable_softmax\s+1\.0 / 1\.0", done.stdout)
    assert QUERY_AXIS_HINT in done.stdout
    assert not (ROOT / "gradebook.db").exists() and not (ROOT / "submitted").exists()

