"""Checks for day08-linear-attention: feature maps, linear attention (non-causal, recurrent,
chunked) and the Performer's random features.

Oracles: float64 dense quadratic forms, (phi(Q) phi(K)^T, masked for causal) row-normalised, with
phi = F.elu + 1 or the float64 FAVOR+ exponent; softmax attention through
F.scaled_dot_product_attention in float64; statistical checks for the random features (exact
orthogonality within blocks, row norms distributed like chi(d) over many draws).
"""

import math

import torch
import torch.nn.functional as F

import course.reference.linear_attention as library
import course.reference.nystrom as nystrom_library
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    named,
    relative_error,
)
from grader.harness.guard import SDPA, SOFTMAX
from grader.suites import Exercise
from grader.suites._common import draw, randn
from grader.suites.day05_sparse import LargestAllocation

HINTS = {
    "negative_features": (
        "a feature map that can go negative",
        "phi must be positive so that every weight phi(q).phi(k) >= 0 and the "
        "normaliser cannot vanish or flip sign: elu(x) + 1 > 0, and FAVOR+ "
        "uses exp(...), never cos/sin or elu(x) alone.",
    ),
    "missing_normaliser": (
        "phi(q) S without the normaliser phi(q) . z",
        "divide by phi(q_i) . z + eps with z = sum_j phi(k_j): the weights of "
        "each query must sum to 1, as softmax's do.",
    ),
    "normaliser_without_eps": (
        "a division by zero: the normaliser without + eps",
        "a feature map may give phi(q_i) = 0 (e.g. relu): divide by "
        "(phi(q_i) . z + eps), so such a query gets 0, not NaN.",
    ),
    "ignores_feature_map": (
        "the feature_map argument ignored",
        "apply the feature_map you are given to q and k: phi = feature_map.",
    ),
    "causal_when_not": (
        "a causal sum in the non-causal form",
        "linear_attention sums over all keys: S = phi(K)^T V, z = sum of phi(K) "
        "over every position.",
    ),
    "future_leak": (
        "keys from the future: the non-causal sums over all j",
        "query i may only use keys j <= i: update the state with token i, then read "
        "it for query i.",
    ),
    "excludes_self": (
        "keys j < i only: query i does not see its own key",
        "the causal sum includes j = i: add phi(k_i) v_i^T to the state before "
        "reading it for query i (or use tril with diagonal 0).",
    ),
    "future_leak_in_chunk": (
        "future keys inside a chunk: the intra-chunk scores are not masked",
        "inside a chunk, query i sees only the chunk keys up to itself: "
        "mask the (c, c) scores with tril (set the rest to 0) before summing.",
    ),
    "state_not_carried": (
        "chunks that forget the earlier chunks: the state is not carried",
        "after each chunk add phi(K_c)^T V_c to S and phi(K_c) summed to z, and "
        "let every query of the next chunks read S and z.",
    ),
    "drops_last_chunk": (
        "the last, shorter chunk left out when L is not a multiple of chunk_size",
        "there are ceil(L / chunk_size) chunks; the last one ends at L.",
    ),
    "quadratic_memory": (
        "an (L, L)-sized tensor: the quadratic form that linear attention avoids",
        "compute phi(K)^T V first (a D' x Dv matrix) and phi(K) summed, then "
        "multiply by phi(Q): nothing of size L x L.",
    ),
    "no_error_for_bad_input": (
        "bad input accepted silently (mismatched lengths or dims, or a "
        "tensor that is not (..., L, D))",
        "check the shapes first and raise ValueError naming them, e.g. "
        '`raise ValueError(f"k and v must have the same length, got '
        '{tuple(k.shape)} and {tuple(v.shape)}")`.',
    ),
    "not_orthogonal": (
        "random features whose rows are not orthogonal within a block (iid Gaussian rows?)",
        "draw a (dim, dim) Gaussian, take Q from torch.linalg.qr: its dim columns "
        "are orthonormal; stack such blocks, then rescale each row.",
    ),
    "unit_norms": (
        "orthonormal rows left at norm 1",
        "rescale each row by the norm of an independent Gaussian vector of size dim "
        "(a chi(dim) draw), so rows look like Gaussian rows in length.",
    ),
    "fixed_norms": (
        "every row rescaled to the same norm (sqrt(dim)?)",
        "draw each row's norm independently: torch.randn(num_features, dim, "
        "generator=generator).norm(dim=-1), a chi(dim) draw per row.",
    ),
    "not_reproducible": (
        "features that differ for the same generator state",
        "draw every random number from `generator`: torch.randn(..., "
        "generator=generator); never the global random state.",
    ),
    "not_random": (
        "the same features whatever the generator's state",
        "draw from the generator (do not reseed it): two calls in a row give different features.",
    ),
    "missing_norm_term": (
        "exp(w . x) without the - |x|^2 / 2 term",
        "FAVOR+ is exp(w . x - |x|^2 / 2) / sqrt(m): the |x|^2 / 2 term makes "
        "E[phi(x) . phi(y)] = exp(x . y).",
    ),
    "per_key_stabiliser": (
        "a stabiliser taken per key row (is_query=False)",
        "subtracting a different max from each key changes that key's weight; "
        "for keys subtract one max over all rows and features of the slice "
        "(amax over dims (-2, -1)); only queries may use a max per row.",
    ),
    "no_stabiliser": (
        "exp underflowing to 0 for large inputs: no max-stabiliser",
        "subtract the max of the exponent before exp: per row for queries "
        "(is_query=True), over all rows and features for keys; it cancels in the "
        "normalisation.",
    ),
    "error_does_not_fall": (
        "an approximation error that does not fall as num_features grows",
        "use num_features random features (orthogonal_random_features), "
        "positive FAVOR+ features for q and k, and linear attention with "
        "the normaliser.",
    ),
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "softmax attention uses q . k / sqrt(d): scale q and k by d ** -0.25 "
        "before the feature map.",
    ),
    "strided_landmarks": (
        "landmarks taken as strided samples x[..., ::L // m, :] instead of segment means",
        "a landmark summarises its whole segment: average the tokens of "
        "segment i (token t belongs to segment t * m // L), do not pick one.",
    ),
    "wrong_segments": (
        "segments other than t * m // L (e.g. equal segments with the remainder "
        "dropped or added to the last one)",
        "token t belongs to segment floor(t * m / L): segments are contiguous, "
        "cover all L tokens, and differ in size by at most one; "
        "torch.arange(L) * m // L gives every token's segment.",
    ),
    "unscaled_pinv_init": (
        "Z_0 = A^T without the 1 / (||A||_1 ||A||_inf) scaling: the iteration diverges",
        "start from Z_0 = A^T / (||A||_1 ||A||_inf), with ||A||_1 the largest "
        "column sum of |A| and ||A||_inf the largest row sum: it puts every "
        "eigenvalue of A Z_0 in (0, 1], where the iteration converges.",
    ),
    "batch_wide_norms": (
        "one ||A||_1 ||A||_inf for the whole batch (the paper's code takes one "
        "max over every matrix)",
        "scale each (n, n) matrix by its own norms: reduce over the last two "
        "dims only, e.g. a.abs().sum(-2).amax(-1) per matrix.",
    ),
    "wrong_pinv_update": (
        "another update than Z (13I - AZ (15I - AZ (7I - AZ))) / 4 (plain "
        "Newton-Schulz Z (2I - AZ)?)",
        "use the Nyströmformer's update: AZ = A @ Z, then "
        "Z = 0.25 * Z @ (13 I - AZ @ (15 I - AZ @ (7 I - AZ))).",
    ),
    "ignores_iterations": (
        "the iterations / pinv_iterations argument ignored",
        "run exactly the number of update steps you are given (0 returns Z_0).",
    ),
    "transposed_kernel": (
        "a kernel with its factors swapped (e.g. softmax(K~ Q~^T) or softmax "
        "over the landmarks of K Q~^T)",
        "F = softmax(Q K~^T) is (Lq, m), A = softmax(Q~ K~^T) is (m, m), "
        "B = softmax(Q~ K^T) is (m, Lk): queries (or query landmarks) on the "
        "left, softmax over the last axis, the keys'.",
    ),
    "kernel_missing_scale": (
        "scores without the 1/sqrt(d) scale",
        "every one of the three kernels is softmax(scores / sqrt(d)), with d "
        "the head dim of q and k.",
    ),
    "full_attention_matrix": (
        "an (Lq, Lk)-sized tensor: the attention matrix Nyström avoids",
        "multiply right to left: B @ V is (m, Dv), pinv(A) @ that is "
        "(m, Dv), F @ that is (Lq, Dv); never F @ pinv(A) @ B, which is "
        "(Lq, Lk).",
    ),
}

COURSE = "course.reference.linear_attention is the course's library version, for later days: write yours."
LIBRARY = {
    fn: COURSE
    for fn in (
        library.elu_feature_map,
        library.linear_attention,
        library.quadratic_linear_attention,
        library.causal_linear_attention_recurrent,
        library.causal_linear_attention_chunked,
        library.orthogonal_random_features,
        library.favor_feature_map,
        library.performer_attention,
    )
}
FORBIDDEN = {**LIBRARY, **SDPA, **SOFTMAX}


# ----------------------------------------------------------------------------- oracles


def phi64(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x.double()) + 1


def quadratic64(
    q,
    k,
    v,
    causal: bool,
    eps: float = 1e-6,
    feature_map=phi64,
    normalise: bool = True,
    diagonal: int = 0,
) -> torch.Tensor:
    """(phi(q) phi(k)^T, tril-masked if causal) row-normalised, @ v, in float64."""
    scores = feature_map(q.double()) @ feature_map(k.double()).transpose(-2, -1)
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]  # bottom-right aligned when lq != lk
        scores = scores * torch.ones(lq, lk, dtype=torch.float64).tril(diagonal + lk - lq)
    out = scores @ v.double()
    return out / (scores.sum(-1, keepdim=True) + eps) if normalise else out


def inputs(rng, L, dtype=torch.float32, leading=(2, 3), lk=None):
    d = 2 ** draw(rng, 2, 4)
    dv = d + draw(rng, 1, 3)
    lk = L if lk is None else lk
    return (
        randn((*leading, L, d), rng, dtype),
        randn((*leading, lk, d), rng, dtype),
        randn((*leading, lk, dv), rng, dtype),
    )


def relu_map(x):
    return torch.relu(x)


def expect_no_quadratic(call, L: int, name: str) -> None:
    tracker = LargestAllocation()
    with tracker:
        call()
    if tracker.largest >= L * L:
        description, hint = HINTS["quadratic_memory"]
        raise Mistake(
            f"{name} allocated a tensor of shape {tracker.shape} for L = {L}: it looks "
            f"like {description}.",
            hint,
            "quadratic_memory",
        )


def bad_inputs(fn, rng, causal: bool) -> None:
    L = draw(rng, 4, 9)
    q, k, v = inputs(rng, L, leading=(2,))
    cases = [
        ("v one shorter than k", (q, k, v[..., :-1, :])),
        ("k with another head dim than q", (q, k[..., :-1], v)),
        ("1-D q, k, v (no (L, D) layout)", (q[0, 0], k[0, 0], v[0, 0])),
        ("different leading dims", (q, k[:1], v[:1])),
    ]
    if causal:
        cases.append(("fewer queries than keys", (q[..., :-1, :], k, v)))
    for what, args in cases:
        expect_value_error(lambda: fn(*args), f"{what}", "no_error_for_bad_input")


# ----------------------------------------------------------------------------- elu_feature_map


def elu_matches(elu_feature_map, rng):
    """equals elu(x) + 1 elementwise, positive, any shape, float32 and float64"""
    for shape, dtype in [
        ((draw(rng, 2, 9), draw(rng, 2, 9)), torch.float32),
        ((2, draw(rng, 2, 5), 7), torch.float64),
    ]:
        x = randn(shape, rng, dtype, scale=3.0)
        x[..., 0] = -30.0  # elu(-30) + 1 is tiny but positive
        out = elu_feature_map(x)
        if isinstance(out, torch.Tensor) and out.shape == x.shape and (out < 0).any():
            raise named("negative_features")
        expect_close(
            out,
            phi64(x),
            dtype,
            "elu_feature_map(x)",
            suspects=[("negative_features", F.elu(x.double())), ("negative_features", x.double())],
        )


# ----------------------------------------------------------------------------- linear_attention


def la_suspects(q, k, v, causal, eps=1e-6, feature_map=phi64):
    s = [
        ("missing_normaliser", quadratic64(q, k, v, causal, eps, feature_map, normalise=False)),
        ("normaliser_without_eps", quadratic64(q, k, v, causal, 0.0, feature_map)),
        ("ignores_feature_map", quadratic64(q, k, v, causal, eps, lambda t: t.double())),
        ("ignores_feature_map", quadratic64(q, k, v, causal, eps, lambda t: phi64(t))),
    ]
    if causal:
        s += [
            ("future_leak", quadratic64(q, k, v, False, eps, feature_map)),
            ("excludes_self", quadratic64(q, k, v, True, eps, feature_map, diagonal=-1)),
        ]
    else:
        s += [("causal_when_not", quadratic64(q, k, v, True, eps, feature_map))]
    return s


def la_matches(linear_attention, rng):
    """equals the quadratic form (phi(Q) phi(K)^T) V row-normalised, Lq != Lk, Dv != D"""
    L = draw(rng, 5, 20)
    q, k, v = inputs(rng, L, lk=L + draw(rng, 1, 6))
    expect_close(
        linear_attention(q, k, v),
        quadratic64(q, k, v, False),
        q.dtype,
        "linear_attention(q, k, v)",
        la_suspects(q, k, v, False),
    )


def la_feature_map_and_eps(linear_attention, rng):
    """uses the given feature_map and eps; float64 and any leading dims ((L, D), (B, L, D))"""
    for leading in [(), (draw(rng, 1, 3),)]:
        L = draw(rng, 3, 12)
        q, k, v = inputs(rng, L, torch.float64, leading)
        eps = 0.5
        expect_close(
            linear_attention(q, k, v, feature_map=torch.exp, eps=eps),
            quadratic64(q, k, v, False, eps, lambda t: torch.exp(t.double())),
            q.dtype,
            f"linear_attention on {tuple(q.shape)} with feature_map=exp, eps={eps}",
            la_suspects(q, k, v, False, eps, lambda t: torch.exp(t.double())),
        )


def zero_feature_queries(rng, L, dtype=torch.float32):
    q, k, v = inputs(rng, L, dtype, leading=(2,))
    q[..., ::2, :] = -q[..., ::2, :].abs() - 0.1  # relu(q) = 0 on every other query
    return q, k, v


def expect_eps_guard(fn, rng, causal: bool, name: str) -> None:
    q, k, v = zero_feature_queries(rng, draw(rng, 6, 12))
    out = fn(q, k, v, feature_map=relu_map)
    ref = quadratic64(q, k, v, causal, 1e-6, lambda t: torch.relu(t.double()))
    expect_close(
        out,
        ref,
        q.dtype,
        f"{name} with feature_map=relu and queries with phi(q) = 0",
        nonfinite=named("normaliser_without_eps"),
        suspects=la_suspects(q, k, v, causal, 1e-6, lambda t: torch.relu(t.double())),
    )


def la_eps_guard(linear_attention, rng):
    """a query with phi(q) = 0 (relu feature map) gets 0, not NaN: the eps in the normaliser"""
    expect_eps_guard(linear_attention, rng, False, "linear_attention")


def la_linear_memory(linear_attention, rng):
    """never allocates an (L, L)-sized tensor (L = 4096): O(L) memory"""
    L = 4096
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    expect_no_quadratic(lambda: linear_attention(q, k, v), L, "linear_attention")


def la_bad_input(linear_attention, rng):
    """mismatched lengths or dims and wrong layouts raise ValueError"""
    bad_inputs(linear_attention, rng, causal=False)


# ----------------------------------------------------------------------------- causal forms


def causal_matches(fn, rng, name, **kw):
    L = kw.pop("L", None) or draw(rng, 5, 23)
    q, k, v = inputs(rng, L)
    expect_close(
        fn(q, k, v, **kw),
        quadratic64(q, k, v, True),
        q.dtype,
        f"{name}(q, k, v{''.join(f', {a}={b}' for a, b in kw.items())}) with L = {L}",
        la_suspects(q, k, v, True),
    )


def rec_matches(causal_linear_attention_recurrent, rng):
    """equals the masked quadratic form: sums over keys j <= i only"""
    causal_matches(causal_linear_attention_recurrent, rng, "causal_linear_attention_recurrent")


def rec_options(causal_linear_attention_recurrent, rng):
    """feature_map and eps are used; float64, (L, D) and (B, L, D) inputs"""
    for leading in [(), (draw(rng, 1, 3),)]:
        L = draw(rng, 3, 12)
        q, k, v = inputs(rng, L, torch.float64, leading)
        fmap = lambda t: torch.exp(t.double()).to(t.dtype)  # noqa: E731
        expect_close(
            causal_linear_attention_recurrent(q, k, v, feature_map=torch.exp, eps=0.5),
            quadratic64(q, k, v, True, 0.5, fmap),
            q.dtype,
            f"causal_linear_attention_recurrent on {tuple(q.shape)}, feature_map=exp, eps=0.5",
            la_suspects(q, k, v, True, 0.5, fmap),
        )


def rec_eps_guard(causal_linear_attention_recurrent, rng):
    """a query with phi(q) = 0 gets 0, not NaN (eps in the normaliser)"""
    expect_eps_guard(
        causal_linear_attention_recurrent, rng, True, "causal_linear_attention_recurrent"
    )


def rec_bad_input(causal_linear_attention_recurrent, rng):
    """mismatched lengths or dims, wrong layouts and Lq != Lk raise ValueError"""
    bad_inputs(causal_linear_attention_recurrent, rng, causal=True)


def chunk_suspects(q, k, v, chunk_size):
    """What a chunked form with each bug would give."""
    L = q.shape[-2]
    chunk = torch.arange(L) // chunk_size
    same = chunk[:, None] == chunk[None, :]
    before = chunk[:, None] > chunk[None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    scores = phi64(q) @ phi64(k).transpose(-2, -1)

    def with_mask(mask):
        s = scores * mask
        return (s @ v.double()) / (s.sum(-1, keepdim=True) + 1e-6)

    return [
        ("future_leak_in_chunk", with_mask(same | before)),
        ("state_not_carried", with_mask(same & causal)),
    ]


def expect_chunked(fn, q, k, v, chunk_size, what):
    L = q.shape[-2]
    ref = quadratic64(q, k, v, True)
    out = fn(q, k, v, chunk_size=chunk_size)
    if isinstance(out, torch.Tensor) and out.dim() == ref.dim() and out.shape[-2] < L:
        raise named("drops_last_chunk")
    expect_close(
        out, ref, q.dtype, what, chunk_suspects(q, k, v, chunk_size) + la_suspects(q, k, v, True)
    )


def chunked_matches(causal_linear_attention_chunked, rng):
    """equals the masked quadratic form for L not a multiple of chunk_size"""
    chunk_size = draw(rng, 3, 7)
    L = chunk_size * draw(rng, 2, 5) + draw(rng, 1, chunk_size - 1)
    q, k, v = inputs(rng, L)
    expect_chunked(
        causal_linear_attention_chunked,
        q,
        k,
        v,
        chunk_size,
        f"causal_linear_attention_chunked(q, k, v, chunk_size={chunk_size}) with L = {L}",
    )


def chunked_extremes(causal_linear_attention_chunked, rng):
    """chunk_size 1, chunk_size >= L, L a multiple of chunk_size; float64, (L, D)"""
    chunk_size = draw(rng, 2, 5)
    L = chunk_size * draw(rng, 2, 4)
    for leading, dtype in [((), torch.float64), ((2,), torch.float32)]:
        q, k, v = inputs(rng, L, dtype, leading)
        for size in (1, chunk_size, L + draw(rng, 0, 3)):
            expect_chunked(
                causal_linear_attention_chunked,
                q,
                k,
                v,
                size,
                f"causal_linear_attention_chunked(q, k, v, chunk_size={size}) with L = {L}, {dtype}",
            )


def chunked_options(causal_linear_attention_chunked, rng):
    """feature_map and eps are used; a query with phi(q) = 0 gets 0, not NaN"""
    L = draw(rng, 7, 15)
    q, k, v = inputs(rng, L, torch.float64, (2,))
    fmap = lambda t: torch.exp(t.double())  # noqa: E731
    expect_close(
        causal_linear_attention_chunked(q, k, v, chunk_size=4, feature_map=torch.exp, eps=0.5),
        quadratic64(q, k, v, True, 0.5, fmap),
        q.dtype,
        "causal_linear_attention_chunked(q, k, v, 4, feature_map=exp, eps=0.5)",
        la_suspects(q, k, v, True, 0.5, fmap),
    )
    expect_eps_guard(
        lambda *a, **kw: causal_linear_attention_chunked(*a, chunk_size=4, **kw),
        rng,
        True,
        "causal_linear_attention_chunked",
    )


def chunked_linear_memory(causal_linear_attention_chunked, rng):
    """never allocates an (L, L)-sized tensor (L = 4096, chunk_size 64)"""
    L = 4096
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    expect_no_quadratic(
        lambda: causal_linear_attention_chunked(q, k, v, chunk_size=64),
        L,
        "causal_linear_attention_chunked",
    )


def chunked_bad_input(causal_linear_attention_chunked, rng):
    """mismatched lengths or dims, wrong layouts, Lq != Lk and chunk_size < 1 raise ValueError"""
    bad_inputs(causal_linear_attention_chunked, rng, causal=True)
    q, k, v = inputs(rng, 6)
    expect_value_error(
        lambda: causal_linear_attention_chunked(q, k, v, chunk_size=0),
        "chunk_size=0",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- orthogonal_random_features


def chi_moments(d: int) -> tuple:
    mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    return mean, d - mean**2


def orf_blocks(orthogonal_random_features, rng):
    """(num_features, dim); rows orthogonal within each block of dim rows (exactly), last block partial"""
    d = draw(rng, 3, 12)
    m = d * draw(rng, 1, 3) + draw(rng, 1, d - 1)
    g = torch.Generator().manual_seed(draw(rng, 0, 10**6))
    w = orthogonal_random_features(m, d, g)
    expect_tensor(w, f"orthogonal_random_features({m}, {d}, generator)", (m, d), torch.float32)
    w = w.double()
    norms = w.norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        raise named("unit_norms")
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        off = gram - torch.diag(torch.diagonal(gram))
        if off.abs().max() > 1e-4 * gram.diagonal().max():
            description, hint = HINTS["not_orthogonal"]
            raise Mistake(
                f"rows {start} .. {start + block.shape[0] - 1} are not orthogonal: the "
                f"largest |w_i . w_j| / |w|^2 is {(off.abs().max() / gram.diagonal().max()).item():.2f}; "
                f"it looks like {description}.",
                hint,
                "not_orthogonal",
            )


def orf_norms_chi(orthogonal_random_features, rng):
    """row norms distributed like chi(dim): mean and variance over many rows, within 5 sigma"""
    d = draw(rng, 4, 16)
    g = torch.Generator().manual_seed(draw(rng, 0, 10**6))
    norms = torch.cat(
        [orthogonal_random_features(4 * d, d, g).double().norm(dim=-1) for _ in range(25)]
    )
    n = norms.numel()
    mean, var = chi_moments(d)
    if norms.std() < 1e-3 * norms.mean():
        raise named("unit_norms") if abs(norms.mean() - 1) < 1e-3 else named("fixed_norms")
    # chi is well concentrated: the fourth central moment is below 3 var^2 for d >= 4
    mean_sigma, var_sigma = math.sqrt(var / n), var * math.sqrt(2 / (n - 1)) * 1.5
    if (
        abs(norms.mean().item() - mean) > 5 * mean_sigma
        or abs(norms.var().item() - var) > 5 * var_sigma
    ):
        description, hint = HINTS["fixed_norms"]
        raise Mistake(
            f"over {n} rows with dim {d} the norms have mean {norms.mean().item():.3f} and "
            f"variance {norms.var().item():.3f}; chi({d}) has mean {mean:.3f} and variance "
            f"{var:.3f}.",
            hint,
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
    expect_tensor(a, f"orthogonal_random_features({m}, {d}, generator)", (m, d), torch.float32)
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
        raise Mistake(
            f"{what} is not proportional to exp(w . x - |x|^2 / 2) along the features: "
            f"log(phi) - (w . x - |x|^2/2) varies by "
            f"{(log_ratio.amax(-1) - log_ratio.amin(-1)).max().item():.1e} within a row.",
            "phi_i(x) = exp(w_i . x - |x|^2 / 2 - s) / sqrt(m), with w_i the rows of projection.",
            "wrong_values",
        )
    if not is_query and not constant_over((-2, -1)):
        alt = log_ratio - (x.double() ** 2).sum(-1, keepdim=True) / 2
        if (alt.amax((-2, -1)) - alt.amin((-2, -1))).max().item() <= tol:
            raise named("missing_norm_term")
        raise named("per_key_stabiliser")


def favor_matches(favor_feature_map, rng):
    """exp(w . x - |x|^2/2 - s) / sqrt(m), positive; s per row for queries, per slice for keys"""
    d, m, L = draw(rng, 4, 16), draw(rng, 8, 40), draw(rng, 5, 20)
    w = randn((m, d), rng, torch.float64)
    for dtype in (torch.float32, torch.float64):
        x = randn((2, 3, L, d), rng, dtype, scale=0.7)
        expect_favor(
            favor_feature_map(x, w.to(dtype), is_query=True),
            x,
            w,
            True,
            f"favor_feature_map(x, projection, is_query=True), {dtype}",
        )
        expect_favor(
            favor_feature_map(x, w.to(dtype)),
            x,
            w,
            False,
            f"favor_feature_map(x, projection) (keys), {dtype}",
        )


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
    top = out.double().amax(-1) * math.sqrt(w.shape[0])  # the stabilised max feature is exp(0)
    if (top - 1).abs().max() > 1e-4:
        raise Mistake(
            f"{what}: the largest feature of a query row is {top.min().item():.3g} / sqrt(m), "
            "expected exactly 1 / sqrt(m) (exp(0) after subtracting the row's max).",
            HINTS["no_stabiliser"][1],
            "no_stabiliser",
        )


def favor_bad_input(favor_feature_map, rng):
    """x and projection with different D raise ValueError"""
    x, w = randn((4, 6), rng), randn((10, 5), rng)
    expect_value_error(
        lambda: favor_feature_map(x, w),
        "x (4, 6) with projection (10, 5)",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- performer_attention


def performer_error(performer_attention, q, k, v, m, seeds) -> float:
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    errors = [
        relative_error(
            performer_attention(
                q, k, v, num_features=m, generator=torch.Generator().manual_seed(s)
            ),
            ref,
        )
        for s in seeds
    ]
    return sum(errors) / len(errors)


def performer_shapes(performer_attention, rng):
    """(..., Lq, Dv) in the input's dtype; the same generator state gives the same output"""
    L = draw(rng, 5, 20)
    q, k, v = inputs(rng, L, lk=L + draw(rng, 1, 5))
    seed = draw(rng, 0, 10**6)
    a = performer_attention(q, k, v, num_features=32, generator=torch.Generator().manual_seed(seed))
    expect_tensor(
        a, "performer_attention(q, k, v, 32, generator)", (*q.shape[:-1], v.shape[-1]), q.dtype
    )
    b = performer_attention(q, k, v, num_features=32, generator=torch.Generator().manual_seed(seed))
    if not torch.equal(a, b):
        raise named("not_reproducible")
    x64 = [t.double() for t in (q, k, v)]
    expect_tensor(
        performer_attention(*x64, num_features=8, generator=torch.Generator().manual_seed(seed)),
        "performer_attention on float64",
        (*q.shape[:-1], v.shape[-1]),
        torch.float64,
    )


def performer_converges(performer_attention, rng):
    """approximates softmax attention: the error falls as num_features grows (16 -> 512)"""
    L, d = draw(rng, 24, 48), 2 ** draw(rng, 3, 4)
    q, k, v = (randn((2, L, d), rng, torch.float64, scale=s) for s in (0.5, 0.5, 1.0))
    seeds = [draw(rng, 0, 10**6) for _ in range(2)]
    small, large = (
        performer_error(performer_attention, q, k, v, 16, seeds),
        performer_error(performer_attention, q, k, v, 512, seeds),
    )
    unscaled = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    out = performer_attention(
        q, k, v, num_features=512, generator=torch.Generator().manual_seed(seeds[0])
    )
    ref = F.scaled_dot_product_attention(q, k, v)
    if (
        relative_error(out, unscaled) < relative_error(out, ref)
        and relative_error(ref, unscaled) > 0.1
    ):
        raise named("missing_scale")
    if not (large < 0.75 * small and large < 0.5):
        description, hint = HINTS["error_does_not_fall"]
        raise Mistake(
            f"relative error against softmax attention: {small:.3f} with 16 features, "
            f"{large:.3f} with 512 (expected below 0.5 and falling): it looks like "
            f"{description}.",
            hint,
            "error_does_not_fall",
        )


def performer_bad_input(performer_attention, rng):
    """mismatched lengths or dims and wrong layouts raise ValueError"""
    bad_inputs(lambda q, k, v: performer_attention(q, k, v, num_features=8), rng, causal=False)


# ----------------------------------------------------------------------------- advanced: Nyström

NYSTROM_COURSE = (
    "course.reference.nystrom is the course's library version, for later days: write yours."
)
NYSTROM_LIBRARY = {
    fn: NYSTROM_COURSE
    for fn in (
        nystrom_library.segment_bounds,
        nystrom_library.landmarks,
        nystrom_library.iterative_pinv,
        nystrom_library.nystrom_attention,
    )
}
INVERSES = {
    name: "write the iteration yourself: Z_0 = A^T / (||A||_1 ||A||_inf), then the "
    "update, with matrix products only."
    for name in (
        "linalg_pinv",
        "pinverse",
        "linalg_inv",
        "inverse",
        "linalg_solve",
        "linalg_lstsq",
        "linalg_svd",
        "svd",
        "linalg_eig",
        "linalg_eigh",
    )
}
PINV_FORBIDDEN = {**LIBRARY, **NYSTROM_LIBRARY, **INVERSES}
NYSTROM_FORBIDDEN = {**PINV_FORBIDDEN, **SDPA}  # softmax itself is allowed: three small kernels


def segment_ids(L: int, m: int) -> torch.Tensor:
    return torch.arange(L) * m // L


def landmarks64(x: torch.Tensor, m: int) -> torch.Tensor:
    """Segment means in float64, one segment at a time (token t in segment t * m // L)."""
    x = x.double()
    seg = segment_ids(x.shape[-2], m)
    return torch.stack([x[..., seg == i, :].mean(-2) for i in range(m)], dim=-2)


def landmark_suspects(x: torch.Tensor, m: int) -> list:
    """What the usual wrong landmarks give: strided samples, equal segments of L // m tokens."""
    x = x.double()
    L = x.shape[-2]
    step = L // m
    starts = torch.tensor([(i * L + m - 1) // m for i in range(m)])
    suspects = [
        ("strided_landmarks", x[..., ::step, :]),
        ("strided_landmarks", x[..., ::step, :][..., :m, :]),
        ("strided_landmarks", x[..., starts, :]),
    ]
    if L % m:
        equal = x[..., : m * step, :].reshape(*x.shape[:-2], m, step, x.shape[-1]).mean(-2)
        last = torch.cat(
            [equal[..., :-1, :], x[..., (m - 1) * step :, :].mean(-2, keepdim=True)], -2
        )
        ceil = -(-L // m)
        idx = torch.arange(L) // ceil
        padded = torch.stack(
            [
                x[..., idx == i, :].mean(-2) if (idx == i).any() else x[..., :1, :].mean(-2) * 0
                for i in range(m)
            ],
            dim=-2,
        )
        suspects += [
            ("wrong_segments", equal),
            ("wrong_segments", last),
            ("wrong_segments", padded),
        ]
    return suspects


def pinv64(
    a: torch.Tensor, iterations: int, init: str = "paper", update: str = "nystrom"
) -> torch.Tensor:
    """The Nyströmformer's iteration in float64 (or a wrong variant, for the suspects)."""
    a = a.double()
    eye = torch.eye(a.shape[-1], dtype=torch.float64)
    col, row = a.abs().sum(-2).amax(-1), a.abs().sum(-1).amax(-1)
    if init == "paper":
        z = a.transpose(-2, -1) / (col * row)[..., None, None]
    elif init == "batch":
        z = a.transpose(-2, -1) / (col.max() * row.max())
    else:
        z = a.transpose(-2, -1).clone()
    for _ in range(iterations):
        az = a @ z
        if update == "nystrom":
            z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
        else:
            z = z @ (2 * eye - az)
    return z


def pinv_suspects(a: torch.Tensor, iterations: int, given: int = None) -> list:
    s = [
        ("batch_wide_norms", pinv64(a, iterations, "batch")),
        ("wrong_pinv_update", pinv64(a, iterations, update="newton")),
        ("wrong_pinv_update", pinv64(a, 2 * iterations, update="newton")),
    ]
    with torch.no_grad():
        unscaled = pinv64(a, iterations, "none")
    if torch.isfinite(unscaled).all():
        s.append(("unscaled_pinv_init", unscaled))
    if given is not None:
        s += [("ignores_iterations", pinv64(a, n)) for n in (6, 0) if n != given]
    return s


def well_conditioned(rng, leading, n, dtype, scale=1.0) -> torch.Tensor:
    """Matrices U diag(s) W^T with singular values s in [1, 4] times `scale`."""
    u = torch.linalg.qr(randn((*leading, n, n), rng, torch.float64))[0]
    w = torch.linalg.qr(randn((*leading, n, n), rng, torch.float64))[0]
    s = 1 + 3 * torch.rand((*leading, n), generator=rng, dtype=torch.float64)
    return (scale * (u * s[..., None, :]) @ w.transpose(-2, -1)).to(dtype)


def softmax64(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.double(), dim=-1)


def nystrom64(q, k, v, m, iterations, landmark=landmarks64, scale=True, swap=(), pinv=None):
    """softmax(Q K~^T/sqrt d) pinv(softmax(Q~ K~^T/sqrt d)) softmax(Q~ K^T/sqrt d) V in float64;
    `swap` names kernels ('F', 'A', 'B') computed with their factors swapped (a suspect)."""
    q, k, v = q.double(), k.double(), v.double()
    s = q.shape[-1] ** -0.5 if scale else 1.0
    qt, kt = landmark(q, m), landmark(k, m)
    f = (
        softmax64(kt @ q.transpose(-2, -1) * s).transpose(-2, -1)
        if "F" in swap
        else softmax64(q @ kt.transpose(-2, -1) * s)
    )
    a = (
        softmax64(kt @ qt.transpose(-2, -1) * s)
        if "A" in swap
        else softmax64(qt @ kt.transpose(-2, -1) * s)
    )
    b = (
        softmax64(k @ qt.transpose(-2, -1) * s).transpose(-2, -1)
        if "B" in swap
        else softmax64(qt @ k.transpose(-2, -1) * s)
    )
    z = pinv(a) if pinv is not None else pinv64(a, iterations)
    return f @ (z @ (b @ v))


def nystrom_suspects(q, k, v, m, iterations) -> list:
    s = [("kernel_missing_scale", nystrom64(q, k, v, m, iterations, scale=False))]
    s += [
        ("transposed_kernel", nystrom64(q, k, v, m, iterations, swap=sw))
        for sw in ("A", "B", "F", "FB", "FAB")
    ]
    s += [
        (
            "strided_landmarks",
            nystrom64(
                q,
                k,
                v,
                m,
                iterations,
                landmark=lambda x, n: x.double()[
                    ..., torch.tensor([(i * x.shape[-2] + n - 1) // n for i in range(n)]), :
                ],
            ),
        ),
        (
            "strided_landmarks",
            nystrom64(
                q,
                k,
                v,
                m,
                iterations,
                landmark=lambda x, n: x.double()[..., :: x.shape[-2] // n, :][..., :n, :],
            ),
        ),
    ]
    s += [("ignores_iterations", nystrom64(q, k, v, m, n)) for n in (6, 0) if n != iterations]
    s += [
        (
            "batch_wide_norms",
            nystrom64(q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations, "batch")),
        ),
        (
            "wrong_pinv_update",
            nystrom64(
                q, k, v, m, iterations, pinv=lambda a: pinv64(a, iterations, update="newton")
            ),
        ),
    ]
    return s


# landmarks


def lm_matches(landmarks, rng):
    """segment means, token t in segment t * m // L; L not a multiple of m; any leading dims"""
    for leading, dtype in [((2, 3), torch.float32), ((), torch.float64)]:
        m = draw(rng, 2, 6)
        L = m * draw(rng, 2, 5) + draw(rng, 1, m - 1)
        x = randn((*leading, L, draw(rng, 2, 9)), rng, dtype)
        expect_close(
            landmarks(x, m),
            landmarks64(x, m),
            dtype,
            f"landmarks(x, {m}) with x {tuple(x.shape)}",
            landmark_suspects(x, m),
        )


def lm_divisible_and_extremes(landmarks, rng):
    """L a multiple of m (equal segments); m = 1 (the mean of all tokens); m = L (x itself)"""
    m = draw(rng, 2, 6)
    L = m * draw(rng, 2, 5)
    x = randn((2, L, draw(rng, 2, 9)), rng)
    for n in (m, 1, L):
        expect_close(
            landmarks(x, n),
            landmarks64(x, n),
            x.dtype,
            f"landmarks(x, {n}) with x {tuple(x.shape)}",
            landmark_suspects(x, n),
        )


def lm_bad_input(landmarks, rng):
    """num_landmarks < 1 or > L, and a 1-D x, raise ValueError"""
    L = draw(rng, 3, 9)
    x = randn((2, L, 4), rng)
    for what, call in [
        ("num_landmarks=0", lambda: landmarks(x, 0)),
        (f"num_landmarks={L + 1} > L = {L}", lambda: landmarks(x, L + 1)),
        ("a 1-D x", lambda: landmarks(x[0, :, 0], 2)),
    ]:
        expect_value_error(call, what, "no_error_for_bad_input")


# iterative_pinv


def ip_iterates(iterative_pinv, rng):
    """Z_0 = A^T / (||A||_1 ||A||_inf) per matrix, then Z (13I - AZ (15I - AZ (7I - AZ))) / 4"""
    n = draw(rng, 2, 8)
    for dtype in (torch.float64, torch.float32):
        a = well_conditioned(
            rng,
            (2, 3),
            n,
            dtype,
            scale=0.5 + 3 * torch.rand((2, 3, 1, 1), generator=rng, dtype=torch.float64),
        )
        for iterations in (0, 1, draw(rng, 2, 3)):
            expect_close(
                iterative_pinv(a, iterations),
                pinv64(a, iterations),
                dtype,
                f"iterative_pinv(a, {iterations}) on {tuple(a.shape)} {dtype}",
                pinv_suspects(a, iterations, iterations),
                nonfinite=named("unscaled_pinv_init"),
            )


def ip_converges(iterative_pinv, rng):
    """converges to torch.linalg.pinv (float64, well-conditioned, 12 steps); the error falls"""
    n = draw(rng, 3, 12)
    a = well_conditioned(
        rng, (2,), n, torch.float64, scale=1 + 2 * torch.rand((), generator=rng).item()
    )
    ref = torch.linalg.pinv(a)
    errors = []
    for iterations in (1, 3, 12):
        out = iterative_pinv(a, iterations)
        expect_tensor(out, f"iterative_pinv(a, {iterations})", a.shape, a.dtype)
        if not torch.isfinite(out).all() or relative_error(out, ref) > 1e3:
            raise named("unscaled_pinv_init")
        errors.append(relative_error(out, ref))
    if not (errors[0] > errors[1] > errors[2] and errors[2] < 1e-9):
        raise Mistake(
            f"relative error against torch.linalg.pinv after 1, 3, 12 steps: "
            f"{errors[0]:.1e}, {errors[1]:.1e}, {errors[2]:.1e} (expected falling, "
            f"below 1e-9 after 12).",
            HINTS["wrong_pinv_update"][1],
            "wrong_pinv_update",
        )


def ip_bad_input(iterative_pinv, rng):
    """a non-square or 1-D a, and iterations < 0, raise ValueError"""
    n = draw(rng, 2, 6)
    a = randn((n, n), rng)
    for what, call in [
        (f"a non-square ({n}, {n + 1}) a", lambda: iterative_pinv(randn((n, n + 1), rng), 3)),
        ("a 1-D a", lambda: iterative_pinv(a[0], 3)),
        ("iterations=-1", lambda: iterative_pinv(a, -1)),
    ]:
        expect_value_error(call, what, "no_error_for_bad_input")


# nystrom_attention


def ny_matches(nystrom_attention, rng):
    """equals F pinv_n(A) B V (float64 oracle): Lq != Lk, L not a multiple of m, any leading dims"""
    for leading, iterations in [((2, 2), draw(rng, 2, 5)), ((), 6)]:
        m = draw(rng, 2, 6)
        L = m * draw(rng, 2, 4) + draw(rng, 1, m - 1)
        q, k, v = inputs(rng, L, torch.float64, leading, lk=L + draw(rng, 1, 5))
        kw = {} if iterations == 6 else {"pinv_iterations": iterations}
        expect_close(
            nystrom_attention(q, k, v, m, **kw),
            nystrom64(q, k, v, m, iterations),
            q.dtype,
            f"nystrom_attention(q, k, v, {m}{''.join(f', {a}={b}' for a, b in kw.items())}) "
            f"with q {tuple(q.shape)}, k {tuple(k.shape)}",
            nystrom_suspects(q, k, v, m, iterations),
        )


def ny_float32(nystrom_attention, rng):
    """float32 in, float32 out, within 1e-4 of the float64 result"""
    m = draw(rng, 3, 8)
    L = m * draw(rng, 2, 6) + draw(rng, 0, m - 1)
    q, k, v = inputs(rng, L)
    what = f"nystrom_attention(q, k, v, {m}) on float32 q {tuple(q.shape)}"
    out = nystrom_attention(q, k, v, m)
    ref = nystrom64(q, k, v, m, 6)
    expect_tensor(out, what, ref.shape, torch.float32)
    error = relative_error(out, ref)
    if error > 1e-4:
        expect_close(out, ref, torch.float32, what, nystrom_suspects(q, k, v, m, 6))


def ny_full_when_m_is_L(nystrom_attention, rng):
    """with m = L every landmark is one token: softmax attention, up to 1e-8 (30 pinv steps)"""
    L = draw(rng, 3, 12)
    q, k, v = inputs(rng, L, torch.float64, (2,))
    full = softmax64(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5) @ v
    out = nystrom_attention(q, k, v, L, pinv_iterations=30)
    expect_tensor(out, f"nystrom_attention(q, k, v, {L}, pinv_iterations=30)", full.shape, q.dtype)
    error = relative_error(out, full)
    if error > 1e-8:
        expect_close(
            out,
            nystrom64(q, k, v, L, 30),
            q.dtype,
            f"nystrom_attention(q, k, v, {L}, pinv_iterations=30) with L = {L}",
            nystrom_suspects(q, k, v, L, 30),
        )
        raise Mistake(
            f"with m = L = {L} the result is {error:.1e} away from softmax attention.",
            HINTS["transposed_kernel"][1],
            "wrong_values",
        )


def ny_linear_memory(nystrom_attention, rng):
    """never allocates an (Lq, Lk)-sized tensor (L = 4096, m = 32): O(L m) memory"""
    L, m = 4096, 32
    q, k, v = (randn((1, 1, L, 8), rng) for _ in range(3))
    tracker = LargestAllocation()
    with tracker:
        nystrom_attention(q, k, v, m)
    if tracker.largest >= L * L:
        description, hint = HINTS["full_attention_matrix"]
        raise Mistake(
            f"nystrom_attention allocated a tensor of shape {tracker.shape} for L = {L}, "
            f"m = {m}: it looks like {description}.",
            hint,
            "full_attention_matrix",
        )


def ny_bad_input(nystrom_attention, rng):
    """mismatched shapes, num_landmarks < 1 or > L, raise ValueError"""
    bad_inputs(lambda q, k, v: nystrom_attention(q, k, v, 2), rng, causal=False)
    L = draw(rng, 4, 9)
    q, k, v = inputs(rng, L, leading=(2,))
    expect_value_error(
        lambda: nystrom_attention(q, k, v, 0), "num_landmarks=0", "no_error_for_bad_input"
    )
    expect_value_error(
        lambda: nystrom_attention(q, k, v, L + 1),
        f"num_landmarks={L + 1} > L = {L}",
        "no_error_for_bad_input",
    )


EXERCISES = {
    "elu_feature_map": Exercise(checks=[elu_matches], forbidden=LIBRARY),
    "linear_attention": Exercise(
        checks=[la_matches, la_feature_map_and_eps, la_eps_guard, la_linear_memory, la_bad_input],
        forbidden=FORBIDDEN,
    ),
    "causal_linear_attention_recurrent": Exercise(
        checks=[rec_matches, rec_options, rec_eps_guard, rec_bad_input], forbidden=FORBIDDEN
    ),
    "causal_linear_attention_chunked": Exercise(
        checks=[
            chunked_matches,
            chunked_extremes,
            chunked_options,
            chunked_linear_memory,
            chunked_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
    "orthogonal_random_features": Exercise(
        checks=[orf_blocks, orf_norms_chi, orf_reproducible], forbidden=LIBRARY
    ),
    "favor_feature_map": Exercise(
        checks=[favor_matches, favor_stabilised, favor_bad_input], forbidden=LIBRARY
    ),
    "performer_attention": Exercise(
        checks=[performer_shapes, performer_converges, performer_bad_input], forbidden=FORBIDDEN
    ),
    "landmarks": Exercise(
        checks=[lm_matches, lm_divisible_and_extremes, lm_bad_input], forbidden=NYSTROM_LIBRARY
    ),
    "iterative_pinv": Exercise(
        checks=[ip_iterates, ip_converges, ip_bad_input], forbidden=PINV_FORBIDDEN
    ),
    "nystrom_attention": Exercise(
        checks=[ny_matches, ny_float32, ny_full_when_m_is_L, ny_linear_memory, ny_bad_input],
        forbidden=NYSTROM_FORBIDDEN,
    ),
}
