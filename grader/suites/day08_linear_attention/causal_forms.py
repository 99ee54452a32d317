"""Checks for the causal forms: causal_linear_attention_recurrent and
causal_linear_attention_chunked."""

import torch

from grader.harness.checking import Mistake, expect_close, expect_value_error, named
from grader.suites._common import call_unchanged, draw, randn
from grader.suites.day08_linear_attention.hints import HINTS
from grader.suites.day08_linear_attention.oracles import (
    bad_inputs,
    call_any_rank,
    expect_eps_guard,
    expect_no_quadratic,
    inputs,
    la_suspects,
    phi64,
    quadratic64,
    runs,
)


def expect_stateless(fn, q, k, v, first, rng, **kw) -> None:
    """fn gives `first` again on the same inputs after a call on other inputs of the same shapes:
    a state kept between calls (a module-level cache never reset) would change it."""
    if not isinstance(first, torch.Tensor):
        return
    fn(*(randn(t.shape, rng, t.dtype) for t in (q, k, v)), **kw)
    again = fn(q, k, v, **kw)
    if isinstance(again, torch.Tensor) and again.shape == first.shape:
        if not torch.allclose(again, first, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise named("state_not_reset")


def causal_matches(fn, rng, name, **kw):
    L = kw.pop("L", None) or draw(rng, 5, 23)
    q, k, v = inputs(rng, L)
    out = call_any_rank(fn, q, k, v, **kw)
    expect_stateless(fn, q, k, v, out, rng, **kw)
    expect_close(
        out,
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
            call_unchanged(
                causal_linear_attention_recurrent,
                {"q": q, "k": k, "v": v},
                feature_map=torch.exp,
                eps=0.5,
            ),
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


def chunk_suspects(q, k, v, chunk_size, eps=1e-6, feature_map=phi64):
    """What a chunked form with each bug would give."""
    L = q.shape[-2]
    chunk = torch.arange(L) // chunk_size
    same = chunk[:, None] == chunk[None, :]
    before = chunk[:, None] > chunk[None, :]
    previous = chunk[:, None] == chunk[None, :] + 1  # the chunk just before
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    phi_q, phi_k = feature_map(q.double()), feature_map(k.double())
    scores = phi_q @ phi_k.transpose(-2, -1)

    def with_masks(numerator, denominator=None):
        """The form whose numerator sums the keys of one mask and normaliser another's."""
        denominator = numerator if denominator is None else denominator
        num, den = scores * numerator, scores * denominator
        return (num @ v.double()) / (den.sum(-1, keepdim=True) + eps)

    inside = same & causal
    carried = before.double() + same.double()  # the state read after adding its own chunk
    # S summed from phi(q_j) v_j^T: earlier chunks reach query i through phi(q_i) . phi(q_j)
    query_state = (phi_q @ phi_q.transpose(-2, -1)) * before + scores * inside
    normaliser = (scores * (before | inside)).sum(-1, keepdim=True)
    return [
        ("state_from_queries", (query_state @ v.double()) / (normaliser + eps)),
        ("future_leak_in_chunk", with_masks(same | before)),
        ("future_leak_in_chunk", with_masks(before | (same & causal.T))),  # triu, not tril
        ("state_not_carried", with_masks(inside)),
        ("z_not_carried", with_masks(before | inside, inside)),
        ("z_not_carried", with_masks(before | inside, previous | inside)),  # z = kc.sum(-2)
        ("normaliser_without_chunk", with_masks(before | inside, before)),
        ("state_updated_before_read", with_masks(carried + inside.double())),
    ]


def expect_chunked(fn, q, k, v, chunk_size, what):
    L = q.shape[-2]
    ref = quadratic64(q, k, v, True)
    try:
        out = call_any_rank(fn, q, k, v, chunk_size=chunk_size)
    except Mistake as mistake:
        whole = L - L % chunk_size
        cut = [t[..., :whole, :] for t in (q, k, v)]
        if (
            mistake.key == "raised"
            and L % chunk_size
            and runs(lambda: fn(*cut, chunk_size=chunk_size))
        ):
            raise named("full_size_chunks_only") from None
        raise
    if isinstance(out, torch.Tensor) and out.dim() == ref.dim() and out.shape[-2] < L:
        whole = L - L % chunk_size
        last_dropped = out.shape[-2] == whole and torch.allclose(
            out.double(), ref[..., :whole, :], rtol=1e-4, atol=1e-5
        )
        if out.shape[-2] == L - L // chunk_size and not last_dropped:  # each chunk a token short
            raise named("chunk_one_short")
        raise named("drops_last_chunk")
    # a state cached between calls is right on the first call only: call again before comparing
    generator = torch.Generator().manual_seed(L)
    expect_stateless(fn, q, k, v, out, generator, chunk_size=chunk_size)
    expect_close(
        out,
        ref,
        q.dtype,
        what,
        chunk_suspects(q, k, v, chunk_size) + la_suspects(q, k, v, True),
        nonfinite=named("masked_with_inf"),  # NaN/inf on finite inputs: 0 * -inf = NaN
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
        call_unchanged(
            causal_linear_attention_chunked,
            {"q": q, "k": k, "v": v},
            chunk_size=4,
            feature_map=torch.exp,
            eps=0.5,
        ),
        quadratic64(q, k, v, True, 0.5, fmap),
        q.dtype,
        "causal_linear_attention_chunked(q, k, v, 4, feature_map=exp, eps=0.5)",
        chunk_suspects(q, k, v, 4, 0.5, fmap) + la_suspects(q, k, v, True, 0.5, fmap),
        nonfinite=named("masked_with_inf"),  # NaN/inf on finite inputs: 0 * -inf = NaN
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
    for size in (0, -draw(rng, 1, 4)):
        expect_value_error(
            lambda: causal_linear_attention_chunked(q, k, v, chunk_size=size),
            f"chunk_size={size}",
            "chunk_size_unchecked",
        )
        expect_own_chunk_size_error(causal_linear_attention_chunked, q, k, v, size)


# ValueErrors that a chunk loop raises by chance when chunk_size < 1, not because it checked:
# range(0, L, 0), and torch.cat of the empty list that range(0, L, -2) leaves.
INCIDENTAL_ERRORS = ("range() arg 3 must not be zero", "expected a non-empty list of Tensors")


def expect_own_chunk_size_error(fn, q, k, v, size: int) -> None:
    """The ValueError for chunk_size < 1 is the student's own check, whatever its words: not one
    that range() or torch.cat raises by chance."""
    try:
        fn(q, k, v, chunk_size=size)
    except Mistake as mistake:
        message = str(mistake.__cause__)
        if any(incidental in message for incidental in INCIDENTAL_ERRORS):
            description, fix = HINTS["chunk_size_unchecked"]
            raise Mistake(
                f"chunk_size={size} raised ValueError({message!r}), from the loop, not from a "
                f"check: it looks like {description}.",
                fix,
                "chunk_size_unchecked",
            ) from None
