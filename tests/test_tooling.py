"""The test loop itself: the tree is formatted and lint-clean as `make test` checks it, the
Makefile's test recipe is what CI runs (Chromium, ruff, pytest on every core), and the tests that
must not run at once are grouped for pytest-xdist."""

import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYTHON = sys.executable  # the project's virtualenv: ruff is a test dependency


def run(*command, **kwargs):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def recipe(target: str) -> str:
    """The recipe of `target` in the Makefile: its command lines, up to the next blank line."""
    makefile = (ROOT / "Makefile").read_text()
    return makefile.split(f"\n{target}:")[1].split("\n\n")[0]


@pytest.mark.parametrize(
    "command", [["format", "--check"], ["check"]], ids=["ruff format", "ruff check"]
)
def test_the_tree_is_ruff_clean(command):
    done = run(PYTHON, "-m", "ruff", *command, ".")
    assert done.returncode == 0, f"run `ruff {' '.join(command)} .`:\n{done.stdout}{done.stderr}"


def test_make_test_installs_chromium_then_runs_ruff_then_pytest_on_every_core():
    lines = [line.strip() for line in recipe("test").splitlines()[1:]]
    assert lines[0] == "bash tools/install-debian-packages.sh"
    assert re.fullmatch(r"\$\(BIN\)/python -m ruff format --check \.", lines[1])
    assert re.fullmatch(r"\$\(BIN\)/python -m ruff check \.", lines[2])
    assert re.match(
        r"\$\(BIN\)/python -m pytest -n auto --maxprocesses=\$\(TEST_WORKERS\)", lines[3]
    )
    assert len(lines) == 4


def test_ci_is_make_test_and_nothing_more():
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert commands[-1] == "make test"
    assert not any("apt-get" in line or "pytest" in line for line in commands)


def test_the_system_packages_are_installed_with_apt_get_by_the_one_script():
    script = (ROOT / "tools" / "install-debian-packages.sh").read_text()
    assert "apt-get install" in script
    assert all(name in script for name in ("chromium", "bubblewrap", "postgresql"))


@pytest.mark.parametrize(
    "uid, reason", [("1000", "neither root nor passwordless sudo"), ("0", "no apt-get")]
)
def test_without_a_way_to_install_the_packages_one_line_says_why_and_make_test_goes_on(
    tmp_path, uid, reason
):
    """On a PATH with only a stand-in `id`: no chromium, sudo or apt-get to find."""
    (tmp_path / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (tmp_path / "id").chmod(0o755)
    done = run(
        shutil.which("bash"), "tools/install-debian-packages.sh", env={"PATH": str(tmp_path)}
    )
    assert done.returncode == 0
    (line,) = done.stderr.splitlines()
    assert reason in line and "the tests that need them will skip" in line


def test_the_wheel_carries_every_file_the_packages_read_that_is_not_python():
    """setuptools puts only .py files in the wheel unless package-data names the others (the
    report templates)."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    carried = {
        path
        for package, patterns in package_data.items()
        for pattern in patterns
        for path in (ROOT / package.replace(".", "/")).glob(pattern)
    }
    data = {
        path
        for package in ("course", "grader")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert data and data <= carried, sorted(str(p.relative_to(ROOT)) for p in data - carried)


def test_pytest_runs_each_test_module_whole_on_one_worker():
    """The browser tests share test-artifacts/browser/, and a module's graded class must be
    graded once: with loadscope a module never spreads over two workers."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--dist loadscope" in options["addopts"]
