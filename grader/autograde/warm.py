"""Warm grading kernels: forked from a process that has already imported torch, the course, the
grader and ipykernel, so that no submission pays for those imports again (about 1.5 s of the 4 s
of machine time a day01 submission costs when its kernel starts cold).

Each kernel is still a new process that no earlier submission touched (the warm process never
runs a cell), and it still runs in the sandbox sandbox.py describes, built from the same steps
(`Sandbox.mounts`). bwrap cannot build it here: bwrap starts a new program, and a new program
imports torch again. So the forked child builds it itself, with the system calls bwrap makes:

    the worker (grader side)         the warm process (one per worker)   one kernel
    fork_kernel(box, ...) ---------> fork --------------------------->  A: new user, mount, PID,
        a request on a socket pair     reaps A, sends its exit status       network and IPC
    ForkedKernel: poll, signals <--- A's pidfd + a status socket           namespaces; forks B
                                                                        B: PID 1 of its namespace:
                                                                           a new root (mounts), no
                                                                           capabilities; forks C
                                                                        C: the limits; ipykernel
Each passes signals on to its child and exits with its child's status, 128 + N when signal N
killed it, as bwrap does. Each dies with its parent, and everything the kernel started dies with
B, its PID namespace's init, as in bwrap's sandbox (where bwrap's reaper is B).

The warm process starts from a clean environment (sandbox.kernel_environment) and reads nothing of
the course, the gradebook or a submission: whatever it holds, every kernel inherits.

Linux only, on x86-64 and arm64 (pivot_root has no libc wrapper: its system call number is per
architecture); `unavailable()` says why not elsewhere, and the grader then starts kernels cold.
"""

import atexit
import contextlib
import ctypes
import functools
import importlib
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from grader.autograde import sandbox

# What the kernels import first (the setup cells of the ten days, the grader's watch, ipykernel),
# imported once, in the warm process. The course before Triton: without a GPU it sets Triton's
# interpreter mode, which Triton reads as it is imported.
WARM_IMPORTS = [
    "torch",
    "torch.nn.functional",
    "course",
    "seaborn",  # imported by the course's heatmaps at their first drawing
    "grader",
    "grader.suites",
    "ipykernel.kernelapp",
    "triton",
    "triton.language",
    "torch.nn.attention.bias",
]

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
NAMESPACES |= CLONE_NEWCGROUP

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
# statvfs's flags of a mount, and the mount flags that keep them: remounting a bind read-only in
# a user namespace must keep the flags it was locked with, or the kernel refuses (EPERM)
KEPT_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
CAPABILITY_VERSION_3 = 0x20080522
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # the system call's number
# bwrap's --dev: these device nodes of the host, and these links
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
DEVICE_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
FORWARDED = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1]
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # ipykernel's default

libc = ctypes.CDLL(None, use_errno=True)


def _checked(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _mount(source, target: str, fstype=None, flags: int = 0, data=None) -> None:
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    result = libc.mount(
        encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)
    )
    _checked(result, f"mount {source or fstype} on {target}")


def _pivot_root(new_root: str, put_old: str) -> None:
    number = PIVOT_ROOT[platform.machine()]
    _checked(libc.syscall(number, new_root.encode(), put_old.encode()), "pivot_root")


# -- the sandbox, built by the kernel's own process (B)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces() -> None:
    """A: new namespaces, with this user seen as NOBODY inside (as bwrap's --uid/--gid)."""
    uid, gid = os.getuid(), os.getgid()
    _checked(libc.unshare(NAMESPACES), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{sandbox.NOBODY} {uid} 1")
    _write("/proc/self/gid_map", f"{sandbox.NOBODY} {gid} 1")


def _make_target(path: str, like: str) -> None:
    """An empty folder or file at `path`, for a mount of `like` (a folder or not)."""
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()


def _make_read_only(target: str) -> None:
    """Remount `target` and every mount under it read-only, keeping their locked flags."""
    with open("/oldroot/proc/self/mountinfo") as f:  # the new /proc may not be there yet
        points = [line.split()[4] for line in f]
    for point in points:
        if point == target or point.startswith(target.rstrip("/") + "/"):
            kept = os.statvfs(point).f_flag
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            flags |= sum(ms for st, ms in KEPT_FLAGS.items() if kept & st)
            _mount(None, point, None, flags)


def _make_dev(target: str) -> None:
    """bwrap's --dev: a small tmpfs with the harmless device nodes of the host."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID, "mode=0755")
    for name in DEVICES:
        _make_target(f"{target}/{name}", "/oldroot/dev/null")
        _mount(f"/oldroot/dev/{name}", f"{target}/{name}", None, MS_BIND)
    for name, link in DEVICE_LINKS.items():
        os.symlink(link, f"{target}/{name}")


def _apply(kind: str, source, target: str) -> None:
    """One of `Sandbox.mounts`' steps, in the new root being built at /newroot."""
    where = "/newroot" + target
    if kind == "symlink":
        os.makedirs(os.path.dirname(where), exist_ok=True)
        os.symlink(source, where)
    elif kind == "proc":
        os.makedirs(where, exist_ok=True)
        _mount("proc", where, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif kind == "dev":
        os.makedirs(where, exist_ok=True)
        _make_dev(where)
    elif kind == "tmpfs":
        os.makedirs(where, exist_ok=True)
        _mount("tmpfs", where, "tmpfs", MS_NOSUID | MS_NODEV, f"size={source},mode=0755")
    else:  # a bind: ro-bind, ro-bind-try, bind, dev-bind-try
        original = "/oldroot" + source
        if not os.path.lexists(original):
            if kind.endswith("-try"):
                return
            raise FileNotFoundError(f"{source} does not exist")
        _make_target(where, original)
        flags = MS_BIND | MS_REC | (0 if kind.startswith("dev") else MS_NOSUID | MS_NODEV)
        _mount(original, where, None, flags)
        if kind.startswith("ro-"):
            _make_read_only(where)


def _build_root(mounts: list) -> None:
    """B: the sandbox's file system, as bwrap builds it: a tmpfs as the root, the host's tree
    reachable at /oldroot while the steps run, then only the new root."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
    base = "/tmp"  # bwrap's choice: a folder every system has
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    os.mkdir(f"{base}/newroot")
    os.mkdir(f"{base}/oldroot")
    _pivot_root(base, f"{base}/oldroot")
    os.chdir("/")
    _mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for kind, source, target in mounts:
        _apply(kind, source, target)
    os.chdir("/newroot")
    # the new root over the base; then the base, the host's tree with it, goes
    _pivot_root(".", ".")
    _checked(libc.umount2(b".", MNT_DETACH), "umount the host's tree")
    os.chdir("/")


def _drop_privileges() -> None:
    """No capabilities, none to regain: bwrap's --cap-drop ALL."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for capability in range(last + 1):
        _checked(libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0), "drop a capability")
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice 32 bits, all 0
    _checked(libc.capset(header, data), "capset")
    _checked(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _disable_user_namespaces() -> None:
    """bwrap's --disable-userns: no user namespace can be made inside (one would bring
    capabilities back, over a copy of this file system)."""
    _write("/proc/sys/user/max_user_namespaces", "0")


def _enter_sandbox(spec: dict) -> int:
    """B, PID 1 of the new namespaces: the sandbox, then the kernel as its child. B stays the
    namespace's init, as bwrap does: Linux ignores the signals init has no handler for, even
    those it sends itself (SIGXCPU at the CPU-time limit), so the kernel must not be init."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with A
    _build_root(spec["mounts"])
    _disable_user_namespaces()
    _drop_privileges()
    return 0 if spec.get("probe") else _supervise(_become_kernel, spec)


def _become_kernel(spec: dict) -> None:
    """C, the kernel: the limits, the environment, then ipykernel until it exits."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with B
    for name, (soft, hard) in spec["limits"].items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    os.environ.clear()
    os.environ.update(spec["environment"])
    _matplotlib_backend_from_environment()
    os.chdir(spec["workdir"])
    random.seed()  # a new process's random states, drawn afresh: not the warm process's
    sys.modules["torch"].seed()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", "/")]  # as ipykernel_launcher does
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=["-f", spec["connection_file"]])


def _matplotlib_backend_from_environment() -> None:
    """matplotlib read MPLBACKEND as the warm process imported it; the kernel's environment
    decides instead, as it does for a kernel started cold: its MPLBACKEND (undrawn figures, when
    graded), else ipykernel's default, the inline backend. pyplot loads it at its first figure."""
    import matplotlib

    matplotlib.rcParams["backend"] = os.environ.get("MPLBACKEND") or INLINE_BACKEND


def _supervise(child, spec: dict) -> int:
    """Fork `child(spec)`, pass signals on to it, and return its status bwrap's way: its exit
    code, or 128 + N if signal N killed it."""
    pid = os.fork()
    if pid == 0:
        _exit_after(child, spec)
    for number in FORWARDED:
        signal.signal(number, lambda n, _: os.kill(pid, n))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _run_sandboxed(spec: dict) -> int:
    """A: the namespaces, then B in them."""
    _enter_namespaces()
    return _supervise(_enter_sandbox, spec)


def _exit_after(function, *args) -> None:
    """Run `function` in a forked child, then exit: a child must never return to the loop that
    forked it (it would be a second warm process)."""
    code = 1
    try:
        code = function(*args) or 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# -- the warm process


def serve(channel_fd: int) -> None:
    """The warm process: import, say ready, then fork one kernel per request until the grader
    closes the channel."""
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    channel = socket.socket(fileno=channel_fd)
    waker, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
    status_sockets = {}  # A's pid -> the socket its exit status goes to
    try:
        channel.send(b"ready")
    except OSError:  # the grader stopped before it was needed (a run that failed to start)
        os._exit(0)
    while True:
        ready, _, _ = select.select([channel, waker], [], [])
        if waker in ready:
            os.read(waker, 4096)
            _reap(status_sockets)
        if channel not in ready:
            continue
        request = channel.recv(1 << 20)
        if not request:  # the grader is gone: its kernels die with this process (PDEATHSIG)
            shutil.rmtree(os.environ["HOME"], ignore_errors=True)
            os._exit(0)  # at once: an interpreter with torch loaded takes seconds to tear down
        ours, theirs = socket.socketpair()
        kernel = os.fork()
        if kernel == 0:
            _start_in_child(json.loads(request))
        pidfd = os.pidfd_open(kernel)  # signals through it can reach no later process
        socket.send_fds(channel, [json.dumps({"pid": kernel}).encode()], [theirs.fileno(), pidfd])
        theirs.close()
        os.close(pidfd)
        status_sockets[kernel] = ours


def _start_in_child(spec: dict) -> None:
    """A, just forked: forget the warm process's channels and handlers, then the sandbox."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the warm process
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    if "log" in spec:  # where the probe's failure is read from
        os.dup2(os.open(spec["log"], os.O_WRONLY | os.O_CREAT, 0o600), 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the channel above all: it forks kernels
    _exit_after(_run_sandboxed, spec)


def _reap(status_sockets: dict) -> None:
    while status_sockets:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        ours = status_sockets.pop(pid, None)
        if ours is not None:
            ours.send(str(os.waitstatus_to_exitcode(status)).encode())
            ours.close()


# -- the grader's side


class ForkedKernel:
    """A forked kernel (its process A), with the part of Popen's interface jupyter_client's
    LocalProvisioner uses. Its exit status comes from the warm process, its parent."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, status_socket: socket.socket, pidfd: int):
        self.pid = pid
        self.returncode = None
        self._status = status_socket
        self._pidfd = pidfd

    def poll(self):
        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if not select.select([self._status], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            self._read_status()
        return self.returncode

    def _read_status(self):
        text = self._status.recv(32)
        # no status: the warm process died, and its kernels with it (SIGKILL, PDEATHSIG)
        self.returncode = int(text) if text else -signal.SIGKILL
        self._status.close()
        os.close(self._pidfd)

    def send_signal(self, number: int):
        """Signal A, which passes the signal on to the kernel. After SIGKILL, wait for the
        status: it comes within milliseconds, and jupyter_client polls every 100 ms."""
        if self.poll() is None:
            signal.pidfd_send_signal(self._pidfd, number)
            if number == signal.SIGKILL:
                with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel
                    self.wait(timeout=5)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)


class WarmProcess:
    """A warm process, and the channel its kernels are asked for on. It starts importing at
    once; the first `fork` waits until it is ready."""

    def __init__(self):
        self._lock = threading.Lock()
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.home = tempfile.mkdtemp(prefix="warm-kernels-")  # its caches, if any; removed by it
        environment = {**sandbox.kernel_environment(), "HOME": self.home, "TMPDIR": self.home}
        serve_it = f"from grader.autograde.warm import serve; serve({theirs.fileno()})"
        self.process = subprocess.Popen(
            [sys.executable, "-c", serve_it],
            pass_fds=[theirs.fileno()],
            env=environment,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        # whether it has exited, from any process: a worker forked after it was started (see
        # `adopt`) is not its parent, and cannot wait for it
        self._pidfd = os.pidfd_open(self.process.pid)
        self._ready = False

    def alive(self) -> bool:
        return not select.select([self._pidfd], [], [], 0)[0]

    def fork(self, spec: dict) -> ForkedKernel:
        with self._lock:
            if not self._ready:
                if self.channel.recv(16) != b"ready":
                    raise RuntimeError("the warm kernel process exited as it started")
                self._ready = True
            self.channel.send(json.dumps(spec).encode())
            message, fds, _, _ = socket.recv_fds(self.channel, 4096, 2)
        if not message:
            raise RuntimeError("the warm kernel process is gone")
        status, pidfd = fds
        return ForkedKernel(json.loads(message)["pid"], socket.socket(fileno=status), pidfd)

    def hand_over(self) -> None:
        """Forget it here, where a worker forked since holds it: once that worker closes the
        channel, the warm process ends (reap it with `close`)."""
        self.channel.close()

    def close(self):
        """Close the channel; where it was started, wait for it to end. (Where it was adopted,
        wait returns at once: it is not this process's child.)"""
        self.channel.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._pidfd)
        shutil.rmtree(self.home, ignore_errors=True)


_warm = {}  # this process's pid -> its warm process (a forked worker starts its own)


def warm_process() -> WarmProcess:
    current = _warm.get(os.getpid())
    if current is None or not current.alive():
        current = _warm[os.getpid()] = WarmProcess()
        atexit.register(current.close)
    return current


def adopt(process: WarmProcess, others: list) -> None:
    """In a worker just forked: `process` is its warm process, started by its parent ahead of
    need; the others' channels are the other workers' (closed here, so that each warm process
    ends with its own worker)."""
    for other in others:
        if other is not process:
            other.channel.close()
    _warm[os.getpid()] = process
    atexit.register(process.close)


def _resolved(kind: str, source, target: str) -> tuple:
    """A bind's source with its symlinks resolved here, on the host (/etc/localtime links to
    /usr/share/zoneinfo/...): inside, the host's tree is only reachable under /oldroot."""
    binds = kind.endswith("bind") or kind.endswith("bind-try")
    return (kind, os.path.realpath(source) if binds else source, target)


def kernel_spec(box: "sandbox.Sandbox", connection_file: str, limits: dict) -> dict:
    """What the warm process needs to fork a kernel into `box`, talking over the unix sockets of
    `connection_file`, under `limits` (sandbox.rlimits)."""
    return {
        "mounts": [_resolved(*step) for step in box.mounts()],
        "limits": limits,
        "environment": sandbox.kernel_environment(),
        "workdir": box.workdir,
        "connection_file": connection_file,
    }


def fork_kernel(box: "sandbox.Sandbox", connection_file: str, limits: dict) -> ForkedKernel:
    """A kernel forked warm from this worker's warm process (see `kernel_spec`)."""
    return warm_process().fork(kernel_spec(box, connection_file, limits))


@functools.cache
def unavailable() -> str:
    """Why kernels cannot start warm here ('' if they can): no sandbox at all, a system other
    than Linux on x86-64 or arm64, or one that refuses a step bwrap takes (found by building one
    sandbox from the warm process, once per process, and reading why it failed). Where they
    cannot, the grader starts each kernel cold, with bwrap."""
    why = sandbox.unavailable()
    if why:
        return why
    if platform.machine() not in PIVOT_ROOT or not sys.platform.startswith("linux"):
        return f"warm kernels need Linux on {' or '.join(PIVOT_ROOT)}"
    with tempfile.TemporaryDirectory() as workdir, sandbox.Sandbox(workdir) as box:
        log = os.path.join(box.folder, "probe.log")
        spec = {**kernel_spec(box, "", {}), "probe": True, "log": log}
        try:
            status = warm_process().fork(spec).wait(timeout=30)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
            return f"the warm kernel process failed: {error}"
        if status != 0:
            lines = Path(log).read_text().strip().splitlines() if os.path.exists(log) else []
            return f"a warm kernel cannot build its sandbox here ({(lines or [status])[-1]})"
    return ""
