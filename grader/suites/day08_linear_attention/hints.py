"""What day08's checks tell the student: HINTS, the mistakes they name, and FORBIDDEN, what
the linear attention functions must not call (the Nyström section keeps its own list)."""

import course.reference.linear_attention as library
from grader.harness.guard import SDPA, SOFTMAX

HINTS = {
    "negative_features": (
        "a feature map that can go negative",
        "phi must be positive so that every weight phi(q).phi(k) >= 0 and the "
        "normaliser cannot vanish or flip sign: elu(x) + 1 > 0, and FAVOR+ "
        "uses exp(...), never cos/sin or elu(x) alone.",
    ),
    "missing_normaliser": (
        "phi(q) S without the normaliser phi(q) . z",
        "divide by phi(q_i) . z + eps with z = sum_j phi(k_j): the weights of "
        "each query must sum to 1, as softmax's do.",
    ),
    "normaliser_without_eps": (
        "a division by zero: the normaliser without + eps",
        "a feature map may give phi(q_i) = 0 (e.g. relu): divide by "
        "(phi(q_i) . z + eps), so such a query gets 0, not NaN.",
    ),
    "ignores_feature_map": (
        "the feature_map argument ignored",
        "apply the feature_map you are given to q and k: phi = feature_map.",
    ),
    "causal_when_not": (
        "a causal sum in the non-causal form",
        "linear_attention sums over all keys: S = phi(K)^T V, z = sum of phi(K) "
        "over every position.",
    ),
    "future_leak": (
        "keys from the future: the non-causal sums over all j",
        "query i may only use keys j <= i: update the state with token i, then read "
        "it for query i.",
    ),
    "excludes_self": (
        "keys j < i only: query i does not see its own key",
        "the causal sum includes j = i: add phi(k_i) v_i^T to the state before "
        "reading it for query i (or use tril with diagonal 0).",
    ),
    "future_leak_in_chunk": (
        "future keys inside a chunk: the intra-chunk scores are not masked",
        "inside a chunk, query i sees only the chunk keys up to itself: "
        "mask the (c, c) scores with tril (set the rest to 0) before summing.",
    ),
    "state_not_carried": (
        "chunks that forget the earlier chunks: the state is not carried",
        "after each chunk add phi(K_c)^T V_c to S and phi(K_c) summed to z, and "
        "let every query of the next chunks read S and z.",
    ),
    "drops_last_chunk": (
        "the last, shorter chunk left out when L is not a multiple of chunk_size",
        "there are ceil(L / chunk_size) chunks; the last one ends at L.",
    ),
    "quadratic_memory": (
        "an (L, L)-sized tensor: the quadratic form that linear attention avoids",
        "compute phi(K)^T V first (a D' x Dv matrix) and phi(K) summed, then "
        "multiply by phi(Q): nothing of size L x L.",
    ),
    "no_error_for_bad_input": (
        "bad input accepted silently (mismatched lengths or dims, or a "
        "tensor that is not (..., L, D))",
        "check the shapes first and raise ValueError naming them, e.g. "
        '`raise ValueError(f"k and v must have the same length, got '
        '{tuple(k.shape)} and {tuple(v.shape)}")`.',
    ),
    "not_orthogonal": (
        "random features whose rows are not orthogonal within a block (iid Gaussian rows?)",
        "draw a (dim, dim) Gaussian, take Q from torch.linalg.qr: its dim columns "
        "are orthonormal; stack such blocks, then rescale each row.",
    ),
    "unit_norms": (
        "orthonormal rows left at norm 1",
        "rescale each row by the norm of an independent Gaussian vector of size dim "
        "(a chi(dim) draw), so rows look like Gaussian rows in length.",
    ),
    "fixed_norms": (
        "every row rescaled to the same norm (sqrt(dim)?)",
        "draw each row's norm independently: torch.randn(num_features, dim, "
        "generator=generator).norm(dim=-1), a chi(dim) draw per row.",
    ),
    "not_reproducible": (
        "features that differ for the same generator state",
        "draw every random number from `generator`: torch.randn(..., "
        "generator=generator); never the global random state.",
    ),
    "not_random": (
        "the same features whatever the generator's state",
        "draw from the generator (do not reseed it): two calls in a row give different features.",
    ),
    "missing_norm_term": (
        "exp(w . x) without the - |x|^2 / 2 term",
        "FAVOR+ is exp(w . x - |x|^2 / 2) / sqrt(m): the |x|^2 / 2 term makes "
        "E[phi(x) . phi(y)] = exp(x . y).",
    ),
    "per_key_stabiliser": (
        "a stabiliser taken per key row (is_query=False)",
        "subtracting a different max from each key changes that key's weight; "
        "for keys subtract one max over all rows and features of the slice "
        "(amax over dims (-2, -1)); only queries may use a max per row.",
    ),
    "no_stabiliser": (
        "exp underflowing to 0 for large inputs: no max-stabiliser",
        "subtract the max of the exponent before exp: per row for queries "
        "(is_query=True), over all rows and features for keys; it cancels in the "
        "normalisation.",
    ),
    "error_does_not_fall": (
        "an approximation error that does not fall as num_features grows",
        "use num_features random features (orthogonal_random_features), "
        "positive FAVOR+ features for q and k, and linear attention with "
        "the normaliser.",
    ),
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "softmax attention uses q . k / sqrt(d): scale q and k by d ** -0.25 "
        "before the feature map.",
    ),
    "strided_landmarks": (
        "landmarks taken as strided samples x[..., ::L // m, :] instead of segment means",
        "a landmark summarises its whole segment: average the tokens of "
        "segment i (token t belongs to segment t * m // L), do not pick one.",
    ),
    "wrong_segments": (
        "segments other than t * m // L (e.g. equal segments with the remainder "
        "dropped or added to the last one)",
        "token t belongs to segment floor(t * m / L): segments are contiguous, "
        "cover all L tokens, and differ in size by at most one; "
        "torch.arange(L) * m // L gives every token's segment.",
    ),
    "unscaled_pinv_init": (
        "Z_0 = A^T without the 1 / (||A||_1 ||A||_inf) scaling: the iteration diverges",
        "start from Z_0 = A^T / (||A||_1 ||A||_inf), with ||A||_1 the largest "
        "column sum of |A| and ||A||_inf the largest row sum: it puts every "
        "eigenvalue of A Z_0 in (0, 1], where the iteration converges.",
    ),
    "batch_wide_norms": (
        "one ||A||_1 ||A||_inf for the whole batch (the paper's code takes one "
        "max over every matrix)",
        "scale each (n, n) matrix by its own norms: reduce over the last two "
        "dims only, e.g. a.abs().sum(-2).amax(-1) per matrix.",
    ),
    "wrong_pinv_update": (
        "another update than Z (13I - AZ (15I - AZ (7I - AZ))) / 4 (plain "
        "Newton-Schulz Z (2I - AZ)?)",
        "use the Nyströmformer's update: AZ = A @ Z, then "
        "Z = 0.25 * Z @ (13 I - AZ @ (15 I - AZ @ (7 I - AZ))).",
    ),
    "ignores_iterations": (
        "the iterations / pinv_iterations argument ignored",
        "run exactly the number of update steps you are given (0 returns Z_0).",
    ),
    "transposed_kernel": (
        "a kernel with its factors swapped (e.g. softmax(K~ Q~^T) or softmax "
        "over the landmarks of K Q~^T)",
        "F = softmax(Q K~^T) is (Lq, m), A = softmax(Q~ K~^T) is (m, m), "
        "B = softmax(Q~ K^T) is (m, Lk): queries (or query landmarks) on the "
        "left, softmax over the last axis, the keys'.",
    ),
    "kernel_missing_scale": (
        "scores without the 1/sqrt(d) scale",
        "every one of the three kernels is softmax(scores / sqrt(d)), with d "
        "the head dim of q and k.",
    ),
    "full_attention_matrix": (
        "an (Lq, Lk)-sized tensor: the attention matrix Nyström avoids",
        "multiply right to left: B @ V is (m, Dv), pinv(A) @ that is "
        "(m, Dv), F @ that is (Lq, Dv); never F @ pinv(A) @ B, which is "
        "(Lq, Lk).",
    ),
}

COURSE = "course.reference.linear_attention is the course's library version, for later days: write yours."
LIBRARY = {
    fn: COURSE
    for fn in (
        library.elu_feature_map,
        library.linear_attention,
        library.quadratic_linear_attention,
        library.causal_linear_attention_recurrent,
        library.causal_linear_attention_chunked,
        library.orthogonal_random_features,
        library.favor_feature_map,
        library.performer_attention,
    )
}
FORBIDDEN = {**LIBRARY, **SDPA, **SOFTMAX}
