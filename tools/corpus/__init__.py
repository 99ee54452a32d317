"""An adversarial class for day01-sdpa: broken, hostile and honest submissions, each with the
score and the reason the autograder must give it.

The notebooks are generated, not committed: each is the committed release
(exercises/day01-sdpa/) with the solution's answers filled in (from solutions/day01-sdpa/), then
one change applied, so the corpus never drifts from the assignment. To keep grading quick, the
notebooks drop the release's ungraded code cells (the worked examples, the explorers and the
benchmark), as a student may: those cells earn no points.

    python -m tools.corpus OUT_DIR     write OUT_DIR/STUDENT/day01-sdpa/day01-sdpa.ipynb and
                                        OUT_DIR/manifest.json

MANIFEST lists every case: student id, what it does, expected score (of 9), expected status
('graded', 'stopped' at a limit or kernel death, 'failed' to be graded at all), a text its reason
must contain, and texts its tamper/shortcut findings must contain. The limits it expects are
LIMITS (the test passes them on the command line).
"""

import copy
import json
import sys
from pathlib import Path

import nbformat

ASSIGNMENT = "day01-sdpa"
ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"timeout": 20, "wall_limit": 240, "memory_limit": "3G"}
MAX = 9.0

# Cells and points of day01: check (2) + hidden (1) per exercise.
SOFTMAX, SCORES, SDPA = "stable_softmax", "attention_scores", "scaled_dot_product_attention"


def _strip(source: str) -> str:
    return "\n".join(
        l
        for l in source.splitlines()
        if l.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")
    )


def answers() -> dict:
    source = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    return {
        c.metadata.nbgrader["grade_id"]: _strip(c.source)
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def release() -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


def slim(notebook):
    """Drop the ungraded code cells (examples, explorers, benchmark): they earn nothing."""
    notebook.cells = [
        c for c in notebook.cells if c.cell_type != "code" or c.metadata.get("nbgrader")
    ]
    return notebook


def filled(**replace) -> nbformat.NotebookNode:
    """The slim release with every answer filled in; `replace` maps a cell id to new source."""
    notebook = slim(release())
    code = {**answers(), **replace}
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in code:
            cell.source = code[grade_id]
    return notebook


def cell(notebook, grade_id):
    return next(
        c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
    )


def add(source: str, where: str = SOFTMAX, after: bool = True) -> str:
    """The answer of `where` with `source` appended (or prepended)."""
    base = answers()[where]
    return f"{base}\n\n{source}" if after else f"{source}\n\n{base}"


STUB_BODY = "    raise NotImplementedError()"

# ----------------------------------------------------------------------------- the cases


def c_full():
    return filled()


def c_untouched():
    return slim(release())


def c_planted_axis():
    return filled(
        **{
            SDPA: answers()[SDPA].replace(
                "attention_scores(q, k), dim=-1)", "attention_scores(q, k), dim=-2)"
            )
        }
    )


def c_missing_scale():
    return filled(**{SCORES: answers()[SCORES].replace("/ math.sqrt(d)", "")})


def c_shortcut_softmax():
    return filled(
        **{SOFTMAX: "def stable_softmax(x, dim=-1):\n    return torch.softmax(x, dim=dim)"}
    )


def c_shortcut_sdpa():
    return filled(
        **{
            SDPA: answers()[SDPA] + "\n\n\ndef scaled_dot_product_attention(q, k, v):\n"
            "    weights = stable_softmax(attention_scores(q, k), dim=-1)\n"
            "    return F.scaled_dot_product_attention(q, k, v), weights"
        }
    )


def c_course_reference():
    # the student's attention uses its own softmax, so only the softmax exercise is at stake
    own = answers()[SOFTMAX].replace("def stable_softmax(", "def _own_softmax(")
    return filled(
        **{
            SOFTMAX: own
            + "\n\n\nimport course.reference.sdpa\n\n\ndef stable_softmax(x, dim=-1):\n"
            "    return course.reference.sdpa.stable_softmax(x, dim)",
            SDPA: answers()[SDPA].replace("stable_softmax(", "_own_softmax("),
        }
    )


CACHE = """
import grader

_cache = {}


def _key(q, k):
    return (tuple(q.shape), tuple(k.shape), q.dtype, round(float(q.double().sum()), 6), round(float(k.double().sum()), 6))


def _record(q, k):  # run the visible checks once with the right answer, and remember it
    out = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    _cache[_key(q, k)] = out
    return out


grader.run_exercise("day01-sdpa", "attention_scores", _record, verbose=False)


def attention_scores(q, k):
    return _cache.get(_key(q, k), torch.zeros(*q.shape[:-1], k.shape[-2], dtype=q.dtype))
"""


def c_cached_answers():
    # attention_scores answers only the visible inputs; the student's attention is right
    # (it computes its own scores), so only hidden_attention_scores fails.
    sdpa = answers()[SDPA].replace(
        "attention_scores(q, k)", "(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))"
    )
    return filled(**{SCORES: CACHE, SDPA: sdpa})


def stubs(extra: str):
    """The release untouched, with `extra` appended to the first answer cell."""
    notebook = slim(release())
    first = cell(notebook, SOFTMAX)
    first.source = first.source + "\n\n" + extra
    return notebook


def c_patch_allclose():
    return stubs(
        "torch.allclose = lambda *args, **kwargs: True\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None"
    )


def c_patch_grader_module():
    return stubs(
        "import grader.harness.checking\ngrader.harness.checking.relative_error = lambda out, ref: 0.0\n"
        "grader.harness.checking.expect_close = lambda *args, **kwargs: None"
    )


def c_patch_check():
    return stubs(
        "import grader\ngrader.check = lambda *args, **kwargs: print('all checks passed')\n"
        "check = grader.check"
    )


def c_redefine_check():
    return stubs(
        "def check(assignment, name, fn, hidden=False, seed=None):\n"
        "    print(f'{name}: all checks passed.')"
    )


def c_fake_grader_module():
    return stubs(
        "import sys, types\nfake = types.ModuleType('grader')\n"
        "fake.check = lambda *args, **kwargs: None\nsys.modules['grader'] = fake\n"
        "from grader import check"
    )


def c_patch_assert():
    # `assert` cannot be rebound, so a student patches what makes a check fail instead
    return stubs(
        "import builtins, grader.harness.checking\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "grader.harness.checking.Mistake.__init__ = lambda self, *a, **k: None\n"
        "grader.harness.checking.run.__code__ = (lambda *a, **k: None).__code__"
    )


def c_edited_locked():
    notebook = filled()
    cell(notebook, f"check_{SOFTMAX}").source = "print('stable_softmax: all checks passed.')"
    return notebook


def c_removed_checks():
    notebook = filled(**{SOFTMAX: "def stable_softmax(x, dim=-1):\n    return x"})
    notebook.cells = [
        c
        for c in notebook.cells
        if c.metadata.get("nbgrader", {}).get("grade_id")
        not in (f"check_{SOFTMAX}", f"hidden_{SOFTMAX}")
    ]
    return notebook


def c_retyped_test_cell():
    notebook = filled()
    target = cell(notebook, f"check_{SCORES}")
    index = notebook.cells.index(target)
    notebook.cells[index] = nbformat.v4.new_markdown_cell(target.source, metadata=target.metadata)
    return notebook


def c_duplicated_ids():
    notebook = filled()
    twin = copy.deepcopy(cell(notebook, SOFTMAX))  # pasted in Jupyter: a new cell id, same metadata
    twin["id"] = "pasted-twin"
    notebook.cells.insert(notebook.cells.index(cell(notebook, SOFTMAX)), twin)
    return notebook


def c_wrong_kernel():
    notebook = filled()
    notebook.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    return notebook


def c_other_assignment():
    other = sorted(
        p for p in (ROOT / "exercises").glob("*/*.ipynb") if p.parent.name != ASSIGNMENT
    )[0]
    return nbformat.read(other, as_version=4)


def c_bad_json():
    return '{"cells": [{"cell_type": "code", "source": "def stable_softmax(x'  # truncated upload


def c_no_cells():
    notebook = filled()
    notebook.cells = []
    return notebook


def c_missing_solution_cell():
    notebook = filled()
    notebook.cells.remove(cell(notebook, SDPA))
    return notebook


def c_os_exit():
    return filled(**{SDPA: add("import os\nos._exit(3)", SDPA)})


def c_segfault():
    return filled(**{SDPA: add("import ctypes\nctypes.string_at(0)", SDPA)})


def c_sys_exit():
    return filled(**{SOFTMAX: add("import sys\nsys.exit(0)")})


def c_infinite_loop():
    return filled(**{SDPA: add("while True:\n    pass", SDPA)})


def c_uninterruptible_loop():
    return filled(
        **{
            SDPA: add(
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "while True:\n    pass",
                SDPA,
            )
        }
    )


def c_huge_allocation():
    return filled(
        **{SDPA: add("hog = torch.empty(2 ** 40, dtype=torch.uint8)  # 1 TiB", SDPA, after=False)}
    )


def c_growing_memory():
    return filled(
        **{
            SDPA: add(
                "hog = []\nwhile True:\n    hog.append(bytearray(1 << 26))", SDPA, after=False
            )
        }
    )


def c_stderr_top_level():
    return filled(**{SOFTMAX: add("import sys\nprint('debugging on stderr', file=sys.stderr)")})


def c_stderr_in_function():
    return filled(
        **{
            SCORES: answers()[SCORES].replace(
                "    d = q.shape[-1]",
                "    import sys\n    print('debug', file=sys.stderr)\n    d = q.shape[-1]",
            )
        }
    )


def c_delete_course_files():
    return filled(
        **{
            SOFTMAX: add(
                "import os, shutil\n"
                "for path in ('../../../solutions', '../../../exercises', '../../../gradebook.db',\n"
                "             '../../../nbgrader_config.py', '../../../submitted'):\n"
                "    shutil.rmtree(path, ignore_errors=True)\n"
                "    if os.path.isfile(path):\n"
                "        os.remove(path)"
            )
        }
    )


def c_read_solutions():
    return stubs(
        "import json\n"
        "try:\n"
        "    answer = json.load(open('../../../solutions/day01-sdpa/day01-sdpa.ipynb'))\n"
        "    for c in answer['cells']:\n"
        "        if c.get('metadata', {}).get('nbgrader', {}).get('solution'):\n"
        "            exec(''.join(c['source']))\n"
        "except OSError as error:\n"
        "    print('no answers to copy:', error)"
    )


def c_warnings():
    return filled(
        **{
            SOFTMAX: answers()[SOFTMAX].replace(
                '    """\n', '    """\n    import warnings\n    warnings.warn("a UserWarning")\n', 1
            )
            if '    """\n' in answers()[SOFTMAX]
            else add("import warnings\nwarnings.warn('w')")
        }
    )


# student id -> (builder, what it is, score, status, reason contains, tamper findings contain)
MANIFEST = {
    "full-marks": (c_full, "the solution", 9, "graded", "", []),
    "untouched": (c_untouched, "the release as given", 0, "graded", "", []),
    "planted-axis": (c_planted_axis, "softmax over the query axis", 6, "graded", "", []),
    "missing-scale": (c_missing_scale, "scores not divided by sqrt(d)", 3, "graded", "", []),
    "shortcut-softmax": (
        c_shortcut_softmax,
        "stable_softmax calls torch.softmax",
        3,
        "graded",
        "",
        ["calls softmax"],
    ),
    "shortcut-sdpa": (
        c_shortcut_sdpa,
        "attention calls F.scaled_dot_product_attention",
        6,
        "graded",
        "",
        ["calls scaled_dot_product_attention"],
    ),
    "course-reference": (
        c_course_reference,
        "stable_softmax calls course.reference.sdpa.stable_softmax",
        6,
        "graded",
        "",
        ["course.reference.sdpa.stable_softmax"],
    ),
    "cached-answers": (
        c_cached_answers,
        "attention_scores answers the visible inputs from a cache",
        8,
        "graded",
        "",
        ["passes the visible checks of attention_scores but fails the hidden"],
    ),
    "patch-allclose": (
        c_patch_allclose,
        "monkeypatches torch.allclose and assert_close",
        0,
        "graded",
        "",
        ["replaced torch.allclose"],
    ),
    "patch-grader-module": (
        c_patch_grader_module,
        "monkeypatches grader.harness.checking",
        0,
        "graded",
        "",
        ["replaced grader.harness.checking.relative_error"],
    ),
    "patch-check": (
        c_patch_check,
        "replaces grader.check and rebinds check",
        0,
        "graded",
        "",
        ["replaced grader.check", "redefined check()"],
    ),
    "redefine-check": (
        c_redefine_check,
        "defines its own check()",
        0,
        "graded",
        "",
        ["redefined check()"],
    ),
    "fake-grader-module": (
        c_fake_grader_module,
        "puts a fake grader in sys.modules",
        0,
        "graded",
        "",
        ["replaced the module grader in sys.modules", "redefined check()"],
    ),
    "patch-assert": (
        c_patch_assert,
        "patches AssertionError, Mistake and run's code",
        0,
        "graded",
        "",
        ["replaced builtins.AssertionError", "rewrote the code of grader."],
    ),
    "edited-locked-cell": (
        c_edited_locked,
        "rewrites a check cell to print a pass",
        9,
        "graded",
        "",
        ["the locked cell check_stable_softmax was edited"],
    ),
    "removed-checks": (
        c_removed_checks,
        "wrong softmax, its test cells deleted",
        3,
        "graded",
        "",
        [
            "the test cell check_stable_softmax was deleted",
            "the test cell hidden_stable_softmax was deleted",
        ],
    ),
    "retyped-test-cell": (
        c_retyped_test_cell,
        "a test cell turned into markdown",
        9,
        "graded",
        "",
        ["changed from code to markdown"],
    ),
    "duplicated-ids": (c_duplicated_ids, "the softmax cell pasted twice", 9, "graded", "", []),
    "wrong-kernel": (c_wrong_kernel, "kernelspec says R", 9, "graded", "", []),
    "other-assignment": (
        c_other_assignment,
        "another day's notebook",
        0,
        "failed",
        "not a day01-sdpa notebook",
        [],
    ),
    "bad-json": (c_bad_json, "a truncated upload", 0, "failed", "not a readable notebook", []),
    "no-cells": (c_no_cells, "every cell deleted", 0, "failed", "has no cells", []),
    "missing-solution-cell": (
        c_missing_solution_cell,
        "the attention cell deleted",
        6,
        "graded",
        "",
        [],
    ),
    "os-exit": (c_os_exit, "os._exit in the attention cell", 6, "stopped", "the kernel died", []),
    "segfault": (
        c_segfault,
        "a segmentation fault in the attention cell",
        6,
        "stopped",
        "SIGSEGV",
        [],
    ),
    "sys-exit": (c_sys_exit, "sys.exit(0) after the softmax", 9, "graded", "", []),
    "infinite-loop": (
        c_infinite_loop,
        "while True in the attention cell",
        6,
        "stopped",
        "per-cell timeout",
        [],
    ),
    "uninterruptible-loop": (
        c_uninterruptible_loop,
        "ignores SIGINT, then loops",
        6,
        "stopped",
        "per-cell timeout",
        [],
    ),
    "huge-allocation": (
        c_huge_allocation,
        "allocates 1 TiB before defining attention",
        6,
        "graded",
        "",
        [],
    ),
    "growing-memory": (
        c_growing_memory,
        "grows a list of buffers until the cap",
        6,
        "graded",
        "",
        [],
    ),
    "stderr-top-level": (
        c_stderr_top_level,
        "prints to stderr in its own cell",
        9,
        "graded",
        "",
        [],
    ),
    "stderr-in-function": (
        c_stderr_in_function,
        "attention_scores prints to stderr while checked: the check shows it on "
        "stdout, so nbgrader does not zero the cell",
        9,
        "graded",
        "",
        [],
    ),
    "delete-course-files": (
        c_delete_course_files,
        "deletes ../../../solutions and the config",
        9,
        "graded",
        "",
        [],
    ),
    "read-solutions": (
        c_read_solutions,
        "copies the answers from ../../../solutions",
        0,
        "graded",
        "",
        [],
    ),
    "warnings": (c_warnings, "stable_softmax warns on stderr", 9, "graded", "", []),
}


def write(out: Path) -> dict:
    """Write every case under out/STUDENT/day01-sdpa/day01-sdpa.ipynb and out/manifest.json."""
    out = Path(out)
    manifest = {}
    for student, (build, what, score, status, reason, tamper) in MANIFEST.items():
        path = out / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        notebook = build()
        if isinstance(notebook, str):
            path.write_text(notebook)
        else:
            nbformat.write(notebook, path)
        manifest[student] = {
            "what": what,
            "score": score,
            "max_score": MAX,
            "status": status,
            "reason": reason,
            "tamper": tamper,
        }
    (out / "manifest.json").write_text(
        json.dumps({"assignment": ASSIGNMENT, "limits": LIMITS, "cases": manifest}, indent=1)
    )
    return manifest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) == 1 else 2
    print(f"{len(write(Path(argv[0])))} submissions written under {argv[0]}")
    return 0
