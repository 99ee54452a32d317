"""Notebooks saved before course/ was arranged by role import the old, flat module names."""

import importlib

import pytest

import course
from course._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_holds_the_new_modules_names(old):
    module = importlib.import_module(old)
    for new_name in MOVED[old]:
        new = importlib.import_module(new_name)
        public = [name for name in vars(new) if not name.startswith("_")]
        assert public and all(getattr(module, name) is getattr(new, name) for name in public)


def test_old_imports_of_the_notebooks_work():
    from course.attention import attention, causal_mask, stable_softmax  # noqa: F401
    from course.flash import flash_attention_torch
    from course.scan import MambaBlock

    assert flash_attention_torch.__module__ == "course.reference.online_softmax"
    assert MambaBlock.__module__ == "course.reference.mamba_scan"
    assert course.__name__ == "course"


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("course.no_such_module")


def test_the_course_itself_uses_only_the_new_names(root):
    """The old names are for notebooks saved before the move; the course's own code, notebooks
    and docs use the new ones, so a newcomer meets one name per module."""
    import re
    import subprocess

    old = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(name) for name in MOVED) + r")(?![\w])")
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.ipynb", "*.md"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    here = {"course/_moved.py", "tests/test_moved_modules.py"}
    found = [
        f"{name}: {match.group(0)}"
        for name in tracked
        if name not in here
        for match in old.finditer((root / name).read_text())
    ]
    assert not found, found
