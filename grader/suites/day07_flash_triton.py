"""Checks for day07-flash-triton: triton_add, triton_softmax, flash_attention_triton and the
FlashAttentionTriton autograd.Function (Triton forward and backward).

Oracles: torch elementwise add and a float64 softmax; attention in float64 from its definition
(scores, bottom-right causal mask, logsumexp, weights @ v); gradients by autograd through that
float64 attention. Each named mistake is the same oracle with one thing changed: the online
softmax simulated tile by tile in float64 without the rescale of acc (and l), padded keys left
unmasked, the logsumexp in base 2 or without the max, the wrong scale, a top-left or ignored
causal mask, the backward without the D term or without the causal mask.

Honest Triton checks, while a student's function runs (`watch_kernels`):
- every Triton launch is counted (JITFunction.run / the interpreter's InterpretedFunction.run),
  so a pure-torch reimplementation is named `no_triton_kernel`;
- in the interpreter, every load and store is checked against the memory of the tensors given to
  the launch (the interpreter itself does not flag out-of-bounds accesses): a lane outside reads
  NaN, is never written, and the mistake `out_of_bounds` is named. On a GPU the ragged check
  poisons the memory after the inputs with NaN instead.
"""

import contextlib
import math
import sys

import numpy as np
import torch
import triton

import course  # noqa: F401  (Triton in interpreter mode without a GPU, before triton is imported)
import course.reference.flash_triton
from grader.harness.checking import (
    Mistake,
    NotImplementedYet,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    hint,
    named,
)
from grader.harness.guard import SDPA, SOFTMAX
from grader.suites import Exercise
from grader.suites._common import draw, randn

HINTS = {
    "no_triton_kernel": (
        "no Triton kernel launched: the result was computed with torch operations",
        "launch your @triton.jit kernel with kernel[grid](...); torch may only allocate the "
        "output, reshape and check the inputs.",
    ),
    "out_of_bounds": (
        "a load or store outside the tensors (a lane past the end of the last, partial block)",
        "mask every tl.load and tl.store of a block that can stick out: offsets < n for rows "
        "and columns, e.g. tl.load(ptr + offs, mask=offs < n, other=0.0).",
    ),
    "grid_too_small": (
        "the last elements never written: the grid has n // BLOCK programs instead of ceil(n / BLOCK)",
        "launch triton.cdiv(n, BLOCK) programs and mask the last block with offsets < n.",
    ),
    "non_contiguous": (
        "wrong values for non-contiguous inputs (a transpose or a strided slice) though right "
        "for contiguous ones",
        "the kernel assumes rows one after the other: call .contiguous() on the inputs (or pass "
        "the strides) before launching.",
    ),
    "padding_counted": (
        "the padded lanes of the block counted in the sum: loaded with other=0.0, so each adds exp(0 - max)",
        "load the lanes past n_cols with other=float('-inf'): exp(-inf) = 0 leaves max and sum alone.",
    ),
    "wrong_axis": (
        "softmax over the wrong axis (columns instead of rows)",
        "one program per row: normalise along the last axis, tl.max(x, axis=0) and "
        "tl.sum(x, axis=0) over the row's block.",
    ),
    "not_stable": (
        "inf or NaN for large inputs: exp() of an unshifted score overflows",
        "subtract the (running) max before exp: exp(x - max) is at most 1.",
    ),
    "not_a_pair": (
        "something other than the pair (out, lse)",
        "return out, lse: out (..., Lq, D) in q's dtype, lse (..., Lq) float32.",
    ),
    "missing_rescale": (
        "the online softmax without any rescale: acc and l summed tile by tile with the "
        "newest max only",
        "when the running max grows from m_i to m_new, multiply both l_i and acc by "
        "alpha = exp(m_i - m_new) before adding the new tile.",
    ),
    "rescale_l_not_acc": (
        "l rescaled when the max changes but acc not",
        "acc holds sums of exp(s - m_i) * v, so it needs the same alpha = exp(m_i - m_new) as l: "
        "acc = acc * alpha[:, None] + tl.dot(p, v).",
    ),
    "not_normalised": (
        "the output not divided by the softmax denominator l",
        "after the last key tile, out = acc / l_i[:, None].",
    ),
    "pad_keys_not_masked": (
        "the keys past Lk in the last, partial tile counted (their score 0 added to the softmax)",
        "set the scores of keys with offs_n >= Lk to -inf (tl.where) before the max and exp: "
        "masking the load alone gives them score 0, not -inf.",
    ),
    "wrong_scale": (
        "scores scaled by something other than 1 / sqrt(D) (no scale, 1 / D, or exp2 without "
        "log2(e) folded in)",
        "s = (q @ k^T) / sqrt(D); with tl.exp2, multiply the scores by log2(e) / sqrt(D) and "
        "keep m_i in the same base-2 units.",
    ),
    "lse_base2": (
        "the logsumexp in base 2 (m + log2(l) in exp2 units) instead of the natural log",
        "with exp2, m_i is in log2 units: lse = (m_i + tl.log2(l_i)) * ln(2); or work in "
        "natural units with tl.exp and tl.log.",
    ),
    "lse_without_max": (
        "the logsumexp without the running max (log(l) alone)",
        "lse_i = m_i + log(l_i): l_i is a sum of exp(s - m_i).",
    ),
    "causal_ignored": (
        "causal=True ignored: every query sees every key",
        "with causal=True, key j is visible to query i only when j <= Lk - Lq + i.",
    ),
    "causal_top_left": (
        "a top-left causal mask (query i sees keys j <= i) instead of the course's bottom-right one",
        "query i sits at absolute position Lk - Lq + i (day02's causal_mask): keep key j when "
        "j <= Lk - Lq + i, and loop over key tiles up to min(Lk, Lk - Lq + start_m + BLOCK_M).",
    ),
    "causal_wrong_side": (
        "the causal mask on the wrong side of the diagonal (later keys kept, or the diagonal dropped)",
        "in the diagonal tile keep key j for query i when j <= Lk - Lq + i: tl.where(offs_n[None, :] "
        "<= (Lk - Lq) + offs_m[:, None], s, float('-inf')).",
    ),
    "not_an_autograd_function": (
        "FlashAttentionTriton is not a torch.autograd.Function subclass",
        "class FlashAttentionTriton(torch.autograd.Function) with @staticmethod forward(ctx, q, k, "
        "v, is_causal=False) and backward(ctx, dout); it is used as FlashAttentionTriton.apply(...).",
    ),
    "saves_attention_matrix": (
        "forward saving the (Lq, Lk) attention matrix (or something else than q, k, v, out and one lse)",
        "ctx.save_for_backward(q, k, v, out, lse): five tensors, lse of shape (..., Lq); the "
        "backward recomputes P = exp(S - lse) tile by tile.",
    ),
    "backward_not_triton": (
        "a backward pass that launches no Triton kernel",
        "write the backward in Triton: a kernel for D = rowsum(dO * O), one for dK, dV per key "
        "tile, one for dQ per query tile (or atomics for dQ).",
    ),
    "no_d_term": (
        "dS = P * dP, without the D term",
        "dS = P * (dP - D[:, None]) with D_i = rowsum(dO_i * O_i) (the softmax Jacobian's row term); "
        "compute D in a small preprocessing kernel.",
    ),
    "grad_wrong_scale": (
        "dQ and dK off by the softmax scale (missing, or applied twice)",
        "S = scale * Q K^T, so dQ = scale * dS K and dK = scale * dS^T Q (once each); dV = P^T dO "
        "has no scale.",
    ),
    "causal_backward": (
        "gradients right without a mask but wrong with is_causal=True",
        "recompute P with the forward's causal mask (keys j <= Lk - Lq + i), and start / stop the "
        "tile loops where the forward does: the backward must zero exactly the same entries.",
    ),
    "no_error_for_bad_input": (
        "bad input accepted without a clear error",
        "check shapes, head_dim and dtype first and raise ValueError naming them, e.g. "
        '`raise ValueError(f"head_dim must be one of (16, 32, 64, 128), got {D}")`.',
    ),
}

LIBRARY = "course.reference.flash_triton is the course's library version: write yours."
FORBIDDEN = {
    **{
        name: "use tl.max, tl.exp and tl.sum inside your kernel; no torch softmax."
        for name in SOFTMAX
    },
    **{
        name: "write the attention in your Triton kernel; F.scaled_dot_product_attention is what "
        "you compare against in the Measure section, not what you call."
        for name in SDPA
    },
    **{
        fn: LIBRARY
        for fn in (
            course.reference.flash_triton.triton_add,
            course.reference.flash_triton.triton_softmax,
            course.reference.flash_triton.flash_attention_triton,
            course.reference.flash_triton._forward,
            course.reference.flash_triton._backward,
            course.reference.flash_triton.flash_attention,
            course.reference.flash_triton.FlashAttentionTriton.forward,
            course.reference.flash_triton.FlashAttentionTriton.backward,
        )
    },
}
try:  # day06's PyTorch version, when it exists: not a shortcut either
    import course.reference.online_softmax as _day06

    FORBIDDEN.update(
        {
            fn: "course.reference.online_softmax is day06's library version: today's answer is a Triton kernel."
            for name in ("tiled_attention", "flash_attention_torch")
            if callable(fn := getattr(_day06, name, None)) and hasattr(fn, "__code__")
        }
    )
    for _name in ("forward", "backward"):
        _fn = getattr(getattr(_day06, "FlashAttentionTorch", None), _name, None)
        if hasattr(_fn, "__code__"):
            FORBIDDEN[_fn] = (
                "course.reference.online_softmax is day06's library version: today's answer is a Triton kernel."
            )
except Exception:  # noqa: BLE001  (absent or broken: nothing to forbid)
    pass

BLOCKS = (16, 32, 64)  # key-tile sizes a student's kernel may use on the CPU


# ----------------------------------------------------------------------------- watching Triton


class KernelWatch:
    """What the Triton launches inside a `watch_kernels()` block did."""

    def __init__(self):
        self.launches = 0
        self.out_of_bounds = None  # (kernel, "load"/"store", lanes) of the first bad access
        self.extents = []  # (start, end) bytes of the tensors given to the current launch
        self.on_cpu = []
        self.library_kernel = None  # the first of the course's own kernels launched, if any


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
    args = [_to_run(a) for a in args]
    kwargs = {name: _to_run(a) for name, a in kwargs.items()}
    with watch_kernels() as watch:
        result = impl(*args, **kwargs)
    expect_triton(watch, what)
    return _to_cpu(result)


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


# ----------------------------------------------------------------------------- triton_add


def add_matches(triton_add, rng):
    """matches x + y for sizes that are not a multiple of the block (1-D, 2-D, 3-D), in bounds"""
    for shape in [
        (draw(rng, 1000, 3000),),
        (draw(rng, 3, 9), draw(rng, 100, 300)),
        (2, draw(rng, 2, 5), draw(rng, 7, 40)),
    ]:
        x, y = randn(shape, rng), randn(shape, rng)
        out = watched(triton_add, f"triton_add on {shape}", x, y)
        expect_tensor(out, f"triton_add on {shape}", shape, torch.float32)
        ref = x.double() + y.double()
        wrong = (
            ~torch.isclose(out.double(), ref, rtol=1e-6, atol=1e-6)
            if out.shape == ref.shape
            else None
        )
        if wrong is not None and wrong.any():
            flat = wrong.reshape(-1)
            first = int(flat.nonzero()[0])
            if first > 0 and flat[first:].all():
                description, fix = hint("grid_too_small")
                raise Mistake(
                    f"triton_add on {shape}: the first {first} elements are right, the "
                    f"last {flat.numel() - first} wrong: it looks like {description}.",
                    fix,
                    "grid_too_small",
                )
        expect_close(out, ref, torch.float32, f"triton_add on {shape}")


def add_non_contiguous(triton_add, rng):
    """non-contiguous inputs: a transpose and a strided slice"""
    a, b = randn((draw(rng, 20, 40), draw(rng, 20, 40)), rng), randn((40, 80), rng)
    for x, y, what in [
        (a.T, randn(a.T.shape, rng), "x = a.T"),
        (b[:, ::2], randn((40, 40), rng), "x = b[:, ::2]"),
    ]:
        out = watched(triton_add, f"triton_add with {what}", x, y)
        ref = x.double() + y.double()
        try:
            expect_close(out, ref, torch.float32, f"triton_add with {what} (non-contiguous)")
        except Mistake as mistake:
            if mistake.key not in ("wrong_values", "out_of_bounds"):
                raise
            description, fix = hint("non_contiguous")
            raise Mistake(
                f"triton_add with {what}: {mistake.message} It looks like {description}.",
                fix,
                "non_contiguous",
            ) from None


def add_rejects_bad_input(triton_add, rng):
    """shapes that differ, or dtypes that differ, give a clear ValueError"""
    n = draw(rng, 5, 20)
    x = randn((n,), rng)
    expect_value_error(
        lambda: triton_add(x, randn((n + 1,), rng)),
        f"triton_add of ({n},) and ({n + 1},)",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: triton_add(x, randn((n,), rng, torch.float64)),
        "triton_add of float32 and float64",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- triton_softmax


def softmax64(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = x.double()
    z = x - x.amax(dim, keepdim=True)
    return torch.exp(z) / torch.exp(z).sum(dim, keepdim=True)


def softmax_suspects(x):
    n = x.shape[-1]
    pad = triton.next_power_of_2(n) - n
    suspects = []
    if pad:
        padded = torch.cat([x.double(), x.new_zeros(*x.shape[:-1], pad, dtype=torch.float64)], -1)
        suspects.append(("padding_counted", softmax64(padded)[..., :n]))
    if x.ndim >= 2 and x.shape[-2] > 1:
        suspects.append(("wrong_axis", softmax64(x, -2)))
    return suspects


def softmax_matches(triton_softmax, rng):
    """row-wise softmax for rows whose length is not a power of two, any leading dims"""
    for shape in [(draw(rng, 3, 9), draw(rng, 20, 120)), (2, draw(rng, 2, 4), draw(rng, 5, 60))]:
        x = randn(shape, rng, scale=3.0)
        out = watched(triton_softmax, f"triton_softmax on {shape}", x)
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {shape}", softmax_suspects(x)
        )


def softmax_stable(triton_softmax, rng):
    """large inputs (up to 1e4) and -inf entries: finite, exact where expected"""
    shape = (draw(rng, 2, 5), draw(rng, 10, 70))
    x = randn(shape, rng, scale=1000.0) + 5000.0
    x[0, : draw(rng, 1, 5)] = float("-inf")
    out = watched(triton_softmax, f"triton_softmax on {shape} with entries near 1e4", x)
    expect_close(
        out,
        softmax64(x),
        torch.float32,
        f"triton_softmax on {shape} with entries near 1e4",
        softmax_suspects(x),
        nonfinite=named("not_stable"),
    )


def softmax_shapes(triton_softmax, rng):
    """a single row (1-D), rows of length 1, and a non-contiguous input"""
    n = draw(rng, 3, 50)
    cases = [
        (randn((n,), rng), f"({n},)"),
        (randn((draw(rng, 2, 4), 1), rng), "rows of length 1"),
        (randn((n, draw(rng, 3, 9)), rng).T, "a transposed (non-contiguous) input"),
    ]
    for x, what in cases:
        out = watched(triton_softmax, f"triton_softmax on {what}", x)
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {what}", softmax_suspects(x)
        )


def softmax_rejects_bad_input(triton_softmax, rng):
    """a 0-d tensor gives a clear ValueError"""
    expect_value_error(
        lambda: triton_softmax(torch.tensor(1.0)),
        "triton_softmax of a 0-d tensor",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- attention oracles


def visible(Lq: int, Lk: int, causal, kind: str = "bottom_right") -> torch.Tensor:
    """(Lq, Lk) bool, True = may attend."""
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    if not causal:
        return torch.ones(Lq, Lk, dtype=torch.bool)
    if kind == "top_left":
        return j <= i
    if kind == "strict":
        return j < Lk - Lq + i
    return j <= Lk - Lq + i


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().double()


def scores64(q, k, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (f64(q) @ f64(k).transpose(-1, -2)) * scale


def attention64(q, k, v, causal=False, kind="bottom_right", scale=None):
    """(out, lse) in float64, from the definition."""
    s = scores64(q, k, scale).masked_fill(
        ~visible(q.shape[-2], k.shape[-2], causal, kind), float("-inf")
    )
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    return p @ f64(v), lse


def online64(q, k, v, causal, block_n, variant):
    """The online softmax tile by tile in float64 with one planted mistake."""
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], k.shape[-2], causal), float("-inf"))
    v = f64(v)
    Lk = s.shape[-1]
    if variant == "pad_keys_not_masked":
        pad = -Lk % block_n
        s = torch.cat([s, s.new_zeros(*s.shape[:-1], pad)], -1)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], -2)
    m = torch.full(s.shape[:-1], float("-inf"), dtype=torch.float64)
    l = torch.zeros_like(m)
    acc = torch.zeros(*s.shape[:-1], v.shape[-1], dtype=torch.float64)
    for start in range(0, s.shape[-1], block_n):
        tile = s[..., start : start + block_n]
        m_new = torch.maximum(m, tile.amax(-1))
        p = torch.exp(tile - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l + p.sum(-1) if variant == "missing_rescale" else alpha * l + p.sum(-1)
        scale_acc = 1.0 if variant in ("missing_rescale", "rescale_l_not_acc") else alpha[..., None]
        acc = scale_acc * acc + p @ v[..., start : start + block_n, :]
        m = m_new
    return acc / l[..., None]


def out_suspects(q, k, v, causal):
    Lk, D = k.shape[-2], q.shape[-1]
    suspects = []
    for block_n in BLOCKS:
        if block_n < Lk:
            suspects += [
                (key, online64(q, k, v, causal, block_n, key))
                for key in ("missing_rescale", "rescale_l_not_acc")
            ]
        if Lk % block_n and not causal:
            suspects.append(
                ("pad_keys_not_masked", online64(q, k, v, causal, block_n, "pad_keys_not_masked"))
            )
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], Lk, causal), float("-inf"))
    suspects.append(("not_normalised", torch.exp(s - s.amax(-1, keepdim=True)) @ f64(v)))
    for scale in (1.0, 1 / D, math.log(2) / math.sqrt(D), 1 / (math.log(2) * math.sqrt(D))):
        suspects.append(("wrong_scale", attention64(q, k, v, causal, scale=scale)[0]))
    if causal:
        suspects += [
            ("causal_ignored", attention64(q, k, v, False)[0]),
            ("causal_top_left", attention64(q, k, v, True, "top_left")[0]),
        ]
        if q.shape[-2] < Lk:
            suspects.append(("causal_wrong_side", attention64(q, k, v, True, "strict")[0]))
    return suspects


def lse_suspects(q, k, causal):
    s = scores64(q, k).masked_fill(~visible(q.shape[-2], k.shape[-2], causal), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return [("lse_base2", lse / math.log(2)), ("lse_without_max", lse - s.amax(-1))]


def qkv(rng, lead, Lq, Lk, D, scale=1.0):
    dtype = flash_dtype()
    return (
        randn((*lead, Lq, D), rng, dtype, scale),
        randn((*lead, Lk, D), rng, dtype),
        randn((*lead, Lk, D), rng, dtype),
    )


def call_flash(flash, what, q, k, v, causal):
    """The student's (out, lse), watched."""
    result = watched(flash, what, q, k, v, causal=causal)
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}: it looks like {hint('not_a_pair')[0]}.",
            hint("not_a_pair")[1],
            "not_a_pair",
        )
    return result


def expect_attention(result, q, k, v, causal, what):
    out, lse = result
    ref_out, ref_lse = attention64(q, k, v, causal)
    expect_close(
        out,
        ref_out,
        q.dtype,
        f"out of {what}",
        out_suspects(q, k, v, causal),
        nonfinite=named("not_stable"),
    )
    expect_tensor(lse, f"lse of {what}", ref_lse.shape, torch.float32)
    # lse is float32 whatever the inputs; judged with the inputs' tolerance
    expect_close(lse.to(q.dtype), ref_lse, q.dtype, f"lse of {what}", lse_suspects(q, k, causal))


# ----------------------------------------------------------------------------- flash_attention_triton


def flash_matches(flash, rng):
    """(out, lse) match float64 attention: Lq != Lk, ragged lengths, head_dim 16 and 32"""
    Lq = draw(rng, 17, 28)
    Lk = Lq + draw(rng, 1, 8)
    D = (16, 32)[draw(rng, 0, 1)]
    q, k, v = qkv(rng, (1, 2), Lq, Lk, D, scale=draw(rng, 2, 4))
    what = f"flash_attention_triton on q {tuple(q.shape)}, k {tuple(k.shape)}"
    expect_attention(call_flash(flash, what, q, k, v, False), q, k, v, False, what)


def flash_causal(flash, rng):
    """causal=True, bottom-right aligned (query i at position Lk - Lq + i), diagonal tiles masked"""
    Lq = draw(rng, 17, 32)
    Lk = Lq + draw(rng, 0, 1) * draw(rng, 1, 16)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, 16, scale=2.0)
    what = f"flash_attention_triton(causal=True) on q {tuple(q.shape)}, k {tuple(k.shape)}"
    result = call_flash(flash, what, q, k, v, True)
    try:
        expect_attention(result, q, k, v, True, what)
    except Mistake as mistake:
        if mistake.key not in ("wrong_values", "not_stable"):
            raise
        # does a query's output move when only keys after its position change?
        r = Lq // 2
        k2, v2 = k.clone(), v.clone()
        k2[..., Lk - Lq + r :, :] = randn(k2[..., Lk - Lq + r :, :].shape, rng)
        v2[..., Lk - Lq + r :, :] = randn(v2[..., Lk - Lq + r :, :].shape, rng) + 5
        out2 = call_flash(flash, what, q, k2, v2, True)[0]
        if not torch.allclose(
            result[0][..., :r, :], out2[..., :r, :], rtol=1e-4, atol=1e-5, equal_nan=True
        ):
            description, fix = hint("causal_wrong_side")
            raise Mistake(
                f"{what}: queries 0..{r - 1} changed when only keys from position "
                f"{Lk - Lq + r} on did: it looks like {description}.",
                fix,
                "causal_wrong_side",
            ) from None
        raise


def flash_shapes(flash, rng):
    """any leading dims: (L, D), (B, L, D), (B, H, L, D); Lq = 1; L < 16; head_dim 64"""
    cases = [
        ((), draw(rng, 5, 15), draw(rng, 17, 30), 16, False),
        ((2,), draw(rng, 17, 24), draw(rng, 5, 15), 32, False),
        ((1, 1), 1, draw(rng, 17, 30), 16, True),
        ((1, 1), draw(rng, 3, 12), draw(rng, 12, 15), 64, True),
    ]
    for lead, Lq, Lk, D, causal in cases:
        q, k, v = qkv(rng, lead, Lq, Lk, D)
        what = f"flash_attention_triton(causal={causal}) on q {tuple(q.shape)}, k {tuple(k.shape)}"
        expect_attention(call_flash(flash, what, q, k, v, causal), q, k, v, causal, what)


def poisoned(t: torch.Tensor, extra: int = 4096) -> torch.Tensor:
    """A contiguous copy of t followed in memory by NaN."""
    storage = torch.full((t.numel() + extra,), float("nan"), dtype=t.dtype, device=run_device())
    view = storage[: t.numel()].view(t.shape)
    view.copy_(t)
    return view


def flash_in_bounds(flash, rng):
    """ragged last tiles (Lq, Lk not multiples of 16) stay inside q, k, v, out and lse"""
    Lq, Lk = draw(rng, 1, 15), 16 + draw(rng, 1, 15)
    q, k, v = (poisoned(t) for t in qkv(rng, (1, 1), Lq, Lk, 16))
    what = (
        f"flash_attention_triton on ragged q {tuple(q.shape)}, k {tuple(k.shape)} (NaN after them)"
    )
    out, lse = call_flash(flash, what, q, k, v, False)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
        description, fix = hint("out_of_bounds")
        raise Mistake(
            f"{what}: the output has NaN, read from past the end of the inputs: it looks "
            f"like {description}.",
            fix,
            "out_of_bounds",
        )
    expect_attention((out, lse), q, k, v, False, what)


def flash_rejects_bad_input(flash, rng):
    """head_dim 24, mismatched head_dims or lengths, float64 on the CPU: a clear ValueError"""
    L = draw(rng, 4, 9)
    q, k, v = qkv(rng, (1, 1), L, L, 24)
    expect_value_error(lambda: flash(q, k, v), "head_dim 24", "no_error_for_bad_input")
    q, k, v = qkv(rng, (1, 1), L, L, 16)
    expect_value_error(
        lambda: flash(q, randn((1, 1, L, 32), rng), randn((1, 1, L, 32), rng)),
        "q with head_dim 16, k and v with 32",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: flash(q, k, v[..., :-1, :]),
        f"k {tuple(k.shape)}, v {tuple(v[..., :-1, :].shape)}",
        "no_error_for_bad_input",
    )
    if run_device().type == "cpu":
        expect_value_error(
            lambda: flash(q.double(), k.double(), v.double()),
            "float64 on the CPU interpreter",
            "no_error_for_bad_input",
        )


# ----------------------------------------------------------------------------- FlashAttentionTriton


def unwrap(impl):
    """The student's object behind `guarded`: the class itself, not a call of it."""
    return getattr(impl, "__wrapped__", impl)


def function_class(impl):
    cls = unwrap(impl)
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        try:
            impl()  # an untouched stub says so: "not implemented yet", not a wrong type
        except NotImplementedYet:
            raise
        except Exception:  # noqa: BLE001  (anything else: it is simply not a Function)
            pass
        raise named("not_an_autograd_function")
    return cls


def grads64(q, k, v, dout, causal, variant=None):
    """(dq, dk, dv) in float64 from the formulas, with one planted mistake."""
    q, k, v, dout = (f64(t) for t in (q, k, v, dout))
    scale = 1 / math.sqrt(q.shape[-1])
    keep = visible(q.shape[-2], k.shape[-2], causal)
    s = (q @ k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1)
    p = torch.exp(s - lse[..., None])
    p_true = p.masked_fill(~keep, 0.0)
    out = p_true @ v
    if variant != "causal_backward":
        p = p_true
    dv = p.transpose(-1, -2) @ dout
    dp = dout @ v.transpose(-1, -2)
    d = (dout * out).sum(-1, keepdim=True)
    ds = p * dp if variant == "no_d_term" else p * (dp - d)
    factor = {"grad_wrong_scale": 1.0, "grad_scale_twice": scale * scale}.get(variant, scale)
    return ds @ k * factor, ds.transpose(-1, -2) @ q * factor, dv


def saved_by_student(out) -> tuple:
    """What the student's forward saved (past the copy back from the GPU, if any)."""
    node = out.grad_fn
    while node is not None and type(node).__name__.startswith("ToCopyBackward"):
        node = node.next_functions[0][0]
    return tuple(getattr(node, "saved_tensors", ()))


def run_function(cls, q, k, v, causal, rng, what):
    """Forward and backward through the student's class, watched; returns (out, grads, saved)."""
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = watched(apply, f"FlashAttentionTriton.apply on {what}", *leaves, causal)
    expect_tensor(out, f"FlashAttentionTriton.apply on {what}", q.shape, q.dtype)
    saved = saved_by_student(out)
    dout = randn(out.shape, rng, out.dtype)
    backward = guarded(
        lambda: torch.autograd.grad(out, leaves, dout), "FlashAttentionTriton", FORBIDDEN
    )
    with watch_kernels() as watch:
        grads = backward()
    expect_triton(watch, f"the backward of FlashAttentionTriton on {what}", "backward_not_triton")
    return out, dout, grads, saved


def expect_grads(grads, q, k, v, dout, causal, what):
    ref = grads64(q, k, v, dout, causal)
    variants = ["no_d_term", "grad_wrong_scale", "grad_scale_twice"] + (
        ["causal_backward"] if causal else []
    )
    wrong = {variant: grads64(q, k, v, dout, causal, variant) for variant in variants}
    for i, name in [(2, "dv"), (0, "dq"), (1, "dk")]:
        suspects = [
            ("grad_wrong_scale" if variant == "grad_scale_twice" else variant, wrong[variant][i])
            for variant in variants
            if not torch.allclose(wrong[variant][i], ref[i])
        ]
        expect_close(grads[i], ref[i], q.dtype, f"{name} of {what}", suspects)


def function_forward(FlashAttentionTriton, rng):
    """apply(q, k, v, is_causal) equals float64 attention; forward saves q, k, v, out and one lse (..., Lq)"""
    cls = function_class(FlashAttentionTriton)
    Lq, Lk = draw(rng, 5, 15), draw(rng, 17, 30)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, 16)
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}"
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = watched(apply, f"FlashAttentionTriton.apply on {what}", *leaves, False)
    expect_close(
        out,
        attention64(q, k, v)[0],
        q.dtype,
        f"FlashAttentionTriton.apply on {what}",
        out_suspects(q, k, v, False),
    )
    saved = saved_by_student(out)
    shapes = sorted(tuple(t.shape) for t in saved)
    expected = sorted(
        [tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(q.shape), tuple(q.shape[:-1])]
    )
    if shapes != expected:
        description, fix = hint("saves_attention_matrix")
        raise Mistake(
            f"forward saved tensors of shapes {shapes}, expected {expected} (q, k, v, out, "
            f"lse): it looks like {description}.",
            fix,
            "saves_attention_matrix",
        )


def function_gradients(FlashAttentionTriton, rng):
    """dq, dk, dv match autograd through float64 attention (3-D inputs, ragged lengths, Lq != Lk)"""
    cls = function_class(FlashAttentionTriton)
    for lead, D, (Lq, Lk) in [((2,), 16, (draw(rng, 9, 16), draw(rng, 17, 30)))]:
        q, k, v = qkv(rng, lead, Lq, Lk, D)
        what = f"q {tuple(q.shape)}, k {tuple(k.shape)}"
        out, dout, grads, _ = run_function(cls, q, k, v, False, rng, what)
        expect_close(
            out,
            attention64(q, k, v)[0],
            q.dtype,
            f"FlashAttentionTriton.apply on {what}",
            out_suspects(q, k, v, False),
        )
        expect_grads(grads, q, k, v, dout, False, what)


def function_causal_gradients(FlashAttentionTriton, rng):
    """with is_causal=True (bottom-right, Lq <= Lk, head_dim 16 or 32): output and dq, dk, dv"""
    cls = function_class(FlashAttentionTriton)
    Lq = draw(rng, 17, 28)
    Lk = Lq + draw(rng, 0, 1) * draw(rng, 1, 8)
    q, k, v = qkv(rng, (1, 1), Lq, Lk, (16, 32)[draw(rng, 0, 1)])
    what = f"q {tuple(q.shape)}, k {tuple(k.shape)}, is_causal=True"
    out, dout, grads, _ = run_function(cls, q, k, v, True, rng, what)
    expect_close(
        out,
        attention64(q, k, v, True)[0],
        q.dtype,
        f"FlashAttentionTriton.apply on {what}",
        out_suspects(q, k, v, True),
    )
    try:
        expect_grads(grads, q, k, v, dout, True, what)
    except Mistake as mistake:
        if mistake.key != "wrong_values":
            raise
        _, dout2, grads2, _ = run_function(cls, q, k, v, False, rng, what.replace("True", "False"))
        ref = grads64(q, k, v, dout2, False)
        if all(
            torch.isfinite(g).all() and float((g.double() - r).norm() / r.norm()) < 1e-4
            for g, r in zip(grads2, ref)
        ):
            description, fix = hint("causal_backward")
            raise Mistake(
                f"{mistake.message} With is_causal=False the same inputs give the right "
                f"gradients: it looks like {description}.",
                fix,
                "causal_backward",
            ) from None
        raise


def function_rejects_bad_input(FlashAttentionTriton, rng):
    """head_dim 24 gives a clear ValueError"""
    cls = function_class(FlashAttentionTriton)
    apply = guarded(cls.apply, "FlashAttentionTriton", FORBIDDEN)
    q, k, v = qkv(rng, (1, 1), draw(rng, 4, 9), draw(rng, 4, 9), 24)
    expect_value_error(lambda: apply(q, k, v, False), "head_dim 24", "no_error_for_bad_input")


EXERCISES = {
    "triton_add": Exercise(
        checks=[add_matches, add_non_contiguous, add_rejects_bad_input], forbidden=FORBIDDEN
    ),
    "triton_softmax": Exercise(
        checks=[softmax_matches, softmax_stable, softmax_shapes, softmax_rejects_bad_input],
        forbidden=FORBIDDEN,
    ),
    "flash_attention_triton": Exercise(
        checks=[
            flash_matches,
            flash_causal,
            flash_shapes,
            flash_in_bounds,
            flash_rejects_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
    "FlashAttentionTriton": Exercise(
        checks=[
            function_forward,
            function_gradients,
            function_causal_gradients,
            function_rejects_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
}
