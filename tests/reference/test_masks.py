"""course.reference.masks, the library versions later days stand on, against torch's own."""

import pytest
import torch
import torch.nn.functional as F

from course.reference.masks import attention, causal_mask, padding_mask


def test_causal_mask_is_bottom_right_aligned():
    assert torch.equal(causal_mask(3), torch.ones(3, 3, dtype=torch.bool).tril())
    # 2 new queries after 3 cached keys: query 0 is at position 3, query 1 at position 4.
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True] * 5]


def test_padding_mask_marks_real_tokens():
    assert padding_mask(torch.tensor([2, 0, 3]), 3).tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, True],
    ]


def test_attention_equals_torch_with_the_same_mask():
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 5)
    mask = causal_mask(4, 6)
    out, weights = attention(q, k, v, mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 4))


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = (torch.randn(1, 3, 4, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, weights = attention(q, k, v, mask)
    assert torch.equal(out[0, 1], torch.zeros(4)) and torch.equal(weights[0, 1], torch.zeros(3))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: causal_mask(0), "lq >= 1"),
        (lambda: padding_mask(torch.tensor([1.5]), 3), "integer"),
        (lambda: padding_mask(torch.tensor([4]), 3), r"\[0, max_len=3\]"),
        (lambda: attention(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3, 2)), "expected q"),
        (
            lambda: attention(
                torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 2), torch.ones(2, 3)
            ),
            "boolean",
        ),
    ],
)
def test_bad_input_says_what_was_expected(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_stable_softmax_equals_torch_and_gives_zeros_for_an_all_neg_inf_row():
    from course.reference.sdpa import stable_softmax

    x = torch.randn(3, 4, 5, dtype=torch.float64) * 30
    assert torch.allclose(stable_softmax(x), torch.softmax(x, -1))
    assert torch.allclose(stable_softmax(x, dim=1), torch.softmax(x, 1))
    x[1, 2] = float("-inf")
    out = stable_softmax(x)
    assert torch.equal(out[1, 2], torch.zeros(5, dtype=torch.float64))
    assert torch.isfinite(out).all()
    big = torch.tensor([1000.0, 1001.0], dtype=torch.float16)
    assert torch.isfinite(stable_softmax(big)).all() and stable_softmax(big).dtype == torch.float16


def test_stable_softmax_is_allowed_where_the_built_in_softmax_is_forbidden():
    from course.reference.sdpa import stable_softmax
    from grader.harness.guard import SOFTMAX, ShortcutGuard

    guard = ShortcutGuard("masked_attention", SOFTMAX)
    with guard:
        stable_softmax(torch.randn(2, 3))
    assert guard.tripped is None


@pytest.mark.parametrize("bad", [torch.tensor([1, 2]), [0.5, 1.0]], ids=["integer", "list"])
def test_stable_softmax_refuses_what_is_not_a_float_tensor(bad):
    from course.reference.sdpa import stable_softmax

    with pytest.raises(TypeError, match="floating-point tensor"):
        stable_softmax(bad)
