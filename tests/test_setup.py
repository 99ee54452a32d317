"""The repository's set-up: packaging files that agree, the nbgrader wiring, and a committed
release that matches its source."""

import json
import re
import sys

import nbformat
import pytest
from traitlets.config import Config

from grader.autograde import pipeline, sources
from helpers import ROOT

if sys.version_info >= (3, 11):
    pass
else:
    pass


def test_ci_runs_the_test_command_that_readme_gives():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make (\w+)$", readme, flags=re.MULTILINE)
    assert commands[:2] == ["course", "test"]  # the two commands, in this order
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)


def load_nbgrader_config() -> Config:
    config = Config()
    exec((ROOT / "nbgrader_config.py").read_text(), {"get_config": lambda: config})
    return config


def test_nbgrader_config_uses_this_layout_and_suits_torch():
    config = load_nbgrader_config()
    assert config.CourseDirectory.source_directory == "solutions"
    assert config.CourseDirectory.release_directory == "exercises"
    assert config.Execute.timeout >= 120  # Triton's CPU interpreter is slow


def test_ignore_pattern_drops_python_and_torch_warnings_but_not_other_stderr():
    config = load_nbgrader_config()
    assert config.IgnorePattern.enabled
    pattern = config.IgnorePattern.pattern
    python_warning = "/tmp/x.py:3: UserWarning: scores are large\n  warnings.warn(...)\n"
    torch_warning = "[W1122 13:00:00.000000 123 Module.cpp:42] TF32 is off\n"
    assert re.search(pattern, python_warning) and re.search(pattern, torch_warning)
    assert not re.search(pattern, "a student printed this to stderr\n")


def committed_notebooks():
    return sorted((ROOT / "solutions").glob("*/*.ipynb")) + sorted(
        (ROOT / "exercises").glob("*/*.ipynb")
    )


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebooks_carry_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize(
    "name", pipeline.assignments(ROOT), ids=lambda name: f"solutions/{name}/{name}.py"
)
def test_each_solution_notebook_is_built_from_its_text(name):
    """solutions/DAY/DAY.py is the source; the committed DAY.ipynb is exactly its build, and the
    text is what jupytext writes for that notebook (so saving the pair in Jupyter changes nothing)."""
    notebook = ROOT / "solutions" / name / f"{name}.ipynb"
    text = sources.text_path(notebook)
    assert text.is_file(), f"{text.relative_to(ROOT)} is missing"
    built = sources.notebook_from_text(text)
    assert sources.notebook_json(built) == notebook.read_text(), (
        f"{notebook.relative_to(ROOT)} is not the build of {text.name}: run `python -m grader release {name}`"
    )
    assert sources.text_from_notebook(built, text) == text.read_text()


def test_the_text_keeps_what_nbgrader_needs_in_each_cell_header():
    """A cell's nbgrader metadata survives the trip text -> notebook, and the notebook's metadata
    is the kernel and the language only."""
    text = ROOT / "solutions" / "day01-sdpa" / "day01-sdpa.py"
    header = '# %% nbgrader={"grade": true, "grade_id": "check_stable_softmax", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}'
    assert header in text.read_text().splitlines()
    notebook = sources.notebook_from_text(text)
    (cell,) = [
        c
        for c in notebook.cells
        if c.metadata.get("nbgrader", {}).get("grade_id") == "check_stable_softmax"
    ]
    assert cell.metadata == {
        "nbgrader": {
            "grade": True,
            "grade_id": "check_stable_softmax",
            "locked": True,
            "points": 2,
            "schema_version": 3,
            "solution": False,
            "task": False,
        }
    }
    assert set(notebook.metadata) == {"kernelspec", "language_info"}
    assert [c.id for c in notebook.cells[:3]] == ["cell-00", "cell-01", "cell-02"]


def test_every_solution_has_a_committed_release():
    assert pipeline.assignments(ROOT)
    for name in pipeline.assignments(ROOT):
        assert (ROOT / "exercises" / name / f"{name}.ipynb").is_file(), (
            f"exercises/{name} is missing: run `python -m grader release {name}`"
        )


@pytest.mark.slow
def test_exercises_are_regenerated_from_solutions(tmp_path):
    names = pipeline.assignments(ROOT)
    for name in names:  # or release would rewrite it (tests write nothing into the repository)
        notebook = ROOT / "solutions" / name / f"{name}.ipynb"
        built = sources.notebook_from_text(sources.text_path(notebook))
        assert sources.notebook_json(built) == notebook.read_text(), f"{name}.ipynb is stale"
    pipeline.release(ROOT, release_dir=tmp_path)
    released = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert released == [f"{name}/{name}.ipynb" for name in names]  # the text source stays behind
    for fresh in sorted(tmp_path.glob("*/*.ipynb")):
        committed = ROOT / "exercises" / fresh.relative_to(tmp_path)
        assert committed.is_file() and json.loads(committed.read_text()) == json.loads(
            fresh.read_text()
        ), f"{committed.relative_to(ROOT)} is stale: run `python -m grader release`"
