"""Watching the student's Triton launches: each launch is counted and, in the interpreter, every
load and store is checked against the memory of the launch's tensors.

A check watches the launches of the student's call with `watch_kernels()` and reports what it
saw (`expect_in_bounds`). Outside the checks, `watch_every_launch()` (the setup cell of the
Triton days runs it) watches every launch of the notebook: in the interpreter a load or store
outside the tensors reads or writes the process's own memory, and a stray store kills the
kernel with no message; watched, the stray lanes are masked off and the launch raises
OutOfBounds, which names the mistake. On a GPU, Triton checks nothing and nothing is watched
outside the checks.
"""

import contextlib
import sys

import numpy as np
import torch

from grader.harness.checking import Mistake, hint
from grader.harness.measuring import measuring

OUT_OF_BOUNDS = (
    "a load or store outside the tensors (a lane past the end of the last, partial block)",
    "mask every tl.load and tl.store of a block that can stick out: offsets < n for rows and "
    "columns, e.g. tl.load(ptr + offs, mask=offs < n, other=0.0) and "
    "tl.store(ptr + offs, x, mask=offs < n).",
)


class KernelWatch:
    """What the Triton launches inside a `watch_kernels()` block did."""

    def __init__(self):
        self.launches = 0
        self.out_of_bounds = None  # ("load"/"store", lanes, the argument) of the first bad access
        self.extents = []  # (start, end, argument name) bytes of the current launch's tensors
        self.on_cpu = []
        self.library_kernel = None  # the first of the course's own kernels launched, if any
        self.elements_loaded = 0  # active lanes of every tl.load (counted in the interpreter only)

    def absorb(self, seen: dict):
        """Add what the same watch saw in the student's kernel (grader/harness/measuring)."""
        self.launches += seen["launches"]
        self.out_of_bounds = self.out_of_bounds or seen["out_of_bounds"]
        self.library_kernel = self.library_kernel or seen["library_kernel"]
        self.elements_loaded += seen.get("elements_loaded", 0)


def _extent(name: str, t: torch.Tensor):
    if t.numel() == 0:
        return None
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    return t.data_ptr(), t.data_ptr() + (span + 1) * t.element_size(), name


def _inside(ptrs: np.ndarray, mask: np.ndarray, itemsize: int, extents: list) -> tuple:
    """(ok, name): which lanes are inactive or inside the one tensor this access reads or
    writes, and that tensor's argument name. It is the tensor most of the active lanes fall in,
    or, where none falls in any, the tensor nearest the first active lane. A lane in another of
    the launch's tensors is out of bounds too: a store running past the end of `y` into `x`,
    allocated just after it, corrupts `x`."""
    inside = [mask & (ptrs >= start) & (ptrs + itemsize <= end) for start, end, _ in extents]
    counts = [np.count_nonzero(lanes) for lanes in inside]
    if max(counts) > 0:
        best = counts.index(max(counts))
    else:  # every lane strays: name the tensor it came closest to
        first = ptrs[mask].flat[0] if mask.any() else 0
        best = min(range(len(extents)), key=lambda i: _distance(first, *extents[i][:2]))
    return ~mask | inside[best], extents[best][2]


def _distance(ptr: int, start: int, end: int) -> int:
    return start - ptr if ptr < start else max(0, ptr - end + 1)


_open_watches = []  # the watch_kernels() blocks now open: a check's watch reports what it sees


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
                named = [*zip(getattr(self, "arg_names", ()), args), *kwargs.items()]
                tensors = [(n, a) for n, a in named if isinstance(a, torch.Tensor)]
                watch.extents = [e for e in (_extent(n, t) for n, t in tensors) if e]
                watch.on_cpu = [t.device.type == "cpu" for _, t in tensors]
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
        if not extents:
            return np.ones_like(active), mask
        ok, tensor = _inside(ptrs.data, active, itemsize, extents)
        if not ok.all():
            watch.out_of_bounds = watch.out_of_bounds or (access, int((~ok).sum()), tensor)
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
    _open_watches.append(watch)
    try:
        with measuring(f"{__name__}:watch_kernels", watch.absorb), unwritten_reads_nan():
            yield watch
    finally:
        _open_watches.remove(watch)
        builder.create_masked_load, builder.create_masked_store = load, store
        for cls, run in originals.items():
            cls.run = run


@contextlib.contextmanager
def unwritten_reads_nan():
    """Inside, new tensors (torch.empty and the like) come filled with NaN (torch's deterministic
    mode fills uninitialised memory), so an element a kernel never writes reads as NaN, not as
    whatever an earlier call of the same size left there, which can look right."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def out_of_bounds_message(what: str, watch: KernelWatch) -> str:
    """What the watch's first stray access looks like, for `what` (a function or a kernel)."""
    kind, lanes, tensor = watch.out_of_bounds
    return (
        f"{what}: a {kind} {'from' if kind == 'load' else 'to'} {tensor} touched {lanes} "
        f"element(s) outside it: it looks like {OUT_OF_BOUNDS[0]}."
    )


def expect_in_bounds(watch: KernelWatch, what: str) -> None:
    """A check's verdict on the launches it watched: every load and store inside the tensors."""
    if watch.out_of_bounds:
        raise Mistake(out_of_bounds_message(what, watch), OUT_OF_BOUNDS[1], "out_of_bounds")


def name_row_stride_block(strayed: str, call, oracle, *inputs: torch.Tensor) -> None:
    """After a launch over several rows strayed out of bounds (`strayed`, its message from
    out_of_bounds_message): if `call` on the first row of each input alone stays in bounds and
    agrees with `oracle` on that row, the later rows start in the wrong place, the row stride is
    BLOCK: raise the mistake row_stride_block, with the running suite's hint. Else return, for
    the caller to report the stray as it is."""
    rows = [x.reshape(-1, x.shape[-1])[:1].clone() for x in inputs]  # (1, n) each
    if rows[0].numel() == inputs[0].numel():
        return  # one row already: row 0 itself strayed
    try:
        with watch_kernels() as watch:
            out = call(*rows)
    except Exception:  # noqa: BLE001  (out of bounds again, or anything else: not this mistake)
        return
    expected = oracle(*rows)
    if (
        watch.out_of_bounds
        or not isinstance(out, torch.Tensor)
        or out.shape != expected.shape
        or not torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)
    ):
        return
    seen = strayed.split(": it looks like")[0]  # what strayed, not the usual guess
    description, fix = hint("row_stride_block")
    raise Mistake(
        f"{seen}; row 0 alone stays in bounds and is right: it looks like {description}.",
        fix,
        "row_stride_block",
    ) from None


class OutOfBounds(Mistake):
    """A launch outside the checks loaded or stored outside its tensors (interpreter only)."""

    def __init__(self, kernel: str, watch: KernelWatch):
        super().__init__(out_of_bounds_message(kernel, watch), OUT_OF_BOUNDS[1], "out_of_bounds")

    def __str__(self):
        # raised in a notebook cell, not a check: the hint goes in the error's one line
        return f"{self.message}\nhint: {self.hint}"


def watch_every_launch() -> None:
    """From now on, watch every Triton launch the interpreter runs outside a check: a stray load
    or store raises OutOfBounds instead of corrupting memory. Nothing on a GPU."""
    from triton.runtime.interpreter import InterpretedFunction

    import course.reference.flash_triton

    if not course.reference.flash_triton.interpreted():
        return
    launch = InterpretedFunction.run
    if getattr(launch, "watches_every_launch", False):
        return  # the setup cell ran again: the launches are watched already

    def run_in_bounds(self, *args, **kwargs):
        if _open_watches:  # a check's launch: the check reports what its watch saw
            return launch(self, *args, **kwargs)
        with watch_kernels() as watch:
            # through the watch's counting `run`, which notes the launch's tensors and then
            # comes back here (with the watch open) to launch
            result = InterpretedFunction.run(self, *args, **kwargs)
        if watch.out_of_bounds:
            raise OutOfBounds(self.__name__, watch)
        return result

    run_in_bounds.watches_every_launch = True
    InterpretedFunction.run = run_in_bounds


@contextlib.contextmanager
def tree_shaped_scans():
    """Inside the block, the interpreter's tl.associative_scan combines in a tree, as a GPU does
    (Hillis-Steele: at step d = 1, 2, 4, ... every lane absorbs the lane d before it), not left
    to right one element at a time: a combine that is not associative then gives the wrong
    result here too, as it would on a GPU. Nothing changes when Triton compiles for a GPU."""
    from triton.runtime import interpreter

    scans = interpreter.ScanOps
    left_to_right = scans.generic_scan

    def tree_scan(self, inputs):
        fields = [np.moveaxis(x.handle.data, self.axis, 0) for x in inputs]  # scan axis first
        step = 1
        while step < fields[0].shape[0]:
            # Triton blocks are powers of two long: the earlier operands are the fields rolled
            # by `step`, whose first `step` lanes (wrapped around) are combined and dropped.
            earlier = [self.to_tensor(np.roll(f, step, 0), x.dtype) for f, x in zip(fields, inputs)]
            later = [self.to_tensor(f, x.dtype) for f, x in zip(fields, inputs)]
            with np.errstate(all="ignore"):
                combined = self.combine_fn.fn(*earlier, *later)
            combined = combined if isinstance(combined, tuple) else (combined,)
            fields = [
                np.concatenate([f[:step], np.broadcast_to(_data(c), f.shape)[step:]])
                for f, c in zip(fields, combined)
            ]
            step *= 2
        return [
            self.to_tensor(np.moveaxis(f, 0, self.axis), x.dtype) for f, x in zip(fields, inputs)
        ]

    scans.generic_scan = tree_scan
    try:
        # graded from outside the student's kernel, the scans there combine in a tree too
        with measuring(f"{__name__}:tree_shaped_scans", lambda seen: None):
            yield
    finally:
        scans.generic_scan = left_to_right


def _data(value):
    """The numbers of what a combine function returned: a Triton tensor or a Python number."""
    return value.handle.data if hasattr(value, "handle") else np.asarray(value)
