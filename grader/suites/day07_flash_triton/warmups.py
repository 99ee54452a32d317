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
from grader.harness.triton_watch import name_row_stride_block
from grader.suites._common import draw, randn, softmax64
from grader.suites.day07_flash_triton.kernel_watch import watched, watched_with_counts


def unwritten_tail(n: int, right: int, loaded: int) -> str:
    """The launch mistake that leaves only the first `right` of n elements written, for a block
    size that is a power of two: too few programs, offsets without pid * BLOCK (the programs
    overlap: all write block 0, or each starts one element later), or a mask against BLOCK
    (only program 0 writes). `loaded` is the lanes loaded from x and y (counted in the
    interpreter, else 0): overlapping programs load more than the 2 * right lanes written."""
    if loaded > 2 * right:
        return "offsets_without_block_start"
    for block in (2**p for p in range(4, 15)):
        if right == triton.cdiv(n, block) - 1 + block:
            return "offsets_without_block_start"
        if right == n // block * block and n - right < block:
            return "grid_too_small"
    return "mask_against_block" if right & (right - 1) == 0 else "grid_too_small"


def expect_all_written(out, ref, what: str, loaded: int) -> None:
    """Name a launch that never writes the output's tail, or all of it, while the head is right
    (the watch fills new tensors with NaN, so what was never written reads NaN)."""
    if not (isinstance(out, torch.Tensor) and out.shape == ref.shape):
        return
    flat_out = out.detach().double().reshape(-1)
    wrong = ~torch.isclose(flat_out, ref.reshape(-1), rtol=1e-6, atol=1e-6)
    if not wrong.any():
        return
    first = int(wrong.nonzero()[0])
    if not (wrong[first:].all() and flat_out[first:].isnan().all()):
        return
    key = unwritten_tail(wrong.numel(), first, loaded)
    description, fix = hint(key)
    seen = (
        f"the first {first} elements are right, the last {wrong.numel() - first} never written"
        if first
        else f"none of the {wrong.numel()} elements written"
    )
    raise Mistake(
        f"{what}: {seen} (NaN): it looks like {description}.",
        fix,
        key,
    )


def add_matches(triton_add, rng):
    """matches x + y for sizes that are not a multiple of the block (1-D, 2-D, 3-D), in bounds"""
    for shape in [
        # odd, so never a multiple of a block; past 2048, so a mask against BLOCK (1024) leaves
        # more wrong than right, which too few programs never does
        (2048 + 2 * draw(rng, 0, 475) + 1,),
        (draw(rng, 3, 9), draw(rng, 100, 300)),
        (2, draw(rng, 2, 5), draw(rng, 7, 40)),
    ]:
        x, y = randn(shape, rng), randn(shape, rng)
        ref = x.double() + y.double()
        out, watch = watched_with_counts(triton_add, f"triton_add on {shape}", x, y)
        expect_tensor(out, f"triton_add on {shape}", shape, torch.float32)
        expect_all_written(out, ref, f"triton_add on {shape}", watch.elements_loaded)
        expect_close(out, ref, torch.float32, f"triton_add on {shape}")


def add_non_contiguous(triton_add, rng):
    """non-contiguous inputs: a transpose and a strided slice as x, a transpose as y"""
    a, b = randn((draw(rng, 20, 40), draw(rng, 20, 40)), rng), randn((40, 80), rng)
    for x, y, what in [
        (a.T, randn(a.T.shape, rng), "x = a.T"),
        (b[:, ::2], randn((40, 40), rng), "x = b[:, ::2]"),
        (randn(a.T.shape, rng), a.T, "y = a.T"),  # y needs its .contiguous() as much as x
    ]:
        ref = x.double() + y.double()
        out, watch = watched_with_counts(triton_add, f"triton_add with {what}", x, y)
        expect_all_written(out, ref, f"triton_add with {what}", watch.elements_loaded)
        # written in order into torch.empty_like(x), which keeps a transpose's strides
        like_x = ref.reshape(-1).as_strided(x.shape, torch.empty_like(x).stride())
        suspects = [("output_like_input", like_x)] if not torch.equal(like_x, ref) else []
        try:
            expect_close(
                out, ref, torch.float32, f"triton_add with {what} (non-contiguous)", suspects
            )
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
    """shapes that differ (also (n, m) and (m, n)) or dtypes that differ: a clear ValueError"""
    n = draw(rng, 5, 20)
    x = randn((n,), rng)
    expect_value_error(
        lambda: triton_add(x, randn((n + 1,), rng)),
        f"triton_add of ({n},) and ({n + 1},)",
        "add_accepts_bad_input",
    )
    # as many elements, other shapes: comparing x.numel() with y.numel() lets them through
    expect_value_error(
        lambda: triton_add(randn((n, n + 1), rng), randn((n + 1, n), rng)),
        f"triton_add of ({n}, {n + 1}) and ({n + 1}, {n})",
        "add_accepts_bad_input",
    )
    expect_value_error(
        lambda: triton_add(x, randn((n,), rng, torch.float64)),
        "triton_add of float32 and float64",
        "add_accepts_bad_input",
    )


def ragged(n_cols: int) -> int:
    """n_cols, or n_cols + 1 when it is a power of two: the row's block then has padded lanes."""
    return n_cols + (n_cols & (n_cols - 1) == 0)


def wrong_row_lengths(x) -> list:
    """x's softmax over runs of its memory in order, each as long as x.shape[0] or as the
    number of rows (n_cols = x.shape[0], or reshape(n_cols, -1)) instead of x.shape[-1]."""
    n = x.shape[-1]
    lengths = {x.shape[0], x.numel() // n} - {n}
    return [  # torch.softmax, not softmax64: a run of only -inf is 0 / 0 = NaN, as in a kernel
        torch.softmax(x.double().reshape(-1, length), -1).reshape(x.shape)
        for length in sorted(lengths)
        if x.numel() % length == 0
    ]


def softmax_suspects(x):
    n = x.shape[-1]
    pad = triton.next_power_of_2(n) - n
    suspects = []
    if pad:
        padded = torch.cat([x.double(), x.new_zeros(*x.shape[:-1], pad, dtype=torch.float64)], -1)
        suspects.append(("padding_counted", softmax64(padded)[..., :n]))
    if x.ndim >= 2 and x.shape[-2] > 1:
        suspects.append(("wrong_axis", softmax64(x, -2)))
    suspects += [("row_length_wrong", wrong) for wrong in wrong_row_lengths(x)]
    if not x.is_contiguous():  # x's memory read as if contiguous, out written the same way
        written = softmax64(x.T.contiguous().reshape(x.shape))
        suspects += [  # into a contiguous out, or into one laid out like x (empty_like)
            ("non_contiguous", written),
            ("non_contiguous", written.reshape(-1).as_strided(x.shape, x.stride())),
            # x made contiguous, but the rows written in order into torch.empty_like(x)
            ("output_like_input", softmax64(x).reshape(-1).as_strided(x.shape, x.stride())),
        ]
    shifted = x.double() - x.double().amax(-1, keepdim=True)
    suspects += [
        ("softmax_not_divided", shifted.exp()),  # e, or e / max(e) (max(e) = 1)
        ("softmax_exp2", softmax64(x.double() * math.log(2))),  # 2^x / sum 2^x
    ]
    return suspects


def watched_rows(triton_softmax, what: str, x):
    """triton_softmax(x), watched; a load or store out of bounds whose first row alone is in
    bounds and right is named: the rows start at row * BLOCK, not row * n_cols."""
    try:
        return watched(triton_softmax, what, x)
    except Mistake as mistake:
        if mistake.key == "out_of_bounds":
            name_row_stride_block(mistake.message, triton_softmax, softmax64, x)
        raise


def expect_rows_written(out, x, what: str) -> None:
    """Name a grid of one program: the first row right, every other one wrong."""
    if not (isinstance(out, torch.Tensor) and out.shape == x.shape and x.ndim >= 2):
        return
    rows = out.detach().double().reshape(-1, x.shape[-1])
    # loose: a right but less precise formula (exp(x - (m + log(sum))) near 1e4, off by 1e-3)
    # must not pass for a row never written
    right = torch.isclose(rows, softmax64(x).reshape(rows.shape), rtol=1e-2, atol=1e-4).all(-1)
    if right[0] and not right[1:].any():
        description, fix = hint("one_program_for_all_rows")
        raise Mistake(
            f"{what}: row 0 is right, the {len(right) - 1} others wrong: it looks like "
            f"{description}.",
            fix,
            "one_program_for_all_rows",
        )


def softmax_matches(triton_softmax, rng):
    """row-wise softmax for rows whose length is not a power of two, any leading dims"""
    for shape in [
        (draw(rng, 3, 9), ragged(draw(rng, 20, 120))),
        (2, draw(rng, 2, 4), ragged(draw(rng, 5, 60))),
    ]:
        x = randn(shape, rng, scale=3.0)
        out = watched_rows(triton_softmax, f"triton_softmax on {shape}", x)
        expect_rows_written(out, x, f"triton_softmax on {shape}")
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {shape}", softmax_suspects(x)
        )


def softmax_stable(triton_softmax, rng):
    """large inputs (up to 1e4) and -inf entries: finite, exact where expected"""
    shape = (draw(rng, 2, 5), ragged(draw(rng, 10, 70)))
    x = randn(shape, rng, scale=1000.0) + 5000.0
    x[0, : draw(rng, 1, 5)] = float("-inf")
    x[-1] = randn(shape[-1:], rng) - 10000.0  # a row far below 0: padded lanes must not win the max
    out = watched(triton_softmax, f"triton_softmax on {shape} with entries near 1e4", x)
    expect_rows_written(out, x, f"triton_softmax on {shape} with entries near 1e4")
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
        nonfinite=nonfinite_rows(out, x),
    )


def nonfinite_rows(out, x) -> Mistake:
    """Why the large inputs give NaN: rows of the wrong length when out is the softmax of such
    rows, NaN and all (a wrong "row" of only -inf entries is 0 / 0, though the max is
    subtracted); else exp() of scores without the max, which overflows."""
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        for wrong in wrong_row_lengths(x):
            if torch.allclose(out.double(), wrong, rtol=1e-3, atol=1e-5, equal_nan=True):
                return named("row_length_wrong")
    return named("not_stable")


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
        expect_rows_written(out, x, f"triton_softmax on {what}")
        expect_close(
            out, softmax64(x), torch.float32, f"triton_softmax on {what}", softmax_suspects(x)
        )


def softmax_rejects_bad_input(triton_softmax, rng):
    """a 0-d tensor gives a clear ValueError"""
    expect_value_error(
        lambda: triton_softmax(torch.tensor(1.0)),
        "triton_softmax of a 0-d tensor",
        "softmax_accepts_bad_input",
    )
