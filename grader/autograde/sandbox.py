"""A sandbox for each grading kernel, with bubblewrap (bwrap), and the resource limits it starts
under. Unprivileged: bwrap needs user namespaces, not root.

What a sandboxed kernel sees and can do:
- its own PID namespace, with bwrap's reaper as PID 1: it cannot signal the grader or anything
  outside, and when the kernel's sandbox ends (it exits, or the grader kills it or dies: bwrap's
  --die-with-parent) the kernel kills everything started inside it, daemons included;
- no network: its own network namespace holds only a loopback interface. Jupyter's default
  transport, TCP on localhost, cannot cross into it, so the kernel talks over unix sockets (the
  IPC transport) in a folder bound into the sandbox: a socket file works across namespaces;
- a read-only view of the system (/usr, the /etc files libraries read, /sys, a fresh /proc and
  /dev, the GPUs' device files) and of the Python environment (the virtual environment, the
  interpreter it was made from, and the `course` and `grader` packages);
- one writable folder, its working folder (the submission's autograded/STUDENT/ASSIGNMENT/, where
  nbgrader put the submission's files), and a private /tmp that is also its $HOME: a tmpfs of
  `tmp_size` bytes, as is /dev/shm (of SHM_SIZE), so neither can fill the grader's disk or memory;
- nothing else of the course: not solutions/, the gradebook, other submissions, nbgrader_config.py,
  the grader's records, nor the instructor's home;
- none of the grader's environment variables but those a kernel needs (`kernel_environment`): a
  database URL with its password or an API token in the grader's environment stays there.

Resource limits are set by a small launcher inside the sandbox, just before it becomes the kernel
(`limits_command`): setrlimit works unprivileged, and RLIMIT_NPROC must be set inside the
sandbox's user namespace to count only the sandbox's processes (see `limits_command`).
"""

import functools
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

# The system's folders, read-only; those that are symlinks into /usr (a merged /usr: Debian 12,
# Ubuntu) are the same symlinks in the sandbox.
SYSTEM = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
# The /etc files libraries read (the dynamic loader, user and time-zone lookups, certificates,
# fonts, `alternatives` for /usr/bin/cc and friends); not all of /etc, which holds the machine's
# secrets (/etc/shadow is readable by a kernel of a grader that runs as root).
ETC = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "localtime",
    "timezone",
    "os-release",
    "ssl",
    "ca-certificates",
    "fonts",
    "mime.types",
]
PACKAGES = ["course", "grader"]  # what a notebook imports from the course folder
NOBODY = 65534  # the kernel's user and group inside the sandbox: it is not root there
TMP_SIZE = 512 << 20  # bytes of the private /tmp (and $HOME): caches of matplotlib, Triton, torch
SHM_SIZE = 64 << 20  # bytes of /dev/shm (left alone, --dev's is half the machine's memory)

# The grader's environment variables a kernel gets, by name or by prefix (`kernel_environment`):
# where to find programs and the interpreter's settings, the locale, the threads and devices to
# use, Triton's interpreter switch (course/device.py), and nbgrader's NBGRADER_EXECUTION, which
# tells a notebook it is being graded (its teaching-only cells then run at their smallest sizes).
# Nothing else: a grader's environment may hold secrets (a database URL with its password, an API
# token, cloud credentials).
KERNEL_VARIABLES = {
    "NBGRADER_EXECUTION",
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONWARNINGS",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "VIRTUAL_ENV",
    "MPLBACKEND",
    "TRITON_INTERPRET",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
}
KERNEL_PREFIXES = ("LC_", "JPY_")  # the locale's categories; Jupyter's own kernel settings
UNDRAWN_FIGURES = "module://grader.autograde.undrawn_figures"  # matplotlib's backend when graded

# Set inside the sandbox: the resource limits, then the kernel. SIGINT back to its default (the
# sandbox is started with it ignored, see `Sandbox.command`), so Python raises KeyboardInterrupt.
LAUNCHER = """\
import os, resource, signal, sys
for limit in filter(None, sys.argv[1].split(",")):
    name, soft, hard = limit.replace("=", ":").split(":")
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def rlimits(*, memory=0, cpu=0, file_size=0, tasks=0) -> dict:
    """The resource limits a kernel starts under (0: none), as {name: (soft, hard)} for
    setrlimit's RLIMIT_<name>.

    memory: bytes of data (RLIMIT_DATA: the heap and private writable mappings), not of address
        space (RLIMIT_AS): CUDA reserves far more address space than it uses, but as PROT_NONE
        mappings, which RLIMIT_DATA does not count. Past it an allocation fails (MemoryError).
    cpu: seconds of CPU time of the kernel process (RLIMIT_CPU), all its threads together; past
        it the kernel is killed by SIGXCPU (SIGKILL 5 s later if it ignores that).
    file_size: bytes a file may grow to (RLIMIT_FSIZE); Python ignores SIGXFSZ, so a write past
        it fails (OSError: File too large) in the cell that wrote it.
    tasks: processes and threads (RLIMIT_NPROC). The kernel counts them per user and user
        namespace: inside a sandbox, only the sandbox's own; outside, every process of the
        grader's user, so pass it only for a sandboxed kernel. Linux does not enforce it for uid
        0 outside the sandbox: a grader that runs as root has no such limit.
    Core dumps are off: a kernel killed by SIGXCPU would otherwise write one into its folder.
    """
    limits = {"CORE": (0, 0)}
    if memory:
        limits["DATA"] = (memory, memory)
    if cpu:
        limits["CPU"] = (cpu, cpu + 5)
    if file_size:
        limits["FSIZE"] = (file_size, file_size)
    if tasks:
        limits["NPROC"] = (tasks, tasks)
    return limits


def limits_command(command: list, **limits) -> list:
    """`command`, started under these resource limits (`rlimits`' arguments)."""
    spec = ",".join(f"{name}={soft}:{hard}" for name, (soft, hard) in rlimits(**limits).items())
    return [sys.executable, "-S", "-c", LAUNCHER, spec, *command]


def python_environment() -> list:
    """The folders the kernel's Python needs, read-only: the environment, the interpreter it was
    made from, and the course's packages (an editable install finds them in the course folder)."""
    folders = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    folders.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        folders.update(spec.submodule_search_locations or [os.path.dirname(spec.origin)])
    return sorted({os.path.realpath(f) for f in folders})


def kernel_environment(environ=None) -> dict:
    """The environment of a sandboxed kernel: the variables of `environ` (default: this
    process's) that KERNEL_VARIABLES and KERNEL_PREFIXES allow, and its own home, temporary folder
    and parent (ipykernel exits when its parent seems gone; in the sandbox its parent is bwrap's
    reaper, PID 1). While nbgrader executes the notebook, matplotlib's backend is
    undrawn_figures.py's."""
    environ = os.environ if environ is None else environ
    allowed = {
        name: value
        for name, value in environ.items()
        if name in KERNEL_VARIABLES or name.startswith(KERNEL_PREFIXES)
    }
    if allowed.get("NBGRADER_EXECUTION"):  # graded: pyplot's figures made, not drawn
        allowed["MPLBACKEND"] = UNDRAWN_FIGURES
    return {**allowed, "HOME": "/tmp", "TMPDIR": "/tmp", "JPY_PARENT_PID": "1"}


def system_mounts() -> list:
    """The read-only system, as (kind, source, target) steps, kind one of bwrap's options: its
    folders, /etc's files, /sys, a fresh /proc and /dev, and the GPUs' device files (NVIDIA's;
    ROCm's /dev/kfd and /dev/dri)."""
    mounts = []
    for path in SYSTEM:
        if os.path.islink(path):
            mounts.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            mounts.append(("ro-bind", path, path))
    mounts += [("ro-bind-try", f"/etc/{name}", f"/etc/{name}") for name in ETC]
    mounts += [("ro-bind-try", "/sys", "/sys"), ("proc", None, "/proc"), ("dev", None, "/dev")]
    mounts.append(("tmpfs", SHM_SIZE, "/dev/shm"))
    for device in sorted(glob.glob("/dev/nvidia*") + ["/dev/kfd", "/dev/dri"]):
        mounts.append(("dev-bind-try", device, device))
    return mounts


def bwrap_arguments(mounts: list) -> list:
    """bwrap's arguments for `mounts` (see `system_mounts`)."""
    arguments = []
    for kind, source, target in mounts:
        if kind in ("proc", "dev"):
            arguments += [f"--{kind}", target]
        elif kind == "tmpfs":
            arguments += ["--size", str(source), "--tmpfs", target]
        else:
            arguments += [f"--{kind}", source, target]
    return arguments


class Sandbox:
    """One kernel's sandbox: its private folder (the sockets it talks over) and the bwrap
    command that starts the kernel in it, with `workdir` its one writable folder on disk and a
    private /tmp of `tmp_size` bytes in memory.

    A context manager: its private folder is removed on exit."""

    def __init__(self, workdir, tmp_size: int = TMP_SIZE):
        self.workdir = os.path.realpath(workdir)
        self.tmp_size = tmp_size
        # short: a unix socket's path must fit in 107 bytes
        self.folder = tempfile.mkdtemp(prefix="sandbox-")
        self.sockets = os.path.join(self.folder, "sockets")
        os.mkdir(self.sockets)

    @property
    def connection_file(self) -> str:
        """Where the kernel's connection file goes; its sockets are named after it."""
        return os.path.join(self.sockets, "kernel.json")

    def mounts(self) -> list:
        """The sandbox's file system, as `system_mounts`' steps, in order."""
        return [
            *system_mounts(),
            # the private /tmp first: the folders below may lie under the grader's own /tmp
            ("tmpfs", self.tmp_size, "/tmp"),
            *[("ro-bind", folder, folder) for folder in python_environment()],
            ("bind", self.sockets, self.sockets),
            ("bind", self.workdir, self.workdir),
        ]

    def command(self, command: list) -> list:
        """`command`, started in the sandbox.

        SIGINT is ignored by bwrap (`trap ''` survives the exec): jupyter_client interrupts a
        kernel by sending SIGINT to its process group, bwrap included, and bwrap would die of it
        and take the kernel along. The launcher inside sets it back to its default.

        The kernel's environment is spelled out: --clearenv, then `kernel_environment`'s
        variables. bwrap itself starts with an empty one (`env -i`): it stays in the sandbox as
        its PID 1, and a kernel can read /proc/1/environ: the environment bwrap was started with,
        whatever it passes on to the kernel."""
        environment = kernel_environment()
        arguments = [
            *("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"),
            *("--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"),
            *bwrap_arguments(self.mounts()),
            *("--chdir", self.workdir),
            "--clearenv",
            *[a for name, value in environment.items() for a in ("--setenv", name, value)],
        ]
        bwrap = shutil.which("bwrap") or "bwrap"  # found before `env -i` empties PATH
        trap = "trap '' INT; exec \"$@\""
        return ["sh", "-c", trap, "sh", "env", "-i", bwrap, *arguments, "--", *command]

    def close(self):
        for parent, folders, _ in os.walk(self.folder):  # a kernel may have chmod'ed them 000
            for folder in folders:
                os.chmod(os.path.join(parent, folder), 0o700)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


@functools.cache
def unavailable() -> str:
    """Why no sandbox can start here ('' if one can): bwrap missing, or failing to start one (a
    kernel without unprivileged user namespaces, or one that restricts them, as Ubuntu's
    AppArmor does by default since 24.04). Found by starting `true` in one, once per process."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    with tempfile.TemporaryDirectory() as workdir, Sandbox(workdir) as sandbox:
        try:
            done = subprocess.run(
                sandbox.command(["true"]), capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            return "bwrap did not start a sandbox within 30 s"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"bwrap cannot start a sandbox here ({why})"
    return ""
