"""What day09's checks tell the student: HINTS, the mistakes they name, and FORBIDDEN, what
the student's functions must not call."""

import course.reference.mamba_scan

HINTS = {
    "combine_wrong_order": (
        "the combine operator applied in the wrong order (later element first)",
        "the combine is not commutative: (a1, b1) then (a2, b2) is (a1*a2, a2*b1 + b2), where "
        "(a1, b1) is the EARLIER block; in a scan step, element t absorbs element t - d as its "
        "left (earlier) operand.",
    ),
    "exclusive_scan": (
        "an exclusive scan: h shifted right by one (h_{t-1} at position t, 0 first)",
        "h_t includes step t itself: h_0 = b_0, not 0. If your scan is exclusive (Blelloch), "
        "turn it inclusive with h_t = a_t * excl_t + b_t.",
    ),
    "exclusive_plus_b": (
        "h_{t-1} + b_t: the exclusive scan turned inclusive without multiplying by a_t",
        "from the exclusive scan excl_t = h_{t-1}, the inclusive one is a_t * excl_t + b_t.",
    ),
    "shifted_left": (
        "h shifted left by one (h_{t+1} at position t)",
        "position t holds the state after step t: h_0 = b_0, h_1 = a_1*b_0 + b_1.",
    ),
    "decay_after_write": (
        "h_t = a_t * (h_{t-1} + b_t): the input decayed along with the old state",
        "only the old state decays: h_t = a_t * h_{t-1} + b_t.",
    ),
    "reversed_time": (
        "the recurrence run from the end of the sequence to the start",
        "time runs forward along the last axis: h_0 = b_0 first, h_{L-1} last.",
    ),
    "state_not_reset": (
        "the state carried from the end of one batch row into the start of the next",
        "every row starts from h_{-1} = 0: scan along the last axis only, never across rows "
        "(reset the state for each row, or keep every leading dim separate).",
    ),
    "sequential_loop": (
        "a Python loop over time steps",
        "the parallel scan takes ceil(log2 L) vectorised steps: at step d = 1, 2, 4, ... every "
        "position t >= d absorbs position t - d at once (shifted slices, torch.cat or F.pad).",
    ),
    "drops_last_chunk": (
        "the last, shorter chunk left out when L is not a multiple of chunk_size",
        "there are ceil(L / chunk_size) chunks; pad with a = 1, b = 0 (the identity) and crop to L.",
    ),
    "carry_not_decayed": (
        "the carried state added to a chunk without the decay a_0 * ... * a_t inside the chunk",
        "h_t = local_t + (a_start * ... * a_t) * h_entering: the entering state decays step by step.",
    ),
    "no_carry": (
        "each chunk scanned from zero, without the state of the chunks before it",
        "carry the last state of each chunk into the next: h_t = local_t + (prod of a in the "
        "chunk up to t) * h_entering.",
    ),
    "euler_a": (
        "A_bar = 1 + delta*A (Euler) instead of the zero-order hold exp(delta*A)",
        "the exact solution of h' = A h over a step delta is exp(delta*A): A_bar = torch.exp(delta*A).",
    ),
    "simplified_b": (
        "B_bar = delta*B (Mamba's simplification) where the exact ZOH is asked",
        "discretize_zoh is the exact hold: B_bar = (exp(delta*A) - 1) / A * B "
        "(torch.expm1 is accurate for small delta*A).",
    ),
    "b_not_divided": (
        "B_bar = (exp(delta*A) - 1) * B without the division by A",
        "B_bar = (exp(delta*A) - 1) / A * B.",
    ),
    "missing_minus_one": (
        "B_bar = exp(delta*A) / A * B, without the - 1",
        "B_bar = (exp(delta*A) - 1) / A * B, i.e. torch.expm1(delta*A) / A * B.",
    ),
    "zero_a_nan": (
        "NaN where A = 0 (0 / 0)",
        "where A == 0 the hold gives B_bar = delta * B (the limit of (exp(delta*A) - 1) / A): "
        "use torch.where, dividing by a safe A.",
    ),
    "softplus_twice": (
        "softplus applied to delta twice",
        "apply F.softplus once, after adding delta_bias, and only when delta_softplus=True.",
    ),
    "softplus_missing": (
        "no softplus although delta_softplus=True",
        "when delta_softplus is True, delta = F.softplus(delta + delta_bias).",
    ),
    "softplus_ignores_flag": (
        "softplus applied although delta_softplus=False",
        "apply softplus only when delta_softplus is True.",
    ),
    "bias_after_softplus": (
        "delta_bias added after the softplus",
        "add the bias first, then the softplus: F.softplus(delta + delta_bias[:, None]).",
    ),
    "bias_ignored": (
        "delta_bias ignored",
        "delta = delta + delta_bias[:, None] (one bias per channel d), before any softplus.",
    ),
    "missing_d": (
        "the skip term D * u missing",
        "out = y + D[:, None] * u when D is given, before the gate.",
    ),
    "d_after_gate": (
        "the D * u skip added after the gate",
        "the reference computes out = (y + D * u) * silu(z): the skip is gated too.",
    ),
    "gate_without_silu": (
        "the output multiplied by z instead of silu(z)",
        "gate with out * F.silu(z).",
    ),
    "gate_sigmoid": (
        "the output multiplied by sigmoid(z) instead of silu(z) = z * sigmoid(z)",
        "gate with out * F.silu(z).",
    ),
    "gate_ignored": ("z ignored", "when z is given, out = out * F.silu(z)."),
    "zoh_b_in_scan": (
        "the exact ZOH B_bar in the scan, where the reference uses delta * B",
        "selective_scan follows selective_scan_ref: deltaB_u = delta * B * u (Mamba's simplification).",
    ),
    "wrong_parameters": (
        "parameters missing or with other shapes than mamba_ssm's Mamba",
        "use mamba_ssm's names and shapes: in_proj (d_model -> 2*d_inner, no bias), conv1d "
        "(depthwise, kernel d_conv, padding d_conv-1, bias), x_proj (d_inner -> dt_rank + "
        "2*d_state, no bias), dt_proj (dt_rank -> d_inner, bias), A_log (d_inner, d_state), "
        "D (d_inner,), out_proj (d_inner -> d_model, no bias); d_inner = expand*d_model, "
        "dt_rank = ceil(d_model / 16).",
    ),
    "conv_not_causal": (
        "a convolution that sees future tokens (the wrong end of the padded output kept)",
        "Conv1d with padding=d_conv-1 pads both ends: keep the FIRST L outputs, conv(u)[..., :L].",
    ),
    "not_causal": (
        "an output at position t that changes when a later input changes",
        "every step may use inputs up to t only: a causal convolution (keep the first L outputs) "
        "and a forward scan.",
    ),
    "no_conv_silu": (
        "no SiLU after the convolution",
        "u = F.silu(conv(u)[..., :L]) before x_proj and the scan.",
    ),
    "a_positive": (
        "A = exp(A_log) (positive: a state that grows) instead of -exp(A_log)",
        "A = -torch.exp(self.A_log): negative, so exp(delta*A) < 1 and the state decays.",
    ),
    "not_a_module": (
        "something other than an nn.Module",
        "subclass nn.Module and call super().__init__() first.",
    ),
    "no_error_for_bad_input": (
        "bad input accepted without a clear error",
        "check shapes first and raise ValueError naming the shapes, e.g. "
        '`raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")`.',
    ),
    "not_a_pair": ("something other than the pair (A_bar, B_bar)", "return A_bar, B_bar."),
}

LIBRARY = (
    "course.reference.mamba_scan is the course's library version, for later days: write yours."
)
FORBIDDEN = {
    fn: LIBRARY
    for fn in (
        course.reference.mamba_scan.linear_recurrence_sequential,
        course.reference.mamba_scan.linear_recurrence_parallel,
        course.reference.mamba_scan.linear_recurrence_chunked,
        course.reference.mamba_scan.linear_recurrence_triton,
        course.reference.mamba_scan.discretize_zoh,
        course.reference.mamba_scan.selective_scan,
        course.reference.mamba_scan.scan_attention_matrix,
        course.reference.mamba_scan.MambaBlock.forward,
        course.reference.mamba_scan.MambaBlock.__init__,
        course.reference.mamba_scan._scan_pairs,
    )
}
