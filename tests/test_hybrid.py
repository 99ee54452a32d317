"""course.hybrid: per-layer masks, causality, costs, and training through tiny_transformer.train."""

import pytest
import torch

from course.hybrid import HybridTransformer, attended_pairs, attention_memory, train_hybrid
from course.tiny_transformer import make_batch


def test_layers_get_local_or_global_masks():
    model = HybridTransformer(layer_kinds=("local", "global", "local"), window=3, d_model=16, num_heads=2)
    ids = make_batch("reverse", 2, 5)
    logits, weights = model(ids, return_weights=True)
    assert logits.shape == (2, 11, model.vocab_size) and len(weights) == 3
    i, j = torch.arange(11).unsqueeze(-1), torch.arange(11)
    local = (j <= i) & (j > i - 3)
    assert (weights[0][..., ~local] == 0).all() and (weights[2][..., ~local] == 0).all()
    assert (weights[1][..., j > i] == 0).all() and (weights[1][..., (j <= i) & ~local] > 0).all()


def test_hybrid_is_causal():
    model = HybridTransformer(layer_kinds=("local", "global"), window=2, d_model=16)
    ids = make_batch("copy", 1, 6)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 10
    torch.testing.assert_close(model(ids)[:, :-1], model(changed)[:, :-1])


def test_costs():
    assert attended_pairs(("global",), 4, 2) == 10
    assert attended_pairs(("local",), 4, 2) == 1 + 2 + 2 + 2
    assert attended_pairs(("local", "global"), 4, 2) == 17
    assert attention_memory(("local", "local"), 1, 8, 8192, 64, 256) < \
        attention_memory(("local", "global"), 1, 8, 8192, 64, 256) / 10


def test_bad_arguments():
    with pytest.raises(ValueError, match="layer_kinds"):
        HybridTransformer(layer_kinds=("local", "dense"))
    with pytest.raises(ValueError, match="window"):
        HybridTransformer(window=0)


@pytest.mark.slow
def test_one_global_layer_solves_reverse_where_local_layers_cannot():
    hybrid = train_hybrid("reverse", ("local", "global"), window=3, length=6, steps=150, d_model=32)
    local = train_hybrid("reverse", ("local", "local"), window=3, length=6, steps=150, d_model=32)
    assert hybrid.token_accuracy > 0.97
    assert local.token_accuracy < 0.6
