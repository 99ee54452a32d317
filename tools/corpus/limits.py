"""Submissions that crash their kernel or run into a limit (time, memory, output, disk): each
costs only itself, with the reason, and keeps the points of the cells before it."""

from tools.corpus.build import SDPA, SOFTMAX, Case, add, attack, filled


def os_exit():
    return filled(**{SDPA: add("import os\nos._exit(3)", SDPA)})


def segfault():
    return filled(**{SDPA: add("import ctypes\nctypes.string_at(0)", SDPA)})


def sys_exit():
    return filled(**{SOFTMAX: add("import sys\nsys.exit(0)")})


def infinite_loop():
    return filled(**{SDPA: add("while True:\n    pass", SDPA)})


def uninterruptible_loop():
    return filled(
        **{
            SDPA: add(
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "while True:\n    pass",
                SDPA,
            )
        }
    )


def huge_allocation():
    return filled(
        **{SDPA: add("hog = torch.empty(2 ** 40, dtype=torch.uint8)  # 1 TiB", SDPA, after=False)}
    )


def growing_memory():
    return filled(
        **{
            SDPA: add(
                "hog = []\nwhile True:\n    hog.append(bytearray(1 << 26))", SDPA, after=False
            )
        }
    )


def huge_output():
    # 64 lines of 1 MiB: few lines, many bytes (a limit on lines would let it all through)
    return filled(**{SDPA: add("for _ in range(64):\n    print('x' * (1 << 20))", SDPA)})


def fill_tmp(target):
    # /tmp until it is full, or 768 MiB (more than a sandbox's /tmp holds): a disk-backed
    # /tmp would take it all, and so would the machine's
    return attack(
        "written = 0\n"
        "try:\n"
        f"    with open('/tmp/{target.token}-fill', 'wb') as f:\n"
        "        while written < 768 << 20:\n"
        "            f.write(bytes(16 << 20))\n"
        "            written += 16 << 20\n"
        "except OSError as error:\n"
        "    print('refused:', error)\n"
        "print(f'filled {written >> 20} MiB of /tmp')"
    )


def hard_links(target):
    # one 2 MiB file and 47 more names for it: 2 MiB of disk here, 96 MiB for a grader that
    # copies the folder file by file
    return attack(
        "import os\n"
        f"with open('{target.token}-0', 'wb') as f:\n"
        "    f.write(bytes(2 << 20))\n"
        "for i in range(1, 48):\n"
        f"    os.link('{target.token}-0', f'{target.token}-{{i}}')"
    )


CASES = {
    "os-exit": Case(os_exit, "os._exit in the attention cell", 6, "stopped", "the kernel died", []),
    "segfault": Case(
        segfault, "a segmentation fault in the attention cell", 6, "stopped", "SIGSEGV", []
    ),
    "sys-exit": Case(sys_exit, "sys.exit(0) after the softmax", 9, findings=[]),
    "infinite-loop": Case(
        infinite_loop, "while True in the attention cell", 6, "stopped", "per-cell timeout", []
    ),
    "uninterruptible-loop": Case(
        uninterruptible_loop, "ignores SIGINT, then loops", 6, "stopped", "per-cell timeout", []
    ),
    "huge-allocation": Case(
        huge_allocation, "allocates 1 TiB before defining attention", 6, findings=[]
    ),
    "growing-memory": Case(growing_memory, "grows a list of buffers until the cap", 6, findings=[]),
    "huge-output": Case(
        huge_output,
        "prints 64 MiB in 64 lines after defining attention",
        6,
        "stopped",
        "the outputs passed the limit",
        [],
    ),
    "fill-tmp": Case(
        fill_tmp,
        "writes /tmp until it is full",
        9,
        absent=("filled 768 MiB",),
    ),
    "hard-links": Case(
        hard_links,
        "48 hard links to one 2 MiB file in its folder",
        9,
    ),
}
