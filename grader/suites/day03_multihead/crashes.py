"""Naming the mistakes that crash: a student's function that raises gives the Mistake "raised"
(the error's text, passed through); some errors are the signature of one mistake, and the checks
name it instead.

The error is read from the Mistake's message ("your function raised TypeError: ..."), which reads
the same whether the function ran here or in the student's kernel (grader/autograde/remote.py,
where only the message and ValueError-or-not come back).

It also gives each exercise's refusal of bad arguments its own example of a clear error.
"""

from grader.harness.checking import Mistake, expect_value_error, hint

# A ValueError for arguments that are valid: the guard's condition inverted or too strict.
REFUSES_VALID = ("refuses_valid_input", "ValueError")
# `if not tensor:` or `if mask:` where `is None` was meant.
TENSOR_TRUTH = ("tensor_truth_value", "RuntimeError", "Boolean value of Tensor")

HINTS = {
    "refuses_valid_input": (
        "a ValueError raised for valid arguments: the guard's condition is inverted or too strict",
        "raise only for the bad case, e.g. `if d_model % num_heads != 0: raise ValueError(...)`; "
        "test your function on a valid input first.",
    ),
    "tensor_truth_value": (
        "a tensor used as a condition (`if not context:`, `if mask:`), where `is None` was meant",
        "test optional arguments with `if context is None:`: the truth value of a tensor with "
        "several entries is undefined.",
    ),
}


def expect_clear_error(call, what: str, example: str) -> None:
    """expect_value_error for the mistake "no_clear_error", its hint ending with this exercise's
    own clear error, `example` (the source of a raise statement)."""
    try:
        expect_value_error(call, what, "no_clear_error")
    except Mistake as mistake:
        if mistake.key != "no_clear_error":
            raise
        raise Mistake(
            mistake.message, f"{hint('no_clear_error')[1]} For example: {example}", mistake.key
        ) from None
