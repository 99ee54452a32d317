"""A hybrid decoder: sliding-window (local) layers mixed with global (dense causal) layers.

Most of what a token needs is nearby; a few layers of full attention carry information across
the whole sequence. Models such as Gemma 2 / 3, Mistral-style long-context variants and
Longformer interleave the two: local layers cost O(L * window) and only the global ones O(L^2).

    HybridTransformer(layer_kinds=("local", "global"), window=4)   # same arguments otherwise
    train("reverse", model_class=HybridTransformer, layer_kinds=..., window=...)   # tiny_transformer.train

A local layer here masks with course.sparse.sliding_window_mask(L, window, causal=True): query i
sees keys i-window+1 .. i. On these tiny sequences a mask is the simplest way to get the exact
pattern; at long L a local layer would run course.sparse.sliding_window_attention instead, and
`attention_memory` gives what each layer's attention would then cost.
"""

import torch

from course.attention import causal_mask
from course.capstone import estimate_attention_memory
from course.sparse import sliding_window_mask
from course.tiny_transformer import TinyTransformer, train

LAYER_KINDS = ("local", "global")


class HybridTransformer(TinyTransformer):
    """TinyTransformer whose layer i attends through a causal sliding window of `window` keys
    when layer_kinds[i] == "local", and to every earlier key when it is "global"."""

    def __init__(self, *args, layer_kinds=("local", "global"), window: int = 4, **kwargs):
        layer_kinds = tuple(layer_kinds)
        if not layer_kinds or any(kind not in LAYER_KINDS for kind in layer_kinds):
            raise ValueError(f"layer_kinds must be a non-empty sequence of {LAYER_KINDS}, got {layer_kinds!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        kwargs.pop("num_layers", None)
        super().__init__(*args, num_layers=len(layer_kinds), **kwargs)
        self.layer_kinds, self.window = layer_kinds, window

    def layer_masks(self, length: int, device=None) -> list:
        """One (L, L) bool mask per layer (True = may attend)."""
        local = sliding_window_mask(length, self.window, causal=True, device=device)
        full = causal_mask(length, device=device)
        return [local if kind == "local" else full for kind in self.layer_kinds]


def attended_pairs(layer_kinds, length: int, window: int) -> int:
    """Query-key pairs scored by all layers on one causal sequence of `length` tokens."""
    full = length * (length + 1) // 2
    w = min(window, length)
    local = w * (w + 1) // 2 + (length - w) * w                      # sum over i of min(i + 1, w)
    return sum(local if kind == "local" else full for kind in layer_kinds)


def attention_memory(layer_kinds, batch: int, heads: int, length: int, head_dim: int, window: int,
                     dtype=torch.float32) -> int:
    """Peak bytes of the largest layer's attention at `length` (layers run one after another):
    global layers as dense causal attention, local ones as the O(L * window) sliding version."""
    sizes = [estimate_attention_memory("sliding", batch, heads, length, head_dim, dtype,
                                       window=window, causal=True) if kind == "local" else
             estimate_attention_memory("dense_masked", batch, heads, length, head_dim, dtype)
             for kind in layer_kinds]
    return max(sizes)


def train_hybrid(task: str = "reverse", layer_kinds=("local", "global"), window: int = 4, **kwargs):
    """course.tiny_transformer.train with a HybridTransformer: a TrainResult."""
    return train(task, model_class=HybridTransformer, layer_kinds=tuple(layer_kinds), window=window,
                 **kwargs)
