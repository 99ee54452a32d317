"""Stopping the class: signals to the grader and to the kernels graded beside it, daemons meant
to outlive the run, and files in its own folder that a careless copy of the folder would choke
on (a symlink loop), follow out of it (a symlink to the solutions, the instructor's keys) or
multiply (hard links). Each deserves its own full marks; the class must be graded as if it were
not there.

The processes are found by what ties them to this class, never by a broad name: the grader by
its course folder on its command line, the kernels beside it by a working folder in the same
scratch folder as the attack's own."""

from tools.corpus.build import SCRATCH, SECRET, SOLUTION, Case, steps

PROCESSES = """
import signal, time


def processes(wanted):
    \"\"\"The pids of the other processes whose command line and working folder `wanted`
    accepts.\"\"\"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        try:
            folder = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            folder = ""
        if int(pid) != os.getpid() and wanted(command, folder):
            found.append(int(pid))
    return found


def signal_all(pids, number):
    for pid in pids:
        attempt(f"send signal {number} to {pid}", lambda: os.kill(pid, number))
"""


def grader(target, number: str):
    """Send `number` to the grader: its parent process, and every process whose command line
    holds the course folder (the grader and its workers)."""
    course = str(target.course)
    return steps(
        target,
        PROCESSES
        + f"signal_all([os.getppid(), *processes(lambda command, _: {course!r} in command)], "
        f"{number})",
    )


# For 6 s, `number` to every process working in the scratch folder but this one.
SIGNAL_SIBLINGS = """
hit = set()
deadline = time.monotonic() + 6
while scratch and time.monotonic() < deadline:
    found = processes(lambda _, folder: folder.startswith(scratch + "/"))
    signal_all([pid for pid in found if pid not in hit], {number})
    hit.update(found)
    time.sleep(0.2)
print("signalled:", sorted(hit))
"""


def siblings(target, number: str):
    """Send `number`, for 6 s, to every kernel whose working folder is in the same scratch
    folder: the kernels graded beside this one."""
    return steps(target, PROCESSES + SCRATCH + SIGNAL_SIBLINGS.format(number=number))


# A daemon: deaf to the signals a session's end or a polite stop sends; its command line holds
# the token, so a test finds it.
DAEMON = (
    "import signal, time\n"
    "for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
    "    signal.signal(number, signal.SIG_IGN)\n"
    "time.sleep(600)"
)


def daemons(target):
    # one in a session of its own, one by a double fork (its parent gone: adopted by PID 1)
    return steps(
        target,
        "import subprocess, sys\n\n"
        f"DAEMON = [sys.executable, '-c', {DAEMON!r}, TOKEN]\n\n\n"
        "def double_fork():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            os.execv(sys.executable, DAEMON)\n"
        "        os._exit(0)\n"
        "    os.waitpid(child, 0)\n\n\n"
        "attempt('start a daemon in a session of its own', lambda: subprocess.Popen(\n"
        "    DAEMON, start_new_session=True, stdin=subprocess.DEVNULL,\n"
        "    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))\n"
        "attempt('start a daemon by a double fork', double_fork)",
    )


def symlink_loop(target):
    return steps(
        target,
        "attempt('a link to itself', lambda: os.symlink('loop', 'loop'))\n"
        "attempt('a link to its own folder', lambda: os.symlink('.', 'again'))",
    )


def symlinks_out(target):
    links = {
        "answers": target.course / "solutions",
        "keys": target.home / ".ssh",
        "gradebook.db": target.course / "gradebook.db",
    }
    return steps(
        target,
        "".join(
            f"attempt('link {name} to {path}', lambda: os.symlink({str(path)!r}, {name!r}))\n"
            for name, path in links.items()
        ),
    )


def kill_grader(target):
    return grader(target, "signal.SIGKILL")


def stop_grader(target):
    return grader(target, "signal.SIGSTOP")


def kill_siblings(target):
    return siblings(target, "signal.SIGKILL")


def stop_siblings(target):
    return siblings(target, "signal.SIGSTOP")


CASES = {
    "kill-grader": Case(kill_grader, "SIGKILLs its parent and the grader's processes", 9),
    "stop-grader": Case(stop_grader, "SIGSTOPs its parent and the grader's processes", 9),
    "kill-siblings": Case(kill_siblings, "SIGKILLs the kernels graded beside it, for 6 s", 9),
    "stop-siblings": Case(stop_siblings, "SIGSTOPs the kernels graded beside it, for 6 s", 9),
    "daemons": Case(daemons, "starts two daemons deaf to SIGTERM: setsid, and a double fork", 9),
    "symlink-loop": Case(
        symlink_loop,
        "a symlink loop in its folder",
        0,  # nbgrader cannot save the graded folder: it costs only this submission, with why
        status="failed",
        reason="Too many levels of symbolic links",
    ),
    "symlinks-out": Case(
        symlinks_out,
        "links in its folder to the solutions, the instructor's keys and the gradebook",
        9,
        absent=(SECRET, SOLUTION),
    ),
}
