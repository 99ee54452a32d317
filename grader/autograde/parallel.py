"""`python -m grader autograde ASSIGNMENT --workers N`: a class graded across N processes.

Design (why not N stock `nbgrader autograde` processes on the one gradebook): SQLite takes one
writer at a time and nbgrader holds its session across a whole submission, so concurrent
autogrades into one SQLite file fail with "database is locked". Instead:

- each worker process grades one submission at a time with nbgrader's own `Autograde` converter
  (the same sanitize and autograde steps as `nbgrader autograde`; only `Execute` is swapped for
  grader.autograde.execute.LimitedExecute, which adds the limits and the tamper watch) in a private,
  throwaway course folder holding a copy of a gradebook in which the assignment was registered
  once, and no solutions notebook (a submission cannot read the answers from ../../../solutions
  nor delete the course's files);
- the parent is the only writer of the class gradebook: it copies each result in through
  nbgrader's Gradebook API (so any SQLAlchemy db_url works), then copies the autograded notebook
  to autograded/STUDENT/ASSIGNMENT/ and a JSON record to feedback/.grader/ASSIGNMENT/STUDENT.json
  (gradebook.py: a rerun skips what the gradebook holds as recorded, writes back from the
  records what it lost, and grades the rest; one grader at a time per course).

Workers are forked once and reused, so the cost of importing nbgrader is paid once per worker,
not per submission; a worker stuck past its wall-clock limit is killed with its kernel and
replaced, and that submission is recorded with the reason. Given a Dask scheduler's address
instead, the same grading runs on that cluster's workers (distributed.py).
"""

import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path

import nbformat
import nbgrader.api
from jupyter_core.utils import ensure_event_loop
from nbgrader.api import Gradebook
from tqdm import tqdm

from grader.autograde import gradebook, pipeline, verdicts, warm
from grader.autograde.gradebook import load_config, record
from grader.autograde.plain_copy import copy_plain

DEFAULT_MEMORY = 4 << 30  # bytes of data for a kernel (RLIMIT_DATA): torch + a day's work fit
GRACE = 60  # seconds past the wall-clock limit before a worker is killed from outside


@dataclasses.dataclass
class Limits:
    """What grading one submission may take (0: no limit); see execute.py and sandbox.py."""

    cell_timeout: int = None  # None: nbgrader_config.py's Execute.timeout
    wall_limit: int = 600
    memory_limit: int = DEFAULT_MEMORY
    cpu_limit: int = 3600  # seconds of CPU time of the kernel process, all its threads together
    file_size_limit: int = 1 << 30  # bytes a file the kernel writes may reach
    tasks_limit: int = 1024  # processes and threads in a sandbox (torch starts one per core)
    output_limit: int = 32 << 20  # bytes of cell outputs in a notebook
    # "auto": each kernel in a sandbox where bwrap can start one, else a warning (once) and
    # none, as before sandboxes; "required": refuse to grade without one; "off": none
    sandbox: str = "auto"
    # fork each sandboxed kernel from a warm process with torch, the course and the grader
    # imported (warm.py); False: start each cold, with bwrap. Where it cannot, kernels start cold.
    warm_kernels: bool = True

    def settled(self) -> "Limits":
        """These limits with "auto" decided: "required" where a sandbox can start, else "off".
        Called once, in the parent, as a run starts (so a warning is printed once, not by every
        worker, and building a Limits probes nothing); raises GradingError where a sandbox is
        required and none can start."""
        from grader.autograde import sandbox

        if self.sandbox not in ("auto", "required", "off"):
            raise pipeline.GradingError(
                f"sandbox must be 'auto', 'required' or 'off', not {self.sandbox!r}."
            )
        why = "" if self.sandbox == "off" else sandbox.unavailable()
        if why and self.sandbox == "required":
            raise pipeline.GradingError(f"no sandbox for the grading kernels: {why}.")
        if why:
            print(
                f"warning: grading WITHOUT a sandbox: {why}. Submissions' code will run with "
                "the grader's rights: it can read the solutions and the gradebook and reach "
                "the network.",
                file=sys.stderr,
            )
        return dataclasses.replace(
            self, sandbox="off" if why or self.sandbox == "off" else "required"
        )


# ----------------------------------------------------------------------------- configuration


def scripts_on_path() -> None:
    """Put this Python's scripts first on PATH: nbgrader runs `alembic` from there, and a
    virtual environment works without being activated."""
    scripts = os.path.dirname(sys.executable)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def students(root: Path, assignment: str) -> list:
    return sorted(p.parent.name for p in (root / "submitted").glob(f"*/{assignment}") if p.is_dir())


# ----------------------------------------------------------------------------- the worker


def make_template(root: Path, assignment: str, where: Path) -> Path:
    """A private course folder: config, a gradebook with the assignment registered, and the
    assignment's non-notebook source files (never its solution notebook)."""
    where.mkdir(parents=True)
    shutil.copy(root / "nbgrader_config.py", where)
    shutil.copytree(root / "solutions" / assignment, where / "solutions" / assignment)
    config = where / "nbgrader_config.py"
    config.write_text(
        config.read_text()
        + (
            f"\nc.CourseDirectory.root = {str(where)!r}\n"
            f"c.CourseDirectory.db_url = 'sqlite:///{where}/gradebook.db'\n"
        )
    )
    register(where, assignment)
    for notebook in (where / "solutions" / assignment).glob("*.ipynb"):
        notebook.unlink()
    shutil.rmtree(where / "exercises", ignore_errors=True)
    return where


@functools.cache
def schema_version() -> str:
    """The gradebook schema's version (alembic's head revision), as nbgrader.api's
    get_alembic_version gives it, read in this process. nbgrader asks a child `alembic heads`
    whenever it creates a gradebook: a second Python that imports nbgrader again, 2.6 s on this
    course's 2-core machine, and a run creates two (the class's and the workers' template)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import _temp_alembic_ini

    with _temp_alembic_ini("sqlite://") as ini:
        return ScriptDirectory.from_config(AlembicConfig(ini)).get_current_head()


def register(course: Path, assignment: str) -> None:
    """Record the assignment's cells in `course`'s gradebook, as pipeline.register does with
    `nbgrader generate_assignment`, but in this process (no second start-up of nbgrader)."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    scripts_on_path()
    nbgrader.api.get_alembic_version = schema_version  # the same answer, without a child Python
    with tempfile.TemporaryDirectory() as release:
        config = load_config(course)
        config.CourseDirectory.root = str(course)
        config.CourseDirectory.release_directory = release
        config.CourseDirectory.assignment_id = assignment
        coursedir = CourseDirectory(config=config)
        app = GenerateAssignment(coursedir=coursedir, config=config)
        app.force = True
        app.log.setLevel(logging.ERROR)
        try:
            app.start()
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            raise pipeline.GradingError(
                f"could not register {assignment} in the gradebook of {course}: {error}"
            ) from None


def source_notebooks(root: Path, assignment: str) -> dict:
    """{notebook name: (the solutions notebook, the released one or None)}, read once by the parent."""
    folder = root / "solutions" / assignment
    out = {}
    for path in sorted(folder.glob("*.ipynb")):
        released = root / "exercises" / assignment / path.name
        out[path.stem] = (
            nbformat.read(path, as_version=4),
            nbformat.read(released, as_version=4) if released.is_file() else None,
        )
    return out


def inspect(path: Path, source: nbformat.NotebookNode, assignment: str, release=None):
    """(fatal reason or None, notes, tamper findings) for one submitted notebook, before grading.
    `release` is the notebook students were given (exercises/), for locked cells' text."""
    notes, tamper = [], []
    released = {
        c.metadata.nbgrader["grade_id"]: c
        for c in (release.cells if release else [])
        if c.metadata.get("nbgrader", {}).get("grade_id")
    }
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # bad JSON, not a notebook, an unknown nbformat
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{path.name} is not a readable notebook: {first[:200]}", notes, tamper
    try:
        nbformat.validate(notebook)
    except Exception as error:
        notes.append(
            f"the notebook does not validate ({str(error).splitlines()[0][:120]}); graded anyway"
        )
    cells = [c for c in notebook.get("cells", []) if isinstance(c, dict)]
    ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in cells]
    source_cells = {
        c.metadata.nbgrader["grade_id"]: c
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("grade_id")
    }
    if not cells:
        return "the notebook has no cells", notes, tamper
    answers_and_tests = {
        i
        for i, c in source_cells.items()
        if c.metadata.nbgrader.get("grade") or c.metadata.nbgrader.get("solution")
    }
    if not set(ids) & answers_and_tests:
        return (
            (
                f"this is not a {assignment} notebook: none of its cells belong to the assignment "
                f"(a notebook from another assignment?)"
            ),
            notes,
            tamper,
        )
    seen = set()
    for grade_id in ids:
        if grade_id and grade_id in seen:
            notes.append(
                f"cell id {grade_id!r} appears more than once; the last one is graded "
                "(the others run as plain cells)"
            )
        seen.add(grade_id)
    kernel = notebook.metadata.get("kernelspec", {}).get("name")
    wanted = source.metadata.get("kernelspec", {}).get("name")
    if kernel != wanted:
        notes.append(f"kernel {kernel!r} replaced by the assignment's {wanted!r}")
    first = {}
    for cell in cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id and grade_id not in first:
            first[grade_id] = cell
    for grade_id, original in source_cells.items():
        meta = original.metadata.nbgrader
        cell = first.get(grade_id)
        if meta.get("grade") and not meta.get("solution"):
            if cell is None:
                tamper.append(
                    {
                        "cell": grade_id,
                        "kind": "removed",
                        "what": f"the test cell {grade_id} was deleted (it scores 0)",
                    }
                )
                continue
        if cell is None:
            continue
        given = released.get(grade_id, original).source
        if meta.get("locked") and given.rstrip() != cell.get("source", "").rstrip():
            tamper.append(
                {
                    "cell": grade_id,
                    "kind": "edited",
                    "what": f"the locked cell {grade_id} was edited (graded as released)",
                }
            )
        if cell.get("cell_type") != original.cell_type:
            tamper.append(
                {
                    "cell": grade_id,
                    "kind": "retyped",
                    "what": f"cell {grade_id} was changed from {original.cell_type} to "
                    f"{cell.get('cell_type')} (graded as released)",
                }
            )
    return None, notes, tamper


def unduplicate(path: Path) -> None:
    """Keep the nbgrader metadata of the last cell of each grade id only, as nbgrader's
    DeduplicateIds means to (it empties the others' metadata, which its next step then rejects as
    'an old version of the nbgrader metadata format', failing the whole submission)."""
    notebook = nbformat.read(path, as_version=4)
    seen = set()
    for cell in reversed(notebook.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in seen:
            del cell.metadata["nbgrader"]
        elif grade_id:
            seen.add(grade_id)
    nbformat.write(notebook, path)


def grade_one(
    root: Path,
    template: Path,
    assignment: str,
    student: str,
    sources: dict,
    limits: Limits,
    scratch: Path,
) -> dict:
    """Grade one submission in a private copy of `template`; return everything the parent records."""
    started = time.monotonic()
    result = {
        "student": student,
        "status": "graded",
        "reason": "",
        "notes": [],
        "tamper": [],
        "reports": {},
        "grades": [],
        "comments": [],
        "timestamp": None,
        "seconds": {},
    }
    course = scratch / student
    shutil.rmtree(course, ignore_errors=True)
    shutil.copytree(template, course, ignore=shutil.ignore_patterns("gradebook.db"))
    # the private gradebook lives outside the private course, out of reach of a submission that
    # deletes ../../../* from its working folder (autograded/STUDENT/ASSIGNMENT/)
    database = scratch / f"{student}.gradebook.db"
    shutil.copyfile(template / "gradebook.db", database)
    submitted = root / "submitted" / student / assignment
    for line in copy_plain(submitted, course / "submitted" / student / assignment):
        result["notes"].append(f"not graded: {line}")
    for name, (source, release) in sources.items():
        path = course / "submitted" / student / assignment / f"{name}.ipynb"
        if not path.exists():
            found = sorted(p.name for p in path.parent.iterdir())
            return _failed(
                result, f"no {name}.ipynb in the submission (found: {found or 'nothing'})", started
            )
        fatal, notes, tamper = inspect(path, source, assignment, release)
        result["notes"] += notes
        result["tamper"] += tamper
        if fatal:
            return _failed(result, fatal, started)
        if any("appears more than once" in note for note in notes):
            unduplicate(path)

    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import Execute

    from grader.autograde.execute import LimitedExecute

    record = course / "execute.json"
    config = load_config(course)
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.db_url = f"sqlite:///{database}"
    config.CourseDirectory.assignment_id = assignment
    config.CourseDirectory.student_id = student
    config.Autograde.autograde_preprocessors = [
        LimitedExecute if step is Execute else step
        for step in Autograde.class_traits()["autograde_preprocessors"].default()
    ]
    if limits.cell_timeout:
        config.LimitedExecute.timeout = int(limits.cell_timeout)
    config.LimitedExecute.wall_limit = int(limits.wall_limit or 0)
    config.LimitedExecute.memory_limit = int(limits.memory_limit or 0)
    config.LimitedExecute.cpu_limit = int(limits.cpu_limit or 0)
    config.LimitedExecute.file_size_limit = int(limits.file_size_limit or 0)
    config.LimitedExecute.tasks_limit = int(limits.tasks_limit or 0)
    config.LimitedExecute.output_limit = int(limits.output_limit or 0)
    config.LimitedExecute.sandbox = limits.sandbox != "off"  # settled: "required" or "off"
    config.LimitedExecute.warm_kernels = limits.warm_kernels
    config.LimitedExecute.record_path = str(record)
    config.LimitedExecute.student = student
    config.LimitedExecute.secret = verdicts.course_secret(root).decode()
    coursedir = CourseDirectory(config=config)
    app = Autograde(coursedir=coursedir, config=config)
    app.force = True
    app.create_student = True
    messages = _Collect()
    app.log.addHandler(messages)
    app.log.setLevel(logging.WARNING)
    try:
        app.start()
    except BaseException as error:  # nbgrader says "Please see the error log": find the line
        if isinstance(error, KeyboardInterrupt):
            raise
        reason = messages.reason() or f"{type(error).__name__}: {error}"
        reason = " ".join(reason.split())
        return _failed(result, f"nbgrader could not grade it: {reason}", started)
    finally:
        app.log.removeHandler(messages)
    if record.exists():
        done = json.loads(record.read_text())
        result["tamper"] += [t for t in done["tamper"]]
        result["notes"] += done["notes"]
        result["reports"] = done["reports"]
        result["seconds"].update(done["seconds"])
        if done["stopped"]:
            result["status"], result["reason"] = "stopped", done["stopped"]
        result["tamper"] += shortcuts(done["reports"])
    with Gradebook(f"sqlite:///{database}") as gradebook:
        submission = gradebook.find_submission(assignment, student)
        result["timestamp"] = submission.timestamp.isoformat() if submission.timestamp else None
        for notebook in submission.notebooks:
            result["grades"] += [
                {
                    "notebook": notebook.name,
                    "name": g.name,
                    "auto_score": g.auto_score,
                    "max_score": g.max_score,
                    "extra_credit": g.extra_credit,
                    "needs_manual_grade": g.needs_manual_grade,
                }
                for g in notebook.grades
            ]
            result["comments"] += [
                {"notebook": notebook.name, "name": c.name, "auto_comment": c.auto_comment}
                for c in notebook.comments
            ]
            result.setdefault("penalty", {})[notebook.name] = notebook.late_submission_penalty
    result["autograded"] = str(course / "autograded" / student / assignment)
    result["seconds"]["submission"] = time.monotonic() - started
    return result


def shortcuts(reports: dict) -> list:
    """Findings from the checks' own verdicts: a forbidden call (the guard's 'shortcut'), and an
    exercise that passes its visible checks but fails the hidden ones (answers that only fit the
    inputs the student saw, e.g. a cache or a hard-coded table)."""
    found, visible, hidden = [], {}, {}
    for cell, runs in reports.items():
        for report in runs:
            for result in report["results"]:
                if result["key"] == "shortcut":
                    found.append({"cell": cell, "kind": "shortcut", "what": result["message"]})
                    break
            (hidden if report["hidden"] else visible)[report["exercise"]] = (
                cell,
                all(r["passed"] for r in report["results"]),
            )
    for exercise, (cell, passed) in hidden.items():
        if not passed and visible.get(exercise, (None, False))[1]:
            found.append(
                {
                    "cell": cell,
                    "kind": "visible-only",
                    "what": f"passes the visible checks of {exercise} but fails the hidden "
                    "ones (answers fitted to the visible inputs?)",
                }
            )
    return found


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def reason(self) -> str:
        useful = [
            l
            for l in self.lines
            if l.strip()
            and "Please see" not in l
            and "There was an error processing" not in l
            and "Traceback" not in l
        ]
        errors = [l.strip().splitlines()[-1] for l in self.lines if "Error" in l]
        return (errors or useful or [""])[-1][:300]


def unfinished(student: str, status: str, reason: str) -> dict:
    """The result of a submission whose grading ended before nbgrader's did: no grades."""
    return {
        "student": student,
        "status": status,
        "reason": reason,
        "grades": [],
        "comments": [],
        "tamper": [],
        "notes": [],
        "reports": {},
        "timestamp": None,
        "seconds": {},
    }


def _failed(result, reason, started):
    result.update(status="failed", reason=reason)
    result["seconds"]["submission"] = time.monotonic() - started
    return result


def _worker(conn, root, template, assignment, sources, limits, scratch, log, ahead):
    """A worker process: grade the students the parent sends, one at a time. `ahead` is (its
    warm process or None, every one the parent started; see `warm_ahead`)."""
    os.setpgrp()  # its own process group, so a stuck worker is killed with its kernels
    # An event loop of its own: one inherited from the parent would share its epoll instance
    # with the parent and every other worker, whose waits could take this worker's wakeups.
    ensure_event_loop().close()  # the next run_sync makes a new one
    mine, started = ahead
    if mine is not None:
        warm.adopt(mine, started)
    scripts_on_path()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # its temporary files (its kernels' sandboxes) in its scratch folder, which the parent
    # removes: a worker killed past its deadline cannot remove them itself
    os.makedirs(scratch, exist_ok=True)
    tempfile.tempdir = str(scratch)
    while True:
        student = conn.recv()
        if student is None:
            return
        try:
            result = grade_one(root, template, assignment, student, sources, limits, scratch)
        except Exception:
            why = traceback.format_exc().strip().splitlines()[-1]
            result = unfinished(student, "failed", f"the grader failed: {why}")
        conn.send(result)


# ----------------------------------------------------------------------------- the parent


class ProgressBar(tqdm):
    # tqdm's monitor thread could hold stderr's lock at the moment the pool forks a worker,
    # which would then hang on its first write; the bar is redrawn at every result anyway
    monitor_interval = 0


def progress_bar(total: int, stream):
    """A tqdm bar on `stream` (none if None): submissions graded, how many failed, time spent and
    left, and who was graded last. Shown on a file or a pipe too, where the last state stays."""
    return ProgressBar(
        total=total,
        file=stream,
        disable=stream is None,
        bar_format="[{bar:30}] {n_fmt}/{total_fmt} graded{postfix}, {elapsed} elapsed, "
        "~{remaining} left",
    )


def advance(progress, results: list) -> None:
    """Show on the bar the result just recorded, the last of `results`."""
    failed = sum(r["status"] != "graded" for r in results)
    progress.set_postfix_str(f"{failed} failed, {results[-1]['student'][:24]}", refresh=False)
    progress.update()


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.join(5)


def autograde(
    root: Path,
    assignment: str,
    workers: int = 2,
    *,
    force: bool = False,
    limits: Limits = None,
    only: list = None,
    submissions: Path = None,
    progress_stream=None,
    scheduler: str = None,
) -> dict:
    """Grade every submission in submitted/STUDENT/ASSIGNMENT/ (first copied in from
    `submissions`, if given) across `workers` processes into the class gradebook, or, given a
    `scheduler`'s address, on that Dask distributed cluster (distributed.py).

    Returns {'results': [...], 'skipped': [...], 'restored': [...], 'seconds': ...}: skipped, the
    submissions the gradebook held as recorded; restored, those written back from their records.
    Nothing is touched while another grader runs on the course or the gradebook cannot be opened.
    """
    pipeline.check_assignment(root, assignment)
    limits = (limits or Limits()).settled()
    with gradebook.course_lock(root, assignment):
        url, cid = gradebook.db_url(root), gradebook.course_id(root)
        gradebook.check_gradebook(url)
        if submissions is not None:
            pipeline.collect(root, assignment, submissions)
        with warm_ahead(limits, workers, scheduler) as ahead:
            return _grade_class(
                root,
                assignment,
                workers,
                force,
                limits,
                only,
                url,
                cid,
                progress_stream,
                scheduler,
                ahead,
            )


@contextlib.contextmanager
def warm_ahead(limits: Limits, workers: int, scheduler: str):
    """A warm process for each worker of the pool (warm.py), started now: they import torch and
    the course while this process registers the assignment and forks the workers, each of which
    then adopts one. On a cluster, each worker starts its own now (distributed.py); with cold
    kernels, none."""
    if limits.sandbox != "required" or not limits.warm_kernels:
        yield []
        return
    if scheduler:
        from grader.autograde import distributed

        distributed.start_warm_processes(scheduler)
        yield []
        return
    started = []
    try:
        started = [warm.WarmProcess() for _ in range(workers)]
        yield started
    finally:
        for process in started:  # done with: the workers have ended (or never began)
            process.process.kill()
            process.close()


def _grade_class(
    root, assignment, workers, force, limits, only, url, cid, progress_stream, scheduler, ahead
) -> dict:
    everyone = students(root, assignment)
    if only:
        everyone = [s for s in everyone if s in set(only)]
    if not everyone:
        raise pipeline.GradingError(
            f"nothing to grade: no {root}/submitted/STUDENT/{assignment}/ "
            "folders (pass --submissions DIR to copy them in)."
        )
    register(root, assignment)
    verdicts.course_secret(root)  # made here, once, before the workers read it
    if force:
        skipped, restored = [], []
    else:
        skipped, restored = gradebook.settle_recorded(root, assignment, everyone, url, cid)
    todo = [s for s in everyone if s not in skipped + restored]
    started = time.monotonic()
    results = []
    if todo:
        with tempfile.TemporaryDirectory(prefix="grader-") as scratch:
            scratch = Path(scratch)
            template = make_template(root, assignment, scratch / "template")
            sources = source_notebooks(root, assignment)
            import nbgrader.converters  # noqa: F401  imported once, before the fork

            import grader.autograde.execute  # noqa: F401
            from grader.suites import assignments, exercises

            if assignment in assignments():  # its suite, which checks each cell in the workers
                exercises(assignment)

            job = (root, template, assignment, sources, limits, scratch, todo)
            if scheduler:
                from grader.autograde import distributed

                results = distributed.run_cluster(scheduler, *job, url, cid, progress_stream)
            else:
                results = _run_pool(
                    *job, max(1, min(workers, len(todo))), url, cid, progress_stream, ahead
                )
    return {
        "results": results,
        "skipped": skipped,
        "restored": restored,
        "seconds": time.monotonic() - started,
        "workers": workers,
    }


def _run_pool(
    root, template, assignment, sources, limits, scratch, todo, workers, url, cid, stream, ahead
):
    context = multiprocessing.get_context("fork")
    progress = progress_bar(len(todo), stream)
    queue = list(todo)
    pool = {}  # connection -> [process, student or None, deadline]
    hard = (limits.wall_limit or 10**6) + GRACE

    def spawn(i):
        ours, theirs = context.Pipe()
        warm_one = ahead[i] if i < len(ahead) else None  # a replacement starts its own
        process = context.Process(
            target=_worker,
            daemon=True,
            args=(
                theirs,
                root,
                template,
                assignment,
                sources,
                limits,
                scratch / f"w{i}",
                str(scratch / f"worker{i}.log"),
                (warm_one, ahead),
            ),
        )
        process.start()
        theirs.close()
        if warm_one is not None:
            warm_one.hand_over()
        pool[ours] = [process, None, None]
        return ours

    def give(conn):
        if queue:
            student = queue.pop(0)
            conn.send(student)
            pool[conn][1:] = [student, time.monotonic() + hard]
        else:
            pool[conn][1:] = [None, None]

    results = []

    def finish(result):
        results.append(record(root, assignment, result, url, cid))
        advance(progress, results)

    try:
        for i in range(workers):
            give(spawn(i))
        n = workers
        while any(entry[1] for entry in pool.values()):
            ready = wait([c for c, e in pool.items() if e[1]], timeout=1.0)
            for conn in ready:
                process, student, _ = pool[conn]
                try:
                    result = conn.recv()
                except (EOFError, OSError):
                    result = unfinished(student, "failed", "the grading worker died")
                    _kill_group(process)
                    del pool[conn]
                    conn = spawn(n)
                    n += 1
                finish(result)
                give(conn)
            for conn, (process, student, deadline) in list(pool.items()):
                if student and time.monotonic() > deadline:
                    _kill_group(process)
                    del pool[conn]
                    reason = f"grading took longer than {hard} s and was killed"
                    finish(unfinished(student, "stopped", reason))
                    new = spawn(n)
                    n += 1
                    give(new)
    finally:
        for conn, (process, student, _) in pool.items():
            try:
                conn.send(None)
            except OSError:
                pass
        for conn, (process, student, _) in pool.items():
            process.join(5 if not student else 0.1)
            if process.is_alive():
                _kill_group(process)
        progress.close()
    return results
