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
        nbformat.v4.new_code_cell(
            "import torch\n\ndef causal(x):\n    return x.tril() & torch.ones_like(x).bool()\n\n"
            "causal(torch.ones(2, 2))"
        ),
    ]
    nbclient.NotebookClient(notebook, kernel_name="python3", allow_errors=True).execute(
        cwd=str(ROOT)
    )
    (stub,), (other,), (torchs,) = (cell.outputs for cell in notebook.cells[1:])
    assert stub.output_type == "error" and stub.ename == "NotImplementedError"
    assert stub.traceback == [
        "NotImplementedError: stable_softmax is not implemented yet: replace "
        "`raise NotImplementedError()` in stable_softmax with your code, run "
        "that cell, then run this one again."
    ]
    assert other.output_type == "error" and len(other.traceback) > 1  # other errors: untouched
    # torch's own NotImplementedError is no stub: its traceback, with the student's line, stays
    assert torchs.ename == "NotImplementedError" and "not implemented for 'Float'" in torchs.evalue
    assert any("x.tril() & torch.ones_like(x).bool()" in line for line in torchs.traceback)
