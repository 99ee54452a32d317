"""Each grading kernel runs in a bubblewrap sandbox (grader/autograde/sandbox.py): what a graded
cell tries against the grader, the course and the machine fails there, what it starts dies with
it, an honest answer still gets its points, and a resource limit stops a submission with the
reason. Real kernels; skipped, saying why, where bwrap cannot start a sandbox.

Kernels start warm by default (warm.py: forked from a process that has imported torch, the course
and the grader, building the same sandbox itself), cold with bwrap otherwise: what a sandbox
refuses is tested both ways; the tests at the end are warm kernels' own."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client.connect import write_connection_file
from nbgrader.api import Gradebook

from grader.autograde import parallel, pipeline, sandbox, warm
from grader.autograde.execute import LimitedExecute
from helpers import ROOT, nbgrader_cell

pytestmark = pytest.mark.slow
needs_bwrap = pytest.mark.skipif(
    bool(sandbox.unavailable()), reason=f"no sandbox here: {sandbox.unavailable()}"
)
needs_warm = pytest.mark.skipif(
    bool(warm.unavailable()), reason=f"no warm kernels here: {warm.unavailable()}"
)

# The first cell of every notebook here: what the cells after it call.
SETUP = '''\
import os, socket, subprocess

def refused(action):
    """True if `action` fails with an OSError: the sandbox said no."""
    try:
        action()
    except OSError:
        return True
    return False
'''


@pytest.fixture(params=[True, False], ids=["warm", "cold"])
def warm_kernels(request):
    """Each test twice: kernels forked warm (warm.py, the default) and started cold (bwrap)."""
    if request.param and warm.unavailable():
        pytest.skip(f"no warm kernels here: {warm.unavailable()}")
    return request.param


def notebook(cells: list):
    nb = nbformat.v4.new_notebook(cells=[nbgrader_cell(SETUP, "setup"), *cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def escapes(course: Path, port: int, token: str) -> dict:
    """grade id -> a test cell's assertion that one way out of the sandbox is closed."""
    return {
        "read_solutions": f"assert refused(lambda: open({str(course / 'solutions')!r} + "
        "'/escape/escape.ipynb').read())",
        "write_gradebook": f"assert refused(lambda: open({str(course / 'gradebook.db')!r}, 'ab'))",
        "write_config": f"assert refused(lambda: open({str(course / 'nbgrader_config.py')!r}, 'a'))",
        "write_grader": f"assert refused(lambda: open({str(ROOT / 'grader' / '__init__.py')!r}, 'a'))",
        "network": f"assert refused(lambda: socket.create_connection(('127.0.0.1', {port}), 5))",
        # the test's process started the grader: in the sandbox's PID namespace it does not exist
        "signal_the_grader": f"assert refused(lambda: os.kill({os.getpid()}, 0))",
        # a daemon: its own session, so the kernel's process group does not hold it
        "daemon": f"daemon = subprocess.Popen(['sleep', '{token}'], start_new_session=True)\n"
        "assert daemon.poll() is None",
        "own_folder_and_tmp": "open('written.txt', 'w').write('ok')\n"
        f"open('/tmp/{token}.txt', 'w').write('ok')\n"
        f"assert open('written.txt').read() == open('/tmp/{token}.txt').read() == 'ok'",
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


@needs_bwrap
def test_a_graded_cell_reaches_nothing_outside_its_sandbox(tmp_path, warm_kernels):
    listener = socket.create_server(("127.0.0.1", 0))  # reachable from outside the sandbox
    port = listener.getsockname()[1]
    token = f"1000.{uuid.uuid4().int % 10**9}"  # `sleep 1000.123456789`, findable in /proc
    course = tmp_path / "course"
    checks = escapes(course, port, token)
    honest = nbgrader_cell(
        "def twice(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "twice"
    )
    source = notebook(
        [honest, nbgrader_cell("assert twice(2) == 4", "test_twice", 1)]
        + [nbgrader_cell(assertion, grade_id, 1) for grade_id, assertion in checks.items()]
    )
    (course / "solutions" / "escape").mkdir(parents=True)
    nbformat.write(source, course / "solutions" / "escape" / "escape.ipynb")
    shutil.copy(ROOT / "nbgrader_config.py", course)
    submitted = course / "submitted" / "alice" / "escape" / "escape.ipynb"
    submitted.parent.mkdir(parents=True)
    nbformat.write(source, submitted)
    config_before = (course / "nbgrader_config.py").read_text()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "grader", "--course-dir", str(course)]
            + ["autograde", "escape", "--workers", "1", "--timeout", "60"]
            + ([] if warm_kernels else ["--cold-kernels"]),
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=300,
        )
    finally:
        listener.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WITHOUT a sandbox" not in done.stderr
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission("escape", "alice")
        scores = {g.name: g.score for nb in submission.notebooks for g in nb.grades}
    assert scores == {"test_twice": 1, **{grade_id: 1 for grade_id in checks}}, scores
    assert (course / "nbgrader_config.py").read_text() == config_before
    graded = course / "autograded" / "alice" / "escape"
    assert (graded / "written.txt").read_text() == "ok"  # its own folder: written, kept
    assert not (Path("/tmp") / f"{token}.txt").exists()  # its /tmp: private, gone
    assert not running(token), "the daemon outlived its kernel"


def execute(tmp_path, cells: list, warm_kernels=True, **limits):
    """Run a notebook of `cells` through LimitedExecute in a sandbox: (its cells, the record)."""
    record_path = tmp_path / "record.json"
    workdir = tmp_path / "work"
    workdir.mkdir()
    limits = {"timeout": 60, **limits}
    run = LimitedExecute(
        sandbox=True, warm_kernels=warm_kernels, record_path=str(record_path), **limits
    )
    graded, _ = run.preprocess(notebook(cells), {"metadata": {"path": str(workdir)}})
    return {c.metadata["nbgrader"]["grade_id"]: c for c in graded.cells}, json.loads(
        record_path.read_text()
    )


def errors(cell) -> list:
    return [f"{o['ename']}: {o['evalue']}" for o in cell.outputs if o["output_type"] == "error"]


@needs_bwrap
def test_file_size_and_output_limits(tmp_path, warm_kernels):
    cells, record = execute(
        tmp_path,
        [
            nbgrader_cell(
                "assert refused(lambda: open('big', 'wb').write(bytes(2 << 20)))", "big_file", 1
            ),
            nbgrader_cell("print('x' * 200_000)", "chatty"),
            nbgrader_cell("assert True", "after_the_limit", 1),
        ],
        warm_kernels=warm_kernels,
        file_size_limit=1 << 20,
        output_limit=100_000,
    )
    assert errors(cells["big_file"]) == []
    assert "outputs passed the limit of 100000 bytes in cell chatty" in record["stopped"], record
    assert errors(cells["after_the_limit"])[0].startswith("NotGraded")


@needs_bwrap
def test_the_per_cell_timeout_interrupts_the_kernel_not_its_sandbox(tmp_path, warm_kernels):
    # jupyter_client interrupts with SIGINT to the kernel's process group, bwrap included
    cells, record = execute(
        tmp_path,
        [nbgrader_cell("while True:\n    pass", "spin"), nbgrader_cell("assert True", "after", 1)],
        warm_kernels=warm_kernels,
        timeout=3,
    )
    assert "ran longer than the per-cell timeout of 3 s" in record["stopped"], record
    assert any("KeyboardInterrupt" in error for error in errors(cells["spin"])), cells["spin"]


@needs_bwrap
def test_the_cpu_time_limit_stops_the_submission_with_its_reason(tmp_path, warm_kernels):
    # 8 s: importing torch and the grader (the tamper watch's snapshot) takes a few of them
    cells, record = execute(
        tmp_path,
        [nbgrader_cell("while True:\n    pass", "spin"), nbgrader_cell("assert True", "after", 1)],
        warm_kernels=warm_kernels,
        cpu_limit=8,
    )
    assert "killed by SIGXCPU (the CPU-time limit of 8 s)" in record["stopped"], record
    assert errors(cells["after"])[0].startswith("NotGraded")


@needs_bwrap
@pytest.mark.skipif(os.getuid() == 0, reason="Linux does not enforce RLIMIT_NPROC for root")
def test_a_fork_bomb_hits_the_tasks_limit(tmp_path, warm_kernels):
    bomb = (
        "import threading, time\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "except RuntimeError as error:\n"
        "    stopped = str(error)\n"
        "assert 'thread' in stopped"
    )
    cells, record = execute(
        tmp_path, [nbgrader_cell(bomb, "bomb", 1)], warm_kernels=warm_kernels, tasks_limit=128
    )
    assert errors(cells["bomb"]) == [], record


# Secrets of the kind a grader's environment holds; each is set in the grader's environment
# and must not reach a kernel, not even through /proc/1/environ (bwrap's own, PID 1 there).
SECRETS = {
    "GRADER_DB_URL": "postgresql://grader:hunter2-{token}@db.example/class",
    "GITHUB_TOKEN": "ghp_{token}",
    "AWS_SECRET_ACCESS_KEY": "aws-{token}",
    "PYTHON_KEYRING_PASSWORD": "keyring-{token}",  # a PYTHON* name is not allowed by its prefix
}


def test_the_kernel_environment_keeps_only_what_a_kernel_needs():
    grader_environment = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_NUMERIC": "C",
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": "/course",
        "JPY_SESSION_NAME": "day01",
        "HOME": "/home/instructor",
        "TMPDIR": "/var/tmp/grader",
        **{name: value.format(token="x") for name, value in SECRETS.items()},
    }
    kept = sandbox.kernel_environment(grader_environment)
    assert kept == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_NUMERIC": "C",
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": "/course",
        "JPY_SESSION_NAME": "day01",
        "HOME": "/tmp",  # the sandbox's own, not the instructor's
        "TMPDIR": "/tmp",
        "JPY_PARENT_PID": "1",
    }


@needs_bwrap
def test_no_secret_of_the_graders_environment_reaches_a_kernel(tmp_path, monkeypatch, warm_kernels):
    token = uuid.uuid4().hex
    secrets = {name: value.format(token=token) for name, value in SECRETS.items()}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LC_MESSAGES", "C.UTF-8")
    leaks = (
        f"leaks = [name for name in os.environ if name in {sorted(secrets)!r}]\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):  # PID 1 is bwrap\n"
        "    try:\n"
        "        environ = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        f"    if {token!r}.encode() in environ:\n"
        "        leaks.append(f'/proc/{pid}/environ')\n"
        "assert leaks == [], leaks"
    )
    needed = (
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == '/tmp'\n"
        "assert os.environ['TRITON_INTERPRET'] == '1'\n"
        "assert os.environ['LC_MESSAGES'] == 'C.UTF-8'\n"
        f"assert os.environ['PATH'] == {os.environ['PATH']!r}"
    )
    cells, record = execute(
        tmp_path,
        [nbgrader_cell(leaks, "no_secrets", 1), nbgrader_cell(needed, "needed", 1)],
        warm_kernels=warm_kernels,
    )
    assert record["stopped"] is None, record
    assert errors(cells["no_secrets"]) == []
    assert errors(cells["needed"]) == []


def in_sandbox(tmp_path, code: str, **options) -> subprocess.CompletedProcess:
    """`python -c code`, run in a sandbox (Sandbox's `options`) whose working folder is tmp_path."""
    with sandbox.Sandbox(tmp_path, **options) as box:
        command = box.command([sys.executable, "-c", code])
        return subprocess.run(command, capture_output=True, text=True, timeout=60)


@needs_bwrap
def test_tmp_and_shared_memory_are_small_and_private(tmp_path):
    # 4 MiB of /tmp: 8 MiB does not fit; /dev/shm holds SHM_SIZE bytes, not half the memory
    fill = (
        "import errno, os\n"
        "def fill(path, size):\n"
        "    try:\n"
        "        with open(path, 'wb') as f:\n"
        "            f.write(bytes(size))\n"
        "    except OSError as error:\n"
        "        os.remove(path)  # what did fit: the next file gets the room back\n"
        "        return errno.errorcode[error.errno]\n"
        "    return 'written'\n"
        "print(fill('/tmp/big', 8 << 20), fill('/tmp/small', 1 << 20), "
        f"fill('/dev/shm/big', {2 * sandbox.SHM_SIZE}))"
    )
    done = in_sandbox(tmp_path, fill, tmp_size=4 << 20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ENOSPC", "written", "ENOSPC"]
    assert os.listdir(tmp_path) == []  # neither was the working folder


def test_without_bwrap_the_grader_warns_once_or_refuses(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "unavailable", lambda: "bwrap is not installed")
    limits = parallel.Limits()
    assert capsys.readouterr().err == ""  # building limits probes nothing: a run decides
    assert limits.settled().sandbox == "off"
    assert "warning: grading WITHOUT a sandbox: bwrap is not installed" in capsys.readouterr().err
    with pytest.raises(pipeline.GradingError, match="no sandbox for the grading kernels"):
        parallel.Limits(sandbox="required").settled()
    assert parallel.Limits(sandbox="off").settled().sandbox == "off"
    assert capsys.readouterr().err == ""  # "off" says nothing: it was asked for
    with pytest.raises(pipeline.GradingError, match="sandbox must be 'auto', 'required' or 'off'"):
        parallel.Limits(sandbox="on").settled()
    # a run decides as it starts, before it locks or opens anything of the course
    required = parallel.Limits(sandbox="required")
    with pytest.raises(pipeline.GradingError, match="no sandbox for the grading kernels"):
        parallel.autograde(ROOT, "day01-sdpa", 1, limits=required)


# -- warm kernels' own


@needs_warm
def test_each_submission_gets_a_process_no_earlier_one_touched(tmp_path):
    # its random states as a new process's: drawn afresh, not the warm process's
    draw = "open('draw.txt', 'w').write(f'{random.random()} {torch.initial_seed()}')"
    poison = (
        "import random, torch, grader\n"
        "torch.poisoned = grader.poisoned = True\n"
        "torch.manual_seed(1); random.seed(1)\n" + draw
    )
    clean = (
        "import random, torch, grader\n"
        "assert not hasattr(torch, 'poisoned') and not hasattr(grader, 'poisoned')\n" + draw
    )
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    _, record = execute(first, [nbgrader_cell(poison, "poison", 1)])
    assert record["stopped"] is None, record
    cells, record = execute(second, [nbgrader_cell(clean, "clean", 1)])
    assert errors(cells["clean"]) == [], cells["clean"]
    draws = [(folder / "work" / "draw.txt").read_text() for folder in (first, second)]
    assert all(a != b for a, b in zip(*(d.split() for d in draws))), draws


@needs_warm
def test_a_kernel_cannot_reach_the_warm_process(tmp_path):
    reach = (
        "import os, socket\n"
        "assert os.getppid() == 1  # its sandbox's init: the warm process is not in its PID space\n"
        "seen = {int(p) for p in os.listdir('/proc') if p.isdigit()}\n"
        "assert seen == {1, os.getpid()}, seen  # its init and itself: nothing of the grader's\n"
        "kinds = []\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n"
        "        kinds.append(socket.socket(fileno=os.dup(fd)).type)\n"
        "    except OSError:\n"
        "        pass  # not a socket\n"
        "assert socket.SOCK_SEQPACKET not in kinds, 'the warm process channel is open'"
    )
    cells, record = execute(tmp_path, [nbgrader_cell(reach, "reach", 1)])
    assert record["stopped"] is None, record
    assert errors(cells["reach"]) == [], cells["reach"]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return True


@needs_warm
def test_no_kernel_outlives_its_warm_process(tmp_path):
    process = warm.WarmProcess()  # not this test process's shared one: it is killed below
    try:
        with sandbox.Sandbox(tmp_path) as box:
            write_connection_file(box.connection_file, transport="ipc", ip=box.connection_file)
            kernel = process.fork(warm.kernel_spec(box, box.connection_file, sandbox.rlimits()))
            time.sleep(1)
            assert kernel.poll() is None  # a kernel, waiting for its grader
            process.process.send_signal(signal.SIGKILL)
            kernel.wait(timeout=10)
            deadline = time.monotonic() + 10
            while not gone(kernel.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gone(kernel.pid)
    finally:
        process.close()
    assert not os.path.exists(process.home)


@needs_warm
def test_the_warm_process_holds_none_of_the_graders_secrets(monkeypatch):
    token = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("GRADER_DB_URL", f"postgresql://grader:{token}@db/class")
    process = warm.WarmProcess()
    try:
        with open(f"/proc/{process.process.pid}/environ", "rb") as f:
            assert token.encode() not in f.read()
    finally:
        process.close()


@needs_warm
def test_a_warm_process_lost_between_submissions_costs_none_of_them(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    cells, _ = execute(first, [nbgrader_cell("assert True", "before", 1)])
    assert errors(cells["before"]) == []
    lost = warm.warm_process()
    lost.process.kill()  # out of memory, say
    lost.process.wait()
    cells, record = execute(second, [nbgrader_cell("import torch\nassert True", "after", 1)])
    assert record["stopped"] is None, record
    assert errors(cells["after"]) == []
    assert warm.warm_process() is not lost
