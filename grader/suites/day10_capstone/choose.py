"""Checks for choose_attention against the rule in its docstring."""

from grader.harness.checking import Mistake, expect_value_error, hint
from grader.suites._common import draw


def expect_choice(choose_attention, args: dict, want: str) -> None:
    got = choose_attention(**args)
    if got != want:
        description, fix = hint("wrong_choice")
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise Mistake(
            f"choose_attention({shown}) = {got!r}, expected {want!r}.", fix, "wrong_choice"
        )


def choose_cpu(choose_attention, rng):
    """CPU: dense when it fits, flash when only O(L) fits, linear past 8k tokens, sliding for local"""
    GiB = 2**30
    L = 128 * draw(rng, 2, 8)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
    )
    L = 1024 * draw(rng, 4, 8)  # dense needs > 1 GiB (8 heads), tiled ~ 10 MB
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=GiB // 4, has_gpu=False),
        "flash",
    )
    L = 1024 * draw(rng, 9, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "linear",
    )
    L = 1024 * draw(rng, 2, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "sliding",
    )


def choose_gpu_and_short(choose_attention, rng):
    """GPU: flash; a sequence no longer than the window is global anyway"""
    GiB = 2**30
    L = 128 * draw(rng, 1, 64)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
    )
    L = draw(rng, 16, 256)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
    )
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
    )


def choose_nothing_fits(choose_attention, rng):
    """ValueError when nothing fits the budget, and for bad arguments"""
    L = 1024 * draw(rng, 1, 16)
    for args, what in [
        (
            dict(seq_len=L, needs_global_context=True, memory_budget_bytes=1000, has_gpu=False),
            "a 1000-byte budget",
        ),
        (
            dict(seq_len=0, needs_global_context=True, memory_budget_bytes=2**30, has_gpu=False),
            "seq_len = 0",
        ),
        (
            dict(seq_len=L, needs_global_context=True, memory_budget_bytes=-1, has_gpu=True),
            "a negative budget",
        ),
    ]:
        expect_value_error(
            lambda: choose_attention(**args),
            f"choose_attention with {what}",
            "no_error_for_bad_params",
        )
