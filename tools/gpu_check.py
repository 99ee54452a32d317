"""One check of everything the course does on a GPU, into one Markdown report (`make gpu-check`).

    python -m tools.gpu_check                          on a CUDA machine: every part, full sizes
    python -m tools.gpu_check --report out.md --parts flash scan
    python -m tools.gpu_check --device cpu --quick     every part at tiny sizes on the CPU, Triton
                                                       through its interpreter: the plumbing only

The parts, one section of the report each:
    tests      `pytest -m gpu` over tests/ (--quick: tests/test_device.py), counted from JUnit XML
    notebooks  each solutions/DAY/DAY.ipynb run top to bottom by nbclient in a kernel of this
               Python (the kernel `python -m grader check` uses), in a copy of its folder; timed,
               kernel start included (--quick: day01-sdpa only)
    flash      course.reference.flash_triton against F.scaled_dot_product_attention with the flash
               backend, forward and forward+backward, in TFLOP/s, with the ratio
    scan       the Triton scan (compiled on a GPU) against the sequential loop and the parallel
               scan of course.reference.mamba_scan, each compared with a float64 loop
    memory     course.bench.peak_memory of each mechanism against
               course.reference.capstone.estimate_attention_memory
    grading    a small class of one day graded by `python -m grader autograde DAY --workers 2`,
               and what a grading kernel's sandbox sees of the GPU

Targets, judged only where they are measured (on a GPU; NOT RUN elsewhere): flash forward at
L >= 4096 at least 0.8x SDPA's TFLOP/s, forward+backward at least 0.6x; every solution notebook
under 20 s.

The device is chosen as the course chooses it (course.device: CUDA when torch sees a GPU).
`--device cpu` hides the GPUs from this process and everything it starts (CUDA_VISIBLE_DEVICES
empty), so the course picks the CPU and Triton's interpreter, as on a machine without a GPU.
Without CUDA and without --device cpu, it prints one line and exits 0. Exit status: 1 when a part
crashed or found a problem or a target failed, else 0.
"""

import argparse
import dataclasses
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import nbformat

from tools.grading_benchmark import days, submission

# torch and the course are imported inside the parts: `--device cpu` hides the GPUs from torch,
# which must happen before torch is first imported.

ROOT = Path(__file__).resolve().parents[1]
FORWARD_TARGET = 0.8  # Triton's TFLOP/s over SDPA's (flash backend), forward
BACKWARD_TARGET = 0.6  # the same, forward+backward
JUDGED_FROM = 4096  # the flash targets hold from this sequence length on
NOTEBOOK_SECONDS = 20.0  # every solution notebook, top to bottom, on the GPU
CELL_TIMEOUT = 300  # seconds per notebook cell: nbgrader_config.py's Execute.timeout
ESTIMATE_TOLERANCE = 0.15  # how far the course's tests let an estimate be from the measured peak
# The environment variables a CUDA or Triton set-up may rely on: those the grading sandbox does
# not pass to its kernels are named in the report (grader/autograde/sandbox.py KERNEL_VARIABLES).
GPU_VARIABLES = ("CUDA", "NVIDIA", "TRITON", "TORCH", "PYTORCH", "LD_LIBRARY_PATH")
NO_CUDA = (
    "No CUDA device found: nothing run. On a GPU this runs the gpu tests, the solution notebooks, "
    "the flash and scan benchmarks, peak memory against the estimator and a graded class into "
    "one report; `--device cpu --quick` runs each part at tiny sizes on the CPU."
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each part runs."""

    test_paths: tuple  # where pytest looks for gpu tests
    days: tuple  # solution notebooks (empty: all)
    flash_shape: tuple  # (batch, heads)
    flash_lengths: tuple
    flash_head_dims: tuple
    flash_dtypes: tuple  # on a GPU; Triton's interpreter takes float32 only
    scan_rows: tuple  # independent sequences, one table row group each
    scan_length: int
    memory_shape: tuple  # (batch, heads, head_dim)
    memory_lengths: tuple
    grade_day: str
    grade_class: tuple  # the students, named by the kind of submission they hand in


FULL = Sizes(
    test_paths=("tests",),
    days=(),
    flash_shape=(4, 16),
    flash_lengths=(1024, 2048, 4096, 8192, 16384),
    flash_head_dims=(64, 128),
    flash_dtypes=("float16", "bfloat16"),
    scan_rows=(16, 1024),
    scan_length=4096,
    memory_shape=(1, 8, 64),
    memory_lengths=(1024, 4096),
    grade_day="day07-flash-triton",  # its kernels compile inside the sandbox: the hardest case
    grade_class=("correct", "partial", "broken"),
)
QUICK = Sizes(
    test_paths=("tests/test_device.py",),
    days=("day01-sdpa",),
    flash_shape=(1, 1),
    flash_lengths=(32, 64),
    flash_head_dims=(16,),
    flash_dtypes=("float16",),
    scan_rows=(4,),
    scan_length=256,
    memory_shape=(1, 2, 16),
    memory_lengths=(128,),  # the sliding window and chunks are 128 wide
    grade_day="day01-sdpa",
    grade_class=("correct", "broken"),
)


@dataclasses.dataclass(frozen=True)
class Target:
    """One of the issue's targets: PASS, FAIL or NOT RUN (not measured on this device)."""

    name: str
    status: str
    why: str


@dataclasses.dataclass
class Part:
    """One section of the report: its Markdown, the targets it judged and what went wrong."""

    title: str = ""  # set by run_part, from PARTS
    body: list = dataclasses.field(default_factory=list)  # Markdown lines
    targets: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)  # one line each
    seconds: float = 0.0


def markdown_table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def device_line(notebook) -> str:
    """What the notebook's set-up cell printed: course.describe_device(), e.g. 'CUDA: NVIDIA
    H100 80GB HBM3, Triton kernels (days 7 and 9) compiled for the GPU' ('' where it did not
    run)."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and "describe_device()" in cell.source:
            printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            return printed.strip().splitlines()[-1] if printed.strip() else ""
    return ""


# ----------------------------------------------------------------------------- gpu tests


def junit_cases(path: Path) -> list:
    """(test id, outcome, message) for each test case of a JUnit XML file; outcome is passed,
    failed, error or skipped."""
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        found = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = {"failure": "failed"}.get(found[0].tag, found[0].tag) if found else "passed"
        cases.append((name, outcome, found[0].get("message", "") if found else ""))
    return cases


def gpu_tests(device: str, sizes: Sizes) -> Part:
    """Every test marked gpu, in one process, counted from pytest's JUnit XML."""
    part = Part()
    command = ["-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-p", "no:cacheprovider"]
    with tempfile.TemporaryDirectory() as scratch:
        xml = Path(scratch) / "gpu-tests.xml"
        done = subprocess.run(
            [sys.executable, *command, f"--junitxml={xml}", *sizes.test_paths],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        cases = junit_cases(xml) if xml.exists() else []
    counts = {
        o: sum(case[1] == o for case in cases) for o in ("passed", "failed", "error", "skipped")
    }
    part.body.append(
        f"`python {' '.join(command)} {' '.join(sizes.test_paths)}`: exit {done.returncode}; "
        + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        + "."
    )
    not_passed = [case for case in cases if case[1] != "passed"]
    if not_passed:
        part.body += ["", *markdown_table(["test", "outcome", "message"], not_passed)]
    if done.returncode not in (0, 5) or not cases:  # 5: pytest collected no test
        part.problems.append(f"pytest exit {done.returncode}")
        part.body += ["", "```", done.stdout[-3000:].rstrip(), done.stderr[-2000:].rstrip(), "```"]
    if counts["failed"] or counts["error"]:
        part.problems.append(f"{counts['failed']} failed, {counts['error']} errors")
    if device == "cuda" and cases and counts["skipped"] == len(cases):
        part.problems.append("every gpu test skipped on a CUDA machine")
    if device == "cpu":
        part.body += ["", "No GPU visible (--device cpu): the gpu tests skip, as they should."]
    return part


# ----------------------------------------------------------------------------- notebooks


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    day: str
    seconds: float
    device: str  # the line the notebook printed: course.describe_device()
    error: str = ""  # what stopped it, if anything


def run_notebook(day: str) -> NotebookRun:
    """solutions/DAY/DAY.ipynb top to bottom in a copy of its folder, in a fresh kernel."""
    from nbclient import NotebookClient

    from grader.autograde.selfcheck import ThisPythonKernel

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        folder = Path(shutil.copytree(ROOT / "solutions" / day, Path(scratch) / day))
        notebook = nbformat.read(folder / f"{day}.ipynb", as_version=4)
        client = NotebookClient(
            notebook,
            kernel_manager_class=ThisPythonKernel,
            kernel_name=notebook.metadata["kernelspec"]["name"],
            timeout=CELL_TIMEOUT,
            # as `grader check` starts it: no history file, no warning about its localhost port
            extra_arguments=[
                "--HistoryManager.hist_file=:memory:",
                "--IPKernelApp.log_level=ERROR",
            ],
            resources={"metadata": {"path": str(folder)}},
        )
        start = time.perf_counter()
        try:
            client.execute()
            error = ""
        except Exception as exc:  # a cell raised, timed out, or the kernel died
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
        return NotebookRun(day, time.perf_counter() - start, device_line(notebook), error)


def notebook_target(runs: list, device: str) -> Target:
    name = f"every solution notebook under {NOTEBOOK_SECONDS:g} s on the GPU"
    if device != "cuda":
        return Target(name, "NOT RUN", f"ran on the {device}: the target is for a GPU")
    if not runs:
        return Target(name, "NOT RUN", "no notebook ran")
    slow = [r for r in runs if r.error or r.seconds >= NOTEBOOK_SECONDS]
    why = f"{len(runs) - len(slow)} of {len(runs)} under {NOTEBOOK_SECONDS:g} s without an error"
    if slow:
        why += "; not: " + ", ".join(f"{r.day} ({r.error or f'{r.seconds:.1f} s'})" for r in slow)
    return Target(name, "FAIL" if slow else "PASS", why)


def notebooks(device: str, sizes: Sizes) -> Part:
    part = Part()
    runs = []
    for day in sizes.days or days():
        print(f"  {day} ...", file=sys.stderr, flush=True)
        runs.append(run_notebook(day))
    rows = [(r.day, f"{r.seconds:.1f}", r.device or "-", r.error or "ran") for r in runs]
    part.body = [
        "Each solution notebook run top to bottom by nbclient in a fresh kernel of this Python, "
        "in a copy of its folder; seconds from the kernel's start to the last cell's end. "
        "The device is the one the notebook printed (course.describe_device()).",
        "",
        *markdown_table(["notebook", "seconds", "device", "result"], rows),
    ]
    part.targets.append(notebook_target(runs, device))
    part.problems += [f"{r.day}: {r.error}" for r in runs if r.error]
    wrong = [r.day for r in runs if not r.error and not r.device.lower().startswith(device)]
    part.problems += [f"{day} did not run on the {device}" for day in wrong]
    return part


# ----------------------------------------------------------------------------- flash


@dataclasses.dataclass(frozen=True)
class FlashPoint:
    """Triton against SDPA (flash backend) at one size, one direction."""

    dtype: str
    head_dim: int
    causal: bool
    L: int
    direction: str  # "forward" or "forward+backward"
    triton_s: float | None = None  # None: the point failed (note says why)
    sdpa_s: float | None = None
    error: float | None = None  # max |Triton - SDPA| over the output, or over dq, dk, dv
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Triton's TFLOP/s over SDPA's: both do the same work, so SDPA's time over Triton's."""
        return None if self.triton_s is None or self.sdpa_s is None else self.sdpa_s / self.triton_s


def flash_flops(batch, heads, L, D, causal, direction) -> float:
    from course.bench.flash_triton import flops

    # the backward pass does five matmuls to the forward's two: 2.5x (FlashAttention-2's count)
    return flops(batch, heads, L, D, causal) * (3.5 if direction == "forward+backward" else 1.0)


def seconds_per_call(fn, device: str) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn) * 1e-3  # ms: after warm-up, the L2 cache flushed between calls
    from course.bench import median_time

    return median_time(fn, repeats=1, warmup=0)  # the interpreter: one call is slow enough


def flash_point(batch, heads, L, D, dtype, causal, direction, device) -> FlashPoint:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from course.reference.flash_triton import flash_attention, flash_attention_triton

    backward = direction == "forward+backward"
    torch.manual_seed(L)
    shape, element = (batch, heads, L, D), getattr(torch, dtype)
    q, k, v = (
        torch.randn(shape, device=device, dtype=element).requires_grad_(backward) for _ in range(3)
    )  # (B, nh, T, hs)
    dout = torch.randn_like(q)

    def triton_call():
        if not backward:
            return flash_attention_triton(q, k, v, causal)[:1]
        return torch.autograd.grad(flash_attention(q, k, v, causal), (q, k, v), dout)

    def sdpa_call():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return torch.autograd.grad(out, (q, k, v), dout) if backward else (out,)

    point = dict(dtype=dtype, head_dim=D, causal=causal, L=L, direction=direction)
    try:
        error = max(
            (a.float() - b.float()).abs().max().item() for a, b in zip(triton_call(), sdpa_call())
        )
        return FlashPoint(
            **point,
            triton_s=seconds_per_call(triton_call, device),
            sdpa_s=seconds_per_call(sdpa_call, device),
            error=error,
        )
    except Exception as exc:  # out of memory, no flash kernel for this size, out of resources
        if device == "cuda":
            torch.cuda.empty_cache()
        return FlashPoint(**point, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def flash_targets(points: list, device: str) -> list:
    """The two flash targets, judged on the points at L >= JUDGED_FROM; a point there that did
    not run counts against its target."""
    targets = []
    for direction, least in (("forward", FORWARD_TARGET), ("forward+backward", BACKWARD_TARGET)):
        name = f"flash {direction} at L >= {JUDGED_FROM}: Triton >= {least}x SDPA (flash) TFLOP/s"
        judged = [p for p in points if p.direction == direction and p.L >= JUDGED_FROM]
        if device != "cuda":
            targets.append(
                Target(name, "NOT RUN", f"measured on the {device}: the target is for a GPU")
            )
            continue
        if not judged:
            targets.append(Target(name, "NOT RUN", f"no point at L >= {JUDGED_FROM} was measured"))
            continue
        short = [p for p in judged if p.ratio is None or p.ratio < least]
        why = f"{len(judged) - len(short)} of {len(judged)} points meet it"
        ran = [p for p in judged if p.ratio is not None]
        if ran:
            worst = min(ran, key=lambda p: p.ratio)
            why += (
                f"; lowest {worst.ratio:.2f}x ({worst.dtype}, D {worst.head_dim}, "
                f"{'causal' if worst.causal else 'not causal'}, L {worst.L})"
            )
        if len(ran) < len(judged):
            why += f"; {len(judged) - len(ran)} did not run"
        targets.append(Target(name, "FAIL" if short else "PASS", why))
    return targets


def flash(device: str, sizes: Sizes) -> Part:
    part = Part()
    batch, heads = sizes.flash_shape
    dtypes = sizes.flash_dtypes if device == "cuda" else ("float32",)  # the interpreter's only
    points = [
        flash_point(batch, heads, L, D, dtype, causal, direction, device)
        for dtype in dtypes
        for D in sizes.flash_head_dims
        for causal in (False, True)
        for direction in ("forward", "forward+backward")
        for L in sizes.flash_lengths
    ]
    rows = []
    for p in points:
        work = flash_flops(batch, heads, p.L, p.head_dim, p.causal, p.direction)
        measured = p.ratio is not None
        rows.append(
            (
                p.dtype,
                p.head_dim,
                "yes" if p.causal else "no",
                p.L,
                p.direction,
                f"{work / p.triton_s / 1e12:.3g}" if measured else "-",
                f"{work / p.sdpa_s / 1e12:.3g}" if measured else "-",
                f"{p.ratio:.2f}" if measured else "-",
                f"{p.error:.1e}" if measured else p.note,
            )
        )
    timer = "triton.testing.do_bench" if device == "cuda" else "one call (Triton's interpreter)"
    part.body = [
        f"Batch {batch}, {heads} heads, {device}; course.reference.flash_triton "
        "(flash_attention_triton forward, FlashAttentionTriton forward+backward) against "
        "F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.FLASH_ATTENTION); "
        f"timed with {timer}. FLOPs: 4 B H L^2 D forward (halved when causal), 3.5x that "
        "forward+backward. Ratio: Triton's TFLOP/s over SDPA's. Max abs diff: of the output, "
        "or of dq, dk, dv.",
        "",
        *markdown_table(
            [
                "dtype",
                "D",
                "causal",
                "L",
                "pass",
                "Triton TFLOP/s",
                "SDPA TFLOP/s",
                "ratio",
                "max abs diff",
            ],
            rows,
        ),
    ]
    part.targets = flash_targets(points, device)
    failed = [p for p in points if p.ratio is None]
    if failed:
        part.problems.append(f"{len(failed)} of {len(points)} points did not run")
    return part


# ----------------------------------------------------------------------------- scan


def scans(device: str, sizes: Sizes) -> Part:
    import torch

    from course.bench.mamba_scan import TOLERANCE, scan
    from course.reference.mamba_scan import (
        linear_recurrence_parallel,
        linear_recurrence_sequential,
        linear_recurrence_triton,
    )

    part = Part()
    methods = [
        ("sequential loop", linear_recurrence_sequential),
        ("parallel scan", linear_recurrence_parallel),
        ("compiled scan (Triton)", linear_recurrence_triton),
    ]
    rows, wrong = [], []
    for n in sizes.scan_rows:
        loop, parallel, triton = (
            scan(name, fn, n, sizes.scan_length, 5, torch.device(device)) for name, fn in methods
        )
        for m in (loop, parallel, triton):
            rows.append(
                (
                    n,
                    m.mechanism,
                    f"{1e3 * m.seconds:.2f}",
                    f"{loop.seconds / m.seconds:.1f}x",
                    f"{parallel.seconds / m.seconds:.2f}x",
                    f"{m.error:.1e}",
                )
            )
            if m.error > TOLERANCE:
                wrong.append(f"{m.mechanism} ({n} rows): relative error {m.error:.1e}")
    compiled = "compiled for the GPU" if device == "cuda" else "run by Triton's interpreter"
    part.body = [
        f"h_t = a_t h_(t-1) + b_t, float32, L = {sizes.scan_length}, {device}; median of 5 "
        f"calls after a warm-up (course.bench.mamba_scan.scan). The Triton scan is {compiled}. "
        f"Relative error against the float64 loop (at most {TOLERANCE:g}).",
        "",
        *markdown_table(
            ["rows", "method", "ms", "vs the loop", "vs the parallel scan", "rel. error"], rows
        ),
    ]
    part.problems = wrong
    return part


# ----------------------------------------------------------------------------- memory


def measured_peak(kind, batch, heads, L, head_dim, device, kw) -> int:
    from course.reference.capstone import measure_attention_memory

    if device == "cuda":  # the first call also allocates cuBLAS's workspace, once per process
        measure_attention_memory(kind, batch, heads, L, head_dim, device=device, **kw)
    return measure_attention_memory(kind, batch, heads, L, head_dim, device=device, **kw)


def memory(device: str, sizes: Sizes) -> Part:
    from course.bench.__main__ import MECHANISMS
    from course.reference.capstone import estimate_attention_memory

    part = Part()
    batch, heads, head_dim = sizes.memory_shape
    rows, within = [], 0
    for L in sizes.memory_lengths:
        for label, kind, kw in MECHANISMS:
            estimate = estimate_attention_memory(kind, batch, heads, L, head_dim, **kw)
            try:
                peak = measured_peak(kind, batch, heads, L, head_dim, device, kw)
            except Exception as exc:  # out of memory
                part.problems.append(f"{label}, L {L}: {type(exc).__name__}")
                rows.append((label, L, "-", f"{estimate / 2**20:.3f}", "-", "-"))
                continue
            close = abs(estimate - peak) <= ESTIMATE_TOLERANCE * peak
            within += close
            rows.append(
                (
                    label,
                    L,
                    f"{peak / 2**20:.3f}",
                    f"{estimate / 2**20:.3f}",
                    f"{estimate / max(peak, 1):.2f}",
                    "yes" if close else "no",
                )
            )
    tracker = (
        "torch.cuda.max_memory_allocated, the second of two calls"
        if device == "cuda"
        else "the CPU tracker (course.bench.LiveStorage)"
    )
    part.body = [
        f"Batch {batch}, {heads} heads, head_dim {head_dim}, float32, {device}: the peak one call "
        f"allocates, its output included, q, k, v excluded (course.bench.peak_memory: {tracker}), "
        "against course.reference.capstone.estimate_attention_memory. "
        f"{within} of {len(rows)} within {ESTIMATE_TOLERANCE:.0%}.",
        "",
        *markdown_table(
            [
                "mechanism",
                "L",
                "measured MiB",
                "estimated MiB",
                "estimate / measured",
                f"within {ESTIMATE_TOLERANCE:.0%}",
            ],
            rows,
        ),
    ]
    return part


# ----------------------------------------------------------------------------- grading

# Run in a grading kernel's sandbox, under autograde's limits: what it sees of the GPU.
SANDBOX_PROBE = """
import glob, json
seen = {"device_files": sorted(glob.glob("/dev/nvidia*"))}
try:
    import torch
    seen["cuda"] = torch.cuda.is_available()
    if seen["cuda"]:
        seen["sum"] = torch.ones(1 << 20, device="cuda").sum().item()
except Exception as exc:
    seen["cuda_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(seen))
"""


def sandbox_probe() -> dict:
    """What a grading kernel's sandbox (grader/autograde/sandbox.py) sees of the GPU, under
    `autograde --workers`' default limits: {"unavailable": why} where no sandbox starts here."""
    from grader.autograde import parallel, sandbox

    why = sandbox.unavailable()
    if why:
        return {"unavailable": why}
    limits = parallel.Limits()
    command = sandbox.limits_command(
        [sys.executable, "-c", SANDBOX_PROBE],
        memory=limits.memory_limit,
        cpu=limits.cpu_limit,
        file_size=limits.file_size_limit,
        tasks=limits.tasks_limit,
    )
    with tempfile.TemporaryDirectory() as workdir, sandbox.Sandbox(workdir) as box:
        done = subprocess.run(box.command(command), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "limits": limits}


def sandbox_lines(seen: dict, device: str) -> tuple:
    """(Markdown lines, problems) for what the sandbox probe saw."""
    from grader.autograde.sandbox import kernel_environment

    if "unavailable" in seen:
        return [f"- No sandbox here: {seen['unavailable']}; the class was graded without one."], []
    if "error" in seen:
        return [f"- The sandbox probe failed: {seen['error']}"], [f"sandbox probe: {seen['error']}"]
    outside = sorted(glob.glob("/dev/nvidia*"))
    missing = sorted(set(outside) - set(seen["device_files"]))
    limits = seen["limits"]
    lines = [
        f"- NVIDIA device files here: {', '.join(outside) or 'none'}; inside a grading "
        f"kernel's sandbox: {', '.join(seen['device_files']) or 'none'}"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + ".",
        f"- CUDA in the sandbox, under autograde's limits (RLIMIT_DATA {limits.memory_limit >> 30} "
        f"GiB, {limits.tasks_limit} tasks, {limits.cpu_limit} s of CPU): "
        + ("available, a sum on the GPU ran" if seen.get("sum") == float(1 << 20) else "no")
        + (" (--device cpu hides the GPUs)" if device == "cpu" else "")
        + (f" ({seen['cuda_error']})" if "cuda_error" in seen else "")
        + ".",
    ]
    allowed = kernel_environment()
    dropped = sorted(n for n in os.environ if n.startswith(GPU_VARIABLES) and n not in allowed)
    if dropped:
        lines.append(f"- Set here but not passed into the sandbox: {', '.join(dropped)}.")
    problems = []
    if device == "cuda" and seen.get("sum") != float(1 << 20):
        problems.append("CUDA does not work inside the grading sandbox")
    if missing:
        problems.append(f"device files missing in the sandbox: {', '.join(missing)}")
    return lines, problems


def make_class(course: Path, day: str, kinds: tuple) -> None:
    """A course folder holding `day`'s source and release and one submission per kind, as
    tools/grading_benchmark.py builds them (the student is named after the kind)."""
    course.mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder / day, course / folder / day)
    for kind in kinds:
        path = course / "submitted" / kind / day / f"{day}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(submission(day, kind), path)


def class_scores(course: Path, day: str) -> dict:
    """student -> (score, max score), from the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course}/gradebook.db") as gradebook:
        return {s.student_id: (s.score, s.max_score) for s in gradebook.assignment_submissions(day)}


def expected_score(kind: str, score: float, most: float) -> bool:
    """A correct submission gets every point, a broken one none, a partial one some."""
    return {"correct": score == most > 0, "broken": score == 0}.get(kind, 0 < score < most)


def grading(device: str, sizes: Sizes) -> Part:
    from grader.autograde import parallel

    part = Part()
    day, kinds = sizes.grade_day, sizes.grade_class
    lines, part.problems = sandbox_lines(sandbox_probe(), device)
    command = ["-m", "grader", "autograde", day, "--workers", "2"]
    parallel.scripts_on_path()  # nbgrader runs `alembic` from this Python's scripts
    with tempfile.TemporaryDirectory(prefix="gpu-check-class-") as scratch:
        course = Path(scratch) / "course"
        make_class(course, day, kinds)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *command], cwd=course, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        scores = class_scores(course, day)
        rows = []
        for kind in kinds:
            score, most = scores.get(kind, (None, None))
            graded = course / "autograded" / kind / day / f"{day}.ipynb"
            seen = device_line(nbformat.read(graded, as_version=4)) if graded.exists() else ""
            right = score is not None and expected_score(kind, score, most)
            shown = "-" if score is None else f"{score:g} / {most:g}"
            rows.append((kind, shown, seen or "-", "yes" if right else "NO"))
            if not right:
                part.problems.append(f"{kind} graded {score} of {most}")
            if device == "cuda" and not seen.startswith("CUDA"):
                part.problems.append(
                    f"{kind} was not graded on the GPU ({seen or 'no device line'})"
                )
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    part.body = [
        f"`python {' '.join(command)}` in a scratch course ({len(kinds)} submissions built as "
        f"tools/grading_benchmark.py builds them): exit {done.returncode}, {seconds:.0f} s. "
        f"{summary}",
        "",
        *markdown_table(
            ["student", "score", "device in the grading kernel", "as expected"],
            rows,
        ),
        "",
        *lines,
    ]
    if done.returncode != 0:
        part.problems.append(f"autograde exit {done.returncode}")
        part.body += ["", "```", done.stderr.strip()[-2000:], "```"]
    return part


# ----------------------------------------------------------------------------- the report

# name -> (the section's title, the function that runs it)
PARTS = {
    "tests": ("GPU tests", gpu_tests),
    "notebooks": ("Solution notebooks", notebooks),
    "flash": ("FlashAttention in Triton against SDPA", flash),
    "scan": ("Scans", scans),
    "memory": ("Peak memory against the estimator", memory),
    "grading": ("Grading a class", grading),
}


def run_part(name: str, device: str, sizes: Sizes) -> Part:
    """One part, timed; a crash is reported in its section, never raised (the others still run)."""
    print(f"gpu check: {name} ...", file=sys.stderr, flush=True)
    title, run = PARTS[name]
    start = time.perf_counter()
    try:
        part = run(device, sizes)
    except Exception as exc:
        part = Part(body=["```", traceback.format_exc()[-3000:].rstrip(), "```"])
        part.problems.append(f"crashed: {type(exc).__name__}: {str(exc)[:200]}")
    part.title, part.seconds = title, time.perf_counter() - start
    return part


def report(parts: list, device: str, quick: bool, seconds: float) -> str:
    import torch

    import course

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"# GPU check{' (quick)' if quick else ''}",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit "
        f"{commit or 'unknown'}, torch {torch.__version__}, {course.describe_device()}; "
        f"device {device}; {seconds:.0f} s in all.",
        "",
        "## Targets",
        "",
        *[f"- {t.status}: {t.name} ({t.why})" for p in parts for t in p.targets],
        "",
        "## Parts",
        "",
        *markdown_table(
            ["part", "result", "seconds"],
            [(p.title, "; ".join(p.problems) or "ok", f"{p.seconds:.0f}") for p in parts],
        ),
    ]
    for p in parts:
        lines += ["", f"## {p.title}", "", *p.body]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--report", type=Path, default=Path("gpu-report.md"), metavar="FILE")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu"],
        default="auto",
        help="auto: CUDA, or one line and exit 0 without it; cpu: the GPUs hidden (with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one notebook")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=list(PARTS),
        metavar="PART",
        help=f"run only these ({', '.join(PARTS)})",
    )
    parser.add_argument(
        "--days",
        nargs="+",
        choices=days(),
        metavar="DAY",
        help="solution notebooks to run (default: all ten; --quick: day01-sdpa)",
    )
    args = parser.parse_args(argv)
    if args.device == "cpu" and not args.quick:
        parser.error("--device cpu runs Triton through its interpreter: only with --quick")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts: the course picks the CPU
    import torch

    if args.device == "auto" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    device = "cuda" if args.device == "auto" else "cpu"
    sizes = QUICK if args.quick else FULL
    if args.days:
        sizes = dataclasses.replace(sizes, days=tuple(args.days))
    start = time.perf_counter()
    parts = [run_part(name, device, sizes) for name in args.parts]
    args.report.write_text(report(parts, device, args.quick, time.perf_counter() - start))
    for target in (t for p in parts for t in p.targets):
        print(f"{target.status}: {target.name}")
    for p in parts:
        print(f"{p.title}: {'; '.join(p.problems) or 'ok'}")
    print(f"report: {args.report}")
    failed = any(p.problems for p in parts) or any(
        t.status == "FAIL" for p in parts for t in p.targets
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
