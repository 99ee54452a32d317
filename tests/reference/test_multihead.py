"""course.reference.multihead, the library version of day 3, against torch's own layers and float64 formulas."""

import math

import pytest
import torch
import torch.nn as nn

from course.reference.masks import causal_mask
from course.reference.multihead import (
    MultiHeadAttention,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    merge_heads,
    repeat_kv,
    sinusoidal_positions,
    split_heads,
)


def test_split_and_merge_heads_are_inverse_and_contiguous_per_head():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    assert torch.equal(heads[:, 1], x[..., 4:8])  # head 1 owns features [4, 8)
    assert torch.equal(merge_heads(heads), x)


def test_repeat_kv_repeats_each_head_in_a_row():
    x = torch.arange(3.0).view(1, 3, 1, 1)
    assert repeat_kv(x, 2).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert repeat_kv(x, 1) is x


def copy_from_torch(mine, theirs):
    with torch.no_grad():
        for proj, weight, bias in zip(
            [mine.q_proj, mine.k_proj, mine.v_proj],
            theirs.in_proj_weight.chunk(3),
            theirs.in_proj_bias.chunk(3),
        ):
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)
        mine.out_proj.load_state_dict(theirs.out_proj.state_dict())


def test_multihead_attention_equals_torch_with_mask_and_cross_attention():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64).eval()
    mine = MultiHeadAttention(16, 4).double().eval()
    copy_from_torch(mine, theirs)
    x, context = (
        torch.randn(2, 5, 16, dtype=torch.float64),
        torch.randn(2, 7, 16, dtype=torch.float64),
    )
    mask = causal_mask(5, 7)
    out, weights = mine(x, context, mask=mask, need_weights=True)
    ref_out, ref_weights = theirs(x, context, context, attn_mask=~mask, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
    assert mine(x)[1] is None


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(1)
    gqa = MultiHeadAttention(24, 6, num_kv_heads=2).double()
    mha = MultiHeadAttention(24, 6).double()
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for full, shared in [(mha.k_proj, gqa.k_proj), (mha.v_proj, gqa.v_proj)]:
            full.weight.copy_(shared.weight.view(2, 4, 24).repeat_interleave(3, 0).reshape(24, 24))
            full.bias.copy_(shared.bias.view(2, 4).repeat_interleave(3, 0).reshape(24))
    x = torch.randn(3, 6, 24, dtype=torch.float64)
    torch.testing.assert_close(gqa(x, mask=causal_mask(6))[0], mha(x, mask=causal_mask(6))[0])
    assert gqa.k_proj.out_features == 8 and MultiHeadAttention(24, 6, 1).v_proj.out_features == 4


def test_rope_in_attention_is_relative():
    torch.manual_seed(2)
    layer = MultiHeadAttention(16, 2).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    _, w0 = layer(x, need_weights=True, positions=torch.arange(5))
    _, w1 = layer(x, need_weights=True, positions=torch.arange(5) + 100)
    torch.testing.assert_close(w0, w1)


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 3), "d_model=10 is not divisible by num_heads=3"),
        ((12, 6, 4), "num_heads=6 is not a multiple of num_kv_heads=4"),
    ],
)
def test_multihead_attention_refuses_bad_head_counts(args, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(*args)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="not divisible"):
        split_heads(torch.zeros(1, 2, 10), 3)
    with pytest.raises(ValueError, match="even head dimension"):
        apply_rope(torch.zeros(1, 3, 5), torch.arange(3))
    with pytest.raises(TypeError, match="LongTensor"):
        apply_rope(torch.zeros(1, 3, 4), torch.arange(3.0))
    with pytest.raises(ValueError, match="expected x"):
        MultiHeadAttention(8, 2)(torch.zeros(1, 3, 6))
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        alibi_bias(0, 3, 3)


def test_sinusoidal_positions_match_the_paper():
    table = sinusoidal_positions(50, 16)
    for p in (0, 1, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(3, 5).shape == (3, 5)


def test_rope_is_rotate_half_relative_and_norm_preserving():
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    positions = torch.arange(7)
    out = apply_rope(x, positions)
    theta = 10000.0 ** (-torch.arange(4, dtype=torch.float64) * 2 / 8)
    angle = positions[:, None] * theta
    x1, x2 = x[..., :4], x[..., 4:]
    torch.testing.assert_close(
        out,
        torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1),
    )
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        return apply_rope(q[None], torch.tensor([m])) @ apply_rope(k[None], torch.tensor([n])).T

    torch.testing.assert_close(score(9, 4), score(1009, 1004))


def test_alibi_slopes_and_bias():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(h + 1) for h in range(8)])
    assert alibi_slopes(6).tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    bias = alibi_bias(4, 2, 5)  # queries at positions 3 and 4
    assert bias.shape == (4, 2, 5) and bias.dtype == torch.float32
    assert bias[:, 0, 3].abs().max() == 0 and bias[:, 1, 4].abs().max() == 0
    assert bias[0, 1].tolist() == pytest.approx([-1.0, -0.75, -0.5, -0.25, 0.0])  # slope 1/4
    assert bias[0, 0, 4].item() == pytest.approx(0.25)  # a future key: positive, not masked
