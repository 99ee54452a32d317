"""The float64 quadratic form of linear attention and the inputs, memory watch and bad-input
cases that the linear attention exercises share."""

import torch
import torch.nn.functional as F

from grader.harness.checking import Mistake, expect_close, expect_value_error, named
from grader.suites._common import draw, largest_allocation, randn
from grader.suites.day08_linear_attention.hints import HINTS


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
