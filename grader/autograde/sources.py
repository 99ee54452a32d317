"""The solution notebooks as text.

solutions/DAY/DAY.py, in jupytext's py:percent format, is the source of each day: one `# %%` cell
after another, markdown as comments, and every cell's nbgrader metadata in its header line,

    # %% nbgrader={"grade": true, "grade_id": "check_foo", "locked": true, "points": 2, ...}

solutions/DAY/DAY.ipynb, the notebook nbgrader reads, is built from it, and built the same way
every time: the same text gives the same bytes (cell ids count the cells, cell-00, cell-01, ...;
the notebook's metadata is the text's header, kernelspec and language_info). The jupytext
options live in solutions/jupytext.toml, which Jupyter's jupytext reads too.
"""

from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_configuration_file

FORMAT = "py:percent"


def config_file(path: Path) -> Path:
    """The jupytext.toml of the solutions folder that holds `path` (solutions/DAY/DAY.*)."""
    return Path(path).resolve().parent.parent / "jupytext.toml"


def text_path(notebook: Path) -> Path:
    """solutions/DAY/DAY.ipynb -> solutions/DAY/DAY.py."""
    return Path(notebook).with_suffix(".py")


def notebook_from_text(path: Path) -> nbformat.NotebookNode:
    """The notebook that the py:percent file `path` describes, with deterministic cell ids."""
    config = load_jupytext_configuration_file(str(config_file(path)))
    notebook = jupytext.reads(Path(path).read_text(), fmt=FORMAT, config=config)
    notebook.metadata.pop("jupytext", None)  # how the text was written, not part of the notebook
    notebook.nbformat, notebook.nbformat_minor = 4, 5
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"
    nbformat.validate(notebook)
    return notebook


def notebook_json(notebook: nbformat.NotebookNode) -> str:
    """The bytes of a notebook file, as Jupyter writes them (one-space indent, final newline)."""
    return nbformat.writes(notebook) + "\n"


def text_from_notebook(notebook: nbformat.NotebookNode, path: Path) -> str:
    """The py:percent text of `notebook`, to be written at `path` (which picks the config)."""
    config = load_jupytext_configuration_file(str(config_file(path)))
    return jupytext.writes(notebook, fmt=FORMAT, config=config)


def build(notebook: Path) -> bool:
    """Write solutions/DAY/DAY.ipynb from DAY.py; True if it changed. Without DAY.py, nothing."""
    source = text_path(notebook)
    if not source.is_file():
        return False
    built = notebook_json(notebook_from_text(source))
    if Path(notebook).is_file() and Path(notebook).read_text() == built:
        return False
    Path(notebook).write_text(built)
    return True
