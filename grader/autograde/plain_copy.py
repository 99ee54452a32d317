"""Copying what a submission left behind, and nothing it points at.

A submission's folder is the student's to fill, so copying it must not follow where its entries
point: a symlink may lead to the solutions, the class gradebook or the instructor's home, or
loop forever; a thousand hard links to one file would be copied as a thousand files. Only plain
files and folders are copied, each file once, up to a budget of bytes.
"""

import os
import shutil
from pathlib import Path

MAX_BYTES = 64 << 20  # a graded notebook and its outputs fit many times over


def copy_plain(source: Path, target: Path, max_bytes: int = MAX_BYTES) -> list:
    """Copy the plain files and folders under `source` to `target` (notebooks first, so a
    budget spent on other files never costs the graded notebook); return what was left out,
    one line each."""
    left_out, seen, spent = [], set(), 0
    target.mkdir(parents=True, exist_ok=True)
    for folder, names, files in os.walk(source, followlinks=False):
        here = Path(folder)
        relative = here.relative_to(source)
        for name in list(names):
            if (here / name).is_symlink():
                names.remove(name)
                left_out.append(f"{relative / name}: a symlink")
            else:
                (target / relative / name).mkdir(exist_ok=True)
        for name in sorted(files, key=lambda n: (not n.endswith(".ipynb"), n)):
            path = here / name
            info = path.lstat()
            if path.is_symlink() or not path.is_file():
                left_out.append(f"{relative / name}: not a plain file")
            elif (info.st_dev, info.st_ino) in seen:
                left_out.append(f"{relative / name}: a second link to a file already copied")
            elif spent + info.st_size > max_bytes:
                left_out.append(f"{relative / name}: past the {max_bytes >> 20} MiB kept")
            else:
                seen.add((info.st_dev, info.st_ino))
                spent += info.st_size
                shutil.copyfile(path, target / relative / name, follow_symlinks=False)
    return left_out
