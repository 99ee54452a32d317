"""Checks for day08-linear-attention: feature maps, linear attention (non-causal, recurrent,
chunked) and the Performer's random features.

Oracles: float64 dense quadratic forms, (phi(Q) phi(K)^T, masked for causal) row-normalised, with
phi = F.elu + 1 or the float64 FAVOR+ exponent; softmax attention through
F.scaled_dot_product_attention in float64; statistical checks for the random features (exact
orthogonality within blocks, row norms distributed like chi(d) over many draws).

One module per exercise group, in the notebook's order: linear_attention (elu_feature_map,
linear_attention), causal_forms (recurrent, chunked), performer (orthogonal_random_features,
favor_feature_map, performer_attention), nystrom (the advanced section); `hints` holds HINTS and
FORBIDDEN, `oracles` the float64 quadratic form and the inputs the linear forms share.
"""

from grader.suites import Exercise
from grader.suites.day08_linear_attention.causal_forms import (
    chunked_bad_input,
    chunked_extremes,
    chunked_linear_memory,
    chunked_matches,
    chunked_options,
    rec_bad_input,
    rec_eps_guard,
    rec_matches,
    rec_options,
)
from grader.suites.day08_linear_attention.hints import FORBIDDEN, HINTS, LIBRARY
from grader.suites.day08_linear_attention.linear_attention import (
    elu_matches,
    la_bad_input,
    la_eps_guard,
    la_feature_map_and_eps,
    la_linear_memory,
    la_matches,
)
from grader.suites.day08_linear_attention.nystrom import (
    NYSTROM_FORBIDDEN,
    NYSTROM_LIBRARY,
    PINV_FORBIDDEN,
    ip_bad_input,
    ip_converges,
    ip_iterates,
    lm_bad_input,
    lm_divisible_and_extremes,
    lm_matches,
    lm_vectorised,
    ny_bad_input,
    ny_float32,
    ny_full_when_m_is_L,
    ny_linear_memory,
    ny_matches,
)
from grader.suites.day08_linear_attention.performer import (
    favor_bad_input,
    favor_matches,
    favor_stabilised,
    orf_blocks,
    orf_norms_chi,
    orf_reproducible,
    performer_bad_input,
    performer_converges,
    performer_shapes,
)

EXERCISES = {
    "elu_feature_map": Exercise(checks=[elu_matches], forbidden=LIBRARY),
    "linear_attention": Exercise(
        checks=[la_matches, la_feature_map_and_eps, la_eps_guard, la_linear_memory, la_bad_input],
        forbidden=FORBIDDEN,
    ),
    "causal_linear_attention_recurrent": Exercise(
        checks=[rec_matches, rec_options, rec_eps_guard, rec_bad_input], forbidden=FORBIDDEN
    ),
    "causal_linear_attention_chunked": Exercise(
        checks=[
            chunked_matches,
            chunked_extremes,
            chunked_options,
            chunked_linear_memory,
            chunked_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
    "orthogonal_random_features": Exercise(
        checks=[orf_blocks, orf_norms_chi, orf_reproducible], forbidden=LIBRARY
    ),
    "favor_feature_map": Exercise(
        checks=[favor_matches, favor_stabilised, favor_bad_input], forbidden=LIBRARY
    ),
    "performer_attention": Exercise(
        checks=[performer_shapes, performer_converges, performer_bad_input], forbidden=FORBIDDEN
    ),
    "landmarks": Exercise(
        checks=[lm_matches, lm_divisible_and_extremes, lm_vectorised, lm_bad_input],
        forbidden=NYSTROM_LIBRARY,
    ),
    "iterative_pinv": Exercise(
        checks=[ip_iterates, ip_converges, ip_bad_input], forbidden=PINV_FORBIDDEN
    ),
    "nystrom_attention": Exercise(
        checks=[ny_matches, ny_float32, ny_full_when_m_is_L, ny_linear_memory, ny_bad_input],
        forbidden=NYSTROM_FORBIDDEN,
    ),
}

__all__ = ["EXERCISES", "HINTS"]
