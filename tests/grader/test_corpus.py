"""The adversarial corpus (tools/corpus/), graded for real with `python -m grader autograde
--workers 2`, in a throwaway course, with the grader installed from a throwaway copy of its
source and a throwaway home for the instructor:

- every submission gets its expected score, status, reason and findings, and leaks nothing it
  tried to copy out (a secret, the solutions) into its graded folder or record;
- the honest students graded beside the attacks keep their full marks;
- nothing outside the grading run's scratch folders changed: the course's grading state and the
  submissions, the gradebook's schema, the grader's source, the instructor's home, the Python
  environment's start-up files and torch's folder, /tmp;
- no process an attack started outlives the run, and nothing reached the test's listeners.

Needs a sandbox (bwrap): without one the attacks would run with the grader's rights, here."""

import csv
import hashlib
import json
import os
import shutil
import signal
import site
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from nbgrader.api import Gradebook

from grader.autograde import sandbox
from helpers import ROOT, grader
from tools import corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(sandbox.unavailable()),
        reason=f"the corpus attacks for real, only in a sandbox: {sandbox.unavailable()}",
    ),
]

DAY = corpus.ASSIGNMENT
GRADING_TIMEOUT = 900  # seconds: a grader stopped by a submission must fail the test, not hang it
LARGEST_GRADED_FOLDER = 64 << 20  # bytes: a notebook within the output limit, and a little more
# What a grading run writes in the course folder (its results, its lock, the course's secret the
# hidden seeds are drawn from); everything else there must stay as it was.
GRADING_OUTPUTS = {"autograded", "feedback", "gradebook.db", ".grader.lock", ".grader-secret"}


def limits():
    return [
        "--timeout",
        str(corpus.LIMITS["timeout"]),
        "--wall-limit",
        str(corpus.LIMITS["wall_limit"]),
        "--memory-limit",
        corpus.LIMITS["memory_limit"],
    ]


# ----------------------------------------------------------------------------- what can change


def fingerprint(folder: Path, skip=()) -> dict:
    """relative path -> sha256 of each file under `folder` (a symlink: where it points), but
    the top-level entries in `skip`; a missing folder has none."""
    prints = {}
    for parent, folders, files in os.walk(folder):
        if Path(parent) == folder:
            folders[:] = [f for f in folders if f not in skip]
            files = [f for f in files if f not in skip]
        for name in files + [f for f in folders if os.path.islink(os.path.join(parent, f))]:
            path = Path(parent, name)
            key = str(path.relative_to(folder))
            if path.is_symlink():
                prints[key] = "-> " + os.readlink(path)
            else:
                prints[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return prints


def startup_files(folder: Path, token: str) -> dict:
    """Of the top level of `folder` (site-packages, torch's folder): the files Python runs at
    start-up (sitecustomize, usercustomize, *.pth) with their sha256, and any named after the
    token."""
    wanted = {"sitecustomize.py", "usercustomize.py"}
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.iterdir()
        if path.is_file() and (path.name in wanted or path.suffix == ".pth" or token in path.name)
    }


def python_folders() -> list:
    """The Python environment's folders an attack may try to plant start-up code in."""
    return [Path(p) for p in site.getsitepackages()] + [Path(torch.__file__).parent]


def state(course: Path, source: Path, home: Path, token: str) -> dict:
    """Everything outside the scratch folders that a grading run must leave as it was."""
    return {
        "course": fingerprint(course, skip=GRADING_OUTPUTS),
        "grader source": fingerprint(source),
        "instructor's home": fingerprint(home),
        **{f"Python: {f}": startup_files(f, token) for f in python_folders()},
        "/tmp": sorted(name for name in os.listdir("/tmp") if token in name),
    }


def running(token: str) -> list:
    """The pids of the processes whose command line holds `token`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


def remove_planted(token: str) -> None:
    """Remove what an attack that got through planted where other runs would find it: files
    named after the token in the Python environment and /tmp."""
    for folder in [*python_folders(), Path("/tmp")]:
        for path in folder.glob(f"*{token}*"):
            if path.is_file():
                path.unlink()
    for folder in python_folders():
        for name in ("sitecustomize.py", "usercustomize.py"):
            path = folder / name
            if path.is_file() and token in path.read_text(errors="replace"):
                path.unlink()


# ----------------------------------------------------------------------------- the class


class Listener:
    """A socket (TCP on 127.0.0.1, or unix at `path`) outside every sandbox that records what
    connects to it, in a thread, until closed."""

    def __init__(self, path: str = ""):
        self.path = path
        if path:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.socket.bind(path)
            self.socket.listen()
        else:
            self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.5)
        self.received = []
        self.open = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def _serve(self):
        while self.open:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # the timeout, or closed
                continue
            with connection:
                connection.settimeout(5)
                try:
                    self.received.append(connection.recv(1 << 16) or b"(connected)")
                except OSError:
                    self.received.append(b"(connected)")

    def close(self) -> list:
        self.open = False
        self.thread.join()
        self.socket.close()
        return self.received


def instructor_home(home: Path, secret: str) -> None:
    """A home with what an instructor's has: a key, a shell profile, IPython and Jupyter."""
    for folder in (".ssh", ".ipython/profile_default/startup", ".jupyter"):
        (home / folder).mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n")
    (home / ".bashrc").write_text("export EDITOR=vi\n")
    (home / ".jupyter" / "jupyter_server_config.py").write_text("c = get_config()\n")


def run_grader(*args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m grader ARGS` in its own process group, killed whole past GRADING_TIMEOUT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "grader", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=GRADING_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += f"\n(killed: still grading after {GRADING_TIMEOUT} s)"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def make_course(course: Path, source: Path) -> None:
    """A course folder with the day's solutions and release, graded all or nothing, and a copy
    of the grader's source (and the course package) at `source`, to install the grader from: an
    attack may hit it.

    All or nothing (the course setting): a case's expected score is then a sum of whole
    exercises, what the honest work in it earns whatever the checks' weights."""
    course.mkdir()
    shutil.copy(ROOT / "nbgrader_config.py", course)
    with open(course / "nbgrader_config.py", "a") as config:
        config.write("\nc.LimitedExecute.partial_credit = False\n")
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder / DAY, course / folder / DAY)
    for package in ("grader", "course"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    course, source, home, workdir = (tmp / name for name in ("course", "source", "home", "run"))
    make_course(course, source)
    workdir.mkdir()  # where the grader runs: not the repository, whose grader/ it would import
    network, unix = Listener(), Listener(str(tmp / "listener.sock"))
    target = corpus.Target(course=course, home=home, port=network.port, unix_socket=unix.path)
    instructor_home(home, target.secret)
    manifest = corpus.write(course / "submitted", target)
    (course / "submitted" / "manifest.json").unlink()
    before = state(course, source, home, target.token)
    env = {
        **os.environ,
        **target.environment(),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(tmp / "cache"),  # the grader's own caches (matplotlib's fonts)
        "PYTHONPATH": str(source),
    }
    try:
        done = run_grader(
            "--course-dir", str(course), "autograde", DAY, "--workers", "2", *limits(),
            env=env, cwd=workdir,
        )  # fmt: skip
        outlived = running(target.token)
        received = network.close() + unix.close()
        after = state(course, source, home, target.token)
        records = {
            p.stem: json.loads(p.read_text())
            for p in (course / "feedback" / ".grader" / DAY).glob("*.json")
        }
        yield {
            "course": course,
            "manifest": manifest,
            "done": done,
            "records": records,
            "changes": {k: (before[k], after[k]) for k in before if before[k] != after[k]},
            "outlived": outlived,
            "received": received,
            "env": env,
            "workdir": workdir,
        }
    finally:
        for pid in running(target.token):  # what the attacks started, if it got out
            os.kill(pid, signal.SIGKILL)
        remove_planted(target.token)


# ----------------------------------------------------------------------------- the tests


def test_the_corpus_is_big_enough_and_covers_the_issue():
    assert len(corpus.MANIFEST) >= 60
    assert all(kind.CASES for kind in corpus.KINDS.values())
    assert {case.status for case in corpus.MANIFEST.values()} == {"graded", "stopped", "failed"}


def test_each_case_is_a_notebook_of_its_own(tmp_path):
    """Every case but the honest copies of the solution differs from all the others: an edit
    that no longer finds what it replaces would leave a second copy of the solution."""
    target = corpus.Target(course=tmp_path)
    made = {student: corpus.make(case, target) for student, case in corpus.MANIFEST.items()}
    texts = {s: m if isinstance(m, str) else json.dumps(m, sort_keys=True) for s, m in made.items()}
    by_text = {}
    for student, text in texts.items():
        by_text.setdefault(text, []).append(student)
    copies = [students for students in by_text.values() if len(students) > 1]
    assert copies == [["full-marks", corpus.build.VICTIM]], copies


@pytest.mark.parametrize("student", sorted(corpus.MANIFEST))
def test_expected_outcome(graded, student):
    expected = graded["manifest"][student]
    record = graded["records"][student]
    assert (record["score"], record["max_score"]) == (expected["score"], expected["max_score"]), (
        record
    )
    assert record["status"] == expected["status"], record
    assert expected["reason"] in record["reason"], record
    found = " | ".join(t["what"] for t in record["tamper"])
    if expected["findings"] is not None:
        for text in expected["findings"]:
            assert text in found, found
        if not expected["findings"]:
            assert not record["tamper"], found
    for finding in record["tamper"]:
        assert finding["cell"], finding


def graded_files(course: Path, student: str):
    """The regular files of the student's graded folder, and its record."""
    folder = course / "autograded" / student
    yield course / "feedback" / ".grader" / DAY / f"{student}.json"
    for parent, _, files in os.walk(folder):
        for name in files:
            path = Path(parent, name)
            if path.is_file() and not path.is_symlink():
                yield path


@pytest.mark.parametrize("student", sorted(corpus.MANIFEST))
def test_nothing_leaks_into_the_graded_folder(graded, student):
    course = graded["course"]
    folder = course / "autograded" / student
    size = 0
    for path in graded_files(course, student):
        text = path.read_bytes()
        size += len(text)
        for secret in graded["manifest"][student]["absent"]:
            assert secret.encode() not in text, f"{secret!r} leaked into {path}"
    assert size <= LARGEST_GRADED_FOLDER, f"{size >> 20} MiB in {folder}"
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent, name)
            if path.is_symlink():
                assert path.resolve().is_relative_to(folder.resolve()), (
                    f"{path} points out of the graded folder, to {os.readlink(path)}"
                )


def test_honest_students_keep_their_marks(graded):
    honest = [s for s, case in corpus.MANIFEST.items() if case.build is corpus.honest.full]
    with Gradebook(f"sqlite:///{graded['course']}/gradebook.db") as gradebook:
        scores = {s.student_id: s.score for s in gradebook.assignment_submissions(DAY)}
    assert {s: scores.get(s) for s in honest} == {s: corpus.MAX for s in honest}


def test_every_student_has_a_gradebook_row_and_the_exit_status_counts_failures(graded):
    manifest, done = graded["manifest"], graded["done"]
    with Gradebook(f"sqlite:///{graded['course']}/gradebook.db") as gradebook:
        rows = {s.student_id: s.score for s in gradebook.assignment_submissions(DAY)}
    assert rows == {student: expected["score"] for student, expected in manifest.items()}
    not_graded = sum(expected["status"] != "graded" for expected in manifest.values())
    assert done.returncode == not_graded, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert f"graded {len(manifest)} submissions" in summary
    assert f"{not_graded} failed or stopped" in summary
    assert f"{len(manifest)}/{len(manifest)} graded" in done.stderr  # the progress bar


def test_the_gradebook_holds_only_nbgraders_tables(graded):
    with sqlite3.connect(graded["course"] / "gradebook.db") as db:
        extra = db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
        ).fetchall()
    assert extra == []


def test_nothing_outside_the_scratch_folders_changed(graded):
    changes = {
        where: {
            path: (before.get(path), after.get(path))
            for path in set(before) | set(after)
            if before.get(path) != after.get(path)
        }
        if isinstance(before, dict)
        else (before, after)
        for where, (before, after) in graded["changes"].items()
    }
    assert changes == {}


def test_no_process_outlives_the_run(graded):
    assert graded["outlived"] == [], [
        Path(f"/proc/{pid}/cmdline").read_bytes() for pid in graded["outlived"]
    ]


def test_nothing_reached_the_listeners(graded):
    assert graded["received"] == []


def test_report_feedback_class_report_and_csv(graded):
    course, manifest = graded["course"], graded["manifest"]
    made = grader(
        "--course-dir", str(course), "report", DAY, "--csv", str(course / "by-exercise.csv"),
        env=graded["env"], cwd=graded["workdir"],
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    page = (course / "feedback" / "planted-axis" / f"{DAY}-checks.html").read_text()
    assert "each query&#x27;s weights must sum to 1 over the keys" in page
    assert "hidden checks, seed" in page and "6 / 9" in page
    for student in manifest:
        html = (course / "feedback" / student / f"{DAY}-checks.html").read_text()
        assert "hidden=True" not in html and "HIDDEN TESTS" not in html, student
    report = (course / "feedback" / f"{DAY}-class-report.html").read_text()
    assert "data:image/png;base64," in report and "Checks that fail most" in report
    assert "fake-grader-module" in report and "redefined check()" in report
    assert (course / "feedback" / f"{DAY}-class-report.png").stat().st_size > 1000
    with open(course / "by-exercise.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(manifest)
    assert rows["planted-axis"]["scaled_dot_product_attention"] == "0"
    assert rows["planted-axis"]["stable_softmax"] == "3"
    assert rows["missing-scale"]["total"] == "3"


def test_a_rerun_grades_only_what_is_missing(graded):
    course, manifest = graded["course"], graded["manifest"]
    (course / "feedback" / ".grader" / DAY / "untouched.json").unlink()  # as if interrupted
    again = run_grader(
        "--course-dir", str(course), "autograde", DAY, "--workers", "2", *limits(),
        env=graded["env"], cwd=graded["workdir"],
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "graded 1 submissions" in again.stdout
    assert f"{len(manifest) - 1} already graded" in again.stdout
    assert (course / "feedback" / ".grader" / DAY / "untouched.json").is_file()
