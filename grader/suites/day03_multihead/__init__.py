"""Checks for day03-multihead: split_heads, merge_heads, repeat_kv, MultiHeadAttention,
sinusoidal_positions, apply_rope, alibi_bias, and the advanced part: relative_position_bucket,
shaw_relative_attention, relative_bias_attention, memory_attention.

Oracles: torch.nn.MultiheadAttention (with the student's weights copied in, in float64),
F.scaled_dot_product_attention, and float64 formulas written out here. A suspect (what a named
mistake would give) is computed by the same float64 code with the one thing the mistake changes.
One module per group of exercises; this one puts their checks and hints together, in the
notebook's order.
"""

from grader.suites.day03_multihead import (
    crashes,
    heads,
    memory,
    multihead_attention,
    positions,
    relative,
)

_GROUPS = [heads, multihead_attention, positions, relative, memory]  # the notebook's order

HINTS = {key: words for group in [crashes, *_GROUPS] for key, words in group.HINTS.items()}
EXERCISES = {name: checks for group in _GROUPS for name, checks in group.EXERCISES.items()}
