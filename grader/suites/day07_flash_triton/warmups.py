"""Checks for the warm-ups triton_add and triton_softmax."""

# course first: without a GPU it puts Triton in interpreter mode, which triton reads at import.
import course  # noqa: F401

# isort: split
import math

import torch
import triton

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    hint,
    named,
)
from grader.suites._common import draw, randn, softmax64
from grader.suites.day07_flash_triton.kernel_watch import watched


def add_matches(triton_add, rng):
    """matches x + y for sizes that are not a multiple of the block (1-D, 2-D, 3-D), in bounds"""
    for shape in [
        (draw(rng, 1000, 3000),),
        (draw(rng, 3, 9), draw(rng, 100, 300)),
        (2, draw(rng, 2, 5), draw(rng, 7, 40)),
    ]:
        x, y = randn(shape, rng), randn(shape, rng)
        out = watched(triton_add, f"triton_add on {shape}", x, y)
        expect_tensor(out, f"triton_add on {shape}", shape, torch.float32)
        ref = x.double() + y.double()
        wrong = (
            ~torch.isclose(out.double(), ref, rtol=1e-6, atol=1e-6)
            if out.shape == ref.shape
            else None
        )
        if wrong is not None and wrong.any():
            flat = wrong.reshape(-1)
            first = int(flat.nonzero()[0])
            if first > 0 and flat[first:].all():
                description, fix = hint("grid_too_small")
                raise Mistake(
                    f"triton_add on {shape}: the first {first} elements are right, the "
                    f"last {flat.numel() - first} wrong: it looks like {description}.",
                    fix,
                    "grid_too_small",
                )
        expect_close(out, ref, torch.float32, f"triton_add on {shape}")


def add_non_contiguous(triton_add, rng):
    """non-contiguous inputs: a transpose and a strided slice"""
    a, b = randn((draw(rng, 20, 40), draw(rng, 20, 40)), rng), randn((40, 80), rng)
    for x, y, what in [
        (a.T, randn(a.T.shape, rng), "x = a.T"),
        (b[:, ::2], randn((40, 40), rng), "x = b[:, ::2]"),
    ]:
        out = watched(triton_add, f"triton_add with {what}", x, y)
        ref = x.double() + y.double()
        try:
            expect_close(out, ref, torch.float32, f"triton_add with {what} (non-contiguous)")
        except Mistake as mistake:
            if mistake.key not in ("wrong_values", "out_of_bounds"):
                raise
            description, fix = hint("non_contiguous")
            raise Mistake(
                f"triton_add with {what}: {mistake.message} It looks like {description}.",
                fix,
                "non_contiguous",
            ) from None


def add_rejects_bad_input(triton_add, rng):
    """shapes that differ, or dtypes that differ, give a clear ValueError"""
    n = draw(rng, 5, 20)
    x = randn((n,), rng)
    expect_value_error(
        lambda: triton_add(x, randn((n + 1,), rng)),
        f"triton_add of ({n},) and ({n + 1},)",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: triton_add(x, randn((n,), rng, torch.float64)),
        "triton_add of float32 and float64",
        "no_error_for_bad_input",
    )


def softmax_suspects(x):
    n = x.shape[-1]
    pad = triton.next_power_of_2(n) - n
    suspects = []
    if pad:
        padded = torch.cat([x.double(), x.new_zeros(*x.shape[:-1], pad, dtype=torch.float64)], -1)
        suspects.append(("padding_counted", softmax64(padded)[..., :n]))
    if x.ndim >= 2 and x.shape[-2] > 1:
        suspects.append(("wrong_axis", softmax64(x, -2)))
    if not x.is_contiguous():  # x's memory read as if contiguous, out written the same way
        written = softmax64(x.T.contiguous().reshape(x.shape))
        suspects += [  # into a contiguous out, or into one laid out like x (empty_like)
            ("non_contiguous", written),
            ("non_contiguous", written.reshape(-1).as_strided(x.shape, x.stride())),
        ]
    shifted = x.double() - x.double().amax(-1, keepdim=True)
    suspects += [
        ("softmax_not_divided", shifted.exp()),  # e, or e / max(e) (max(e) = 1)
        ("softmax_exp2", softmax64(x.double() * math.log(2))),  # 2^x / sum 2^x
    ]
    return suspects


def softmax_matches(triton_softmax, rng):
    """row-wise softmax for rows whose length is not a power of two, any leading dims"""
    for shape in [(draw(rng, 3, 9), draw(rng, 20, 120)), (2, draw(rng, 2, 4), draw(rng, 5, 60))]:
        x = randn(shape, rng, scale=3.0)
        out = watched(triton_softmax, f"triton_softmax on {shape}", x)
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {shape}", softmax_suspects(x)
        )


def softmax_stable(triton_softmax, rng):
    """large inputs (up to 1e4) and -inf entries: finite, exact where expected"""
    n_cols = draw(rng, 10, 70)
    n_cols += n_cols & (n_cols - 1) == 0  # not a power of two: the block has padded lanes
    shape = (draw(rng, 2, 5), n_cols)
    x = randn(shape, rng, scale=1000.0) + 5000.0
    x[0, : draw(rng, 1, 5)] = float("-inf")
    x[-1] = randn(shape[-1:], rng) - 10000.0  # a row far below 0: padded lanes must not win the max
    out = watched(triton_softmax, f"triton_softmax on {shape} with entries near 1e4", x)
    if isinstance(out, torch.Tensor) and out.shape == x.shape and out.is_floating_point():
        finite = out.isfinite().all(-1)
        if finite[:-1].all() and not finite[-1]:
            description, fix = hint("padding_wins_max")
            raise Mistake(
                f"triton_softmax on {shape}: the last row, entries near -1e4, has NaN/inf, the "
                f"others are finite: it looks like {description}.",
                fix,
                "padding_wins_max",
            )
    expect_close(
        out,
        softmax64(x),
        torch.float32,
        f"triton_softmax on {shape} with entries near 1e4",
        softmax_suspects(x),
        nonfinite=named("not_stable"),
    )


def softmax_shapes(triton_softmax, rng):
    """a single row (1-D), rows of length 1, and a non-contiguous input"""
    n = draw(rng, 3, 50)
    cases = [
        (randn((n,), rng), f"({n},)"),
        (randn((draw(rng, 2, 4), 1), rng), "rows of length 1"),
        (randn((n, draw(rng, 3, 9)), rng).T, "a transposed (non-contiguous) input"),
    ]
    for x, what in cases:
        out = watched(triton_softmax, f"triton_softmax on {what}", x)
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {what}", softmax_suspects(x)
        )


def softmax_rejects_bad_input(triton_softmax, rng):
    """a 0-d tensor gives a clear ValueError"""
    expect_value_error(
        lambda: triton_softmax(torch.tensor(1.0)),
        "triton_softmax of a 0-d tensor",
        "no_error_for_bad_input",
    )
