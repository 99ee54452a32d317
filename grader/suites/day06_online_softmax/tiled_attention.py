"""Checks for tiled_attention: out and logsumexp from running statistics, tile by tile, never
an (Lq, Lk) tensor, and causal tiles above the diagonal skipped."""

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_value_error,
    named,
    relative_error,
)
from grader.harness.measuring import measuring
from grader.suites._common import call_unchanged, draw, largest_allocation, randn
from grader.suites.day06_online_softmax.hints import HINTS
from grader.suites.day06_online_softmax.oracles import causal_rule, dense64, dense_max64, qkv


def tile_loop64(q, k, v, bq, bk, mask=None, rescale_l=True, rescale_acc=True, reset=True):
    """(out, lse) of a float64 tile loop with the given rescaling (a suspect when one is off);
    reset=False carries m, l and acc from one query tile to the next (which needs Lq to be a
    multiple of bq). Tiles with every entry masked are skipped, as the skipping schedule does."""
    q, k, v = q.double(), k.double(), v.double()
    Lq, Lk = q.shape[-2], k.shape[-2]
    s_all = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # fine for an oracle: small sizes
    if mask is not None:
        s_all = s_all.masked_fill(~mask, float("-inf"))
    outs, lses = [], []
    for a in range(0, Lq, bq):
        if reset or a == 0:
            m = torch.full(
                s_all.shape[:-2] + (min(bq, Lq - a),), float("-inf"), dtype=torch.float64
            )
            l = torch.zeros_like(m)
            acc = torch.zeros(*m.shape, v.shape[-1], dtype=torch.float64)
        for b in range(0, Lk, bk):
            s = s_all[..., a : a + bq, b : b + bk]
            if mask is not None and not mask[a : a + bq, b : b + bk].any():
                continue
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - safe)
            p = torch.exp(s - safe.unsqueeze(-1))
            l = (l * alpha if rescale_l else l) + p.sum(-1)
            acc = (acc * alpha.unsqueeze(-1) if rescale_acc else acc) + p @ v[..., b : b + bk, :]
            m = m_new
        outs.append(acc / torch.where(l > 0, l, torch.ones_like(l)).unsqueeze(-1))
        lses.append(m + torch.log(l))
    return torch.cat(outs, -2), torch.cat(lses, -1)


class MatmulFlops(TorchDispatchMode):
    """Counts the multiply-adds of every matrix product (mm, bmm, addmm, baddbmm, matmul), and
    keeps the (rows, columns) of the largest product seen (a tile of scores, say)."""

    def __init__(self):
        super().__init__()
        self.flops, self.largest = 0, (0, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("mm", "bmm", "addmm", "baddbmm", "matmul", "dot", "mv", "addbmm"):
            a = args[1] if name in ("addmm", "baddbmm", "addbmm") else args[0]
            if isinstance(out, torch.Tensor):
                self.flops += out.numel() * (a.shape[-1] if a.dim() else 1)
                if out.dim() >= 2 and math.prod(out.shape[-2:]) > math.prod(self.largest):
                    self.largest = tuple(out.shape[-2:])
        return out

    def absorb(self, seen: dict):
        """Add what the same probe counted in the student's kernel (grader/harness/measuring)."""
        self.flops += seen["flops"]


def causal_suspects(Lq, Lk):
    """(key, mask) of the named causal mistakes that differ from the right mask."""
    right = causal_rule(Lq, Lk)
    masks = [  # the first that matches names the mistake: strict before top-left and strict
        ("causal_strict", causal_rule(Lq, Lk, strict=True)),
        ("causal_top_left", causal_rule(Lq, Lk, offset=0)),
        ("causal_top_left", causal_rule(Lq, Lk, offset=0, strict=True)),
        ("causal_wrong_side", causal_rule(Lq, Lk, flip=True)),
        ("causal_wrong_side", causal_rule(Lq, Lk, offset=Lk - Lq + 1, flip=True)),
        ("ignores_causal", torch.ones(Lq, Lk, dtype=torch.bool)),
    ]
    return [(key, mask) for key, mask in masks if not torch.equal(mask, right)]


def loop_end(Lq, Lk, bq, offset=None):
    """(Lq, 1): where a skipping causal key loop stops for each query: offset + q_end for the
    query tile [q_start, q_end) (offset Lk - Lq: the course's bottom-right)."""
    tile_end = torch.clamp((torch.arange(Lq) // bq + 1) * bq, max=Lq).unsqueeze(-1)
    return (Lk - Lq if offset is None else offset) + tile_end


def keys_visited(Lq, Lk, bq, short=0, bk=None):
    """(Lq, Lk) bool: the keys that a skipping causal key loop, ending at Lk - Lq + q_end - short
    for the query tile [q_start, q_end), visits for each query; with `bk`, the loop's last key
    tile is read whole (k[..., j0:j0 + bk], not cut at the loop's end)."""
    end = loop_end(Lq, Lk, bq) - short  # (Lq, 1)
    return torch.arange(Lk) < (end if bk is None else whole_tiles(end, bk))


def whole_tiles(end, bk):
    """A key loop's end when its last tile is read whole: rounded up to a multiple of bk."""
    return torch.where(end > 0, (end + bk - 1) // bk * bk, end)


def ragged_key_tile_dropped(Lq, Lk, bq, bk, causal):
    """(Lq, Lk) bool: the keys that a key loop range(0, key_end - bk + 1, bk) reaches: the last,
    shorter key tile of each query tile never visited."""
    end = torch.clamp(loop_end(Lq, Lk, bq), 0, Lk) if causal else torch.full((Lq, 1), Lk)
    reached = torch.arange(Lk) < end // bk * bk
    return reached & causal_rule(Lq, Lk) if causal else reached


def straddling(Lq, Lk, bq, bk):
    """(Lq, Lk) bool: key j lies, for query i, in a key tile that straddles the diagonal of i's
    query tile (the tile's last key after the tile's first query's position), tiles cut at the
    skipping loop's end."""
    i, j = torch.arange(Lq).unsqueeze(-1), torch.arange(Lk)
    end = torch.clamp(loop_end(Lq, Lk, bq), max=Lk)  # (Lq, 1)
    last_key_of_tile = torch.minimum(j // bk * bk + bk, end) - 1  # (Lq, Lk)
    return last_key_of_tile > Lk - Lq + i // bq * bq


def local_query_index(Lq, Lk, bq, bk):
    """(Lq, Lk) bool masks of a causal mask that counts each query from its tile's start
    (Lk - Lq + i - q_start): on every visited tile, and on the straddling tiles only."""
    i, j = torch.arange(Lq).unsqueeze(-1), torch.arange(Lk)
    visited = j < torch.clamp(loop_end(Lq, Lk, bq), max=Lk)
    local = j <= Lk - Lq + i - i // bq * bq
    return [local & visited, (local | ~straddling(Lq, Lk, bq, bk)) & visited]


def strict_in_straddling(Lq, Lk, bq, bk):
    """(Lq, Lk) bool: a strict mask (j < i) applied in the straddling tiles only: a query loses
    its own key where that key's tile straddles, and keeps it in a tile that ends on it."""
    diagonal = torch.arange(Lk) == torch.arange(Lq).unsqueeze(-1) + Lk - Lq
    return causal_rule(Lq, Lk) & ~(diagonal & straddling(Lq, Lk, bq, bk))


def stops_one_key_early(Lq, Lk, bq):
    """The causal mask of a key loop that stops one key early: the last query of every tile loses
    its diagonal key."""
    return causal_rule(Lq, Lk) & keys_visited(Lq, Lk, bq, short=1)


def mistaken_masks(Lq, Lk, bq, bk, causal):
    """(key, (Lq, Lk) bool) of the named mistakes in a loop bound or a mask: the keys that each
    query sees with the mistake (the first that matches names it)."""
    masks = causal_suspects(Lq, Lk) if causal else []
    if causal:
        # A strict mask where only straddling tiles are masked: with Lq > Lk a tile may end on
        # the diagonal, and its queries keep their own key there
        masks.append(("causal_strict", strict_in_straddling(Lq, Lk, bq, bk)))
        no_offset = loop_end(Lq, Lk, bq, offset=0)  # the loop ends at q_end
        masks += [
            ("causal_tile_stops_early", stops_one_key_early(Lq, Lk, bq)),
            *[
                ("causal_loop_end_no_offset", causal_rule(Lq, Lk) & (torch.arange(Lk) < end))
                for end in (no_offset, whole_tiles(no_offset, bk))
            ],
            *[("causal_local_query_index", wrong) for wrong in local_query_index(Lq, Lk, bq, bk)],
        ]
        # The loop bound right, the mask inside the tiles not: none, or a top-left one (where
        # the two let the same keys through, nothing was masked: the first names it)
        unmasked = [keys_visited(Lq, Lk, bq, bk=tile) for tile in (None, bk)]
        masks += [("causal_diagonal_unmasked", visited) for visited in unmasked]
        for visited in unmasked:
            top_left = causal_rule(Lq, Lk, offset=0) & visited
            if not any(torch.equal(top_left, other) for other in unmasked):
                masks.append(("causal_top_left", top_left))
    return masks + [("last_key_tile_dropped", ragged_key_tile_dropped(Lq, Lk, bq, bk, causal))]


def call_tiled(tiled_attention, q, k, v, **tiles):
    """tiled_attention(q, k, v, **tiles), its inputs left as they were (else modified_input); a
    crash, or an out with the wrong number of queries, is explained where a probe can
    (explain_by_probes)."""
    try:
        result = call_unchanged(tiled_attention, {"q": q, "k": k, "v": v}, **tiles)
    except Mistake as raised:
        if raised.key != "raised":
            raise
        explain_by_probes(tiled_attention, raised, q, k, v, tiles)
        raise
    out = result[0] if isinstance(result, tuple) and result else None
    if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[-2] != q.shape[-2]:
        seen = f"out has {out.shape[-2]} queries (shape {tuple(out.shape)}) for Lq = {q.shape[-2]}"
        explain_by_probes(tiled_attention, Mistake(seen), q, k, v, tiles)
    return result


def explain_by_probes(tiled_attention, raised: Mistake, q, k, v, tiles: dict) -> None:
    """After tiled_attention crashed on q, k, v (or gave an out of the wrong length): name the
    mistake that a smaller probe shows, or return (what was seen stands). Right on (L, D) inputs:
    a transpose counted from the front (k.T on a batched tile). Right with v as wide as q: out
    made in q's shape. On two full query tiles, what the running state carried over from one
    query tile to the next gives: m, l, acc made once (the ragged last tile is what crashed, or
    came out too long). Right without the queries that see no key: a query tile with no key
    crashes."""
    mask_of = (lambda Lq, Lk: causal_rule(Lq, Lk)) if tiles.get("causal") else (lambda *_: None)
    d = q.shape[-1]
    if v.shape[-1] > d:
        narrow = [q, k, v[..., :d]]  # (..., Lk, d): dv = d
        if gives(
            tiled_attention,
            narrow,
            tiles,
            dense64(*narrow, mask_of(q.shape[-2], k.shape[-2]))[0],
        ):
            raise_explained(
                raised,
                "out_like_q",
                f"With v as wide as q (dv = d = {d}) it gives the right answer",
            )
    Lq, Lk = q.shape[-2], k.shape[-2]
    if tiles.get("causal") and Lq > Lk:
        seeing = [q[..., Lq - Lk :, :], k, v]  # the queries that see a key, positions unchanged
        if gives(tiled_attention, seeing, tiles, dense64(*seeing, causal_rule(Lk, Lk))[0]):
            raise_explained(
                raised,
                "no_key_tile_crashes",
                f"Without the first {Lq - Lk} queries, which see no key, it gives the right answer",
            )
    if q.dim() > 2:
        one = [t.reshape(-1, *t.shape[-2:])[0] for t in (q, k, v)]  # (L, D): the first head
        right = dense64(*one, mask_of(one[0].shape[-2], one[1].shape[-2]))[0]
        if gives(tiled_attention, one, tiles, right):
            raise_explained(
                raised,
                "batched_transpose",
                f"It raised on {q.dim()}-D inputs, but gives the right answer on (L, D) ones",
            )
    bq, bk = tiles.get("block_q", 64), tiles.get("block_k", 64)
    rows = torch.arange(2 * bq) % q.shape[-2]  # two full query tiles, from q's rows
    probe = [q[..., rows, :], k, v]
    mask = mask_of(2 * bq, k.shape[-2])
    carried = tile_loop64(*probe, bq, bk, mask, reset=False)[0]
    if relative_error(carried, dense64(*probe, mask)[0]) > 1e-6 and gives(
        tiled_attention, probe, tiles, carried
    ):
        raise_explained(
            raised,
            "state_not_reset",
            f"With Lq = {2 * bq} (two full query tiles) "
            "it runs, and gives what m, l and acc carried over between query tiles give",
        )


def gives(tiled_attention, inputs, tiles, expected) -> bool:
    """tiled_attention(*inputs, **tiles) runs and its out is `expected`."""
    try:
        out, _ = tiled_attention(*inputs, **tiles)
        return torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)
    except Exception:  # a Mistake, or a result that is not a pair: nothing to explain
        return False


def raise_explained(raised: Mistake, key: str, seen: str) -> None:
    description, fix = HINTS[key]
    raise Mistake(
        f"{raised.message}\n      {seen}: it looks like {description}.", fix, key
    ) from None


def expect_tiled(result, q, k, v, bq, bk, causal, what, probe=None):
    """out and lse against dense float64, naming the mistakes this day recognises; `probe`, the
    student's tiled_attention, explains a causal out that no named mistake matches
    (explain_by_small_tiles)."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise Mistake(
            f"{what} returned {type(result).__name__}, expected a tuple (out, lse).",
            hint="return the output and the logsumexp: `return out, lse`.",
            key="wrong_return",
        )
    out, lse = result
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = causal_rule(Lq, Lk) if causal else None
    ref_out, ref_lse = dense64(q, k, v, mask)
    if all(isinstance(t, torch.Tensor) for t in result) and (
        (out.shape, lse.shape) == (ref_lse.shape, ref_out.shape)
    ):
        raise named("returns_swapped")
    d = q.shape[-1]
    suspects = [
        ("missing_scale", dense64(q, k, v, mask, scale=1.0)[0]),
        ("scale_one_over_d", dense64(q, k, v, mask, scale=1 / d)[0]),
    ]
    right = mask if causal else torch.ones(Lq, Lk, dtype=torch.bool)
    suspects += [
        (key, dense64(q, k, v, wrong)[0])
        for key, wrong in mistaken_masks(Lq, Lk, bq, bk, causal)
        if not torch.equal(wrong, right)
    ]
    expect_empty_rows(out, lse, ref_lse, what)
    suspects += [
        ("missing_rescale", tile_loop64(q, k, v, bq, bk, mask, False, False)[0]),
        ("rescale_l_only", tile_loop64(q, k, v, bq, bk, mask, True, False)[0]),
        ("rescale_acc_only", tile_loop64(q, k, v, bq, bk, mask, False, True)[0]),
    ]
    if Lq % bq == 0:  # else carried state crashes on the ragged last tile (explain_by_probes)
        suspects.append(("state_not_reset", tile_loop64(q, k, v, bq, bk, mask, reset=False)[0]))
    try:
        expect_close(
            out,
            ref_out,
            q.dtype,
            what=f"{what}'s out",
            suspects=suspects,
            nonfinite=named("nan_for_masked"),
        )
    except Mistake as raised:
        if causal and probe is not None and raised.key == "wrong_values":
            explain_by_small_tiles(probe, raised, q, k, v, bq, bk)
        raise
    lse_suspects = []
    if isinstance(lse, torch.Tensor) and lse.shape == ref_lse.shape:
        finite = torch.isfinite(ref_lse)
        if (torch.isnan(lse) & ~finite).any() or (torch.isfinite(lse) & ~finite).any():
            key = "nan_for_masked" if torch.isnan(lse[~finite]).any() else "lse_finite_for_empty"
            raise Mistake(
                f"{what}'s lse is {lse[~finite][0].item()} for a query that sees no key, "
                f"expected -inf.",
                HINTS[key][1],
                key,
            )
        if not finite.all():  # compare the rows that see keys
            lse, ref_lse = lse[finite], ref_lse[finite]
        m = dense_max64(q, k, mask)[finite] if not finite.all() else dense_max64(q, k, mask)
        lse_suspects = [
            ("lse_base2", ref_lse / math.log(2)),
            ("lse_base2", (m + (ref_lse - m) / math.log(2))),
            ("lse_missing_max", ref_lse - m),
        ]
    expect_close(lse, ref_lse, q.dtype, what=f"{what}'s lse", suspects=lse_suspects)


def explain_by_small_tiles(tiled_attention, raised: Mistake, q, k, v, bq, bk) -> None:
    """After a causal out that no named mistake matches: right without causal, and right with one
    query and one key per tile (no tile straddles the diagonal: the loop bound alone masks), it
    is the mask inside the straddling tiles that is wrong. The probe keeps the last 8 queries
    (their positions unchanged, bottom-right) to stay small."""
    probe = [q[..., -8:, :], k, v]
    causal_mask = causal_rule(probe[0].shape[-2], k.shape[-2])
    if gives(tiled_attention, probe, dict(block_q=bq, block_k=bk), dense64(*probe)[0]) and gives(
        tiled_attention,
        probe,
        dict(block_q=1, block_k=1, causal=True),
        dense64(*probe, causal_mask)[0],
    ):
        raise_explained(
            raised,
            "causal_diagonal_unmasked",
            "Without causal, and with one query and one key per tile (none straddles the "
            "diagonal), it is right",
        )


def expect_empty_rows(out, lse, ref_lse, what):
    """NaN outputs for the queries that see no key, next to their right lse = -inf: the state is
    right (m = -inf, l = 0, acc = 0), the last division is 0 / 0."""
    empty = torch.isneginf(ref_lse)
    if not (isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)) or not empty.any():
        return
    if out.shape[:-1] != empty.shape or lse.shape != empty.shape:
        return
    if torch.isnan(out[empty]).any() and torch.isneginf(lse[empty]).all():
        description, fix = HINTS["empty_rows_divided_by_zero"]
        raise Mistake(
            f"{what}'s out is NaN for the {int(empty.sum())} queries that see no key, and "
            f"their lse is -inf as it should be: it looks like {description}.",
            fix,
            "empty_rows_divided_by_zero",
        )


def tiled_matches(tiled_attention, rng):
    """non-causal: out and the natural-log lse match dense attention; Lq != Lk; ragged tiles"""
    bq, bk = draw(rng, 3, 6), draw(rng, 3, 6)
    Lq, Lk = (
        bq * draw(rng, 2, 4) + draw(rng, 1, bq - 1),
        bk * draw(rng, 3, 5) + draw(rng, 1, bk - 1),
    )
    q, k, v = qkv(rng, Lq, Lk)
    k = k + torch.linspace(0, 2, Lk).unsqueeze(-1) * q.mean(
        -2, keepdim=True
    )  # max moves along the keys
    expect_tiled(
        call_tiled(tiled_attention, q, k, v, block_q=bq, block_k=bk),
        q,
        k,
        v,
        bq,
        bk,
        False,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, block_k={bk})",
        probe=tiled_attention,
    )


def tiled_causal(tiled_attention, rng):
    """causal, bottom-right aligned: Lq == Lk, Lq < Lk (queries are the newest tokens)"""
    bq, bk = draw(rng, 2, 5), draw(rng, 2, 5)
    L = draw(rng, 9, 20)
    for Lq, Lk in [(L, L), (draw(rng, 3, L - 2), L)]:
        q, k, v = qkv(rng, Lq, Lk)
        expect_tiled(
            call_tiled(tiled_attention, q, k, v, block_q=bq, block_k=bk, causal=True),
            q,
            k,
            v,
            bq,
            bk,
            True,
            f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, "
            f"block_k={bk}, causal=True)",
            probe=tiled_attention,
        )


def tiled_fully_masked_rows(tiled_attention, rng):
    """causal with Lq > Lk: the first Lq - Lk queries see no key: zeros and lse = -inf, never NaN"""
    Lk = draw(rng, 3, 8)
    Lq = Lk + draw(rng, 2, 6)
    q, k, v = qkv(rng, Lq, Lk, leading=(2,))
    bq, bk = draw(rng, 2, 4), draw(rng, 2, 4)
    expect_tiled(
        call_tiled(tiled_attention, q, k, v, block_q=bq, block_k=bk, causal=True),
        q,
        k,
        v,
        bq,
        bk,
        True,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, block_q={bq}, block_k={bk}, "
        f"causal=True)",
        probe=tiled_attention,
    )


def tiled_shapes_and_float64(tiled_attention, rng):
    """(L, D) and (B, L, D) inputs, float64 to 1e-10, default tiles of 64 (ragged), one tile"""
    L = 64 + draw(rng, 10, 40)
    q, k, v = qkv(rng, L, L + draw(rng, 1, 9), torch.float64, leading=(draw(rng, 1, 3),))
    for causal in (False, True):
        expect_tiled(
            call_tiled(tiled_attention, q, k, v, causal=causal),
            q,
            k,
            v,
            64,
            64,
            causal,
            f"tiled_attention(q {tuple(q.shape)} float64, causal={causal}) with default tiles",
            probe=tiled_attention,
        )
    q, k, v = qkv(rng, draw(rng, 3, 7), draw(rng, 3, 7), leading=())
    expect_tiled(
        call_tiled(tiled_attention, q, k, v, block_q=16, block_k=16, causal=True),
        q,
        k,
        v,
        16,
        16,
        True,
        f"tiled_attention(q {tuple(q.shape)}, k {tuple(k.shape)}, causal=True) in one tile",
        probe=tiled_attention,
    )


def tiled_never_full_matrix(tiled_attention, rng):
    """never allocates an (Lq, Lk)-sized tensor (Lq x Lk bytes or more: a bool mask counts)"""
    Lq, Lk, block = 256 + draw(rng, 0, 32), 384 + draw(rng, 0, 32), 2 ** draw(rng, 5, 6)
    q, k, v = (randn((1, L, 8), rng) for L in (Lq, Lk, Lk))
    for causal in (False, True):
        tiles = dict(block_q=block, block_k=block, causal=causal)
        try:
            largest, shape = largest_allocation(lambda: tiled_attention(q, k, v, **tiles))
        except Mistake as raised:
            explain_by_probes(tiled_attention, raised, q, k, v, tiles)
            raise
        if largest >= Lq * Lk:
            description, fix = HINTS["builds_full_matrix"]
            raise Mistake(
                f"tiled_attention(causal={causal}) allocated a tensor of shape {shape} "
                f"({largest} bytes) for Lq = {Lq}, Lk = {Lk} with {block} x {block} "
                f"tiles: it looks like {description}.",
                fix,
                "builds_full_matrix",
            )


def tiled_skips_masked_tiles(tiled_attention, rng):
    """causal skips the tiles above the diagonal: about half the matmul work of non-causal"""
    block = 2 ** draw(rng, 3, 4)
    n = draw(rng, 6, 9)
    L = block * n
    q, k, v = (randn((1, L, 8), rng) for _ in range(3))
    flops = {}
    for causal in (False, True):
        counter = MatmulFlops()
        tiles = dict(block_q=block, block_k=block, causal=causal)
        try:
            with measuring(f"{__name__}:MatmulFlops", counter.absorb), counter:
                tiled_attention(q, k, v, **tiles)
        except Mistake as raised:
            explain_by_probes(tiled_attention, raised, q, k, v, tiles)
            raise
        flops[causal] = counter.flops
    ideal = (n + 1) / (2 * n)  # tiles on or below the diagonal: n (n + 1) / 2 of n^2
    if flops[False] == 0:
        raise Mistake(
            "no matrix product was seen: compute the scores and the output with @ "
            "(or torch.matmul) on tiles.",
            hint="s = q_tile @ k_tile.transpose(-2, -1).",
            key="no_matmul",
        )
    ratio = flops[True] / flops[False]
    if ratio > ideal + 0.5 * (1 - ideal):
        description, fix = HINTS["computes_masked_tiles"]
        raise Mistake(
            f"with L = {L} and {block} x {block} tiles, causal=True did {ratio:.0%} of the "
            f"matmul work of causal=False (skipping the tiles above the diagonal gives "
            f"{ideal:.0%}): it looks like {description}.",
            fix,
            "computes_masked_tiles",
        )
    dense = 2 * L * L * 8
    if flops[False] > 1.5 * dense:
        raise Mistake(
            f"causal=False did {flops[False]} multiply-adds for L = {L}, d = dv = 8; "
            f"the tiles need {dense}: some tiles are computed more than once.",
            hint="visit each (query tile, key tile) pair once.",
            key="extra_work",
        )


def tiled_rejects_bad_input(tiled_attention, rng):
    """block_q or block_k < 1, q, k with different head dims, k, v with different lengths: ValueError"""
    q, k, v = qkv(rng, draw(rng, 3, 6), draw(rng, 3, 6), leading=(2,))
    expect_value_error(
        lambda: tiled_attention(q, k, v, block_q=0),
        "tiled_attention(..., block_q=0)",
        "no_error_for_bad_params",
    )
    expect_value_error(
        lambda: tiled_attention(q, k, v, block_k=-draw(rng, 1, 4)),
        "tiled_attention(..., block_k < 0)",
        "no_error_for_bad_params",
    )
    expect_value_error(
        lambda: tiled_attention(q, k[..., :-1], v),
        "tiled_attention with q (..., d), k (..., d - 1)",
        "no_error_for_bad_params",
    )
    longer_v = torch.cat([v, v[..., :1, :]], dim=-2)  # (..., Lk + 1, dv)
    expect_value_error(
        lambda: tiled_attention(q, k, longer_v),
        "tiled_attention with k (..., Lk, d), v (..., Lk + 1, dv)",
        "no_error_for_bad_params",
    )
