"""Checks for sinusoidal_positions, apply_rope and alibi_bias: the papers' float64 formulas
written out here, and what each named mistake would give.
"""

import math

import torch

import course.reference.multihead as library
from grader.harness.checking import (
    TOLERANCE,
    Mistake,
    expect_close,
    hint,
    named,
    named_crash,
    naming_crashes,
    relative_error,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day03_multihead.crashes import expect_clear_error

HINTS = {
    # sinusoidal_positions
    "positions_from_one": (
        "positions counted from 1 instead of 0",
        "the first row is position 0: torch.arange(length), so PE[0] = [0, 1, 0, 1, ...].",
    ),
    "sin_cos_halves": (
        "sines in the first half and cosines in the second half (concatenated, not interleaved)",
        "interleave them: even columns 0, 2, 4, ... get sin, odd columns 1, 3, 5, ... get cos.",
    ),
    "sin_cos_swapped": (
        "cos in the even columns and sin in the odd ones",
        "PE[p, 2i] = sin(...), PE[p, 2i+1] = cos(...).",
    ),
    "frequency_exponent": (
        "a frequency exponent of i/dim (or 2i/dim per column) instead of 2i/dim per pair",
        "both columns 2i and 2i+1 share the angle p / 10000^(2i/dim): use "
        "torch.arange(0, dim, 2) / dim as the exponent.",
    ),
    "frequency_inverted": (
        "the angle p * 10000^(2i/dim) (multiplied by the power instead of divided by it)",
        "divide: angle = p / 10000^(2i/dim), i.e. p * 10000^(-2i/dim); frequencies fall from 1 "
        "in the first pair to about 1/10000 in the last.",
    ),
    "integer_exponent": (
        "the exponent 2i/dim computed in integer arithmetic (2i // dim = 0): every pair gets "
        "frequency 1",
        "divide in floating point: torch.arange(0, dim, 2, dtype=torch.float32) / dim (or "
        "true division / of an integer arange, which gives floats).",
    ),
    "positions_one_short": (
        "positions 0..length-2: one row short (arange(length - 1) or arange(1, length))",
        "torch.arange(length) gives the length positions 0, 1, ..., length - 1.",
    ),
    "table_transposed": (
        "the table transposed, (dim, length) instead of (length, dim)",
        "one row per position: build the angles as positions[:, None] * frequencies[None, :], "
        "(length, dim // 2).",
    ),
    "alibi_not_float32": (
        "a bias that is not float32, the default dtype (the function takes no tensor whose "
        "dtype it could follow)",
        "build it in float32: no .double(), and dtype=torch.float32 (or no dtype) where you "
        "create tensors.",
    ),
    "table_not_float32": (
        "a table that is not float32, the default dtype (the function takes no tensor whose "
        "dtype it could follow)",
        "build it in float32: no .double(), and dtype=torch.float32 (or no dtype) where you "
        "create tensors; computing in float64 is fine if you end with .float().",
    ),
    # apply_rope
    "rope_interleaved_pairs": (
        "RoPE pairing features (2i, 2i+1) (the original RoFormer layout) instead of (i, i + D/2)",
        "rotate-half: x1, x2 = x[..., :D//2], x[..., D//2:], and return "
        "cat([x1*cos - x2*sin, x2*cos + x1*sin], dim=-1).",
    ),
    "rope_reversed": (
        "the rotation turned the wrong way (angle -p*theta)",
        "the first half is x1*cos - x2*sin and the second x2*cos + x1*sin.",
    ),
    "rope_frequency": (
        "theta_i = base^(-i/D) (or another exponent) instead of base^(-2i/D)",
        "theta = base ** (-torch.arange(0, D, 2) / D): D/2 frequencies, exponent 2i/D.",
    ),
    "positions_offset": (
        "positions offset by one (p + 1 or p - 1)",
        "use the positions you are given, as they are: angle = positions[..., None] * theta.",
    ),
    "rope_ignores_positions": (
        "the positions argument ignored (every sequence starts at 0)",
        "angle = positions[..., None] * theta, with positions broadcast against x's (..., L).",
    ),
    "rope_ignores_base": (
        "the base argument ignored (10000 used anyway)",
        "theta = base ** (-torch.arange(0, D, 2) / D) with the base you are given.",
    ),
    "not_a_rotation": (
        "a rotation that is not one (a sign slip: the first half x1*cos + x2*sin, or the second "
        "x2*cos - x1*sin), which changes norms and loses the relative property",
        "rotate_half(x) = cat([-x2, x1]): the first half is x1*cos - x2*sin and the second "
        "x2*cos + x1*sin.",
    ),
    "rope_in_place": (
        "x overwritten in place: the caller's tensor changed (a second call then rotates an "
        "already rotated x)",
        "build the result in new tensors (torch.cat of the two halves) and leave x as it is.",
    ),
    "rope_positions_outer": (
        "torch.outer(positions, theta), which takes only 1-D positions: positions (B, 1, L), one "
        "start per sequence (a KV cache's offsets), then fail",
        "angle = positions[..., None] * theta works for positions of any shape (..., L): "
        "(..., L, 1) * (D/2,) -> (..., L, D/2).",
    ),
    "rope_positions_not_unsqueezed": (
        "positions multiplied by theta without positions[..., None]: the angles of (B, 1, L) "
        "positions then broadcast over the wrong axes",
        "angle = positions[..., None] * theta: (..., L, 1) * (D/2,) -> (..., L, D/2), which "
        "broadcasts against x's (..., L, D/2).",
    ),
    "angles_in_float32": (
        "angles (or cos and sin) computed in float32 for a float64 input",
        "make theta and the angles in x's dtype: torch.arange(0, D, 2, dtype=x.dtype), "
        "positions.to(x.dtype).",
    ),
    # alibi_bias
    "alibi_slopes_from_zero": (
        "slopes 2^(-8h/H) for h = 0..H-1 instead of h = 1..H",
        "the first head's slope is 2^(-8/H): torch.arange(1, H + 1).",
    ),
    "alibi_sign": (
        "the bias with the wrong sign: earlier keys must be penalised (negative)",
        "bias = -m_h * (pos_q - pos_k): 0 on the diagonal, negative for earlier keys.",
    ),
    "alibi_top_left": (
        "queries placed at positions 0..lq-1 instead of bottom-right, lk - lq + i",
        "the queries are the newest tokens: pos_q = lk - lq + i, so the last query sits at lk - 1.",
    ),
    "alibi_clipped": (
        "future keys given 0 (or |distance| used), instead of -m * (pos_q - pos_k) everywhere",
        "keep the sign of pos_q - pos_k: future keys get positive values; masking them is the "
        "causal mask's job.",
    ),
    "alibi_not_interpolated": (
        "2^(-8h/H) used for a number of heads that is not a power of two",
        "for H not a power of two, take the slopes of the closest power of two below, n, then "
        "every other slope of 2n, (the ALiBi paper's get_slopes), until there are H.",
    ),
    "alibi_next_power_of_two": (
        "H rounded up to the next power of two, H', and the first H of its slopes 2^(-8h/H') kept",
        "round down, not up: the slopes of the closest power of two below H, n, then every other "
        "slope of 2n until there are H (the ALiBi paper's get_slopes).",
    ),
    "alibi_slopes_reordered": (
        "the right slopes in the wrong order (sorted, or the extra slopes first)",
        "keep the paper's order: the n slopes of the closest power of two below H first, then "
        "the extra ones taken from 2n; do not sort them.",
    ),
    "alibi_query_off_by_one": (
        "the queries one position off (lk - lq + i - 1 or lk - lq + i + 1): a query's own key "
        "then does not get bias 0",
        "pos_q = lk - lq + i: the last query sits at lk - 1, the last key's position, so "
        "bias[:, -1, -1] = 0.",
    ),
    "alibi_floored_exponent": (
        "the exponent -8h/H floored by integer division (-8 * h // H), so the slopes skip to "
        "whole powers of 2 once H > 8",
        "divide with /, not //: slope_h = 2 ** (-8 * h / H).",
    ),
    "alibi_heads_last": (
        "the bias with the heads last, (lq, lk, H), instead of first",
        "one (lq, lk) bias per head, heads first: -slopes.view(-1, 1, 1) * distance gives "
        "(H, lq, lk).",
    ),
    "alibi_wrong_extra_slopes": (
        "the extra slopes (H not a power of two) taken from the wrong entries of the 2n "
        "sequence: they are its even-indexed entries, [0::2], 2^(-8/(2n)), 2^(-24/(2n)), ...",
        "slopes = geometric(n) + geometric(2 * n)[0::2][: H - n], with n the closest power of "
        "two below H (the paper's get_slopes; see the H = 6 example above the exercise).",
    ),
}


POSITIONS_FORBIDDEN = {
    library.sinusoidal_positions: "write the table from torch.arange, sin and cos.",
    library.apply_rope: "write the rotation from torch.arange, cos and sin.",
    library.alibi_bias: "write the bias from torch.arange.",
    library.alibi_slopes: "write the slopes (get_slopes in the paper's code) yourself.",
}

# ----------------------------------------------------------------------------- sinusoidal_positions


def sinusoid64(length, dim, offset=0, exponent="pairs", layout="interleaved"):
    position = torch.arange(length, dtype=torch.float64).unsqueeze(-1) + offset  # (L, 1)
    pair = torch.arange(0, dim, 2, dtype=torch.float64)  # 2i
    if exponent == "pairs":
        angle = position / 10000.0 ** (pair / dim)
    elif exponent == "integer":  # 2i // dim = 0 for every pair
        angle = position / 10000.0 ** (pair // dim)
    else:  # i / dim: the pair index without the factor 2
        angle = position / 10000.0 ** (pair / 2 / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    if layout == "halves":
        return torch.cat([angle.sin(), angle.cos()], dim=-1)[:, :dim]
    sin, cos = (angle.cos(), angle.sin()) if layout == "swapped" else (angle.sin(), angle.cos())
    table[:, 0::2], table[:, 1::2] = sin, cos[:, : dim // 2]
    return table


def sinusoid_suspects(length, dim):
    columns = torch.arange(dim, dtype=torch.float64)
    per_column = torch.arange(length, dtype=torch.float64).unsqueeze(-1) / 10000.0 ** (
        columns / dim
    )
    wrong_exponent = torch.where(columns.long() % 2 == 0, per_column.sin(), per_column.cos())
    return [
        ("positions_from_one", sinusoid64(length, dim, offset=1)),
        ("sin_cos_halves", sinusoid64(length, dim, layout="halves")),
        ("sin_cos_swapped", sinusoid64(length, dim, layout="swapped")),
        ("frequency_exponent", sinusoid64(length, dim, exponent="single")),
        ("frequency_exponent", wrong_exponent),
        ("integer_exponent", sinusoid64(length, dim, exponent="integer")),
        ("positions_one_short", sinusoid64(length - 1, dim)),
        ("table_transposed", sinusoid64(length, dim).T),
    ]


def expect_table(sinusoidal_positions, length, dim):
    """The student's table against the float64 one; the known mistakes named, the dtype too
    (the table is float32, the default: no input says otherwise)."""
    what = f"sinusoidal_positions({length}, {dim})"
    try:
        table = sinusoidal_positions(length, dim)
    except Mistake as crash:
        # a table one row short crashes when it is written into the (length, dim) result
        if crash.key == "raised" and all(f"({n})" in crash.message for n in (length, length - 1)):
            raise named_crash(crash, "positions_one_short") from None
        raise
    expect_float32(table, what, "table_not_float32")
    if inverted_frequencies(table, length, dim):
        description, fix = HINTS["frequency_inverted"]
        raise Mistake(f"{what} is off: it matches {description}.", fix, "frequency_inverted")
    expect_close(
        table,
        sinusoid64(length, dim),
        torch.float32,
        what=what,
        suspects=sinusoid_suspects(length, dim),
    )


def inverted_frequencies(table, length, dim) -> bool:
    """Whether `table` holds the angles p * 10000^(2i/dim) (multiplied, not divided). Those reach
    length * 10000, where one float32 rounding of the angle moves its sin and cos by up to 0.04:
    each entry may be off by a few float32 roundings of its own angle, so that the mistake is
    named whether it was computed in float32 or in float64."""
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != (length, dim):
        return False
    position = torch.arange(length, dtype=torch.float64).unsqueeze(-1)  # (L, 1)
    angle = position * 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wrong = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # (L, dim), interleaved
    if torch.allclose(wrong, sinusoid64(length, dim)):  # one pair, or one position: no difference
        return False
    allowed = 16 * torch.finfo(torch.float32).eps * (1 + angle.repeat_interleave(2, dim=-1))
    return bool(((table.detach().double().cpu() - wrong).abs() <= allowed).all())


def expect_float32(out, what, key):
    """A function with no tensor input returns float32, the default dtype."""
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
        description, fix = HINTS[key]
        raise Mistake(f"{what} has dtype {out.dtype}: it looks like {description}.", fix, key)


def sinusoid_matches_paper(sinusoidal_positions, rng):
    """(length, dim) float32: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...)"""
    length, dim = draw(rng, 5, 40), 2 * draw(rng, 2, 16)
    expect_table(sinusoidal_positions, length, dim)


def sinusoid_wide(sinusoidal_positions, rng):
    """a wider table (dim up to 128): every pair has its own frequency"""
    length, dim = draw(rng, 30, 64), 2 * draw(rng, 16, 64)
    expect_table(sinusoidal_positions, length, dim)


def sinusoid_tiny(sinusoidal_positions, rng):
    """tiny tables: one pair (dim = 2), and one position (length = 1)"""
    for length, dim in [(draw(rng, 2, 9), 2), (1, 2 * draw(rng, 1, 8))]:
        expect_table(sinusoidal_positions, length, dim)


# ----------------------------------------------------------------------------- apply_rope


def rope64(
    x,
    positions,
    base=10000.0,
    pairs="halves",
    sign=1.0,
    exponent=2.0,
    offset=0,
    angle_dtype=torch.float64,
    turn=-1.0,
    unsqueezed=True,
    second_turn=1.0,
):
    """Rotary embedding in float64, rotate-half by default; the knobs give the mistakes (`turn`
    is the sign of x2 * sin in the first half: +1 is rotate-half without its minus;
    `second_turn` that of x1 * sin in the second half)."""
    x = x.double()
    dim = x.shape[-1]
    theta = base ** (-exponent * torch.arange(dim // 2, dtype=angle_dtype) / dim)
    position = sign * (torch.as_tensor(positions).to(angle_dtype) + offset)
    if unsqueezed:
        angle = position.unsqueeze(-1) * theta  # (..., L, D/2)
    else:  # theta[:, None] * positions, then the last two dims swapped
        angle = (theta[:, None] * position).transpose(-1, -2)
    angle = angle.double()
    cos, sin = angle.cos(), angle.sin()
    if pairs == "halves":
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return torch.cat([x1 * cos + turn * x2 * sin, x2 * cos + second_turn * x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def rope_suspects(x, positions, base=10000.0):
    suspects = [
        ("rope_interleaved_pairs", rope64(x, positions, base, pairs="interleaved")),
        ("rope_reversed", rope64(x, positions, base, sign=-1.0)),
        ("rope_frequency", rope64(x, positions, base, exponent=1.0)),
        ("positions_offset", rope64(x, positions, base, offset=1)),
        ("positions_offset", rope64(x, positions, base, offset=-1)),
        ("rope_ignores_base", rope64(x, positions, 10000.0)),
        ("rope_ignores_positions", rope64(x, torch.arange(x.shape[-2]), base)),
        ("not_a_rotation", rope64(x, positions, base, turn=1.0)),
        ("not_a_rotation", rope64(x, positions, base, second_turn=-1.0)),
    ]
    if torch.as_tensor(positions).dim() > 1:
        try:
            suspects.append(
                ("rope_positions_not_unsqueezed", rope64(x, positions, base, unsqueezed=False))
            )
        except RuntimeError:  # those angles do not broadcast against x: the mistake crashes
            pass
    return suspects


def largest_angle(positions) -> float:
    """max |p * theta_i| = max |p| (theta_0 = 1): cos and sin of an angle A computed in any
    dtype carry an absolute error of about A * u, so the tolerance scales with it."""
    return float(torch.as_tensor(positions).abs().max())


def call_rope(apply_rope, x, positions, **kwargs):
    """The student's apply_rope on x, which must come back unchanged (the checks reuse it)."""
    kept = x.clone()
    out = apply_rope(x, positions, **kwargs)
    if not torch.equal(x, kept):
        raise named("rope_in_place")
    return out


def expect_close_float64(out, ref, what, suspects, positions):
    """expect_close for a float64 input, naming float32 arithmetic when only precision is lost."""
    try:
        expect_close(
            out,
            ref,
            torch.float64,
            what=what,
            suspects=suspects,
            condition=largest_angle(positions),
        )
    except Mistake as mistake:
        if mistake.key == "wrong_values" and relative_error(out, ref) <= TOLERANCE[torch.float32]:
            description, hint = HINTS["angles_in_float32"]
            raise Mistake(
                f"{what} is right only to float32 precision (relative error "
                f"{relative_error(out, ref):.1e}): it looks like {description}.",
                hint,
                "angles_in_float32",
            ) from None
        raise


def rope_matches_reference(apply_rope, rng):
    """x (B, H, L, D), positions arange(L): rotate-half at angle p * base^(-2i/D)"""
    length, dim = draw(rng, 3, 12), 2 * draw(rng, 2, 16)
    x = randn((draw(rng, 1, 3), draw(rng, 1, 4), length, dim), rng)
    positions = torch.arange(length)
    expect_close(
        call_rope(apply_rope, x, positions),
        rope64(x, positions),
        x.dtype,
        what="apply_rope(x, positions)",
        suspects=rope_suspects(x, positions),
        condition=largest_angle(positions),
    )


# torch.outer (or torch.ger) refusing positions of more than one dim
OUTER_OF_POSITIONS = ("rope_positions_outer", "RuntimeError", "outer", "Expected 1-D argument")


def rope_broadcast_positions(apply_rope, rng):
    """positions (B, 1, L) with a different start per sequence (a KV cache's offsets)"""
    # as many heads as sequences: angles broadcast over the wrong axes keep the right shape
    batch = heads = draw(rng, 2, 4)
    length, dim = draw(rng, 2, 8), 2 * draw(rng, 2, 12)
    x = randn((batch, heads, length, dim), rng)
    start = torch.randint(1, 40, (batch, 1, 1), generator=rng)
    positions = start + torch.arange(length)  # (B, 1, L)
    with naming_crashes(OUTER_OF_POSITIONS):
        out = call_rope(apply_rope, x, positions)
    expect_close(
        out,
        rope64(x, positions),
        x.dtype,
        what="apply_rope(x, positions) with positions (B, 1, L)",
        suspects=rope_suspects(x, positions),
        condition=largest_angle(positions),
    )


def rope_base_and_float64(apply_rope, rng):
    """float64 in, float64 out, to 1e-10, with base=500 and (L, D) input"""
    length, dim = draw(rng, 3, 10), 2 * draw(rng, 2, 10)
    x = randn((length, dim), rng, dtype=torch.float64)
    positions = torch.randint(0, 100, (length,), generator=rng)
    expect_close_float64(
        call_rope(apply_rope, x, positions, base=500.0),
        rope64(x, positions, 500.0),
        "apply_rope(x, positions, base=500.0)",
        rope_suspects(x, positions, 500.0),
        positions,
    )


def rope_relative_and_norm(apply_rope, rng):
    """norms are preserved and <rope(q, m), rope(k, n)> depends only on m - n"""
    dim = 2 * draw(rng, 2, 16)
    q, k = randn((1, dim), rng, dtype=torch.float64), randn((1, dim), rng, dtype=torch.float64)
    m, n, shift = draw(rng, 0, 50), draw(rng, 0, 50), draw(rng, 1, 200)
    rotated = call_rope(apply_rope, q, torch.tensor([m]))
    expect_close_float64(
        rotated,
        rope64(q, torch.tensor([m])),
        f"apply_rope(q, [{m}])",
        rope_suspects(q, torch.tensor([m])),
        torch.tensor([m]),
    )
    if abs(rotated.norm() - q.norm()) > 1e-10 * q.norm():
        raise Mistake(
            f"apply_rope changed a vector's norm from {q.norm():.6f} to {rotated.norm():.6f}.",
            "a rotation preserves norms: each pair (x1_i, x2_i) "
            "must be rotated by one angle, with cos and sin of the same angle.",
            "not_a_rotation",
        )

    def score(m, n):
        return (
            call_rope(apply_rope, q, torch.tensor([m]))
            * call_rope(apply_rope, k, torch.tensor([n]))
        ).sum()

    before, after = score(m, n), score(m + shift, n + shift)
    if abs(before - after) > 1e-8 * q.norm() * k.norm():
        raise Mistake(
            f"<rope(q, {m}), rope(k, {n})> = {before:.6f} but shifting both positions by "
            f"{shift} gives {after:.6f}.",
            "rotate q and k by angles that grow linearly "
            "with the position, so only the difference m - n survives the dot product.",
            "not_relative",
        )


def rope_refuses_odd_dim(apply_rope, rng):
    """an odd head dimension raises ValueError"""
    dim = 2 * draw(rng, 1, 8) + 1
    x = randn((2, draw(rng, 2, 5), dim), rng)
    expect_clear_error(
        lambda: apply_rope(x, torch.arange(x.shape[-2])),
        f"apply_rope with D={dim}",
        'raise ValueError(f"D={x.shape[-1]} is odd: RoPE rotates pairs of features")',
    )


# ----------------------------------------------------------------------------- alibi_bias


def slopes64(heads, interpolate=True, first=1, extra_from=slice(0, None, 2), floored=False):
    """The ALiBi paper's get_slopes, written out in float64; `extra_from` picks the extra slopes
    out of the 2n sequence (the paper: every other one, from the first); `floored` takes the
    exponents with integer division, -8 * h // n."""

    def geometric(n):
        if floored:
            return [2.0 ** (-8 * h // n) for h in range(first, n + first)]
        return [2.0 ** (-8.0 * h / n) for h in range(first, n + first)]

    if not interpolate or math.log2(heads).is_integer():
        return torch.tensor(geometric(heads), dtype=torch.float64)
    closest = 2 ** math.floor(math.log2(heads))
    extra = geometric(2 * closest)[extra_from][: heads - closest]
    return torch.tensor(geometric(closest) + extra, dtype=torch.float64)


def alibi64(heads, lq, lk, slopes=None, sign=1.0, top_left=False, clip=None, query_shift=0):
    slopes = slopes64(heads) if slopes is None else slopes
    pos_q = torch.arange(lq, dtype=torch.float64).unsqueeze(-1) + (0 if top_left else lk - lq)
    pos_q = pos_q + query_shift
    distance = pos_q - torch.arange(lk, dtype=torch.float64)
    if clip == "zero":
        distance = distance.clamp_min(0)
    elif clip == "abs":
        distance = distance.abs()
    return -sign * slopes.view(-1, 1, 1) * distance


def alibi_suspects(heads, lq, lk):
    suspects = [
        ("alibi_slopes_from_zero", alibi64(heads, lq, lk, slopes64(heads, first=0))),
        ("alibi_sign", alibi64(heads, lq, lk, sign=-1.0)),
        ("alibi_top_left", alibi64(heads, lq, lk, top_left=True)),
        ("alibi_query_off_by_one", alibi64(heads, lq, lk, query_shift=-1)),
        ("alibi_query_off_by_one", alibi64(heads, lq, lk, query_shift=1)),
        ("alibi_clipped", alibi64(heads, lq, lk, clip="zero")),
        ("alibi_clipped", alibi64(heads, lq, lk, clip="abs")),
        ("alibi_not_interpolated", alibi64(heads, lq, lk, slopes64(heads, interpolate=False))),
        (
            "alibi_wrong_extra_slopes",
            alibi64(heads, lq, lk, slopes64(heads, extra_from=slice(1, None, 2))),
        ),
        ("alibi_floored_exponent", alibi64(heads, lq, lk, slopes64(heads, floored=True))),
        (
            "alibi_wrong_extra_slopes",
            alibi64(heads, lq, lk, slopes64(heads, extra_from=slice(None))),
        ),
        ("alibi_heads_last", alibi64(heads, lq, lk).permute(1, 2, 0)),
        ("alibi_slopes_reordered", alibi64(heads, lq, lk, slopes64(heads).sort().values)),
    ]
    if not math.log2(heads).is_integer():  # the slopes of the powers of two around H, mixed up
        right, closest = slopes64(heads), 2 ** math.floor(math.log2(heads))
        suspects += [
            ("alibi_next_power_of_two", alibi64(heads, lq, lk, slopes64(2 * closest)[:heads])),
            ("alibi_slopes_reordered", alibi64(heads, lq, lk, right.roll(heads - closest))),
            ("alibi_slopes_reordered", alibi64(heads, lq, lk, right.sort(descending=True).values)),
        ]
    return suspects


def expect_alibi(alibi_bias, heads, lq, lk):
    """The student's bias against the float64 one; float32, the default dtype."""
    what = f"alibi_bias({heads}, {lq}, {lk})"
    bias = alibi_bias(heads, lq, lk)
    expect_float32(bias, what, "alibi_not_float32")
    try:
        expect_close(
            bias,
            alibi64(heads, lq, lk),
            torch.float32,
            what=what,
            suspects=alibi_suspects(heads, lq, lk),
        )
    except Mistake as mistake:
        odd_extra = slopes64(heads, extra_from=slice(1, None, 2))
        if mistake.key != "alibi_wrong_extra_slopes" or not odd_extra.equal(
            slopes64(heads, floored=True)
        ):
            raise
        # for H = 10 or 12 the extra slopes [1::2] are also what a floored exponent gives
        raise Mistake(
            f"{mistake.message} The same slopes come from {hint('alibi_floored_exponent')[0]}.",
            f"{mistake.hint} And {hint('alibi_floored_exponent')[1]}",
            mistake.key,
        ) from None


def alibi_power_of_two(alibi_bias, rng):
    """H a power of two: slopes 2^(-8h/H), h = 1..H; bias -m_h (pos_q - pos_k), (H, L, L) float32"""
    heads, length = 2 ** draw(rng, 0, 4), draw(rng, 3, 12)
    # and H = 16: up to H = 8 every exponent -8h/H is whole, and -8 * h // H hides
    for count in sorted({heads, 16}):
        expect_alibi(alibi_bias, count, length, length)


def alibi_interpolated_slopes(alibi_bias, rng):
    """H not a power of two (3, 5, 6, 12, ...): the paper's interleaving rule for the slopes"""
    heads = [3, 5, 6, 7, 10, 12, 20, 24][draw(rng, 0, 7)]
    length = draw(rng, 3, 8)
    expect_alibi(alibi_bias, heads, length, length)


def alibi_bottom_right(alibi_bias, rng):
    """lq < lk: query i sits at position lk - lq + i, so its own key (bias 0) is lk - lq + i"""
    heads = draw(rng, 1, 8)
    lq = draw(rng, 1, 5)
    lk = lq + draw(rng, 1, 6)
    expect_alibi(alibi_bias, heads, lq, lk)


EXERCISES = {
    "sinusoidal_positions": Exercise(
        checks=[sinusoid_matches_paper, sinusoid_wide, sinusoid_tiny], forbidden=POSITIONS_FORBIDDEN
    ),
    "apply_rope": Exercise(
        checks=[
            rope_matches_reference,
            rope_broadcast_positions,
            rope_base_and_float64,
            rope_relative_and_norm,
            rope_refuses_odd_dim,
        ],
        forbidden=POSITIONS_FORBIDDEN,
    ),
    "alibi_bias": Exercise(
        checks=[alibi_power_of_two, alibi_interpolated_slopes, alibi_bottom_right],
        forbidden=POSITIONS_FORBIDDEN,
    ),
}
