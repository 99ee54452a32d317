"""Checks for day06-online-softmax: online softmax statistics, tiled attention with its
logsumexp, and FlashAttention's tiled backward as a torch.autograd.Function.

Oracles: torch's amax and logsumexp in float64, dense float64 attention (full score matrix,
bottom-right causal mask, fully masked rows giving zeros), and float64 autograd through it.
Suspects (what a named mistake would return) come from the same dense formulas with the mistake
put in, or, for the rescaling mistakes, from a float64 tile loop with the same tile sizes.

Three checks watch how the student's code works rather than what it returns, through a torch
dispatch mode that sees every aten op: the statistics must be streamed (no reduction ever reads
more than one block of x), tiled attention must never allocate an (Lq, Lk)-sized tensor, and
causal tiles entirely above the diagonal must be skipped (the matmul FLOPs of a causal call
must be about half of a full one's, not equal).

FlashAttentionTorch is a class: autograd runs a Function's backward where torch function modes
do not see it, so the checks call `FlashAttentionTorch.backward(out.grad_fn, grad)` themselves
under the guard (out.grad_fn is the ctx that forward filled), and also run real autograd once.
"""

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import course.reference.masks
import course.reference.online_softmax
import course.reference.sdpa
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
    relative_error,
)
from grader.suites import Exercise, day01_sdpa
from grader.suites._common import draw, randn
from grader.suites.day05_sparse import LargestAllocation

HINTS = {
    "missing_scale": day01_sdpa.HINTS["missing_scale"],
    "no_error_for_bad_params": (
        "a bad argument accepted silently",
        "check the arguments first and raise ValueError with a message "
        'that names the bad one, e.g. `raise ValueError(f"block_q must '
        'be >= 1, got {block_q}")`.',
    ),
    # online softmax
    "missing_rescale": (
        "the running sums not rescaled when the max changes",
        "terms summed so far were taken against the old max m; when a block "
        "raises it to m_new, multiply the running sums by exp(m - m_new) before "
        "adding the new block's exp(x - m_new).",
    ),
    "rescale_inverted": (
        "the rescale factor upside down: exp(m_new - m) instead of exp(m - m_new)",
        "the old terms exp(x - m) become exp(x - m_new) = exp(x - m) * "
        "exp(m - m_new): the factor is at most 1.",
    ),
    "returns_log": (
        "log(sum_exp) (a logsumexp) where sum_exp itself is asked for",
        "return the running sum of exp(x - max) itself, not its log and not max + log.",
    ),
    "not_streaming": (
        "a pass over the whole of x before the blocks (e.g. the global max first): "
        "two passes, not one streaming pass",
        "keep the running max and sum as the blocks arrive: every max, sum or exp "
        "reads one block x[..., start:start + block_size] only.",
    ),
    "nan_for_masked": (
        "NaN where a row (or every row so far) is all -inf",
        "exp(-inf - (-inf)) is NaN: while the running max is still -inf, shift by "
        "0 instead (torch.where(m == -inf, 0, m)); an all -inf row gives max = "
        "-inf, sum = 0 and, in attention, a zero output with lse = -inf.",
    ),
    # tiled attention
    "rescale_l_only": (
        "the denominator l rescaled when the max changes, but not the accumulator",
        "both running sums were taken against the old max: multiply acc (the "
        "running numerator, (bq, dv)) by exp(m_old - m_new) as well as l.",
    ),
    "rescale_acc_only": (
        "the accumulator rescaled when the max changes, but not the denominator l",
        "both running sums were taken against the old max: multiply l by "
        "exp(m_old - m_new) as well as acc.",
    ),
    "lse_base2": (
        "the logsumexp in base 2 (log2 instead of the natural log)",
        "lse = m + log(l) with the natural log (torch.log); base 2 belongs to kernels "
        "that use exp2, and must be converted back: lse_e = lse_2 * ln 2.",
    ),
    "lse_missing_max": (
        "log(l) without the running max: lse must be m + log(l)",
        "l = sum exp(s - m) was shifted by the max: logsumexp(s) = m + log(l).",
    ),
    "causal_top_left": (
        "a causal mask aligned top-left (query i sees keys 0..i) when Lq != Lk",
        "the course aligns bottom-right: query i sits at absolute position "
        "Lk - Lq + i and sees keys j <= Lk - Lq + i.",
    ),
    "causal_strict": (
        "a causal mask that hides the diagonal (j < i instead of j <= i)",
        "a query sees its own key: the mask is key_pos <= query_pos, both ends "
        "counted from the same origin.",
    ),
    "causal_wrong_side": (
        "the causal mask on the wrong side of the diagonal (queries see the future, not the past)",
        "mask the keys *after* the query: set -inf where key_pos > query_pos.",
    ),
    "ignores_causal": (
        "causal=True ignored",
        "with causal=True query i (at Lk - Lq + i) sees keys j <= Lk - Lq + i only.",
    ),
    "builds_full_matrix": (
        "an (Lq, Lk)-sized tensor: the matrix that tiling avoids",
        "compute one (block_q, block_k) tile of scores at a time and keep only "
        "running statistics per query: no tensor, mask included, has Lq * Lk "
        "entries.",
    ),
    "computes_masked_tiles": (
        "tiles entirely above the causal diagonal computed (then masked) instead of skipped",
        "for query tile [q_start, q_end) stop the key loop at "
        "min(Lk, Lk - Lq + q_end): the keys after that are masked for every "
        "query of the tile, so their tiles are never computed.",
    ),
    # backward
    "missing_D_term": (
        "a backward without FlashAttention-2's D term: ds = p * dp instead of p * (dp - D)",
        "the softmax Jacobian gives ds = p * (dp - D) with D = rowsum(dO * O) per "
        "query (equal to rowsum(p * dp)); compute D once before the tile loop.",
    ),
    "grad_missing_scale": (
        "dq and dk without the 1 / sqrt(d) of the scores",
        "s = q kᵀ / sqrt(d), so dq = ds k / sqrt(d) and dk = dsᵀ q / sqrt(d).",
    ),
    "grads_wrong_only_causal": (
        "gradients right without causal but wrong with causal=True",
        "backward must recompute exactly the forward's tiles: the same "
        "bottom-right mask on straddling tiles, the same skipped tiles, "
        "and zero for fully masked rows.",
    ),
    "causal_backward_unmasked": (
        "a causal backward that recomputes p without the mask",
        "recompute the scores of each tile with the same causal mask "
        "as in forward before p = exp(s - lse).",
    ),
    "saves_too_much": (
        "an (Lq, Lk)-sized tensor saved for backward (the probabilities?)",
        "save q, k, v, out and the logsumexp only (ctx.save_for_backward); the "
        "backward recomputes each tile of p from them.",
    ),
    "saves_two_stats": (
        "the max and the sum saved as two tensors",
        "fold them into one logsumexp per query, lse = m + log(l), and save that: "
        "p = exp(s - lse) in backward.",
    ),
    "no_lse_saved": (
        "no logsumexp tensor of shape (..., Lq) among ctx.saved_tensors",
        "save q, k, v, out and lse with ctx.save_for_backward(q, k, v, out, lse).",
    ),
    "grad_not_finite": (
        "NaN or inf in the gradient of a fully masked row",
        "a row that sees no key has lse = -inf and p = exp(s - lse) must be 0: "
        "replace lse = -inf by +inf (or mask those rows) before the exp.",
    ),
    "autograd_broken": (
        "a Function that autograd cannot run backward through",
        "forward(ctx, q, k, v, is_causal=False) saves with ctx.save_for_backward "
        "and returns out; backward(ctx, d_out) returns one gradient per forward "
        "input: (dq, dk, dv, None).",
    ),
}

FLASH = (
    "course.reference.online_softmax is the course's library version, for later days: write yours."
)
NO_BUILTIN = (
    "it computes the whole softmax at once; this exercise builds it from running "
    "statistics, block by block."
)
FORBIDDEN_LIBRARY = {
    fn: FLASH
    for fn in (
        course.reference.online_softmax.online_softmax_stats,
        course.reference.online_softmax.tiled_attention,
        course.reference.online_softmax._forward,
        course.reference.online_softmax._backward,
        course.reference.online_softmax.flash_attention_torch,
        course.reference.online_softmax.FlashAttentionTorch.forward,
    )
}
FORBIDDEN = {
    **FORBIDDEN_LIBRARY,
    "softmax": NO_BUILTIN,
    "log_softmax": NO_BUILTIN,
    "logsumexp": NO_BUILTIN,
    "scaled_dot_product_attention": NO_BUILTIN,
    course.reference.masks.attention: NO_BUILTIN,
    course.reference.sdpa.stable_softmax: NO_BUILTIN,
}


# ----------------------------------------------------------------------------- oracles


def dense64(q, k, v, mask=None, scale=None):
    """(out, lse) in float64 from the full score matrix; `mask` (Lq, Lk) bool, True = may attend;
    a row with nothing to attend gives zeros and lse = -inf."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    shift = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - shift.unsqueeze(-1)) @ v, lse


def causal_rule(Lq: int, Lk: int, offset: int = None, strict: bool = False, flip: bool = False):
    """(Lq, Lk) bool: key j allowed for query i when j <= offset + i (offset Lk - Lq: the course's
    bottom-right); strict: j < offset + i; flip: j >= offset + i (the wrong side)."""
    offset = Lk - Lq if offset is None else offset
    position = torch.arange(Lq).unsqueeze(-1) + offset
    j = torch.arange(Lk)
    if flip:
        return j >= position
    return j < position if strict else j <= position


def tile_loop64(q, k, v, bq, bk, mask=None, rescale_l=True, rescale_acc=True):
    """(out, lse) of a float64 tile loop with the given rescaling (a suspect when one is off).
    Tiles with every entry masked are skipped, as the skipping schedule does."""
    q, k, v = q.double(), k.double(), v.double()
    Lq, Lk = q.shape[-2], k.shape[-2]
    s_all = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # fine for an oracle: small sizes
    if mask is not None:
        s_all = s_all.masked_fill(~mask, float("-inf"))
    outs, lses = [], []
    for a in range(0, Lq, bq):
        m = torch.full(s_all.shape[:-2] + (min(bq, Lq - a),), float("-inf"), dtype=torch.float64)
        l = torch.zeros_like(m)
        acc = torch.zeros(*m.shape, v.shape[-1], dtype=torch.float64)
        for b in range(0, Lk, bk):
            s = s_all[..., a : a + bq, b : b + bk]
            if mask is not None and not mask[a : a + bq, b : b + bk].any():
                continue
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - safe)
            p = torch.exp(s - safe.unsqueeze(-1))
            l = (l * alpha if rescale_l else l) + p.sum(-1)
            acc = (acc * alpha.unsqueeze(-1) if rescale_acc else acc) + p @ v[..., b : b + bk, :]
            m = m_new
        outs.append(acc / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1))
        lses.append(m + torch.log(l))
    return torch.cat(outs, -2), torch.cat(lses, -1)


def dense_grads64(q, k, v, d_out, mask=None, use_D=True, scale_grads=True, backward_mask=True):
    """(dq, dk, dv) in float64 by the FlashAttention-2 formulas on the full matrix, with the named
    mistakes switchable: use_D=False drops D; scale_grads=False drops 1/sqrt(d) from dq and dk;
    backward_mask=False recomputes p = exp(s - lse) from unmasked scores."""
    q, k, v, d_out = q.double(), k.double(), v.double(), d_out.double()
    scale = q.shape[-1] ** -0.5
    out, lse = dense64(q, k, v, mask)
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None and backward_mask:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")), lse)
    p = torch.exp(s - lse.unsqueeze(-1))
    dv = p.transpose(-2, -1) @ d_out
    dp = d_out @ v.transpose(-2, -1)
    D = (d_out * out).sum(-1, keepdim=True)
    ds = p * (dp - D) if use_D else p * dp
    g = scale if scale_grads else 1.0
    return ds @ k * g, ds.transpose(-2, -1) @ q * g, dv


def autograd64(q, k, v, d_out, mask=None):
    """(dq, dk, dv): float64 autograd through dense attention (the gradients' oracle)."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _ = dense64(*leaves, mask)
    return torch.autograd.grad(out, leaves, d_out.double())


# ----------------------------------------------------------------------------- watching the ops

REDUCTIONS = {
    "amax",
    "amin",
    "max",
    "min",
    "sum",
    "nansum",
    "mean",
    "prod",
    "logsumexp",
    "cummax",
    "cumsum",
    "logcumsumexp",
    "sort",
    "topk",
    "argmax",
    "kthvalue",
    "norm",
    "linalg_vector_norm",
    "aminmax",
    "var",
    "std",
    "median",
}


class Reductions(TorchDispatchMode):
    """The largest number of elements that any reduction op reads (and its name)."""

    def __init__(self):
        super().__init__()
        self.largest, self.name = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.lstrip("_")
        if (
            name in REDUCTIONS
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].numel() > self.largest
        ):
            self.largest, self.name = args[0].numel(), name
        return func(*args, **(kwargs or {}))


class MatmulFlops(TorchDispatchMode):
    """Counts the multiply-adds of every matrix product (mm, bmm, addmm, baddbmm, matmul)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("mm", "bmm", "addmm", "baddbmm", "matmul", "dot", "mv", "addbmm"):
            a = args[1] if name in ("addmm", "baddbmm", "addbmm") else args[0]
            if isinstance(out, torch.Tensor):
                self.flops += out.numel() * (a.shape[-1] if a.dim() else 1)
        return out


# ----------------------------------------------------------------------------- online_softmax_stats


def stats64(x, dim):
    x = x.double()
    m = x.amax(dim)
    shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return m, torch.exp(x - shift.unsqueeze(dim)).sum(dim)


def stats_suspects(x, block_size, dim):
    """(key, sum_exp) pairs of the named mistakes, by a float64 block loop."""
    x = x.double().movedim(dim, -1)
    m = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float64)
    plain, inverted = torch.zeros_like(m), torch.zeros_like(m)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start : start + block_size]
        m_new = torch.maximum(m, block.amax(-1))
        new = torch.exp(block - m_new.unsqueeze(-1)).sum(-1)
        plain = plain + new
        inverted = inverted * torch.exp(m_new - m).nan_to_num(posinf=0.0) + new
        m = m_new
    _, right = stats64(x, -1)
    return [
        ("missing_rescale", plain),
        ("rescale_inverted", inverted),
        ("returns_log", torch.log(right)),
        ("returns_log", m + torch.log(right)),
    ]


def expect_close_inf(out, ref, dtype, what, suspects=(), nonfinite=None):
    """expect_close where `ref` may hold infinities: those entries must be equal exactly (else the
    mistake `nan_for_masked`), the others are compared as usual."""
    if isinstance(out, torch.Tensor) and out.shape == ref.shape:
        inf = torch.isinf(ref)
        if inf.any():
            expect_tensor(out, what, ref.shape, dtype)
            if not torch.equal(out.detach().double()[inf], ref[inf]):
                description, fix = HINTS["nan_for_masked"]
                raise Mistake(
                    f"{what} is {out[inf][0].item()} where the answer is {ref[inf][0].item()}: "
                    f"it looks like {description}.",
                    fix,
                    "nan_for_masked",
                )
            out, ref = out[~inf], ref[~inf]
            suspects = [(key, wrong[~inf]) for key, wrong in suspects]
    expect_close(out, ref, dtype, what=what, suspects=suspects, nonfinite=nonfinite)


def expect_stats(online_softmax_stats, x, block_size, dim, what):
    result = online_softmax_stats(x, block_size, dim=dim)
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}, expected a tuple (max, sum_exp).",
            hint="return both statistics: `return m, s`.",
            key="wrong_return",
        )
    m_ref, s_ref = stats64(x, dim)
    expect_close_inf(result[0], m_ref, x.dtype, f"{what}'s max", nonfinite=named("nan_for_masked"))
    expect_close(
        result[1],
        s_ref,
        x.dtype,
        what=f"{what}'s sum_exp",
        suspects=stats_suspects(x, block_size, dim),
        nonfinite=named("nan_for_masked"),
    )


def stats_match(online_softmax_stats, rng):
    """max and sum exp(x - max) along the last dim, blocks not dividing the length"""
    block_size = draw(rng, 3, 7)
    N = block_size * draw(rng, 3, 6) + draw(rng, 1, block_size - 1)
    # Growing values: the max changes in most blocks, so every rescale shows.
    x = randn((draw(rng, 2, 4), N), rng, scale=3.0) + torch.linspace(0, 6, N)
    expect_stats(
        online_softmax_stats,
        x,
        block_size,
        -1,
        f"online_softmax_stats(x of {tuple(x.shape)}, {block_size})",
    )


def stats_dims_and_float64(online_softmax_stats, rng):
    """another dim (0, 1, negative), float64 to 1e-10, block_size 1 and block_size > length"""
    x = randn((draw(rng, 5, 12), draw(rng, 2, 4), draw(rng, 5, 9)), rng, torch.float64, scale=4.0)
    for dim, block_size in [(0, draw(rng, 2, 4)), (1, 1), (-1, 100), (-3, 1)]:
        expect_stats(
            online_softmax_stats,
            x,
            block_size,
            dim,
            f"online_softmax_stats(x of {tuple(x.shape)}, {block_size}, dim={dim})",
        )


def stats_extremes(online_softmax_stats, rng):
    """no overflow at x = ±1000; -inf entries; an all -inf row gives (-inf, 0), never NaN"""
    N, block_size = draw(rng, 8, 14), draw(rng, 2, 3)
    x = randn((4, N), rng, scale=2.0)
    x[0] += 1000
    x[1] -= 1000
    x[2, : N // 2] = float("-inf")  # the first blocks hold nothing
    x[3] = float("-inf")
    expect_stats(
        online_softmax_stats,
        x,
        block_size,
        -1,
        f"online_softmax_stats on rows +1000, -1000, half -inf, all -inf ({N}, block {block_size})",
    )


def stats_streaming(online_softmax_stats, rng):
    """one streaming pass: no max, sum or other reduction reads more than one block of x"""
    block_size = draw(rng, 4, 8)
    rows, N = draw(rng, 2, 4), block_size * draw(rng, 4, 8)
    x = randn((rows, N), rng)
    tracker = Reductions()
    with tracker:
        online_softmax_stats(x, block_size, dim=-1)
    if tracker.largest > rows * block_size:
        description, fix = HINTS["not_streaming"]
        raise Mistake(
            f"a {tracker.name} read {tracker.largest} elements at once, but one block of "
            f"x ({rows}, {N}) is ({rows}, {block_size}) = {rows * block_size}: it looks like "
            f"{description}.",
            fix,
            "not_streaming",
        )


def stats_rejects_bad_block(online_softmax_stats, rng):
    """block_size < 1 raises ValueError"""
    x = randn((3, draw(rng, 4, 8)), rng)
    for block_size in (0, -draw(rng, 1, 4)):
        expect_value_error(
            lambda: online_softmax_stats(x, block_size),
            f"online_softmax_stats(x, {block_size})",
            "no_error_for_bad_params",
        )


# ----------------------------------------------------------------------------- tiled_attention


def qkv(rng, Lq, Lk, dtype=torch.float32, leading=(2, 3), scale=1.5):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 3)
    return (
        randn((*leading, Lq, d), rng, dtype, scale),
        randn((*leading, Lk, d), rng, dtype, scale),
        randn((*leading, Lk, dv), rng, dtype),
    )


def causal_suspects(Lq, Lk):
    """(key, mask) of the named causal mistakes that differ from the right mask."""
    right = causal_rule(Lq, Lk)
    masks = [
        ("causal_top_left", causal_rule(Lq, Lk, offset=0)),
        ("causal_top_left", causal_rule(Lq, Lk, offset=0, strict=True)),
        ("causal_strict", causal_rule(Lq, Lk, strict=True)),
        ("causal_wrong_side", causal_rule(Lq, Lk, flip=True)),
        ("causal_wrong_side", causal_rule(Lq, Lk, offset=Lk - Lq + 1, flip=True)),
        ("ignores_causal", torch.ones(Lq, Lk, dtype=torch.bool)),
    ]
    return [(key, mask) for key, mask in masks if not torch.equal(mask, right)]


def expect_tiled(result, q, k, v, bq, bk, causal, what):
    """out and lse against dense float64, naming the mistakes this day recognises."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}, expected a tuple (out, lse).",
            hint="return the output and the logsumexp: `return out, lse`.",
            key="wrong_return",
        )
    out, lse = result
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = causal_rule(Lq, Lk) if causal else None
    ref_out, ref_lse = dense64(q, k, v, mask)
    suspects = [("missing_scale", dense64(q, k, v, mask, scale=1.0)[0])]
    if causal:
        suspects += [(key, dense64(q, k, v, wrong)[0]) for key, wrong in causal_suspects(Lq, Lk)]
    suspects += [
        ("missing_rescale", tile_loop64(q, k, v, bq, bk, mask, False, False)[0]),
        ("rescale_l_only", tile_loop64(q, k, v, bq, bk, mask, True, False)[0]),
        ("rescale_acc_only", tile_loop64(q, k, v, bq, bk, mask, False, True)[0]),
    ]
    expect_close(
        out,
        ref_out,
        q.dtype,
        what=f"{what}'s out",
        suspects=suspects,
        nonfinite=named("nan_for_masked"),
    )
    lse_suspects = []
    if isinstance(lse, torch.Tensor) and lse.shape == ref_lse.shape:
        finite = torch.isfinite(ref_lse)
        if (torch.isnan(lse) & ~finite).any() or (torch.isfinite(lse) & ~finite).any():
            raise Mistake(
                f"{what}'s lse is {lse[~finite][0].item()} for a query that sees no key, "
                f"expected -inf.",
                HINTS["nan_for_masked"][1],
                "nan_for_masked",
            )
        if not finite.all():  # compare the rows that see keys
            lse, ref_lse = lse[finite], ref_lse[finite]
        m = dense_max64(q, k, mask)[finite] if not finite.all() else dense_max64(q, k, mask)
        lse_suspects = [
            ("lse_base2", ref_lse / math.log(2)),
            ("lse_base2", (m + (ref_lse - m) / math.log(2))),
            ("lse_missing_max", ref_lse - m),
        ]
    expect_close(lse, ref_lse, q.dtype, what=f"{what}'s lse", suspects=lse_suspects)


def dense_max64(q, k, mask):
    s = q.double() @ k.double().transpose(-2, -1) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.amax(-1)


def tiled_matches(tiled_attention, rng):
    """non-causal: out and the natural-log lse match dense attention; Lq != Lk; ragged tiles"""
    bq, bk = draw(rng, 3, 6), draw(rng, 3, 6)
    Lq, Lk = (
        bq * draw(rng, 2, 4) + draw(rng, 1, bq - 1),
        bk * draw(rng, 3, 5) + draw(rng, 1, bk - 1),
    )
    q, k, v = qkv(rng, Lq, Lk)
    k = k + torch.linspace(0, 2, Lk).unsqueeze(-1) * q.mean(
        -2, keepdim=True
    )  # max moves along the keys
    expect_tiled(
        tiled_attention(q, k, v, block_q=bq, block_k=bk),
        q,
        k,
        v,
        bq,
        bk,
        False,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, block_k={bk})",
    )


def tiled_causal(tiled_attention, rng):
    """causal, bottom-right aligned: Lq == Lk, Lq < Lk (queries are the newest tokens)"""
    bq, bk = draw(rng, 2, 5), draw(rng, 2, 5)
    L = draw(rng, 9, 20)
    for Lq, Lk in [(L, L), (draw(rng, 3, L - 2), L)]:
        q, k, v = qkv(rng, Lq, Lk)
        expect_tiled(
            tiled_attention(q, k, v, block_q=bq, block_k=bk, causal=True),
            q,
            k,
            v,
            bq,
            bk,
            True,
            f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, "
            f"block_k={bk}, causal=True)",
        )


def tiled_fully_masked_rows(tiled_attention, rng):
    """causal with Lq > Lk: the first Lq - Lk queries see no key: zeros and lse = -inf, never NaN"""
    Lk = draw(rng, 3, 8)
    Lq = Lk + draw(rng, 2, 6)
    q, k, v = qkv(rng, Lq, Lk, leading=(2,))
    bq, bk = draw(rng, 2, 4), draw(rng, 2, 4)
    expect_tiled(
        tiled_attention(q, k, v, block_q=bq, block_k=bk, causal=True),
        q,
        k,
        v,
        bq,
        bk,
        True,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, block_k={bk}, "
        f"causal=True)",
    )


def tiled_shapes_and_float64(tiled_attention, rng):
    """(L, D) and (B, L, D) inputs, float64 to 1e-10, default tiles of 64 (ragged), one tile"""
    L = 64 + draw(rng, 10, 40)
    q, k, v = qkv(rng, L, L + draw(rng, 1, 9), torch.float64, leading=(draw(rng, 1, 3),))
    for causal in (False, True):
        expect_tiled(
            tiled_attention(q, k, v, causal=causal),
            q,
            k,
            v,
            64,
            64,
            causal,
            f"tiled_attention(q {tuple(q.shape)} float64, causal={causal}) with default tiles",
        )
    q, k, v = qkv(rng, draw(rng, 3, 7), draw(rng, 3, 7), leading=())
    expect_tiled(
        tiled_attention(q, k, v, block_q=16, block_k=16, causal=True),
        q,
        k,
        v,
        16,
        16,
        True,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, causal=True) in one tile",
    )


def tiled_never_full_matrix(tiled_attention, rng):
    """never allocates an (Lq, Lk)-sized tensor (Lq x Lk bytes or more: a bool mask counts)"""
    Lq, Lk, block = 256 + draw(rng, 0, 32), 384 + draw(rng, 0, 32), 2 ** draw(rng, 5, 6)
    q, k, v = (randn((1, L, 8), rng) for L in (Lq, Lk, Lk))
    for causal in (False, True):
        tracker = LargestAllocation()
        with tracker:
            tiled_attention(q, k, v, block_q=block, block_k=block, causal=causal)
        if tracker.largest >= Lq * Lk:
            description, fix = HINTS["builds_full_matrix"]
            raise Mistake(
                f"tiled_attention(causal={causal}) allocated a tensor of shape {tracker.shape} "
                f"({tracker.largest} bytes) for Lq = {Lq}, Lk = {Lk} with {block} x {block} "
                f"tiles: it looks like {description}.",
                fix,
                "builds_full_matrix",
            )


def tiled_skips_masked_tiles(tiled_attention, rng):
    """causal skips the tiles above the diagonal: about half the matmul work of non-causal"""
    block = 2 ** draw(rng, 3, 4)
    n = draw(rng, 6, 9)
    L = block * n
    q, k, v = (randn((1, L, 8), rng) for _ in range(3))
    flops = {}
    for causal in (False, True):
        counter = MatmulFlops()
        with counter:
            tiled_attention(q, k, v, block_q=block, block_k=block, causal=causal)
        flops[causal] = counter.flops
    ideal = (n + 1) / (2 * n)  # tiles on or below the diagonal: n (n + 1) / 2 of n^2
    if flops[False] == 0:
        raise Mistake(
            "no matrix product was seen: compute the scores and the output with @ "
            "(or torch.matmul) on tiles.",
            hint="s = q_tile @ k_tile.transpose(-2, -1).",
            key="no_matmul",
        )
    ratio = flops[True] / flops[False]
    if ratio > ideal + 0.5 * (1 - ideal):
        description, fix = HINTS["computes_masked_tiles"]
        raise Mistake(
            f"with L = {L} and {block} x {block} tiles, causal=True did {ratio:.0%} of the "
            f"matmul work of causal=False (skipping the tiles above the diagonal gives "
            f"{ideal:.0%}): it looks like {description}.",
            fix,
            "computes_masked_tiles",
        )
    dense = 2 * L * L * 8
    if flops[False] > 1.5 * dense:
        raise Mistake(
            f"causal=False did {flops[False]} multiply-adds for L = {L}, d = dv = 8; "
            f"the tiles need {dense}: some tiles are computed more than once.",
            hint="visit each (query tile, key tile) pair once.",
            key="extra_work",
        )


def tiled_rejects_bad_input(tiled_attention, rng):
    """block_q or block_k < 1, and q, k with different head dims, raise ValueError"""
    q, k, v = qkv(rng, draw(rng, 3, 6), draw(rng, 3, 6), leading=(2,))
    expect_value_error(
        lambda: tiled_attention(q, k, v, block_q=0),
        "tiled_attention(..., block_q=0)",
        "no_error_for_bad_params",
    )
    expect_value_error(
        lambda: tiled_attention(q, k, v, block_k=-draw(rng, 1, 4)),
        "tiled_attention(..., block_k < 0)",
        "no_error_for_bad_params",
    )
    expect_value_error(
        lambda: tiled_attention(q, k[..., :-1], v),
        "tiled_attention with q (..., d), k (..., d - 1)",
        "no_error_for_bad_params",
    )


# ----------------------------------------------------------------------------- FlashAttentionTorch


def unwrap(impl):
    """The student's own object behind the guard's wrapper."""
    return getattr(impl, "__wrapped__", impl)


def function_class(impl):
    cls = unwrap(impl)
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        impl()  # a stub function still says "not implemented yet"
        raise Mistake(
            f"FlashAttentionTorch should be a torch.autograd.Function subclass, got {cls!r}.",
            hint="class FlashAttentionTorch(torch.autograd.Function): with "
            "@staticmethod forward(ctx, q, k, v, is_causal=False) and backward(ctx, d_out).",
            key="not_a_function",
        )
    return cls


def run_flash(impl, q, k, v, causal, d_out=None):
    """out, and (dq, dk, dv) when d_out is given: forward by .apply and backward by calling
    FlashAttentionTorch.backward(out.grad_fn, d_out), both under the guard."""
    cls = function_class(impl)
    forbidden = FORBIDDEN
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = guarded(cls.apply, "FlashAttentionTorch", forbidden)(*leaves, causal)
    if d_out is None:
        return out, leaves
    expect_tensor(
        out, "FlashAttentionTorch.apply(q, k, v)'s output", (*q.shape[:-1], v.shape[-1]), q.dtype
    )
    ctx = out.grad_fn
    if ctx is None:
        raise named("autograd_broken")
    grads = guarded(cls.backward, "FlashAttentionTorch", forbidden)(ctx, d_out)
    if not isinstance(grads, (tuple, list)) or len(grads) < 3:
        raise Mistake(
            f"FlashAttentionTorch.backward returned {type(grads).__name__}, expected "
            f"(dq, dk, dv, None).",
            HINTS["autograd_broken"][1],
            "autograd_broken",
        )
    return out, grads[:3]


def expect_grads(grads, q, k, v, d_out, mask, what, causal_only=False):
    refs = autograd64(q, k, v, d_out, mask)
    wrong = {
        "missing_D_term": dense_grads64(q, k, v, d_out, mask, use_D=False),
        "grad_missing_scale": dense_grads64(q, k, v, d_out, mask, scale_grads=False),
    }
    if mask is not None:
        wrong["causal_backward_unmasked"] = dense_grads64(q, k, v, d_out, mask, backward_mask=False)
    for name, grad, ref, index in zip(("dq", "dk", "dv"), grads, refs, range(3)):
        suspects = [
            (key, values[index])
            for key, values in wrong.items()
            if relative_error(values[index], ref) > 1e-6
        ]
        try:
            expect_close(
                grad,
                ref,
                q.dtype,
                what=f"{what}: {name}",
                suspects=suspects,
                nonfinite=named("grad_not_finite"),
            )
        except Mistake as mistake:
            if causal_only and mistake.key in ("wrong_values",):
                description, fix = HINTS["grads_wrong_only_causal"]
                raise Mistake(
                    f"{mistake.message} Without causal the gradients are right: it looks "
                    f"like {description}.",
                    fix,
                    "grads_wrong_only_causal",
                ) from None
            raise


def grads_right_without_causal(impl, rng, Lq, Lk):
    q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
    d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
    _, grads = run_flash(impl, q, k, v, False, d_out)
    refs = autograd64(q, k, v, d_out)
    return all(
        isinstance(g, torch.Tensor) and g.shape == r.shape and relative_error(g, r) <= 1e-8
        for g, r in zip(grads, refs)
    )


def flash_forward(FlashAttentionTorch, rng):
    """FlashAttentionTorch.apply(q, k, v, is_causal) matches dense attention (both causal values)"""
    Lq, Lk = draw(rng, 40, 70), draw(rng, 66, 100)
    q, k, v = qkv(rng, Lq, Lk)
    for causal in (False, True):
        out, _ = run_flash(FlashAttentionTorch, q, k, v, causal)
        ref, _ = dense64(q, k, v, causal_rule(Lq, Lk) if causal else None)
        expect_close(
            out,
            ref,
            q.dtype,
            what=f"FlashAttentionTorch.apply(q {tuple(q.shape)}, k {tuple(k.shape)}, v, {causal})",
            suspects=[
                (
                    "missing_scale",
                    dense64(q, k, v, causal_rule(Lq, Lk) if causal else None, scale=1.0)[0],
                )
            ],
        )


def flash_saves_lse(FlashAttentionTorch, rng):
    """saves q, k, v, out and exactly one logsumexp (..., Lq) (natural log), no (Lq, Lk) tensor"""
    Lq, Lk = draw(rng, 20, 30), draw(rng, 34, 40)  # Lq * Lk above any of q, k, v, out (d <= 16)
    q, k, v = qkv(rng, Lq, Lk, leading=(2, 3))
    for causal in (False, True):
        out, _ = run_flash(FlashAttentionTorch, q, k, v, causal)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise named("autograd_broken")
        saved = out.grad_fn.saved_tensors
        big = [t for t in saved if t.numel() >= math.prod(q.shape[:-2]) * Lq * Lk]
        if big:
            description, fix = HINTS["saves_too_much"]
            raise Mistake(
                f"ctx.saved_tensors holds a tensor of shape {tuple(big[0].shape)} for Lq = "
                f"{Lq}, Lk = {Lk}: it looks like {description}.",
                fix,
                "saves_too_much",
            )
        stats = [t for t in saved if tuple(t.shape) == (*q.shape[:-2], Lq)]
        if len(stats) > 1:
            raise named("saves_two_stats")
        if not stats:
            raise named("no_lse_saved")
        mask = causal_rule(Lq, Lk) if causal else None
        _, ref = dense64(q, k, v, mask)
        m = dense_max64(q, k, mask)
        expect_close(
            stats[0],
            ref,
            q.dtype,
            what=f"the saved logsumexp (causal={causal})",
            suspects=[
                ("lse_base2", ref / math.log(2)),
                ("lse_base2", m + (ref - m) / math.log(2)),
                ("lse_missing_max", ref - m),
            ],
        )
        shapes = sorted(tuple(t.shape) for t in saved)
        for tensor, name in ((q, "q"), (k, "k"), (v, "v"), (out, "out")):
            if tuple(tensor.shape) not in shapes:
                raise Mistake(
                    f"ctx.saved_tensors has no tensor shaped like {name} {tuple(tensor.shape)} "
                    f"(saved: {shapes}).",
                    HINTS["no_lse_saved"][1],
                    "missing_saved",
                )


def flash_gradients(FlashAttentionTorch, rng):
    """gradients dq, dk, dv match float64 autograd through dense attention (non-causal, Lq != Lk)"""
    Lq, Lk = draw(rng, 66, 80), draw(rng, 40, 100)
    q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
    d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
    _, grads = run_flash(FlashAttentionTorch, q, k, v, False, d_out)
    expect_grads(
        grads, q, k, v, d_out, None, f"backward for q {tuple(q.shape)}, k {tuple(k.shape)}"
    )


def flash_causal_gradients(FlashAttentionTorch, rng):
    """causal gradients (bottom-right): Lq == Lk, Lq < Lk, and Lq > Lk (masked rows: zero, finite)"""
    L = draw(rng, 66, 90)
    right_otherwise = grads_right_without_causal(FlashAttentionTorch, rng, 66, 70)
    for Lq, Lk in [(L, L), (draw(rng, 10, 50), L), (L, draw(rng, 20, 50))]:
        q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=(2,))
        d_out = randn((2, Lq, v.shape[-1]), rng, torch.float64)
        _, grads = run_flash(FlashAttentionTorch, q, k, v, True, d_out)
        expect_grads(
            grads,
            q,
            k,
            v,
            d_out,
            causal_rule(Lq, Lk),
            f"causal backward for q {tuple(q.shape)}, k {tuple(k.shape)}",
            causal_only=right_otherwise,
        )


def flash_autograd_and_shapes(FlashAttentionTorch, rng):
    """real autograd: .backward() fills q.grad, k.grad, v.grad; (L, D) and (B, H, L, D) inputs; gradcheck"""
    cls = function_class(FlashAttentionTorch)
    for leading in ((), (2, 2)):
        Lq, Lk = draw(rng, 3, 6), draw(rng, 3, 6)
        q, k, v = qkv(rng, Lq, Lk, torch.float64, leading=leading)
        d_out = randn((*leading, Lq, v.shape[-1]), rng, torch.float64)
        for causal in (False, True):
            out, leaves = run_flash(FlashAttentionTorch, q, k, v, causal)
            try:
                out.backward(d_out)
            except Exception as exc:
                raise Mistake(
                    f"out.backward(...) raised {type(exc).__name__}: {exc}",
                    HINTS["autograd_broken"][1],
                    "autograd_broken",
                ) from None
            expect_grads(
                [t.grad for t in leaves],
                q,
                k,
                v,
                d_out,
                causal_rule(Lq, Lk) if causal else None,
                f"autograd with q {tuple(q.shape)}, causal={causal}",
            )
    q, k, v = qkv(rng, 4, 5, torch.float64, leading=(1,))
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    try:
        ok = torch.autograd.gradcheck(
            lambda a, b, c: cls.apply(a, b, c, True), inputs, raise_exception=False
        )
    except Exception:
        ok = False
    if not ok:
        raise Mistake(
            "torch.autograd.gradcheck (finite differences, float64) disagrees with your "
            "backward for causal q (1, 4, d), k (1, 5, d).",
            hint="compare dq, dk, dv with autograd through a naive float64 attention on a "
            "tiny example.",
            key="gradcheck",
        )


EXERCISES = {
    "online_softmax_stats": Exercise(
        checks=[
            stats_match,
            stats_dims_and_float64,
            stats_extremes,
            stats_streaming,
            stats_rejects_bad_block,
        ],
        forbidden=FORBIDDEN,
    ),
    "tiled_attention": Exercise(
        checks=[
            tiled_matches,
            tiled_causal,
            tiled_fully_masked_rows,
            tiled_shapes_and_float64,
            tiled_never_full_matrix,
            tiled_skips_masked_tiles,
            tiled_rejects_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
    "FlashAttentionTorch": Exercise(
        checks=[
            flash_forward,
            flash_saves_lse,
            flash_gradients,
            flash_causal_gradients,
            flash_autograd_and_shapes,
        ],
        forbidden=FORBIDDEN,
    ),
}
