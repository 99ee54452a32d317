"""course.models.hybrid: layers built by make_attention, their reach and causality, costs, and training
through tiny_transformer.train."""

import pytest
import torch

from course.models.hybrid import (
    CAUSAL_KINDS,
    HybridTransformer,
    attended_pairs,
    attention_memory,
    train_hybrid,
)
from course.models.tiny_transformer import make_batch
from course.reference.mechanisms import make_attention


def reached(model, length: int = 12) -> torch.Tensor:
    """(L, L) bool: [i, j] is True when changing token j changes the logits at position i."""
    torch.manual_seed(0)
    ids = make_batch("copy", 1, length // 2)[:, :length]
    with torch.no_grad():
        base = model(ids)
        rows = []
        for j in range(ids.shape[1]):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 10
            rows.append((model(changed) - base).abs().amax(-1)[0] > 1e-6)
    return torch.stack(rows, dim=1)  # (i, j)


def test_every_layer_is_the_make_attention_layer_of_its_kind():
    model = HybridTransformer(
        layer_kinds=("local", "global", ("flash", {"block_q": 4}), "mamba"),
        window=3,
        d_model=16,
        num_heads=2,
    )
    expected = [
        ("sliding_window", {"window": 3, "causal": True}),
        ("dense", {"causal": True}),
        ("flash", {"block_q": 4, "causal": True}),
        ("mamba", {}),
    ]
    assert model.specs == expected and model.num_layers == 4
    for block, (kind, options) in zip(model.blocks, expected):
        assert type(block.attn) is type(make_attention(kind, 16, 2, **options))
        assert block.attn.kind == kind and block.attn.options.items() >= options.items()
    assert model(make_batch("reverse", 2, 5)).shape == (2, 11, model.vocab_size)


@pytest.mark.parametrize(
    "layer_kinds, reach", [(("local",), 3), (("local", "local"), 5), (("local", "global"), None)]
)
def test_a_token_reaches_as_far_as_the_layers_let_it(layer_kinds, reach):
    model = HybridTransformer(layer_kinds=layer_kinds, window=3, d_model=16, num_heads=2).eval()
    i, j = torch.arange(12).unsqueeze(-1), torch.arange(12)
    allowed = (j <= i) & (j > i - reach) if reach else j <= i
    assert torch.equal(reached(model), allowed)


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_every_causal_kind_stays_causal_in_a_decoder(kind):
    options = {"window": 2} if kind == "sliding_window" else {}
    model = HybridTransformer(layer_kinds=((kind, options),), d_model=16, num_heads=2).eval()
    seen = reached(model)
    assert not seen.triu(1).any() and seen.diagonal().all()


def test_costs():
    assert attended_pairs(("global",), 4, 2) == 10
    assert attended_pairs(("local",), 4, 2) == 1 + 2 + 2 + 2
    assert attended_pairs(("local", "global"), 4, 2) == 17
    assert attended_pairs((("sliding_window", {"window": 3}), "flash"), 4, 2) == 1 + 2 + 3 + 3 + 10
    local_local = attention_memory(("local", "local"), 1, 8, 8192, 64, 256)
    assert local_local < attention_memory(("local", "global"), 1, 8, 8192, 64, 256) / 10
    assert attention_memory(("local", "flash"), 1, 8, 8192, 64, 256) < 2 * local_local


def test_bad_arguments_are_answered_with_what_is_valid():
    with pytest.raises(ValueError, match="causal kind of make_attention.*'strided'"):
        HybridTransformer(layer_kinds=("local", "strided"))
    with pytest.raises(ValueError, match="must be causal"):
        HybridTransformer(layer_kinds=(("dense", {"causal": False}),))
    with pytest.raises(ValueError, match="takes no argument blok_q"):
        HybridTransformer(layer_kinds=(("flash", {"blok_q": 4}),))
    with pytest.raises(ValueError, match="kind name or a"):
        HybridTransformer(layer_kinds=(("flash", 4),))
    with pytest.raises(ValueError, match="window"):
        HybridTransformer(window=0)
    with pytest.raises(ValueError, match="RoPE"):
        HybridTransformer(positional="rope")
    with pytest.raises(ValueError, match="no attention weights"):
        HybridTransformer()(make_batch("copy", 1, 3), return_weights=True)
    with pytest.raises(ValueError, match="costs are counted here"):
        attended_pairs(("local", "mamba"), 8, 2)


@pytest.mark.slow
def test_one_global_layer_solves_reverse_where_local_layers_cannot():
    hybrid = train_hybrid("reverse", ("local", "global"), window=3, length=6, steps=150, d_model=32)
    local = train_hybrid("reverse", ("local", "local"), window=3, length=6, steps=150, d_model=32)
    flash = train_hybrid("reverse", ("local", "flash"), window=3, length=6, steps=150, d_model=32)
    assert hybrid.token_accuracy > 0.97
    assert local.token_accuracy < 0.6
    assert abs(flash.token_accuracy - hybrid.token_accuracy) < 0.02  # flash is exact attention
