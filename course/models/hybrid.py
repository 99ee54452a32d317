"""A hybrid decoder: every layer's attention chosen by name through course.reference.mechanisms.make_attention.

Most of what a token needs is nearby; a few layers of full attention carry information across
the whole sequence. Models such as Gemma 2 / 3, Mistral-style long-context variants and
Longformer interleave the two: local layers cost O(L * window) and only the global ones O(L^2).
Others mix attention with a state-space scan (Jamba, Samba).

    HybridTransformer(layer_kinds=("local", "global"), window=4)      # TinyTransformer's arguments otherwise
    HybridTransformer(layer_kinds=("local", ("flash", {"block_q": 16})))
    train("reverse", model_class=HybridTransformer, layer_kinds=..., window=...)   # tiny_transformer.train

An entry of layer_kinds is "local" (make_attention's "sliding_window" with `window`: query i
sees keys i-window+1 .. i), "global" ("dense": every earlier key), any causal kind of
make_attention by name, or a (kind, keyword arguments) pair. Every layer is made causal: kinds
with a `causal` argument get causal=True, "mamba" is causal by construction, and the kinds that
are not ("strided", "chunked", "performer") are refused, since a decoder that sees the future
learns nothing. The layers return no attention weights, so neither does the model.
"""

import torch

from course.models.tiny_transformer import Block, TinyTransformer, train
from course.reference.capstone import estimate_attention_memory
from course.reference.mechanisms import ATTENTION_KINDS, make_attention

SHORTHANDS = {"local": "sliding_window", "global": "dense"}
CAUSAL_KINDS = tuple(kind for kind, options in ATTENTION_KINDS.items() if "causal" in options) + (
    "mamba",
)
# The kinds whose costs attended_pairs and attention_memory know: those that score query-key pairs
# (a linear layer or a scan scores none; their memory has other formulas, see course.reference.capstone).
SCORING_KINDS = ("dense", "sliding_window", "flash")


def layer_spec(entry, window: int) -> tuple:
    """(make_attention kind, its keyword arguments) of one entry of layer_kinds, made causal."""
    if isinstance(entry, str):
        kind, kwargs = entry, {}
    elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], dict):
        kind, kwargs = entry
    else:
        raise ValueError(f"a layer is a kind name or a (kind, kwargs) pair, got {entry!r}")
    if kind == "local":
        kwargs = {"window": window, **kwargs}
    kind = SHORTHANDS.get(kind, kind)
    if kind not in CAUSAL_KINDS:
        raise ValueError(
            f"layer_kinds entries must be 'local', 'global' or a causal kind of "
            f"make_attention ({', '.join(CAUSAL_KINDS)}), got {kind!r}"
        )
    if kwargs.get("causal") is False:
        raise ValueError(f"a decoder's layers must be causal; {kind!r} was given causal=False")
    return kind, kwargs if kind == "mamba" else {**kwargs, "causal": True}


class HybridBlock(Block):
    """A pre-norm Block whose attention is a make_attention layer: the layer's kind sets which
    keys it sees, so it takes no mask or positions and returns no weights."""

    def forward(self, x, mask=None, positions=None, need_weights=False):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x)), None


class HybridTransformer(TinyTransformer):
    """TinyTransformer whose layer i is make_attention(*layer_spec(layer_kinds[i], window))."""

    def __init__(self, *args, layer_kinds=("local", "global"), window: int = 4, **kwargs):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if isinstance(layer_kinds, str) or not layer_kinds:
            raise ValueError(
                f"layer_kinds must be a non-empty sequence of layers, got {layer_kinds!r}"
            )
        if kwargs.get("positional", "learned") != "learned" or kwargs.get("num_kv_heads"):
            raise ValueError(
                "a hybrid takes learned positions and one k, v per head: its "
                "make_attention layers take no RoPE positions and no kv groups"
            )
        self.specs = [layer_spec(entry, window) for entry in layer_kinds]
        kwargs.pop("num_layers", None)
        super().__init__(*args, num_layers=0, **kwargs)
        d_model = self.token_embedding.embedding_dim
        self.blocks.extend(
            HybridBlock(
                d_model,
                self.num_heads,
                attn=make_attention(kind, d_model, self.num_heads, **options),
            )
            for kind, options in self.specs
        )
        self.num_layers, self.layer_kinds, self.window = len(self.specs), tuple(layer_kinds), window

    def forward(self, ids: torch.Tensor, return_weights: bool = False):
        if return_weights:
            raise ValueError(
                "a hybrid returns no attention weights: its make_attention layers "
                "never hand them out (several never even form them)"
            )
        return super().forward(ids)

    def layer_masks(self, length: int, device=None) -> list:
        return [None] * self.num_layers


def _scoring_specs(layer_kinds, window: int) -> list:
    specs = [layer_spec(entry, window) for entry in layer_kinds]
    for kind, _ in specs:
        if kind not in SCORING_KINDS:
            raise ValueError(f"costs are counted here for {', '.join(SCORING_KINDS)}, not {kind!r}")
    return specs


def attended_pairs(layer_kinds, length: int, window: int) -> int:
    """Query-key pairs all layers attend to (their patterns allow) on one causal sequence of
    `length` tokens."""
    total = 0
    for kind, options in _scoring_specs(layer_kinds, window):
        w = min(options["window"], length) if kind == "sliding_window" else length
        total += w * (w + 1) // 2 + (length - w) * w  # sum over i of min(i + 1, w)
    return total


def attention_memory(
    layer_kinds,
    batch: int,
    heads: int,
    length: int,
    head_dim: int,
    window: int,
    dtype=torch.float32,
) -> int:
    """Peak bytes of the largest layer's attention at `length` (layers run one after another),
    from course.reference.capstone.estimate_attention_memory: "dense" layers as dense causal attention,
    "sliding_window" ones as the O(L * window) blocked version, "flash" as the tiled one."""
    sizes = []
    for kind, options in _scoring_specs(layer_kinds, window):
        if kind == "sliding_window":
            size = estimate_attention_memory(
                "sliding",
                batch,
                heads,
                length,
                head_dim,
                dtype,
                window=options["window"],
                causal=True,
            )
        elif kind == "flash":
            size = estimate_attention_memory(
                "flash",
                batch,
                heads,
                length,
                head_dim,
                dtype,
                block_q=options.get("block_q", 64),
                block_k=options.get("block_k", 64),
            )
        else:
            size = estimate_attention_memory("dense_masked", batch, heads, length, head_dim, dtype)
        sizes.append(size)
    return max(sizes)


def train_hybrid(task: str = "reverse", layer_kinds=("local", "global"), window: int = 4, **kwargs):
    """course.models.tiny_transformer.train with a HybridTransformer: a TrainResult."""
    return train(
        task, model_class=HybridTransformer, layer_kinds=tuple(layer_kinds), window=window, **kwargs
    )
