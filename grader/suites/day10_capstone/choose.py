"""Checks for choose_attention against the rule in its docstring, on cases whose budgets are far
from every estimate, and one exactly on an estimate (fitting is <=); a wrong choice is named by
what the common slips would have returned."""

import torch

from course.reference.capstone import EXACT_MAX_LEN_CPU, estimate_attention_memory
from grader.harness.checking import Mistake, expect_value_error, hint
from grader.suites._common import draw

GiB = 2**30
ESTIMATE_KINDS = ("dense", "flash", "linear", "sliding")  # the names choose_attention returns


def expect_choice(choose_attention, args: dict, want: str, slips: dict = None) -> None:
    """choose_attention(**args) == want; `slips` maps what a mistake would return on these
    arguments to its key (ValueError: the key of a mistake that raises there)."""
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    slips = slips or {}
    try:
        got = choose_attention(**args)
    except Mistake as mistake:
        cause = mistake.__cause__
        if mistake.key != "raised" or not isinstance(cause, ValueError):
            raise
        key = (
            "kind_name"
            if "sliding_window" in str(cause)
            else "window_not_passed"
            if "window" in str(cause)
            else slips.get(ValueError, "fitting_choice_refused")
        )
        description, fix = hint(key)
        raise Mistake(
            f"choose_attention({shown}) raised ValueError({str(cause)!r}), expected "
            f"{want!r}: it looks like {description}.",
            fix,
            key,
        ) from None
    if got == want:
        return
    key = slips.get(got)
    if key is None and got not in ESTIMATE_KINDS:
        key = "kind_name"
    seen = f"choose_attention({shown}) = {got!r}, expected {want!r}"
    if key is None:
        description, fix = hint("wrong_choice")
        raise Mistake(f"{seen}.", fix, "wrong_choice")
    description, fix = hint(key)
    raise Mistake(f"{seen}: it looks like {description}.", fix, key)


def choose_cpu(choose_attention, rng):
    """CPU: dense when it fits (at exactly 8192 tokens, and a budget of exactly its estimate, too), flash when only O(L) fits, linear past 8k tokens, sliding for local"""
    L = 128 * draw(rng, 2, 8)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
        {"flash": "cpu_order", "sliding": "global_got_sliding"},
    )
    expect_choice(  # the CPU limit is inclusive: exact attention at exactly 8192 tokens
        choose_attention,
        dict(
            seq_len=EXACT_MAX_LEN_CPU,
            needs_global_context=True,
            memory_budget_bytes=64 * GiB,
            has_gpu=False,
        ),
        "dense",
        {
            "flash": "cpu_order",
            "linear": "cpu_limit_not_inclusive",
            "sliding": "global_got_sliding",
        },
    )
    L = 1024 * draw(rng, 4, 8)  # dense needs > 1 GiB (8 heads), tiled ~ 10 MB
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=GiB // 4, has_gpu=False),
        "flash",
        {"dense": "budget_ignored", "sliding": "global_got_sliding"},
    )
    L = 1024 * draw(rng, 9, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=False),
        "linear",
        {
            "dense": "exact_past_cpu_limit",
            "flash": "exact_past_cpu_limit",
            ValueError: "no_linear_fallback",
            "sliding": "global_got_sliding",
        },
    )
    L = 1024 * draw(rng, 2, 32)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "sliding",
        {"linear": "local_not_sliding", "dense": "local_not_sliding"},
    )
    L = 128 * draw(rng, 2, 8)
    expect_exact_budget_fits(choose_attention, L)


def expect_exact_budget_fits(choose_attention, L: int) -> None:
    """A budget of exactly dense's estimate fits dense. The student's choose_attention uses their
    own estimate, which may differ from the library's (within 15%): only a choice that turns to
    dense one byte above the library's estimate is certainly a `<` where `<=` was meant."""
    estimate = estimate_attention_memory("dense", 1, 8, L, 64, torch.float32)  # the defaults
    args = dict(seq_len=L, needs_global_context=True, has_gpu=False)
    if choose_attention(**args, memory_budget_bytes=estimate) == "dense":
        return
    if choose_attention(**args, memory_budget_bytes=estimate + 1) != "dense":
        return  # their dense estimate is above the library's: not dense is right for them
    description, fix = hint("fit_not_inclusive")
    raise Mistake(
        f"choose_attention(seq_len={L}, needs_global_context=True, has_gpu=False) chose dense "
        f"with a budget of {estimate + 1} bytes but not {estimate}, dense's estimate: it looks "
        f"like {description}.",
        fix,
        "fit_not_inclusive",
    )


def choose_gpu_and_short(choose_attention, rng):
    """flash on a GPU; a sequence no longer than the window (as long as it, too) counts as global, on a CPU or a GPU"""
    L = 128 * draw(rng, 1, 64)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=True, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
        {"dense": "gpu_ignored", "sliding": "global_got_sliding"},
    )
    L = draw(rng, 16, 256)
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False),
        "dense",
        {"sliding": "short_sequence_local", "flash": "cpu_order"},
    )
    expect_choice(
        choose_attention,
        dict(seq_len=L, needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=True),
        "flash",
        {"sliding": "short_sequence_local", "dense": "gpu_ignored"},
    )
    window = 16 * draw(rng, 2, 16)  # a sequence exactly as long as the window is short
    expect_choice(
        choose_attention,
        dict(
            seq_len=window,
            needs_global_context=False,
            memory_budget_bytes=64 * GiB,
            has_gpu=False,
            window=window,
        ),
        "dense",
        {"sliding": "window_not_inclusive", "flash": "cpu_order"},
    )


def between(low: int, high: int) -> int:
    """A budget at the geometric middle of two estimates, far from both."""
    return int((low * high) ** 0.5)


def choice_or_none(choose_attention, **args):
    """choose_attention(**args) on a call that only tells two mistakes apart, or None where it
    raises (the checked call beside it names the error)."""
    try:
        return choose_attention(**args)
    except Mistake:
        return None


def choose_uses_its_arguments(choose_attention, rng):
    """the sizes passed (batch, heads, head_dim, dtype, window) decide the estimates and the window"""
    # One head in float16 makes dense 16 times smaller than with the defaults (8 heads, float32):
    # a budget between the two fits dense only with the sizes passed.
    L, d = 512 * draw(rng, 2, 6), 64
    small = estimate_attention_memory("dense", 1, 1, L, d, torch.float16)
    default = estimate_attention_memory("dense", 1, 8, L, d, torch.float32)

    def args(budget):
        return dict(
            seq_len=L,
            needs_global_context=True,
            memory_budget_bytes=budget,
            has_gpu=False,
            heads=1,
            dtype=torch.float16,
        )

    # flash here is the sizes ignored only if dense is chosen when the budget is ample;
    # otherwise flash comes before dense whatever the budget
    dense_first = choice_or_none(choose_attention, **args(64 * GiB)) == "dense"
    expect_choice(
        choose_attention,
        args(between(small, default)),
        "dense",
        {
            "flash": "arguments_ignored" if dense_first else "cpu_order",
            "sliding": "global_got_sliding",
        },
    )
    # More heads and a larger batch make dense too big for a budget the defaults fit.
    L = 256 * draw(rng, 2, 4)
    large = estimate_attention_memory("dense", 4, 16, L, d, torch.float32)
    default = estimate_attention_memory("dense", 1, 8, L, d, torch.float32)
    # dense here is the sizes ignored only if a budget of half dense's estimate with the
    # default sizes turns it away; otherwise dense is chosen whatever the budget
    budget_kept = (
        choice_or_none(
            choose_attention,
            seq_len=L,
            needs_global_context=True,
            memory_budget_bytes=default // 2,
            has_gpu=False,
        )
        != "dense"
    )
    expect_choice(
        choose_attention,
        dict(
            seq_len=L,
            needs_global_context=True,
            memory_budget_bytes=between(default, large),
            has_gpu=False,
            batch=4,
            heads=16,
        ),
        "flash",
        {
            "dense": "arguments_ignored" if budget_kept else "budget_ignored",
            "sliding": "global_got_sliding",
        },
    )
    # A window shorter than the sequence makes local context a sliding window.
    window = 16 * draw(rng, 2, 8)
    L = window + draw(rng, 1, 256 - window)  # <= 256, the default window
    args = dict(needs_global_context=False, memory_budget_bytes=64 * GiB, has_gpu=False)
    # dense here is the window ignored only if a sequence longer than the default window does
    # get the sliding window; otherwise local context is not answered with sliding at all
    window_ignored = (
        choice_or_none(choose_attention, seq_len=1024, **args, window=window) == "sliding"
    )
    expect_choice(
        choose_attention,
        dict(seq_len=L, **args, window=window),
        "sliding",
        {"dense": "arguments_ignored" if window_ignored else "local_not_sliding"},
    )


def choose_nothing_fits(choose_attention, rng):
    """ValueError when nothing fits the budget, and for bad arguments"""
    L = 1024 * draw(rng, 1, 16)
    expect_value_error(
        lambda: choose_attention(
            seq_len=L, needs_global_context=True, memory_budget_bytes=1000, has_gpu=False
        ),
        "choose_attention with a 1000-byte budget",
        "nothing_fits_accepted",
    )
    for args, what in [
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
            "choose_bad_arguments",
        )
