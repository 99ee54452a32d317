"""What day09's checks tell the student: HINTS, the mistakes they name, and FORBIDDEN, what
the student's functions must not call."""

import course.reference.mamba_scan
from grader.harness.triton_watch import OUT_OF_BOUNDS

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
    "scan_along_first_axis": (
        "the scan run along the first axis (a[t] indexes dim 0) instead of the last",
        "time is the LAST axis: a[..., t] and b[..., t]; every leading dim is a separate row.",
    ),
    "decay_shifted": (
        "h_t = a_{t-1} h_{t-1} + b_t: each step decayed by the previous step's a",
        "step t decays the old state by its own a_t: h_t = a[..., t] * h + b[..., t] (in the "
        "unrolled sum the product runs over s < r <= t, so it ends with a_t).",
    ),
    "initial_state_one": (
        "the state started at 1 instead of h_{-1} = 0",
        "start from zeros: torch.zeros(a.shape[:-1], dtype=a.dtype, device=a.device).",
    ),
    "a_b_swapped": (
        "a and b swapped: h_t = b_t h_{t-1} + a_t",
        "a decays the old state, b is what step t writes: h_t = a_t * h_{t-1} + b_t.",
    ),
    "modified_input": (
        "an input changed in place",
        "the caller still needs every tensor it passed: compute into new tensors (delta = delta "
        "+ delta_bias[:, None], not delta += ...), or update copies (A, H = a.clone(), "
        "b.clone()); never write into an argument (a[...] = ..., b += ..., A[A == 0] = 1).",
    ),
    "divides_by_running_product": (
        "a closed form that divides by the running product of a, such as cumprod(a) * "
        "cumsum(b / cumprod(a)): the product is 0 after an a_t = 0, and underflows to 0 on a long "
        "row of decays below 1, so b / product is inf and h NaN",
        "never divide by a product of decays: it is exact only in exact arithmetic. Loop over time "
        "(exercise 1) or combine pairs (a, b) in a scan (exercise 2), which only multiply.",
    ),
    "last_step_skipped": (
        "the last step never computed (h_{L-1} left at 0): a loop over range(L - 1)",
        "the loop runs over every step, for t in range(L): the last output is h_{L-1}.",
    ),
    "scan_along_dim_1": (
        "time indexed as dim 1 (a[:, t], H[:, d:]), which is time only for a 2-D input: a 1-D "
        "(L,) input has no dim 1, and a 3-D (batch, dim, L) one is scanned along dim",
        "index time from the end, a[..., t] or H[..., d:]: the ellipsis stands for however many "
        "leading dims there are (none for (L,)).",
    ),
    "offsets_not_doubled": (
        "offsets d = 1, 2, 3, ... where Hillis-Steele doubles them (d = 1, 2, 4, ...)",
        "after the step with offset d each position holds the 2d steps ending at it, so the next "
        "offset is 2d: `d *= 2` while d < L.",
    ),
    "shift_wraps_around": (
        "the shift made with torch.roll, which wraps the end of the row around to its start: the "
        "first d positions absorb the last d instead of the identity (1, 0)",
        "shift in the identity instead: F.pad(A[..., :-d], (d, 0), value=1.0) and "
        "F.pad(H[..., :-d], (d, 0)), or update only the slice [..., d:].",
    ),
    "carry_not_shifted": (
        "each chunk corrected by the state at its OWN end instead of the state entering it (the "
        "scan of the chunk ends not shifted by one chunk)",
        "chunk c starts from the end of chunk c - 1: shift the ends right by one, entering = "
        "F.pad(ends[..., :-1], (1, 0)) (0 for the first chunk).",
    ),
    "ends_summed": (
        "the chunk ends summed (a cumsum) without the decays between them",
        "an end state decays through every later chunk: scan the ends as a recurrence, "
        "H_c = P_end,c * H_{c-1} + local_end,c, with your own scan over the chunk axis.",
    ),
    "carry_decayed_by_first_a": (
        "the state carried across a chunk decayed by its first decay P_0 = a_start only, instead "
        "of the whole chunk's P_end = a_start * ... * a_end",
        "the chunk ends' recurrence uses the whole chunk's decay: P[..., -1], the last entry of the "
        "cumprod within the chunk.",
    ),
    "decay_over_whole_row": (
        "the decays P from one cumprod over the whole row instead of restarting in each chunk",
        "P_t runs from the chunk's start to t: torch.cumprod along the last axis of the "
        "(..., n, chunk_size) view, not of the full row.",
    ),
    "grid_from_first_dim": (
        "a grid of a.shape[0] programs instead of one per row: for a (L,) input that is L "
        "programs for one row, and every program past the first reads and writes past the end",
        "launch one program per row, kernel[(rows,)](...) with rows = a.numel() // L (1 for a "
        "(L,) input).",
    ),
    "scan_axis_not_0": (
        "tl.associative_scan along an axis the block does not have: a row is one 1-D block",
        "scan the block along its only axis: tl.associative_scan((a, b), 0, scan_combine).",
    ),
    "exp_minus_one": (
        "(exp(delta*A) - 1) computed as written: for a tiny delta*A, exp rounds to 1 plus a few "
        "units in the last place and the subtraction keeps only those (a relative error far "
        "beyond the inputs' own rounding)",
        "use torch.expm1(delta * A), which computes exp(x) - 1 without the cancellation.",
    ),
    "zero_a_zeroed": (
        "B_bar = 0 where A = 0: the NaN of 0 / 0 replaced by 0 (nan_to_num, or a where) instead of "
        "the limit",
        "as A -> 0, (exp(delta*A) - 1) / A -> delta: B_bar = delta * B there, "
        "torch.where(A == 0, delta, torch.expm1(dA) / safe_A).",
    ),
    "b_reshaped": (
        "B reshaped from (batch, state, L) to (batch, L, state) instead of transposed: the values "
        "land in the wrong places",
        "reshape only regroups the memory in order; moving an axis needs B.transpose(1, 2).",
    ),
    "a_bar_without_delta": (
        "A_bar = exp(A): the step delta left out",
        "the state decays over a step of length delta: A_bar = torch.exp(delta[..., None] * "
        "A[:, None, :]).",
    ),
    "b_without_delta": (
        "the input term B * u without delta (delta * B * u in the reference)",
        "a longer step writes more of the input: deltaB_u = delta * B * u.",
    ),
    "dim_state_crossed": (
        "a state axis lined up against the channel axis dim: B or C (batch, state, L) with a new "
        "axis in the wrong place (C[:, :, None, :]), or a sum over dim instead of state",
        "B and C have no dim axis: insert it at 1, C[:, None] is (batch, 1, state, L) against "
        "the state's (batch, dim, state, L); the readout sums over state only.",
    ),
    "in_proj_split_along_l": (
        "in_proj's output split along L (chunk(2, dim=1) on (batch, L, 2 * d_inner)) instead of "
        "along its features: u keeps all 2 * d_inner features and the conv refuses them",
        "split the features, the last axis of in_proj's output: u, z = xz.chunk(2, dim=-1), then "
        "move the channels to dim 1 with .transpose(1, 2).",
    ),
    "x_proj_before_conv": (
        "x_proj fed u from before the convolution and its SiLU",
        "delta, B and C come from the convolved u: u = F.silu(conv(u)[..., :L]) first, then "
        "x_proj(u.transpose(1, 2)).",
    ),
    "gate_silu_twice": (
        "z put through SiLU before the scan, which applies silu(z) again",
        "pass z as in_proj gives it: selective_scan gates with out * silu(z) itself.",
    ),
    "b_c_reshaped": (
        "B and C reshaped from (batch, L, d_state) to (batch, d_state, L) instead of transposed",
        "reshape regroups the memory in order, it does not move an axis: B.transpose(1, 2), "
        "C.transpose(1, 2).",
    ),
    "missing_last_step": (
        "floor(log2 L) doubling steps, one too few when L is not a power of two (the "
        "positions from the largest power of two on miss their earliest inputs)",
        "keep doubling while d < L (ceil(log2 L) steps): `d = 1; while d < L: ...; d *= 2`.",
    ),
    "rows_not_launched": (
        "a grid with fewer programs than rows: the rows no program ran for are never written "
        "(h keeps whatever torch.empty gave)",
        "launch one program per row, kernel[(rows,)](...) with rows = a.numel() // L, and let "
        "each program find its row with tl.program_id(0).",
    ),
    "decay_from_left": (
        "the absorbed H_{t-d} decayed by the earlier position's A_{t-d} instead of A_t",
        "position t decays what it absorbs by its own decays: H_t <- A_t * H_{t-d} + H_t "
        "(A[..., d:] * H[..., :-d]: the same slice for A as for the H being updated).",
    ),
    "front_padding": (
        "the sequence padded at the front but cropped at the end: h shifted right by the pad, "
        "zeros first",
        "pad at the end, where the crop [..., :L] removes it: F.pad(a, (0, pad), value=1.0) and "
        "F.pad(b, (0, pad)).",
    ),
    "chunks_strided": (
        "the chunks cut as (chunk_size, n) and transposed: chunk j holds positions j, j + n, "
        "j + 2n, ... instead of a run of consecutive steps",
        "a chunk is consecutive steps: reshape (..., L) to (..., n, chunk_size) directly "
        "(n chunks first), with no transpose.",
    ),
    "decays_not_composed": (
        "the decays A never composed: each step combined H but left A as the single a_t",
        "a step updates both fields: A_t <- A_{t-d} * A_t as well as H_t <- A_t * H_{t-d} + H_t, "
        "so that A_t stays the product of the decays H_t spans.",
    ),
    "decays_updated_before_h": (
        "A updated before H in the same step, so H read the new A",
        "within one step compute both from the OLD A and H (H first, or new tensors for both): "
        "H_t <- A_t * H_{t-d} + H_t with the A_t of before the step.",
    ),
    "decay_without_a_t": (
        "the carry decayed by a_start * ... * a_{t-1}, without a_t",
        "P_t includes step t itself: P = torch.cumprod(a_chunk, -1), then h_t = local_t + P_t * "
        "h_entering.",
    ),
    "carry_from_local_end": (
        "the state entering the next chunk taken from the chunk's local scan (started at 0) "
        "instead of its true last state",
        "the next chunk starts from the TRUE end state, h_end = local_end + P_end * h_entering "
        "(the last entry of the chunk's corrected h).",
    ),
    "carry_added_twice": (
        "the carry added twice into the next chunk's entering state",
        "the corrected last entry h_end already holds P_end * h_entering: carry h_end itself.",
    ),
    "no_error_for_bad_chunk_size": (
        "chunk_size < 1 accepted without a clear error",
        'check it first: `if chunk_size < 1: raise ValueError(f"chunk_size must be >= 1, '
        'got {chunk_size}")`.',
    ),
    "block_not_power_of_two": (
        "a block whose size is not a power of two (tl.arange needs one)",
        "round the row up: BLOCK = triton.next_power_of_2(L), and mask the lanes past L.",
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
    "combine_a_not_composed": (
        "scan_combine's first field not a_left * a_right: right when the scan runs one element "
        "at a time, left to right, wrong when it combines two blocks, as a GPU's tree does",
        "the combined block decays by both blocks' decays: return a_left * a_right, "
        "a_right * b_left + b_right.",
    ),
    "combine_decays_own_b": (
        "scan_combine decaying the earlier block's b by its own a (a_left * b_left)",
        "the earlier block's b decays through the LATER block: a_right * b_left + b_right.",
    ),
    "scan_product_stored": (
        "the scan's first field stored: the running product of a, not h",
        "tl.associative_scan returns the scanned tuple in the order you passed it: "
        "`_, h = tl.associative_scan((a, b), 0, scan_combine)` and store h.",
    ),
    "strided_as_contiguous": (
        "a strided view read as if it were contiguous (row * L + t indexes its memory, not its "
        "entries)",
        "reshape keeps a view's strides; the kernel assumes contiguous rows: "
        "a.reshape(-1, L).contiguous() before the launch.",
    ),
    "out_of_bounds": OUT_OF_BOUNDS,
    "row_stride_block": (
        "rows read or written at row * BLOCK (the padded block) instead of row * L: row 0 is "
        "right, every later row starts in the wrong place and the last runs past the end",
        "step over whole rows of the tensor, a_ptr + row * L + offsets: BLOCK only sizes the "
        "lanes of one row.",
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
    "l_state_crossed": (
        "an L axis lined up against a state axis: B used in its (batch, state, L) layout where "
        "each term must be (batch, dim, L, state) (or delta without its [..., None])",
        "B arrives as (batch, state, L): move state last before broadcasting, "
        "B.transpose(1, 2)[:, None] is (batch, 1, L, state); with delta[..., None] and "
        "A[:, None, :] every term lines up as (batch, dim, L, state).",
    ),
    "pair_swapped": (
        "the pair returned as (B_bar, A_bar)",
        "return A_bar first, then B_bar: `return A_bar, B_bar`.",
    ),
    "zero_a_limit_b": (
        "B_bar = B where A = 0 (the limit without its delta)",
        "as A -> 0, (exp(delta*A) - 1) / A -> delta: B_bar = delta * B there.",
    ),
    "b_delta_twice": (
        "B_bar multiplied by delta on top of the exact hold (exp(delta*A) - 1) / A * delta * B",
        "the exact hold has no extra delta: B_bar = (exp(delta*A) - 1) / A * B (delta * B is "
        "its small-step limit, not a factor to add).",
    ),
    "readout_before_update": (
        "y_t read out from the state before step t's update (C_t x_{t-1})",
        "update the state first, then read out: x = deltaA * x + deltaB_u; y_t = x @ C_t.",
    ),
    "readout_over_channels": (
        "y_t summed over the channels d instead of the state n: every channel reads out the same",
        "each channel d reads out its own state row: y_t[d] = sum_n C_t[n] x_t[d, n], i.e. "
        "x @ C_t or an einsum summing over n only.",
    ),
    "b_c_swapped": (
        "B and C swapped: C writes into the state and B reads it out",
        "B writes (deltaB_u = delta * B * u), C reads (y_t = x @ C_t); both are (batch, state, L).",
    ),
    "u_missing": (
        "the input term without u: x_t = deltaA x_{t-1} + delta * B",
        "the input enters the state: deltaB_u = delta * B * u.",
    ),
    "u_z_swapped": (
        "u and z swapped: the first half of in_proj's output used as the gate",
        "in_proj's output splits as (u, z), u first: u, z = xz.chunk(2, dim=-1) on its "
        "(batch, L, 2 * d_inner) output, or dim=1 once channels are moved to dim 1.",
    ),
    "conv_input_layout": (
        "u given to the convolution as (batch, L, d_inner), the layout in_proj returns: "
        "nn.Conv1d reads the channels from dim 1 and slides along the last axis",
        "transpose before splitting: u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1), "
        "each (batch, d_inner, L), the layout the conv, the scan and the gate all take.",
    ),
    "scan_b_c_layout": (
        "B and C passed to selective_scan as x_proj returns them, (batch, L, d_state), where the "
        "scan takes (batch, d_state, L)",
        "transpose both for the scan: selective_scan(u, delta, A, B.transpose(1, 2), "
        "C.transpose(1, 2), ...).",
    ),
    "x_proj_split_order": (
        "x_proj's output split in another order than (dt, B, C)",
        "x_proj's output is (dt, B, C) along the last axis: "
        "torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1).",
    ),
    "dt_bias_twice": (
        "dt_proj's bias added twice: by self.dt_proj(dt) and again as delta_bias",
        "apply dt_proj's weight only (dt @ self.dt_proj.weight.T); its bias goes in once, as "
        "delta_bias.",
    ),
    "not_initialised_as_mamba": (
        "a fresh block not initialised as mamba_ssm's",
        "A_log = log(1, 2, ..., d_state) in every row (torch.arange(1, d_state + 1) repeated "
        "d_inner times, then torch.log) and D = ones(d_inner).",
    ),
    "softplus_twice": (
        "softplus applied to delta twice",
        "apply F.softplus once, after adding delta_bias, and only when delta_softplus=True.",
    ),
    "softplus_overflow": (
        "softplus written as log(1 + exp(delta)), which overflows to inf once exp(delta) does",
        "use F.softplus(delta): it returns delta itself for large delta instead of exp'ing it.",
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
    "per_channel_along_l": (
        "a per-channel tensor (delta_bias or D, shape (dim,); A, (dim, state)) broadcast with its "
        "dim axis lined up against L",
        "give it the axes it lacks so that dim meets dim: delta + delta_bias[:, None] and "
        "D[:, None] * u against (batch, dim, L); A[:, None, :] against (batch, dim, L, state).",
    ),
    "tensor_truth_value": (
        "an optional tensor used as a condition (`if D:`, `if z:`), where `is not None` was meant",
        "test whether it was given with `if D is not None:` (likewise z and delta_bias): the truth "
        "value of a tensor with several entries is undefined.",
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
    "no_error_for_bad_layout": (
        "inputs in the wrong layout accepted without a clear error",
        "check each input against the layout the docstring gives before computing, and raise "
        'ValueError naming it, e.g. `if tuple(B.shape) != (batch, state, L): raise ValueError(f"B '
        'must be (batch, state, L) = {(batch, state, L)}, got {tuple(B.shape)}")`.',
    ),
    "no_error_for_bad_features": (
        "x with the wrong feature size accepted without a clear error",
        "check x at the start of forward: `if x.ndim != 3 or x.shape[-1] != self.d_model: raise "
        'ValueError(f"x must be (batch, L, {self.d_model}), got {tuple(x.shape)}")`.',
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
