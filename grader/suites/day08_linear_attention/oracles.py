"""The float64 quadratic form of linear attention and the inputs, memory watch and bad-input
cases that the linear attention exercises share."""

import re

import torch
import torch.nn.functional as F

from grader.harness.checking import Mistake, expect_close, expect_value_error, named
from grader.suites._common import call_unchanged, draw, largest_allocation, randn
from grader.suites.day08_linear_attention.hints import HINTS


def dtype_clash(mistake: Mistake) -> bool:
    """The student's function crashed where a tensor it made (float32 by default) met a float64
    input: a matmul or an in-place op between two dtypes."""
    return (
        mistake.key == "raised"
        and re.search(r"dtype|scalar type|Double|double != float", str(mistake.__cause__))
        is not None
    )


def runs(call) -> bool:
    """Whether `call()` returns without raising (another size or dtype than the one that
    crashed: a crash only some inputs cause names the mistake)."""
    try:
        call()
    except Mistake:
        return False
    return True


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
    scores = scores64(q, k, causal, feature_map, diagonal)
    out = scores @ v.double()
    return out / (scores.sum(-1, keepdim=True) + eps) if normalise else out


def scores64(q, k, causal: bool, feature_map=phi64, diagonal: int = 0) -> torch.Tensor:
    """phi(q) phi(k)^T, (..., Lq, Lk), tril-masked (bottom-right aligned) if causal."""
    scores = feature_map(q.double()) @ feature_map(k.double()).transpose(-2, -1)
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        scores = scores * torch.ones(lq, lk, dtype=torch.float64).tril(diagonal + lk - lq)
    return scores


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
    largest, shape = largest_allocation(call)
    if largest >= L * L:
        description, hint = HINTS["quadratic_memory"]
        raise Mistake(
            f"{name} allocated a tensor of shape {shape} for L = {L}: it looks like {description}.",
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


def la_suspects(q, k, v, causal, eps=1e-6, feature_map=phi64):
    pq, pk = feature_map(q.double()), feature_map(k.double())
    s = [
        ("missing_normaliser", quadratic64(q, k, v, causal, eps, feature_map, normalise=False)),
        ("normaliser_without_eps", quadratic64(q, k, v, causal, 0.0, feature_map)),
        ("eps_outside_division", quadratic64(q, k, v, causal, 0.0, feature_map) + eps),
        ("ignores_feature_map", quadratic64(q, k, v, causal, eps, lambda t: t.double())),
        ("ignores_feature_map", quadratic64(q, k, v, causal, eps, lambda t: phi64(t))),
        ("feature_map_on_v", quadratic64(q, k, feature_map(v.double()), causal, eps, feature_map)),
        (
            "eps_in_features",
            quadratic64(q, k, v, causal, 0.0, lambda t: feature_map(t.double()) + eps),
        ),
        ("q_scaled", quadratic64(q / q.shape[-1] ** 0.5, k, v, causal, eps, feature_map)),
    ]
    scores, v64 = scores64(q, k, causal, feature_map), v.double()
    num, den = scores @ v64, scores.sum(-1, keepdim=True)  # phi(q_i) S_i and phi(q_i) . z_i
    if causal:
        strict = scores64(q, k, True, feature_map, diagonal=-1)  # keys j < i
        num_strict, den_strict = strict @ v64, strict.sum(-1, keepdim=True)
        s += [
            ("future_leak", quadratic64(q, k, v, False, eps, feature_map)),
            ("excludes_self", quadratic64(q, k, v, True, eps, feature_map, diagonal=-1)),
            ("state_not_zero", num / (den + pq.sum(-1, keepdim=True) + eps)),
            ("half_updated_state", num / (den_strict + eps)),
            ("half_updated_state", num_strict / (den + eps)),
            (
                "first_token_twice",
                (num + scores[..., :1] * v64[..., :1, :]) / (den + scores[..., :1] + eps),
            ),
            (  # prefix sums of phi(k_t) v_t^T over D' (dim -2 of (..., L, D', Dv)), not over L
                "cumsum_over_features",
                (pq * pk.cumsum(-1)).sum(-1, keepdim=True) * v64 / (den + eps),
            ),
        ]
        # z's prefix sums over D' too: phi(q_t) . z_t sums over token t alone
        den_own = (pq * pk.cumsum(-1)).sum(-1, keepdim=True)
        s += [
            ("cumsum_over_features", den_own * v64 / (den_own + eps)),  # S over D'
            (  # S over Dv (dim -1 of (..., L, D', Dv))
                "cumsum_over_features",
                (pq * pk).sum(-1, keepdim=True) * v64.cumsum(-1) / (den_own + eps),
            ),
        ]
    else:
        s += [
            ("causal_when_not", quadratic64(q, k, v, True, eps, feature_map)),
            ("wrong_normaliser", num / (den / k.shape[-2] + eps)),
            (
                "wrong_normaliser",
                num / (pq.sum(-1, keepdim=True) * pk.sum((-2, -1))[..., None, None] + eps),
            ),
            (  # the same, averaged over the features
                "wrong_normaliser",
                num / (pq.sum(-1, keepdim=True) * pk.mean(-1).sum(-1)[..., None, None] + eps),
            ),
            ("wrong_normaliser", num / ((pq * pq).sum(-1, keepdim=True) + eps)),
            ("wrong_normaliser", num / (pq.sum(-1, keepdim=True) + eps)),
            ("keys_and_values_unpaired", den * v64.sum(-2, keepdim=True) / (den + eps)),
        ]
    return s


def call_any_rank(fn, q, k, v, **kwargs):
    """fn(q, k, v, **kwargs), with a crash that only batched inputs cause named: code written
    for (L, D) tensors (.T, or positions indexed from the front), or a state S kept as
    (Dv, D') where the inputs have Dv != D."""
    try:  # an output written into v (out = v; out[..., t, :] = ...) is an input changed
        return call_unchanged(fn, {"q": q, "k": k, "v": v}, **kwargs)
    except Mistake as mistake:
        if mistake.key != "raised":
            raise
        first = [t.reshape(-1, *t.shape[-2:])[0] for t in (q, k, v)]  # (L, D) each
        lq, d = q.shape[-2], q.shape[-1]
        if only_runs_when(fn, first, kwargs, {"dv": lq}, {"dv": lq + 1}):
            raise named("normaliser_shape") from None
        if only_runs_when(fn, first, kwargs, {"length": d}, {"length": d + 1}):
            raise named("wrong_normaliser") from None
        if q.dim() > 2 and runs(lambda: fn(*first, **kwargs)):
            raise named("fixed_rank") from None
        if v.shape[-1] > q.shape[-1] and runs(lambda: fn(q, k, v[..., : q.shape[-1]], **kwargs)):
            own_check = isinstance(mistake.__cause__, ValueError)  # the student's own raise
            raise named("dv_must_equal_d" if own_check else "state_orientation") from None
        raise


def resized(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """t with n entries along dim, its own entries repeated or cut."""
    return t.index_select(dim, torch.arange(n) % t.shape[dim])


def only_runs_when(fn, qkv, kwargs, sizes: dict, other: dict) -> bool:
    """fn runs on (L, D) inputs `qkv` resized to `sizes` but crashes at `other`: sizes
    {"dv": n} (v's last dim) or {"length": n} (every length). A crash that only a coincidence of
    two sizes avoids names a broadcast between them (Dv with Lq: a normaliser of shape (Lq,)
    without keepdim; Lk with D: z summed over the features)."""

    def call(dv=None, length=None):
        q, k, v = qkv
        if dv is not None:
            v = resized(v, dv, -1)
        if length is not None:
            q, k, v = (resized(t, length, -2) for t in (q, k, v))
        return fn(q, k, v, **kwargs)

    return runs(lambda: call(**sizes)) and not runs(lambda: call(**other))


def zero_feature_queries(rng, L, dtype=torch.float32):
    q, k, v = inputs(rng, L, dtype, leading=(2,))
    q[..., ::2, :] = -q[..., ::2, :].abs() - 0.1  # relu(q) = 0 on every other query
    return q, k, v


def expect_eps_guard(fn, rng, causal: bool, name: str) -> None:
    q, k, v = zero_feature_queries(rng, draw(rng, 6, 12))
    out = call_unchanged(fn, {"q": q, "k": k, "v": v}, feature_map=relu_map)
    ref = quadratic64(q, k, v, causal, 1e-6, lambda t: torch.relu(t.double()))
    expect_close(
        out,
        ref,
        q.dtype,
        f"{name} with feature_map=relu and queries with phi(q) = 0",
        nonfinite=named("normaliser_without_eps"),
        suspects=la_suspects(q, k, v, causal, 1e-6, lambda t: torch.relu(t.double())),
    )
