"""Every day's solution notebook, executed end to end with a real Jupyter kernel.

Each notebook runs once in the suite: the solution here, the untouched exercise and the filled-in
ones in tests/grader/test_nbgrader_e2e.py, where nbgrader grades them as a class of three (the
untouched exercise is student "bob"; its test, that each check says "not implemented", is there).
"""

import time

import nbformat
import pytest
from nbclient import NotebookClient

from grader.autograde import pipeline
from helpers import ROOT

ASSIGNMENTS = pipeline.assignments(ROOT)


def execute(path, workdir):
    """Run a notebook top to bottom in `workdir`; return it with outputs, and the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
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
