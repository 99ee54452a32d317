"""One interface for every attention mechanism of the course.

    layer = make_attention("sliding_window", d_model=64, num_heads=4, window=16, causal=True)
    y = layer(x)                                                 # x, y: (B, L, d_model)

Every layer is an nn.Module with the same `forward(x, mask=None)`, so a model, a benchmark or a
hybrid stack can swap mechanisms by name. The multi-head kinds share one frame (q, k, v
projections, split into heads, the mechanism, merge, output projection); only the middle step
differs. "mamba" is a selective-scan block: it has no heads and no keys, but the same interface.

`mask` (bool, True = may attend, broadcastable to (B, H, L, L)) is taken only by the kinds that
compute the whole (L, L) score matrix anyway ("dense", "strided"). The other kinds never build
that matrix: their pattern is fixed by their keyword arguments (`window`, `causal`, ...), and
they refuse a mask with an error rather than ignore it.
"""

import torch
from torch import nn

from course.reference import check_same_dtype
from course.reference.linear_attention import (
    causal_linear_attention_chunked,
    linear_attention,
    performer_attention,
)
from course.reference.mamba_scan import MambaBlock
from course.reference.masks import attention, causal_mask
from course.reference.multihead import merge_heads, split_heads
from course.reference.online_softmax import flash_attention_torch
from course.reference.sparse import chunked_attention, sliding_window_attention, strided_mask

REQUIRED = object()  # marks a keyword argument that has no default

# kind -> its keyword arguments and their defaults
ATTENTION_KINDS = {
    "dense": {"causal": False},
    "strided": {"stride": REQUIRED, "local_window": REQUIRED},
    "sliding_window": {"window": REQUIRED, "causal": False},
    "chunked": {"chunk_size": REQUIRED, "overlap": 0},
    "flash": {"causal": False, "block_q": 64, "block_k": 64},
    "linear": {"causal": False, "chunk_size": 64},
    "performer": {"num_features": 256, "seed": 0},
    "mamba": {"d_state": 16, "d_conv": 4, "expand": 2},
}
TAKES_MASK = ("dense", "strided")


def describe_kinds() -> str:
    """One line per kind with the keyword arguments it takes, for error messages and help."""

    def signature(options):
        return (
            ", ".join(
                name if default is REQUIRED else f"{name}={default!r}"
                for name, default in options.items()
            )
            or "no keyword arguments"
        )

    return "\n".join(f"  {kind}: {signature(options)}" for kind, options in ATTENTION_KINDS.items())


def _options(kind: str, kwargs: dict) -> dict:
    """kwargs checked against the kind's keyword arguments, with the defaults filled in."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(
            f"unknown attention kind {kind!r}; the kinds and the keyword arguments "
            f"each takes are:\n{describe_kinds()}"
        )
    known = ATTENTION_KINDS[kind]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"kind {kind!r} takes no argument {', '.join(unknown)}; it takes: "
            f"{', '.join(known) or 'none'}"
        )
    options = {**known, **kwargs}
    missing = [name for name, value in options.items() if value is REQUIRED]
    if missing:
        raise ValueError(f"kind {kind!r} needs {', '.join(missing)}")
    return options


class MultiHeadMechanism(nn.Module):
    """Projections and heads around one attention mechanism: x (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, kind: str, d_model: int, num_heads: int, options: dict):
        super().__init__()
        self.kind, self.options, self.num_heads = kind, options, num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        _check_input(x, self.out_proj.in_features, self.out_proj.weight)
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, L, dh)
        k = split_heads(self.k_proj(x), self.num_heads)  # (B, H, L, dh)
        v = split_heads(self.v_proj(x), self.num_heads)  # (B, H, L, dh)
        out = self.attend(q, k, v, mask)  # (B, H, L, dh)
        return self.out_proj(merge_heads(out))  # (B, L, d_model)

    def attend(self, q, k, v, mask=None):
        """The mechanism alone, on heads: q, k, v (B, H, L, dh) -> (B, H, L, dh). What differs
        between kinds (a benchmark times this step; the projections cost the same for all)."""
        o, L = self.options, q.shape[-2]
        if self.kind in TAKES_MASK:
            if self.kind == "strided":
                pattern = strided_mask(L, min(o["stride"], L), o["local_window"], device=q.device)
            elif o["causal"]:
                pattern = causal_mask(L, device=q.device)
            else:
                pattern = None  # every key
            if pattern is not None:
                mask = pattern if mask is None else mask & pattern
            return attention(q, k, v, mask)[0]
        if mask is not None:
            raise ValueError(
                f"kind {self.kind!r} takes no mask: it never builds the (L, L) scores, "
                f"its pattern comes from its arguments {self.options}. Kinds that "
                f"take a mask: {', '.join(TAKES_MASK)}"
            )
        if self.kind == "sliding_window":
            return sliding_window_attention(q, k, v, o["window"], causal=o["causal"])
        if self.kind == "chunked":
            return chunked_attention(q, k, v, o["chunk_size"], o["overlap"])
        if self.kind == "flash":
            return flash_attention_torch(
                q, k, v, causal=o["causal"], block_q=o["block_q"], block_k=o["block_k"]
            )
        if self.kind == "linear" and o["causal"]:
            return causal_linear_attention_chunked(q, k, v, chunk_size=o["chunk_size"])
        if self.kind == "linear":
            return linear_attention(q, k, v)
        # performer: the same random features at every call, so the layer is a function of x
        generator = torch.Generator(device=q.device).manual_seed(o["seed"])
        return performer_attention(q, k, v, num_features=o["num_features"], generator=generator)


class MambaMechanism(nn.Module):
    """A Mamba block behind the same interface: causal by construction, no heads, no mask."""

    def __init__(self, d_model: int, options: dict):
        super().__init__()
        self.kind, self.options = "mamba", options
        self.block = MambaBlock(d_model, **options)

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        _check_input(x, self.block.d_model, next(self.block.parameters()))
        if mask is not None:
            raise ValueError(
                "kind 'mamba' takes no mask: a scan is causal by construction and "
                f"has no keys to mask. Kinds that take a mask: {', '.join(TAKES_MASK)}"
            )
        return self.block(x)


def _check_input(x: torch.Tensor, d_model: int, weight: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (batch, L, {d_model}), got {shape}")
    check_same_dtype("attention layer", "call .to(dtype) on the layer or on x", x=x, weights=weight)


def make_attention(kind: str, d_model: int, num_heads: int, **kwargs) -> nn.Module:
    """An attention layer of the given kind with `forward(x, mask=None)`, x (B, L, d_model).

    kind: one of ATTENTION_KINDS (`describe_kinds()` lists each one's keyword arguments).
    num_heads must divide d_model; "mamba" has no heads and ignores it.
    Raises ValueError naming the valid kinds, or the arguments the kind takes.
    """
    options = _options(kind, kwargs)
    if not (
        isinstance(d_model, int) and isinstance(num_heads, int) and d_model >= 1 and num_heads >= 1
    ):
        raise ValueError(
            f"d_model and num_heads must be positive ints, got {d_model!r}, {num_heads!r}"
        )
    if kind == "mamba":
        return MambaMechanism(d_model, options)
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    return MultiHeadMechanism(kind, d_model, num_heads, options)
