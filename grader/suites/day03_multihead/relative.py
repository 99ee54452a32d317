"""Checks for the advanced part's relative positions: relative_position_bucket (T5's buckets),
shaw_relative_attention and relative_bias_attention, against brute-force float64 oracles.
"""

import math

import torch

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    hint,
    named,
    named_crash,
)
from grader.suites import Exercise
from grader.suites._common import call_unchanged, draw, randn
from grader.suites.day03_multihead.crashes import expect_clear_error

HINTS = {
    "modified_input": (
        "an input changed in place (abs_(), clamp_(), neg_() or t[...] = ... on it)",
        "leave the caller's relative_position as it is: n = relative_position.abs() (not abs_()) "
        "makes a new tensor.",
    ),
    # relative_position_bucket
    "bucket_sign": (
        "the relative position taken as query - memory instead of memory - query",
        "relative_position = memory_position - query_position, and T5 buckets n = "
        "-relative_position: keys in the past (n > 0) get the lower buckets, keys in the future "
        "the upper half when bidirectional.",
    ),
    "bucket_always_bidirectional": (
        "bidirectional=False handled as if it were True",
        "when not bidirectional, keep all num_buckets for the past: n = max(-relative_position, 0) "
        "(future keys share bucket 0), and do not halve num_buckets.",
    ),
    "bucket_boundary": (
        "an off-by-one at the boundary between the exact and the log-spaced buckets",
        "max_exact = num_buckets // 2 (after halving when bidirectional); distances n < max_exact "
        "get bucket n, and n >= max_exact get max_exact + floor(log(n / max_exact) / "
        "log(max_distance / max_exact) * (num_buckets - max_exact)).",
    ),
    "bucket_not_clamped": (
        "distances beyond max_distance not clamped to the last bucket",
        "take min(bucket, num_buckets - 1) (num_buckets halved when bidirectional) for the "
        "log-spaced part: every distance from max_distance on shares the last bucket.",
    ),
    "bucket_not_halved": (
        "max_exact computed from num_buckets before halving it for the two directions",
        "when bidirectional, first num_buckets //= 2 (each direction gets half), then "
        "max_exact = num_buckets // 2.",
    ),
    "bucket_rounded": (
        "the log-spaced bucket rounded to the nearest integer instead of truncated",
        "T5 truncates: .long() (or .floor()) of the non-negative log-spaced offset, not .round().",
    ),
    "bucket_future_not_zero": (
        "future keys (relative_position > 0) given buckets by their distance; with "
        "bidirectional=False they all share bucket 0",
        "when not bidirectional: n = max(-relative_position, 0), e.g. "
        "torch.clamp(-relative_position, min=0); no abs().",
    ),
    "bucket_integer_ratio": (
        "the log taken of n // max_exact (integer division) instead of n / max_exact",
        "divide in floating point: torch.log(n.float() / max_exact), then truncate the whole "
        "log-spaced offset with .long() at the end.",
    ),
    # shaw_relative_attention
    "shaw_not_clipped": (
        "relative distances not clipped to [-max_relative_position, max_relative_position]",
        "index the tables with clamp(j - pos_q(i), -P, P) + P: every distance beyond P reuses the "
        "edge embedding.",
    ),
    "shaw_index_offset": (
        "the table indexed without the offset +max_relative_position (negative distances wrap "
        "around to the end of the table)",
        "row r of the table is distance r - P: index it with clamp(j - pos_q(i), -P, P) + P.",
    ),
    "shaw_sign": (
        "the relative distance taken as i - j (query - key) instead of j - i (key - query)",
        "a^K_{ij} = rel_k[clamp(j - pos_q(i), -P, P) + P]: row 0 is the key P positions before "
        "the query.",
    ),
    "shaw_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "the queries are the newest tokens: pos_q(i) = lk - lq + i, as in causal_mask and "
        "alibi_bias.",
    ),
    "shaw_ignores_rel_v": (
        "rel_v ignored: the output misses sum_j w_ij a^V_{ij}",
        "out_i = sum_j w_ij (v_j + rel_v[clamp(j - pos_q(i), -P, P) + P]).",
    ),
    "shaw_rel_not_scaled": (
        "the relative term q_i . a^K_ij not divided by sqrt(D) with q_i . k_j",
        "scores_ij = q_i . (k_j + a^K_ij) / sqrt(D): scale the whole sum.",
    ),
    "shaw_scaled_by_dv": (
        "the scores divided by sqrt(Dv), v's last dim, instead of sqrt(D), the dim of q and k",
        "the scale comes from the vectors in the dot product: scores = (q k^T + q a^K) / "
        "sqrt(q.shape[-1]); v may have another size.",
    ),
    "shaw_rel_v_unmasked": (
        "the a^V term mixed with other weights than v: a softmax of the scores before the mask",
        "compute the weights once, after masking, and use the same weights for both: out_i = "
        "sum_j w_ij (v_j + a^V_ij).",
    ),
    "mask_fill_zero": (
        "blocked scores set to 0 instead of -inf: exp(0) = 1 still gives blocked keys weight",
        "scores.masked_fill(~mask, float('-inf')) (or the dtype's minimum) before the softmax.",
    ),
    "mask_after_softmax": (
        "the mask applied after the softmax (blocked weights zeroed): the rows then sum to less "
        "than 1",
        "block the scores before the softmax, scores.masked_fill(~mask, float('-inf')), so the "
        "weights of the keys left renormalise to 1.",
    ),
    "softmax_wrong_dim": (
        "the softmax over the queries (dim=-2) instead of over the keys",
        "each query's weights sum to 1 over the keys: torch.softmax(scores, dim=-1).",
    ),
    "shaw_rel_k_for_values": (
        "rel_k used in the output's relative term where rel_v belongs",
        "out_i = sum_j w_ij (v_j + rel_v[index]): the keys' table goes into the scores, the "
        "values' table into the output.",
    ),
    # relative_bias_attention
    "bias_sign": (
        "the buckets computed from query - memory instead of memory - query",
        "relative_position = memory_position - query_position, i.e. "
        "arange(lk)[None, :] - pos_q[:, None].",
    ),
    "bias_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "pos_q(i) = lk - lq + i, so the last query sits at the last key, lk - 1.",
    ),
    "bias_scaled": (
        "the bias multiplied by the score scale (1/sqrt(D)) along with q k^T",
        "scores = scale * q @ k^T + bias: the bias is added after scaling, as it is.",
    ),
    "bias_wrong_heads": (
        "every head given the bias of the wrong head (the table's axes mixed up)",
        "bias_table is (num_buckets, H), like an nn.Embedding's weight: bias = "
        "bias_table[buckets] is (lq, lk, H); move the heads first: .permute(2, 0, 1).",
    ),
    "bias_one_head": (
        "every head given the same bias, one column of the table (bias_table[buckets][..., 0])",
        "each head has its own column of bias_table (num_buckets, H): bias_table[buckets] is "
        "(lq, lk, H); .permute(2, 0, 1) gives every head its own (lq, lk) bias.",
    ),
    "bias_ignores_scale": (
        "the scale argument ignored: 1/sqrt(D) used whatever scale is passed",
        "use 1/sqrt(D) only when scale is None: scale = q.shape[-1] ** -0.5 if scale is None "
        "else scale (T5 passes scale=1.0).",
    ),
    "bias_transposed": (
        "the buckets of query - memory, or each head's bias transposed, (H, lk, lq) as "
        ".permute(2, 1, 0) gives: where lq = lk the two are the same",
        "bias_table[buckets] is (lq, lk, H): .permute(2, 0, 1) gives (H, lq, lk), which adds to "
        "the scores; and relative_position = memory_position - query_position.",
    ),
    "bias_ignores_max_distance": (
        "max_distance not passed on to relative_position_bucket (its default 128 used)",
        "buckets = relative_position_bucket(relative, bidirectional=bidirectional, "
        "num_buckets=bias_table.shape[0], max_distance=max_distance).",
    ),
    "bias_ignores_bidirectional": (
        "the bidirectional argument not passed on to relative_position_bucket",
        "buckets = relative_position_bucket(relative, bidirectional=bidirectional, "
        "num_buckets=bias_table.shape[0], max_distance=max_distance).",
    ),
    "bias_bucket_arguments": (
        "relative_position_bucket called without num_buckets = the table's size (its default "
        "32, or max_distance passed in num_buckets' place): buckets beyond the table",
        "pass every argument by name: relative_position_bucket(relative, "
        "bidirectional=bidirectional, num_buckets=bias_table.shape[0], "
        "max_distance=max_distance).",
    ),
    "bias_scale_divides": (
        "the scale used as a divisor (q k^T / scale, with sqrt(D) by default): the same for "
        "scale=None and scale=1.0, wrong for any other",
        "scale multiplies the scores: scores = scale * q @ k^T + bias, with scale = "
        "q.shape[-1] ** -0.5 when None.",
    ),
    "bias_scale_default": (
        "scale=None taken as 1.0 (T5's own choice) instead of the default 1/sqrt(D)",
        "if scale is None: scale = q.shape[-1] ** -0.5; T5 passes scale=1.0 itself.",
    ),
}


# ----------------------------------------------------------------------------- relative_position_bucket

RELATIVE_FORBIDDEN = {
    "scaled_dot_product_attention": "write the scores, add the relative term, then softmax and @ v.",
    "multi_head_attention_forward": "write the scores, add the relative term, then softmax and @ v.",
}


def t5_bucket(
    relative_position: int,
    bidirectional=True,
    num_buckets=32,
    max_distance=128,
    sign=1,
    exact_shift=0,
    clamp=True,
    halve_first=True,
    rounding=math.floor,
    exact_below=0,
    log_shift=0,
    future="zero",
    integer_ratio=False,
):
    """One bucket, written out from the T5 paper / Mesh TensorFlow's _relative_position_bucket in
    plain Python; returns (bucket, ambiguous). The knobs give the named mistakes. `ambiguous` is
    True when the log-spaced offset lies within 1e-6 of an integer, where float32 arithmetic may
    round either way. `exact_below` moves only the test n < max_exact (a log-spaced offset
    below 0 is then truncated toward 0, as .long() does), `log_shift` only where the log-spaced
    buckets start; when not bidirectional, `future="abs"` buckets the future by its distance and
    `future="above"` puts it above every past bucket, as the bidirectional branch would."""
    n = -sign * relative_position  # > 0: the memory position is before the query
    bucket = 0
    max_exact = num_buckets // 2 if not halve_first else None
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            bucket += num_buckets  # the future gets the upper half
        n = abs(n)
    elif future == "above":
        bucket += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = abs(n) if future == "abs" else max(n, 0)  # the future shares bucket 0
    if max_exact is None:
        max_exact = num_buckets // 2
    max_exact += exact_shift
    if n < max_exact + exact_below:
        return bucket + n, False
    ratio = max(n // max_exact, 1) if integer_ratio else n / max_exact
    offset = math.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = max_exact + log_shift + (int(offset) if offset < 0 else int(rounding(offset)))
    if clamp:
        large = min(large, num_buckets - 1)
    ambiguous = abs(offset - round(offset)) < 1e-6 and round(offset) > 0
    return bucket + large, ambiguous


def buckets64(relative_position, **knobs):
    """(buckets, ambiguous) for every entry of the LongTensor `relative_position`."""
    pairs = [t5_bucket(int(r), **knobs) for r in relative_position.flatten().tolist()]
    buckets = torch.tensor([b for b, _ in pairs], dtype=torch.long).view(relative_position.shape)
    ambiguous = torch.tensor([a for _, a in pairs], dtype=torch.bool).view(relative_position.shape)
    return buckets, ambiguous


def bucket_suspects(relative_position, bidirectional, num_buckets, max_distance):
    args = dict(num_buckets=num_buckets, max_distance=max_distance)
    suspects = [
        ("bucket_sign", dict(sign=-1, bidirectional=bidirectional)),
        ("bucket_rounded", dict(rounding=round, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_below=-1, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_below=1, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_shift=1, bidirectional=bidirectional)),
        ("bucket_boundary", dict(exact_shift=-1, bidirectional=bidirectional)),
        # exact buckets 0..max_exact inclusive, the log-spaced ones one further on
        ("bucket_boundary", dict(exact_below=1, log_shift=1, bidirectional=bidirectional)),
        ("bucket_not_clamped", dict(clamp=False, bidirectional=bidirectional)),
        ("bucket_integer_ratio", dict(integer_ratio=True, bidirectional=bidirectional)),
    ]
    if bidirectional:
        suspects.append(("bucket_not_halved", dict(halve_first=False, bidirectional=True)))
    else:
        suspects += [
            ("bucket_always_bidirectional", dict(bidirectional=True)),
            ("bucket_always_bidirectional", dict(bidirectional=True, sign=-1)),
            ("bucket_always_bidirectional", dict(bidirectional=False, future="above")),
            ("bucket_future_not_zero", dict(bidirectional=False, future="abs")),
        ]
    found = []
    for key, knobs in suspects:
        try:
            found.append((key, buckets64(relative_position, **args, **knobs)[0]))
        except (ValueError, ZeroDivisionError):  # a knob that makes a log of 0: never a match
            pass
    return found


def expect_buckets(out, relative_position, what, bidirectional, num_buckets, max_distance):
    """Exact comparison of integer buckets, allowing either neighbour where the log-spaced offset
    is an integer up to rounding (float32 arithmetic may land just below it)."""
    ref, ambiguous = buckets64(
        relative_position,
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    expect_tensor(out, what, ref.shape, torch.int64)
    out = out.detach().cpu()
    wrong = (out != ref) & ~(ambiguous & (out == ref - 1))
    if not wrong.any():
        return
    matches = []  # on a small input two mistakes may give the same buckets: name them all
    for key, suspect in bucket_suspects(
        relative_position, bidirectional, num_buckets, max_distance
    ):
        if torch.equal(out, suspect) and key not in matches:
            matches.append(key)
    if matches:
        descriptions = ", or ".join(hint(key)[0] for key in matches)
        raise Mistake(
            f"{what} is off at {int(wrong.sum())} of {wrong.numel()} entries: it matches "
            f"{descriptions}.",
            " ".join(hint(key)[1] for key in matches),
            matches[0],
        )
    index = tuple(torch.nonzero(wrong)[0].tolist())
    raise Mistake(
        f"{what} is off at {int(wrong.sum())} of {wrong.numel()} entries; first at "
        f"relative_position={int(relative_position[index])}: got {int(out[index])}, "
        f"expected {int(ref[index])}.",
        f"compute the bucket of relative_position={int(relative_position[index])} by hand "
        "from the docstring's formula, one step at a time (sign, halving, exact part, log part, "
        "clamp), and print the same steps of your function for that one entry.",
    )


def relative_grid(lq, lk):
    """memory_position - query_position, (lq, lk), queries at lk - lq + i."""
    return torch.arange(lk).unsqueeze(0) - (torch.arange(lq).unsqueeze(-1) + lk - lq)


def bucket_bidirectional(relative_position_bucket, rng):
    """bidirectional: the past in the lower half, the future in the upper half, exact then log"""
    num_buckets, max_distance = 4 * draw(rng, 2, 8), draw(rng, 20, 60)
    span = max_distance + draw(rng, 5, 30)
    relative = torch.arange(-span, span + 1)
    expect_buckets(
        call_unchanged(
            relative_position_bucket,
            {"relative_position": relative},
            bidirectional=True,
            num_buckets=num_buckets,
            max_distance=max_distance,
        ),
        relative,
        f"relative_position_bucket(arange({-span}, {span + 1}), True, {num_buckets}, "
        f"{max_distance})",
        True,
        num_buckets,
        max_distance,
    )


def bucket_unidirectional(relative_position_bucket, rng):
    """bidirectional=False (causal): every bucket for the past, the future in bucket 0"""
    num_buckets, max_distance = 2 * draw(rng, 4, 16), draw(rng, 40, 100)
    lq = draw(rng, 3, 8)
    lk = max_distance + draw(rng, 10, 40)
    relative = relative_grid(lq, lk)
    if draw(rng, 0, 1):
        relative = relative.T.contiguous()  # a few future positions too
    expect_buckets(
        call_unchanged(
            relative_position_bucket,
            {"relative_position": relative},
            bidirectional=False,
            num_buckets=num_buckets,
            max_distance=max_distance,
        ),
        relative,
        f"relative_position_bucket(positions {tuple(relative.shape)}, False, "
        f"{num_buckets}, {max_distance})",
        False,
        num_buckets,
        max_distance,
    )


def bucket_defaults_any_shape(relative_position_bucket, rng):
    """the defaults (bidirectional, 32 buckets, max_distance 128) on a (B, Lq, Lk) tensor"""
    boundaries = torch.tensor([0, -7, -8, 7, 8, -128])
    shape = (draw(rng, 1, 3), draw(rng, 2, 6), draw(rng, 3, 9))  # room for every boundary
    relative = torch.randint(-400, 401, shape, generator=rng)
    relative.view(-1)[: len(boundaries)] = boundaries
    expect_buckets(
        call_unchanged(relative_position_bucket, {"relative_position": relative}),
        relative,
        f"relative_position_bucket(positions {shape})",
        True,
        32,
        128,
    )


def bucket_refuses_bad_parameters(relative_position_bucket, rng):
    """max_distance <= num_buckets // 2 (halved when bidirectional) or too few buckets: ValueError"""
    relative = torch.arange(-5, 6)
    num_buckets = 4 * draw(rng, 2, 6)
    max_exact = num_buckets // 4
    expect_clear_error(
        lambda: relative_position_bucket(relative, True, num_buckets, max_exact),
        f"relative_position_bucket(..., bidirectional=True, num_buckets={num_buckets}, "
        f"max_distance={max_exact})",
        'raise ValueError(f"max_distance={max_distance} must exceed max_exact={max_exact}")',
    )
    expect_clear_error(
        lambda: relative_position_bucket(relative, True, 1, 16),
        "relative_position_bucket(..., bidirectional=True, num_buckets=1)",
        'raise ValueError(f"num_buckets={num_buckets} leaves no exact bucket")',
    )


# ----------------------------------------------------------------------------- shaw_relative_attention


def shaw64(
    q,
    k,
    v,
    rel_k,
    rel_v,
    max_relative_position,
    mask=None,
    sign=1,
    offset=True,
    top_left=False,
    use_rel_v=True,
    scale_rel=True,
    fill=-math.inf,
    softmax_dim=-1,
    values_table=None,
    mask_weights=False,
    scale_dim=None,
    rel_v_unmasked=False,
):
    """Shaw et al.'s relative attention in float64, with a gather; the knobs give the mistakes.
    Blocked scores get `fill` (with `mask_weights`, the weights are masked after the softmax
    instead); the output's relative term reads `values_table` (rel_v), with the weights of the
    unmasked scores when `rel_v_unmasked`; the scores are divided by sqrt(`scale_dim`), D by
    default."""
    q, k, v, rel_k = q.double(), k.double(), v.double(), rel_k.double()
    lq, lk, dim = q.shape[-2], k.shape[-2], q.shape[-1]
    pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
    distance = (sign * (torch.arange(lk) - pos_q)).clamp(
        -max_relative_position, max_relative_position
    )
    index = distance + max_relative_position if offset else distance  # negative rows wrap around
    a_k = rel_k[index]  # (Lq, Lk, D)
    relative = torch.einsum("...qd,qkd->...qk", q, a_k)
    scores = (q @ k.transpose(-2, -1) + relative) / math.sqrt(scale_dim or dim)
    if not scale_rel:
        scores = scores + relative * (1 - 1 / math.sqrt(dim))
    weights = masked_softmax(scores, mask, fill, mask_weights, softmax_dim)
    out = weights @ v
    values_table = rel_v if values_table is None else values_table
    if rel_v_unmasked:
        weights_for_rel_v = masked_softmax(scores, None, fill, mask_weights, softmax_dim)
    else:
        weights_for_rel_v = weights
    if rel_v is not None and use_rel_v:
        out = out + torch.einsum(
            "...qk,qkd->...qd", weights_for_rel_v, values_table.double()[index]
        )
    return out, weights


def shaw_suspects(q, k, v, rel_k, rel_v, p, mask=None):
    suspects = [
        ("shaw_index_offset", dict(offset=False)),
        ("shaw_sign", dict(sign=-1)),
        ("shaw_rel_not_scaled", dict(scale_rel=False)),
        ("softmax_wrong_dim", dict(softmax_dim=-2)),
    ]
    if q.shape[-2] != k.shape[-2]:
        suspects.append(("shaw_top_left", dict(top_left=True)))
    if v.shape[-1] != q.shape[-1]:
        suspects.append(("shaw_scaled_by_dv", dict(scale_dim=v.shape[-1])))
    if rel_v is not None:
        suspects.append(("shaw_ignores_rel_v", dict(use_rel_v=False)))
        if rel_v.shape == rel_k.shape:
            suspects.append(("shaw_rel_k_for_values", dict(values_table=rel_k)))
    suspects = [(key, shaw64(q, k, v, rel_k, rel_v, p, mask, **knobs)) for key, knobs in suspects]
    if mask is not None:
        suspects += [
            ("mask_fill_zero", shaw64(q, k, v, rel_k, rel_v, p, mask, fill=0.0)),
            ("inverted_mask", shaw64(q, k, v, rel_k, rel_v, p, ~mask, fill=MASK_MIN)),
            ("ignores_mask", shaw64(q, k, v, rel_k, rel_v, p)),
            ("mask_after_softmax", shaw64(q, k, v, rel_k, rel_v, p, mask, mask_weights=True)),
        ]
        if rel_v is not None:
            suspects.append(
                ("shaw_rel_v_unmasked", shaw64(q, k, v, rel_k, rel_v, p, mask, rel_v_unmasked=True))
            )
    return suspects


def masked_softmax(scores, mask=None, fill=-math.inf, mask_weights=False, dim=-1):
    """softmax(scores) over `dim` with the blocked scores set to `fill`, or, with `mask_weights`
    (the mistake), the blocked weights zeroed after the softmax."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    if mask_weights:
        return torch.softmax(scores, dim=dim) * mask
    return torch.softmax(scores.masked_fill(~mask, fill), dim=dim)


def unpack_pair(result, what, out_shape, weights_shape, dtype):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mistake(
            f"{what} should return a pair (out, weights), got {type(result).__name__}.",
            "end with `return out, weights`.",
            "not_a_pair",
        )
    out, weights = result
    expect_tensor(out, "out", out_shape, dtype)
    expect_tensor(weights, "weights", weights_shape, dtype)
    return out, weights


def call_shaw(shaw_relative_attention, *args, **kwargs):
    """The student's call; an index out of range means the distances were not clipped."""
    try:
        return shaw_relative_attention(*args, **kwargs)
    except Mistake as mistake:
        cause = mistake.__cause__
        if mistake.key == "raised" and (isinstance(cause, IndexError) or "out of" in str(cause)):
            description, fix = hint("shaw_not_clipped")
            raise Mistake(
                f"your function raised {type(cause).__name__}: {cause}: it looks like "
                f"{description}.",
                fix,
                "shaw_not_clipped",
            ) from None
        raise


# The float64 minimum, as course.reference.masks.attention fills blocked scores: a row with every
# key blocked (an inverted mask's) gets uniform weights, where -inf gives NaN.
MASK_MIN = torch.finfo(torch.float64).min


def compare_pair(result, reference, suspects, dtype, masked=False):
    """weights, then out, against the references; with a mask, NaN where the answer is finite
    means a row with every key blocked, which the checks' masks never have: an inverted mask."""
    out, weights = result
    nonfinite = named("inverted_mask") if masked else None
    expect_close(
        weights,
        reference[1],
        dtype,
        what="weights",
        suspects=[(key, wrong[1]) for key, wrong in suspects],
        nonfinite=nonfinite,
    )
    expect_close(
        out,
        reference[0],
        dtype,
        what="out",
        suspects=[(key, wrong[0]) for key, wrong in suspects],
        nonfinite=nonfinite,
    )


def shaw_clipped_self_attention(shaw_relative_attention, rng):
    """self-attention, L > max_relative_position + 1: clipped a^K in the scores, a^V in the output"""
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 1, 3), draw(rng, 2, 8)
    p = draw(rng, 1, 3)
    length = p + draw(rng, 3, 6)
    q, k, v = (randn((batch, heads, length, dim), rng) for _ in range(3))
    rel_k, rel_v = randn((2 * p + 1, dim), rng), randn((2 * p + 1, dim), rng)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p, rel_v=rel_v)
    result = unpack_pair(
        result, "shaw_relative_attention", q.shape, (batch, heads, length, length), q.dtype
    )
    compare_pair(
        result, shaw64(q, k, v, rel_k, rel_v, p), shaw_suspects(q, k, v, rel_k, rel_v, p), q.dtype
    )


def shaw_cross_lengths_no_rel_v(shaw_relative_attention, rng):
    """lq < lk (queries bottom-right), Dv != D, rel_v=None (scores only), float64"""
    dim, dv, p = draw(rng, 2, 6), draw(rng, 1, 5), draw(rng, 1, 4)
    dv += dv >= dim  # 1..6 but not D: a scale of sqrt(Dv) cannot hide
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 2, 6)
    q = randn((2, lq, dim), rng, torch.float64)
    k, v = randn((2, lk, dim), rng, torch.float64), randn((2, lk, dv), rng, torch.float64)
    rel_k = randn((2 * p + 1, dim), rng, torch.float64)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p)
    result = unpack_pair(result, "shaw_relative_attention", (2, lq, dv), (2, lq, lk), torch.float64)
    compare_pair(
        result,
        shaw64(q, k, v, rel_k, None, p),
        shaw_suspects(q, k, v, rel_k, None, p),
        torch.float64,
    )


def shaw_causal_mask(shaw_relative_attention, rng):
    """a causal mask (True = may attend) with lq != lk; a^V added with the masked weights"""
    dim, p = draw(rng, 2, 6), draw(rng, 2, 5)
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 1, 4)
    q = randn((draw(rng, 1, 2), 2, lq, dim), rng)
    k, v = randn((q.shape[0], 2, lk, dim), rng), randn((q.shape[0], 2, lk, dim), rng)
    rel_k, rel_v = randn((2 * p + 1, dim), rng), randn((2 * p + 1, dim), rng)
    mask = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + (lk - lq)
    result = call_shaw(shaw_relative_attention, q, k, v, rel_k, p, rel_v=rel_v, mask=mask)
    result = unpack_pair(result, "shaw_relative_attention", q.shape, (*q.shape[:-1], lk), q.dtype)
    compare_pair(
        result,
        shaw64(q, k, v, rel_k, rel_v, p, mask),
        shaw_suspects(q, k, v, rel_k, rel_v, p, mask),
        q.dtype,
        masked=True,
    )


def shaw_refuses_bad_tables(shaw_relative_attention, rng):
    """a table that is not (2 * max_relative_position + 1, D) raises ValueError"""
    dim, p = draw(rng, 2, 6), draw(rng, 1, 4)
    q, k, v = (randn((1, 4, dim), rng) for _ in range(3))
    expect_clear_error(
        lambda: shaw_relative_attention(q, k, v, randn((2 * p, dim), rng), p),
        f"rel_k of shape {(2 * p, dim)} with max_relative_position={p}",
        'raise ValueError(f"rel_k has shape {tuple(rel_k.shape)}, expected ({2 * P + 1}, {D})")',
    )
    expect_clear_error(
        lambda: shaw_relative_attention(
            q, k, v, randn((2 * p + 1, dim), rng), p, rel_v=randn((2 * p + 1, dim + 1), rng)
        ),
        f"rel_v of shape {(2 * p + 1, dim + 1)} for v with Dv={dim}",
        'raise ValueError(f"rel_v has shape {tuple(rel_v.shape)}, expected ({2 * P + 1}, {Dv})")',
    )


# ----------------------------------------------------------------------------- relative_bias_attention


def bias64(
    bias_table,
    lq,
    lk,
    bidirectional,
    max_distance,
    sign=1,
    top_left=False,
    lookup="permute",
    num_buckets=None,
    bucket_distance=None,
):
    """(H, lq, lk) float64: bias_table[bucket(memory - query), h], from the brute-force buckets.
    The knobs give the mistakes: `lookup` how the (lq, lk, H) lookup becomes (H, lq, lk), and
    the num_buckets and max_distance given to the buckets. None where the buckets fall outside
    the table (the mistake crashes there)."""
    pos_q = torch.arange(lq).unsqueeze(-1) + (0 if top_left else lk - lq)
    relative = sign * (torch.arange(lk) - pos_q)
    try:
        buckets, _ = buckets64(
            relative,
            bidirectional=bidirectional,
            num_buckets=bias_table.shape[0] if num_buckets is None else num_buckets,
            max_distance=max_distance if bucket_distance is None else bucket_distance,
        )
    except (ValueError, ZeroDivisionError):  # parameters with no log-spaced bucket
        return None
    if int(buckets.max()) >= bias_table.shape[0]:
        return None
    table = bias_table.double()  # (num_buckets, H)
    heads = table.shape[1]
    if lookup == "reshape":  # (lq, lk, H) read as (H, lq, lk)
        return table[buckets].reshape(heads, lq, lk)
    if lookup == "table_reshaped":  # the table read as (H, num_buckets)
        return table.reshape(heads, -1)[:, buckets]
    return table[buckets].permute(2, 0, 1)


def relative_bias64(
    q,
    k,
    v,
    bias_table,
    bidirectional=True,
    max_distance=128,
    mask=None,
    scale=None,
    bias=None,
    scale_bias=False,
    fill=-math.inf,
    mask_weights=False,
    **bias_knobs,
):
    q, k, v = q.double(), k.double(), v.double()
    lq, lk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias = (
        bias64(bias_table, lq, lk, bidirectional, max_distance, **bias_knobs)
        if bias is None
        else bias
    )
    scores = q @ k.transpose(-2, -1) * scale + bias * (scale if scale_bias else 1.0)
    weights = masked_softmax(scores, mask, fill, mask_weights)
    return weights @ v, weights


def relative_bias_suspects(q, k, v, bias_table, bidirectional, max_distance, mask=None, scale=None):
    lq, lk, heads = q.shape[-2], k.shape[-2], bias_table.shape[1]
    args = (q, k, v, bias_table, bidirectional, max_distance, mask, scale)
    right = bias64(bias_table, lq, lk, bidirectional, max_distance)
    suspects = []
    if lq == lk:  # .permute(2, 1, 0) fits the scores only here, where it reads like bias_sign
        suspects.append(("bias_transposed", relative_bias64(*args, bias=right.transpose(1, 2))))
    suspects += [
        ("bias_sign", relative_bias64(*args, sign=-1)),
        ("bias_scaled", relative_bias64(*args, scale_bias=True)),
        ("bias_wrong_heads", relative_bias64(*args, bias=right.flip(0))),
        ("bias_wrong_heads", relative_bias64(*args, bias=right.roll(1, 0))),
        ("bias_wrong_heads", relative_bias64(*args, lookup="reshape")),
        ("bias_wrong_heads", relative_bias64(*args, lookup="table_reshaped")),
    ]
    for key, knobs in (
        ("bias_ignores_max_distance", dict(bucket_distance=128)),
        ("bias_bucket_arguments", dict(num_buckets=32)),
        ("bias_bucket_arguments", dict(num_buckets=max_distance, bucket_distance=128)),
    ):
        if bias64(bias_table, lq, lk, bidirectional, max_distance, **knobs) is not None:
            suspects.append((key, relative_bias64(*args, **knobs)))
    if scale is None:
        suspects.append(("bias_scale_default", relative_bias64(*args[:-1], scale=1.0)))
    else:
        suspects += [
            ("bias_ignores_scale", relative_bias64(*args[:-1], scale=None)),
            ("bias_scale_divides", relative_bias64(*args[:-1], scale=1 / scale)),
        ]
    if mask is not None:
        suspects += [
            ("inverted_mask", relative_bias64(*args[:6], ~mask, scale, fill=MASK_MIN)),
            ("ignores_mask", relative_bias64(*args[:6], None, scale)),
            ("mask_after_softmax", relative_bias64(*args, mask_weights=True)),
            ("mask_fill_zero", relative_bias64(*args, fill=0.0)),
        ]
    if lq != lk:
        suspects.append(("bias_top_left", relative_bias64(*args, top_left=True)))
    if not bidirectional:
        suspects.append(
            (
                "bias_ignores_bidirectional",
                relative_bias64(q, k, v, bias_table, True, max_distance, mask, scale),
            )
        )
    if heads > 1:
        suspects.append(("bias_one_head", relative_bias64(*args, bias=right[:1])))
    return suspects


def call_relative_bias(relative_bias_attention, q, k, *args, **kwargs):
    """The student's call; a bucket out of the table's range, or the student's own bucket
    function refusing the parameters, means the bucket arguments were not passed on; scores and
    a bias whose lq and lk do not line up, a bias transposed."""
    try:
        return relative_bias_attention(q, k, *args, **kwargs)
    except Mistake as crash:
        if crash.key == "raised" and ("out of" in crash.message or "ValueError" in crash.message):
            raise named_crash(crash, "bias_bucket_arguments") from None
        lq, lk = q.shape[-2], k.shape[-2]
        lengths = f"({lq})" in crash.message and f"({lk})" in crash.message
        if crash.key == "raised" and "must match the size" in crash.message and lengths:
            raise named_crash(crash, "bias_transposed") from None
        raise


def rb_bidirectional_self(relative_bias_attention, rng):
    """bidirectional, lq = lk, default scale 1/sqrt(D): softmax(q k^T / sqrt(D) + bias_h) v"""
    batch, heads, dim = draw(rng, 1, 2), draw(rng, 2, 4), draw(rng, 2, 8)
    length, num_buckets, max_distance = draw(rng, 6, 14), 4 * draw(rng, 2, 4), draw(rng, 8, 12)
    q, k, v = (randn((batch, heads, length, dim), rng) for _ in range(3))
    table = randn((num_buckets, heads), rng, scale=2.0)
    result = call_relative_bias(relative_bias_attention, q, k, v, table, max_distance=max_distance)
    result = unpack_pair(
        result, "relative_bias_attention", q.shape, (batch, heads, length, length), q.dtype
    )
    compare_pair(
        result,
        relative_bias64(q, k, v, table, True, max_distance),
        relative_bias_suspects(q, k, v, table, True, max_distance),
        q.dtype,
    )


# The scale rb_causal_t5 passes: not T5's own 1.0, where a scale used as a divisor hides, and no
# 1/sqrt(D) of the D it draws, where an ignored scale would.
EXPLICIT_SCALE = 0.3


def rb_causal_t5(relative_bias_attention, rng):
    """a T5-style decoder: bidirectional=False, scale=0.3, a causal mask, lq < lk (bottom-right)"""
    heads, dim = draw(rng, 2, 4), draw(rng, 2, 6)
    lq = draw(rng, 2, 5)
    lk = lq + draw(rng, 4, 10)
    num_buckets, max_distance = 2 * draw(rng, 3, 5), draw(rng, 8, 12)
    q = randn((1, heads, lq, dim), rng, torch.float64)
    k, v = (
        randn((1, heads, lk, dim), rng, torch.float64),
        randn((1, heads, lk, dim + 1), rng, torch.float64),
    )
    table = randn((num_buckets, heads), rng, torch.float64, scale=2.0)
    mask = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + (lk - lq)
    result = call_relative_bias(
        relative_bias_attention,
        q,
        k,
        v,
        table,
        bidirectional=False,
        max_distance=max_distance,
        mask=mask,
        scale=EXPLICIT_SCALE,
    )
    result = unpack_pair(
        result,
        "relative_bias_attention",
        (1, heads, lq, dim + 1),
        (1, heads, lq, lk),
        torch.float64,
    )
    compare_pair(
        result,
        relative_bias64(q, k, v, table, False, max_distance, mask, EXPLICIT_SCALE),
        relative_bias_suspects(q, k, v, table, False, max_distance, mask, EXPLICIT_SCALE),
        torch.float64,
        masked=True,
    )


def rb_refuses_head_mismatch(relative_bias_attention, rng):
    """a bias_table whose number of heads is not q's raises ValueError"""
    heads = draw(rng, 2, 4)
    q, k, v = (randn((1, heads, 5, 4), rng) for _ in range(3))
    table = randn((8, heads + 1), rng)
    expect_clear_error(
        lambda: relative_bias_attention(q, k, v, table, max_distance=16),
        f"bias_table of shape {tuple(table.shape)} for q with {heads} heads",
        'raise ValueError(f"bias_table has {bias_table.shape[1]} heads, q has {q.shape[1]}")',
    )


EXERCISES = {
    "relative_position_bucket": Exercise(
        checks=[
            bucket_bidirectional,
            bucket_unidirectional,
            bucket_defaults_any_shape,
            bucket_refuses_bad_parameters,
        ],
        forbidden=RELATIVE_FORBIDDEN,
    ),
    "shaw_relative_attention": Exercise(
        checks=[
            shaw_clipped_self_attention,
            shaw_cross_lengths_no_rel_v,
            shaw_causal_mask,
            shaw_refuses_bad_tables,
        ],
        forbidden=RELATIVE_FORBIDDEN,
    ),
    "relative_bias_attention": Exercise(
        checks=[rb_bidirectional_self, rb_causal_t5, rb_refuses_head_mismatch],
        forbidden=RELATIVE_FORBIDDEN,
    ),
}
