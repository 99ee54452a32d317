"""Every day's notebooks, executed end to end with a real Jupyter kernel."""

import time

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ROOT

ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


def execute(path, workdir, allow_errors=False):
    """Run a notebook top to bottom in `workdir`; return it with outputs, and the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def graded_cells(notebook):
    return [
        c
        for c in notebook.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_runs_top_to_bottom_in_under_a_minute_and_passes_every_check(assignment, tmp_path):
    notebook, seconds = execute(ROOT / "solutions" / assignment / f"{assignment}.ipynb", tmp_path)
    print(f"{assignment} solution executed in {seconds:.1f} s")
    for cell in graded_cells(notebook):
        text = printed(cell)
        assert "✓" in text and "✗" not in text, text
    assert seconds < 60


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_exercise_says_not_implemented_without_a_traceback_wall(assignment, tmp_path):
    notebook, _ = execute(
        ROOT / "exercises" / assignment / f"{assignment}.ipynb", tmp_path, allow_errors=True
    )
    visible_checks = [
        c for c in graded_cells(notebook) if c.metadata.nbgrader["grade_id"].startswith("check_")
    ]
    assert visible_checks
    for cell in visible_checks:
        assert "is not implemented yet" in printed(cell)
        (error,) = [o for o in cell.outputs if o.output_type == "error"]
        assert error.ename == "CheckFailed" and len(error.traceback) == 1
