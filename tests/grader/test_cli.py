"""`python -m grader`: its help, and a clear error (exit status 2) for every kind of bad input."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from grader.__main__ import main, parser
from helpers import ROOT, grader


def test_help_explains_every_command():
    done = grader("--help")
    assert done.returncode == 0
    for command in ("release", "autograde", "feedback", "export", "check"):
        assert command in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "no/such.ipynb"], "no/such.ipynb: no such notebook"),
        (["check", "README.md", "--assignment", "day01-sdpa"], "is not a readable notebook"),
        (["check", "pyproject.toml"], "is not a readable notebook"),
        (
            ["check", "exercises/day01-sdpa/day01-sdpa.ipynb", "--assignment", "day1"],
            "no assignment 'day1'",
        ),
        (["autograde", "day99-nothing"], "no assignment 'day99-nothing'"),
        (["release", "day1"], "expected one of ['day01-sdpa'"),
        (["feedback", "dayXX"], "no assignment 'dayXX'"),
    ],
    ids=[
        "missing notebook",
        "not json",
        "not a notebook",
        "unknown assignment to check",
        "unknown assignment",
        "release typo",
        "feedback typo",
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    done = grader(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_renamed_notebook_needs_its_assignment_named(tmp_path):
    mine = tmp_path / "my-work.ipynb"
    shutil.copy(ROOT / "exercises" / "day01-sdpa" / "day01-sdpa.ipynb", mine)
    done = grader("check", str(mine))
    assert done.returncode == 2 and "pass --assignment" in done.stderr


def test_check_needs_no_course_folder(tmp_path):
    """Outside the repository, check grades against the course as installed: it knows the
    assignments without solutions/ or nbgrader_config.py (a typo is named among them)."""
    mine = tmp_path / "mine.ipynb"
    shutil.copy(ROOT / "exercises" / "day01-sdpa" / "day01-sdpa.ipynb", mine)
    done = grader("check", str(mine), "--assignment", "day1", cwd=tmp_path)
    assert done.returncode == 2 and "no assignment 'day1'" in done.stderr
    assert "day01-sdpa" in done.stderr and "not a course folder" not in done.stderr


@pytest.mark.parametrize(
    "command", ["release", "autograde", "feedback", "report", "export", "check"]
)
def test_every_command_lists_every_option_it_takes_course_dir_included(command, capsys):
    """Each command's --help names every option the command accepts, --course-dir too, which
    is taken before or after the command."""
    (commands,) = [a for a in parser()._actions if a.dest == "command"]
    options = [o for a in commands.choices[command]._actions for o in a.option_strings]
    assert "--course-dir" in options
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in options:
        assert option in shown, option
    for argv in (["--course-dir", "D", command], [command, "--course-dir", "D"]):
        required = {"autograde": ["day01-sdpa"], "feedback": ["x"], "report": ["x"]}
        argv += required.get(command, []) + (["nb.ipynb"] if command == "check" else [])
        assert parser().parse_args(argv).course_dir == Path("D")


def test_instructor_commands_without_nbgrader_say_what_to_install(monkeypatch, capsys):
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nbgrader" else found(name, *a),
    )
    assert main(["export"]) == 2
    error = capsys.readouterr().err
    assert "needs nbgrader" in error and "attention-from-scratch[grader]" in error


def test_outside_a_course_folder_says_where_to_run(tmp_path):
    done = grader("release", cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a course folder" in done.stderr and "--course-dir" in done.stderr


def test_submissions_folder_must_exist_and_hold_notebooks(tmp_path):
    done = grader("autograde", "day01-sdpa", "--submissions", str(tmp_path / "missing"))
    assert done.returncode == 2 and "no such folder" in done.stderr
    (tmp_path / "notes.txt").write_text("not a notebook")
    done = grader("autograde", "day01-sdpa", "--submissions", str(tmp_path))
    assert done.returncode == 2 and "no submissions in" in done.stderr
    assert not (ROOT / "submitted").exists()


def test_autograde_help_names_the_parallel_mode_and_its_limits():
    done = grader("autograde", "--help")
    assert done.returncode == 0
    flags = ("--workers", "--timeout", "--wall-limit", "--memory-limit", "--student", "--scheduler")
    for flag in flags:
        assert flag in done.stdout
    assert "report" in grader("--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "2", "--memory-limit", "lots"], "expected a size such as 4G"),
    ],
    ids=["no workers", "bad size"],
)
def test_bad_parallel_options_are_one_clear_line(args, message):
    done = grader("autograde", "day01-sdpa", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_report_needs_a_parallel_autograde_first(tmp_path):
    course = tmp_path / "course"
    (course / "solutions" / "day01-sdpa").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copy(
        ROOT / "solutions" / "day01-sdpa" / "day01-sdpa.ipynb", course / "solutions" / "day01-sdpa"
    )
    done = grader("--course-dir", str(course), "report", "day01-sdpa")
    assert done.returncode == 2 and "autograde day01-sdpa --workers" in done.stderr


def test_parse_size():
    from grader.__main__ import parse_size

    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("0") == 0
