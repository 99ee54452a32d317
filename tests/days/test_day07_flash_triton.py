"""The day07 check suite, tested: the solution passes, each planted bug is caught with its named
hint, correct implementations written differently pass, and bad input gives clear errors.
Planted bugs are edits of the solution notebook's own cells. (The solution against 25 hidden seeds
is tests/grader/test_suites.py's job.)"""

# course first: without a GPU it puts Triton in interpreter mode, which triton reads at import.
import course  # noqa: F401

# isort: split
import functools
import math

import pytest
import torch
import triton
import triton.language as tl

from helpers import (
    assert_mistake_named,
    assert_named_on_seeds,
    assert_promise_kept,
    day_report,
    edited_solution,
    promised,
)

DAY = "day07-flash-triton"

# For tests/test_nbgrader_e2e.py: the padded lanes loaded as 0.0 instead of -inf cost
# triton_softmax's visible and hidden points (2 + 1), and the feedback names the mistake. (A bug
# in flash_attention_triton would also cost FlashAttentionTriton's points: its forward calls it.)
PLANTED_SUBMISSION = {
    "cell": "triton_softmax",
    "old": 'other=float("-inf"))',
    "new": "other=0.0)",
    "points_lost": 3,
    "hint": "load the lanes past n_cols with other=float('-inf'): exp(-inf) = 0 leaves max and sum alone.",
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def planted(solution, cell: str, *edits, name: str = None):
    """The solution's `name` after the (old, new) `edits` in solution cell `cell`."""
    return edited_solution(DAY, solution, cell, edits, name)


# ----------------------------------------------------------------------------- the solution


def test_worked_examples(solution):
    torch.testing.assert_close(
        solution["triton_add"](torch.arange(5.0), torch.ones(5)), torch.arange(1.0, 6.0)
    )
    out = solution["triton_softmax"](torch.tensor([[0.0, math.log(3.0)], [1.0, float("-inf")]]))
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
    q = torch.zeros(1, 16)
    q[0, 0] = 4 * math.log(3.0)
    k, v = torch.zeros(2, 16), torch.zeros(2, 16)
    k[1, 0], v[0, 0], v[1, 0] = 1.0, 1.0, 5.0
    out, lse = solution["flash_attention_triton"](q, k, v)
    assert out[0, 0].item() == pytest.approx(4.0, rel=1e-5) and lse.item() == pytest.approx(
        math.log(4), rel=1e-5
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m["triton_add"](torch.ones(3), torch.ones(4)), "same shape"),
        (lambda m: m["triton_softmax"](torch.tensor(1.0)), "0-d"),
        (lambda m: m["flash_attention_triton"](*(torch.ones(1, 4, 24),) * 3), "head_dim"),
        (
            lambda m: m["flash_attention_triton"](
                torch.ones(1, 4, 16), torch.ones(1, 5, 16), torch.ones(1, 4, 16)
            ),
            r"v \(1, 4, 16\)",
        ),
        (
            lambda m: m["flash_attention_triton"](
                *(torch.ones(1, 4, 16, dtype=torch.float64),) * 3
            ),
            "float64",
        ),
        (
            lambda m: m["FlashAttentionTriton"].apply(*(torch.ones(1, 4, 24),) * 3, False),
            "head_dim",
        ),
    ],
    ids=[
        "add-shapes",
        "softmax-0d",
        "flash-head-dim",
        "flash-shapes",
        "flash-dtype",
        "function-head-dim",
    ],
)
def test_bad_input_gives_clear_errors(solution, call, match):
    with pytest.raises(ValueError, match=match):
        call(solution)


# ----------------------------------------------------------------------------- planted bugs: warm-ups

ADD_BUGS = {
    "grid_too_small": [("add_kernel[(triton.cdiv(n, BLOCK),)]", "add_kernel[(n // BLOCK,)]")],
    "offsets_without_block_start": [
        ("offsets = pid * BLOCK + tl.arange(0, BLOCK)", "offsets = pid + tl.arange(0, BLOCK)")
    ],
    "mask_against_block": [("inside = offsets < n", "inside = offsets < BLOCK")],
    "modified_input": [("out = torch.empty_like(x)", "out = x")],
    # empty_like(x) before x is made contiguous: a transpose's output keeps its strides
    "output_like_input": [
        ("x, y = x.contiguous(), y.contiguous()", "xc, yc = x.contiguous(), y.contiguous()"),
        ("out = torch.empty_like(x)", "out = torch.empty_like(x); x, y = xc, yc"),
    ],
    "view_of_non_contiguous": [
        (
            "x, y = x.contiguous(), y.contiguous()",
            "x, y = x.view(-1).view(x.shape), y.view(-1).view(y.shape)",
        )
    ],
    "out_of_bounds": [
        ("x = tl.load(x_ptr + offsets, mask=inside)", "x = tl.load(x_ptr + offsets)"),
        ("tl.store(out_ptr + offsets, x + y, mask=inside)", "tl.store(out_ptr + offsets, x + y)"),
    ],
    "non_contiguous": [("x, y = x.contiguous(), y.contiguous()", "pass")],
    "add_accepts_bad_input": [
        ("if x.shape != y.shape:", "if False:"),
        ("if x.dtype != y.dtype or x.device != y.device:", "if False:"),
    ],
}


@pytest.mark.parametrize("key", ADD_BUGS)
def test_add_planted_bugs_are_named(solution, key, capsys):
    assert_named("triton_add", planted(solution, "triton_add", *ADD_BUGS[key]), key, capsys)


# the same mistakes written another way, named the same on every seed
ADD_BUGS_ON_EVERY_SEED = [
    # every program writes block 0: the output is right on the first block only, as with a mask
    # against BLOCK, but every program loads
    ("offsets_without_block_start", [("pid * BLOCK + tl.arange", "tl.arange")]),
    ("modified_input", [("out = torch.empty_like(x)", "out = x")]),
    ("grid_too_small", [("add_kernel[(triton.cdiv(n, BLOCK),)]", "add_kernel[(n // BLOCK,)]")]),
    # every program reads axis 1 of a 1-D grid: pid is always 0, as without pid * BLOCK
    ("offsets_without_block_start", [("pid = tl.program_id(0)", "pid = tl.program_id(1)")]),
    # (n, m) and (m, n) have as many elements
    ("add_accepts_bad_input", [("if x.shape != y.shape:", "if x.numel() != y.numel():")]),
    ("non_contiguous", [("x, y = x.contiguous(), y.contiguous()", "x = x.contiguous()")]),
]


@pytest.mark.parametrize(
    "key, edits", ADD_BUGS_ON_EVERY_SEED, ids=[key for key, _ in ADD_BUGS_ON_EVERY_SEED]
)
def test_add_planted_bugs_are_named_on_hidden_seeds(solution, key, edits, capsys):
    bug = planted(solution, "triton_add", *edits)
    assert_named_on_seeds(DAY, "triton_add", bug, key, capsys, HIDDEN_SEEDS[:2])
    # and not misnamed by the other checks: a tensor never written is not an overflow
    result = report("triton_add", bug)
    assert result.keys == {key}, [(r.key, r.message) for r in result.results]


def torch_add(x, y):
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError("x and y must match")
    return x + y


def test_add_without_a_kernel_is_named(capsys):
    assert_named("triton_add", torch_add, "no_triton_kernel", capsys)


SOFTMAX_BUGS = {
    "padding_counted": [('other=float("-inf"))', "other=0.0)")],
    "not_stable": [("x = x - tl.max(x, axis=0)", "x = x")],
    "out_of_bounds": [
        (
            'x = tl.load(x_ptr + row * n_cols + cols, mask=inside, other=float("-inf"))',
            "x = tl.load(x_ptr + row * n_cols + cols)",
        )
    ],
    "softmax_accepts_bad_input": [("if x.ndim == 0:", "if False:")],
    "softmax_not_divided": [("num / tl.sum(num, axis=0)", "num")],
    "softmax_exp2": [("num = tl.exp(x)", "num = tl.exp2(x)")],
    "one_program_for_all_rows": [("softmax_kernel[(rows.shape[0],)]", "softmax_kernel[(1,)]")],
    "row_stride_block": [
        ("x_ptr + row * n_cols + cols", "x_ptr + row * BLOCK + cols"),
        ("out_ptr + row * n_cols + cols", "out_ptr + row * BLOCK + cols"),
    ],
    "block_not_power_of_two": [
        ("BLOCK=triton.next_power_of_2(rows.shape[1])", "BLOCK=rows.shape[1]")
    ],
    "non_contiguous": [
        ("rows = x.contiguous().reshape(-1, x.shape[-1])", "rows = x.view(-1, x.shape[-1])")
    ],
    # 0.0 in the padded lanes, kept out of the sum but not out of the max
    "padding_wins_max": [
        ('other=float("-inf"))', "other=0.0)"),
        ("num = tl.exp(x)", "num = tl.where(inside, tl.exp(x), 0.0)"),
    ],
    # rows is x itself when x is contiguous: the kernel writes the softmax over the input
    "modified_input": [("out = torch.empty_like(rows)", "out = rows")],
    # the rows written in order into an output laid out like a transposed x
    "output_like_input": [
        ("out = torch.empty_like(rows)", "out = torch.empty_like(x)"),
        ("return out.reshape(x.shape)", "return out"),
    ],
}


@pytest.mark.parametrize("key", SOFTMAX_BUGS)
def test_softmax_planted_bugs_are_named(solution, key, capsys):
    assert_named(
        "triton_softmax", planted(solution, "triton_softmax", *SOFTMAX_BUGS[key]), key, capsys
    )


def test_one_program_for_all_rows_is_named_by_every_check_it_fails(solution):
    """the rows never written read NaN: not an overflow of exp()"""
    bug = planted(solution, "triton_softmax", *SOFTMAX_BUGS["one_program_for_all_rows"])
    result = report("triton_softmax", bug)
    assert result.keys == {"one_program_for_all_rows"}, [(r.key, r.message) for r in result.results]


ROWS = "rows = x.contiguous().reshape(-1, x.shape[-1])"
ROW_LENGTH_SLIPS = {  # each "row" a run of x.shape[0] (or of the number of rows) elements
    "n_cols_from_first_dim": ROWS.replace("x.shape[-1]", "x.shape[0]"),
    "reshape_turned_around": ROWS.replace("(-1, x.shape[-1])", "(x.shape[-1], -1)"),
}


@pytest.mark.parametrize("slip", ROW_LENGTH_SLIPS)
def test_rows_of_the_wrong_length_are_named_not_an_overflow(solution, slip, capsys):
    """a wrong "row" of only -inf entries is NaN with the max subtracted: not `not_stable`"""
    bug = planted(solution, "triton_softmax", (ROWS, ROW_LENGTH_SLIPS[slip]))
    assert_named_on_seeds(DAY, "triton_softmax", bug, "row_length_wrong", capsys, HIDDEN_SEEDS)
    for seed in (None, *HIDDEN_SEEDS):
        kwargs = {} if seed is None else {"hidden": True, "seed": seed}
        result = report("triton_softmax", bug, **kwargs)
        assert "not_stable" not in result.keys, (seed, [(r.key, r.message) for r in result.results])


def test_softmax_over_the_wrong_axis_is_named(solution, capsys):
    softmax = solution["triton_softmax"]
    assert_named(
        "triton_softmax",
        lambda x: (
            softmax(x.transpose(-1, -2).contiguous()).transpose(-1, -2)
            if x.ndim >= 2
            else softmax(x)
        ),
        "wrong_axis",
        capsys,
    )


def torch_softmax(x):
    """Right values, no kernel: the stable softmax in torch ops (torch.softmax is a shortcut)."""
    if x.ndim == 0:
        raise ValueError("x needs a last axis to take the softmax over, got a 0-d tensor")
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def test_a_softmax_without_a_kernel_is_named_on_hidden_seeds(capsys):
    assert_named_on_seeds(
        DAY, "triton_softmax", torch_softmax, "no_triton_kernel", capsys, HIDDEN_SEEDS
    )


# ----------------------------------------------------------------------------- planted bugs: forward

FLASH_BUGS = {
    "missing_rescale": [
        ("l_i = l_i * alpha + tl.sum(p, axis=1)", "l_i = l_i + tl.sum(p, axis=1)"),
        ("acc = acc * alpha[:, None] + tl.dot", "acc = acc + tl.dot"),
    ],
    "rescale_l_not_acc": [("acc = acc * alpha[:, None] + tl.dot", "acc = acc + tl.dot")],
    "not_normalised": [("out = acc / l_i[:, None]", "out = acc")],
    "lse_base2": [("lse = (m_i + tl.log2(l_i)) * 0.6931471805599453", "lse = m_i + tl.log2(l_i)")],
    "lse_without_max": [
        (
            "lse = (m_i + tl.log2(l_i)) * 0.6931471805599453",
            "lse = tl.log2(l_i) * 0.6931471805599453",
        )
    ],
    "causal_wrong_side": [
        (
            "keep = keep & (offs_n[None, :] <= pos[:, None])",
            "keep = keep & (offs_n[None, :] >= pos[:, None])",
        )
    ],
    "causal_top_left": [("pos = (Lk - Lq) + offs_m", "pos = offs_m")],
    "causal_ignored": [
        ("keep = keep & (offs_n[None, :] <= pos[:, None])", "pass"),
        ("hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M)", "pass"),
    ],
    "out_of_bounds": [
        (
            "k = tl.load(K + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)",
            "k = tl.load(K + kv_offs)",
        ),
        (
            "v = tl.load(V + kv_offs, mask=offs_n[:, None] < Lk, other=0.0)",
            "v = tl.load(V + kv_offs)",
        ),
    ],
    "pad_keys_not_masked": [("keep = offs_n[None, :] < Lk", "keep = offs_n[None, :] >= 0")],
    "wrong_scale": [("1.4426950408889634 / math.sqrt(D)", "1.0 / math.sqrt(D)")],
    "alpha_inverted": [("alpha = tl.exp2(m_i - m_new)", "alpha = tl.exp2(m_new - m_i)")],
    "causal_row_without_keys": [("pos = (Lk - Lq) + offs_m", "pos = (Lq - Lk) + offs_m")],
    "grid_axes_swapped": [
        (
            "grid = (triton.cdiv(Lq, BLOCK), q3.shape[0])",
            "grid = (q3.shape[0], triton.cdiv(Lq, BLOCK))",
        )
    ],
    "dot_shapes": [("s = tl.dot(q, tl.trans(k)) * qk_scale  ", "s = tl.dot(q, k) * qk_scale  ")],
    "no_error_for_bad_input": [("if D not in (16, 32, 64, 128):", "if False:")],
    "rescale_after_tile": [
        (
            "acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)",
            "acc = (acc + tl.dot(p.to(v.dtype), v)) * alpha[:, None]",
        )
    ],
    "state_reset_in_loop": [  # l_i started over in every key tile
        ("    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)\n", ""),
        (
            "m_new = tl.maximum",
            "l_i = tl.zeros([BLOCK_M], dtype=tl.float32)\n        m_new = tl.maximum",
        ),
    ],
    # q3 is q itself when q is contiguous: the kernel writes out over the caller's q
    "modified_input": [("out = torch.empty_like(q3)", "out = q3")],
}


@pytest.mark.parametrize("key", FLASH_BUGS)
def test_flash_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "flash_attention_triton", *FLASH_BUGS[key])
    assert_named("flash_attention_triton", bug, key, capsys)


# Hidden checks draw a fresh seed: these mistakes must be named on several, not only on seed 0.
HIDDEN_SEEDS = (1, 2, 3)

HI = "hi = tl.minimum(Lk, Lk - Lq + start_m + BLOCK_M)"
LSE = "lse = (m_i + tl.log2(l_i)) * 0.6931471805599453"
FLATTEN = "q3, k3, v3 = (t.reshape(-1, t.shape[-2], D){} for t in (q, k, v))"

FLASH_BUGS_ON_EVERY_SEED = {  # name: (the key it must be named under, the edits)
    # the loop runs to Lk with causal=True and only masks: right values, twice the loads
    "no_tile_skipped": ("causal_tiles_not_skipped", [(HI, "hi = Lk")]),
    "top_left_loop_bound": ("causal_loop_bound", [(HI, "hi = tl.minimum(Lk, start_m + BLOCK_M)")]),
    "loop_one_tile_short": ("causal_loop_bound", [(HI, "hi = tl.minimum(Lk, Lk - Lq + start_m)")]),
    # K/V of head bh read at bh * Lq * D: inside the tensors, wrong rows
    "kv_offset_with_lq": (
        "head_offset",
        [("kv_offs = bh * Lk * HEAD_DIM", "kv_offs = bh * Lq * HEAD_DIM")],
    ),
    # Q of head bh read at bh * Lk * D: past the end of q, the first head alone is right
    "q_offset_with_lk": (
        "head_offset",
        [("q_offs = bh * Lq * HEAD_DIM", "q_offs = bh * Lk * HEAD_DIM")],
    ),
    "l_not_rescaled": (
        "rescale_acc_not_l",
        [("l_i = l_i * alpha + tl.sum(p, axis=1)", "l_i = l_i + tl.sum(p, axis=1)")],
    ),
    "lse_mixed_units": ("lse_base2", [(LSE, "lse = m_i * 0.6931471805599453 + tl.log2(l_i)")]),
    "m_i_from_zero": (
        "m_i_not_minus_inf",
        [
            (
                'm_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)',
                "m_i = tl.zeros([BLOCK_M], dtype=tl.float32)",
            )
        ],
    ),
    "no_contiguous": (
        "inputs_not_contiguous",
        [(FLATTEN.format(".contiguous()"), FLATTEN.format(""))],
    ),
    "lse_max_in_base2": ("lse_base2", [(LSE, "lse = m_i + tl.log(l_i)")]),
    # a multiple of 16 is not enough: 48 is no power of two, tl.arange rejects it
    "head_dim_multiple_of_16": (
        "no_error_for_bad_input",
        [("if D not in (16, 32, 64, 128):", "if D % 16:")],
    ),
    # a max per key column: with BLOCK_M = BLOCK_N the shapes agree
    "max_per_column": ("max_not_per_row", [("tl.max(s, axis=1)", "tl.max(s, axis=0)")]),
    # (B, H, L, D) inputs launch B programs per query tile: the other heads are never written
    "bh_from_first_dim": (
        "leading_dims_not_flattened",
        [
            (
                "grid = (triton.cdiv(Lq, BLOCK), q3.shape[0])",
                "grid = (triton.cdiv(Lq, BLOCK), q.shape[0] if q.ndim > 2 else 1)",
            )
        ],
    ),
    "mixed_dtypes_accepted": (
        "no_error_for_bad_input",
        [
            (
                "or not (q.dtype == k.dtype == v.dtype):",
                ":",
            )
        ],
    ),
}


@pytest.mark.parametrize("bug", FLASH_BUGS_ON_EVERY_SEED)
def test_flash_planted_bugs_are_named_on_hidden_seeds(solution, bug, capsys):
    key, edits = FLASH_BUGS_ON_EVERY_SEED[bug]
    impl = planted(solution, "flash_attention_triton", *edits)
    assert_named("flash_attention_triton", impl, key, capsys)
    for seed in HIDDEN_SEEDS:
        result = report("flash_attention_triton", impl, hidden=True, seed=seed)
        assert key in result.keys, (seed, [(r.key, r.message) for r in result.results])


def test_scores_without_the_transpose_on_square_tiles_are_named(solution, capsys):
    """tl.dot(q, k) with BLOCK_N = D = 16 runs and is wrong; with D = 32 it is a shape error"""
    bug = planted(
        solution,
        "flash_attention_triton",
        ("s = tl.dot(q, tl.trans(k)) * qk_scale  ", "s = tl.dot(q, k) * qk_scale  "),
    )
    assert_named_on_seeds(
        DAY, "flash_attention_triton", bug, "k_not_transposed", capsys, HIDDEN_SEEDS[:2]
    )


def test_a_diagonal_mask_on_the_wrong_side_is_caught_by_the_probe(solution):
    """Keys after the diagonal kept, the diagonal itself too: no dense suspect, the probe names it."""
    bug = planted(solution, "flash_attention_triton", *FLASH_BUGS["causal_wrong_side"])
    result = report("flash_attention_triton", bug)
    assert [r.key for r in result.results if not r.passed][:1] == ["causal_wrong_side"]


SLIPS_NAMED_BY_EVERY_CHECK = {  # key: the forward slips it names, and each failing check too
    # NaN in the ragged check comes from the growing alpha, not from past the inputs' end
    "alpha_inverted": FLASH_BUGS["alpha_inverted"],
    # causal NaN rows: a last tile of only masked keys restarts l_i at 0, not a row without keys
    "state_reset_in_loop": FLASH_BUGS["state_reset_in_loop"],
}


@pytest.mark.parametrize("key", SLIPS_NAMED_BY_EVERY_CHECK)
def test_forward_slips_are_named_by_every_check_they_fail(solution, key):
    bug = planted(solution, "flash_attention_triton", *SLIPS_NAMED_BY_EVERY_CHECK[key])
    result = report("flash_attention_triton", bug)
    assert result.keys == {key}, [(r.key, r.message) for r in result.results]


def test_a_top_left_loop_stop_is_not_called_a_mask_on_the_wrong_side(solution):
    """with Lq = 1 and Lk = 17 both miss only key 16: the check draws Lk > 17"""
    bug = planted(
        solution, "flash_attention_triton", *FLASH_BUGS_ON_EVERY_SEED["top_left_loop_bound"][1]
    )
    for seed in (None, *HIDDEN_SEEDS):
        kwargs = {} if seed is None else {"hidden": True, "seed": seed}
        result = report("flash_attention_triton", bug, **kwargs)
        assert result.keys == {"causal_loop_bound"}, (
            seed,
            [(r.key, r.message) for r in result.results],
        )


def torch_flash(q, k, v, causal=False):
    """Right values, no kernel: a pure-torch reimplementation."""
    if q.shape[-1] not in (16, 32, 64, 128) or k.shape != v.shape or q.dtype != torch.float32:
        raise ValueError("bad input")
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        Lq, Lk = s.shape[-2:]
        s = s.masked_fill(
            torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq).logical_not(), float("-inf")
        )
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse[..., None]) @ v, lse


def test_a_pure_torch_forward_is_named(capsys):
    assert_named("flash_attention_triton", torch_flash, "no_triton_kernel", capsys)


def test_sdpa_and_the_library_are_shortcuts():
    import torch.nn.functional as F

    import course.reference.flash_triton as library

    def sdpa(q, k, v, causal=False):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal), None

    assert report("flash_attention_triton", sdpa).keys == {"shortcut"}
    for name in ("triton_add", "triton_softmax", "flash_attention_triton", "FlashAttentionTriton"):
        assert report(name, getattr(library, name)).keys == {"shortcut"}


def test_launching_the_library_kernel_is_a_shortcut():
    import course.reference.flash_triton as library

    def borrowed(x, y):
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError("x and y must match")
        out = torch.empty_like(x.contiguous())
        library._add_kernel[(triton.cdiv(x.numel(), 256),)](
            x.contiguous(), y.contiguous(), out, x.numel(), BLOCK=256
        )
        return out

    assert report("triton_add", borrowed).keys == {"shortcut"}


# ----------------------------------------------------------------------------- planted bugs: backward

FUNCTION_BUGS = {
    "no_d_term": [
        ("ds = p * (dp - delta[:, None])", "ds = p * dp"),
        (
            "dq += tl.dot((p * (dp - Di[:, None])).to(k.dtype), k)",
            "dq += tl.dot((p * dp).to(k.dtype), k)",
        ),
    ],
    "grad_wrong_scale": [("ds_scale = 1.0 / math.sqrt(D)", "ds_scale = 1.0")],
    "causal_backward": [("CAUSAL=ctx.is_causal)", "CAUSAL=False)")],
    "wrong_delta": [("tl.sum(o * do, axis=1)", "tl.sum(do, axis=1)")],
    "delta_rows_missing": [("(o3, do3, delta, BH * Lq,", "(o3, do3, delta, Lq,")],
    # BLOCK_M = BLOCK_N = 16 and D = 16: the tiles' shapes agree, the values do not
    "dv_p_not_transposed": [
        ("dv += tl.dot(tl.trans(p.to(do.dtype)), do)", "dv += tl.dot(p.to(do.dtype), do)")
    ],
    "delta_wrong_axis": [("(dp - Di[:, None])", "(dp - Di[None, :])")],
    "dk_from_dout": [
        (
            "dk += tl.dot(tl.trans(ds.to(q.dtype)), q)",
            "dk += tl.dot(tl.trans(ds.to(q.dtype)), do)",
        )
    ],
    "backward_gradient_count": [("dv.reshape(v.shape), None", "dv.reshape(v.shape)")],
    "backward_gradient_order": [
        (
            "return dq.reshape(q.shape), dk.reshape(k.shape)",
            "return dk.reshape(k.shape), dq.reshape(q.shape)",
        )
    ],
    "backward_head_offset": [
        ("Di = tl.load(DELTA + bh * Lq + offs_m", "Di = tl.load(DELTA + offs_m")
    ],
    "backward_scales_swapped": [
        (
            "qk_scale = 1.4426950408889634 / math.sqrt(D)\n        ds_scale = 1.0 / math.sqrt(D)",
            "qk_scale = 1.0 / math.sqrt(D)\n        ds_scale = 1.4426950408889634 / math.sqrt(D)",
        )
    ],
    "gradients_not_reshaped": [
        (
            "return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), None",
            "return dq, dk, dv, None",
        )
    ],
    "not_saved_for_backward": [  # lse kept on ctx
        (
            "ctx.save_for_backward(q, k, v, out, lse)",
            "ctx.save_for_backward(q, k, v, out); ctx.lse = lse",
        ),
        (
            "q, k, v, out, lse = ctx.saved_tensors",
            "q, k, v, out = ctx.saved_tensors; lse = ctx.lse",
        ),
    ],
    "dout_not_contiguous": [
        (
            "q3, k3, v3, o3, do3 = (t.reshape(-1, t.shape[-2], D).contiguous() "
            "for t in (q, k, v, out, dout))",
            "q3, k3, v3, o3 = (t.reshape(-1, t.shape[-2], D).contiguous() for t in (q, k, v, out))"
            "; do3 = dout.reshape(-1, Lq, D)",
        )
    ],
}


@pytest.mark.parametrize("key", FUNCTION_BUGS)
def test_function_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "FlashAttentionTriton", *FUNCTION_BUGS[key])
    assert_named("FlashAttentionTriton", bug, key, capsys)


def test_dk_and_dv_swapped_is_named_on_hidden_seeds(solution, capsys):
    """(dq, dv, dk): k and v have the same shape, so torch accepts the order"""
    bug = planted(
        solution,
        "FlashAttentionTriton",
        ("dk.reshape(k.shape), dv.reshape(v.shape)", "dv.reshape(v.shape), dk.reshape(k.shape)"),
    )
    assert_named_on_seeds(
        DAY, "FlashAttentionTriton", bug, "backward_gradient_order", capsys, HIDDEN_SEEDS[:2]
    )


FORWARD_CALL = "out, lse = flash_attention_triton(q, k, v, causal=is_causal)"


def test_a_function_that_lets_head_dim_24_through_is_named_on_hidden_seeds(solution, capsys):
    """the forward catches flash_attention_triton's ValueError and returns zeros"""
    bug = planted(
        solution,
        "FlashAttentionTriton",
        (
            FORWARD_CALL,
            f"try:\n            {FORWARD_CALL}\n        except ValueError:\n"
            "            out, lse = torch.zeros_like(q), q.new_zeros(q.shape[:-1])",
        ),
    )
    assert_named_on_seeds(
        DAY, "FlashAttentionTriton", bug, "no_error_for_bad_input", capsys, HIDDEN_SEEDS[:2]
    )


LOOP_START = "lo = (tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M) * BLOCK_M"
LATE_LOOP_STARTS = {  # the causal dK/dV loop over query tiles starts too late
    "no_shift": LOOP_START.replace("tl.maximum(start_n - (Lk - Lq), 0)", "start_n"),
    "one_tile_late": LOOP_START.replace("// BLOCK_M) * BLOCK_M", "// BLOCK_M + 1) * BLOCK_M"),
}


@pytest.mark.parametrize("late", LATE_LOOP_STARTS)
def test_a_late_dkdv_loop_start_is_named_on_hidden_seeds(solution, late, capsys):
    bug = planted(solution, "FlashAttentionTriton", (LOOP_START, LATE_LOOP_STARTS[late]))
    assert_named_on_seeds(DAY, "FlashAttentionTriton", bug, "dkdv_loop_start", capsys, HIDDEN_SEEDS)


BACKWARD_BUGS_ON_EVERY_SEED = [  # (bug, key): the edit of the solution, the mistake it is
    # no clamp at 0: start_n - (Lk - Lq) < 0 reads query rows before the first; `//` rounds
    # toward 0, so only a shift of a whole tile or more shows (the check's second causal case)
    (
        (LOOP_START, "lo = ((start_n - (Lk - Lq)) // BLOCK_M) * BLOCK_M"),
        "dkdv_loop_start_unclamped",
    ),
    # one program per query tile: the key tiles past cdiv(Lq, BLOCK) are never written
    (
        (
            "flash_bwd_dkdv_kernel[(triton.cdiv(Lk, BLOCK), BH)]",
            "flash_bwd_dkdv_kernel[(triton.cdiv(Lq, BLOCK), BH)]",
        ),
        "dkdv_grid_too_small",
    ),
]


@pytest.mark.parametrize("bug, key", BACKWARD_BUGS_ON_EVERY_SEED)
def test_backward_bugs_are_named_on_hidden_seeds(solution, bug, key, capsys):
    impl = planted(solution, "FlashAttentionTriton", bug)
    assert_named_on_seeds(DAY, "FlashAttentionTriton", impl, key, capsys, HIDDEN_SEEDS)


def test_a_dkdv_grid_from_lq_is_named_by_the_causal_check_too(solution):
    """the causal check's second case has more key tiles than query tiles, whatever the tile"""
    impl = planted(solution, "FlashAttentionTriton", BACKWARD_BUGS_ON_EVERY_SEED[1][0])
    failed = [r for r in report("FlashAttentionTriton", impl).results if not r.passed]
    assert [r.key for r in failed] == ["dkdv_grid_too_small"] * 2, [
        (r.key, r.message) for r in failed
    ]


LSE_IN_NATURAL_LOG = [  # P = exp2(s - lse) in both kernels: lse never turned into base 2
    (
        "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634\n"
        "        delta",
        "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)\n        delta",
    ),
    (
        "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634\n"
        "    Di",
        "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)\n    Di",
    ),
]


@pytest.mark.parametrize(
    "edits", [LSE_IN_NATURAL_LOG, LSE_IN_NATURAL_LOG[:1]], ids=["both", "dkdv"]
)
def test_backward_lse_in_natural_log_is_named_on_hidden_seeds(solution, edits, capsys):
    bug = planted(solution, "FlashAttentionTriton", *edits)
    assert_named("FlashAttentionTriton", bug, "backward_lse_natural", capsys)
    for seed in HIDDEN_SEEDS[:2]:
        result = report("FlashAttentionTriton", bug, hidden=True, seed=seed)
        assert "backward_lse_natural" in result.keys, [(r.key, r.message) for r in result.results]


def test_causal_only_gradient_bug_passes_the_non_causal_check(solution):
    bug = planted(solution, "FlashAttentionTriton", *FUNCTION_BUGS["causal_backward"])
    results = {r.check: r for r in report("FlashAttentionTriton", bug).results}
    passed = [check for check, r in results.items() if r.passed]
    assert any(check.startswith("dq, dk, dv match") for check in passed)


def make_function(solution, *, torch_backward=False, save_scores=False):
    flash = solution["flash_attention_triton"]

    class Variant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, is_causal=False):
            out, lse = flash(q, k, v, causal=is_causal)
            extra = (q @ k.transpose(-1, -2),) if save_scores else ()
            ctx.save_for_backward(q, k, v, out, lse, *extra)
            ctx.is_causal = is_causal
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, out, lse = ctx.saved_tensors[:5]
            scale = 1 / math.sqrt(q.shape[-1])
            s = q @ k.transpose(-1, -2) * scale
            if ctx.is_causal:
                Lq, Lk = s.shape[-2:]
                s = s.masked_fill(
                    torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq).logical_not(), float("-inf")
                )
            p = torch.exp(s - lse[..., None])
            dv = p.transpose(-1, -2) @ dout
            ds = p * (dout @ v.transpose(-1, -2) - (dout * out).sum(-1, keepdim=True))
            return ds @ k * scale, ds.transpose(-1, -2) @ q * scale, dv, None

    assert torch_backward or save_scores
    return Variant


def test_a_pytorch_backward_is_named(solution, capsys):
    assert_named(
        "FlashAttentionTriton",
        make_function(solution, torch_backward=True),
        "backward_not_triton",
        capsys,
    )


def test_saving_the_scores_is_named(solution, capsys):
    assert_named(
        "FlashAttentionTriton",
        make_function(solution, save_scores=True),
        "saves_attention_matrix",
        capsys,
    )


def test_a_plain_function_is_not_an_autograd_function(solution, capsys):
    assert_named(
        "FlashAttentionTriton",
        solution["flash_attention_triton"],
        "not_an_autograd_function",
        capsys,
    )


# ----------------------------------------------------------------------------- correct, written differently


@triton.jit
def _add_strided(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # a grid-stride loop: fewer programs, each doing several blocks
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(
            out_ptr + offs,
            tl.load(x_ptr + offs, mask=offs < n) + tl.load(y_ptr + offs, mask=offs < n),
            mask=offs < n,
        )


def add_grid_stride(x, y):
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            f"x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)} {y.dtype} must match"
        )
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _add_strided[(2,)](x, y, out, x.numel(), BLOCK=128)
    return out


def failures_on_hidden_seeds(name: str, impl, seeds=HIDDEN_SEEDS) -> list:
    """(seed, key, message) of each check of exercise `name` that impl fails: the visible
    checks (seed None) and the hidden ones on each seed. Empty when impl passes them all."""
    reports = [(None, report(name, impl))]
    reports += [(seed, report(name, impl, hidden=True, seed=seed)) for seed in seeds]
    return [
        (seed, result.key, result.message)
        for seed, outcome in reports
        for result in outcome.results
        if not result.passed
    ]


def test_a_grid_stride_add_passes():
    assert not failures_on_hidden_seeds("triton_add", add_grid_stride)


ADD_ALTERNATIVES = {  # written differently, right all the same
    # an output made from the shape, a small block and a grid that reads it from meta
    "meta_grid": [
        ("out = torch.empty_like(x)", "out = torch.empty(x.shape, dtype=x.dtype, device=x.device)"),
        ("BLOCK = 1024", "BLOCK = 64"),
        (
            "add_kernel[(triton.cdiv(n, BLOCK),)](x, y, out, n, BLOCK=BLOCK)",
            "add_kernel[lambda meta: (triton.cdiv(n, meta['BLOCK']),)]("
            "x.view(-1), y.view(-1), out.view(-1), n, BLOCK=BLOCK)",
        ),
    ],
    # each program's block in four masked sub-blocks
    "sub_blocks": [
        (
            "    offsets = pid * BLOCK + tl.arange(0, BLOCK)\n"
            "    inside = offsets < n\n"
            "    x = tl.load(x_ptr + offsets, mask=inside)\n"
            "    y = tl.load(y_ptr + offsets, mask=inside)\n"
            "    tl.store(out_ptr + offsets, x + y, mask=inside)",
            "    for c in range(4):\n"
            "        offsets = pid * BLOCK + c * (BLOCK // 4) + tl.arange(0, BLOCK // 4)\n"
            "        inside = offsets < n\n"
            "        x = tl.load(x_ptr + offsets, mask=inside, other=0.0)\n"
            "        y = tl.load(y_ptr + offsets, mask=inside, other=0.0)\n"
            "        tl.store(out_ptr + offsets, x + y, mask=inside)",
        )
    ],
}


@pytest.mark.parametrize("alternative", ADD_ALTERNATIVES)
def test_add_alternatives_pass(solution, alternative):
    impl = planted(solution, "triton_add", *ADD_ALTERNATIVES[alternative])
    assert not failures_on_hidden_seeds("triton_add", impl)


FUNCTION_ALTERNATIVES = {  # written differently, right all the same
    # the scale folded into dS inside the dK/dV loop instead of applied to dk at the end
    "scale_inside_the_loop": [
        ("ds = p * (dp - delta[:, None])", "ds = p * (dp - delta[:, None]) * ds_scale"),
        ("(dk * ds_scale).to(DK.dtype.element_ty)", "dk.to(DK.dtype.element_ty)"),
    ],
    # natural units in the backward: scores scaled by 1 / sqrt(D), P = exp(s - lse)
    "natural_units": [
        ("qk_scale = 1.4426950408889634 / math.sqrt(D)", "qk_scale = 1.0 / math.sqrt(D)"),
        (
            "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634"
            "\n        delta",
            "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)\n        delta",
        ),
        (
            "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0) * 1.4426950408889634"
            "\n    Di",
            "lse = tl.load(LSE + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)\n    Di",
        ),
        (
            "p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)  ",
            "p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)  ",
        ),
        (
            "p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)\n",
            "p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)\n",
        ),
    ],
    # the causal dK/dV start clamped but not rounded down to a tile: the masks zero the rest
    "start_not_rounded": [(LOOP_START, "lo = tl.maximum(start_n - (Lk - Lq), 0)")],
}


@pytest.mark.parametrize("alternative", FUNCTION_ALTERNATIVES)
def test_function_alternatives_pass(solution, alternative):
    impl = planted(solution, "FlashAttentionTriton", *FUNCTION_ALTERNATIVES[alternative])
    assert not failures_on_hidden_seeds("FlashAttentionTriton", impl, HIDDEN_SEEDS[:1])


SOFTMAX_ALTERNATIVES = {  # written differently, right all the same
    "exp2_with_log2e": [("num = tl.exp(x)", "num = tl.exp2(x * 1.4426950408889634)")],
    "logsumexp_form": [
        ("num / tl.sum(num, axis=0)", "tl.exp(x - tl.log(tl.sum(num, axis=0)))"),
    ],
    # exp(x - lse) with lse = max + log(sum) of x itself: off by 1e-3 near 1e4 in float32, right
    # within the check's tolerance, and not a row never written
    "logsumexp_of_x": [
        ("x = x - tl.max(x, axis=0)", "x_raw = x\n    x = x - tl.max(x, axis=0)"),
        (
            "num / tl.sum(num, axis=0)",
            "tl.exp(x_raw - (tl.max(x_raw, axis=0) + tl.log(tl.sum(num, axis=0))))",
        ),
    ],
    # padded lanes loaded as 0.0, then set to -inf before the max
    "where_after_load": [
        ('other=float("-inf"))', 'other=0.0)\n    x = tl.where(inside, x, float("-inf"))'),
    ],
}


@pytest.mark.parametrize("alternative", SOFTMAX_ALTERNATIVES)
def test_softmax_alternatives_pass(solution, alternative):
    impl = planted(solution, "triton_softmax", *SOFTMAX_ALTERNATIVES[alternative])
    assert not failures_on_hidden_seeds("triton_softmax", impl)


@triton.jit
def _flash_natural(
    Q,
    K,
    V,
    O,
    LSE,
    Lq,
    Lk,
    sm_scale,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    # natural-log units (tl.exp, tl.log), BLOCK_N = 32, every tile masked, and a causal stop
    # written with a Python-side bound
    m0 = tl.program_id(0) * BM
    h = tl.program_id(1)
    rows = m0 + tl.arange(0, BM)
    d = tl.arange(0, D)
    q = tl.load(Q + h * Lq * D + rows[:, None] * D + d[None, :], mask=rows[:, None] < Lq, other=0.0)
    m = tl.zeros([BM], dtype=tl.float32) - float("inf")
    l = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    end = Lk
    if CAUSAL:
        end = tl.minimum(Lk, Lk - Lq + m0 + BM)
    for n0 in range(0, end, BN):
        cols = n0 + tl.arange(0, BN)
        k = tl.load(
            K + h * Lk * D + cols[:, None] * D + d[None, :], mask=cols[:, None] < Lk, other=0.0
        )
        v = tl.load(
            V + h * Lk * D + cols[:, None] * D + d[None, :], mask=cols[:, None] < Lk, other=0.0
        )
        s = tl.dot(q, tl.trans(k)) * sm_scale
        ok = cols[None, :] < Lk
        if CAUSAL:
            ok = ok & (cols[None, :] - (Lk - Lq) <= rows[:, None])
        s = tl.where(ok, s, float("-inf"))
        new = tl.maximum(m, tl.max(s, 1))
        scale = tl.exp(m - new)
        p = tl.exp(s - new[:, None])
        l = l * scale + tl.sum(p, 1)
        acc = acc * scale[:, None] + tl.dot(p, v)
        m = new
    tl.store(
        O + h * Lq * D + rows[:, None] * D + d[None, :], acc / l[:, None], mask=rows[:, None] < Lq
    )
    tl.store(LSE + h * Lq + rows, m + tl.log(l), mask=rows < Lq)


def flash_natural(q, k, v, causal=False):
    D = q.shape[-1]
    if (
        D not in (16, 32, 64, 128)
        or k.shape != v.shape
        or q.shape[:-2] != k.shape[:-2]
        or q.shape[-1] != k.shape[-1]
        or q.dtype != torch.float32
        or k.dtype != q.dtype
    ):
        raise ValueError(
            f"unsupported q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    Lq, Lk = q.shape[-2], k.shape[-2]
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], D).contiguous() for t in (q, k, v))
    out, lse = torch.empty_like(q3), torch.empty(q3.shape[:2])
    _flash_natural[(triton.cdiv(Lq, 16), q3.shape[0])](
        q3, k3, v3, out, lse, Lq, Lk, 1 / math.sqrt(D), D=D, BM=16, BN=32, CAUSAL=causal
    )
    return out.reshape(q.shape), lse.reshape(q.shape[:-1])


def test_a_natural_log_kernel_with_other_tiles_passes():
    assert not failures_on_hidden_seeds("flash_attention_triton", flash_natural, HIDDEN_SEEDS[:1])


def test_a_library_style_kernel_passes():
    """course.reference.flash_triton's kernels (whole tiles unmasked, exp2), launched from a copy of its code."""
    import course.reference.flash_triton as library

    namespace = {"__name__": "copied"}
    exec(compile("\n" + open(library.__file__).read(), "<copy>", "exec"), namespace)
    assert report("flash_attention_triton", namespace["flash_attention_triton"]).passed
    assert report("FlashAttentionTriton", namespace["FlashAttentionTriton"]).passed


# ----------------------------------------------------------------------------- the notebook's promises

# Each exercise's "Mistakes the checks recognise: ..." list in the notebook, phrase by phrase, and
# the key (or keys) a planted bug above is named under: every promise is kept by a test (issue
# #18).
PROMISES = {
    "triton_add": {
        "no Triton kernel launched (the sum computed with torch)": "no_triton_kernel",
        "a load or store outside the tensors: the last block not masked": "out_of_bounds",
        "`n // BLOCK` programs instead of `triton.cdiv(n, BLOCK)`": "grid_too_small",
        "offsets without `pid * BLOCK` (or `tl.program_id(1)` on a 1-D grid)": (
            "offsets_without_block_start"
        ),
        "a mask against `BLOCK` instead of `n`": "mask_against_block",
        "wrong values for a non-contiguous `x` or `y` (no `.contiguous()`": "non_contiguous",
        "`x.view(-1)` of a transpose": "view_of_non_contiguous",
        "an output made with `torch.empty_like(x)` of a transposed `x`": "output_like_input",
        "the output that is `x` itself": "modified_input",
        "shapes or dtypes that differ accepted without a ValueError": "add_accepts_bad_input",
        "(shapes `(n, m)` and `(m, n)` too: compare shapes, not `numel()`)": (
            "add_accepts_bad_input"
        ),
    },
    "triton_softmax": {
        "padded lanes counted in the sum (loaded with `other=0.0` instead of `-inf`)": (
            "padding_counted"
        ),
        "inf or NaN for large inputs (no max subtracted)": "not_stable",
        "padded lanes that win the max (a row far below 0)": "padding_wins_max",
        "`exp(x - max)` not divided by its sum": "softmax_not_divided",
        r"`tl.exp2` without $\log_2 e$": "softmax_exp2",
        "softmax over the wrong axis": "wrong_axis",
        "over rows of the wrong length (`n_cols = x.shape[0]`, `reshape(n_cols, -1)`)": (
            "row_length_wrong"
        ),
        "a non-contiguous input read as if contiguous": "non_contiguous",
        "an output made with `torch.empty_like(x)` of a transposed `x`": "output_like_input",
        "one program for all rows": "one_program_for_all_rows",
        "rows read at `row * BLOCK` instead of `row * n_cols`": "row_stride_block",
        "a `BLOCK` that is not a power of two": "block_not_power_of_two",
        "the output that is the input itself": "modified_input",
        "no Triton kernel": "no_triton_kernel",
        "a load or store outside the tensors": "out_of_bounds",
        "a 0-d tensor accepted without a ValueError": "softmax_accepts_bad_input",
    },
    "flash_attention_triton": {
        "no rescale at all": "missing_rescale",
        "or only one of `l_i` and `acc` rescaled": ("rescale_l_not_acc", "rescale_acc_not_l"),
        "`acc` rescaled after the new tile is added, `(acc + P V) * alpha`": "rescale_after_tile",
        "`l_i` (or `acc`, `m_i`) set to its start value inside the key loop": (
            "state_reset_in_loop"
        ),
        "the row max over the wrong axis, `tl.max(s, axis=0)`": "max_not_per_row",
        r"`m_i` started at 0 instead of $-\infty$": "m_i_not_minus_inf",
        "the output not divided by `l_i`": "not_normalised",
        "keys past $L_k$ in the last tile counted": "pad_keys_not_masked",
        "a load or store outside the tensors (a ragged tile without a mask)": "out_of_bounds",
        r"the wrong scale: none, $1/D$, or `tl.exp2` without $\log_2 e$ folded in": "wrong_scale",
        "the logsumexp in base 2 (or half converted)": "lse_base2",
        "or without the max": "lse_without_max",
        "`alpha = exp2(m_new - m_i)` (inverted: NaN everywhere)": "alpha_inverted",
        "`tl.dot(q, k)` without `tl.trans(k)` (a shape error, or wrong scores when `BLOCK_N = D`)": (
            "dot_shapes",
            "k_not_transposed",
        ),
        "non-contiguous q, k, v read as if contiguous": "inputs_not_contiguous",
        "`causal=True` ignored": "causal_ignored",
        "a top-left mask": "causal_top_left",
        "the diagonal tile masked on the wrong side": "causal_wrong_side",
        "query rows left with no key (NaN) by the causal positions": "causal_row_without_keys",
        "the key tiles above the diagonal loaded (the loop must stop at `hi`)": (
            "causal_tiles_not_skipped"
        ),
        "a loop that stops too early (`hi = start_m + BLOCK_M`, top-left)": "causal_loop_bound",
        "K/V of head `bh` at `bh * Lq * D` (or Q at `bh * Lk * D`)": "head_offset",
        "`BH` from `q.shape[0]` instead of every leading dim": "leading_dims_not_flattened",
        "the output written over `q`": "modified_input",
        "no Triton kernel": "no_triton_kernel",
        "unsupported head_dim (24, or 48: a multiple of 16 is not enough)": (
            "no_error_for_bad_input"
        ),
        "shapes or dtypes (q, k, v not all the same) accepted": "no_error_for_bad_input",
    },
    "FlashAttentionTriton": {
        "`dS = P * dP` without the $D$ term": "no_d_term",
        "or $D$ summed from `dO` alone (or `O * O`) instead of `dO * O`": "wrong_delta",
        r"$dK = dS^\top dO$ instead of $dS^\top Q$": "dk_from_dout",
        "`backward` returning three gradients (no `None` for `is_causal`)": (
            "backward_gradient_count"
        ),
        "or them in another order than `q, k, v`": "backward_gradient_order",
        r"$dQ$, $dK$ without the $1/\sqrt d$ (or with it twice)": "grad_wrong_scale",
        "gradients right without a mask but wrong with `is_causal=True`": "causal_backward",
        "a causal dK/dV loop over query tiles that starts late": "dkdv_loop_start",
        "a causal dK/dV start not clamped at 0": "dkdv_loop_start_unclamped",
        "a dK/dV grid of `cdiv(Lq, BLOCK)` programs instead of `cdiv(Lk, BLOCK)`": (
            "dkdv_grid_too_small"
        ),
        "$P$ = `tl.exp2(s - lse)` with `lse` still in natural log": "backward_lse_natural",
        "`qk_scale` and `ds_scale` swapped in a launch": "backward_scales_swapped",
        "`DELTA` or `LSE` read at `offs_m`, without the per-head offset `bh * Lq`": (
            "backward_head_offset"
        ),
        "a non-contiguous `dout` (the gradient of a transposed output) read as if contiguous": (
            "dout_not_contiguous"
        ),
        "a backward that launches no Triton kernel": "backward_not_triton",
        "a forward that saves the attention matrix": "saves_attention_matrix",
        "or keeps `lse` on `ctx` instead of saving it with `ctx.save_for_backward`": (
            "not_saved_for_backward"
        ),
        "gradients returned in the flattened `(BH, L, D)` shape": "gradients_not_reshaped",
        "something other than an autograd.Function": "not_an_autograd_function",
        "head_dim 24 accepted": "no_error_for_bad_input",
    },
}

# The single planted-bug tests: (exercise, key).
SINGLE_PLANTED_BUGS = [
    ("triton_add", "no_triton_kernel"),  # test_add_without_a_kernel_is_named
    ("triton_softmax", "row_length_wrong"),  # test_rows_of_the_wrong_length_are_named_not_an_...
    ("triton_softmax", "wrong_axis"),  # test_softmax_over_the_wrong_axis_is_named
    ("triton_softmax", "no_triton_kernel"),  # test_a_softmax_without_a_kernel_is_named_on_...
    ("flash_attention_triton", "k_not_transposed"),  # test_scores_without_the_transpose_on_...
    ("flash_attention_triton", "no_triton_kernel"),  # test_a_pure_torch_forward_is_named
    ("FlashAttentionTriton", "dkdv_loop_start"),  # test_a_late_dkdv_loop_start_is_named_on_...
    ("FlashAttentionTriton", "backward_lse_natural"),  # test_backward_lse_in_natural_log_is_...
    ("FlashAttentionTriton", "backward_not_triton"),  # test_a_pytorch_backward_is_named
    ("FlashAttentionTriton", "saves_attention_matrix"),  # test_saving_the_scores_is_named
    ("FlashAttentionTriton", "not_an_autograd_function"),  # test_a_plain_function_is_not_an_...
    ("FlashAttentionTriton", "no_error_for_bad_input"),  # test_a_function_that_lets_head_dim_...
]


def keys_planted(name) -> set:
    """The keys the planted bugs of exercise `name` are named under."""
    keys = {
        "triton_add": set(ADD_BUGS) | {key for key, _ in ADD_BUGS_ON_EVERY_SEED},
        "triton_softmax": set(SOFTMAX_BUGS),
        "flash_attention_triton": set(FLASH_BUGS)
        | {key for key, _ in FLASH_BUGS_ON_EVERY_SEED.values()},
        "FlashAttentionTriton": set(FUNCTION_BUGS)
        | {key for _, key in BACKWARD_BUGS_ON_EVERY_SEED},
    }[name]
    return keys | {key for exercise, key in SINGLE_PLANTED_BUGS if exercise == name}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, keys_planted(name))
