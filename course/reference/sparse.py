"""Library versions of day 5: sparse attention patterns, built on torch.

Every mask builder returns an (L, L) bool tensor with True = query i may attend key j, built
with broadcasting and a few whole-tensor operations (no Python loop over positions), so
L = 16384 takes a fraction of a second. `sliding_window_attention` and `chunked_attention`
never build an (L, L) matrix: queries are cut into blocks, and each block only meets the keys
it may see, so memory is O(L * window). float16 and bfloat16 stay in their dtype, as in
F.scaled_dot_product_attention (torch's matmuls and softmax accumulate in float32 inside).

Reach: with one layer of a mask, query i hears from key j when mask[i, j]. Stacking layers
composes the pattern (each position also keeps its own state, the residual stream), so after n
layers i hears from j when (mask | I)^n [i, j] in boolean arithmetic.
"""

import math
import operator

import torch

from course.reference import check_same_dtype

# ----------------------------------------------------------------------------- checking arguments


def _positive_int(value, name: str, low: int = 1) -> int:
    """`value` as an int >= low, or a clear TypeError / ValueError naming the parameter."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value}")
    return value


def _band(L: int, below: int, above: int, device=None) -> torch.Tensor:
    """(L, L) bool: True where i - below <= j <= i + above."""
    # In place: one (L, L) allocation, where tril().triu() would make three.
    return torch.ones(L, L, dtype=torch.bool, device=device).tril_(above).triu_(-below)


# ----------------------------------------------------------------------------- mask builders


def sliding_window_mask(L: int, window: int, causal: bool = False, device=None) -> torch.Tensor:
    """(L, L) bool. causal: query i sees keys i-window+1 .. i (window keys, Mistral's
    convention). Symmetric: keys with |i - j| <= window // 2 (Longformer's w/2 on each side)."""
    L, window = _positive_int(L, "L"), _positive_int(window, "window")
    if causal:
        return _band(L, window - 1, 0, device)
    return _band(L, window // 2, window // 2, device)


def strided_mask(L: int, stride: int, local_window: int, device=None) -> torch.Tensor:
    """(L, L) bool: the summary columns j % stride == 0, plus the local band
    |i - j| <= local_window // 2 (the Sparse Transformer's strided pattern, non-causal)."""
    L = _positive_int(L, "L")
    stride, local_window = (
        _positive_int(stride, "stride"),
        _positive_int(local_window, "local_window"),
    )
    if stride > L:
        raise ValueError(f"stride must be <= L, got stride={stride} > L={L}")
    mask = _band(L, local_window // 2, local_window // 2, device)  # (L, L)
    mask[:, ::stride] = True  # the summary columns
    return mask


def _global_positions(global_idx, L: int, device=None) -> torch.Tensor:
    index = torch.as_tensor(global_idx, device=device)
    if index.numel() == 0:  # [] comes in as float32
        index = index.long()
    if index.dtype == torch.bool or index.is_floating_point() or index.dim() > 1:
        raise TypeError(
            f"global_idx must be a 1-D sequence of ints, got {index.dtype} "
            f"of shape {tuple(index.shape)}"
        )
    index = index.reshape(-1).long()
    bad = (index < 0) | (index >= L)
    if bad.any():
        raise ValueError(f"global_idx must be in [0, L={L}), got {index[bad].tolist()}")
    return index


def global_local_mask(L: int, window: int, global_idx, device=None) -> torch.Tensor:
    """(L, L) bool: sliding_window_mask(L, window) plus every row (they attend everywhere) and
    every column (everyone attends them) of the global tokens (Longformer)."""
    mask = sliding_window_mask(L, window, device=device)
    index = _global_positions(global_idx, L, device)
    mask[index, :] = True
    mask[:, index] = True
    return mask


def random_mask(
    L: int, num_random: int, generator: torch.Generator = None, device=None
) -> torch.Tensor:
    """(L, L) bool with exactly num_random distinct keys per query, drawn uniformly without
    replacement (BigBird's random part); the same generator state gives the same mask.

    Sequential sampling with rejection, all rows at once: each round, every row that still needs
    a key draws one uniformly from 0..L-1 and keeps it unless it already has it. Accepting only
    new keys is exactly sampling without replacement, and the rounds are about num_random.
    """
    L = _positive_int(L, "L")
    num_random = _positive_int(num_random, "num_random", low=0)
    if num_random > L:
        raise ValueError(
            f"num_random must be <= L (distinct keys per query), got {num_random} > L={L}"
        )
    mask = torch.zeros(L, L, dtype=torch.bool)
    have = torch.zeros(L, dtype=torch.long)
    rows = torch.arange(L)
    while True:
        needy = rows[have < num_random]
        if needy.numel() == 0:
            break
        candidate = torch.randint(0, L, (needy.numel(),), generator=generator)
        new = ~mask[needy, candidate]
        mask[needy[new], candidate[new]] = True
        have[needy[new]] += 1
    return mask.to(device) if device is not None else mask


def block_sparse_mask(L: int, block_size: int, layout, device=None) -> torch.Tensor:
    """(L, L) bool: layout[bi, bj] (nb x nb bool, nb = ceil(L / block_size)) switched on for
    every token pair in query block bi and key block bj, cropped to L."""
    L, block_size = _positive_int(L, "L"), _positive_int(block_size, "block_size")
    layout = torch.as_tensor(layout, device=device)
    nb = math.ceil(L / block_size)
    if layout.dtype != torch.bool or tuple(layout.shape) != (nb, nb):
        raise ValueError(
            f"layout must be a ({nb}, {nb}) bool tensor for L={L} and "
            f"block_size={block_size} (nb = ceil(L / block_size)), got "
            f"{layout.dtype} of shape {tuple(layout.shape)}"
        )
    # (nb, 1, nb, 1) -> (nb, block_size, nb, block_size): each entry becomes a block, in one copy.
    tokens = layout[:, None, :, None].expand(nb, block_size, nb, block_size)
    return tokens.reshape(nb * block_size, nb * block_size)[:L, :L]


# ----------------------------------------------------------------------------- density and reach


def mask_density(mask: torch.Tensor) -> float:
    """The fraction of entries that are True: the share of the dense work that is done."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean, got {mask.dtype}")
    return mask.count_nonzero().item() / mask.numel()


def _square(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(
            f"mask must be a square (L, L) bool tensor, got {mask.dtype} "
            f"of shape {tuple(mask.shape)}"
        )
    # One layer, with each position keeping its own state: (mask | I). float32 counts paths
    # exactly up to 2^24, and anything above 0 means "reached".
    return (mask | torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)).float()


def reach_after(mask: torch.Tensor, layers: int) -> list:
    """[R_1, ..., R_layers], R_n[i, j] = True when key j's information reaches query i through n
    stacked layers of `mask` (boolean matrix power of mask | I)."""
    step = _square(mask)
    layers = _positive_int(layers, "layers")
    reach, out = step > 0, []
    for _ in range(layers):
        out.append(reach)
        reach = (reach.float() @ step) > 0
    return out


def layers_to_full_reach(mask: torch.Tensor):
    """The least n >= 1 such that every key reaches every query through n layers of `mask`,
    or None if it never does. Reach only grows, so once it stops growing it is final."""
    step = _square(mask)
    reach, layers = step > 0, 1
    while not reach.all():
        grown = (reach.float() @ step) > 0
        if torch.equal(grown, reach):
            return None
        reach, layers = grown, layers + 1
    return layers


# ----------------------------------------------------------------------------- attention


# Scores computed at once, at most: a group of query blocks this large stays in the CPU's cache,
# so the time grows linearly with L (one huge (nb, block, span) tensor would not).
GROUP_SCORES = 1 << 18


def _blocked_attention(q, k, v, block: int, left: int, right: int, band: bool) -> torch.Tensor:
    """Queries in blocks of `block`; block c meets keys [c*block - left, (c+1)*block + right).
    band=True also limits query p to keys p-left .. p+right. Never an (L, L) tensor."""
    if q.shape != k.shape[:-1] + (q.shape[-1],) or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"expected q and k of shape (..., L, d) and v (..., L, dv), got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    check_same_dtype("sparse attention", q=q, k=k, v=v)
    L, d = q.shape[-2], q.shape[-1]
    nb = math.ceil(L / block)
    span = block + left + right  # keys per query block
    tail = nb * block - L  # padding that completes the last block
    pad = lambda x, front, back: torch.nn.functional.pad(x, (0, 0, front, back))  # noqa: E731
    q_blocks = pad(q, 0, tail).unflatten(-2, (nb, block))  # (..., nb, block, d)
    k_blocks = (
        pad(k, left, right + tail).unfold(-2, span, block).transpose(-2, -1)
    )  # (..., nb, span, d)
    v_blocks = (
        pad(v, left, right + tail).unfold(-2, span, block).transpose(-2, -1)
    )  # (..., nb, span, dv)

    # Query a of block c is at c*block + a, key b of its tile at c*block - left + b. The band
    # |key - query| test depends on b - a only, so it is one (block, span) pattern for all tiles;
    # only the tiles at the ends also lose keys outside [0, L) (or hold padded queries).
    offset = torch.arange(span, device=q.device) - torch.arange(block, device=q.device).unsqueeze(
        -1
    )
    in_band = (
        (offset >= 0) & (offset <= left + right)
        if band
        else torch.ones_like(offset, dtype=torch.bool)
    )
    start = torch.arange(nb, device=q.device).view(nb, 1, 1) * block
    key_pos = start - left + torch.arange(span, device=q.device)  # (nb, 1, span)
    key_ok = (key_pos >= 0) & (key_pos < L)
    padded_query = (
        start + torch.arange(block, device=q.device).view(block, 1) >= L
    )  # (nb, block, 1)

    out = q.new_empty(*q.shape[:-2], nb, block, v.shape[-1])
    per_block = block * span * math.prod(q.shape[:-2])
    group = max(1, GROUP_SCORES // per_block)
    for first in range(0, nb, group):  # a few groups of blocks, not positions
        blocks = slice(first, first + group)
        scores = (
            q_blocks[..., blocks, :, :] @ k_blocks[..., blocks, :, :].transpose(-2, -1) * d**-0.5
        )
        allowed = (in_band & key_ok[blocks]) | padded_query[blocks]  # padded queries: no empty rows
        scores = scores.masked_fill(~allowed, float("-inf"))  # (..., g, block, span)
        out[..., blocks, :, :] = torch.softmax(scores, dim=-1) @ v_blocks[..., blocks, :, :]
    return out.flatten(-3, -2)[..., :L, :]


def sliding_window_attention(q, k, v, window: int, causal: bool = False) -> torch.Tensor:
    """Attention under sliding_window_mask(L, window, causal), in O(L * window) memory.

    q, k (..., L, d), v (..., L, dv) -> (..., L, dv). Query blocks of about the window's size
    each meet the keys of their own block and of the half windows around it.
    """
    window = _positive_int(window, "window")
    L = q.shape[-2]
    left, right = (window - 1, 0) if causal else (window // 2, window // 2)
    left, right = min(left, L - 1), min(right, L - 1)
    block = max(16, min(L, left + right + 1))
    return _blocked_attention(q, k, v, block, left, right, band=True)


def chunked_attention(q, k, v, chunk_size: int, overlap: int) -> torch.Tensor:
    """Queries of chunk c (positions [c*chunk_size, (c+1)*chunk_size)) attend the keys
    [c*chunk_size - overlap, (c+1)*chunk_size + overlap), clipped to [0, L)."""
    chunk_size = _positive_int(chunk_size, "chunk_size")
    overlap = _positive_int(overlap, "overlap", low=0)
    L = q.shape[-2]
    return _blocked_attention(
        q, k, v, min(chunk_size, L), min(overlap, L), min(overlap, L), band=False
    )


def format_mask(mask: torch.Tensor, allowed: str = "█", blocked: str = "·") -> str:
    """A small (L, L) mask as text, one row per query: for printing tiny examples."""
    return "\n".join("".join(allowed if x else blocked for x in row) for row in mask.tolist())
