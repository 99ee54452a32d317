"""nbgrader end to end, for real: the stock commands on this layout, a real SQLite gradebook,
real kernels; then `python -m grader` feedback, export and check on what they produced.

Every day is covered: its test module (tests/days/test_dayNN_slug.py) names one planted bug in
PLANTED_SUBMISSION, which must cost exactly its points and show its hint.

Each notebook runs once in the whole suite, here: the solution (student "ada", the release with
every stub filled in by the solution's code), the untouched release ("bob") and the planted bug
("cy"), graded as a class of three by stock nbgrader.
"""

import csv
import importlib
import re
import shutil
import time

import nbformat
import pytest
from nbgrader.api import Gradebook

from grader.autograde import pipeline
from grader.autograde.pipeline import nbgrader  # the stock `nbgrader ...` command, run in a folder
from helpers import ROOT, grader, solution_notebook

pytestmark = pytest.mark.slow


def planted(assignment) -> dict:
    """The day's planted bug: cell, old, new, points_lost, hint."""
    module = f"days.test_{assignment.replace('-', '_')}"  # tests/days/, tests/ being on the path
    return importlib.import_module(module).PLANTED_SUBMISSION


def strip_solution_markers(source: str) -> str:
    return "\n".join(
        line
        for line in source.splitlines()
        if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")
    )


def filled_in(assignment, bug=None):
    """A student's submission: the committed release with every stub replaced by the solution's
    code, and `bug` (a PLANTED_SUBMISSION) applied if given."""
    source = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    answers = {
        c.metadata.nbgrader["grade_id"]: strip_solution_markers(c.source)
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    if bug is not None:
        assert bug["old"] in answers[bug["cell"]]
        answers[bug["cell"]] = answers[bug["cell"]].replace(bug["old"], bug["new"])
    notebook = nbformat.read(ROOT / "exercises" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return notebook


def new_course(where, assignment):
    """A course folder holding this repository's nbgrader_config.py and one day's source."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "nbgrader_config.py", where)
    shutil.copytree(ROOT / "solutions" / assignment, where / "solutions" / assignment)
    return where


def submit(course, assignment, student, notebook):
    path = course / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


# Seconds nbgrader took to grade each day's solution ("ada"): kernel, every cell, hidden tests.
SOLUTION_SECONDS = {}


@pytest.fixture(scope="module", params=pipeline.assignments(ROOT))
def graded(request, tmp_path_factory):
    """(course, assignment): a class of three graded by the stock commands."""
    assignment = request.param
    course = new_course(tmp_path_factory.mktemp(assignment), assignment)
    nbgrader(course, "generate_assignment", assignment, quiet=True)
    submit(course, assignment, "ada", filled_in(assignment))
    start = time.perf_counter()
    nbgrader(course, "autograde", assignment, "--student", "ada", quiet=True)
    SOLUTION_SECONDS[assignment] = time.perf_counter() - start
    submit(
        course,
        assignment,
        "bob",
        nbformat.read(ROOT / "exercises" / assignment / f"{assignment}.ipynb", as_version=4),
    )  # the committed release, untouched: its one run in the suite
    submit(course, assignment, "cy", filled_in(assignment, planted(assignment)))
    nbgrader(course, "autograde", assignment, quiet=True)  # bob and cy (ada is graded)
    return course, assignment


def scores(course, assignment) -> dict:
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        return {
            s.student_id: (s.score, s.max_score)
            for s in gradebook.assignment_submissions(assignment)
        }


def test_generated_release_equals_the_committed_one(graded):
    course, assignment = graded
    generated = (course / "exercises" / assignment / f"{assignment}.ipynb").read_text()
    assert generated == (ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text()
    assert "raise NotImplementedError()" in generated
    assert "HIDDEN TESTS" not in generated and "BEGIN SOLUTION" not in generated


def cell_scores(course, assignment, student) -> dict:
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        notebook = gradebook.find_submission_notebook(assignment, assignment, student)
        return {grade.name: (grade.score, grade.max_score) for grade in notebook.grades}


def check_cells_of(assignment, solution_cell: str) -> set:
    """The graded cells that check the exercise of `solution_cell`: those after its run of
    solution cells, up to the next solution cell."""
    found, inside = set(), False
    for cell in solution_notebook(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            if found:
                break
            inside = inside or meta["grade_id"] == solution_cell
        elif meta.get("grade") and inside:
            found.add(meta["grade_id"])
    return found


def test_solution_full_marks_untouched_zero_planted_bug_partial(graded):
    course, assignment = graded
    got = scores(course, assignment)
    total = got["ada"][1]
    assert got["ada"] == (total, total)
    assert got["bob"] == (0, total)
    # the planted bug costs its exercise's cells some of their points (the checks it fails
    # weigh; harness/points.py), never more than the exercise's, and no other cell anything
    bug = planted(assignment)
    cells = cell_scores(course, assignment, "cy")
    hit = check_cells_of(assignment, bug["cell"])
    assert {name for name, (score, most) in cells.items() if score < most} == hit
    lost = sum(cells[name][1] - cells[name][0] for name in hit)
    assert 0 < lost <= bug["points_lost"]
    assert got["cy"][0] == pytest.approx(total - lost)


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def graded_cells(notebook) -> list:
    return [
        c
        for c in notebook.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
    ]


def test_solution_runs_top_to_bottom_in_under_a_minute_and_passes_every_check(graded):
    """On a 2-core CPU; the minute includes nbgrader's own work around the notebook."""
    course, assignment = graded
    notebook = nbformat.read(
        course / "autograded" / "ada" / assignment / f"{assignment}.ipynb", as_version=4
    )
    print(f"{assignment} solution graded in {SOLUTION_SECONDS[assignment]:.1f} s")
    for cell in graded_cells(notebook):
        text = printed(cell)
        assert "✓" in text and "✗" not in text, text
    assert SOLUTION_SECONDS[assignment] < 60


def test_untouched_exercise_says_not_implemented_without_a_traceback_wall(graded):
    course, assignment = graded
    notebook = nbformat.read(
        course / "autograded" / "bob" / assignment / f"{assignment}.ipynb", as_version=4
    )
    visible_checks = [
        c for c in graded_cells(notebook) if c.metadata.nbgrader["grade_id"].startswith("check_")
    ]
    assert visible_checks
    for cell in visible_checks:
        assert "is not implemented yet" in printed(cell)
        # check(..., points=N) returns the points earned, 0, as nbgrader's partial credit
        assert not [o for o in cell.outputs if o.output_type == "error"]
        (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
        assert float(result.data["text/plain"]) == 0.0


def test_planted_bug_shows_its_hint(graded):
    course, assignment = graded
    autograded = (course / "autograded" / "cy" / assignment / f"{assignment}.ipynb").read_text()
    assert planted(assignment)["hint"] in autograded


def test_feedback_and_export_through_the_cli(graded):
    course, assignment = graded
    done = grader("--course-dir", str(course), "feedback", assignment)
    assert done.returncode == 0, done.stderr
    html = (course / "feedback" / "cy" / assignment / f"{assignment}.html").read_text()
    assert planted(assignment)["hint"] in html
    assert "BEGIN HIDDEN TESTS" not in html and "hidden=True" not in html  # no hidden test source

    done = grader("--course-dir", str(course), "export", "--to", str(course / "grades.csv"))
    assert done.returncode == 0, done.stderr
    with open(course / "grades.csv", newline="") as f:
        rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    assert rows == {student: score for student, (score, _) in scores(course, assignment).items()}


DAY = "day01-sdpa"  # the CLI and the course-wide config are tested once, on day 1


def test_cli_autograde_copies_a_folder_of_submissions_and_resumes(tmp_path):
    course = new_course(tmp_path / "course", DAY)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(ROOT / "exercises" / DAY / f"{DAY}.ipynb", inbox / "eve.ipynb")

    done = grader("--course-dir", str(course), "autograde", DAY, "--submissions", str(inbox))
    assert done.returncode == 0, done.stderr
    assert re.search(r"eve\s+0\.0 / 9\.0", done.stdout)
    assert (course / "submitted" / "eve" / DAY / f"{DAY}.ipynb").is_file()

    again = grader("--course-dir", str(course), "autograde", DAY)
    assert again.returncode == 0 and "eve" in again.stdout


def test_cli_check_grades_one_notebook_like_the_autograder(tmp_path):
    mine = tmp_path / f"{DAY}.ipynb"
    nbformat.write(filled_in(DAY, planted(DAY)), mine)
    done = grader("check", str(mine))
    assert done.returncode == 1, done.stderr  # not full marks
    assert "Total: 6.5 / 9.0" in done.stdout  # 6.49: 6, and a share of the planted exercise
    share = re.search(r"check_scaled_dot_product_attention\s+([\d.]+) / 2\.0", done.stdout)
    assert share and float(share.group(1)) < 2  # a share: the checks the bug passes
    assert re.search(r"hidden_stable_softmax\s+1\.0 / 1\.0", done.stdout)
    assert planted(DAY)["hint"] in done.stdout
    assert not (ROOT / "gradebook.db").exists() and not (ROOT / "submitted").exists()


WARNING_ASSIGNMENT = {
    "solution": "def twice(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
    "test": "import warnings, torch\n"
    "warnings.warn('a UserWarning on stderr')\n"
    "torch.tensor([1.0, 2.0]).T  # torch's own deprecation warning\n"
    "assert twice(2) == 4",
}


def test_warnings_on_stderr_do_not_zero_a_test(tmp_path):
    course = tmp_path / "course"
    (course / "solutions" / "warn").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                WARNING_ASSIGNMENT["solution"],
                metadata={
                    "nbgrader": {
                        "grade": False,
                        "solution": True,
                        "locked": False,
                        "grade_id": "twice",
                        "schema_version": 3,
                    }
                },
            ),
            nbformat.v4.new_code_cell(
                WARNING_ASSIGNMENT["test"],
                metadata={
                    "nbgrader": {
                        "grade": True,
                        "solution": False,
                        "locked": True,
                        "grade_id": "test_twice",
                        "points": 1,
                        "schema_version": 3,
                    }
                },
            ),
        ]
    )
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, course / "solutions" / "warn" / "warn.ipynb")
    nbgrader(course, "generate_assignment", "warn", quiet=True)
    submit(course, "warn", "dee", notebook)  # the solution itself: it passes
    # The control: without IgnorePattern the warnings on stderr cost the test its point.
    nbgrader(course, "autograde", "warn", "--IgnorePattern.enabled=False", quiet=True)
    assert scores(course, "warn") == {"dee": (0.0, 1.0)}
    nbgrader(course, "autograde", "warn", "--force", quiet=True)
    assert scores(course, "warn") == {"dee": (1.0, 1.0)}
