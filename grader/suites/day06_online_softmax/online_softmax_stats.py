"""Checks for online_softmax_stats: the running max and sum, streamed block by block."""

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grader.harness.checking import Mistake, expect_close, expect_tensor, expect_value_error, named
from grader.suites._common import call_unchanged, draw, randn
from grader.suites.day06_online_softmax.hints import HINTS

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


def stats64(x, dim):
    x = x.double()
    m = x.amax(dim)
    shift = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return m, torch.exp(x - shift.unsqueeze(dim)).sum(dim)


def stats_suspects(x, block_size, dim):
    """(key, sum_exp) pairs of the named mistakes, by a float64 block loop with the shift-by-0
    guard (so that a mistake made next to a right guard matches on -inf rows too)."""
    x = x.double().movedim(dim, -1)
    m = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float64)
    plain, logged, all_rows = torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m)
    inverted, inverted_nan = torch.zeros_like(m), torch.zeros_like(m)  # 0 * exp(inf) zeroed, or NaN
    old_guard = torch.zeros_like(m)  # the guard tests the old max: the first block not shifted
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start : start + block_size]
        m_new = torch.maximum(m, block.amax(-1))
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - shift)
        new = torch.exp(block - shift.unsqueeze(-1)).sum(-1)  # (...,)
        plain = plain + new
        inverted = inverted * torch.exp(shift - m).nan_to_num(posinf=0.0) + new
        inverted_nan = inverted_nan * torch.exp(shift - m) + new
        logged = logged * alpha + torch.log(new)
        old_shift = torch.where(torch.isinf(m), torch.zeros_like(m_new), m_new)
        old_guard = old_guard * torch.exp(m - old_shift) + torch.exp(
            block - old_shift.unsqueeze(-1)
        ).sum(-1)
        all_rows = all_rows * alpha + new.sum()  # one number for every row
        m = m_new
    m_right, right = stats64(x, -1)
    shift = torch.where(torch.isinf(m_right), torch.zeros_like(m_right), m_right)
    shared = x[..., block_size::block_size]  # each block's first entry, read by the one before too
    overlapping = right + torch.exp(shared - shift.unsqueeze(-1)).sum(-1)
    return [
        ("missing_rescale", plain),
        ("rescale_inverted", inverted),
        ("rescale_inverted", inverted_nan),
        ("block_sum_logged", logged),
        ("returns_log", torch.log(right)),
        ("returns_log", m + torch.log(right)),
        ("blocks_overlap", overlapping),
        ("block_sum_all_rows", all_rows),
        ("guard_tests_old_max", old_guard),
    ]


def expect_close_inf(out, ref, dtype, what, suspects=(), nonfinite=None):
    """expect_close where `ref` may hold infinities: those entries must be equal exactly (else
    NaN there is the mistake `nan_for_masked`, a finite number `finite_for_all_inf`), the others
    are compared as usual."""
    if isinstance(out, torch.Tensor) and out.shape == ref.shape:
        inf = torch.isinf(ref)
        if inf.any():
            expect_tensor(out, what, ref.shape, dtype)
            got, want = out.detach().double()[inf], ref[inf]
            wrong = got != want  # NaN included
            if wrong.any():
                raise_for_infinity(got[wrong][0].item(), want[wrong][0].item(), what)
            out, ref = out[~inf], ref[~inf]
            suspects = [(key, wrong[~inf]) for key, wrong in suspects]
    expect_close(out, ref, dtype, what=what, suspects=suspects, nonfinite=nonfinite)


def raise_for_infinity(got: float, want: float, what: str):
    """The mistake behind `got` where the answer is the infinity `want`."""
    seen = f"{what} is {got} where the answer is {want}"
    if math.isnan(got) or math.isfinite(got):
        key = "nan_for_masked" if math.isnan(got) else "finite_for_all_inf"
        description, fix = HINTS[key]
        raise Mistake(f"{seen}: it looks like {description}.", fix, key)
    raise Mistake(
        f"{seen}.", "an all -inf slice gives max = -inf and sum = 0: follow one such row."
    )


def raise_if_nonfinite_suspect(out, ref, suspects, what):
    """NaN or inf where the answer is finite, and a suspect with the same NaN and inf in the same
    places (a log of a zero sum is -inf, not NaN): that mistake, before the NaN hint."""
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return
    got = out.detach().double()
    if (torch.isfinite(got) | ~torch.isfinite(ref)).all():
        return
    for key, wrong in suspects:
        if torch.allclose(got, wrong, rtol=1e-4, atol=1e-6, equal_nan=True):
            description, fix = HINTS[key]
            raise Mistake(
                f"{what} has {int((~torch.isfinite(got) & torch.isfinite(ref)).sum())} NaN/inf "
                f"values where the answer is finite, in the places where the code with this "
                f"mistake has them (its other values alike): it looks like {description}.",
                fix,
                key,
            )


def pair_suspects(x, block_size, dim):
    """(key, (max, sum_exp)) of the mistakes that change both statistics, even their shape."""
    found = [("stats_swapped", stats64(x, dim)[::-1])]
    if dim % x.dim() != x.dim() - 1:
        found.append(("dim_ignored", stats64(x, -1)))
    rows = x.movedim(dim, -1)
    kept = rows.shape[-1] // block_size * block_size  # the full blocks only
    if kept < rows.shape[-1]:
        if kept == 0:
            nothing = torch.full(rows.shape[:-1], float("-inf"), dtype=torch.float64)
            found.append(("last_block_dropped", (nothing, torch.zeros_like(nothing))))
        else:
            found.append(("last_block_dropped", stats64(rows[..., :kept], -1)))
    return found


def same_pair(result, pair) -> bool:
    """Both statistics of `result` equal to those of `pair` (infinities alike)."""
    return all(
        isinstance(got, torch.Tensor)
        and got.shape == wrong.shape
        and torch.allclose(got.detach().double(), wrong, rtol=1e-4, atol=1e-6)
        for got, wrong in zip(result, pair)
    )


def raise_if_pair_suspect(result, suspects, what):
    """Both statistics equal to what a named mistake gives: that mistake."""
    for key, pair in suspects:
        if same_pair(result, pair):
            description, fix = HINTS[key]
            raise Mistake(
                f"{what}: both the max and the sum match the code with this mistake: "
                f"{description}.",
                fix,
                key,
            )


def expect_stats(online_softmax_stats, x, block_size, dim, what):
    """The statistics of x along dim against float64, naming the mistakes this day recognises; a
    crash or values no mistake matches are explained where a probe can: by the same slices along
    the last dim (explain_by_last_dim), then by each row alone (explain_by_rows)."""
    try:
        compare_stats(online_softmax_stats, x, block_size, dim, what)
    except Mistake as raised:
        if raised.key in ("raised", "wrong_values", "wrong_shape") and dim % x.dim() != x.dim() - 1:
            explain_by_last_dim(online_softmax_stats, raised, x, block_size, dim)
        if raised.key in ("raised", "wrong_values"):
            explain_by_rows(online_softmax_stats, raised, x, block_size, dim)
        raise


def compare_stats(online_softmax_stats, x, block_size, dim, what):
    result = call_unchanged(online_softmax_stats, {"x": x}, block_size, dim=dim)
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}, expected a tuple (max, sum_exp).",
            hint="return both statistics: `return m, s`.",
            key="wrong_return",
        )
    m_ref, s_ref = stats64(x, dim)
    # A mistake that changes nothing here (a last block far below the max adds ~0) is no suspect.
    suspects = [
        (k, pair)
        for k, pair in pair_suspects(x, block_size, dim)
        if not same_pair(pair, (m_ref, s_ref))
    ]
    raise_if_pair_suspect(result, suspects, what)
    # On finite x only an upside-down factor makes NaN: exp(m_new - (-inf)) = inf times l = 0.
    nonfinite = named("rescale_inverted" if torch.isfinite(x).all() else "nan_for_masked")
    expect_close_inf(result[0], m_ref, x.dtype, f"{what}'s max", nonfinite=nonfinite)
    suspects = stats_suspects(x, block_size, dim)
    raise_if_nonfinite_suspect(result[1], s_ref, suspects, f"{what}'s sum_exp")
    expect_close(
        result[1], s_ref, x.dtype, what=f"{what}'s sum_exp", suspects=suspects, nonfinite=nonfinite
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
        what = f"online_softmax_stats(x of {tuple(x.shape)}, {block_size}, dim={dim})"
        expect_stats(online_softmax_stats, x, block_size, dim, what)


def explain_by_last_dim(online_softmax_stats, raised: Mistake, x, block_size, dim):
    """After a wrong result (or a crash) along `dim`: the same slices made the last dim, and the
    statistics right there, name the handling of `dim`; else what was seen stands."""
    last = x.movedim(dim, -1).contiguous()
    name_if_right(
        raised,
        lambda: same_pair(online_softmax_stats(last, block_size, dim=-1), stats64(x, dim)),
        "With the same slices along the last dim it gives the right statistics",
        "dim_mishandled",
    )


def explain_by_rows(online_softmax_stats, raised: Mistake, x, block_size, dim):
    """After a wrong result (or a crash) on several rows: every row given alone (x of shape (N,))
    right means the rows get in each other's way, as a per-row (rows,) value does when it meets
    a (rows, block_size) block without unsqueeze(-1); else what was seen stands."""
    rows = x.movedim(dim, -1).reshape(-1, x.shape[dim])
    if len(rows) < 2:
        return
    name_if_right(
        raised,
        lambda: all(
            same_pair(online_softmax_stats(row, block_size, dim=-1), stats64(row, -1))
            for row in rows
        ),
        f"Each row alone (x of shape ({x.shape[dim]},)) gives the right statistics",
        "shift_not_unsqueezed",
    )


def name_if_right(raised: Mistake, rerun_is_right, seen: str, key: str) -> None:
    """Raise mistake `key`, after what `raised` saw and `seen`, when `rerun_is_right()` holds;
    a rerun that fails (a Mistake, or a result that is not a pair) explains nothing."""
    try:
        right = rerun_is_right()
    except Exception:
        return
    if right:
        description, fix = HINTS[key]
        raise Mistake(
            f"{raised.message}\n      {seen}: it looks like {description}.", fix, key
        ) from None


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
    try:
        with tracker:
            online_softmax_stats(x, block_size, dim=-1)
    except Mistake as raised:
        if raised.key == "raised":
            explain_by_rows(online_softmax_stats, raised, x, block_size, -1)
        raise
    if tracker.largest > rows * block_size:
        # Less than the whole of x: each block read a little too far
        key = "blocks_overlap" if tracker.largest < x.numel() else "not_streaming"
        description, fix = HINTS[key]
        raise Mistake(
            f"one {tracker.name} read {tracker.largest} elements at once, but one block of "
            f"x ({rows}, {N}) is ({rows}, {block_size}) = {rows * block_size}: it looks like "
            f"{description}.",
            fix,
            key,
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
