"""Library version of day 1, built on torch's built-ins: a softmax that never overflows.

Later days stand on it, never on a student's answers. Day 2's masks and masked attention are in
`course.reference.masks`.
"""

import torch

from course.reference import accumulation_dtype


def stable_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along `dim` that never overflows and gives zeros (not NaN) to a slice that is all
    -inf: day 1's `stable_softmax`, for days that need one without the student's.

    Written from exp, max and sum rather than torch.softmax, so an exercise that forbids the
    built-in softmax may still call it. float16 and bfloat16 are computed in float32, as
    torch.softmax does, and returned in their own dtype.
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(
            f"x must be a floating-point tensor, got "
            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    x_acc = x.to(accumulation_dtype(x.dtype))
    top = x_acc.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf: shift by 0
    exps = torch.exp(x_acc - top)
    total = exps.sum(dim=dim, keepdim=True)
    weights = exps / torch.where(total > 0, total, torch.ones_like(total))  # empty slice: 0 / 1
    return weights.to(x.dtype)
