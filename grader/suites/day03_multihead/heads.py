"""Checks for split_heads, merge_heads and repeat_kv: float64 reshapes and transposes written
out here, on shapes where a missing transpose cannot hide.
"""

import torch

import course.reference.multihead as library
from grader.harness.checking import Mistake, expect_close, hint, naming_crashes
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day03_multihead.crashes import REFUSES_VALID, expect_clear_error

HINTS = {
    # split_heads / merge_heads
    "split_without_transpose": (
        "x.reshape(B, H, L, dh) without a transpose: each 'head' then holds pieces of several "
        "tokens",
        "reshape to (B, L, H, dh) first, so head h gets features [h*dh, (h+1)*dh) of every token, "
        "then .transpose(1, 2) to (B, H, L, dh).",
    ),
    "heads_interleaved": (
        "head h taking the strided features h, h + H, h + 2H, ... instead of a contiguous slice",
        "view as (B, L, H, dh), not (B, L, dh, H): head h owns features [h*dh, (h+1)*dh).",
    ),
    "merge_without_transpose": (
        "x.reshape(B, L, H*dh) without first moving the heads axis back behind L",
        "transpose (B, H, L, dh) to (B, L, H, dh) first, then reshape to (B, L, H*dh).",
    ),
    "transpose_before_reshape": (
        "x transposed to (B, d_model, L) before the reshape: the reshape then cuts across tokens",
        "reshape first, transpose after: x.view(B, L, H, dh).transpose(1, 2).",
    ),
    "split_chunk_size": (
        "x.split(num_heads, dim=-1), pieces of num_heads features each, where x.chunk(num_heads, "
        "dim=-1), num_heads pieces, was meant: that gives head_dim 'heads' of num_heads features",
        "x.chunk(num_heads, dim=-1) cuts num_heads pieces (x.split takes the size of each piece: "
        "x.split(head_dim, dim=-1)); then torch.stack(..., dim=1).",
    ),
    "split_wrong_dims_swapped": (
        "a transpose of the wrong dims of (B, L, H, dh): .transpose(1, 3) or .transpose(2, 3) "
        "instead of .transpose(1, 2)",
        "swap the length and heads axes of (B, L, H, dh): .transpose(1, 2).",
    ),
    "heads_stacked_first": (
        "the heads stacked on dim 0, (H, B, L, dh), in front of the batch",
        "the heads go behind the batch: torch.stack(x.chunk(H, dim=-1), dim=1), or "
        "x.view(B, L, H, dh).transpose(1, 2).",
    ),
    "T_on_batched": (
        "x.T (or .mT/.t()) on a 4-D tensor: .T reverses every dim, (B, L, H, dh) -> (dh, H, L, B)",
        "swap only the dims you mean to, by number: .transpose(1, 2).",
    ),
    "float_head_size": (
        "the head size computed with / (a float): view and reshape take integer sizes",
        "use integer division: head_dim = d_model // num_heads.",
    ),
    "no_clear_error": (
        "bad input accepted, or refused only by an obscure error from deep inside torch",
        "check the arguments first and raise ValueError with a message that names them and "
        "their values.",
    ),
    "view_after_transpose": (
        ".view on the transposed (non-contiguous) tensor: view cannot merge dims whose strides "
        "do not line up",
        "use .reshape(B, L, H * dh) (it copies when it must), or .contiguous().view(...).",
    ),
    "merge_not_flattened": (
        "the heads moved back behind L but not merged: (B, L, H, dh) instead of (B, L, H*dh)",
        "after the transpose, merge the last two dims: .reshape(B, L, H * dh) (or .flatten(2)).",
    ),
    "merge_heads_last": (
        "the heads axis moved to the end, (B, L, dh, H): each token's features then interleave "
        "the heads",
        "move the heads axis just before dh: x.transpose(1, 2) gives (B, L, H, dh), then reshape.",
    ),
    "merge_wrong_dims_swapped": (
        "a transpose of the wrong dims (L and dh, or H and dh, not H and L) before the reshape",
        "x.transpose(1, 2): (B, H, L, dh) -> (B, L, H, dh), then reshape to (B, L, H*dh).",
    ),
    "merge_heads_along_tokens": (
        "the heads concatenated along the token axis (B, H*L, dh) instead of the features",
        "concatenate along the last dim (torch.cat(x.unbind(1), dim=-1)), or transpose(1, 2) "
        "then reshape to (B, L, H*dh).",
    ),
    "shape_unpacked_wrong": (
        "x.shape unpacked in the wrong order: merge_heads' input is (B, H, L, dh)",
        "batch, heads, length, head_dim = x.shape, then transpose(1, 2).reshape(batch, length, "
        "heads * head_dim).",
    ),
    # repeat_kv
    "repeat_tiled": (
        "the KV heads tiled (0, 1, 0, 1, ...) instead of repeated in place (0, 0, 1, 1, ...)",
        "query head h uses KV head h // n_rep: repeat each head n_rep times in a row, "
        "e.g. x.repeat_interleave(n_rep, dim=1), not x.repeat(1, n_rep, 1, 1).",
    ),
    "repeat_count_off": (
        "each KV head copied n_rep + 1 (or n_rep - 1) times: n_rep counted as the extra copies",
        "n_rep is the number of copies in all, so the result has Hkv * n_rep heads: "
        "x.repeat_interleave(n_rep, dim=1) (x itself when n_rep = 1).",
    ),
    "repeat_wrong_dim": (
        "the repeat along the wrong axis (the batch, dim 0, or the length, dim 2, instead of the "
        "heads, dim 1)",
        "repeat the heads axis: x.repeat_interleave(n_rep, dim=1).",
    ),
    "repeat_flattened": (
        "repeat_interleave without dim=: it flattens x first and returns a 1-D tensor",
        "pass the axis: x.repeat_interleave(n_rep, dim=1).",
    ),
    "repeat_expanded_heads": (
        "x.expand(B, Hkv * n_rep, L, D) on the heads axis: expand only stretches axes of size 1, "
        "so it works for one KV head and fails for more",
        "give the copies an axis of their own first: x[:, :, None].expand(B, Hkv, n_rep, L, D)"
        ".reshape(B, Hkv * n_rep, L, D), or x.repeat_interleave(n_rep, dim=1).",
    ),
    "repeat_not_reshaped": (
        "the copies expanded to (B, Hkv, n_rep, L, D) but not merged into the heads axis",
        "merge the two head axes after the expand: .reshape(B, Hkv * n_rep, L, D).",
    ),
    "repeat_heads_misordered": (
        "the right number of copies of each KV head, but not all next to each other (pieces "
        "joined with torch.cat along the heads axis)",
        "query head h reads KV head h // n_rep, so the copies of KV head 0 come first, then those "
        "of KV head 1, ...: x.repeat_interleave(n_rep, dim=1) in one step.",
    ),
    "repeat_features_interleaved": (
        "the copies stacked on the last dim and then reshaped: each 'head' mixes features of "
        "several copies",
        "put the new axis right after the heads: x[:, :, None].expand(B, Hkv, n_rep, L, D)"
        ".reshape(B, Hkv * n_rep, L, D), or x.repeat_interleave(n_rep, dim=1).",
    ),
}

# The crashes that name a mistake of split_heads and merge_heads.
SPLIT_CRASHES = (("float_head_size", "TypeError", "float"), REFUSES_VALID)
MERGE_CRASHES = (
    ("view_after_transpose", "RuntimeError", "view size is not compatible"),
    ("float_head_size", "TypeError", "float"),
)


HEADS_FORBIDDEN = {
    library.split_heads: "write it with view/reshape and transpose.",
    library.merge_heads: "write it with transpose and reshape.",
    library.repeat_kv: "write it with repeat_interleave (or expand and reshape).",
}

# ----------------------------------------------------------------------------- split / merge / repeat


def heads_shape(rng):
    """(B, L, H, dh) with all sizes different from each other where possible."""
    return draw(rng, 1, 3), draw(rng, 3, 9), draw(rng, 2, 5), draw(rng, 2, 6)


def split64(x, heads):
    batch, length, d_model = x.shape
    return x.double().view(batch, length, heads, d_model // heads).transpose(1, 2)


def split_suspects(x, heads):
    batch, length, d_model = x.shape
    x = x.double()
    by_head = x.view(batch, length, heads, d_model // heads)  # (B, L, H, dh)
    return [
        ("split_without_transpose", x.reshape(batch, heads, length, d_model // heads)),
        ("heads_interleaved", x.view(batch, length, d_model // heads, heads).permute(0, 3, 1, 2)),
        (
            "transpose_before_reshape",
            x.transpose(1, 2).reshape(batch, heads, length, d_model // heads),
        ),
        ("split_wrong_dims_swapped", by_head.transpose(1, 3)),
        ("split_wrong_dims_swapped", by_head.transpose(2, 3)),
        ("heads_stacked_first", by_head.permute(2, 0, 1, 3)),
        # torch.stack(x.split(heads, dim=-1), dim=1): pieces of H features, dh of them
        ("split_chunk_size", x.view(batch, length, d_model // heads, heads).transpose(1, 2)),
        ("T_on_batched", by_head.permute(3, 2, 1, 0)),
    ]


def call_split(split_heads, x, heads):
    """The student's split, with the crashes that give a mistake away named."""
    with naming_crashes(*SPLIT_CRASHES):
        return split_heads(x, heads)


def split_matches_reference(split_heads, rng):
    """(B, L, d_model) -> (B, H, L, dh), head h owning features [h*dh, (h+1)*dh)"""
    batch, length, heads, head_dim = heads_shape(rng)
    x = randn((batch, length, heads * head_dim), rng)
    expect_close(
        call_split(split_heads, x, heads),
        split64(x, heads),
        x.dtype,
        what="split_heads(x, H)",
        suspects=split_suspects(x, heads),
    )


def split_square(split_heads, rng):
    """L = H = dh: a split without a transpose cannot hide behind a wrong shape"""
    size = draw(rng, 3, 5)
    x = randn((draw(rng, 1, 2), size, size * size), rng, dtype=torch.float64)
    expect_close(
        call_split(split_heads, x, size),
        split64(x, size),
        torch.float64,
        what="split_heads(x, H)",
        suspects=split_suspects(x, size),
    )


def split_one_head(split_heads, rng):
    """one head: (B, L, d) -> (B, 1, L, d); H = d_model: dh = 1"""
    batch, length, d_model = draw(rng, 1, 3), draw(rng, 2, 6), draw(rng, 2, 8)
    x = randn((batch, length, d_model), rng)
    for heads in (1, d_model):
        expect_close(
            call_split(split_heads, x, heads),
            split64(x, heads),
            x.dtype,
            what=f"split_heads(x, {heads})",
            suspects=split_suspects(x, heads),
        )


def split_refuses_indivisible(split_heads, rng):
    """d_model not divisible by num_heads raises ValueError"""
    heads = draw(rng, 3, 5)
    x = randn((2, draw(rng, 2, 5), heads * draw(rng, 2, 4) + 1), rng)
    expect_clear_error(
        lambda: split_heads(x, heads),
        f"split_heads on d_model={x.shape[-1]} with num_heads={heads}",
        'raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")',
    )


def merge64(x):
    batch, heads, length, head_dim = x.shape
    return x.double().transpose(1, 2).reshape(batch, length, heads * head_dim)


def merge_suspects(x):
    """What each named mistake of merge_heads gives on x (B, H, L, dh), in float64."""
    batch, heads, length, head_dim = x.shape
    x = x.double()
    return [
        ("merge_without_transpose", x.reshape(batch, length, -1)),
        ("merge_heads_last", x.permute(0, 2, 3, 1).reshape(batch, length, -1)),
        ("merge_wrong_dims_swapped", x.transpose(2, 3).reshape(batch, length, -1)),
        ("merge_wrong_dims_swapped", x.transpose(1, 3).reshape(batch, length, -1)),
        ("merge_heads_along_tokens", torch.cat(x.unbind(1), dim=1)),
        ("shape_unpacked_wrong", x.transpose(1, 2).reshape(batch, heads, length * head_dim)),
        ("merge_not_flattened", x.transpose(1, 2)),
    ]


def expect_merged(merge_heads, x, what="merge_heads(x)"):
    """The student's merge of x against the float64 one, naming the known mistakes."""
    with naming_crashes(*MERGE_CRASHES):
        out = merge_heads(x)
    expect_close(out, merge64(x), x.dtype, what=what, suspects=merge_suspects(x))


def merge_matches_reference(merge_heads, rng):
    """(B, H, L, dh) -> (B, L, H*dh), the inverse of split_heads"""
    batch, length, heads, head_dim = heads_shape(rng)
    expect_merged(merge_heads, randn((batch, heads, length, head_dim), rng))


def merge_square(merge_heads, rng):
    """L = H = dh, float64: the heads axis must move back behind L"""
    size = draw(rng, 3, 5)
    expect_merged(merge_heads, randn((draw(rng, 1, 2), size, size, size), rng, torch.float64))


def merge_inverts_split(merge_heads, rng):
    """merge_heads undoes the reference split, for a non-contiguous input"""
    batch, length, heads, head_dim = heads_shape(rng)
    x = randn((batch, length, heads * head_dim), rng)
    split = x.view(batch, length, heads, head_dim).transpose(1, 2)  # a non-contiguous view
    expect_merged(merge_heads, split, "merge_heads(split_heads(x))")


def repeat64(x, n_rep):
    return x.double().repeat_interleave(n_rep, dim=1)


def repeat_suspects(x, n_rep):
    """What each named mistake of repeat_kv gives on x (B, Hkv, L, D), in float64."""
    batch, kv_heads, length, head_dim = x.shape
    x = x.double()
    copies_last = torch.stack([x] * n_rep, dim=-1).reshape(batch, -1, length, head_dim)
    suspects = [
        ("repeat_tiled", x.repeat(1, n_rep, 1, 1)),
        ("repeat_wrong_dim", x.repeat_interleave(n_rep, dim=0)),
        ("repeat_wrong_dim", x.repeat_interleave(n_rep, dim=2)),
        ("repeat_flattened", x.repeat_interleave(n_rep)),
        ("repeat_features_interleaved", copies_last),
        ("repeat_not_reshaped", x[:, :, None].expand(batch, kv_heads, n_rep, length, head_dim)),
    ]
    # one copy too many or too few, in place or tiled: a head count that gives it away
    for copies in (n_rep + 1, n_rep - 1) if n_rep > 1 else (2,):
        suspects += [
            ("repeat_count_off", x.repeat_interleave(copies, dim=1)),
            ("repeat_count_off", x.repeat(1, copies, 1, 1)),
        ]
    return suspects


# expand asked to stretch the heads axis, which only an axis of size 1 can be
EXPANDED_HEADS = ("repeat_expanded_heads", "RuntimeError", "expanded size", "dimension 1")


def copied_heads(out, x) -> list:
    """For each head of `out`, the index of the head of x (B, Hkv, L, D) that it is an exact copy
    of; None when `out` is not (B, heads, L, D) or one of its heads copies none."""
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[::2] != x.shape[::2]:
        return None
    kv_heads = x.double().unbind(1)
    order = []
    for head in out.detach().double().cpu().unbind(1):
        copies = [i for i, kv in enumerate(kv_heads) if torch.equal(head, kv)]
        if not copies:
            return None
        order.append(copies[0])
    return order


def expect_repeated(out, x, n_rep):
    """The student's repeat of x against the float64 one, naming the known mistakes; a result
    made of the right copies of the KV heads in another order shows that order."""
    try:
        expect_close(
            out,
            repeat64(x, n_rep),
            x.dtype,
            what="repeat_kv(x, n_rep)",
            suspects=repeat_suspects(x, n_rep),
        )
    except Mistake as mistake:
        order = copied_heads(out, x) if mistake.key == "wrong_values" else None
        expected = [head // n_rep for head in range(x.shape[1] * n_rep)]
        if order is None or sorted(order) != expected:
            raise
        description, fix = hint("repeat_heads_misordered")
        raise Mistake(
            f"repeat_kv(x, n_rep) is off: each of its heads is a copy of a KV head, in the "
            f"order {order} instead of {expected}: it looks like {description}.",
            fix,
            "repeat_heads_misordered",
        ) from None


def repeat_matches_reference(repeat_kv, rng):
    """(B, Hkv, L, D) -> (B, Hkv*n_rep, L, D), each KV head n_rep times in a row"""
    batch, length, kv_heads, head_dim = heads_shape(rng)
    n_rep = draw(rng, 2, 4)
    x = randn((batch, kv_heads, length, head_dim), rng)
    with naming_crashes(EXPANDED_HEADS):
        out = repeat_kv(x, n_rep)
    expect_repeated(out, x, n_rep)


def repeat_one_is_identity(repeat_kv, rng):
    """n_rep = 1 gives x back; one KV head (MQA) is shared by every query head; float64"""
    batch, length, kv_heads, head_dim = heads_shape(rng)
    x = randn((batch, kv_heads, length, head_dim), rng, dtype=torch.float64)
    expect_close(
        repeat_kv(x, 1), x, torch.float64, what="repeat_kv(x, 1)", suspects=repeat_suspects(x, 1)
    )
    one = x[:, :1]
    n_rep = draw(rng, 2, 6)
    expect_close(
        repeat_kv(one, n_rep),
        repeat64(one, n_rep),
        torch.float64,
        what="repeat_kv(x, n_rep) with one KV head",
        suspects=repeat_suspects(one, n_rep),
    )


def repeat_query_head_uses_h_div_n_rep(repeat_kv, rng):
    """query head h reads KV head h // n_rep (each head filled with its own index)"""
    kv_heads, n_rep = draw(rng, 2, 4), draw(rng, 2, 3)
    x = torch.arange(kv_heads, dtype=torch.float32).view(1, kv_heads, 1, 1).expand(2, -1, 3, 2)
    with naming_crashes(EXPANDED_HEADS):
        out = repeat_kv(x, n_rep)
    expect_repeated(out, x, n_rep)


EXERCISES = {
    "split_heads": Exercise(
        checks=[split_matches_reference, split_square, split_one_head, split_refuses_indivisible],
        forbidden=HEADS_FORBIDDEN,
    ),
    "merge_heads": Exercise(
        checks=[merge_matches_reference, merge_square, merge_inverts_split],
        forbidden=HEADS_FORBIDDEN,
    ),
    "repeat_kv": Exercise(
        checks=[
            repeat_matches_reference,
            repeat_one_is_identity,
            repeat_query_head_uses_h_div_n_rep,
        ],
        forbidden=HEADS_FORBIDDEN,
    ),
}
