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
    "eps_outside_division": (
        "eps added after the division: num / den + eps",
        "eps belongs inside the denominator: num / (phi(q_i) . z + eps); added to the "
        "result it shifts every output by eps.",
    ),
    "wrong_normaliser": (
        "a normaliser other than phi(q_i) . z with z = sum over keys of phi(k_j) (a mean over "
        "the keys, a sum over the features, or phi(q_i) . phi(q_i))",
        "z = phi(K).sum(-2), one D'-vector summed over the keys (dim -2); the normaliser of "
        "query i is the dot product phi(q_i) . z: (phi_q * z[..., None, :]).sum(-1, "
        "keepdim=True).",
    ),
    "eps_in_features": (
        "eps added to the features phi(q) and phi(k) instead of to the normaliser",
        "keep the features as the feature map gives them; eps belongs to the division only: "
        "num / (den + eps).",
    ),
    "q_scaled": (
        "q scaled by 1 / sqrt(d) as in softmax attention: linear attention has no such scale",
        "map q and k as they are: phi(q) = feature_map(q), no q / sqrt(d) before it.",
    ),
    "keys_and_values_unpaired": (
        "phi(k) and v summed separately (every query gets the sum of v): an einsum with two "
        "position letters, '...ld,...me->...de', multiplies the two sums, not the pairs",
        "use one letter for the key position on both sides: "
        "torch.einsum('...ld,...le->...de', phi_k, v) sums phi(k_j) v_j^T over the keys j.",
    ),
    "dv_must_equal_d": (
        "an input check that rejects v with Dv != D: it compares q's D with v's Dv",
        "only q and k must share D (q.shape[-1] == k.shape[-1]); v may have any Dv, only its "
        "length must match k's.",
    ),
    "first_token_twice": (
        "token 0 counted twice: the state started from token 0, then the loop added it again",
        "start from zeros, S = 0 of shape (..., D', Dv) and z = 0 of shape (..., D'): the loop "
        "adds every token once, token 0 included.",
    ),
    "cumsum_over_features": (
        "prefix sums taken over a feature dim (D' or Dv) instead of over the positions L",
        "the causal state of query i sums the keys j <= i: cumsum over the position dim, "
        "dim=-3 of phi(k_t) v_t^T (..., L, D', Dv) and dim=-2 of phi(k) (..., L, D').",
    ),
    "state_from_queries": (
        "the chunk state built from the queries (qc^T vc) instead of the keys",
        "the state S sums phi(k_j) v_j^T over earlier keys: S = S + kc.transpose(-2, -1) @ vc.",
    ),
    "masked_with_inf": (
        "the future scores masked with -inf (the softmax habit): without an exp after it, "
        "-inf times v gives inf and NaN",
        "linear attention's scores are plain products: zero the future ones, "
        "torch.tril(scores) or scores.masked_fill(mask, 0.0).",
    ),
    "normaliser_shape": (
        "a normaliser of shape (..., Lq) where (..., Lq, 1) is needed (phi_q @ z without "
        "keepdim): num / den then pairs den's Lq entries with num's Dv columns",
        "keep the normaliser a column: den = (phi_q @ z)[..., None] or (phi_q * z[..., None, "
        ":]).sum(-1, keepdim=True), so each query's row of num is divided by its own value.",
    ),
    "feature_map_on_v": (
        "the feature map applied to v too",
        "phi maps only q and k (it builds the kernel); v is averaged as it is: S = phi(K)^T V.",
    ),
    "state_not_zero": (
        "a normaliser state z that does not start at zero (torch.ones?)",
        "both states start empty: S = zeros (D', Dv) and z = zeros (D',), with dtype=q.dtype.",
    ),
    "half_updated_state": (
        "S and z updated at different times: one includes key i when query i reads it, the "
        "other does not",
        "update both, S += phi(k_i) v_i^T and z += phi(k_i), before reading them for query i.",
    ),
    "fixed_rank": (
        "code that works for (L, D) inputs only: .T, or positions indexed from the front "
        "(x[t]), on batched (..., L, D) tensors",
        "count dims from the end: x.transpose(-2, -1) (or x.mT) instead of x.T, and "
        "x[..., t, :] for position t.",
    ),
    "state_orientation": (
        "a state S of shape (Dv, D') where it is (D', Dv): it only runs when Dv = D",
        "S = phi(K)^T V is (D', Dv): add phi(k_t)[:, None] * v_t[None, :] (column times row) "
        "and read it with phi(q_t) @ S.",
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
        "future keys inside a chunk: the intra-chunk scores not masked, or masked with triu "
        "(which keeps the future) instead of tril",
        "inside a chunk, query i sees only the chunk keys up to itself: "
        "mask the (c, c) scores with tril (set the rest to 0) before summing.",
    ),
    "state_not_carried": (
        "chunks that forget the earlier chunks: the state is not carried",
        "after each chunk add phi(K_c)^T V_c to S and phi(K_c) summed to z, and "
        "let every query of the next chunks read S and z.",
    ),
    "z_not_carried": (
        "S carried across chunks but z not: the normaliser forgets the earlier chunks",
        "after each chunk update both states: S += phi(K_c)^T V_c and z += phi(K_c).sum(-2).",
    ),
    "normaliser_without_chunk": (
        "a normaliser without the chunk's own part: phi(Q_c) z only",
        "the normaliser has both parts, like the numerator: phi(Q_c) z (earlier chunks) plus "
        "the masked scores' row sums W.sum(-1) (this chunk).",
    ),
    "state_updated_before_read": (
        "the state updated with the chunk before the chunk reads it: its own keys counted twice",
        "read S and z (earlier chunks only) together with the masked intra-chunk scores, and "
        "add the chunk to S and z after its outputs are computed.",
    ),
    "full_size_chunks_only": (
        "code that assumes every chunk is chunk_size long (it runs when chunk_size divides L)",
        "the last chunk is shorter: build its mask from its own length, n = Qc.shape[-2], "
        "torch.ones(n, n).tril().",
    ),
    "wrong_positive_map": (
        "a positive map that is not elu(x) + 1 (relu(x) + 1, exp(x) or softplus(x)?)",
        "elu(x) + 1 is x + 1 for x > 0 and exp(x) for x <= 0: F.elu(x) + 1.",
    ),
    "positive_side_without_one": (
        "the + 1 left out for x > 0: x there, exp(x) below 0 (a map that jumps at 0)",
        "elu(x) + 1 is x + 1 for x > 0 and exp(x) for x <= 0; both pieces meet at 1: "
        "torch.where(x > 0, x + 1, torch.exp(x)), or simply F.elu(x) + 1.",
    ),
    "negative_side_plus_one": (
        "the + 1 on both pieces: exp(x) + 1 for x <= 0, where elu(x) + 1 is exp(x) (elu(x) "
        "is exp(x) - 1 there, and the + 1 cancels the - 1)",
        "elu(x) + 1 is x + 1 for x > 0 and exp(x) for x <= 0: torch.where(x > 0, x + 1, "
        "torch.exp(x)), or simply F.elu(x) + 1.",
    ),
    "elu_alpha_changed": (
        "elu with another alpha than its default 1: alpha * (exp(x) - 1) + 1 below 0",
        "keep F.elu's default alpha=1.0: F.elu(x) + 1 is exp(x) for x <= 0, positive and "
        "smooth at 0.",
    ),
    "modified_input": (
        "an input changed in place",
        "compute into new tensors: F.elu(x) + 1, not F.elu(x, inplace=True) or x.add_(1); "
        "q * scale, not q.mul_(scale) or q *= scale; a new output (torch.zeros_like(v), or "
        "rows you stack), not out = v, a second name for v's memory; z = a.mT / c, not "
        "z /= c on a view of a. The caller still needs its own tensor afterwards.",
    ),
    "chunk_one_short": (
        "chunks one token short: a chunk ending at start + chunk_size - 1 (Python slices "
        "already leave out their end)",
        "chunk c is x[..., start:end, :] with end = min(start + chunk_size, L): the slice stops "
        "before end, so no - 1.",
    ),
    "chunk_size_unchecked": (
        "chunk_size < 1 not checked: any error comes from range() or torch.cat by chance",
        'check it first, before the loop: if chunk_size < 1: raise ValueError(f"chunk_size '
        'must be >= 1, got {chunk_size}").',
    ),
    "state_not_reset": (
        "a state kept between calls (a module-level cache or a default argument never "
        "reset): a second call on the same inputs gives another answer",
        "start S and z at zero inside the function on every call: S = torch.zeros(..., "
        "dtype=q.dtype), z likewise; nothing outlives the call.",
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
    "reused_block": (
        "one orthogonal block reused for every block: row i + dim is parallel to row i",
        "draw a fresh (dim, dim) Gaussian and take its QR inside the loop, once per block: "
        "the blocks are independent draws, only the rows within a block are orthogonal.",
    ),
    "qr_r_not_q": (
        "R of the QR taken for Q: the block is triangular, its rows are not orthogonal",
        "Q, R = torch.linalg.qr(g) returns Q first: the orthonormal directions are Q's "
        "columns, the rows of Q.T.",
    ),
    "norms_on_columns": (
        "the chi norms multiplied into the columns, not the rows: Q.T * norms[None, :] keeps "
        "the columns orthogonal and bends the rows",
        "give each row its own length: rows * norms[:, None] (or norms.unsqueeze(1)), with "
        "norms of shape (num_features,).",
    ),
    "partial_block": (
        "num_features // dim blocks: the rows of a last, partial block missing when "
        "num_features is not a multiple of dim",
        "draw ceil(num_features / dim) blocks, -(-num_features // dim), stack them and keep "
        "the first num_features rows.",
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
    "norm_not_squared": (
        "exp(w . x - |x| / 2): the norm |x| where its square |x|^2 belongs",
        "FAVOR+ subtracts |x|^2 / 2: (x * x).sum(-1, keepdim=True) / 2, or "
        "x.norm(dim=-1, keepdim=True) ** 2 / 2.",
    ),
    "squared_norms": (
        "rows rescaled by squared norms (a chi-squared draw, |g|^2) instead of norms (chi, |g|)",
        "the row norm is the length of a Gaussian vector, not its square: "
        "torch.randn(num_features, dim, generator=generator).norm(dim=-1).",
    ),
    "features_not_float32": (
        "random features returned in another dtype than float32",
        "orthogonal_random_features has no input tensor to take a dtype from: it returns "
        "float32, torch.randn's default (compute in float64 if you like, then .float() at the "
        "end); performer_attention casts W to its inputs' dtype.",
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
    "projection_not_transposed": (
        "x @ projection where x @ projection.T is meant (it runs only when m = D)",
        "projection is (m, D), one feature w_i per row: w_i . x for every i is "
        "x @ projection.transpose(-2, -1), (..., L, m).",
    ),
    "norm_term_not_halved": (
        "exp(w . x - |x|^2) without the / 2 on |x|^2",
        "FAVOR+ subtracts |x|^2 / 2: (x * x).sum(-1, keepdim=True) / 2.",
    ),
    "stabiliser_per_feature": (
        "a query stabiliser taken over the positions (one max per feature, amax(dim=-2))",
        "for queries subtract each row's own max over the features: "
        "amax(dim=-1, keepdim=True); a max over the positions mixes rows.",
    ),
    "key_stabiliser_per_feature": (
        "a key stabiliser taken over the positions only (one max per feature, amax(dim=-2))",
        "a different constant per feature changes phi(q) . phi(k): for keys subtract one max "
        "over all rows and features of the slice, amax(dim=(-2, -1), keepdim=True).",
    ),
    "is_query_inverted": (
        "the two branches of is_query swapped: queries stabilised per slice, keys per row",
        "is_query=True (queries): each row's own max, amax(dim=-1, keepdim=True); "
        "is_query=False (keys): one max per slice, amax(dim=(-2, -1), keepdim=True).",
    ),
    "norm_over_positions": (
        "|x|^2 summed over the positions (dim=-2) instead of the features: (..., 1, D), which "
        "broadcasts against (..., L, m) only when m = D",
        "|x|^2 is one number per row: (x * x).sum(-1, keepdim=True), (..., L, 1).",
    ),
    "global_stabiliser": (
        "one stabiliser for the whole tensor instead of one per row (queries) or per (...) "
        "slice (keys)",
        "keep the leading dims apart: amax(dim=-1, keepdim=True) for queries, "
        "amax(dim=(-2, -1), keepdim=True) for keys, never x.max() over everything: a slice "
        "whose scores sit far below another's would underflow to 0.",
    ),
    "wrong_feature_scale": (
        "features scaled by another factor than 1 / sqrt(m)",
        "divide exp(...) by math.sqrt(m) once, with m = projection.shape[0]: not by m, "
        "not left out.",
    ),
    "stabiliser_without_norm_term": (
        "a stabiliser s taken as the max of w . x alone, without the - |x|^2 / 2 term, so "
        "large inputs still push every feature towards 0",
        "compute the whole exponent first, e = x @ projection.T - |x|^2 / 2, then subtract "
        "the max of e itself (not of x @ projection.T).",
    ),
    "no_stabiliser": (
        "exp underflowing to 0 for large inputs: no max-stabiliser",
        "subtract the max of the exponent before exp: per row for queries "
        "(is_query=True), over all rows and features for keys; it cancels in the "
        "normalisation.",
    ),
    "error_does_not_fall": (
        "an estimate that stays off however many features it draws: a biased estimator, "
        "not a noisy one",
        "check each piece: one W = orthogonal_random_features(num_features, d, generator) "
        "for q and k; q and k each scaled by d ** -0.25; favor_feature_map(q', W, "
        "is_query=True) and favor_feature_map(k', W) (is_query=False); then "
        "linear_attention(phi_q, phi_k, v, feature_map=lambda t: t), which divides by the "
        "normaliser.",
    ),
    "missing_scale": (
        "q kᵀ without the 1/sqrt(d) scale",
        "softmax attention uses q . k / sqrt(d): scale q and k by d ** -0.25 "
        "before the feature map.",
    ),
    "scale_inverted": (
        "q and k scaled by d ** +0.25 instead of d ** -0.25: scores multiplied by sqrt(d), "
        "not divided",
        "the exponent is negative: q' = q * d ** -0.25 and k' = k * d ** -0.25, so that "
        "q' . k' = q . k / sqrt(d).",
    ),
    "v_scaled": (
        "v scaled by d ** -0.25 too: the output shrinks by that factor",
        "only q and k carry the 1/sqrt(d) of the scores; pass v to linear_attention as it is.",
    ),
    "scale_squared": (
        "scores divided by d instead of sqrt(d) (q and k each scaled by d ** -0.5)",
        "the product q' . k' must be q . k / sqrt(d): scale each of q and k by d ** -0.25 "
        "(the fourth root), so that the two factors multiply to 1 / sqrt(d).",
    ),
    "separate_features": (
        "q and k mapped with different random features, whose average is uniform attention",
        "E[phi_W(q) . phi_W(k)] = exp(q . k) only with the same W on both sides: draw W "
        "once, W = orthogonal_random_features(num_features, d, generator), and pass that W "
        "to both favor_feature_map calls.",
    ),
    "features_remapped": (
        "uniform attention: the FAVOR+ features mapped again by linear_attention's default "
        "elu(x) + 1 (they are at most 1 / sqrt(m), so every weight is about 1)",
        "phi_q and phi_k are already the features: call linear_attention(phi_q, phi_k, v, "
        "feature_map=lambda t: t).",
    ),
    "ignores_num_features": (
        "num_features ignored: the same output for 128 and 8192 features",
        "draw W = orthogonal_random_features(num_features, d, generator) with the "
        "num_features you are given.",
    ),
    "noise_does_not_fall": (
        "noise that does not fall as num_features grows: a stabiliser taken per key row "
        "(keys with is_query=True, or q and k's is_query swapped)",
        "subtracting a different max from each key changes its weight, whatever m: map the "
        "queries with is_query=True and the keys with is_query=False (one max per slice).",
    ),
    "ignores_generator": (
        "the generator ignored: the same output for two different generator states (features "
        "drawn from a fixed seed or a torch.Generator of your own?)",
        "pass the caller's `generator` itself on: W = orthogonal_random_features(num_features, "
        "d, generator); the caller's generator decides the features.",
    ),
    "features_args_swapped": (
        "orthogonal_random_features(d, num_features): its arguments swapped, so it draws one "
        "(m, m) block of dim = m (a QR of an m x m matrix) and returns (d, m) features where "
        "(m, d) belong (a .T only hides the shape)",
        "the number of features comes first: W = orthogonal_random_features(num_features, d, "
        "generator), already (m, d); no transpose.",
    ),
    "features_not_cast": (
        "random features left in float32 for float64 inputs",
        "orthogonal_random_features returns float32: cast W to the inputs' dtype, "
        "W = orthogonal_random_features(...).to(q.dtype).",
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
    "nominal_segment_length": (
        "every segment sum divided by L // m, where segments of t * m // L hold L // m or "
        "L // m + 1 tokens",
        "divide each segment's sum by its own token count: torch.bincount(segment, minlength=m) "
        "(or the one-hot matrix's row sums).",
    ),
    "segment_sums": (
        "segment sums instead of segment means (not divided by the segment's token count)",
        "divide each segment's sum by its number of tokens: the counts differ by one between "
        "segments when m does not divide L.",
    ),
    "empty_segments": (
        "empty segments (0 / 0, or 0 once the counts are clamped): a segment index that skips "
        "some of 0 .. m - 1, such as t * L // m",
        "token t belongs to segment t * m // L (multiply by m, then divide by L): every "
        "segment gets L // m or L // m + 1 tokens.",
    ),
    "token_loop": (
        "a Python loop over the tokens",
        "build every token's segment at once, seg = torch.arange(L) * m // L, then sum with a "
        "one-hot (m, L) matrix @ x or index_add_; a loop over the m segments is fine.",
    ),
    "new_tensor_dtype": (
        "a new tensor made in float32 (the default) meeting a float64 input",
        "make new tensors in the input's dtype: torch.zeros(..., dtype=x.dtype) or "
        "mask.to(x.dtype), never .float().",
    ),
    "unscaled_pinv_init": (
        "Z_0 = A^T without the 1 / (||A||_1 ||A||_inf) scaling: the iteration diverges",
        "start from Z_0 = A^T / (||A||_1 ||A||_inf), with ||A||_1 the largest "
        "column sum of |A| and ||A||_inf the largest row sum: it puts every "
        "eigenvalue of A Z_0 in (0, 1], where the iteration converges.",
    ),
    "pinv_init_not_transposed": (
        "Z_0 = A / (||A||_1 ||A||_inf), not transposed: the iteration diverges",
        "start from the transpose, Z_0 = A.transpose(-2, -1) / (||A||_1 ||A||_inf): then "
        "A Z_0 = A A^T / (...) is symmetric with eigenvalues in (0, 1].",
    ),
    "pinv_update_diverges": (
        "an update that diverges although Z_0 is right",
        "check the update against Z = 0.25 * Z @ (13 I - AZ @ (15 I - AZ @ (7 I - AZ))), "
        "with AZ = A @ Z recomputed at every step from the newest Z.",
    ),
    "wrong_pinv_scaling": (
        "Z_0 scaled by another norm than ||A||_1 ||A||_inf (||A||_1 or ||A||_inf twice, sums "
        "without abs, the Frobenius norm squared or the largest |a_ij| squared)",
        "||A||_1 is the largest column sum of |A|, a.abs().sum(-2).amax(-1); ||A||_inf the "
        "largest row sum, a.abs().sum(-1).amax(-1); Z_0 = A^T divided by their product.",
    ),
    "pinv_factor_order": (
        "the update's factors in the wrong order: (13I - AZ (...)) Z instead of Z (13I - ...)",
        "matrix products do not commute: Z = 0.25 * Z @ (13 I - AZ @ (15 I - AZ @ (7 I - AZ))), "
        "with Z on the left.",
    ),
    "pinv_missing_quarter": (
        "the update without its factor 1/4",
        "Z = 0.25 * Z @ (13 I - AZ @ (15 I - AZ @ (7 I - AZ))): at the fixed point Z = A^+ the "
        "bracket is 4 I, and the 0.25 brings it back to Z.",
    ),
    "pinv_stale_az": (
        "AZ computed once before the loop, not from the newest Z",
        "recompute AZ = A @ Z at the start of every step, inside the loop.",
    ),
    "iterations_off_by_one": (
        "one update step too many or too few",
        "run exactly `iterations` steps, for _ in range(iterations): iterative_pinv(a, 0) "
        "returns Z_0 itself.",
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
    "b_from_key_landmarks": (
        "B = softmax(K~ K^T): the key landmarks in B, where the query landmarks Q~ belong",
        "the three kernels are F = softmax(Q K~^T), A = softmax(Q~ K~^T), B = softmax(Q~ K^T): "
        "B pairs the query landmarks with every key.",
    ),
    "scale_after_softmax": (
        "1/sqrt(d) applied after the softmax (to the probabilities) instead of to the scores",
        "scale the scores inside: softmax(q @ k~.T * d ** -0.5); a factor after the softmax "
        "only rescales the output.",
    ),
    "kernel_scale_of_m": (
        "scores scaled by 1/sqrt(num_landmarks) where 1/sqrt(d) belongs",
        "the scale is the head dim's, as in softmax attention: d = q.shape[-1], scale = "
        "d ** -0.5, whatever the number of landmarks.",
    ),
    "pinv_transposed": (
        "pinv(A) transposed: A is not symmetric, and F pinv(A) B needs pinv(A) itself",
        "use iterative_pinv(A) as it comes: (m, m), no .mT; the transpose belongs only to Z_0 "
        "inside iterative_pinv.",
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
    "kernel_scale_inverted": (
        "scores multiplied by sqrt(d) instead of divided",
        "every kernel is softmax(scores / math.sqrt(d)): divide, or multiply by d ** -0.5.",
    ),
    "key_landmarks_from_q": (
        "key landmarks K~ taken from q",
        "K~ = landmarks(k, m) and Q~ = landmarks(q, m): each from its own input.",
    ),
    "pinv_skipped": (
        "F (B V) without pinv(A) in the middle, or with A itself where its pseudo-inverse belongs",
        "the Nyström product is F @ (iterative_pinv(A, pinv_iterations) @ (B @ V)): the "
        "pseudo-inverse of the landmarks' kernel A joins F and B.",
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
