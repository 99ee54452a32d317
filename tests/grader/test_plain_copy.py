"""grader/autograde/plain_copy.py: a submission's folder is copied without following it anywhere."""

import os

from grader.autograde.plain_copy import copy_plain


def test_only_plain_files_are_copied_each_once_within_the_budget(tmp_path):
    source, target, secret = tmp_path / "graded", tmp_path / "kept", tmp_path / "solutions"
    (source / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "answers.py").write_text("the answers")
    (source / "day01.ipynb").write_text("{}")
    (source / "sub" / "notes.txt").write_text("mine")
    os.symlink(secret, source / "leak")  # a folder link out
    os.symlink(secret / "answers.py", source / "answers.py")  # a file link out
    os.symlink(source, source / "sub" / "loop")  # a loop
    (source / "big").write_bytes(b"x" * 2048)
    for i in range(5):
        os.link(source / "big", source / f"big-{i}")  # one file, six names

    left_out = copy_plain(source, target, max_bytes=4096)

    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert kept == ["big", "day01.ipynb", "sub", "sub/notes.txt"]
    assert not any(p.is_symlink() for p in target.rglob("*"))
    assert "the answers" not in "".join(p.read_text() for p in target.rglob("*") if p.is_file())
    assert sum("a second link" in line for line in left_out) == 5
    assert any(line.startswith("leak") for line in left_out)


def test_the_notebook_is_kept_before_a_budget_is_spent(tmp_path):
    source, target = tmp_path / "graded", tmp_path / "kept"
    source.mkdir()
    (source / "a-large-file").write_bytes(b"x" * 4096)
    (source / "z.ipynb").write_text("{}")
    left_out = copy_plain(source, target, max_bytes=4096)
    assert (target / "z.ipynb").exists()
    assert left_out == ["a-large-file: past the 0 MiB kept"]
