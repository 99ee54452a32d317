"""`python -m grader autograde --workers N`: the same grades as stock `nbgrader autograde`, into
the gradebook nbgrader_config.py names, with the wall-clock and memory limits applied."""

import json
import shutil
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from grader.autograde.execute import LimitedExecute, limited_kernel_manager
from grader.autograde.pipeline import nbgrader
from helpers import ROOT, grader, nbgrader_cell
from tools import corpus

pytestmark = pytest.mark.slow

DAY = corpus.ASSIGNMENT


def course_with(where, students: dict, assignment=DAY, source=None):
    where.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", where)
    if source is None:
        shutil.copytree(ROOT / "solutions" / assignment, where / "solutions" / assignment)
    else:
        (where / "solutions" / assignment).mkdir(parents=True)
        nbformat.write(source, where / "solutions" / assignment / f"{assignment}.ipynb")
    for student, notebook in students.items():
        path = where / "submitted" / student / assignment / f"{assignment}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(notebook, path)
    return where


def grades(url, assignment=DAY) -> dict:
    with Gradebook(url) as gradebook:
        return {
            (s.student_id, nb.name, g.name): (g.score, g.max_score, g.needs_manual_grade)
            for s in gradebook.assignment_submissions(assignment)
            for nb in s.notebooks
            for g in nb.grades
        }


def test_grades_are_identical_to_sequential_stock_nbgrader(tmp_path):
    kinds = ["full-marks", "planted-axis", "shortcut-softmax"]
    cls = {kind: corpus.MANIFEST[kind][0]() for kind in kinds}
    stock = course_with(tmp_path / "stock", cls)
    ours = course_with(tmp_path / "ours", cls)
    nbgrader(stock, "generate_assignment", DAY, quiet=True)
    nbgrader(stock, "autograde", DAY, quiet=True)
    done = grader("--course-dir", str(ours), "autograde", DAY, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    expected = grades(f"sqlite:///{stock}/gradebook.db")
    assert grades(f"sqlite:///{ours}/gradebook.db") == expected
    assert {s for s, _, _ in expected} == set(kinds)
    # 6, and the share of stable_softmax's points that the checks it passes weigh
    planted_axis = sum(
        score for (s, _, _), (score, _, _) in expected.items() if s == "planted-axis"
    )
    assert planted_axis == pytest.approx(6.6)
    for kind in kinds:
        assert (ours / "autograded" / kind / DAY / f"{DAY}.ipynb").is_file()


def tiny_assignment():
    """Three one-point tests: one passes, one allocates past the memory cap, and one comes
    after cells that sleep past the wall-clock limit."""

    notebook = nbformat.v4.new_notebook(
        cells=[
            nbgrader_cell(
                "def twice(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                "twice",
            ),
            nbgrader_cell("assert twice(2) == 4", "test_twice", 1),
            nbgrader_cell("hog = bytearray(3 << 30)\nassert twice(3) == 6", "test_memory", 1),
            nbformat.v4.new_code_cell("import time\ntime.sleep(6)"),
            nbformat.v4.new_code_cell("time.sleep(6)"),
            nbformat.v4.new_code_cell("time.sleep(6)"),
            nbgrader_cell("assert twice(0) == 0", "test_after_sleeping", 1),
        ]
    )
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return notebook


def test_limits_keep_earned_points_and_grades_go_to_the_configured_db_url(tmp_path):
    notebook = tiny_assignment()
    course = course_with(tmp_path / "course", {"tim": notebook}, "tiny", source=notebook)
    elsewhere = tmp_path / "db" / "class.db"
    elsewhere.parent.mkdir()
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.CourseDirectory.db_url = 'sqlite:///{elsewhere}'\n")
    done = grader(
        "--course-dir",
        str(course),
        "autograde",
        "tiny",
        "--workers",
        "1",
        "--timeout",
        "30",
        "--wall-limit",
        "14",
        "--memory-limit",
        "2G",
    )
    assert done.returncode == 1, done.stdout + done.stderr  # one submission stopped at a limit
    assert not (course / "gradebook.db").exists()
    got = {
        name: score
        for (_, _, name), (score, _, _) in grades(f"sqlite:///{elsewhere}", "tiny").items()
    }
    assert got == {"test_twice": 1, "test_memory": 0, "test_after_sleeping": 0}
    record = json.loads((course / "feedback" / ".grader" / "tiny" / "tim.json").read_text())
    assert record["status"] == "stopped" and "wall-clock limit of 14 s" in record["reason"]
    graded = nbformat.read(course / "autograded" / "tim" / "tiny" / "tiny.ipynb", as_version=4)
    memory = next(
        c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_memory"
    )
    assert any(o.get("ename") == "MemoryError" for o in memory.outputs)
    last = graded.cells[-1]
    assert last.outputs[0]["ename"] == "NotGraded" and "wall-clock" in last.outputs[0]["evalue"]


def dying_kernel_manager(deaths: int):
    """A kernel manager whose first `deaths` kernels exit before they answer kernel_info, as
    the loser of a race for a port does."""

    class DyingKernelManager(limited_kernel_manager(0)):
        def format_kernel_cmd(self, extra_arguments=None):
            nonlocal deaths
            if deaths:
                deaths -= 1
                return [sys.executable, "-c", "raise SystemExit(1)"]
            return super().format_kernel_cmd(extra_arguments)

    return DyingKernelManager


@pytest.mark.parametrize("deaths", [1, 2])
def test_a_kernel_that_dies_at_startup_is_started_once_more(tmp_path, deaths):
    notebook = tiny_assignment()
    notebook.cells = notebook.cells[:2]  # twice() and its one-point test
    record_path = tmp_path / "record.json"
    execute = LimitedExecute(memory_limit=0, record_path=str(record_path), timeout=60)
    execute.kernel_manager_class = dying_kernel_manager(deaths)
    graded, _ = execute.preprocess(notebook, {"metadata": {"path": str(tmp_path)}})
    record = json.loads(record_path.read_text())
    test_cell = graded.cells[1]
    if deaths == 1:  # graded as if nothing had happened
        assert record["kernel_restarts"] == 1 and record["stopped"] is None, record
        assert record["cells_run"] == 2 and test_cell.outputs == []
    else:  # only once: then it is the submission's reason
        assert "before replying to kernel_info" in record["stopped"], record
        assert test_cell.outputs[0]["ename"] == "NotGraded"
