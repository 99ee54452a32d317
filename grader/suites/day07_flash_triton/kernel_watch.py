"""Day 07's use of the watch on Triton's launches (grader/harness/triton_watch): where the
student's kernels run, and the verdict on what a check's watch saw (a launch, of the student's
own kernel, in bounds)."""

import torch

import course.reference.flash_triton
from grader.harness.checking import Mistake, hint
from grader.harness.triton_watch import KernelWatch, out_of_bounds_message, watch_kernels
from grader.suites._common import call_unchanged
from grader.suites.day07_flash_triton.hints import LIBRARY

# the day's functions by their number of arguments: triton_softmax(x), triton_add(x, y),
# flash_attention_triton(q, k, v) and FlashAttentionTriton.apply(q, k, v, is_causal)
ARGUMENT_NAMES = {1: ("x",), 2: ("x", "y"), 3: ("q", "k", "v"), 4: ("q", "k", "v", "is_causal")}


def run_device() -> torch.device:
    """Where the student's kernels run: the GPU when Triton compiles for one, else the CPU."""
    gpu = torch.cuda.is_available() and not course.reference.flash_triton.interpreted()
    return torch.device("cuda" if gpu else "cpu")


def flash_dtype() -> torch.dtype:
    """The attention checks' dtype: float32 in the interpreter, float16 on a GPU (where float32
    tl.dot runs in TF32, too coarse for float32's tolerance)."""
    return torch.float16 if run_device().type == "cuda" else torch.float32


def _to_run(x):
    return x.to(run_device()) if isinstance(x, torch.Tensor) else x


def _to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.cpu()
    return tuple(_to_cpu(t) for t in x) if isinstance(x, tuple) else x


def watched(impl, what: str, *args, **kwargs):
    """impl(*args) with its Triton launches watched: it must launch one, in bounds, and leave its
    inputs as they were (a kernel that stores into an input, out = x2 where x2 is x itself, is
    modified_input). Arguments go to the run device (differentiably), results come back to the
    CPU (no-ops without a GPU)."""
    return watched_with_counts(impl, what, *args, **kwargs)[0]


def watched_with_counts(impl, what: str, *args, **kwargs):
    """watched(impl, ...) and the KernelWatch that saw it (what it loaded, for instance)."""
    args = [_to_run(a) for a in args]
    kwargs = {name: _to_run(a) for name, a in kwargs.items()}
    names = ARGUMENT_NAMES.get(len(args), [f"argument {i + 1}" for i in range(len(args))])
    changed = None
    with watch_kernels() as watch:
        try:
            result = call_unchanged(impl, dict(zip(names, args)), **kwargs)
        except Mistake as mistake:
            if mistake.key != "modified_input":
                raise
            changed = mistake  # named after the launch's own verdicts: no kernel, out of bounds
    expect_triton(watch, what)
    if changed is not None:
        raise changed
    return _to_cpu(result), watch


def expect_triton(watch: KernelWatch, what: str, key: str = "no_triton_kernel") -> None:
    if watch.library_kernel:
        raise Mistake(
            f"{what} launches {watch.library_kernel}, the course's own kernel.", LIBRARY, "shortcut"
        )
    if watch.launches == 0:
        description, fix = hint(key)
        raise Mistake(f"{what}: it looks like {description}.", fix, key)
    if watch.out_of_bounds:
        raise Mistake(out_of_bounds_message(what, watch), hint("out_of_bounds")[1], "out_of_bounds")
