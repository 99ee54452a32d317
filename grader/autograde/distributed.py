"""A class graded on a Dask distributed cluster: `parallel.autograde(..., scheduler=ADDRESS)`.

The grading is the local pool's (parallel.grade_one: nbgrader's autograde with the limits, the
sandbox and the tamper watch); only where it runs changes: on the workers of an existing Dask
scheduler, whether on one machine (`dask scheduler`, then `dask worker ADDRESS --nthreads 1`), a
SLURM allocation (dask-jobqueue's SLURMCluster) or Kubernetes (dask-kubernetes). What holds:

- the parent is the only writer of the gradebook: a task returns its result (grades, comments,
  notes, tamper findings, verdicts, timings) and the parent records it as it arrives;
- each task carries its limits (a parallel.Limits) and brings back its tamper record;
- a worker lost mid-task (killed, out of memory, its node gone) costs a retry: the scheduler
  gives the task to another worker (Dask's `distributed.scheduler.allowed-failures`, 3 by
  default), which grades the submission afresh in a clean copy. A submission that kills every
  worker it lands on is recorded as failed, with the reason. Each submission is one task and
  the parent records each task's one result: no row is lost, none written twice.

Unlike the local pool, the parent cannot kill a task stuck outside its kernel (Dask does not
stop a running task): a submission is bounded by its limits inside LimitedExecute only.

What the workers need: the course folder and the parent's temporary folder ($TMPDIR) at the
same paths as the parent (a shared filesystem, as SLURM clusters have), this Python environment,
bubblewrap where kernels are sandboxed, and one thread each (`--nthreads 1`: grading a
submission sets the worker's temporary folder, where its kernel's sandbox lives).
"""

import tempfile
import traceback
import uuid
from pathlib import Path

from grader.autograde import parallel
from grader.autograde.gradebook import record
from grader.autograde.pipeline import GradingError


def grade_task(root, template, assignment, student, sources, limits, scratch) -> dict:
    """Grade one submission on a Dask worker: parallel.grade_one, in the shared scratch folder,
    with this worker's sandboxes in it too (a unix socket's path must stay short)."""
    parallel.scripts_on_path()
    folder = Path(scratch) / "cluster"
    folder.mkdir(exist_ok=True)
    tempfile.tempdir = str(folder)
    try:
        return parallel.grade_one(root, template, assignment, student, sources, limits, folder)
    except Exception:
        why = traceback.format_exc().strip().splitlines()[-1]
        return parallel.unfinished(student, "failed", f"the grader failed: {why}")
    finally:
        tempfile.tempdir = None


def lost(student: str, error: BaseException) -> dict:
    """The result of a task the cluster could not finish: its workers died, or it was lost."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        reason = "every grading worker it was given to died (the cluster gave up retrying)"
    else:
        reason = f"the cluster lost it: {type(error).__name__}: {error}"
    return parallel.unfinished(student, "failed", reason)


def connect(address: str, timeout: str = "20s"):
    """A Dask Client of the scheduler at `address`, or a GradingError that says what is missing."""
    try:
        from distributed import Client
    except ImportError:
        raise GradingError(
            "--scheduler needs Dask distributed: pip install 'attention-from-scratch[cluster]'."
        ) from None
    try:
        return Client(address, timeout=timeout)
    except (OSError, ValueError) as error:  # refused, timed out, or not an address
        raise GradingError(f"no Dask scheduler answers at {address}: {error}") from None


def start_warm_processes(address: str) -> None:
    """Have each worker of the cluster start its warm process (warm.py) now: it imports torch
    while the parent registers the assignment, and the first task on the worker forks at once.
    A worker that joins later starts its own with its first task."""
    with connect(address) as client:
        client.run(_start_warm_process)


def _start_warm_process() -> None:
    from grader.autograde import warm

    warm.warm_process()


def run_cluster(
    address, root, template, assignment, sources, limits, scratch, todo, url, cid, stream
) -> list:
    """Grade `todo` on the Dask scheduler at `address`; record each result as it arrives."""
    from distributed import as_completed

    progress = parallel.progress_bar(len(todo), stream)
    results = []
    run = uuid.uuid4().hex[:8]  # a rerun's tasks are new tasks, not the last run's results
    with connect(address) as client:
        [shared] = client.scatter([sources], broadcast=True)  # sent once, not once per task
        tasks = {
            client.submit(
                grade_task,
                root,
                template,
                assignment,
                student,
                shared,
                limits,
                scratch,
                key=f"grade-{assignment}-{student}-{run}",
                pure=False,
            ): student
            for student in todo
        }
        try:
            for task in as_completed(tasks):
                try:
                    result = task.result()
                except Exception as error:
                    result = lost(tasks[task], error)
                results.append(record(root, assignment, result, url, cid))
                parallel.advance(progress, results)
        finally:
            client.cancel(list(tasks))
            progress.close()
    return results
