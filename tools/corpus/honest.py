"""Honest work: the solution, the release untouched, planted mistakes (each scores what the
checks say of it on every draw), honest students who only share the class with the attacks, and
notebooks whose cells a student moved, pasted or retyped."""

import copy

import nbformat

from tools.corpus.build import (
    ASSIGNMENT,
    ROOT,
    SCORES,
    SDPA,
    SOFTMAX,
    VICTIM,
    Case,
    add,
    answers,
    cell,
    filled,
    release,
    slim,
)


def full():
    return filled()


def untouched():
    return slim(release())


def planted_axis():
    return filled(
        **{
            SDPA: answers()[SDPA].replace(
                "attention_scores(q, k), dim=-1)", "attention_scores(q, k), dim=-2)"
            )
        }
    )


def missing_scale():
    return filled(**{SCORES: answers()[SCORES].replace("/ math.sqrt(d)", "")})


def no_max_subtraction():
    # overflows at x ~ 1000: the softmax fails, and so does the attention that calls it
    return filled(**{SOFTMAX: answers()[SOFTMAX].replace("torch.exp(x - x_max)", "torch.exp(x)")})


def float32_sqrt():
    # sqrt(d) rounded to float32: off in float64 whenever d is not a perfect square, which
    # every draw must include, so the grade is the same on every run (issue #17)
    return filled(
        **{SCORES: answers()[SCORES].replace("/ math.sqrt(d)", "/ torch.sqrt(torch.tensor(d))")}
    )


def missing_solution_cell():
    notebook = filled()
    notebook.cells.remove(cell(notebook, SDPA))
    return notebook


def duplicated_ids():
    notebook = filled()
    twin = copy.deepcopy(cell(notebook, SOFTMAX))  # pasted in Jupyter: a new cell id, same metadata
    twin["id"] = "pasted-twin"
    notebook.cells.insert(notebook.cells.index(cell(notebook, SOFTMAX)), twin)
    return notebook


def wrong_kernel():
    notebook = filled()
    notebook.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    return notebook


def edited_locked():
    notebook = filled()
    cell(notebook, f"check_{SOFTMAX}").source = "print('stable_softmax: all checks passed.')"
    return notebook


def removed_checks():
    notebook = filled(**{SOFTMAX: "def stable_softmax(x, dim=-1):\n    return x"})
    notebook.cells = [
        c
        for c in notebook.cells
        if c.metadata.get("nbgrader", {}).get("grade_id")
        not in (f"check_{SOFTMAX}", f"hidden_{SOFTMAX}")
    ]
    return notebook


def retyped_test_cell():
    notebook = filled()
    target = cell(notebook, f"check_{SCORES}")
    index = notebook.cells.index(target)
    notebook.cells[index] = nbformat.v4.new_markdown_cell(target.source, metadata=target.metadata)
    return notebook


def other_assignment():
    other = sorted(
        p for p in (ROOT / "exercises").glob("*/*.ipynb") if p.parent.name != ASSIGNMENT
    )[0]
    return nbformat.read(other, as_version=4)


def bad_json():
    return '{"cells": [{"cell_type": "code", "source": "def stable_softmax(x'  # truncated upload


def no_cells():
    notebook = filled()
    notebook.cells = []
    return notebook


def stderr_top_level():
    return filled(**{SOFTMAX: add("import sys\nprint('debugging on stderr', file=sys.stderr)")})


def stderr_in_function():
    return filled(
        **{
            SCORES: answers()[SCORES].replace(
                "    d = q.shape[-1]",
                "    import sys\n    print('debug', file=sys.stderr)\n    d = q.shape[-1]",
            )
        }
    )


def warnings():
    return filled(
        **{
            SOFTMAX: answers()[SOFTMAX].replace(
                '    """\n', '    """\n    import warnings\n    warnings.warn("a UserWarning")\n', 1
            )
        }
    )


CASES = {
    "full-marks": Case(full, "the solution", 9, findings=[]),
    VICTIM: Case(full, "the solution, graded beside the attacks", 9, findings=[]),
    "untouched": Case(untouched, "the release as given", 0, findings=[]),
    "planted-axis": Case(planted_axis, "softmax over the query axis", 6, findings=[]),
    "missing-scale": Case(missing_scale, "scores not divided by sqrt(d)", 3, findings=[]),
    "no-max-subtraction": Case(
        no_max_subtraction, "a softmax that overflows (no max subtracted)", 3, findings=[]
    ),
    "float32-sqrt": Case(
        float32_sqrt,
        "scores divided by a float32 sqrt(d): wrong in float64 when d is not a square",
        3,
        findings=[],
    ),
    "missing-solution-cell": Case(
        missing_solution_cell, "the attention cell deleted", 6, findings=[]
    ),
    "duplicated-ids": Case(duplicated_ids, "the softmax cell pasted twice", 9, findings=[]),
    "wrong-kernel": Case(wrong_kernel, "kernelspec says R", 9, findings=[]),
    "edited-locked-cell": Case(
        edited_locked,
        "rewrites a check cell to print a pass",
        9,
        findings=["the locked cell check_stable_softmax was edited"],
    ),
    "removed-checks": Case(
        removed_checks,
        "wrong softmax, its test cells deleted",
        3,
        findings=[
            "the test cell check_stable_softmax was deleted",
            "the test cell hidden_stable_softmax was deleted",
        ],
    ),
    "retyped-test-cell": Case(
        retyped_test_cell,
        "a test cell turned into markdown",
        9,
        findings=["changed from code to markdown"],
    ),
    "other-assignment": Case(
        other_assignment,
        "another day's notebook",
        0,
        "failed",
        "not a day01-sdpa notebook",
        findings=[],
    ),
    "bad-json": Case(bad_json, "a truncated upload", 0, "failed", "not a readable notebook", []),
    "no-cells": Case(no_cells, "every cell deleted", 0, "failed", "has no cells", []),
    "stderr-top-level": Case(stderr_top_level, "prints to stderr in its own cell", 9, findings=[]),
    "stderr-in-function": Case(
        stderr_in_function,
        "attention_scores prints to stderr while checked: the check shows it on stdout, so "
        "nbgrader does not zero the cell",
        9,
        findings=[],
    ),
    "warnings": Case(warnings, "stable_softmax warns on stderr", 9, findings=[]),
}
