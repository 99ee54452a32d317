"""Watching the student's Triton launches while a check runs: each launch is counted and, in the
interpreter, every load and store is checked against the memory of the launch's tensors."""

import contextlib
import sys

import numpy as np
import torch

import course.reference.flash_triton
from grader.harness.checking import Mistake, hint
from grader.harness.measuring import measuring
from grader.suites.day07_flash_triton.hints import LIBRARY


class KernelWatch:
    """What the Triton launches inside a `watch_kernels()` block did."""

    def __init__(self):
        self.launches = 0
        self.out_of_bounds = None  # (kernel, "load"/"store", lanes) of the first bad access
        self.extents = []  # (start, end) bytes of the tensors given to the current launch
        self.on_cpu = []
        self.library_kernel = None  # the first of the course's own kernels launched, if any
        self.elements_loaded = 0  # active lanes of every tl.load (counted in the interpreter only)

    def absorb(self, seen: dict):
        """Add what the same watch saw in the student's kernel (grader/harness/measuring)."""
        self.launches += seen["launches"]
        self.out_of_bounds = self.out_of_bounds or seen["out_of_bounds"]
        self.library_kernel = self.library_kernel or seen["library_kernel"]
        self.elements_loaded += seen.get("elements_loaded", 0)


def _extent(t: torch.Tensor):
    if t.numel() == 0:
        return None
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    return t.data_ptr(), t.data_ptr() + (span + 1) * t.element_size()


def _inside(ptrs: np.ndarray, mask: np.ndarray, itemsize: int, extents: list) -> np.ndarray:
    ok = ~mask
    for start, end in extents:
        ok |= (ptrs >= start) & (ptrs + itemsize <= end)
    return ok


@contextlib.contextmanager
def watch_kernels():
    """Count Triton launches; in the interpreter, also check every load and store's bounds."""
    from triton.runtime import interpreter, jit

    watch = KernelWatch()
    originals = {}

    def counting(cls):
        run = cls.run

        def run_counted(self, *args, grid, warmup, **kwargs):
            if not warmup:
                watch.launches += 1
                module = getattr(getattr(self, "fn", None), "__module__", "") or ""
                if module.startswith("course.") and not watch.library_kernel:
                    watch.library_kernel = f"{module}.{getattr(self.fn, '__name__', 'kernel')}"
                tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
                watch.extents = [e for e in map(_extent, tensors) if e]
                watch.on_cpu = [t.device.type == "cpu" for t in tensors]
            # The guard's profile hook (it looks for calls of the course's Python functions)
            # triples the interpreter's time; a kernel body cannot call those functions, and a
            # launch of the course's own kernels is caught above, so it is off while one runs.
            profile = sys.getprofile()
            sys.setprofile(None)
            try:
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                sys.setprofile(profile)

        originals[cls] = run
        cls.run = run_counted

    counting(jit.JITFunction)
    counting(interpreter.InterpretedFunction)
    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def _host_extents():
        # on a CPU the interpreter works on the tensors' own memory (GPU tensors are copied to
        # the host first, at other addresses: then only launches are counted)
        return watch.extents if all(t_on_cpu for t_on_cpu in watch.on_cpu) else []

    def inside_mask(access, ptrs, mask):
        """(ok, mask): which active pointers fall inside the launch's tensors, and the mask cut
        down to them; the first access that strays outside is recorded."""
        itemsize = ptrs.get_element_ty().primitive_bitwidth // 8
        active = np.broadcast_to(mask.data, ptrs.data.shape)
        extents = _host_extents()
        ok = _inside(ptrs.data, active, itemsize, extents) if extents else np.ones_like(active)
        if not ok.all():
            watch.out_of_bounds = watch.out_of_bounds or (access, int((~ok).sum()))
            mask = interpreter.TensorHandle(active & ok, mask.dtype)
        return ok, mask

    def checked_load(self, ptrs, mask, other, *rest):
        watch.elements_loaded += int(np.broadcast_to(mask.data, ptrs.data.shape).sum())
        ok, mask = inside_mask("load", ptrs, mask)
        result = load(self, ptrs, mask, other, *rest)
        if ok.all():
            return result
        data = result.data.copy()
        if np.issubdtype(data.dtype, np.floating):
            data[~ok] = np.nan  # what was read out of bounds is garbage
        return interpreter.TensorHandle(data, result.dtype)

    def checked_store(self, ptrs, value, mask, *rest):
        _, mask = inside_mask("store", ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    builder.create_masked_load, builder.create_masked_store = checked_load, checked_store
    try:
        with measuring(f"{__name__}:watch_kernels", watch.absorb):
            yield watch
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store
        for cls, run in originals.items():
            cls.run = run


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
    """impl(*args) with its Triton launches watched: it must launch one, in bounds. Arguments go
    to the run device (differentiably), results come back to the CPU (no-ops without a GPU)."""
    return watched_with_counts(impl, what, *args, **kwargs)[0]


def watched_with_counts(impl, what: str, *args, **kwargs):
    """watched(impl, ...) and the KernelWatch that saw it (what it loaded, for instance)."""
    args = [_to_run(a) for a in args]
    kwargs = {name: _to_run(a) for name, a in kwargs.items()}
    with watch_kernels() as watch:
        result = impl(*args, **kwargs)
    expect_triton(watch, what)
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
        kind, lanes = watch.out_of_bounds
        description, fix = hint("out_of_bounds")
        raise Mistake(
            f"{what}: a {kind} touched {lanes} element(s) outside the tensors: it looks "
            f"like {description}.",
            fix,
            "out_of_bounds",
        )
