"""`python -m grader check` where nbgrader is not installed: the course's core alone (a student's
laptop, Colab, a JupyterHub that pins its own Jupyter, none of which can take nbgrader's).

With nbgrader installed, the check grades with `autograde --workers`'s own code (see
pipeline.check_notebook). Without it, this module does the same steps, with the same settings,
and nothing else:

- what nbgrader does before running a submission: a grade id that appears twice keeps its last
  cell, as `autograde --workers` keeps it; every locked or graded cell gets back the source the
  course registered for it (a test cell its hidden tests); the kernel is the assignment's, the
  outputs are cleared;
- the run: nbclient executes every cell in a kernel of this Python, errors allowed, with
  nbgrader's per-cell timeout; a kernel that dies or a cell that will not stop ends the run, and
  the graded cells not reached score 0;
- the scores, as nbgrader's `determine_grade` gives them: a graded cell scores 0 if it raised or
  wrote to stderr (past the course's `IgnorePattern`), the number it displayed if it displayed
  one (partial credit), else its points; a graded cell the notebook lacks scores 0.

What it grades against is the packaged course (sources.py writes it at every release): each
day's registered cells, and the timeout and the stderr pattern of nbgrader_config.py.
"""

import re
import sys
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

STUDENT = "you"  # the submission's name in the throwaway course


class NotPackaged(Exception):
    """The course folder is not the packaged course: its notebooks hold no grading settings."""


def grade(course: Path, assignment: str, submitted: nbformat.NotebookNode) -> dict:
    """Grade `submitted` against `course` (a copy of the packaged course) without nbgrader.

    Returns {"cells": [{"name", "score", "max_score", "output"}, ...] (every graded cell the
    course registered, in its order), "note": why the run stopped early, or ""}."""
    source = nbformat.read(course / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    settings = source.metadata.get("grader")
    if settings is None:
        raise NotPackaged(f"{assignment}.ipynb of {course} is not a packaged course's copy")
    notebook = as_graded(submitted, source)
    workdir = course / "autograded" / STUDENT / assignment  # where autograde runs it
    workdir.mkdir(parents=True)
    note = run(notebook, settings["cell_timeout"], workdir)
    if settings["ignore_stderr"]:
        drop_ignored_stderr(notebook, settings["ignore_stderr"])
    ran = {grade_id(cell): cell for cell in notebook.cells if grade_id(cell)}
    cells = []
    for registered in source.cells:
        meta = registered.metadata.nbgrader
        if not meta.get("grade"):
            continue
        cell = ran.get(meta["grade_id"])
        points = float(meta["points"])
        cells.append(
            {
                "name": meta["grade_id"],
                "score": score(cell, points) if cell is not None else 0.0,
                "max_score": points,
                "output": cell_text(cell) if cell is not None else "this test cell was deleted\n",
            }
        )
    return {"cells": cells, "note": note}


def grade_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def as_graded(
    submitted: nbformat.NotebookNode, source: nbformat.NotebookNode
) -> nbformat.NotebookNode:
    """The submission as nbgrader runs it: one cell per grade id (the last), locked and graded
    cells as the course registered them, the assignment's kernel, no outputs."""
    registered = {grade_id(cell): cell for cell in source.cells}
    last = {grade_id(cell): index for index, cell in enumerate(submitted.cells) if grade_id(cell)}
    cells = []
    for index, cell in enumerate(submitted.cells):
        name = grade_id(cell)
        original = registered.get(name)
        if name and (last[name] != index or original is None):
            cell = dict(cell, metadata={})  # a duplicate, or a cell the course does not know
        elif original is not None and (
            original.metadata.nbgrader.get("locked") or original.metadata.nbgrader.get("grade")
        ):
            cell = original
        cells.append(fresh_cell(cell))
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=dict(submitted.metadata))
    notebook.metadata["kernelspec"] = source.metadata["kernelspec"]
    return notebook


NEW_CELL = {
    "code": nbformat.v4.new_code_cell,
    "markdown": nbformat.v4.new_markdown_cell,
    "raw": nbformat.v4.new_raw_cell,
}


def fresh_cell(cell) -> nbformat.NotebookNode:
    """A copy of `cell` (a dict or a node) with no outputs: code cells run anew."""
    make = NEW_CELL[cell["cell_type"]]
    return make(source=cell["source"], metadata=dict(cell.get("metadata", {})))


class ThisPythonKernel(AsyncKernelManager):
    """A kernel of the Python that runs the check, where the course is installed, whatever a
    kernelspec named like the notebook's (a user's own "python3", say) would start."""

    def format_kernel_cmd(self, extra_arguments=None):
        command = [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file]
        return command + list(extra_arguments or [])


def run(notebook: nbformat.NotebookNode, cell_timeout: int, workdir: Path) -> str:
    """Execute every cell in order, in `workdir`; return why the run stopped early, or ""."""
    client = NotebookClient(
        notebook,
        kernel_manager_class=ThisPythonKernel,
        timeout=cell_timeout,
        kernel_name=notebook.metadata["kernelspec"]["name"],
        allow_errors=True,
        interrupt_on_timeout=True,
        # a cell interrupted at the timeout shows this error (and scores 0), as under nbgrader
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": "",
            "traceback": ["CellTimeoutError: No reply from kernel before timeout"],
        },
        # nbgrader's own, and the kernel's warnings about its transport kept off the student's
        # screen (it listens on localhost for this one run)
        extra_arguments=["--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(workdir)}},
    )
    with client.setup_kernel(cwd=str(workdir)):
        for index, cell in enumerate(notebook.cells):
            try:
                client.execute_cell(cell, index)
            except (DeadKernelError, CellTimeoutError) as error:
                why = (
                    "the kernel died"
                    if isinstance(error, DeadKernelError)
                    else f"a cell ran past the timeout of {cell_timeout} s and ignored the interrupt"
                )
                note = f"{why} in cell {grade_id(cell) or index + 1}; the graded cells from there on score 0"
                for later in notebook.cells[index:]:
                    if later.cell_type == "code":
                        later.outputs = [
                            nbformat.v4.new_output(
                                "error", ename="NotGraded", evalue=note, traceback=[note]
                            )
                        ]
                return note
    return ""


def drop_ignored_stderr(notebook: nbformat.NotebookNode, pattern: str) -> None:
    """Remove the stderr outputs that match `pattern`, as nbgrader's IgnorePattern does."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                output
                for output in cell.outputs
                if not (
                    output.output_type == "stream"
                    and output.name == "stderr"
                    and re.search(pattern, output.text)
                )
            ]


def score(cell, points: float) -> float:
    """A graded code cell's score, as nbgrader's determine_grade gives it."""
    for output in cell.outputs:
        if output.output_type == "error" or (
            output.output_type == "stream" and output.name == "stderr"
        ):
            return 0.0
        if output.output_type == "execute_result":
            return partial_score(output.get("data", {}).get("text/plain", ""), points)
    return points


def partial_score(shown: str, points: float) -> float:
    """Partial credit: a number the cell displayed, from 0 to `points`; anything else is full
    marks (nbgrader's get_partial_grade)."""
    try:
        value = float(shown)
    except ValueError:
        return points
    return value if 0 <= value <= points else points


def cell_text(cell) -> str:
    """What a code cell printed: its streams, and the one-line summary of an error."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n")
    return "".join(parts)
