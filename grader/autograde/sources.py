"""The solution notebooks as text, and what the release builds from them besides nbgrader's
exercises/.

solutions/DAY/DAY.py, in jupytext's py:percent format, is the source of each day: one `# %%` cell
after another, markdown as comments, and every cell's nbgrader metadata in its header line,

    # %% nbgrader={"grade": true, "grade_id": "check_foo", "locked": true, "points": 2, ...}

solutions/DAY/DAY.ipynb, the notebook nbgrader reads, is built from it, and built the same way
every time: the same text gives the same bytes (cell ids count the cells, cell-00, cell-01, ...;
the notebook's metadata is the text's header, kernelspec and language_info). The jupytext
options live in solutions/jupytext.toml, which Jupyter's jupytext reads too.

The release (`build_release`) also writes what makes a notebook work away from this repository:
- each day's first cell, `INSTALL_CELL`, which installs the course where it is missing (Colab, a
  JupyterHub without it), and an "Open in Colab" link in its header, both into DAY.py;
- README's table of those links; every link is built from the repository URL that
  pyproject.toml declares once (`[project.urls] Repository`);
- the packaged course (`PACKAGED_COURSE`, inside the wheel): nbgrader_config.py and, per day, the
  cells nbgrader registers as it registers them (answers cleared to their stubs, hidden tests
  kept), so that `python -m grader check` grades a notebook without solutions/.
"""

import re
import sys
from pathlib import Path

import nbformat

FORMAT = "py:percent"
PACKAGED_COURSE = Path(__file__).with_name("packaged_course")
DISTRIBUTION = "attention-from-scratch"  # the name pip installs the course by
BRANCH = "main"  # the branch whose exercises/ the Colab links open

INSTALL_CELL = f'''\
# Installs the course where it is missing (Colab, a JupyterHub without it): about a minute, once
# per runtime. Where the course is installed, this cell does nothing. pip adds only what is
# missing, and the course asks for no newer Jupyter than hosted runtimes have (ipykernel,
# notebook, IPython stay as they are).
import importlib.metadata
import subprocess
import sys

try:
    importlib.metadata.version("{DISTRIBUTION}")
except importlib.metadata.PackageNotFoundError:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "{DISTRIBUTION}"], check=True
    )
    importlib.invalidate_caches()  # so that the next cells find what was just installed'''
INSTALL_METADATA = {
    "grade": False,
    "grade_id": "install",
    "locked": True,
    "schema_version": 3,
    "solution": False,
    "task": False,
}
COLAB_LINK = re.compile(r"\[Open in Colab\]\([^)]*\)")
README_LINKS = re.compile(
    r"(<!-- colab-links: written by `python -m grader release` -->\n).*?(<!-- end of colab-links -->)",
    re.DOTALL,
)


# ----------------------------------------------------------------------------- text and notebook


def config_file(path: Path) -> Path:
    """The jupytext.toml of the solutions folder that holds `path` (solutions/DAY/DAY.*)."""
    return Path(path).resolve().parent.parent / "jupytext.toml"


def text_path(notebook: Path) -> Path:
    """solutions/DAY/DAY.ipynb -> solutions/DAY/DAY.py."""
    return Path(notebook).with_suffix(".py")


def notebook_from_text(path: Path) -> nbformat.NotebookNode:
    """The notebook that the py:percent file `path` describes, with deterministic cell ids."""
    import jupytext  # the instructor's tools (the `grader` extra), not a student's
    from jupytext.config import load_jupytext_configuration_file

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
    import jupytext
    from jupytext.config import load_jupytext_configuration_file

    config = load_jupytext_configuration_file(str(config_file(path)))
    return jupytext.writes(notebook, fmt=FORMAT, config=config)


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` at `path` unless it is there already; True if it changed."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def build(notebook: Path) -> bool:
    """Write solutions/DAY/DAY.ipynb from DAY.py; True if it changed. Without DAY.py, nothing."""
    source = text_path(notebook)
    if not source.is_file():
        return False
    return write_if_changed(notebook, notebook_json(notebook_from_text(source)))


# ----------------------------------------------------------------------------- the release


def build_release(root: Path, names: list, every_name: list) -> None:
    """Everything the release writes besides exercises/, for the days `names`: each one's first
    cell and Colab link (in DAY.py), its notebook, its copy in the packaged course; then the
    packaged config and README's links to `every_name`, all the days."""
    repository = repository_url(root)
    for name in names:
        text = root / "solutions" / name / f"{name}.py"
        if text.is_file():
            notebook = with_course_header(notebook_from_text(text), colab_url(repository, name))
            write_if_changed(text, text_from_notebook(notebook, text))
        build(text.with_suffix(".ipynb"))
        write_if_changed(packaged_notebook(name), notebook_json(grading_copy(root, name)))
    write_if_changed(
        PACKAGED_COURSE / "nbgrader_config.py", (root / "nbgrader_config.py").read_text()
    )
    readme = root / "README.md"
    write_if_changed(readme, with_readme_links(readme.read_text(), repository, every_name))


def repository_url(root: Path) -> str:
    """The repository's URL, as pyproject.toml declares it once: `[project.urls] Repository`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return project["urls"]["Repository"].rstrip("/")


def colab_url(repository: str, name: str) -> str:
    """Colab's address of day `name`'s exercise notebook in the GitHub repository `repository`."""
    path = repository.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/exercises/{name}/{name}.ipynb"


def with_course_header(notebook: nbformat.NotebookNode, url: str) -> nbformat.NotebookNode:
    """`notebook` with INSTALL_CELL first and the header's "Open in Colab" link going to `url`
    (put under the title when the header has none)."""
    first = notebook.cells[0] if notebook.cells else None
    if first is None or first.metadata.get("nbgrader", {}).get("grade_id") != "install":
        notebook.cells.insert(0, nbformat.v4.new_code_cell())
    notebook.cells[0].source = INSTALL_CELL
    notebook.cells[0].metadata = {"nbgrader": dict(INSTALL_METADATA)}
    header = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
    link = f"[Open in Colab]({url})"
    if COLAB_LINK.search(header.source):
        header.source = COLAB_LINK.sub(link, header.source)
    else:
        title, _, rest = header.source.partition("\n")
        header.source = f"{title}\n\n{link}\n{rest}"
    return notebook


def with_readme_links(readme: str, repository: str, names: list) -> str:
    """README's text with its table of Colab links (between the colab-links markers) listing
    `names`."""
    rows = "".join(
        f"| {name} | [Open in Colab]({colab_url(repository, name)}) |\n" for name in names
    )
    table = f"| day | |\n| --- | --- |\n{rows}"
    if not README_LINKS.search(readme):
        raise ValueError("README.md has no colab-links markers for the table of Colab links")
    return README_LINKS.sub(lambda m: f"{m.group(1)}{table}{m.group(2)}", readme)


# ----------------------------------------------------------------------------- the packaged course


def packaged_notebook(name: str) -> Path:
    """Where the packaged course keeps day `name`'s cells (nbgrader's layout: solutions/)."""
    return PACKAGED_COURSE / "solutions" / name / f"{name}.ipynb"


def grading_copy(root: Path, name: str) -> nbformat.NotebookNode:
    """The cells of solutions/NAME/NAME.ipynb that nbgrader registers, as `nbgrader
    generate_assignment` registers them: answers cleared to their stubs (ClearSolutions, with
    the course's config), hidden tests kept. Plain cells are left out: grading never reads them.

    Its metadata also says, under "grader", the per-cell timeout and the stderr pattern that
    grading ignores, for the self-check that runs without nbgrader (selfcheck.py)."""
    from nbgrader.preprocessors import ClearSolutions, Execute, IgnorePattern
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    notebook = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    notebook, _ = ClearSolutions(config=config).preprocess(notebook, {})
    notebook.cells = [cell for cell in notebook.cells if cell.metadata.get("nbgrader")]
    ignore = IgnorePattern(config=config)
    notebook.metadata["grader"] = {
        "assignment": name,
        "cell_timeout": Execute(config=config).timeout,
        "ignore_stderr": ignore.pattern if ignore.enabled else "",
    }
    return notebook
