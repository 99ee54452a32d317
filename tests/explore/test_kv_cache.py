"""course.explore.kv_cache: the decoding stepper renders and follows its controls."""

import torch

from course.explore.kv_cache import CacheExplorer
from course.models.tiny_transformer import TinyTransformer
from course.reference.kv_cache import CachedDecoder, KVCache


def test_explorer_renders_every_step():
    torch.manual_seed(0)
    model = CachedDecoder(TinyTransformer(d_model=32, num_heads=4, num_layers=2, max_len=32).eval())
    explorer = CacheExplorer(
        model, torch.randint(0, 11, (5,)), max_new_tokens=4, cache_factory=KVCache
    )
    pictures = set()
    for step in range(4):
        explorer.step.value = step
        assert bytes(explorer.image.value).startswith(b"\x89PNG")
        pictures.add(bytes(explorer.image.value))
        assert explorer.frames[step]["length"] == 5 + step
    assert len(pictures) == 4
    assert explorer.bytes_used(3) == 2 * 2 * 4 * 8 * 8 * 4
    before = explorer.render()
    explorer.layer.value = 1
    after_layer = bytes(explorer.image.value)
    explorer.head.value = 3
    assert len({before, after_layer, bytes(explorer.image.value)}) == 3
