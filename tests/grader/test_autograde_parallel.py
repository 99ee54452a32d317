"""`python -m grader autograde --workers N`: the same grades as stock `nbgrader autograde`, into
the gradebook nbgrader_config.py names, with the wall-clock and memory limits applied."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import nbformat
import pytest
from nbgrader.api import Gradebook
from sqlalchemy import text

from grader.autograde import parallel, sandbox, warm
from grader.autograde.execute import LimitedExecute, limited_kernel_manager
from grader.autograde.pipeline import nbgrader
from helpers import ROOT, grader, nbgrader_cell
from tools import corpus, grading_benchmark

pytestmark = pytest.mark.slow

DAY = corpus.ASSIGNMENT


def course_with(where, students: dict, assignment=DAY, source=None):
    where.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", where)
    if source is None:
        shutil.copytree(ROOT / "solutions" / assignment, where / "solutions" / assignment)
    else:
        (where / "solutions" / assignment).mkdir(parents=True)
        nbformat.write(source, where / "solutions" / assignment / f"{assignment}.ipynb")
    for student, notebook in students.items():
        path = where / "submitted" / student / assignment / f"{assignment}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(notebook, path)
    return where


def grades(url, assignment=DAY) -> dict:
    with Gradebook(url) as gradebook:
        return {
            (s.student_id, nb.name, g.name): (g.score, g.max_score, g.needs_manual_grade)
            for s in gradebook.assignment_submissions(assignment)
            for nb in s.notebooks
            for g in nb.grades
        }


def test_grades_are_identical_to_sequential_stock_nbgrader(tmp_path):
    kinds = ["full-marks", "planted-axis", "shortcut-softmax"]
    cls = {kind: corpus.MANIFEST[kind][0]() for kind in kinds}
    stock = course_with(tmp_path / "stock", cls)
    ours = course_with(tmp_path / "ours", cls)
    nbgrader(stock, "generate_assignment", DAY, quiet=True)
    nbgrader(stock, "autograde", DAY, quiet=True)
    done = grader("--course-dir", str(ours), "autograde", DAY, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    expected = grades(f"sqlite:///{stock}/gradebook.db")
    assert grades(f"sqlite:///{ours}/gradebook.db") == expected
    assert {s for s, _, _ in expected} == set(kinds)
    # 6, and the share of stable_softmax's points that the checks it passes weigh
    planted_axis = sum(
        score for (s, _, _), (score, _, _) in expected.items() if s == "planted-axis"
    )
    assert planted_axis == pytest.approx(6.49)
    for kind in kinds:
        assert (ours / "autograded" / kind / DAY / f"{DAY}.ipynb").is_file()


def tiny_assignment():
    """Three one-point tests: one passes, one allocates past the memory cap, and one comes
    after cells that sleep past the wall-clock limit."""

    notebook = nbformat.v4.new_notebook(
        cells=[
            nbgrader_cell(
                "def twice(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                "twice",
            ),
            nbgrader_cell("assert twice(2) == 4", "test_twice", 1),
            nbgrader_cell("hog = bytearray(3 << 30)\nassert twice(3) == 6", "test_memory", 1),
            nbformat.v4.new_code_cell("import time\ntime.sleep(6)"),
            nbformat.v4.new_code_cell("time.sleep(6)"),
            nbformat.v4.new_code_cell("time.sleep(6)"),
            nbgrader_cell("assert twice(0) == 0", "test_after_sleeping", 1),
        ]
    )
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return notebook


def test_the_schema_version_read_here_is_the_one_alembic_names(tmp_path):
    """register stamps new gradebooks with schema_version (alembic's head read in this process):
    it must be what nbgrader's own child `alembic heads` says, and what a new gradebook holds."""
    from nbgrader.dbutil import _temp_alembic_ini

    alembic = os.path.join(os.path.dirname(sys.executable), "alembic")
    with _temp_alembic_ini("sqlite://") as ini:
        heads = subprocess.run([alembic, "-c", ini, "heads"], capture_output=True, text=True)
    assert heads.returncode == 0, heads.stderr
    assert heads.stdout.split()[0] == parallel.schema_version()
    notebook = tiny_assignment()
    course = course_with(tmp_path / "course", {"tim": notebook}, "tiny", source=notebook)
    parallel.register(course, "tiny")
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        stamped = gradebook.db.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert stamped == parallel.schema_version()


@pytest.mark.skipif(bool(warm.unavailable()), reason=f"no warm kernels: {warm.unavailable()}")
def test_the_warm_processes_started_ahead_serve_the_workers_and_end_with_the_run(
    tmp_path, monkeypatch
):
    """parallel.warm_ahead starts one warm process per worker before the assignment is
    registered; each worker adopts one (none starts its own), and none outlives the run."""
    started = tmp_path / "started"  # one line per warm process: who started it, its pid
    original = warm.WarmProcess.__init__

    def recorded(self):
        original(self)
        with open(started, "a") as f:
            f.write(f"{os.getpid()} {self.process.pid}\n")

    monkeypatch.setattr(warm.WarmProcess, "__init__", recorded)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbgrader_cell(
                "def one():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", "one"
            ),
            nbgrader_cell("import torch\nassert one() == 1", "test_one", 1),
        ]
    )
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    students = {name: notebook for name in ("ann", "bob", "cy", "dee")}
    course = course_with(tmp_path / "course", students, "tiny", source=notebook)
    done = parallel.autograde(course, "tiny", workers=2)
    assert [r["status"] for r in done["results"]] == ["graded"] * 4, done["results"]
    rows = [line.split() for line in started.read_text().splitlines()]
    assert len(rows) == 2 and {parent for parent, _ in rows} == {str(os.getpid())}, rows
    assert not any(os.path.exists(f"/proc/{pid}") for _, pid in rows)  # ended and reaped


def test_limits_keep_earned_points_and_grades_go_to_the_configured_db_url(tmp_path):
    notebook = tiny_assignment()
    course = course_with(tmp_path / "course", {"tim": notebook}, "tiny", source=notebook)
    elsewhere = tmp_path / "db" / "class.db"
    elsewhere.parent.mkdir()
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.CourseDirectory.db_url = 'sqlite:///{elsewhere}'\n")
    done = grader(
        "--course-dir",
        str(course),
        "autograde",
        "tiny",
        "--workers",
        "1",
        "--timeout",
        "30",
        "--wall-limit",
        "14",
        "--memory-limit",
        "2G",
    )
    assert done.returncode == 1, done.stdout + done.stderr  # one submission stopped at a limit
    assert not (course / "gradebook.db").exists()
    got = {
        name: score
        for (_, _, name), (score, _, _) in grades(f"sqlite:///{elsewhere}", "tiny").items()
    }
    assert got == {"test_twice": 1, "test_memory": 0, "test_after_sleeping": 0}
    record = json.loads((course / "feedback" / ".grader" / "tiny" / "tim.json").read_text())
    assert record["status"] == "stopped" and "wall-clock limit of 14 s" in record["reason"]
    graded = nbformat.read(course / "autograded" / "tim" / "tiny" / "tiny.ipynb", as_version=4)
    memory = next(
        c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_memory"
    )
    assert any(o.get("ename") == "MemoryError" for o in memory.outputs)
    last = graded.cells[-1]
    assert last.outputs[0]["ename"] == "NotGraded" and "wall-clock" in last.outputs[0]["evalue"]


def dying_kernel_manager(deaths: int):
    """A kernel manager whose first `deaths` kernels exit before they answer kernel_info, as
    the loser of a race for a port does."""

    class DyingKernelManager(limited_kernel_manager(0)):
        def format_kernel_cmd(self, extra_arguments=None):
            nonlocal deaths
            if deaths:
                deaths -= 1
                return [sys.executable, "-c", "raise SystemExit(1)"]
            return super().format_kernel_cmd(extra_arguments)

    return DyingKernelManager


@pytest.mark.parametrize("deaths", [1, 2])
def test_a_kernel_that_dies_at_startup_is_started_once_more(tmp_path, deaths):
    notebook = tiny_assignment()
    notebook.cells = notebook.cells[:2]  # twice() and its one-point test
    record_path = tmp_path / "record.json"
    execute = LimitedExecute(memory_limit=0, record_path=str(record_path), timeout=60)
    execute.kernel_manager_class = dying_kernel_manager(deaths)
    graded, _ = execute.preprocess(notebook, {"metadata": {"path": str(tmp_path)}})
    record = json.loads(record_path.read_text())
    test_cell = graded.cells[1]
    if deaths == 1:  # graded as if nothing had happened
        assert record["kernel_restarts"] == 1 and record["stopped"] is None, record
        assert record["cells_run"] == 2 and test_cell.outputs == []
    else:  # only once: then it is the submission's reason
        assert "before replying to kernel_info" in record["stopped"], record
        assert test_cell.outputs[0]["ename"] == "NotGraded"


# ----------------------------------------------------------------------------- only what grading needs

# The days whose teaching-only cells (benchmarks, training) run at their smallest sizes when the
# notebook is graded (course.being_graded(): NBGRADER_EXECUTION set), and a line only their full
# size prints
SHRUNK_WHEN_GRADED = {
    "day01-sdpa": "2048",  # the timing table's row at L = 2048
    "day02-masks": "1024",
    "day03-multihead": "trained 300 steps",
    "day04-kv-cache": "same tokens: True  correct answers: True",  # trained 300 steps; 16 tokens timed
    "day05-sparse": "4096",
    "day06-online-softmax": "2048",  # the peak-memory table's row at L = 2048
    "day08-linear-attention": "2048",
}


def shrinking_cell_output(course, day: str, student: str) -> str:
    """What the cells that ask course.being_graded() printed in the student's graded notebook."""
    path = course / "autograded" / student / day / f"{day}.ipynb"
    cells = [c for c in nbformat.read(path, as_version=4).cells if "being_graded()" in c.source]
    outputs = [o for cell in cells for o in cell.outputs]
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


@pytest.mark.parametrize("day", SHRUNK_WHEN_GRADED)
def test_teaching_cells_shrunk_for_grading_change_no_grade(tmp_path, monkeypatch, day):
    """The same class graded with the kernels seeing NBGRADER_EXECUTION (teaching cells at their
    smallest) and not seeing it (full sizes, as a student runs them): the same grades."""
    if sandbox.unavailable():  # only a sandbox's own environment can hide nbgrader's variable
        pytest.skip(f"no sandbox here: {sandbox.unavailable()}")
    cls = {
        kind: grading_benchmark.submission(day, kind) for kind in ("correct", "partial", "broken")
    }
    graded = course_with(tmp_path / "graded", cls, day)
    full = course_with(tmp_path / "full", cls, day)
    parallel.autograde(graded, day, 2)
    monkeypatch.setattr(
        sandbox, "KERNEL_VARIABLES", sandbox.KERNEL_VARIABLES - {"NBGRADER_EXECUTION"}
    )
    parallel.autograde(full, day, 2)

    assert grades(f"sqlite:///{graded}/gradebook.db", day) == grades(
        f"sqlite:///{full}/gradebook.db", day
    )
    # the kernels saw the variable in the first run only: the full size ran in the second only
    shrunk, whole = (shrinking_cell_output(c, day, "correct").splitlines() for c in (graded, full))
    full_size_line = SHRUNK_WHEN_GRADED[day]
    assert shrunk and not any(line.strip().startswith(full_size_line) for line in shrunk)
    assert any(line.strip().startswith(full_size_line) for line in whole)


# ----------------------------------------------------------------------------- on a Dask cluster


CLUSTER_CLASS = ["full-marks", "planted-axis", "untouched", "shortcut-softmax"]


def kill_a_busy_worker(client, killed: list) -> None:
    """Kill (SIGKILL) the process of the first worker seen grading, a few seconds into its
    submission (its kernel running); put the student it was grading in `killed`."""
    pids = client.run(os.getpid)  # worker address -> its process id
    prefix = f"grade-{DAY}-"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        busy = {w: keys for w, keys in client.processing().items() if keys}
        if busy:
            worker, keys = next(iter(busy.items()))
            time.sleep(3)
            if keys[0] in client.processing().get(worker, ()):  # still grading that one
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(keys[0][len(prefix) : -len("-12345678")])
                return
        time.sleep(0.2)


def test_a_scheduler_that_does_not_answer_is_one_clear_error():
    pytest.importorskip("distributed")
    from grader.autograde import distributed
    from grader.autograde.pipeline import GradingError

    with pytest.raises(GradingError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        distributed.connect("tcp://127.0.0.1:9", timeout="2s")


def test_on_a_dask_cluster_a_worker_killed_mid_class_costs_a_retry_never_a_row(tmp_path):
    distributed = pytest.importorskip("distributed")
    cls = {kind: corpus.MANIFEST[kind][0]() for kind in CLUSTER_CLASS}
    local = course_with(tmp_path / "local", cls)
    cluster_course = course_with(tmp_path / "cluster", cls)
    parallel.autograde(local, DAY, 2)

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        killed = []
        killer = threading.Thread(target=kill_a_busy_worker, args=(client, killed))
        killer.start()
        done = parallel.autograde(cluster_course, DAY, scheduler=cluster.scheduler_address)
        killer.join()

    assert killed and killed[0] in CLUSTER_CLASS, f"no worker was seen grading: {killed}"
    results = done["results"]
    assert sorted(r["student"] for r in results) == sorted(CLUSTER_CLASS)  # each once
    assert {r["status"] for r in results} == {"graded"}
    expected = grades(f"sqlite:///{local}/gradebook.db")
    assert grades(f"sqlite:///{cluster_course}/gradebook.db") == expected
    assert {s for s, _, _ in expected} == set(CLUSTER_CLASS)
    # the tamper record travelled back with its task: the shortcut is found on the cluster too
    shortcut = next(r for r in results if r["student"] == "shortcut-softmax")
    assert any(t["kind"] == "shortcut" for t in shortcut["tamper"])


def warm_children(pid: int) -> list:
    """The warm processes (warm.py) that process `pid` started."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, ValueError):
            continue  # not a process, or gone
        if parent == pid and b"grader.autograde.warm import serve" in command:
            found.append(int(entry))
    return found


@pytest.mark.skipif(bool(warm.unavailable()), reason=f"no warm kernels: {warm.unavailable()}")
def test_a_clusters_workers_start_their_warm_processes_before_their_first_task():
    """On a cluster, parallel.warm_ahead has every worker start its warm process as the run
    begins (distributed.start_warm_processes), not at its first kernel."""
    dask = pytest.importorskip("distributed")
    from grader.autograde import distributed

    with (
        dask.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        dask.Client(cluster) as client,
    ):
        workers = client.run(os.getpid).values()
        assert not any(warm_children(pid) for pid in workers)
        distributed.start_warm_processes(cluster.scheduler_address)
        assert all(len(warm_children(pid)) == 1 for pid in workers)
