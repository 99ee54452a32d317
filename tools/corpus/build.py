"""What every kind of case is made of: the notebook it starts from (the committed release, with
or without the solution's answers filled in), the place an attack is written into, and the Case
and Target records.

The notebooks are generated, not committed: each is the committed release
(exercises/day01-sdpa/) with the solution's answers filled in (from solutions/day01-sdpa/), or
left as stubs, then one change applied, so the corpus never drifts from the assignment. To keep
grading quick, the notebooks drop the release's ungraded code cells (the worked examples, the
explorers and the benchmark), as a student may: those cells earn no points.
"""

import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import nbformat

ASSIGNMENT = "day01-sdpa"
ROOT = Path(__file__).resolve().parents[2]
MAX = 9.0

# Cells and points of day01: check (2) + hidden (1) per exercise.
SOFTMAX, SCORES, SDPA = "stable_softmax", "attention_scores", "scaled_dot_product_attention"
# Texts an attack tries to copy out (see Case.absent): the Target's secret, and the marker that is
# in every solution notebook and in no submission.
SECRET, SOLUTION = "{secret}", "### BEGIN SOLUTION"
# The honest student whose files the attacks aim at; every student graded beside an attack is a
# bystander of it too.
VICTIM = "bystander-1"


@dataclasses.dataclass(frozen=True)
class Target:
    """What the attacks aim at, outside their own folder: the class's course folder, the
    instructor's home and listeners on this machine, as the grader sees them.

    `token` is in every file an attack writes, every process it starts and every message it
    sends, so a test can find any of them; `secret` is what the grader's environment, the
    instructor's home and its ~/.ssh hold, and what a leak would show."""

    course: Path
    home: Path = Path.home()
    token: str = dataclasses.field(default_factory=lambda: f"corpus-{secrets.token_hex(6)}")
    secret: str = dataclasses.field(default_factory=lambda: f"hunter2-{secrets.token_hex(8)}")
    port: int = 0  # a TCP listener on 127.0.0.1 (0: none)
    unix_socket: str = ""  # a unix socket's path, listened on outside the sandbox ('': none)

    def environment(self) -> dict:
        """The secrets a grader's environment may hold, to be set where the grader runs."""
        return {
            "DATABASE_URL": f"postgresql://grader:{self.secret}@127.0.0.1/gradebook",
            "API_TOKEN": f"token-{self.secret}",
        }


class Case(NamedTuple):
    """One submission of the corpus and the outcome the autograder must give it.

    build: makes the notebook (or the text of a broken file); a case that aims at something
        outside its folder takes the Target, as its parameter `target`.
    score: the points (of MAX) the honest work in it deserves: an attack that fakes a pass
        scores what the same notebook without the attack would.
    status: 'graded', 'stopped' (at a limit, or its kernel died) or 'failed' (not graded).
    reason: a text the record's reason must contain.
    findings: texts the tamper/shortcut findings must contain; [] means none may be reported,
        None that they are not checked (an attack may or may not leave a trace).
    absent: texts (format fields: the Target's) that must be nowhere in the student's graded
        folder or record: a secret or a solution the attack tried to copy out.
    """

    build: Callable
    what: str
    score: float
    status: str = "graded"
    reason: str = ""
    findings: list = None
    absent: tuple = ()


# ----------------------------------------------------------------------------- notebooks


def _strip(source: str) -> str:
    return "\n".join(
        line for line in source.splitlines() if line.strip() not in (SOLUTION, "### END SOLUTION")
    )


def answers() -> dict:
    """grade id -> the solution's code of every answer cell, without the solution markers."""
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
    for each in notebook.cells:
        grade_id = each.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in code:
            each.source = code[grade_id]
    return notebook


def cell(notebook, grade_id):
    return next(
        c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
    )


def add(source: str, where: str = SOFTMAX, after: bool = True) -> str:
    """The answer of `where` with `source` appended (or prepended)."""
    base = answers()[where]
    return f"{base}\n\n{source}" if after else f"{source}\n\n{base}"


def attack(source: str) -> nbformat.NotebookNode:
    """The solution, with `source` run after its last answer (the attention cell): full
    marks are what it deserves, whatever the attack does."""
    return filled(**{SDPA: add(source, SDPA)})


def stubs(extra: str, **replace) -> nbformat.NotebookNode:
    """The release as given (every answer a stub), or with `replace`'s answers, and `extra`
    appended to the first answer cell."""
    notebook = slim(release())
    for grade_id, source in replace.items():
        cell(notebook, grade_id).source = source
    first = cell(notebook, SOFTMAX)
    first.source = first.source + "\n\n" + extra
    return notebook


# Wrong answers that fail every check of their exercise, yet have the right shapes and dtype,
# as a student who fakes a pass would write them; attention stays the stub. Honestly: 0 of 9.
ZEROS = {
    SOFTMAX: "def stable_softmax(x, dim=-1):\n    return torch.zeros_like(x)",
    SCORES: "def attention_scores(q, k):\n"
    "    return torch.zeros(*q.shape[:-1], k.shape[-2], dtype=q.dtype)  # (..., Lq, Lk)",
}


def zeros(extra: str) -> nbformat.NotebookNode:
    """ZEROS's answers, with `extra` (the trick that would pass them) after the first."""
    return stubs(extra, **ZEROS)


# Defined in the kernel before an attack's steps: each step says whether it was done or refused,
# so the graded notebook shows a reader what the attack tried and what stopped it; each file it
# writes holds the token, in an inert comment.
PRELUDE = """
import os

TOKEN = {token!r}


def attempt(what, step):
    try:
        step()
    except Exception as error:
        print(f"refused: {{what}}: {{type(error).__name__}}: {{error}}")
    else:
        print(f"done: {{what}}")


def append_to(path):
    \"\"\"A step: append a comment holding TOKEN to `path`.\"\"\"
    def step():
        with open(path, "a") as f:
            f.write(f"\\n# {{TOKEN}}\\n")
    return step


def create(path):
    \"\"\"A step: create `path` (and its folders), a comment holding TOKEN.\"\"\"
    def step():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write(f"# {{TOKEN}}\\n")
    return step
"""


# Defined in the kernel: `scratch`, the grading run's scratch folder, which holds the kernel's
# working folder as .../grader-XXXX/wN/STUDENT/autograded/STUDENT/ASSIGNMENT ('' if it does not).
SCRATCH = """
parts = os.getcwd().split("/")
scratch = "/".join(parts[: next((i + 1 for i, p in enumerate(parts) if p.startswith("grader-")), 0)])
print("scratch folder:", scratch or "none found")
"""


def steps(target, source: str, start=attack) -> nbformat.NotebookNode:
    """An attack made of `attempt(what, step)` calls, after PRELUDE, in the notebook `start`
    makes (by default: after the solution's answers)."""
    return start(PRELUDE.format(token=target.token) + "\n" + source)
