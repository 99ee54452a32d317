"""Checks for sliding_window_attention and chunked_attention: dense float64 attention under the
oracle's mask gives the answer, and a torch dispatch mode sees that no (L, L) tensor is ever
allocated.
"""

import functools
import math
import re

import torch

import course.reference.masks
import course.reference.sparse
from grader.harness.checking import (
    TOLERANCE,
    Mistake,
    expect_close,
    hint,
    named_crash,
    relative_error,
)
from grader.suites import Exercise, day01_sdpa
from grader.suites._common import draw, explain_by_rank, largest_allocation, randn, right_answer
from grader.suites.day05_sparse.shared import (
    FORBIDDEN_BUILDERS,
    SIZES_DIFFER,
    brute_mask,
    dense64,
    window_rule,
    window_suspects,
)

HINTS = {
    "batched_transpose": day01_sdpa.HINTS["batched_transpose"],
    "fixed_rank": day01_sdpa.HINTS["fixed_rank"],
    "scale_after_softmax": (
        "the 1/sqrt(d) applied to the weights after the softmax instead of to the scores",
        "scale the scores before the softmax: softmax(q kᵀ / sqrt(d)) @ v.",
    ),
    "softmax_over_queries": (
        "a softmax over the queries of a tile (dim=-2) instead of over its keys",
        "each query's weights sum to 1 over its keys: torch.softmax(scores, dim=-1).",
    ),
    "tile_unmasked": (
        "tiles with no band mask inside: every query of a block sees every key of the "
        "block's key range, not only the keys of its own window",
        "inside each tile, mask the scores of the keys outside the query's own window: "
        "band = (j >= i - before) & (j <= i + after) with absolute positions i and j, then "
        "scores.masked_fill(~band, float('-inf')) before the softmax.",
    ),
    "tile_filled_with_zero": (
        "the scores outside the window filled with 0 instead of -inf, so those keys still "
        "get the weight exp(0)",
        "fill the masked scores with float('-inf'): exp(-inf) = 0 is the zero weight a key "
        "outside the window must get.",
    ),
    "keys_stop_at_tile_end": (
        "a tile's key range that ends at the tile's last query (k_stop = stop): the keys "
        "after it are never loaded, so with causal=False a tile's later queries see fewer "
        "than window // 2 keys ahead",
        "load the keys after the tile too: k_stop = min(L, stop + after), with after = "
        "window // 2 for a symmetric window (0 when causal).",
    ),
    "output_like_q": (
        "an output allocated like q (torch.empty_like(q), say): its last dim is q's d, but "
        "attention returns v's width dv",
        "allocate the output with v's width: q.new_empty(*q.shape[:-1], v.shape[-1]), "
        "(..., L, dv).",
    ),
    "key_start_not_clipped": (
        "the first chunk's keys sliced from a negative start: k[..., -overlap:e] counts from "
        "the end, so the first chunk sees the wrong keys or none",
        "clip the key range to the sequence: start = max(0, c*chunk_size - overlap), "
        "end = min(L, (c+1)*chunk_size + overlap).",
    ),
    "range_not_clipped": (
        "a tile's key positions (torch.arange) running past the sequence's ends: a slice "
        "clips a bound past L (and counts a negative one from the end), arange does not, so "
        "positions and sliced keys differ in length",
        "clip each tile's key range to the sequence once, k_start = max(0, start - before) and "
        "k_stop = min(L, stop + after), and use those bounds for the slice and the positions.",
    ),
    "builds_full_matrix": (
        "an (L, L)-sized tensor: the dense matrix that this exercise avoids",
        "compute block by block: each block of queries meets only the keys "
        "its window (or chunk) allows, so no tensor has L * L entries; do not "
        "build sliding_window_mask(L, ...) either.",
    ),
    "drops_edges": (
        "the first or last queries of the sequence left out (their windows are cut "
        "by the sequence ends)",
        "pad the keys (or clip the key range) so that the queries near the ends get "
        "their shorter windows too: every one of the L queries has an output row.",
    ),
    "later_blocks_wrong": (
        "block bookkeeping that only holds for the first block: positions counted from the "
        "block's start instead of the sequence's, or the output written at the wrong offset",
        "in the block of queries s .. e - 1 with keys ks .. ke - 1, the band compares the "
        "absolute positions s + arange(e - s) and ks + arange(ke - ks), and the result goes to "
        "out[..., s:e, :]; clip the key range to [0, L); print max |yours - dense| at L = 300.",
    ),
    "drops_last_chunk": (
        "the last, shorter chunk left out when L is not a multiple of chunk_size",
        "there are ceil(L / chunk_size) chunks; the last one ends at L.",
    ),
    "overlap_one_side": (
        "overlap keys added on one side of the chunk only",
        "chunk c sees keys [c*chunk_size - overlap, (c+1)*chunk_size + overlap): "
        "overlap keys before and after the chunk.",
    ),
    "overlap_off_by_one": (
        "a key range one too long or too short at an end",
        "the key range is half-open: start = c*chunk_size - overlap is in, "
        "(c+1)*chunk_size + overlap is out; clip to [0, L).",
    ),
    "ignores_overlap": (
        "chunks that see only their own keys",
        "add `overlap` keys on each side of the chunk.",
    ),
    "sliding_not_chunked": (
        "a window around each query instead of around its chunk",
        "every query of chunk c sees the same keys: "
        "[c*chunk_size - overlap, (c+1)*chunk_size + overlap).",
    ),
}


DENSE = "it builds the full (L, L) matrix; compute block by block instead."
FORBIDDEN_ATTENTION = {
    **FORBIDDEN_BUILDERS,
    "scaled_dot_product_attention": DENSE,
    course.reference.masks.attention: DENSE,
}


def expect_no_full_matrix(call, L: int, name: str) -> None:
    """`call()` must never allocate a tensor of L * L bytes or more (an (L, L) bool mask, or a
    quarter of an (L, L) float32 matrix)."""
    largest, shape = largest_allocation(call)
    if largest >= L * L:
        description, fix = hint("builds_full_matrix")
        raise Mistake(
            f"{name} allocated a tensor of shape {shape} ({largest / 2**20:.0f} "
            f"MiB) for L = {L}: it looks like {description}.",
            fix,
            "builds_full_matrix",
        )


def attention_inputs(rng, L: int, dtype=torch.float32, leading=(2, 3)):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 4)
    return (
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, d), rng, dtype),
        randn((*leading, L, dv), rng, dtype),
    )


def expect_attention(
    out, q, k, v, mask, what: str, suspect_masks=(), edge: tuple = None, extra_suspects=()
) -> None:
    """Compare with dense float64 attention under `mask`; name suspects (by their masks, or as
    (key, answer) in `extra_suspects`), and answers right in the middle but wrong at the ends
    (`edge` = (first, last) rows, and the key to name)."""
    ref = dense64(q, k, v, mask)
    L = q.shape[-2]
    if (
        edge is not None
        and isinstance(out, torch.Tensor)
        and out.dim() == ref.dim()
        and out.shape[-2] < L
        and out.shape[:-2] == ref.shape[:-2]
    ):
        description, fix = hint(edge[2])
        raise Mistake(
            f"{what} has {out.shape[-2]} rows for L = {L}: it looks like {description}.",
            fix,
            edge[2],
        )
    suspects = [
        (key, dense64(q, k, v, wrong))
        for key, wrong in suspect_masks
        if not torch.equal(wrong, mask)
    ]
    unscaled = dense64(q * math.sqrt(q.shape[-1]), k, v, mask)
    suspects += [
        *extra_suspects,
        ("missing_scale", unscaled),
        ("scale_after_softmax", unscaled / math.sqrt(q.shape[-1])),
    ]
    try:
        expect_close(out, ref, q.dtype, what=what, suspects=suspects)
    except Mistake as mistake:
        if edge is None or mistake.key != "wrong_values" or out.shape != ref.shape:
            raise
        first, last, key = edge
        rows = slice(first, L - last)
        if (
            L - last > first
            and relative_error(out[..., rows, :], ref[..., rows, :]) <= TOLERANCE[q.dtype]
        ):
            description, fix = hint(key)
            raise Mistake(
                f"{what} is right for queries {first} .. {L - last - 1} but wrong outside: "
                f"it looks like {description}.",
                fix,
                key,
            ) from None
        raise


def window_masks(L: int, window: int, causal: bool) -> list:
    """The suspect masks of the window; those with a query that sees no key are left out (an
    answer of zeros, or of NaN, would match them whatever the mistake)."""
    return [
        (key, wrong)
        for key, wrong in window_suspects(L, window, causal)
        if not callable(key) and wrong.any(-1).all()
    ]


def swa_edges(window: int, causal: bool) -> tuple:
    return (window - 1, 0, "drops_edges") if causal else (window // 2, window // 2, "drops_edges")


def swa_symmetric(sliding_window_attention, rng):
    """symmetric: equals dense attention under sliding_window_mask(L, window), (B, H, L, D)"""
    L = draw(rng, 20, 48)
    q, k, v = attention_inputs(rng, L)
    for window in (2 * draw(rng, 2, 6), 2 * draw(rng, 1, 6) + 1):
        expect_window_attention(
            sliding_window_attention(q, k, v, window),
            (q, k, v),
            window,
            False,
            f"sliding_window_attention(q, k, v, {window})",
            sliding_window_attention,
        )


def swa_causal(sliding_window_attention, rng):
    """causal: equals dense attention under sliding_window_mask(L, window, causal=True)"""
    L = draw(rng, 20, 48)
    q, k, v = attention_inputs(rng, L)
    for window in (draw(rng, 2, 6), draw(rng, 7, 13)):
        expect_window_attention(
            sliding_window_attention(q, k, v, window, causal=True),
            (q, k, v),
            window,
            True,
            f"sliding_window_attention(q, k, v, {window}, causal=True)",
            sliding_window_attention,
        )


def swa_shapes_and_float64(sliding_window_attention, rng):
    """any leading dims ((L, D), (B, L, D)), Dv != D, float64 to 1e-10"""
    L, window = draw(rng, 9, 30), draw(rng, 2, 7)
    for leading, dtype in [((), torch.float32), ((draw(rng, 1, 3),), torch.float64)]:
        q, k, v = attention_inputs(rng, L, dtype, leading)
        for causal in (False, True):
            expect_window_attention(
                sliding_window_attention(q, k, v, window, causal=causal),
                (q, k, v),
                window,
                causal,
                f"sliding_window_attention on {tuple(q.shape)} {dtype}, causal={causal}",
                sliding_window_attention,
            )


def swa_many_blocks(sliding_window_attention, rng):
    """L of a few hundred: many query blocks, with small windows and windows longer than 64"""
    L = draw(rng, 200, 330)
    q, k, v = attention_inputs(rng, L, leading=(1, 2))
    for window, causal in [
        (2 * draw(rng, 2, 6), False),
        (draw(rng, 2, 8), True),
        (draw(rng, 65, 140), False),
        (draw(rng, 65, 140), True),
    ]:
        expect_window_attention(
            sliding_window_attention(q, k, v, window, causal=causal),
            (q, k, v),
            window,
            causal,
            f"sliding_window_attention(q, k, v, {window}, causal={causal}) with L = {L}",
        )


def expect_window_attention(
    out, qkv: tuple, window: int, causal: bool, what: str, student=None
) -> None:
    """expect_attention under the window's mask. Two more wrong answers are named: queries left
    at zero and the others right (blocks skipped), and an answer right for the first queries
    only (the first block is right, the bookkeeping of the later ones is not). An answer that is
    all zeros may be blocks skipped too, every one of them cut by an end when L is short:
    `student` (the function) is then run again on a longer sequence to tell."""
    L = qkv[0].shape[-2]
    mask = brute_mask(L, window_rule(window, causal))
    try:
        expect_attention(
            out, *qkv, mask, what, window_masks(L, window, causal), swa_edges(window, causal)
        )
    except Mistake as mistake:
        if mistake.key not in ("wrong_values", "not_finite"):
            raise
        found = tile_mistake(out, qkv, window, causal)
        if found is not None:
            key, seen, block = found
            description, fix = hint(key)
            raise Mistake(
                f"{what} matches {seen}, {block} queries a tile: it looks like {description}.",
                fix,
                key,
            ) from None
        ref = dense64(*qkv, mask)
        skipped = skipped_queries(out, ref, swa_edges(window, causal)[0])
        if skipped:
            description, fix = hint("drops_edges")
            raise Mistake(
                f"{what} left {len(skipped)} queries unwritten (from {skipped[0]} to "
                f"{skipped[-1]}: zero, or leftover memory) and got the others right: it looks "
                f"like {description}.",
                fix,
                "drops_edges",
            ) from None
        if student is not None and wrong_queries(out, ref).all():
            explain_all_wrong(student, out, qkv, window, causal, what)
        first = first_wrong_query(out, ref)
        if first < 8:  # wrong from the start: not the later blocks alone
            raise
        description, fix = hint("later_blocks_wrong")
        raise Mistake(
            f"{what} is right for queries 0 .. {first - 1}, wrong from query {first} on: "
            f"it looks like {description}.",
            fix,
            "later_blocks_wrong",
        ) from None


def window_tiles64(
    q,
    k,
    v,
    window: int,
    causal: bool,
    block: int,
    softmax_dim: int = -1,
    fill=float("-inf"),
    ahead: bool = True,
):
    """Sliding-window attention in float64, `block` queries a tile, each tile's softmax along
    `softmax_dim`, the scores outside the band set to `fill`, and keys fetched past the tile's
    last query when `ahead`: -1, -inf and True are right; -2 (over the tile's queries), a fill of
    0, None (no band mask in the tile) and keys that stop at the tile's end the mistakes."""
    L, d = q.shape[-2], q.shape[-1]
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    q, k, v = q.double(), k.double(), v.double()
    tiles = []
    for start in range(0, L, block):
        stop = min(start + block, L)
        k_start, k_stop = max(0, start - before), min(L, stop + after) if ahead else stop
        scores = q[..., start:stop, :] @ k[..., k_start:k_stop, :].transpose(-2, -1) / math.sqrt(d)
        i = torch.arange(start, stop).unsqueeze(-1)  # (b, 1) query positions
        j = torch.arange(k_start, k_stop)  # (kb,) key positions
        band = (j >= i - before) & (j <= i + after)  # (b, kb)
        if fill is not None:
            scores = scores.masked_fill(~band, fill)
        tiles.append(torch.softmax(scores, softmax_dim) @ v[..., k_start:k_stop, :])
    return torch.cat(tiles, dim=-2)


# The mistakes inside a tile that tile_mistake tries: (key, what the answer matches, the
# arguments of window_tiles64 that make it).
TILE_MISTAKES = [
    ("softmax_over_queries", "a softmax over each tile's queries", {"softmax_dim": -2}),
    ("tile_unmasked", "tiles without the band mask", {"fill": None}),
    ("tile_filled_with_zero", "tiles whose masked scores are 0, not -inf", {"fill": 0.0}),
    ("keys_stop_at_tile_end", "tiles whose keys stop at the tile's last query", {"ahead": False}),
]


def tile_mistake(out, qkv: tuple, window: int, causal: bool):
    """(key, what it matches, tile size) of the tile mistake that `out` matches, or None. The
    tile size is the student's choice: the common ones are tried, and the whole sequence."""
    q = qkv[0]
    L = q.shape[-2]
    if not isinstance(out, torch.Tensor) or out.shape != (*q.shape[:-1], qkv[2].shape[-1]):
        return None
    for block in sorted({min(b, L) for b in (16, 32, 64, 128, window, max(window, 64), L)}):
        for key, seen, mistake in TILE_MISTAKES:
            wrong = window_tiles64(*qkv, window, causal, block, **mistake)
            if relative_error(out.detach(), wrong) <= TOLERANCE[q.dtype]:
                return key, seen, block
    return None


def skipped_queries(out: torch.Tensor, ref: torch.Tensor, before: int) -> list:
    """The queries never written, when some (not all) are and every other query is right: rows
    left at zero (by new_zeros), or the first queries of the sequence, whatever new_empty left
    there (the loop over blocks started after the first). Those first queries are the blocks
    that the window's `before` keys reach past the start: at most before + 128 of them (blocks
    of up to 128 queries). More wrong queries than that are written wrongly, not left out (a
    tile's mask mistake can leave only the last query right)."""
    L = ref.shape[-2]
    wrong, zero = wrong_queries(out, ref), (out == 0).all(-1).reshape(-1, L).all(0)  # (L,)
    if not wrong.any() or wrong.all():
        return []
    count = int(wrong.sum())
    first_ones = count <= before + 128 and bool(wrong[:count].all())  # queries 0 .. count - 1
    if first_ones or not (wrong & ~zero).any():
        return torch.nonzero(wrong).flatten().tolist()
    return []


def explain_all_wrong(sliding_window_attention, out, qkv: tuple, window: int, causal: bool, what):
    """An answer wrong for every query of a short sequence (all zeros, say): skipped blocks whose
    window an end cuts (every block, when L is below the block size) leave the middle of a
    longer sequence right. Run the same call on the inputs repeated to L = 256 + 2 * window,
    where a block of up to 64 queries has its whole window, and name the mistake if that shows."""
    seen = "is all zeros" if (out == 0).all() else "is wrong for every query"
    L = 256 + 2 * window
    longer = [t.repeat(*[1] * (t.dim() - 2), -(-L // t.shape[-2]), 1)[..., :L, :] for t in qkv]
    longer_out = sliding_window_attention(*longer, window, causal=causal)
    if not isinstance(longer_out, torch.Tensor) or longer_out.shape[:-1] != longer[0].shape[:-1]:
        return
    skipped = skipped_queries(
        longer_out,
        dense64(*longer, brute_mask(L, window_rule(window, causal))),
        swa_edges(window, causal)[0],
    )
    if skipped:
        description, fix = hint("drops_edges")
        raise Mistake(
            f"{what} {seen}, and on a longer sequence (L = {L}) it left {len(skipped)} "
            f"queries unwritten (from {skipped[0]} to {skipped[-1]}) and got the others right: "
            f"it looks like {description}.",
            fix,
            "drops_edges",
        ) from None


def wrong_queries(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(L,) bool: the queries (dim -2) whose row is clearly wrong (rounding errors are ~1e-7), or
    not finite (rows never written to, say)."""
    error = (out.double() - ref).abs().amax(-1)  # (..., L)
    return ~(error <= 1e-4 * ref.abs().max()).reshape(-1, error.shape[-1]).all(0)


def first_wrong_query(out: torch.Tensor, ref: torch.Tensor) -> int:
    """The first clearly wrong query, or L when there is none."""
    wrong = wrong_queries(out, ref)
    return int(torch.nonzero(wrong)[0]) if wrong.any() else ref.shape[-2]


def swa_extremes(sliding_window_attention, rng):
    """window = 1 (each query sees itself), a window longer than L, and L shorter than a block"""
    L = draw(rng, 5, 12)
    q, k, v = attention_inputs(rng, L, leading=(2,))
    for window, causal in [(1, False), (1, True), (2 * L + 1, False), (L + draw(rng, 0, 5), True)]:
        expect_window_attention(
            sliding_window_attention(q, k, v, window, causal=causal),
            (q, k, v),
            window,
            causal,
            f"sliding_window_attention(q, k, v, {window}, causal={causal}) with L = {L}",
            sliding_window_attention,
        )


def swa_never_full_matrix(sliding_window_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096: O(L * window) memory)"""
    L, window = 4096, draw(rng, 16, 64)
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    for causal in (False, True):
        expect_no_full_matrix(
            lambda: sliding_window_attention(q, k, v, window, causal=causal),
            L,
            f"sliding_window_attention(q, k, v, {window}, causal={causal})",
        )


def chunk_rule(L: int, chunk_size: int, overlap: int, extra_left=0, extra_right=0):
    def allowed(i, j):
        c = i // chunk_size
        return (
            c * chunk_size - overlap - extra_left
            <= j
            < (c + 1) * chunk_size + overlap + extra_right
        )

    return allowed


def chunk_masks(L: int, chunk_size: int, overlap: int) -> list:
    return [
        (
            "overlap_one_side",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_right=-overlap)),
        ),
        (
            "overlap_one_side",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-overlap)),
        ),
        ("overlap_off_by_one", brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_right=1))),
        ("overlap_off_by_one", brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-1))),
        (
            "overlap_off_by_one",
            brute_mask(L, chunk_rule(L, chunk_size, overlap, extra_left=-1, extra_right=1)),
        ),
        ("ignores_overlap", brute_mask(L, chunk_rule(L, chunk_size, 0))),
        ("sliding_not_chunked", brute_mask(L, lambda i, j: abs(i - j) <= overlap)),
        (
            "sliding_not_chunked",
            brute_mask(L, lambda i, j: i - overlap <= j < i + chunk_size + overlap),
        ),
    ]


def chunk_tiles64(q, k, v, chunk_size: int, overlap: int, softmax_dim: int = -1):
    """Chunked attention in float64, one tile per chunk, the softmax along `softmax_dim`: -1 is
    right, -2 (over the tile's queries) the mistake."""
    L, d = q.shape[-2], q.shape[-1]
    q, k, v = q.double(), k.double(), v.double()
    tiles = []
    for start in range(0, L, chunk_size):
        stop = min(start + chunk_size, L)
        keys = slice(max(0, start - overlap), min(L, stop + overlap))
        scores = q[..., start:stop, :] @ k[..., keys, :].transpose(-2, -1) / math.sqrt(d)
        tiles.append(torch.softmax(scores, softmax_dim) @ v[..., keys, :])
    return torch.cat(tiles, dim=-2)


def expect_chunked(chunked_attention, q, k, v, chunk_size, overlap, what):
    L = q.shape[-2]
    last = L % chunk_size or chunk_size
    out = chunked_attention(q, k, v, chunk_size, overlap)
    try:
        expect_attention(
            out,
            q,
            k,
            v,
            brute_mask(L, chunk_rule(L, chunk_size, overlap)),
            what,
            chunk_masks(L, chunk_size, overlap),
            edge=(0, last, "drops_last_chunk"),
            extra_suspects=[
                ("softmax_over_queries", chunk_tiles64(q, k, v, chunk_size, overlap, -2))
            ],
        )
    except Mistake as mistake:
        ref = chunk_tiles64(q, k, v, chunk_size, overlap)
        # The chunks whose key range starts before 0: ceil(overlap / chunk_size) of them.
        cut = -(-overlap // chunk_size) * chunk_size
        if mistake.key != "wrong_values" or overlap == 0 or L <= cut:
            raise
        if first_wrong_query(out[..., cut:, :], ref[..., cut:, :]) < L - cut:
            raise  # not the first chunks alone
        description, fix = hint("key_start_not_clipped")
        raise Mistake(
            f"{what} is wrong for the chunks that start within `overlap` of 0 (queries "
            f"0 .. {cut - 1}) only: it looks like {description}.",
            fix,
            "key_start_not_clipped",
        ) from None


def chunked_matches(chunked_attention, rng):
    """chunk c attends keys [c*chunk_size - overlap, (c+1)*chunk_size + overlap), L % chunk_size != 0"""
    chunk_size = draw(rng, 4, 8)
    L = chunk_size * draw(rng, 3, 6) + draw(rng, 1, chunk_size - 1)
    q, k, v = attention_inputs(rng, L)
    overlap = draw(rng, 1, chunk_size - 1)
    expect_chunked(
        chunked_attention,
        q,
        k,
        v,
        chunk_size,
        overlap,
        f"chunked_attention(q, k, v, {chunk_size}, {overlap}) with L = {L}",
    )


def chunked_extremes(chunked_attention, rng):
    """overlap = 0 (blocks on the diagonal), overlap > chunk_size, chunk_size >= L, L % chunk_size == 0"""
    chunk_size = draw(rng, 3, 6)
    L = chunk_size * draw(rng, 3, 5)
    q, k, v = attention_inputs(rng, L, torch.float64, leading=(draw(rng, 1, 3),))
    for size, overlap in [
        (chunk_size, 0),
        (chunk_size, chunk_size + draw(rng, 1, 3)),
        (L + draw(rng, 0, 3), 2),
    ]:
        expect_chunked(
            chunked_attention,
            q,
            k,
            v,
            size,
            overlap,
            f"chunked_attention(q, k, v, {size}, {overlap}) with L = {L}, float64",
        )


def chunked_never_full_matrix(chunked_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096)"""
    L, chunk_size, overlap = 4096, draw(rng, 64, 128), draw(rng, 8, 32)
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    expect_no_full_matrix(
        lambda: chunked_attention(q, k, v, chunk_size, overlap),
        L,
        f"chunked_attention(q, k, v, {chunk_size}, {overlap})",
    )


# ----------------------------------------------------------------------------- errors named

TRANSPOSE_ALL = re.compile(r"\.T(?![\w(])")  # k.T, not k.transpose(...) or k.Tx
EXPANDED_SIZE = re.compile(
    r"expanded size of the tensor \((\d+)\) must match the existing size \((\d+)\)"
)


def runs_past_the_ends(message: str, q: torch.Tensor) -> bool:
    """torch's error says the key axis met more than the L positions there are, or none (a
    slice from a negative start that wrapped past its stop): a range that was not clipped to
    [0, L)."""
    sizes = key_axis_sizes(message, q)
    return sizes is not None and (max(sizes) > q.shape[-2] or min(sizes) == 0)


def key_axis_sizes(message: str, q: torch.Tensor):
    """The two sizes of the key axis that torch's error says differ, or None: the scores' last
    dim (a broadcast error), or the keys of weights @ v (matmul's error on (L, D) tiles, bmm's
    on flattened leading dims; where the expected size is q's d, it is q @ k instead)."""
    sizes = SIZES_DIFFER.search(message)
    if sizes is not None:
        a, b, dim = (int(n) for n in sizes.groups())
        return (a, b) if dim == q.dim() - 1 else None
    for pattern in (VALUE_ROWS_DIFFER, MATRIX_SIZES_DIFFER):
        sizes = pattern.search(message)
        if sizes is not None:
            a, b = (int(n) for n in sizes.groups())
            return (a, b) if a != q.shape[-1] else None
    return None


# torch's errors for a product whose inner sizes differ: bmm's (batch2's rows), matmul's on 2-D
VALUE_ROWS_DIFFER = re.compile(
    r"first two dimensions of batch2 tensor to be: \[\d+, (\d+)\] but got: \[\d+, (\d+)\]"
)
MATRIX_SIZES_DIFFER = re.compile(
    r"mat1 and mat2 shapes cannot be multiplied \(\d+x(\d+) and (\d+)x\d+\)"
)


def output_like_q(message: str, q: torch.Tensor, v: torch.Tensor) -> bool:
    """torch's error for a tile of width dv written into an output of q's width d."""
    sizes = EXPANDED_SIZE.search(message)
    if sizes is None or q.shape[-1] == v.shape[-1]:
        return False
    return (int(sizes[1]), int(sizes[2])) == (q.shape[-1], v.shape[-1])


def window_oracle(q, k, v, window, causal=False):
    """sliding_window_attention in float64 (a vectorised band: L may be 4096 here)."""
    offset = torch.arange(q.shape[-2]).unsqueeze(-1) - torch.arange(q.shape[-2])  # i - j
    band = (offset >= 0) & (offset < window) if causal else offset.abs() <= window // 2
    return dense64(q, k, v, band)


def explain_by_one_head(student, oracle, raised: Mistake, q, k, v, *args, **kwargs) -> None:
    """After `student` raised on these inputs: name a transpose counted from the front, or code
    for one number of dims, when the same call on one head's tiles, (L, D) or with leading
    dims of size 1, gives `oracle`'s answer (explain_by_rank). This works where the
    line that raised is unknown (code run through exec, say)."""
    one_head = [t.reshape(-1, *t.shape[-2:])[0] for t in (q, k, v)]  # (L, D) each
    ref = oracle(*one_head, *args, **kwargs)

    def gives_answer(rank):
        inputs = [t.reshape(*[1] * (rank - 2), *t.shape) for t in one_head]
        return right_answer(
            lambda: expect_close(
                student(*inputs, *args, **kwargs), ref.reshape(*inputs[0].shape[:-1], -1), q.dtype
            )
        )

    explain_by_rank(raised, q.dim(), gives_answer)


def naming_shape_errors(check, oracle):
    """`check`, with the student's function wrapped so that torch's shape errors that have one
    cause name it: from a line with `.T` (which reverses every dim of a batched tile), from key
    positions that run past the sequence's ends, or, whatever the line, from a crash on these
    leading dims that fewer dims do not cause (`oracle`, called as the student is, tells)."""

    def student_named(student):
        def call(q, k, v, *args, **kwargs):
            try:
                return student(q, k, v, *args, **kwargs)
            except Mistake as mistake:
                if mistake.key != "raised":
                    raise
                if TRANSPOSE_ALL.search(mistake.message.rpartition("at:")[2]):
                    raise named_crash(mistake, "batched_transpose") from None
                if runs_past_the_ends(mistake.message, q):
                    raise named_crash(mistake, "range_not_clipped") from None
                if output_like_q(mistake.message, q, v):
                    raise named_crash(mistake, "output_like_q") from None
                explain_by_one_head(student, oracle, mistake, q, k, v, *args, **kwargs)
                raise

        return call

    @functools.wraps(check)
    def run(student, rng):
        return check(student_named(student), rng)

    return run


EXERCISES = {
    "sliding_window_attention": Exercise(
        checks=[
            naming_shape_errors(check, window_oracle)
            for check in (
                swa_symmetric,
                swa_causal,
                swa_shapes_and_float64,
                swa_many_blocks,
                swa_extremes,
                swa_never_full_matrix,
            )
        ],
        forbidden=FORBIDDEN_ATTENTION,
    ),
    "chunked_attention": Exercise(
        checks=[
            naming_shape_errors(check, chunk_tiles64)
            for check in (chunked_matches, chunked_extremes, chunked_never_full_matrix)
        ],
        forbidden=FORBIDDEN_ATTENTION,
    ),
}
