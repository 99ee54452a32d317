"""Attacks on the sandbox itself: through /proc, ptrace, the instructor's home, the grader's
environment, the network, unix sockets, new namespaces and the read-only Python environment.
Each deserves its own full marks, and must leak nothing: no secret of the Target in its graded
folder, no byte to the test's listeners, no file with its token anywhere."""

from tools.corpus.build import SCRATCH, SECRET, Case, steps


def proc_root(target):
    # /proc/1/root: the root of PID 1's view, the host's own where PID 1 is the host's
    config = f"/proc/1/root{target.course}/nbgrader_config.py"
    return steps(
        target,
        "attempt('list /proc/1/root', lambda: print(os.listdir('/proc/1/root')))\n"
        f"attempt('append to {config}', append_to({config!r}))\n"
        "attempt('read /proc/1/mountinfo', lambda: print(open('/proc/1/mountinfo').read()))",
    )


def ptrace_parent(target):
    return steps(
        target,
        "import ctypes\n\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "ATTACH, DETACH, ALL_CHILDREN = 16, 17, 0x40000000\n\n\n"
        "def trace_parent():\n"
        "    parent = os.getppid()\n"
        "    if libc.ptrace(ATTACH, parent, None, None) != 0:\n"
        "        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
        "    os.waitpid(parent, ALL_CHILDREN)\n"
        "    try:\n"
        "        print(open(f'/proc/{parent}/environ', 'rb').read())\n"
        "    finally:\n"
        "        libc.ptrace(DETACH, parent, None, None)\n\n\n"
        "attempt('ptrace its parent and read its environment', trace_parent)",
    )


def instructor_home(target):
    home = str(target.home)
    key = str(target.home / ".ssh" / "id_ed25519")
    return steps(
        target,
        f"attempt('list {home}', lambda: print(os.listdir({home!r})))\n"
        f"attempt('read {key}', lambda: print(open({key!r}).read()))\n"
        f"attempt('append to ~/.bashrc', append_to(os.path.join({home!r}, '.bashrc')))",
    )


def environment(target):
    return steps(
        target,
        "print(dict(os.environ))\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    attempt(f'read /proc/{pid}/environ', "
        "lambda: print(open(f'/proc/{pid}/environ', 'rb').read()))",
    )


def network(target):
    return steps(
        target,
        "import socket\n\n\n"
        "def send():\n"
        f"    with socket.create_connection(('127.0.0.1', {target.port}), timeout=5) as s:\n"
        "        s.sendall(TOKEN.encode())\n\n\n"
        f"attempt('send its token to 127.0.0.1:{target.port}', send)",
    )


def unix_sockets(target):
    # the test's listener, and every socket in the grading run's scratch folder: the other
    # kernels' own, were they there
    return steps(
        target,
        "import glob, socket\n\n\n"
        "def send(path):\n"
        "    def step():\n"
        "        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:\n"
        "            s.settimeout(5)\n"
        "            s.connect(path)\n"
        "            s.sendall(TOKEN.encode())\n"
        "    return step\n\n\n"
        f"{SCRATCH}\n"
        "others = glob.glob(f'{scratch}/**/*ipc*', recursive=True) if scratch else []\n"
        f"for path in [{target.unix_socket!r}, *others]:\n"
        "    attempt(f'send its token to {path}', send(path))",
    )


def namespaces(target):
    # a user namespace would give it every capability in it; a mount namespace, a way to
    # remount the read-only folders: then write into the Python environment
    return steps(
        target,
        "import ctypes, site\n\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "NEW_USER, NEW_MOUNT, REMOUNT, BIND = 0x10000000, 0x20000, 0x20, 0x1000\n"
        "packages = site.getsitepackages()[0]\n\n\n"
        "def call(result):\n"
        "    if result != 0:\n"
        "        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n\n\n"
        "attempt('a user namespace', lambda: call(libc.unshare(NEW_USER)))\n"
        "attempt('a mount namespace', lambda: call(libc.unshare(NEW_MOUNT)))\n"
        "attempt('remount site-packages writable', lambda: call(libc.mount(\n"
        "    b'none', packages.encode(), None, REMOUNT | BIND, None)))\n"
        "attempt('become root', lambda: os.setuid(0))\n"
        "attempt('write site-packages', create(os.path.join(packages, f'{TOKEN}.pth')))",
    )


def python_environment(target):
    # a module in torch's own folder and a .pth file: every later kernel would load them
    return steps(
        target,
        "import site\n\nimport torch\n\n"
        "attempt('add a module to torch', "
        "create(os.path.join(os.path.dirname(torch.__file__), f'{TOKEN}.py')))\n"
        "attempt('add a .pth file to site-packages', "
        "create(os.path.join(site.getsitepackages()[0], f'{TOKEN}.pth')))",
    )


CASES = {
    "proc-root": Case(
        proc_root, "reaches the course through /proc/1/root, reads PID 1's mounts", 9
    ),
    "ptrace-parent": Case(
        ptrace_parent, "ptraces its parent and prints its environment", 9, absent=(SECRET,)
    ),
    "instructor-home": Case(
        instructor_home, "reads the instructor's home and ~/.ssh key", 9, absent=(SECRET,)
    ),
    "environment-secrets": Case(
        environment, "prints its environment and every /proc/PID/environ", 9, absent=(SECRET,)
    ),
    "network": Case(network, "sends its token to a listener on 127.0.0.1", 9),
    "unix-sockets": Case(
        unix_sockets, "sends its token to a unix socket outside and to other kernels'", 9
    ),
    "namespaces": Case(
        namespaces, "new user and mount namespaces, a remount, setuid(0), then site-packages", 9
    ),
    "python-environment": Case(
        python_environment, "adds a module to torch and a .pth file to site-packages", 9
    ),
}
