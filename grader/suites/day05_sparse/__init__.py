"""Checks for day05-sparse: mask builders, density and reach, sliding-window and chunked attention,
and the advanced parts: learned sparsity and feature-wise attention.

Oracles: the masks are built by brute-force Python loops over (i, j) for small L; attention is
F.scaled_dot_product_attention in float64 with the oracle's mask. Two checks measure how the
student's code works rather than what it returns: builders must not loop over positions in
Python (the number of Python lines they run must not grow with L), and the attention functions
must never allocate an (L, L)-sized tensor (a torch dispatch mode records every allocation).
One module per group of exercises; this one puts their checks and hints together, in the
notebook's order.
"""

from grader.suites.day05_sparse import columnwise, learned, local_attention, masks, reach, shared

_GROUPS = [masks, reach, local_attention, learned, columnwise]  # the notebook's order

HINTS = {
    **shared.HINTS,  # the mistakes several groups name
    **{key: words for group in _GROUPS for key, words in group.HINTS.items()},
}
EXERCISES = {name: checks for group in _GROUPS for name, checks in group.EXERCISES.items()}
