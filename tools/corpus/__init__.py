"""An adversarial class for day01-sdpa: honest, broken and hostile submissions, each with the
score and the reason the autograder must give it (issue #17).

One module per kind of case:
    honest          the solution, the stubs, planted mistakes, honest bystanders, moved cells
    limits          crashes and limits: time, memory, output, /tmp, hard links
    faking          faking a pass from inside the kernel (the checks, the watch, the seed)
    shortcuts       forbidden calls, plainly or with the shortcut guard switched off
    grading_state   writing or reading the gradebooks, submissions, records, config, source,
                    start-up files and solutions
    stopping        signals to the grader and its kernels, daemons, symlinks out of its folder
    escapes         the sandbox itself: /proc, ptrace, home, environment, network, sockets,
                    namespaces, the Python environment

    python -m tools.corpus OUT_DIR     write OUT_DIR/STUDENT/day01-sdpa/day01-sdpa.ipynb and
                                        OUT_DIR/manifest.json

Its attacks are real: grade it only where the grader sandboxes its kernels, in a copy of the
course (OUT_DIR is taken as its submitted/ folder, so the attacks aim at OUT_DIR/..).

MANIFEST maps each student id to its Case (build.py): what it does, its expected score (of 9),
status ('graded', 'stopped' at a limit or kernel death, 'failed' to be graded at all), a text its
reason must contain, texts its findings must contain, and texts that must not leak into its
graded folder. The scores are those of a course graded all or nothing (nbgrader_config.py:
`c.LimitedExecute.partial_credit = False`): sums of whole exercises, whatever the checks' weights.
The limits it expects are LIMITS (the test passes them on the command line).
"""

import inspect
import json
import sys
from pathlib import Path

import nbformat

from tools.corpus import escapes, faking, grading_state, honest, limits, shortcuts, stopping
from tools.corpus.build import ASSIGNMENT, MAX, Case, Target, answers, release

__all__ = ["ASSIGNMENT", "LIMITS", "MANIFEST", "MAX", "Case", "Target", "answers", "release"]

LIMITS = {"timeout": 20, "wall_limit": 240, "memory_limit": "3G"}
KINDS = {
    "honest": honest,
    "limits": limits,
    "faking": faking,
    "shortcuts": shortcuts,
    "grading state": grading_state,
    "stopping": stopping,
    "escapes": escapes,
}
MANIFEST = {student: case for kind in KINDS.values() for student, case in kind.CASES.items()}


def make(case: Case, target: Target):
    """The case's notebook (or broken file's text), aimed at `target` if it aims at all."""
    aims = "target" in inspect.signature(case.build).parameters
    return case.build(target) if aims else case.build()


def write(out: Path, target: Target = None) -> dict:
    """Write every case under out/STUDENT/day01-sdpa/day01-sdpa.ipynb and out/manifest.json;
    return the manifest. The attacks aim at `target` (default: a course folder at out/..)."""
    out = Path(out)
    target = target or Target(course=out.resolve().parent)
    manifest = {}
    for student, case in MANIFEST.items():
        path = out / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        notebook = make(case, target)
        if isinstance(notebook, str):
            path.write_text(notebook)
        else:
            nbformat.write(notebook, path)
        manifest[student] = {
            "what": case.what,
            "score": case.score,
            "max_score": MAX,
            "status": case.status,
            "reason": case.reason,
            "findings": case.findings,
            "absent": [text.format(secret=target.secret) for text in case.absent],
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
