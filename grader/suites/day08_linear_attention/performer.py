"""Checks for the Performer: orthogonal_random_features, favor_feature_map and
performer_attention."""

import math

import torch
import torch.nn.functional as F

from grader.harness.checking import (
    Mistake,
    expect_tensor,
    expect_value_error,
    named,
)
from grader.suites._common import (
    call_unchanged,
    distinct_sizes,
    draw,
    largest_allocation,
    randn,
)
from grader.suites.day08_linear_attention.hints import HINTS
from grader.suites.day08_linear_attention.oracles import bad_inputs, inputs, runs

# ----------------------------------------------------------------------------- orthogonal_random_features


def chi_moments(d: int) -> tuple:
    mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    return mean, d - mean**2


def expect_features(w, what: str, shape: tuple) -> None:
    """w is a float32 (num_features, dim) tensor: the function has no input to take a dtype
    from, so float32 (torch.randn's default) is the promise."""
    if isinstance(w, torch.Tensor) and tuple(w.shape) == tuple(shape) and w.dtype != torch.float32:
        description, fix = HINTS["features_not_float32"]
        raise Mistake(
            f"{what} has dtype {w.dtype}, expected torch.float32: it looks like {description}.",
            fix,
            "features_not_float32",
        )
    expect_tensor(w, what, shape, torch.float32)


def like_chi(norms: torch.Tensor, d: int) -> bool:
    """The norms' mean and variance are within 5 sigma of chi(d)'s."""
    n = norms.numel()
    mean, var = chi_moments(d)
    # chi is well concentrated: the fourth central moment is below 3 var^2 for d >= 4
    mean_sigma, var_sigma = math.sqrt(var / n), var * math.sqrt(2 / (n - 1)) * 1.5
    return (
        abs(norms.mean().item() - mean) <= 5 * mean_sigma
        and abs(norms.var().item() - var) <= 5 * var_sigma
    )


def whole_blocks_work(orthogonal_random_features, m: int, d: int) -> bool:
    """Whether orthogonal_random_features runs when num_features = m is a multiple of dim."""
    try:
        orthogonal_random_features(m, d, torch.Generator().manual_seed(0))
    except Mistake:
        return False
    return True


def orf_blocks(orthogonal_random_features, rng):
    """(num_features, dim); rows orthogonal within each block of dim rows (exactly), last block partial"""
    d = draw(rng, 3, 12)
    m = d * draw(rng, 1, 3) + draw(rng, 1, d - 1)
    seed = draw(rng, 0, 10**6)
    try:
        w = orthogonal_random_features(m, d, torch.Generator().manual_seed(seed))
    except Mistake as mistake:
        if mistake.key == "raised" and whole_blocks_work(orthogonal_random_features, m - m % d, d):
            raise named("partial_block") from None
        raise
    if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] < m:
        raise named("partial_block")
    expect_features(w, f"orthogonal_random_features({m}, {d}, generator)", (m, d))
    w = w.double()
    norms = w.norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        raise named("unit_norms")
    for start in range(0, m, d):
        expect_orthogonal_rows(w[start : start + d], start)
    expect_fresh_blocks(w, d)


def off_diagonal_ratio(gram: torch.Tensor) -> float:
    """The largest |off-diagonal| entry of a Gram matrix over its largest diagonal one."""
    off = gram - torch.diag(torch.diagonal(gram))
    return (off.abs().max() / gram.diagonal().max()).item()


def expect_orthogonal_rows(block: torch.Tensor, start: int) -> None:
    """The (<= dim, dim) float64 block of rows from `start` has orthogonal rows."""
    ratio = off_diagonal_ratio(block @ block.T)
    if ratio <= 1e-4:
        return
    if (block.triu(1) == 0).all() or (block.tril(-1) == 0).all():
        raise named("qr_r_not_q")  # R (or R^T) is triangular; a Gaussian or Q block never is
    square = block.shape[0] == block.shape[1]
    if square and off_diagonal_ratio(block.T @ block) <= 1e-4:
        raise named("norms_on_columns")  # Q^T diag(n): orthogonal columns, not rows
    description, hint = HINTS["not_orthogonal"]
    raise Mistake(
        f"rows {start} .. {start + block.shape[0] - 1} are not orthogonal: the largest "
        f"|w_i . w_j| / |w|^2 is {ratio:.2f}; it looks like {description}.",
        hint,
        "not_orthogonal",
    )


def expect_fresh_blocks(w: torch.Tensor, d: int) -> None:
    """Each block of d rows is a fresh QR: row i + d is not parallel to row i."""
    directions = w / w.norm(dim=-1, keepdim=True)  # (m, d)
    cosines = (directions[d:] * directions[: len(w) - d]).sum(-1).abs()  # row i + d vs row i
    if (cosines > 1 - 1e-6).all():
        raise named("reused_block")


def orf_norms_chi(orthogonal_random_features, rng):
    """row norms distributed like chi(dim): mean and variance over many rows, within 5 sigma"""
    d = draw(rng, 4, 16)
    g = torch.Generator().manual_seed(draw(rng, 0, 10**6))
    per_call = torch.stack(
        [orthogonal_random_features(4 * d, d, g).double().norm(dim=-1) for _ in range(25)]
    )  # (calls, rows)
    norms = per_call.flatten()
    n = norms.numel()
    mean, var = chi_moments(d)
    if norms.std() < 1e-3 * norms.mean():
        raise named("unit_norms") if abs(norms.mean() - 1) < 1e-3 else named("fixed_norms")
    if (per_call.std(-1) < 1e-6 * per_call.mean(-1)).all():
        raise Mistake(
            f"every call gives all its {4 * d} rows the same norm (a new one each call): "
            "one chi draw shared by every row.",
            HINTS["fixed_norms"][1],
            "fixed_norms",
        )
    if like_chi(norms, d):
        return
    if like_chi(norms.sqrt(), d):
        raise named("squared_norms")
    raise Mistake(
        f"over {n} rows with dim {d} the norms have mean {norms.mean().item():.3f} and "
        f"variance {norms.var().item():.3f}; chi({d}) has mean {mean:.3f} and variance "
        f"{var:.3f}.",
        HINTS["fixed_norms"][1],
        "fixed_norms",
    )


def orf_reproducible(orthogonal_random_features, rng):
    """the same generator state gives the same features; the next call gives new ones"""
    d, m = draw(rng, 3, 10), draw(rng, 3, 25)
    seed = draw(rng, 0, 10**6)
    torch.manual_seed(draw(rng, 0, 10**6))
    a = orthogonal_random_features(m, d, torch.Generator().manual_seed(seed))
    torch.manual_seed(draw(rng, 0, 10**6))
    g = torch.Generator().manual_seed(seed)
    b = orthogonal_random_features(m, d, g)
    expect_features(a, f"orthogonal_random_features({m}, {d}, generator)", (m, d))
    if not torch.equal(a, b):
        raise named("not_reproducible")
    if torch.equal(orthogonal_random_features(m, d, g), b):
        raise named("not_random")


# ----------------------------------------------------------------------------- favor_feature_map


def favor64(x, w):
    """The float64 exponent w . x - |x|^2 / 2, (..., L, m)."""
    x, w = x.double(), w.double()
    return x @ w.T - (x * x).sum(-1, keepdim=True) / 2


def expect_favor(out, x, w, is_query: bool, what: str) -> None:
    m = w.shape[0]
    expect_tensor(out, what, (*x.shape[:-1], m), x.dtype)
    out64 = out.double()
    if not torch.isfinite(out64).all():
        raise Mistake(f"{what} has NaN/inf values.", HINTS["no_stabiliser"][1], "no_stabiliser")
    if (out64 < 0).any():
        raise named("negative_features")
    if (out64 == 0).all(dim=-1).any():
        raise named("no_stabiliser")
    log_ratio = (
        torch.log(out64) - favor64(x, w) + 0.5 * math.log(m)
    )  # -s, constant per row or slice
    tol = 1e-9 if x.dtype == torch.float64 else 2e-3

    def constant_over(dims):
        return (log_ratio.amax(dims) - log_ratio.amin(dims)).max().item() <= tol

    if not constant_over((-1,)):
        alt = log_ratio - (x.double() ** 2).sum(-1, keepdim=True) / 2
        if (alt.amax(-1) - alt.amin(-1)).max().item() <= tol:
            raise named("missing_norm_term")
        if constant_over((-2,)):
            raise named("stabiliser_per_feature" if is_query else "key_stabiliser_per_feature")
        raise Mistake(
            f"{what} is not proportional to exp(w . x - |x|^2 / 2) along the features: "
            f"log(phi) - (w . x - |x|^2/2) varies by "
            f"{(log_ratio.amax(-1) - log_ratio.amin(-1)).max().item():.1e} within a row.",
            "phi_i(x) = exp(w_i . x - |x|^2 / 2 - s) / sqrt(m), with w_i the rows of projection.",
            "wrong_values",
        )
    if not is_query and not constant_over((-2, -1)):
        norm_term = (x.double() ** 2).sum(-1, keepdim=True) / 2
        for key, alt in [
            ("missing_norm_term", log_ratio - norm_term),
            ("norm_term_not_halved", log_ratio + norm_term),
            ("norm_not_squared", log_ratio - norm_term + x.double().norm(dim=-1, keepdim=True) / 2),
        ]:
            if (alt.amax((-2, -1)) - alt.amin((-2, -1))).max().item() <= tol:
                raise named(key)
        raise named("per_key_stabiliser")
    expect_stabilised_max(out64, x, (-1,) if is_query else (-2, -1), m, what)


def expect_stabilised_max(out64, x, dims: tuple, m: int, what: str) -> None:
    """After subtracting the max of the exponent, the largest feature of each row (queries,
    dims (-1,)) or slice (keys, dims (-2, -1)) is exactly exp(0) / sqrt(m)."""
    top = out64.amax(dims) * math.sqrt(m)
    if (top - 1).abs().max().item() <= 1e-4:
        return
    where = "row" if dims == (-1,) else "(...) slice"
    if (top.amax() - top.amin()).item() <= 1e-4 * top.amax().item():
        raise Mistake(
            f"{what}: the largest feature of every {where} is {top.amax().item():.3g} / sqrt(m), "
            "expected exactly 1 / sqrt(m) (exp(0) after subtracting the max): it looks like "
            f"{HINTS['wrong_feature_scale'][0]}.",
            HINTS["wrong_feature_scale"][1],
            "wrong_feature_scale",
        )
    per_feature = out64.amax(-2) * math.sqrt(m)  # a max over the positions, for each feature
    if dims == (-1,) and ((per_feature - 1).abs() <= 1e-4).all():
        raise named("stabiliser_per_feature")
    if ((top - 1).abs() <= 1e-4).any():
        raise named("global_stabiliser")
    # s = max of w . x alone: adding |x|^2 / 2 back to log(phi sqrt(m)) leaves w . x - s, max 0
    without_norm_term = (
        torch.log(out64 * math.sqrt(m)) + (x.double() ** 2).sum(-1, keepdim=True) / 2
    )
    if (without_norm_term.amax(dims).abs() <= 1e-3).all():
        raise named("stabiliser_without_norm_term")
    raise named("no_stabiliser")


def stabilised_over(out: torch.Tensor, dims: tuple, m: int) -> bool:
    """Whether the largest feature over `dims` is exactly exp(0) / sqrt(m) everywhere."""
    top = out.double().amax(dims) * math.sqrt(m)
    return bool(((top - 1).abs() <= 1e-4).all())


def expect_is_query_followed(queries, keys, m: int) -> None:
    """Queries stabilised per slice and keys per row: the two branches of is_query swapped."""
    if not all(isinstance(t, torch.Tensor) and t.shape[-1] == m for t in (queries, keys)):
        return  # expect_favor names the shape
    if (
        stabilised_over(queries, (-2, -1), m)
        and not stabilised_over(queries, (-1,), m)
        and stabilised_over(keys, (-1,), m)
    ):
        raise named("is_query_inverted")


def square_projection_crash(out, x, square) -> str:
    """The mistake behind a crash that a (D, D) projection avoids: |x|^2 summed over the
    positions, (..., 1, D), broadcasts against (..., L, m) only when m = D; else x @ projection."""
    x64 = x.double()
    exponent = x64 @ square.double().T - (x64 * x64).sum(-2, keepdim=True) / 2  # (..., L, D)
    log_ratio = torch.log(out.double()) - exponent  # -s, constant per row if summed over -2
    if torch.isfinite(log_ratio).all() and (log_ratio.amax(-1) - log_ratio.amin(-1)).max() <= 2e-3:
        return "norm_over_positions"
    return "projection_not_transposed"


def call_favor(favor_feature_map, x, w):
    """favor_feature_map(x, w, is_query=True), with a crash that only a non-square projection
    causes named: x @ projection, where x @ projection.T is meant, or |x|^2 over the positions."""
    try:
        return favor_feature_map(x, w, is_query=True)
    except Mistake as mistake:
        square = w[: x.shape[-1]]  # (D, D): both orientations multiply
        if mistake.key == "raised" and runs(lambda: favor_feature_map(x, square, is_query=True)):
            out = favor_feature_map(x, square, is_query=True)
            raise named(square_projection_crash(out, x, square)) from None
        raise


def favor_matches(favor_feature_map, rng):
    """exp(w . x - |x|^2/2 - s) / sqrt(m), positive; s per row for queries, per slice for keys"""
    d, m = distinct_sizes(rng, (4, 16), (8, 40))  # m != D: x @ projection cannot run
    L = draw(rng, 5, 20)
    w = randn((m, d), rng, torch.float64)
    for dtype in (torch.float32, torch.float64):
        x = randn((2, 3, L, d), rng, dtype, scale=0.7)
        x[1] *= 2  # slices of different scales: one stabiliser for all would show
        queries = call_favor(favor_feature_map, x, w.to(dtype))
        keys = favor_feature_map(x, w.to(dtype))
        expect_is_query_followed(queries, keys, m)
        expect_favor(
            queries, x, w, True, f"favor_feature_map(x, projection, is_query=True), {dtype}"
        )
        expect_favor(keys, x, w, False, f"favor_feature_map(x, projection) (keys), {dtype}")


def favor_stabilised(favor_feature_map, rng):
    """large inputs: finite, and no query row underflows to all zeros (the max-stabiliser)"""
    d, m, L = draw(rng, 8, 16), draw(rng, 16, 64), draw(rng, 5, 20)
    w = randn((m, d), rng)
    x = randn((2, L, d), rng)
    x = 25 * x / x.norm(dim=-1, keepdim=True)  # |x|^2 / 2 = 312: exp underflows without s
    what = "favor_feature_map(x, projection, is_query=True) with |x| = 25"
    out = favor_feature_map(x, w, is_query=True)
    expect_tensor(out, what, (*x.shape[:-1], w.shape[0]), x.dtype)
    if not torch.isfinite(out).all():
        raise Mistake(f"{what} has NaN/inf values.", HINTS["no_stabiliser"][1], "no_stabiliser")
    if (out < 0).any():
        raise named("negative_features")
    if (out == 0).all(dim=-1).any():
        raise named("no_stabiliser")
    expect_is_query_followed(out, favor_feature_map(x, w), w.shape[0])
    expect_stabilised_max(out.double(), x, (-1,), w.shape[0], what)


def favor_bad_input(favor_feature_map, rng):
    """x and projection with different D raise ValueError"""
    x, w = randn((4, 6), rng), randn((10, 5), rng)
    expect_value_error(
        lambda: favor_feature_map(x, w),
        "x (4, 6) with projection (10, 5)",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- performer_attention


def run_performer(performer_attention, q, k, v, num_features: int, seed: int) -> torch.Tensor:
    """performer_attention with the features drawn from a generator seeded with `seed`; an
    input scaled in place (q.mul_(scale)) is named here, before it shrinks q on every draw."""
    try:
        return call_unchanged(
            performer_attention,
            {"q": q, "k": k, "v": v},
            num_features=num_features,
            generator=torch.Generator().manual_seed(seed),
        )
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        # orthogonal_random_features returns float32: a float64 q meets a float32 W in a matmul
        if "dtype" in str(mistake.__cause__):
            raise named("features_not_cast") from None
        expect_no_m_by_m_block(performer_attention, q, k, v, seed)
        raise


def performer_shapes(performer_attention, rng):
    """(..., Lq, Dv) in the input's dtype; the output follows the generator's state (same, other)"""
    L = draw(rng, 5, 20)
    q, k, v = inputs(rng, L, lk=L + draw(rng, 1, 5))
    seed = draw(rng, 0, 10**6)
    a = run_performer(performer_attention, q, k, v, 32, seed)  # q scaled in place: named here
    expect_tensor(
        a, "performer_attention(q, k, v, 32, generator)", (*q.shape[:-1], v.shape[-1]), q.dtype
    )
    b = performer_attention(q, k, v, num_features=32, generator=torch.Generator().manual_seed(seed))
    if not torch.equal(a, b):
        raise named("not_reproducible")
    other = torch.Generator().manual_seed(seed + 1)
    if torch.equal(performer_attention(q, k, v, num_features=32, generator=other), a):
        raise named("ignores_generator")
    x64 = [t.double() for t in (q, k, v)]
    expect_tensor(
        run_performer(performer_attention, *x64, 8, seed),
        "performer_attention on float64",
        (*q.shape[:-1], v.shape[-1]),
        torch.float64,
    )


# The Performer's output is random: a right implementation scatters around softmax attention, with
# a spread that falls like 1 / sqrt(num_features). How far one draw may land depends on the
# estimator (scaling only q by 1/sqrt(d) is right in expectation but far noisier), so the check
# takes its tolerance from the student's own draws: the average of DRAWS outputs (one generator
# seed each) must sit within a few of its standard errors of softmax attention.
DRAWS = 12
MANY_FEATURES, FEW_FEATURES = 8192, 128
# Orthogonal features without QR's sign fix (Q * sign(diag R)) are not Haar-random, and the
# orthogonal_random_features check accepts them: on these inputs they move the average by up to
# 0.15 of softmax attention's distance from uniform attention; every mistake the check names
# moves it by 0.55 or more.
BIAS_ALLOWED = 0.25
STANDARD_ERRORS = 2


def performer_inputs(rng) -> tuple:
    """float64 q, k, v on which softmax attention is far from uniform attention and from the
    usual wrong scalings, yet the FAVOR+ estimate stays precise: d = 16, |q'|, |k'| about 1
    after the d^-1/4 scaling, and v that follows k (each query's answer is its own)."""
    L, d = draw(rng, 24, 40), 16
    q = randn((2, L, d), rng, torch.float64, scale=0.8)
    k = randn((2, L, d), rng, torch.float64, scale=0.45)
    k = k - k.mean(-2, keepdim=True)
    noise = randn((2, L, d + 1), rng, torch.float64, scale=0.3)
    v = k @ randn((d, d + 1), rng, torch.float64) + noise  # (2, L, Dv)
    offset = randn((d + 1,), rng, torch.float64)  # uniform attention's answer, for every query
    return q, k, v - v.mean(-2, keepdim=True) + offset


def performer_draws(performer_attention, q, k, v, num_features: int, seeds) -> torch.Tensor:
    """(len(seeds), ..., Lq, Dv): one output per generator seed, in float64."""
    outs = []
    for seed in seeds:
        out = run_performer(performer_attention, q, k, v, num_features, seed)
        expect_tensor(
            out,
            f"performer_attention(q, k, v, {num_features}, generator)",
            (*q.shape[:-1], v.shape[-1]),
            q.dtype,
        )
        outs.append(out.double())
    return torch.stack(outs)


def spread(draws: torch.Tensor) -> float:
    """How far one draw typically lands from the draws' average (the norm of its deviation)."""
    return ((draws - draws.mean(0)).pow(2).sum() / (len(draws) - 1)).sqrt().item()


def within_noise(draws: torch.Tensor, ref: torch.Tensor, size: float) -> bool:
    """Whether the draws' average is `ref`, up to the bias allowed and its own standard error."""
    noise = spread(draws) / math.sqrt(len(draws))
    return (draws.mean(0) - ref).norm().item() <= BIAS_ALLOWED * size + STANDARD_ERRORS * noise


# 64 times the features shrink a right estimate's spread about 8 times; under 2.5 times, the
# noise does not come from the features.
NOISE_FALL = 2.5


# orthogonal_random_features(d, m), its arguments swapped, draws one (m, m) block: a QR of an
# 8192 x 8192 matrix per draw (minutes). A first call with fewer features shows that block while
# it is cheap: a right W never needs more than (m, d), and the features (..., L, m) stay smaller.
PROBE_FEATURES = 1024


def expect_no_m_by_m_block(performer_attention, q, k, v, seed: int) -> None:
    """The swapped call's (m, m) Gaussian block is the largest tensor of a first, cheap call,
    whether the (d, m) features then crash in favor_feature_map or a .T hides their shape."""
    m = PROBE_FEATURES
    generator = torch.Generator().manual_seed(seed)
    _, shape = largest_allocation(
        lambda: runs(lambda: performer_attention(q, k, v, num_features=m, generator=generator))
    )
    if shape is not None and tuple(shape[-2:]) == (m, m):
        description, fix = HINTS["features_args_swapped"]
        raise Mistake(
            f"performer_attention(q, k, v, {m}, generator) with d = {q.shape[-1]} built a "
            f"{tuple(shape)} tensor: it looks like {description}.",
            fix,
            "features_args_swapped",
        )


def performer_converges(performer_attention, rng):
    """unbiased: the average over 12 draws of 8192 features is softmax attention, within its noise"""
    q, k, v = performer_inputs(rng)
    seeds = [draw(rng, 0, 10**6) for _ in range(DRAWS)]
    expect_no_m_by_m_block(performer_attention, q, k, v, seeds[0])
    many = performer_draws(performer_attention, q, k, v, MANY_FEATURES, seeds)
    few = performer_draws(performer_attention, q, k, v, FEW_FEATURES, seeds)
    if torch.equal(few[0], many[0]):
        raise named("ignores_num_features")
    ref = F.scaled_dot_product_attention(q, k, v)
    uniform = v.mean(-2, keepdim=True).expand_as(ref)
    size = (ref - uniform).norm().item()  # how far each query's answer is its own
    if within_noise(many, ref, size):
        return
    d = q.shape[-1]
    average = many.mean(0)
    if spread(many) < 0.05 * size and (average - uniform).norm() < 0.05 * size:
        raise named("features_remapped")
    seen = (
        f"the average of {DRAWS} draws of performer_attention with {MANY_FEATURES} features is "
        f"{(average - ref).norm().item() / size:.2f} away from softmax attention (1 = as far as "
        "uniform attention is)"
    )
    suspects = {
        "scale_squared": F.scaled_dot_product_attention(q, k, v, scale=1.0 / d),
        "separate_features": uniform,
    }
    key, distance = min(
        ((key, (average - suspect).norm().item()) for key, suspect in suspects.items()),
        key=lambda pair: pair[1],
    )
    if distance < 0.5 * (average - ref).norm().item():
        description, fix = HINTS[key]
        raise Mistake(
            f"{seen}: it looks like {description} (the average is {distance / size:.2f} away "
            "from what that gives).",
            fix,
            key,
        )
    # Without the d^-1/4 scaling, inputs scaled by d^-1/4 beforehand give softmax attention; with
    # d^+1/4 where d^-1/4 belongs, inputs scaled by d^-1/2.
    for key, power in [("missing_scale", -0.25), ("scale_inverted", -0.5)]:
        prescaled = performer_draws(
            performer_attention, q * d**power, k * d**power, v, MANY_FEATURES, seeds
        )
        if within_noise(prescaled, ref, size):
            raise named(key)
    if within_noise(many * d**0.25, ref, size):  # the whole output shrunk by d^-1/4
        raise named("v_scaled")
    noise_falls = spread(few) > NOISE_FALL * spread(many)
    key = "error_does_not_fall" if noise_falls else "noise_does_not_fall"
    description, fix = HINTS[key]
    raise Mistake(
        f"{seen}, more than a right estimate's noise explains (one draw scatters by "
        f"{spread(many) / size:.2f}; with {FEW_FEATURES} features by {spread(few) / size:.2f}): "
        f"it looks like {description}.",
        fix,
        key,
    )


def performer_bad_input(performer_attention, rng):
    """mismatched lengths or dims and wrong layouts raise ValueError"""
    bad_inputs(lambda q, k, v: performer_attention(q, k, v, num_features=8), rng, causal=False)
