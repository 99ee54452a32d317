"""In a notebook, calling an untouched stub gives one line that says what to do, and it is still
an error output (Run All stops there; nbgrader counts it), in a real kernel."""

import nbclient
import nbformat

from helpers import ROOT


def test_a_stub_in_a_notebook_says_not_implemented_yet_in_one_error_line():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import course\n\ndef stable_softmax(x):\n    raise NotImplementedError()"
        ),
        nbformat.v4.new_code_cell("stable_softmax(1)"),
        nbformat.v4.new_code_cell("1 / 0"),
    ]
    nbclient.NotebookClient(notebook, kernel_name="python3", allow_errors=True).execute(
        cwd=str(ROOT)
    )
    (stub,), (other,) = notebook.cells[1].outputs, notebook.cells[2].outputs
    assert stub.output_type == "error" and stub.ename == "NotImplementedError"
    assert stub.traceback == [
        "NotImplementedError: stable_softmax is not implemented yet: replace "
        "`raise NotImplementedError()` in stable_softmax with your code, run "
        "that cell, then run this one again."
    ]
    assert other.output_type == "error" and len(other.traceback) > 1  # other errors: untouched
