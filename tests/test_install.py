"""The course away from its repository: the distribution and its extras, the packaged course that
`python -m grader check` grades against, each notebook's install cell and Colab link; then, for
real, the wheel built as a maintainer builds it, its core alone installed in a fresh virtual
environment outside the repository, a day's notebook copied alone into an empty folder, run
there and checked there, with the same totals as `autograde` in the course folder."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

from grader.autograde import pipeline, sources
from helpers import ROOT, grader, solution_cells

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DAY = "day01-sdpa"  # the quickest day: the install is tested once
TORCH = "torch==2.13.0"  # as the Makefile installs it: pip finds the CPU build on disk
# What hosted runtimes pin and the course must never upgrade (Colab's, when this was written).
HOSTED_PINS = {"ipykernel": "6.17.1", "notebook": "6.5.7", "ipython": "7.34.0"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# ----------------------------------------------------------------------------- the distribution


def test_the_core_asks_for_no_jupyter_front_end_and_nothing_newer_than_hosted_pins():
    core = [Requirement(line) for line in project()["dependencies"]]
    names = {r.name.lower() for r in core}
    assert not names & {"jupyterlab", "notebook", "voila", "nbgrader", "ipython"}, names
    for requirement in core:
        pinned = HOSTED_PINS.get(requirement.name.lower())
        if pinned:
            assert requirement.specifier.contains(pinned), (requirement, pinned)
    assert {"torch", "numpy", "matplotlib", "seaborn", "ipywidgets", "nbclient"} <= names


def test_the_extras_and_all_of_them():
    extras = project()["optional-dependencies"]
    assert {"grader", "lab", "explorer", "test", "all"} <= set(extras)
    (everything,) = [Requirement(line) for line in extras["all"]]
    assert everything.name == project()["name"]
    assert everything.extras == set(extras) - {"all"}
    assert any(Requirement(line).name == "nbgrader" for line in extras["grader"])
    assert any(Requirement(line).name == "voila" for line in extras["explorer"])
    assert {"jupyterlab", "notebook"} <= {Requirement(line).name for line in extras["lab"]}


def test_make_installs_all_and_environment_yml_lists_what_all_installs():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install .*-e "\.\[all\]"', makefile)
    wanted = set(project()["dependencies"])
    for name, lines in project()["optional-dependencies"].items():
        if name != "all":
            wanted |= set(lines)
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    (pip,) = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert sorted(d for d in pip if d != "-e .") == sorted(wanted)
    assert "-e ." in pip
    assert f"python{project()['requires-python']}" in environment["dependencies"]


def test_version_has_one_source_and_the_cli_shows_it():
    done = grader("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [project()["name"], project()["version"]]


def test_the_explorer_caches_its_model_in_the_users_cache_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATTENTION_EXPLORER_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", "from course.explore import gallery; print(gallery.CACHE_DIR)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == tmp_path / project()["name"] / "explorer"


# ----------------------------------------------------------------------------- what the release built


def test_the_packaged_course_is_the_release_of_solutions():
    """What `check` grades against, inside the wheel, is what `python -m grader release` makes of
    solutions/ now: no stale copy, no answer in it, every hidden test."""
    packaged = sources.PACKAGED_COURSE
    assert (packaged / "nbgrader_config.py").read_text() == (
        ROOT / "nbgrader_config.py"
    ).read_text()
    names = pipeline.assignments(ROOT)
    assert pipeline.assignments(packaged) == names
    for name in names:
        committed = sources.packaged_notebook(name).read_text()
        assert committed == sources.notebook_json(sources.grading_copy(ROOT, name)), (
            f"the packaged {name} is stale: run `python -m grader release {name}`"
        )
        assert "BEGIN SOLUTION" not in committed
        hidden = [
            cell
            for cell in nbformat.reads(committed, as_version=4).cells
            if cell.metadata.nbgrader["grade_id"].startswith("hidden_")
        ]
        assert hidden and all("hidden=True" in cell.source for cell in hidden)


@pytest.mark.parametrize("name", pipeline.assignments(ROOT))
def test_each_notebook_installs_the_course_first_and_links_to_colab(name):
    repository = project()["urls"]["Repository"]
    url = sources.colab_url(repository, name)
    assert url.startswith("https://colab.research.google.com/github/")
    assert url.endswith(f"/exercises/{name}/{name}.ipynb")
    release = nbformat.read(ROOT / "exercises" / name / f"{name}.ipynb", as_version=4)
    first, header = release.cells[0], release.cells[1]
    assert first.cell_type == "code" and first.source == sources.INSTALL_CELL
    assert f'version("{project()["name"]}")' in first.source
    assert first.metadata.nbgrader["locked"] and not first.metadata.nbgrader["grade"]
    assert header.cell_type == "markdown" and f"[Open in Colab]({url})" in header.source
    assert f"| {name} | [Open in Colab]({url}) |" in (ROOT / "README.md").read_text()


def test_the_install_cell_leaves_pinned_packages_alone():
    """It installs by name with no --upgrade: pip then keeps every installed package that meets
    the course's lower bounds, and the core's bounds admit what hosted runtimes pin."""
    calls = re.findall(r"subprocess\.run\(\s*\[(.*?)\]", sources.INSTALL_CELL, flags=re.DOTALL)
    (call,) = calls
    assert '"install"' in call and f'"{project()["name"]}"' in call
    assert "upgrade" not in call and "-U" not in call


# ----------------------------------------------------------------------------- from a built wheel


def completed(name: str) -> nbformat.NotebookNode:
    """The released notebook with every stub replaced by the solution's code."""
    answers = {
        grade_id: "\n".join(
            line
            for line in source.splitlines()
            if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")
        )
        for grade_id, source in solution_cells(name).items()
    }
    notebook = nbformat.read(ROOT / "exercises" / name / f"{name}.ipynb", as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return notebook


def outside_env(cache: Path) -> dict:
    """The environment for commands of the fresh virtual environment: nothing of the repository
    or of .venv on the path, and the user's cache folder under the test's own `cache`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "ATTENTION_EXPLORER_CACHE")
    }
    env["XDG_CACHE_HOME"] = str(cache)
    return env


def run(command, cwd, env, codes=(0,)) -> subprocess.CompletedProcess:
    """Run `command`; fail the test, with its output, unless it exits with one of `codes`."""
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode in codes, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def build_distributions(where: Path) -> Path:
    """`python -m build` (sdist, then the wheel from it), on a copy of the files git would
    commit, so nothing is written into the repository. Returns the wheel."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = where / "source"
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is skipped
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--outdir",
            str(where / "dist"),
            str(tree),
        ],
        capture_output=True,
        check=True,
    )
    (wheel,) = (where / "dist").glob("*.whl")
    assert list((where / "dist").glob("*.tar.gz"))
    return wheel


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The wheel's core in a fresh virtual environment outside the repository, and `autograde`'s
    totals for a completed and an untouched DAY in a course folder, graded meanwhile."""
    where = tmp_path_factory.mktemp("outside")
    course = where / "course"
    (course / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "solutions" / DAY, course / "solutions" / DAY)
    inbox = where / "inbox"
    inbox.mkdir()
    nbformat.write(completed(DAY), inbox / "completed.ipynb")
    shutil.copy(ROOT / "exercises" / DAY / f"{DAY}.ipynb", inbox / "untouched.ipynb")
    autograde = subprocess.Popen(  # stock `autograde`, while the environment is built
        [sys.executable, "-m", "grader", "--course-dir", course, "autograde", DAY]
        + ["--submissions", inbox],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wheel = build_distributions(where)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    env = outside_env(where / "cache")
    for what in (TORCH, wheel):  # the core alone: no extra
        run([python, "-m", "pip", "install", "--quiet", "--no-compile", what], where, env)
    log, _ = autograde.communicate(timeout=600)
    assert autograde.returncode == 0, log
    rows = re.findall(r"^(completed|untouched)\s+([\d.]+) / ([\d.]+)", log, flags=re.MULTILINE)
    scores = {student: (float(score), float(points)) for student, score, points in rows}
    assert set(scores) == {"completed", "untouched"}, log
    return {"where": where, "python": python, "env": env, "wheel": wheel, "autograde": scores}


def freeze(python, cwd, env) -> str:
    return run([python, "-m", "pip", "freeze", "--all"], cwd, env).stdout


@pytest.mark.slow
def test_the_core_alone_is_installed_and_imports_from_the_environment(outside):
    python, env = outside["python"], outside["env"]
    script = textwrap.dedent(
        """
        import importlib.util, grader, course
        print(grader.__file__)
        print(course.__file__)
        for name in ("nbgrader", "jupyterlab", "notebook", "voila", "jupytext"):
            print(name, importlib.util.find_spec(name) is not None)
        """
    )
    lines = run([python, "-c", script], outside["where"], env).stdout.splitlines()
    site = str(python.parent.parent)
    assert lines[0].startswith(site) and lines[1].startswith(site)
    assert lines[2:] == [
        f"{name} False" for name in ("nbgrader", "jupyterlab", "notebook", "voila", "jupytext")
    ]


TOP_TO_BOTTOM = f"""
import nbclient, nbformat
notebook = nbformat.read("{DAY}.ipynb", as_version=4)
nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
print("ran", sum(cell.cell_type == "code" for cell in notebook.cells), "code cells")
"""


@pytest.mark.slow
def test_a_notebook_alone_runs_top_to_bottom_and_checks_as_autograde_grades_it(outside):
    """The completed notebook runs without an error in its empty folder while the untouched one
    is checked beside it (two kernels, two cores); then the completed one is checked. Each total
    is autograde's, and nothing is written beside either notebook."""
    where, python, env = outside["where"], outside["python"], outside["env"]
    folders = {"completed": where / "completed", "untouched": where / "untouched"}
    for student, folder in folders.items():
        folder.mkdir()
        shutil.copy(where / "inbox" / f"{student}.ipynb", folder / f"{DAY}.ipynb")
    running = subprocess.Popen(
        [python, "-c", TOP_TO_BOTTOM],
        cwd=folders["completed"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checked = {"untouched": check(python, folders["untouched"], env)}
    ran, _ = running.communicate(timeout=600)
    assert running.returncode == 0 and "ran" in ran, ran
    checked["completed"] = check(python, folders["completed"], env)
    for student, folder in folders.items():
        assert checked[student] == outside["autograde"][student], student
        assert sorted(p.name for p in folder.iterdir()) == [f"{DAY}.ipynb"]
    full = outside["autograde"]["completed"]
    assert full[0] == full[1] > 0 and outside["autograde"]["untouched"] == (0, full[1])


def check(python, folder, env) -> tuple:
    """(score, max_score) that `python -m grader check` prints for DAY.ipynb in `folder`, after
    its per-exercise lines; its exit status says whether that is full marks."""
    done = run([python, "-m", "grader", "check", f"{DAY}.ipynb"], folder, env, codes=(0, 1))
    (total,) = re.findall(r"^Total: ([\d.]+) / ([\d.]+)$", done.stdout, flags=re.MULTILINE)
    score, max_score = (float(x) for x in total)
    assert done.returncode == (0 if score == max_score else 1), done.stdout[-3000:]
    for exercise in ("stable_softmax", "attention_scores", "scaled_dot_product_attention"):
        assert re.search(rf"^{exercise}\s+[\d.]+ / 3\.0$", done.stdout, flags=re.MULTILINE)
    return score, max_score


@pytest.mark.slow
def test_the_install_cell_does_nothing_where_the_course_is_installed(outside):
    """Not even a pip that finds everything satisfied: pip would log to PIP_LOG if it ran."""
    where, python, env = outside["where"], outside["python"], outside["env"]
    before = freeze(python, where, env)
    log = where / "pip-from-the-install-cell.log"
    run([python, "-c", sources.INSTALL_CELL], where, dict(env, PIP_LOG=str(log)))
    assert not log.exists()
    assert freeze(python, where, env) == before


@pytest.mark.slow
def test_the_install_cell_installs_the_course_by_name_where_it_is_missing(outside):
    """With the course uninstalled and pip pointed at the built wheel alone (PyPI cannot be
    asked for an unpublished course; the core's dependencies are there already), the cell
    installs it again."""
    where, python = outside["where"], outside["python"]
    env = dict(outside["env"], PIP_NO_INDEX="1", PIP_FIND_LINKS=str(outside["wheel"].parent))
    installed = f"{project()['name']}=={project()['version']}"
    run([python, "-m", "pip", "uninstall", "--yes", project()["name"]], where, env)
    assert installed not in freeze(python, where, env)
    run([python, "-c", sources.INSTALL_CELL], where, env)
    assert installed in freeze(python, where, env)
