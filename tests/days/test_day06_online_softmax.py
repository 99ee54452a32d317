"""The day06 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, correct implementations written differently pass too, and bad input gives
clear errors."""

import functools
import math

import pytest
import torch

import course.reference.online_softmax as library
from grader.harness.checking import run
from grader.suites.day06_online_softmax import EXERCISES as SUITE
from grader.suites.day06_online_softmax import HINTS
from helpers import (
    assert_mistake_named,
    assert_named_on_seeds,
    assert_promise_kept,
    day_report,
    edited_solution,
    planted_keys,
    promised,
)

DAY = "day06-online-softmax"
EXERCISES = ["online_softmax_stats", "tiled_attention", "FlashAttentionTorch"]

# For tests/test_nbgrader_e2e.py: a backward without FlashAttention-2's D term costs
# FlashAttentionTorch's visible and hidden points (2 + 1), and the feedback names the mistake.
PLANTED_SUBMISSION = {
    "cell": "FlashAttentionTorch",
    "old": "ds = p * (dp - D[..., rows, None])",
    "new": "ds = p * dp",
    "points_lost": 3,
    "hint": "the softmax Jacobian gives ds = p * (dp - D) with D = rowsum(dO * O) per "
    "query (equal to rowsum(p * dp)); compute D once before the tile loop.",
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)
NEG_INF = float("-inf")


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- the solution


@pytest.mark.parametrize("name", EXERCISES)
def test_solution_passes_visible_and_hidden_seeds(solution, name):
    assert report(name, solution[name]).passed
    for seed in range(1, 26):
        result = report(name, solution[name], hidden=True, seed=seed)
        assert result.passed, [(r.check, r.message) for r in result.results if not r.passed]


def test_the_solution_agrees_with_the_library(solution):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, L, 8, generator=g, dtype=torch.float64) for L in (9, 13, 13))
    for causal in (False, True):
        got = solution["tiled_attention"](q, k, v, 4, 5, causal)
        want = library.tiled_attention(q, k, v, 4, 5, causal)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    x = torch.randn(3, 17, generator=g)
    for a, b in zip(solution["online_softmax_stats"](x, 4), library.online_softmax_stats(x, 4)):
        torch.testing.assert_close(a, b)
    out = solution["flash_attention_torch"](q, k, v, True)
    torch.testing.assert_close(out, library.flash_attention_torch(q, k, v, True))


@pytest.mark.parametrize("source", ["solution", "library"])
@pytest.mark.parametrize(
    "call",
    [
        lambda f: f["tiled_attention"](
            torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), block_q=0
        ),
        lambda f: f["tiled_attention"](
            torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), block_k=-1
        ),
        lambda f: f["tiled_attention"](torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2)),
        lambda f: f["tiled_attention"](torch.zeros(4, 2), torch.zeros(5, 2), torch.zeros(4, 2)),
        lambda f: f["online_softmax_stats"](torch.zeros(4), 0),
        lambda f: f["flash_attention_torch"](
            torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 2)
        ),
    ],
    ids=["block_q0", "block_k<0", "head-dims", "kv-lengths", "stats-block0", "flash-head-dims"],
)
def test_bad_input_gives_a_clear_value_error(solution, source, call):
    functions = solution if source == "solution" else vars(library)
    with pytest.raises(ValueError, match=r"block|expected|must"):
        call(functions)


def test_fully_masked_rows_are_zero_with_lse_minus_inf(solution):
    q, k, v = torch.randn(7, 4), torch.randn(3, 4), torch.randn(3, 5)
    out, lse = solution["tiled_attention"](q, k, v, 2, 2, True)
    assert (out[:4] == 0).all() and (lse[:4] == NEG_INF).all() and torch.isfinite(out).all()
    leaves = [t.clone().double().requires_grad_() for t in (q, k, v)]
    solution["flash_attention_torch"](*leaves, True).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves) and (leaves[0].grad[:4] == 0).all()


# ----------------------------------------------------------------------------- online_softmax_stats


def make_stats(rescale="right", output="sum", guard=True, two_pass=False, check_block=True):
    """An online_softmax_stats with one mistake switched on."""

    def online_softmax_stats(x, block_size, dim=-1):
        if check_block and block_size < 1:
            raise ValueError("block_size must be >= 1")
        x = x.movedim(dim, -1)
        m = torch.full(x.shape[:-1], NEG_INF, dtype=x.dtype)
        s = torch.zeros_like(m)
        if two_pass:
            m = x.amax(-1)
        for start in range(0, x.shape[-1], block_size):
            block = x[..., start : start + block_size]
            m_new = torch.maximum(m, block.amax(-1))
            shift = torch.where(m_new == NEG_INF, 0.0, m_new) if guard else m_new
            factor = {
                "right": torch.exp(m - shift),
                "none": 1.0,
                "inverted": torch.exp(shift - m).nan_to_num(posinf=0.0),
            }[rescale]
            s = s * factor + torch.exp(block - shift[..., None]).sum(-1)
            m = m_new
        if output == "log":
            return m, m + torch.log(s)
        if output == "keepdim":
            return m.unsqueeze(-1), s.unsqueeze(-1)
        return m, s

    return online_softmax_stats


def stats_split(x, block_size, dim=-1):
    """Correct, written differently: torch.split along dim, keepdim until the end, float64 inside."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m, s = None, None
    for block in torch.split(x, block_size, dim=dim):
        top = block.amax(dim=dim, keepdim=True)
        if m is None:
            m, s = top, torch.zeros_like(top)
        new = torch.maximum(m, top)
        safe = new.masked_fill(new == NEG_INF, 0)
        s = s * (m - safe).exp() + (block - safe).exp().sum(dim=dim, keepdim=True)
        m = new
    return m.squeeze(dim), s.squeeze(dim)


def stats_softmax(x, block_size, dim=-1):
    return x.amax(dim), torch.exp(torch.logsumexp(x, dim) - x.amax(dim))


def stats_library(x, block_size, dim=-1):
    return library.online_softmax_stats(x, block_size, dim)


def test_a_different_correct_stats_passes():
    assert report("online_softmax_stats", stats_split).passed
    for seed in range(1, 6):
        assert report("online_softmax_stats", stats_split, hidden=True, seed=seed).passed


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_stats(rescale="none"), "missing_rescale"),
        (make_stats(rescale="inverted"), "rescale_inverted"),
        (make_stats(output="log"), "returns_log"),
        (make_stats(guard=False), "nan_for_masked"),
        (make_stats(two_pass=True), "not_streaming"),
        (make_stats(output="keepdim"), "wrong_shape"),
        (make_stats(check_block=False), "no_error_for_bad_params"),
        (stats_softmax, "shortcut"),
        (stats_library, "shortcut"),
        (stub, "not_implemented"),
    ],
    ids=[
        "no_rescale",
        "inverted",
        "log",
        "nan",
        "two_pass",
        "keepdim",
        "no_error",
        "logsumexp",
        "library",
        "stub",
    ],
)
def test_online_softmax_stats_bug_is_named(bug, key, capsys):
    assert_named("online_softmax_stats", bug, key, capsys)


# ----------------------------------------------------------------------------- tiled_attention


def make_tiled(
    rescale_l=True,
    rescale_acc=True,
    lse="e",
    causal_mode="bottom_right",
    skip=True,
    full_mask=False,
    scale=True,
    guard=True,
    check=True,
    keepdim=False,
):
    """A tiled_attention with one mistake switched on."""

    def tiled_attention(q, k, v, block_q=64, block_k=64, causal=False):
        if check and (block_q < 1 or block_k < 1 or q.shape[-1] != k.shape[-1]):
            raise ValueError("bad block sizes or shapes")
        Lq, Lk = q.shape[-2], k.shape[-2]
        c = 1 / math.sqrt(q.shape[-1]) if scale else 1.0
        offset = {"bottom_right": Lk - Lq, "top_left": 0, "strict": Lk - Lq - 1}.get(
            causal_mode, Lk - Lq
        )
        if full_mask:
            allowed = torch.arange(Lk) <= torch.arange(Lq)[:, None] + offset  # (Lq, Lk): forbidden
        outs, lses = [], []
        for i0 in range(0, Lq, block_q):
            qi = q[..., i0 : i0 + block_q, :]
            bq = qi.shape[-2]
            m = torch.full(qi.shape[:-1], NEG_INF, dtype=q.dtype)
            l = torch.zeros_like(m)
            acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype)
            stop = (
                min(Lk, max(0, offset + i0 + bq))
                if causal and skip and causal_mode != "flip"
                else Lk
            )
            for j0 in range(0, stop, block_k):
                kj, vj = k[..., j0 : j0 + block_k, :], v[..., j0 : j0 + block_k, :]
                s = qi @ kj.transpose(-2, -1) * c
                if causal and causal_mode != "ignore":
                    rows = (offset + i0 + torch.arange(bq))[:, None]
                    cols = (j0 + torch.arange(kj.shape[-2]))[None, :]
                    if full_mask:
                        s = s.masked_fill(~allowed[i0 : i0 + bq, j0 : j0 + block_k], NEG_INF)
                    elif causal_mode == "flip":
                        s = s.masked_fill(cols < rows, NEG_INF)
                    else:
                        s = s.masked_fill(cols > rows, NEG_INF)
                m_new = torch.maximum(m, s.amax(-1))
                shift = torch.where(m_new == NEG_INF, 0.0, m_new) if guard else m_new
                alpha = torch.exp(m - shift)
                p = torch.exp(s - shift[..., None])
                l = (l * alpha if rescale_l else l) + p.sum(-1)
                acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ vj
                m = m_new
            outs.append(acc / (torch.where(l == 0, 1.0, l) if guard else l)[..., None])
            lses.append(
                {
                    "e": m + torch.log(l),
                    "2": (m + torch.log(l)) / math.log(2),
                    "nomax": torch.log(l),
                }[lse]
            )
        out, lse_ = torch.cat(outs, -2), torch.cat(lses, -1)
        return out, (lse_.unsqueeze(-1) if keepdim else lse_)

    return tiled_attention


def tiled_exp2(q, k, v, block_q=64, block_k=64, causal=False):
    """Correct, written differently: base-2 exponentials as Triton kernels use (scores times
    log2(e)), key tiles found by a generator, lse converted back to base e."""
    if block_q < 1 or block_k < 1 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError("block sizes must be >= 1 and shapes must fit")
    Lq, Lk = q.shape[-2], k.shape[-2]
    qs = q * (math.log2(math.e) / math.sqrt(q.shape[-1]))
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    lse = q.new_empty(q.shape[:-1])
    for i0 in range(0, Lq, block_q):
        i1 = min(i0 + block_q, Lq)
        m = q.new_full(q.shape[:-2] + (i1 - i0,), NEG_INF)
        l, acc = torch.zeros_like(m), q.new_zeros(*m.shape, v.shape[-1])
        last = min(Lk, Lk - Lq + i1) if causal else Lk
        for j0 in range(0, last, block_k):
            j1 = min(j0 + block_k, Lk)
            s = qs[..., i0:i1, :] @ k[..., j0:j1, :].mT
            if causal:
                s = torch.where(
                    torch.arange(j0, j1) <= torch.arange(i0, i1)[:, None] + Lk - Lq, s, NEG_INF
                )
            m_new = torch.maximum(m, s.amax(-1)).nan_to_num(neginf=0.0)
            l = l * torch.exp2(m.nan_to_num(neginf=-1e30) - m_new) + torch.exp2(
                s - m_new[..., None]
            ).sum(-1)
            acc = (
                acc * torch.exp2(m.nan_to_num(neginf=-1e30) - m_new)[..., None]
                + torch.exp2(s - m_new[..., None]) @ v[..., j0:j1, :]
            )
            m = torch.maximum(m, s.amax(-1))
        out[..., i0:i1, :] = acc / l.clamp_min(torch.finfo(l.dtype).tiny)[..., None]
        lse[..., i0:i1] = (m + torch.log2(l)) * math.log(2)
    return out, lse


def tiled_sdpa(q, k, v, block_q=64, block_k=64, causal=False):
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out, out.sum(-1)


def test_a_different_correct_tiled_attention_passes():
    assert report("tiled_attention", tiled_exp2).passed
    for seed in range(1, 4):
        assert report("tiled_attention", tiled_exp2, hidden=True, seed=seed).passed


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_tiled(rescale_l=False, rescale_acc=False), "missing_rescale"),
        (make_tiled(rescale_acc=False), "rescale_l_only"),
        (make_tiled(rescale_l=False), "rescale_acc_only"),
        (make_tiled(lse="2"), "lse_base2"),
        (make_tiled(lse="nomax"), "lse_missing_max"),
        (make_tiled(causal_mode="top_left"), "causal_top_left"),
        (make_tiled(causal_mode="strict"), "causal_strict"),
        (make_tiled(causal_mode="flip"), "causal_wrong_side"),
        (make_tiled(causal_mode="ignore", skip=False), "ignores_causal"),
        (make_tiled(skip=False), "computes_masked_tiles"),
        (make_tiled(full_mask=True), "builds_full_matrix"),
        (make_tiled(scale=False), "missing_scale"),
        # Without the guards, skipped tiles leave the empty rows' state right (lse = -inf):
        # only the last division, 0 / 0, shows. Computed tiles show the shift's NaN first.
        (make_tiled(guard=False), "empty_rows_divided_by_zero"),
        (make_tiled(guard=False, skip=False), "nan_for_masked"),
        (make_tiled(keepdim=True), "wrong_shape"),
        (make_tiled(check=False), "no_error_for_bad_params"),
        (tiled_sdpa, "shortcut"),
        (
            lambda q, k, v, block_q=64, block_k=64, causal=False: library.tiled_attention(
                q, k, v, block_q, block_k, causal
            ),
            "shortcut",
        ),
        (stub, "not_implemented"),
    ],
    ids=[
        "no_rescale",
        "l_only",
        "acc_only",
        "base2",
        "nomax",
        "top_left",
        "strict",
        "wrong_side",
        "ignores",
        "no_skip",
        "full_mask",
        "scale",
        "nan",
        "nan_no_skip",
        "keepdim",
        "no_error",
        "sdpa",
        "library",
        "stub",
    ],
)
def test_tiled_attention_bug_is_named(bug, key, capsys):
    assert_named("tiled_attention", bug, key, capsys)


# ----------------------------------------------------------------------------- FlashAttentionTorch


def make_flash(
    use_D=True,
    scale_grads=True,
    backward_mask=True,
    save="lse",
    lse_base=math.e,
    inf_guard=True,
    only_causal_wrong=False,
    grads=3,
):
    """A FlashAttentionTorch with one mistake switched on (forward from the library's tiles, so
    only the Function itself is under test)."""
    forward_tiles = make_tiled()

    class FlashAttentionTorch(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, is_causal=False):
            out, lse = forward_tiles(q, k, v, 16, 16, is_causal)
            if save == "two":
                ctx.save_for_backward(q, k, v, out, lse, torch.zeros_like(lse))
            elif save == "p":
                s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                ctx.save_for_backward(q, k, v, out, lse, torch.exp(s - lse[..., None]))
            else:
                ctx.save_for_backward(q, k, v, out, lse / math.log(lse_base))
            ctx.is_causal = is_causal
            return out

        @staticmethod
        def backward(ctx, d_out):
            q, k, v, out, lse = ctx.saved_tensors[:5]
            lse = lse * math.log(lse_base)
            Lq, Lk = q.shape[-2], k.shape[-2]
            scale = 1 / math.sqrt(q.shape[-1])
            s = (
                q @ k.transpose(-2, -1) * scale
            )  # a dense backward: these tests are about its formulas
            if ctx.is_causal and backward_mask:
                allowed = torch.arange(Lk) <= torch.arange(Lq)[:, None] + Lk - Lq
                s = s.masked_fill(~allowed, NEG_INF)
            if inf_guard:
                lse = torch.where(lse == NEG_INF, float("inf"), lse)
            p = torch.exp(s - lse[..., None])
            dv = p.transpose(-2, -1) @ d_out
            dp = d_out @ v.transpose(-2, -1)
            D = (d_out * out).sum(-1, keepdim=True)
            ds = p * (dp - D) if use_D else p * dp
            if only_causal_wrong and ctx.is_causal:
                ds = ds * 1.1
            g = scale if scale_grads else 1.0
            result = (ds @ k * g, ds.transpose(-2, -1) @ q * g, dv, None)
            return result[:grads]

    return FlashAttentionTorch


class FlashKeyOuter(torch.autograd.Function):
    """Correct, written differently: 32-wide tiles, query tiles outside in backward, D computed
    per query tile, is_causal kept as an int."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        out, lse = make_tiled()(q, k, v, 32, 32, bool(is_causal))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = int(bool(is_causal))
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        Lq, Lk, b = q.shape[-2], k.shape[-2], 32
        c = q.shape[-1] ** -0.5
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        lse = lse.masked_fill(lse == NEG_INF, float("inf"))
        for i0 in range(0, Lq, b):
            i1 = min(i0 + b, Lq)
            D = (d_out[..., i0:i1, :] * out[..., i0:i1, :]).sum(-1)
            stop = min(Lk, max(0, Lk - Lq + i1)) if ctx.causal else Lk
            for j0 in range(0, stop, b):
                j1 = min(j0 + b, Lk)
                s = q[..., i0:i1, :] @ k[..., j0:j1, :].mT * c
                if ctx.causal:
                    s = torch.where(
                        torch.arange(j0, j1) <= torch.arange(i0, i1)[:, None] + Lk - Lq, s, NEG_INF
                    )
                p = (s - lse[..., i0:i1, None]).exp()
                dv[..., j0:j1, :] += p.mT @ d_out[..., i0:i1, :]
                ds = p * (d_out[..., i0:i1, :] @ v[..., j0:j1, :].mT - D[..., None])
                dq[..., i0:i1, :] += c * ds @ k[..., j0:j1, :]
                dk[..., j0:j1, :] += c * ds.mT @ q[..., i0:i1, :]
        return dq, dk, dv, None


class FlashLibrary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        return library.flash_attention_torch(q, k, v, is_causal).detach()

    @staticmethod
    def backward(ctx, d_out):
        return d_out, d_out, d_out, None


def test_a_different_correct_function_passes():
    assert report("FlashAttentionTorch", FlashKeyOuter).passed
    assert report("FlashAttentionTorch", FlashKeyOuter, hidden=True, seed=3).passed


@pytest.mark.parametrize(
    "bug, key",
    [
        (make_flash(use_D=False), "missing_D_term"),
        (make_flash(scale_grads=False), "grad_missing_scale"),
        (make_flash(backward_mask=False), "causal_backward_unmasked"),
        (make_flash(only_causal_wrong=True), "grads_wrong_only_causal"),
        (make_flash(inf_guard=False), "grad_not_finite"),
        (make_flash(save="two"), "saves_two_stats"),
        (make_flash(save="p"), "saves_too_much"),
        (make_flash(lse_base=2.0), "lse_base2"),
        (make_flash(grads=2), "autograd_broken"),
        (FlashLibrary, "shortcut"),
        (lambda *args: None, "not_a_function"),
        (stub, "not_implemented"),
    ],
    ids=[
        "no_D",
        "grad_scale",
        "unmasked",
        "only_causal",
        "nan_grad",
        "two_stats",
        "saves_p",
        "base2",
        "broken",
        "library",
        "function",
        "stub",
    ],
)
def test_flash_attention_torch_bug_is_named(bug, key, capsys):
    assert_named("FlashAttentionTorch", bug, key, capsys)


class FlashStub(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        raise NotImplementedError()

    @staticmethod
    def backward(ctx, d_out):
        raise NotImplementedError()


def test_the_untouched_function_class_is_not_implemented():
    result = report("FlashAttentionTorch", FlashStub)
    assert result.keys == {"not_implemented"} and len(result.results) == 1


# ----------------------------------------------------------------------------- beginner mistakes

# The beginner pass's mistakes (issue #18), each planted in the solution's own code and named on
# the visible seed and on hidden ones.
HIDDEN_SEEDS = (1, 2)


def assert_named_on_every_seed(name: str, bug, key: str, capsys) -> None:
    assert_named_on_seeds(DAY, name, bug, key, capsys, HIDDEN_SEEDS)


def planted(solution, cell: str, *edits):
    return edited_solution(DAY, solution, cell, edits)


def assert_check_names(name: str, check_name: str, bug, key: str) -> None:
    """The one check that recognises the mistake names it, on seed 0 and the hidden seeds (the
    whole exercise takes seconds per run here: its other checks need not run again)."""
    (check,) = [c for c in SUITE[name].checks if c.__name__ == check_name]
    for seed in (0, *HIDDEN_SEEDS):
        result = run(name, bug, [check], SUITE[name].forbidden, hints=HINTS, seed=seed)
        assert result.keys == {key}, (seed, [(r.key, r.message) for r in result.results])
        assert result.results[0].hint == HINTS[key][1]


STATS_BUGS = {
    "modified_input": [
        (
            "x = x.movedim(dim, -1)  ",
            'x.masked_fill_(x == float("-inf"), -1e30)\n    x = x.movedim(dim, -1)  ',
        ),
        ('shift = torch.where(new_max == float("-inf"), 0.0, new_max)', "shift = new_max"),
    ],
    "rescale_inverted": [
        ("torch.exp(running_max - shift)", "torch.exp(shift - running_max)"),
    ],
    "dim_ignored": [("x = x.movedim(dim, -1)  ", "x = x  ")],
    "last_block_dropped": [
        ("range(0, x.shape[-1], block_size)", "range(0, x.shape[-1] - block_size + 1, block_size)")
    ],
}


@pytest.mark.parametrize("key", STATS_BUGS)
def test_beginner_stats_mistake_is_named(solution, key, capsys):
    bug = planted(solution, "online_softmax_stats", *STATS_BUGS[key])
    assert_named_on_every_seed("online_softmax_stats", bug, key, capsys)


TILED_BUGS = {  # key: (the check that names it, the edits)
    "empty_rows_divided_by_zero": [
        ("acc / torch.where(l == 0, 1.0, l)[..., None]", "acc / l[..., None]"),
    ],
    "lse_finite_for_empty": [
        ("lses.append(m + torch.log(l))", "lses.append((m + torch.log(l)).nan_to_num())")
    ],
    "returns_swapped": [
        (
            "return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)",
            "return torch.cat(lses, dim=-1), torch.cat(outs, dim=-2)",
        )
    ],
    "causal_tile_stops_early": [
        ("min(Lk, Lk - Lq + i0 + bq)", "min(Lk, max(0, Lk - Lq + i0 + bq - 1))"),
        (
            "k[..., j0:j0 + block_k, :], v[..., j0:j0 + block_k, :]",
            "k[..., j0:min(j0 + block_k, key_end), :], v[..., j0:min(j0 + block_k, key_end), :]",
        ),
    ],
    "batched_transpose": [("s = qi @ kj.transpose(-2, -1) * scale", "s = qi @ kj.T * scale")],
    "causal_strict": [("key_pos > query_pos", "key_pos >= query_pos")],
}


TILED_CHECK = {
    "empty_rows_divided_by_zero": "tiled_fully_masked_rows",
    "lse_finite_for_empty": "tiled_fully_masked_rows",
    "returns_swapped": "tiled_matches",
    "causal_tile_stops_early": "tiled_causal",
    "batched_transpose": "tiled_matches",
    "causal_strict": "tiled_causal",  # once named top-left on an Lq == Lk input
}


@pytest.mark.parametrize("key", TILED_BUGS)
def test_beginner_tiled_mistake_is_named(solution, key):
    bug = planted(solution, "tiled_attention", *TILED_BUGS[key])
    assert_check_names("tiled_attention", TILED_CHECK[key], bug, key)


def test_a_named_tiled_mistake_prints_its_hint(solution, capsys):
    bug = planted(solution, "tiled_attention", *TILED_BUGS["empty_rows_divided_by_zero"])
    assert_named("tiled_attention", bug, "empty_rows_divided_by_zero", capsys)


FLASH_BUGS = {
    "D_per_tile": [
        ("ds = p * (dp - D[..., rows, None])", "ds = p * (dp - (p * dp).sum(-1, keepdim=True))")
    ],
    "dv_not_transposed": [
        (
            "p.transpose(-2, -1) @ d_oi",
            "(p @ d_oi if p.shape[-1] == p.shape[-2] else p.transpose(-2, -1) @ d_oi)",
        )
    ],
    "backward_computes_masked_tiles": [
        ("first_query = max(0, j0 - (Lk - Lq)) if ctx.is_causal else 0", "first_query = 0")
    ],
}


FLASH_CHECK = {
    "D_per_tile": "flash_gradients",
    "dv_not_transposed": "flash_gradients",
    "backward_computes_masked_tiles": "flash_backward_skips_masked_tiles",
}


@pytest.mark.parametrize("key", FLASH_BUGS)
def test_beginner_flash_mistake_is_named(solution, key):
    bug = planted(solution, "FlashAttentionTorch", *FLASH_BUGS[key])
    assert_check_names("FlashAttentionTorch", FLASH_CHECK[key], bug, key)


def stats_nan_to_num(x, block_size, dim=-1):
    """No shift guard, but NaN (only ever from an all -inf prefix, where 0 is right) zeroed."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    x = x.movedim(dim, -1)
    m = torch.full(x.shape[:-1], NEG_INF, dtype=x.dtype)
    l = torch.zeros_like(m)
    for block in torch.split(x, block_size, dim=-1):
        m_new = torch.maximum(m, block.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(block - m_new[..., None]).sum(-1)
        l, m = torch.nan_to_num(l), m_new
    return m, l


def stats_logaddexp(x, block_size, dim=-1):
    """A running logsumexp with torch.logaddexp; the sum recovered at the end."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    x = x.movedim(dim, -1)
    m = torch.full(x.shape[:-1], NEG_INF, dtype=x.dtype)
    a = torch.full_like(m, NEG_INF)
    for block in torch.split(x, block_size, dim=-1):
        m = torch.maximum(m, block.amax(-1))
        for j in range(block.shape[-1]):
            a = torch.logaddexp(a, block[..., j])
    return m, torch.where(torch.isneginf(m), 0.0, torch.exp(a - m))


@pytest.mark.parametrize("stats", [stats_nan_to_num, stats_logaddexp])
def test_beginner_correct_stats_pass(stats):
    assert report("online_softmax_stats", stats).passed
    for seed in HIDDEN_SEEDS:
        assert report("online_softmax_stats", stats, hidden=True, seed=seed).passed


# Issue #18, the second beginner pass: each mistake named by the check that first sees it, on the
# visible seed and hidden ones.

BLOCKS_OVERLAP = [
    ("block = x[..., start:start + block_size]", "block = x[..., start:start + block_size + 1]")
]
GUARD_TESTS_OLD_MAX = [  # the first block never shifted: exp(1000) overflows
    (
        'torch.where(new_max == float("-inf"), 0.0, new_max)',
        'torch.where(running_max == float("-inf"), 0.0, new_max)',
    )
]
SHIFT_NOT_UNSQUEEZED = [  # (rows,) against (rows, block_size): a crash, or rows mixed up
    ("torch.exp(block - shift[..., None])", "torch.exp(block - shift)")
]
STATS_CHECK_BUGS = {  # (check, key): the edits
    ("stats_match", "block_sum_logged"): [
        (
            "torch.exp(block - shift[..., None]).sum(dim=-1)",
            "torch.log(torch.exp(block - shift[..., None]).sum(dim=-1))",
        ),
    ],
    # -inf rows: log(0) = -inf, a logged block of -inf is NaN; the mistake, not the NaN guard
    ("stats_extremes", "block_sum_logged"): [
        (
            "torch.exp(block - shift[..., None]).sum(dim=-1)",
            "torch.log(torch.exp(block - shift[..., None]).sum(dim=-1))",
        ),
    ],
    ("stats_extremes", "returns_log"): [
        ("return running_max, running_sum", "return running_max, torch.log(running_sum)"),
    ],
    ("stats_extremes", "missing_rescale"): [
        ("running_sum * torch.exp(running_max - shift) + ", "running_sum + "),
    ],
    ("stats_extremes", "rescale_inverted"): STATS_BUGS["rescale_inverted"],
    # Issue #18, the third pass: once named NaN (no NaN anywhere), global max, or not at all
    ("stats_extremes", "finite_for_all_inf"): [
        ("x = x.movedim(dim, -1)  ", "x = x.movedim(dim, -1).nan_to_num(neginf=-1e9)  ")
    ],
    ("stats_match", "stats_swapped"): [
        ("return running_max, running_sum", "return running_sum, running_max")
    ],
    ("stats_extremes", "stats_swapped"): [
        ("return running_max, running_sum", "return running_sum, running_max")
    ],
    ("stats_match", "blocks_overlap"): BLOCKS_OVERLAP,
    ("stats_streaming", "blocks_overlap"): BLOCKS_OVERLAP,
    ("stats_match", "block_sum_all_rows"): [
        (
            "torch.exp(block - shift[..., None]).sum(dim=-1)",
            "torch.exp(block - shift[..., None]).sum()",
        )
    ],
    ("stats_dims_and_float64", "dim_mishandled"): [  # movedim's arguments swapped
        ("x = x.movedim(dim, -1)  ", "x = x.movedim(-1, dim)  ")
    ],
    # The student pass of day 6: once "no known mistake" (and NaN at +1000), or a raw crash
    ("stats_match", "guard_tests_old_max"): GUARD_TESTS_OLD_MAX,
    ("stats_dims_and_float64", "guard_tests_old_max"): GUARD_TESTS_OLD_MAX,
    ("stats_extremes", "guard_tests_old_max"): GUARD_TESTS_OLD_MAX,
    ("stats_match", "shift_not_unsqueezed"): SHIFT_NOT_UNSQUEEZED,
    ("stats_dims_and_float64", "shift_not_unsqueezed"): SHIFT_NOT_UNSQUEEZED,
    ("stats_extremes", "shift_not_unsqueezed"): SHIFT_NOT_UNSQUEEZED,
}


@pytest.mark.parametrize("check_name, key", STATS_CHECK_BUGS)
def test_stats_mistake_is_named_by_its_check(solution, check_name, key):
    bug = planted(solution, "online_softmax_stats", *STATS_CHECK_BUGS[check_name, key])
    assert_check_names("online_softmax_stats", check_name, bug, key)


def test_a_dropped_last_block_reads_as_a_sentence(solution):
    bug = planted(solution, "online_softmax_stats", *STATS_BUGS["last_block_dropped"])
    result = report("online_softmax_stats", bug)
    message = next(r.message for r in result.results if r.key == "last_block_dropped")
    assert "gives what" not in message and "both the max and the sum match" in message


STATE_NOT_RESET = [  # m, l, acc made once, before the query-tile loop
    (
        '        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)'
        "  # (..., bq)\n"
        "        l = torch.zeros_like(m)"
        "                                               # (..., bq)\n"
        "        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)"
        "  # (..., bq, dv)\n",
        "",
    ),
    (
        "    for i0 in range(0, Lq, block_q):\n",
        '    m = torch.full((*q.shape[:-2], min(block_q, Lq)), float("-inf"), dtype=q.dtype)\n'
        "    l = torch.zeros_like(m)\n"
        "    acc = torch.zeros(*m.shape, v.shape[-1], dtype=q.dtype)\n"
        "    for i0 in range(0, Lq, block_q):\n",
    ),
]
Q_SCALED_IN_PLACE = [
    (
        "    scale = 1 / math.sqrt(q.shape[-1])\n",
        "    scale = 1.0\n    q.mul_(1 / math.sqrt(q.shape[-1]))  # scale q once\n",
    )
]
LOCAL_QUERY_INDEX = [  # the tile's start left out of the queries' positions
    (
        "query_pos = Lk - Lq + i0 + torch.arange(bq, device=q.device)[:, None]",
        "query_pos = Lk - Lq + torch.arange(bq, device=q.device)[:, None]",
    )
]
DIAGONAL_UNMASKED = [  # no mask at all: the loop bound alone
    ('s = s.masked_fill(key_pos > query_pos, float("-inf"))', "s = s")
]
SOME_DIAGONAL_TILES_UNMASKED = [  # masked only past the first query: no suspect, a probe names it
    ("            if causal:\n", "            if causal and j0 > Lk - Lq + i0:\n")
]
STRICT_IN_STRADDLING_TILES = [  # j < i, masked where a tile straddles: once named unmasked
    (
        "            if causal:\n",
        "            if causal and j0 + kj.shape[-2] - 1 > Lk - Lq + i0:\n",
    ),
    ("key_pos > query_pos", "key_pos >= query_pos"),
]
TILED_CHECK_BUGS = {  # (check, key): the edits
    ("tiled_matches", "modified_input"): Q_SCALED_IN_PLACE,  # not a missing scale
    ("tiled_fully_masked_rows", "modified_input"): Q_SCALED_IN_PLACE,
    ("tiled_shapes_and_float64", "modified_input"): Q_SCALED_IN_PLACE,
    ("tiled_matches", "state_not_reset"): STATE_NOT_RESET,  # ragged: a crash, explained
    ("tiled_causal", "state_not_reset"): STATE_NOT_RESET,
    ("tiled_fully_masked_rows", "state_not_reset"): STATE_NOT_RESET,
    ("tiled_shapes_and_float64", "state_not_reset"): STATE_NOT_RESET,
    ("tiled_never_full_matrix", "state_not_reset"): STATE_NOT_RESET,
    # The loop bound right, the mask not (with Lq > Lk a top-left mask hides nothing: unmasked)
    ("tiled_causal", "causal_top_left"): [
        (
            "query_pos = Lk - Lq + i0 + torch.arange(bq, device=q.device)[:, None]",
            "query_pos = i0 + torch.arange(bq, device=q.device)[:, None]",
        )
    ],
    ("tiled_causal", "batched_transpose"): TILED_BUGS["batched_transpose"],
    ("tiled_fully_masked_rows", "batched_transpose"): TILED_BUGS["batched_transpose"],
    ("tiled_shapes_and_float64", "batched_transpose"): TILED_BUGS["batched_transpose"],
    ("tiled_never_full_matrix", "batched_transpose"): TILED_BUGS["batched_transpose"],
    ("tiled_skips_masked_tiles", "batched_transpose"): TILED_BUGS["batched_transpose"],
    # Issue #18, the third pass: once "no known mistake", a crash, a top-left mask, or a pass
    ("tiled_matches", "scale_one_over_d"): [
        ("scale = 1 / math.sqrt(q.shape[-1])", "scale = 1 / q.shape[-1]")
    ],
    ("tiled_matches", "last_key_tile_dropped"): [
        ("range(0, key_end, block_k)", "range(0, key_end - block_k + 1, block_k)")
    ],
    ("tiled_causal", "causal_loop_end_no_offset"): [
        ("min(Lk, Lk - Lq + i0 + bq)", "min(Lk, i0 + bq)")
    ],
    ("tiled_causal", "causal_local_query_index"): LOCAL_QUERY_INDEX,
    ("tiled_fully_masked_rows", "causal_local_query_index"): LOCAL_QUERY_INDEX,
    ("tiled_causal", "causal_diagonal_unmasked"): DIAGONAL_UNMASKED,
    ("tiled_fully_masked_rows", "causal_diagonal_unmasked"): DIAGONAL_UNMASKED,
    ("tiled_shapes_and_float64", "causal_diagonal_unmasked"): SOME_DIAGONAL_TILES_UNMASKED,
    ("tiled_matches", "out_like_q"): [  # the accumulator in q's shape: a crash when dv != d
        (
            "acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)",
            "acc = torch.zeros_like(qi)",
        )
    ],
    ("tiled_fully_masked_rows", "no_key_tile_crashes"): [  # shift exists once a key tile ran
        (
            "lses.append(m + torch.log(l))",
            "lses.append(shift + torch.log(torch.where(l == 0, 1.0, l)))",
        )
    ],
    ("tiled_causal", "causal_strict"): STRICT_IN_STRADDLING_TILES,
    ("tiled_fully_masked_rows", "causal_strict"): STRICT_IN_STRADDLING_TILES,
    ("tiled_shapes_and_float64", "causal_strict"): STRICT_IN_STRADDLING_TILES,
    ("tiled_rejects_bad_input", "no_error_for_bad_params"): [  # k, v lengths unchecked
        ("q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]", "q.shape[-1] != k.shape[-1]")
    ],
}


@pytest.mark.parametrize("check_name, key", TILED_CHECK_BUGS)
def test_tiled_mistake_is_named_by_its_check(solution, check_name, key):
    bug = planted(solution, "tiled_attention", *TILED_CHECK_BUGS[check_name, key])
    assert_check_names("tiled_attention", check_name, bug, key)


DV_NOT_TRANSPOSED = [("p.transpose(-2, -1) @ d_oi", "p @ d_oi")]
DK_NOT_TRANSPOSED = [("ds.transpose(-2, -1) @ qi * scale", "ds @ qi * scale")]
FORWARD_IGNORES_CAUSAL = [
    ("tiled_attention(q, k, v, causal=is_causal)", "tiled_attention(q, k, v)")
]
FLASH_CHECK_BUGS = {  # (check, key): the edits
    # ragged tiles: a crash, explained by one square tile
    ("flash_gradients", "dv_not_transposed"): DV_NOT_TRANSPOSED,
    ("flash_causal_gradients", "dv_not_transposed"): DV_NOT_TRANSPOSED,
    ("flash_gradients", "dk_not_transposed"): DK_NOT_TRANSPOSED,
    ("flash_causal_gradients", "dk_not_transposed"): DK_NOT_TRANSPOSED,
    ("flash_autograd_and_shapes", "lse_modified_in_place"): [
        (
            'lse = torch.where(lse == float("-inf"), float("inf"), lse)',
            'lse[lse == float("-inf")] = float("inf")',
        )
    ],
    ("flash_causal_gradients", "D_per_tile"): FLASH_BUGS["D_per_tile"],
    ("flash_causal_gradients", "causal_top_left"): [  # in backward only
        (
            "query_pos = Lk - Lq + i0 + torch.arange(qi.shape[-2], device=q.device)[:, None]",
            "query_pos = i0 + torch.arange(qi.shape[-2], device=q.device)[:, None]",
        )
    ],
    # Issue #18, the third pass: once "no known mistake", or a backward mistake for forward's
    ("flash_gradients", "D_not_per_query"): [
        ("D = (d_out * out).sum(dim=-1)", "D = (d_out * out).sum()"),
        ("ds = p * (dp - D[..., rows, None])", "ds = p * (dp - D)"),
    ],
    ("flash_gradients", "grad_scores_unscaled"): [
        ("s = qi @ kj.transpose(-2, -1) * scale", "s = qi @ kj.transpose(-2, -1)")
    ],
    ("flash_gradients", "grad_overwritten"): [
        ("dk[..., j0:j0 + block, :] += ", "dk[..., j0:j0 + block, :] = ")
    ],
    ("flash_forward", "forward_ignores_causal"): FORWARD_IGNORES_CAUSAL,
    # The student pass of day 6: once "computes the tiles above the diagonal", a loop bound
    # that is there already
    ("flash_backward_skips_masked_tiles", "backward_one_tile"): [
        (
            "Lq, Lk, block = q.shape[-2], k.shape[-2], 64",
            "Lq, Lk = q.shape[-2], k.shape[-2]\n        block = max(Lq, Lk)",
        )
    ],
    ("flash_causal_gradients", "forward_ignores_causal"): FORWARD_IGNORES_CAUSAL,
    # Issue #18, the notebook's promises: the lse kept on ctx, or saved as log(l) without m
    ("flash_saves_lse", "no_lse_saved"): [
        (
            "ctx.save_for_backward(q, k, v, out, lse)",
            "ctx.save_for_backward(q, k, v, out)\n        ctx.lse = lse",
        ),
        (
            "q, k, v, out, lse = ctx.saved_tensors",
            "q, k, v, out = ctx.saved_tensors\n        lse = ctx.lse",
        ),
    ],
    ("flash_saves_lse", "lse_missing_max"): [
        (
            "ctx.save_for_backward(q, k, v, out, lse)",
            "m = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).amax(dim=-1)\n"
            "        ctx.save_for_backward(q, k, v, out, lse - m)",
        )
    ],
}


@pytest.mark.parametrize("check_name, key", FLASH_CHECK_BUGS)
def test_flash_mistake_is_named_by_its_check(solution, check_name, key):
    bug = planted(solution, "FlashAttentionTorch", *FLASH_CHECK_BUGS[check_name, key])
    assert_check_names("FlashAttentionTorch", check_name, bug, key)


def stats_merged_pairs(x, block_size, dim=-1):
    """Each block's own (max, sum) first, then merged into the running pair by a symmetric rule;
    torch.transpose instead of movedim."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m, l = None, None
    for block in x.transpose(dim, -1).split(block_size, -1):
        block_max = block.amax(-1)
        block_sum = torch.exp(block - block_max.nan_to_num(neginf=0.0)[..., None]).sum(-1)
        if m is None:
            m, l = block_max, block_sum
            continue
        new = torch.maximum(m, block_max)
        shift = new.nan_to_num(neginf=0.0)
        m, l = new, l * torch.exp(m - shift) + block_sum * torch.exp(block_max - shift)
    if dim % x.dim() != x.dim() - 1:  # transpose put the last axis where dim was
        m, l = m.movedim(-1, dim % x.dim()), l.movedim(-1, dim % x.dim())
    return m, l


def tiled_key_tiles_outer(q, k, v, block_q=64, block_k=64, causal=False):
    """FlashAttention-1's loop order: key tiles outside, query tiles inside, running statistics
    for every query (O(L d) memory), written into fresh tensors each step."""
    if block_q < 1 or block_k < 1 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"block sizes must be >= 1 and q, k, v must fit, got {block_q}, {block_k}")
    Lq, Lk = q.shape[-2], k.shape[-2]
    offset = Lk - Lq
    m = q.new_full(q.shape[:-1], NEG_INF)  # (..., Lq)
    l, acc = torch.zeros_like(m), q.new_zeros(*q.shape[:-1], v.shape[-1])
    for c in range(0, Lk, block_k):
        e = min(c + block_k, Lk)
        first = (max(0, c - offset) // block_q) * block_q if causal else 0  # earlier: no key here
        for a in range(first, Lq, block_q):
            b = min(a + block_q, Lq)
            s = q[..., a:b, :] @ k[..., c:e, :].mT / math.sqrt(q.shape[-1])  # (..., bq, bk)
            if causal:
                s = s.masked_fill(
                    torch.arange(c, e) > torch.arange(a, b)[:, None] + offset, NEG_INF
                )
            m_new = torch.maximum(m[..., a:b], s.amax(-1))
            shift = m_new.nan_to_num(neginf=0.0)
            p, r = torch.exp(s - shift[..., None]), torch.exp(m[..., a:b] - shift)
            l, acc, m = l.clone(), acc.clone(), m.clone()
            l[..., a:b] = l[..., a:b] * r + p.sum(-1)
            acc[..., a:b, :] = acc[..., a:b, :] * r[..., None] + p @ v[..., c:e, :]
            m[..., a:b] = m_new
    return acc / torch.where(l > 0, l, 1.0)[..., None], m + torch.log(l)


class FlashOddTiles(torch.autograd.Function):
    """FlashAttention-2's backward order, key tiles outside with dk, dv kept per key tile and
    concatenated; 32 x 16 tiles in both passes, kept on ctx."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        ctx.bq, ctx.bk, ctx.causal = 32, 16, bool(is_causal)
        out, lse = make_tiled()(q, k, v, ctx.bq, ctx.bk, ctx.causal)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        Lq, Lk, c = q.shape[-2], k.shape[-2], q.shape[-1] ** -0.5
        D = (d_out * out).sum(-1, keepdim=True)  # (..., Lq, 1)
        lse = lse.masked_fill(torch.isneginf(lse), math.inf)[..., None]
        dq, dks, dvs = torch.zeros_like(q), [], []
        for j0 in range(0, Lk, ctx.bk):
            j1 = min(j0 + ctx.bk, Lk)
            dk_tile, dv_tile = (
                torch.zeros_like(k[..., j0:j1, :]),
                torch.zeros_like(v[..., j0:j1, :]),
            )
            for i0 in range(0, Lq, ctx.bq):
                i1 = min(i0 + ctx.bq, Lq)
                if ctx.causal and Lk - Lq + i1 <= j0:
                    continue  # forward skipped this tile
                s = q[..., i0:i1, :] @ k[..., j0:j1, :].mT * c
                if ctx.causal:
                    hidden = torch.arange(j0, j1) > torch.arange(i0, i1)[:, None] + Lk - Lq
                    s = s.masked_fill(hidden, NEG_INF)
                p = torch.exp(s - lse[..., i0:i1, :])
                dv_tile += p.mT @ d_out[..., i0:i1, :]
                ds = p * (d_out[..., i0:i1, :] @ v[..., j0:j1, :].mT - D[..., i0:i1, :])
                dq[..., i0:i1, :] += ds @ k[..., j0:j1, :] * c
                dk_tile += ds.mT @ q[..., i0:i1, :] * c
            dks.append(dk_tile)
            dvs.append(dv_tile)
        return dq, torch.cat(dks, -2), torch.cat(dvs, -2), None


def stats_index_select(x, block_size, dim=-1):
    """The student pass of day 6: blocks by index_select along dim itself (never moved last),
    float64 inside, cast back at the end."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    dim = dim % x.dim()
    shape = x.shape[:dim] + x.shape[dim + 1 :]
    m = torch.full(shape, NEG_INF, dtype=torch.float64)
    l = torch.zeros(shape, dtype=torch.float64)
    for start in range(0, x.shape[dim], block_size):
        index = torch.arange(start, min(start + block_size, x.shape[dim]))
        block = x.index_select(dim, index).double()
        m_new = torch.maximum(m, torch.max(block, dim=dim).values)
        shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
        l = l * torch.exp(m - shift) + torch.exp(block - shift.unsqueeze(dim)).sum(dim)
        m = m_new
    return m.to(x.dtype), l.to(x.dtype)


def tiled_flat_bmm(q, k, v, block_q=64, block_k=64, causal=False):
    """The student pass of day 6: leading dims flattened for bmm, float64 inside, keepdim
    statistics, a while loop over key tiles, the mask on straddling tiles only."""
    if block_q < 1 or block_k < 1 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"block sizes must be >= 1 and q, k, v must fit, got {block_q}, {block_k}")
    (Lq, d), (Lk, dv) = q.shape[-2:], v.shape[-2:]
    Q, K, V = (t.reshape(-1, *t.shape[-2:]).double() for t in (q, k, v))
    out = torch.zeros(len(Q), Lq, dv, dtype=torch.float64)
    lse = torch.full((len(Q), Lq), NEG_INF, dtype=torch.float64)
    for a in range(0, Lq, block_q):
        b = min(Lq, a + block_q)
        m = torch.full((len(Q), b - a, 1), NEG_INF, dtype=torch.float64)
        l, acc = torch.zeros_like(m), torch.zeros(len(Q), b - a, dv, dtype=torch.float64)
        last = Lk - Lq + b - 1 if causal else Lk - 1  # the last key any query of the tile sees
        c = 0
        while c <= last and c < Lk:
            e = min(Lk, c + block_k)
            s = torch.bmm(Q[:, a:b], K[:, c:e].permute(0, 2, 1)) / math.sqrt(d)
            if causal and e - 1 > Lk - Lq + a:
                seen = torch.arange(c, e) <= Lk - Lq + torch.arange(a, b)[:, None]
                s = s.masked_fill(~seen, NEG_INF)
            m_new = torch.maximum(m, s.max(dim=-1, keepdim=True).values)
            shift = torch.where(m_new == NEG_INF, 0.0, m_new)
            p, r = torch.exp(s - shift), torch.exp(m - shift)
            l, acc, m = r * l + p.sum(-1, keepdim=True), r * acc + torch.bmm(p, V[:, c:e]), m_new
            c += block_k
        out[:, a:b] = torch.where(l > 0, acc / l.clamp_min(1e-300), 0.0)
        lse[:, a:b] = (m + torch.log(l)).squeeze(-1)
    lead = q.shape[:-2]
    return out.reshape(*lead, Lq, dv).to(q.dtype), lse.reshape(*lead, Lq).to(q.dtype)


class FlashMaskOnP(torch.autograd.Function):
    """The student pass of day 6: a float64 backward that masks p (multiplied by the causal
    mask, rows that see no key zeroed) instead of the scores; dq per query tile, concatenated."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        out, lse = make_tiled()(q, k, v, causal=is_causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = is_causal
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = (t.double() for t in ctx.saved_tensors)
        g, (Lq, d), Lk, T = d_out.double(), q.shape[-2:], k.shape[-2], 64
        D = (g * out).sum(-1, keepdim=True)
        dead = torch.isneginf(lse).unsqueeze(-1)
        dq_tiles, dk, dv = [], torch.zeros_like(k), torch.zeros_like(v)
        for a in range(0, Lq, T):
            b = min(Lq, a + T)
            dq_t = torch.zeros_like(q[..., a:b, :])
            stop = min(Lk, Lk - Lq + b) if ctx.causal else Lk
            for c in range(0, max(stop, 0), T):
                e = min(stop, c + T)
                s = q[..., a:b, :] @ k[..., c:e, :].mT / math.sqrt(d)
                p = torch.where(dead[..., a:b, :], 0.0, torch.exp(s - lse[..., a:b, None]))
                if ctx.causal:
                    p = p * (torch.arange(c, e) <= Lk - Lq + torch.arange(a, b)[:, None])
                dv[..., c:e, :] = dv[..., c:e, :] + p.mT @ g[..., a:b, :]
                ds = p * (g[..., a:b, :] @ v[..., c:e, :].mT - D[..., a:b, :])
                dq_t = dq_t + ds @ k[..., c:e, :] / math.sqrt(d)
                dk[..., c:e, :] = dk[..., c:e, :] + ds.mT @ q[..., a:b, :] / math.sqrt(d)
            dq_tiles.append(dq_t)
        dtype = ctx.saved_tensors[0].dtype
        return torch.cat(dq_tiles, -2).to(dtype), dk.to(dtype), dv.to(dtype), None


@pytest.mark.parametrize(
    "name, impl",
    [
        ("online_softmax_stats", stats_merged_pairs),
        ("tiled_attention", tiled_key_tiles_outer),
        ("FlashAttentionTorch", FlashOddTiles),
        ("online_softmax_stats", stats_index_select),
        ("tiled_attention", tiled_flat_bmm),
        ("FlashAttentionTorch", FlashMaskOnP),
    ],
)
def test_beginner_correct_alternative_passes(name, impl):
    assert report(name, impl).passed
    for seed in HIDDEN_SEEDS:
        assert report(name, impl, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- the notebook's promises

# Each exercise's "The checks recognise: ..." list in the notebook, phrase by phrase, and the key
# (or keys) a planted bug above is named under: every promise is kept by a test.
PROMISES = {
    "online_softmax_stats": {
        "the running sum not rescaled when the max changes": "missing_rescale",
        "the rescale factor upside down": "rescale_inverted",
        "NaN for rows (or first blocks) that are all $-\\infty$": "nan_for_masked",
        "a finite stand-in (e.g. `-1e9`) where the max is $-\\infty$": "finite_for_all_inf",
        "the last, shorter block dropped": "last_block_dropped",
        "blocks that overlap (one entry too long)": "blocks_overlap",
        "a log-sum instead of the sum": "returns_log",
        "the log of each block's sum added to the running sum": "block_sum_logged",
        "the last axis reduced whatever `dim` says": "dim_ignored",
        "a wrong shape (the reduced `dim` is removed, as in `x.amax(dim)`)": "wrong_shape",
        "`(sum_exp, max)` returned instead of `(max, sum_exp)`": "stats_swapped",
        "`x` changed in place": "modified_input",
        "a pass over the whole row before the blocks (e.g. the global max first": "not_streaming",
        "no `ValueError` for `block_size < 1`": "no_error_for_bad_params",
    },
    "tiled_attention": {
        "the accumulator and $\\ell$ not rescaled when the max changes": "missing_rescale",
        "$m$, $\\ell$ and $\\mathrm{acc}$ made once before the query-tile loop": "state_not_reset",
        "`q` (or another input) changed in place (e.g. `q.mul_(scale)`)": "modified_input",
        "$\\ell$ rescaled but not the accumulator": "rescale_l_only",
        "(and the other way round)": "rescale_acc_only",
        "a missing $1/\\sqrt d$": "missing_scale",
        "(or $1/d$ instead)": "scale_one_over_d",
        "`.T` on a batched tile": "batched_transpose",
        "the last, shorter key tile dropped": "last_key_tile_dropped",
        "`out` made in `q`'s shape (its last dim is $d_v$)": "out_like_q",
        "the lse in base 2": "lse_base2",
        "or without the max": "lse_missing_max",
        "a causal mask aligned top-left": "causal_top_left",
        "strict ($j < i$)": "causal_strict",
        "on the wrong side": "causal_wrong_side",
        "or ignored": "ignores_causal",
        "a causal key loop that stops one key early (the diagonal key missed)": (
            "causal_tile_stops_early"
        ),
        "or at $q_{\\text{end}}$ instead of $L_k - L_q + q_{\\text{end}}$": (
            "causal_loop_end_no_offset"
        ),
        "tiles straddling the diagonal left unmasked": "causal_diagonal_unmasked",
        "a mask that counts queries from their tile's start": "causal_local_query_index",
        "NaN (e.g. $0/0$ from `acc / l`)": ("empty_rows_divided_by_zero", "nan_for_masked"),
        "a finite lse": "lse_finite_for_empty",
        "or a crash (a variable that only the key loop sets) for queries that see no key": (
            "no_key_tile_crashes"
        ),
        "`(lse, out)` returned instead of `(out, lse)`": "returns_swapped",
        "any tensor with $L_q \\times L_k$ entries (mask included)": "builds_full_matrix",
        "causal tiles above the diagonal computed instead of skipped": "computes_masked_tiles",
        "wrong shapes": "wrong_shape",
        "no `ValueError` for block sizes $< 1$, mismatched head dims, or `k` and `v` of different "
        "lengths": "no_error_for_bad_params",
    },
    "FlashAttentionTorch": {
        "a forward that ignores `is_causal`": "forward_ignores_causal",
        "a backward without the $D$ term": "missing_D_term",
        "(or with $D$ summed over one key tile only": "D_per_tile",
        "or over every query into one number)": "D_not_per_query",
        "$P$ recomputed without $1/\\sqrt d$": "grad_scores_unscaled",
        "$dK$ or $dV$ overwritten (`=`) by each query tile instead of accumulated (`+=`)": (
            "grad_overwritten"
        ),
        "$dV = P\\,dO$ or $dK = dS\\,Q$ without the transpose": (
            "dv_not_transposed",
            "dk_not_transposed",
        ),
        "$dQ$ and $dK$ without $1/\\sqrt d$": "grad_missing_scale",
        "gradients wrong only with `causal`": "grads_wrong_only_causal",
        "(e.g. $P$ recomputed without the mask": "causal_backward_unmasked",
        "or with a top-left mask)": "causal_top_left",
        "a saved tensor changed in place (e.g. `lse[lse == -inf] = inf`)": "lse_modified_in_place",
        "causal tiles above the diagonal computed in backward": "backward_computes_masked_tiles",
        "NaN in the gradients of queries that see no key": "grad_not_finite",
        "an $(L_q, L_k)$ tensor": "saves_too_much",
        "or two statistics (max and sum) saved instead of one logsumexp": "saves_two_stats",
        "(or no logsumexp saved)": "no_lse_saved",
        "an lse in base 2": "lse_base2",
        "or without the max": "lse_missing_max",
        "a Function that autograd cannot run": "autograd_broken",
    },
}

# The planted-bug tests parametrized over ("bug, key"), by exercise, then the tables of edits.
PLANTED_BUG_TESTS = {
    "online_softmax_stats": test_online_softmax_stats_bug_is_named,
    "tiled_attention": test_tiled_attention_bug_is_named,
    "FlashAttentionTorch": test_flash_attention_torch_bug_is_named,
}
BEGINNER_BUGS = {
    "online_softmax_stats": (STATS_BUGS, STATS_CHECK_BUGS),
    "tiled_attention": (TILED_BUGS, TILED_CHECK_BUGS),
    "FlashAttentionTorch": (FLASH_BUGS, FLASH_CHECK_BUGS),
}


def keys_planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under: the ("bug, key") test's,
    the beginner table's (by key) and the by-check table's (by (check, key))."""
    bugs, check_bugs = BEGINNER_BUGS[name]
    keys = planted_keys(PLANTED_BUG_TESTS[name]) | set(bugs)
    return keys | {key for _, key in check_bugs}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, keys_planted(name))
