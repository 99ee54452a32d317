"""Checks for day09-mamba-scan: linear recurrences four ways, ZOH discretisation, the selective
scan of mamba_ssm's selective_scan_ref, and a Mamba block.

Oracles: float64 Python loops over time (the recurrence, and the reference selective scan written
as the loop of selective_scan_ref), and torch built-ins (exp, expm1, softplus, silu, conv1d) for
the discretisation and the block. Each named mistake is the same oracle with one thing changed
(the combine applied in the wrong order, the scan shifted by one, Euler instead of ZOH, softplus
twice or not at all, no D term, the state carried from one batch row into the next, ...).
The parallel scan must take O(log L) vectorised steps: the Python lines it runs may not grow
with L.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import course.reference.mamba_scan
from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
    student_lines,
)
from grader.suites import Exercise
from grader.suites._common import draw, randn

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


# ----------------------------------------------------------------------------- recurrence oracles


def loop64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along the last axis, in float64, one step at a time."""
    a, b = a.double(), b.double()
    h, state = torch.empty_like(b), torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h


def wrong_order64(a, b):
    """The maps composed in reverse: h'_t = b_0 + a_0 (b_1 + a_1 (... b_t))."""
    a, b = a.double(), b.double()
    h = torch.empty_like(b)
    for t in range(b.shape[-1]):
        state = torch.zeros_like(b[..., 0])
        for s in range(t, -1, -1):
            state = a[..., s] * state + b[..., s]
        h[..., t] = state
    return h


def recurrence_suspects(a, b) -> list:
    h = loop64(a, b)
    zero = torch.zeros_like(h[..., :1])
    flat = loop64(a.reshape(1, -1), b.reshape(1, -1)).reshape(h.shape)
    return [
        ("combine_wrong_order", wrong_order64(a, b)),
        ("exclusive_scan", torch.cat([zero, h[..., :-1]], -1)),
        ("exclusive_plus_b", torch.cat([zero, h[..., :-1]], -1) + b.double()),
        ("shifted_left", torch.cat([h[..., 1:], h[..., -1:]], -1)),
        ("shifted_left", torch.cat([h[..., 1:], zero], -1)),
        ("decay_after_write", loop64(a, a.double() * b.double())),
        ("reversed_time", loop64(a.flip(-1), b.flip(-1)).flip(-1)),
        ("state_not_reset", flat),
    ]


def recurrence_inputs(rng, shape, dtype=torch.float64):
    """a in (-1, 1) (some negative: a scan must not assume a > 0), b standard normal."""
    a = (2 * torch.rand(shape, generator=rng, dtype=torch.float64) - 1).to(dtype)
    return a, randn(shape, rng, dtype)


def expect_recurrence(out, a, b, what, extra_suspects=()):
    expect_close(out, loop64(a, b), a.dtype, what, list(extra_suspects) + recurrence_suspects(a, b))


def make_recurrence_checks(
    name: str, call, dtypes=(torch.float64, torch.float32), max_len=70, suspects=lambda a, b: ()
):
    """Checks shared by the four recurrence exercises; `call(impl, a, b)` runs the student's;
    `suspects(a, b)` adds the exercise's own named mistakes."""

    def matches(impl, rng):
        """matches the float64 loop on (batch, dim, L) inputs, odd L"""
        for dtype in dtypes:
            shape = (draw(rng, 2, 3), draw(rng, 2, 4), 2 * draw(rng, 3, max_len // 2) + 1)
            a, b = recurrence_inputs(rng, shape, dtype)
            expect_recurrence(call(impl, a, b), a, b, f"{name} on {shape} {dtype}", suspects(a, b))

    def shapes(impl, rng):
        """any leading dims: (L,), (rows, L); L = 1 and L = 2 by hand"""
        dtype = dtypes[0]
        for shape in [(draw(rng, 5, max_len),), (draw(rng, 2, 5), draw(rng, 5, 40)), (3, 1), (2,)]:
            a, b = recurrence_inputs(rng, shape, dtype)
            expect_recurrence(call(impl, a, b), a, b, f"{name} on {shape}", suspects(a, b))

    def rows_independent(impl, rng):
        """each batch row starts from h = 0 (the state is reset between rows)"""
        dtype = dtypes[0]
        L = draw(rng, 4, 12)
        a = torch.ones(4, L, dtype=dtype)
        b = randn((4, L), rng, dtype)
        expect_recurrence(call(impl, a, b), a, b, f"{name} on 4 rows with a = 1 (running sums)")

    def rejects_bad_input(impl, rng):
        """mismatched shapes give a clear ValueError"""
        L = draw(rng, 4, 12)
        a, b = recurrence_inputs(rng, (2, L), dtypes[0])
        expect_value_error(
            lambda: call(impl, a, b[..., :-1]),
            f"{name} with a {tuple(a.shape)}, b {tuple(b[..., :-1].shape)}",
            "no_error_for_bad_input",
        )
        expect_value_error(
            lambda: call(impl, a, b.T),
            f"{name} with a {tuple(a.shape)}, b {tuple(b.T.shape)} (transposed)",
            "no_error_for_bad_input",
        )

    matches.__name__, shapes.__name__ = f"{name}_matches", f"{name}_shapes"
    return [matches, shapes, rows_independent, rejects_bad_input]


def parallel_log_steps(impl, rng):
    """O(log L) vectorised steps: the Python work does not grow with L (no loop over time)"""

    def at(L):
        a, b = recurrence_inputs(torch.Generator().manual_seed(0), (2, L))
        return lambda: impl(a, b)

    small, large = student_lines(at(64)), student_lines(at(2048))
    if large > small + 120:
        description, hint = HINTS["sequential_loop"]
        raise Mistake(
            f"linear_recurrence_parallel ran {small} lines of Python for L = 64 and "
            f"{large} for L = 2048: it looks like {description}.",
            hint,
            "sequential_loop",
        )


def chunk_suspects(a, b, chunk_size):
    """The chunked scan with the carry between chunks done wrong."""
    L = b.shape[-1]
    no_carry, undecayed = (
        torch.empty_like(b, dtype=torch.float64),
        torch.empty_like(b, dtype=torch.float64),
    )
    carry = torch.zeros_like(b[..., 0], dtype=torch.float64)
    for start in range(0, L, chunk_size):
        part = slice(start, min(start + chunk_size, L))
        local = loop64(a[..., part], b[..., part])
        no_carry[..., part] = local
        undecayed[..., part] = local + carry.unsqueeze(-1)
        carry = loop64(a[..., : part.stop], b[..., : part.stop])[..., -1]
    last = (L // chunk_size) * chunk_size
    dropped = loop64(a, b)
    dropped[..., last:] = 0
    return [
        ("no_carry", no_carry),
        ("carry_not_decayed", undecayed),
        ("drops_last_chunk", dropped),
        ("drops_last_chunk", dropped[..., :last]),
    ]


def chunked_sizes(impl, rng):
    """chunk_size 1, 3, L - 1 (a short last chunk), L and > L"""
    L = draw(rng, 9, 40)
    a, b = recurrence_inputs(rng, (2, 3, L))
    for chunk_size in (1, 3, draw(rng, 4, 7), L - 1, L, L + draw(rng, 1, 5)):
        expect_recurrence(
            impl(a, b, chunk_size),
            a,
            b,
            f"linear_recurrence_chunked(a, b, chunk_size={chunk_size}) with L = {L}",
            chunk_suspects(a, b, chunk_size),
        )


def chunked_rejects_bad_chunk(impl, rng):
    """chunk_size < 1 gives a clear ValueError"""
    a, b = recurrence_inputs(rng, (2, draw(rng, 4, 9)))
    for chunk_size in (0, -draw(rng, 1, 4)):
        expect_value_error(
            lambda: impl(a, b, chunk_size),
            f"linear_recurrence_chunked(a, b, chunk_size={chunk_size})",
            "no_error_for_bad_input",
        )


# ----------------------------------------------------------------------------- discretisation


def scan_shapes(rng, batch=None, dim=None, L=None, state=None):
    batch = batch or draw(rng, 1, 3)
    dim, L, state = dim or draw(rng, 2, 5), L or draw(rng, 3, 12), state or draw(rng, 2, 6)
    if state == L:
        state += 1  # a swapped (L, state) layout cannot hide
    return batch, dim, L, state


def zoh_inputs(rng, batch, dim, L, state, dtype=torch.float64):
    delta = (0.05 + torch.rand(batch, dim, L, generator=rng, dtype=torch.float64)).to(dtype)
    A = -(0.2 + 2 * torch.rand(dim, state, generator=rng, dtype=torch.float64)).to(dtype)
    B = randn((batch, state, L), rng, dtype)
    return delta, A, B


def zoh64(delta, A, B, variant=None):
    dA = delta.double().unsqueeze(-1) * A.double()[:, None, :]
    Bt = B.double().transpose(1, 2).unsqueeze(1)
    A_bar = 1 + dA if variant == "euler_a" else torch.exp(dA)
    A4 = A.double()[:, None, :].expand_as(dA)
    ratio = {
        "simplified_b": delta.double().unsqueeze(-1).expand_as(dA),
        "b_not_divided": torch.expm1(dA),
        "missing_minus_one": torch.exp(dA) / A4,
    }.get(variant)
    if ratio is None:
        ratio = torch.where(
            A4 == 0, delta.double().unsqueeze(-1).expand_as(dA), torch.expm1(dA) / A4
        )
    return A_bar, ratio * Bt


def expect_pair(out, what):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mistake(
            f"{what} should return a pair (A_bar, B_bar), got {type(out).__name__}.",
            "return A_bar, B_bar.",
            "not_a_pair",
        )


HINTS.setdefault(
    "not_a_pair", ("something other than the pair (A_bar, B_bar)", "return A_bar, B_bar.")
)


def expect_zoh(out, delta, A, B, what):
    expect_pair(out, what)
    ref_a, ref_b = zoh64(delta, A, B)
    expect_close(
        out[0],
        ref_a,
        delta.dtype,
        f"A_bar of {what}",
        [("euler_a", zoh64(delta, A, B, "euler_a")[0])],
    )
    expect_close(
        out[1],
        ref_b,
        delta.dtype,
        f"B_bar of {what}",
        [
            (key, zoh64(delta, A, B, key)[1])
            for key in ("simplified_b", "b_not_divided", "missing_minus_one")
        ],
        nonfinite=named("zero_a_nan"),
    )


def zoh_matches(discretize_zoh, rng):
    """A_bar = exp(delta A), B_bar = (exp(delta A) - 1) / A * B, shapes (batch, dim, L, state)"""
    for dtype in (torch.float64, torch.float32):
        shape = scan_shapes(rng)
        delta, A, B = zoh_inputs(rng, *shape, dtype)
        expect_zoh(discretize_zoh(delta, A, B), delta, A, B, f"discretize_zoh on {shape} {dtype}")


def zoh_large_steps(discretize_zoh, rng):
    """large steps (delta up to 5) where Euler and ZOH differ most; tiny steps (1e-4)"""
    shape = scan_shapes(rng)
    delta, A, B = zoh_inputs(rng, *shape)
    for scale in (5.0, 1e-4):
        d = delta * scale
        expect_zoh(discretize_zoh(d, A, B), d, A, B, f"discretize_zoh with delta ~ {scale:g}")


def zoh_zero_a(discretize_zoh, rng):
    """A = 0 in some entries: B_bar = delta * B there (the limit), never NaN"""
    shape = scan_shapes(rng)
    delta, A, B = zoh_inputs(rng, *shape)
    A[0, 0] = 0.0
    A[-1, -1] = 0.0
    expect_zoh(discretize_zoh(delta, A, B), delta, A, B, "discretize_zoh with A[0, 0] = 0")


def zoh_rejects_bad_layout(discretize_zoh, rng):
    """wrong layouts (B as (batch, L, state), A as (state, dim)) give a clear ValueError"""
    batch, dim, L, state = scan_shapes(rng, dim=3, state=5)
    delta, A, B = zoh_inputs(rng, batch, dim, L, state)
    expect_value_error(
        lambda: discretize_zoh(delta, A, B.transpose(1, 2)),
        f"B of shape {tuple(B.transpose(1, 2).shape)} (batch, L, state)",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: discretize_zoh(delta, A.T, B),
        f"A of shape {tuple(A.T.shape)} (state, dim)",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- selective scan


def ref_scan64(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, variant=None
):
    """selective_scan_ref as a float64 loop over batch rows and time; `variant` plants a mistake."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    if delta_bias is not None and variant != "bias_ignored":
        if variant == "bias_after_softplus" and delta_softplus:
            delta = F.softplus(delta) + delta_bias.double()[:, None]
        else:
            delta = delta + delta_bias.double()[:, None]
    if variant == "softplus_twice" and delta_softplus:
        delta = F.softplus(F.softplus(delta))
    elif variant == "softplus_ignores_flag" and not delta_softplus:
        delta = F.softplus(delta)
    elif delta_softplus and variant not in ("softplus_missing", "bias_after_softplus"):
        delta = F.softplus(delta)
    y = torch.empty(batch, dim, L, dtype=torch.float64)
    x = torch.zeros(dim, A.shape[1], dtype=torch.float64)
    for i in range(batch):
        if variant != "state_not_reset":
            x = torch.zeros(dim, A.shape[1], dtype=torch.float64)
        for t in range(L):
            dA = delta[i, :, t, None] * A  # (dim, state)
            deltaA = 1 + dA if variant == "euler_a" else torch.exp(dA)
            if variant == "zoh_b_in_scan":
                b_bar = torch.expm1(dA) / A * B[i, None, :, t]
            else:
                b_bar = delta[i, :, t, None] * B[i, None, :, t]
            x = deltaA * x + b_bar * u[i, :, t, None]
            y[i, :, t] = x @ C[i, :, t]
    out = y
    if D is not None and variant not in ("missing_d", "d_after_gate"):
        out = out + D.double()[:, None] * u
    if z is not None and variant != "gate_ignored":
        gate = {"gate_without_silu": z.double(), "gate_sigmoid": torch.sigmoid(z.double())}
        out = out * gate.get(variant, F.silu(z.double()))
    if D is not None and variant == "d_after_gate":
        out = out + D.double()[:, None] * u
    return out


SCAN_VARIANTS = (
    "softplus_twice",
    "softplus_missing",
    "softplus_ignores_flag",
    "bias_after_softplus",
    "bias_ignored",
    "missing_d",
    "d_after_gate",
    "gate_without_silu",
    "gate_sigmoid",
    "gate_ignored",
    "euler_a",
    "zoh_b_in_scan",
    "state_not_reset",
)


def scan_inputs(rng, batch, dim, L, state, dtype=torch.float64, full=True):
    u = randn((batch, dim, L), rng, dtype)
    delta = randn((batch, dim, L), rng, dtype, 0.5)  # raw, before bias and softplus
    A = -(0.2 + 2 * torch.rand(dim, state, generator=rng, dtype=torch.float64)).to(dtype)
    B, C = randn((batch, state, L), rng, dtype), randn((batch, state, L), rng, dtype)
    extra = {}
    if full:
        extra = {
            "D": randn((dim,), rng, dtype),
            "z": randn((batch, dim, L), rng, dtype),
            "delta_bias": randn((dim,), rng, dtype, 0.5),
        }
    return (u, delta, A, B, C), extra


def expect_scan(out, args, kwargs, dtype, what):
    ref = ref_scan64(*args, **kwargs)
    suspects = []
    for variant in SCAN_VARIANTS:
        wrong = ref_scan64(*args, **kwargs, variant=variant)
        if not torch.allclose(wrong, ref, rtol=1e-9, atol=1e-12):
            suspects.append((variant, wrong))
    expect_close(out, ref, dtype, what, suspects)


def scan_full(selective_scan, rng):
    """matches selective_scan_ref with D, z, delta_bias and delta_softplus=True"""
    for dtype in (torch.float64, torch.float32):
        shape = scan_shapes(rng, batch=draw(rng, 2, 3))
        args, extra = scan_inputs(rng, *shape, dtype)
        out = selective_scan(*args, **extra, delta_softplus=True)
        expect_scan(
            out,
            args,
            {**extra, "delta_softplus": True},
            dtype,
            f"selective_scan(..., D, z, delta_bias, delta_softplus=True) on {shape} {dtype}",
        )


def scan_options(selective_scan, rng):
    """each option alone: plain scan; D only; z only; delta_bias with delta_softplus False/True"""
    shape = scan_shapes(rng, batch=2)
    args, extra = scan_inputs(rng, *shape)
    args = (args[0], args[1].abs() + 0.05, *args[2:])  # positive steps: no softplus needed
    for kwargs in [
        {},
        {"D": extra["D"]},
        {"z": extra["z"]},
        {"delta_bias": extra["delta_bias"].abs()},
        {"delta_softplus": True},
        {"delta_bias": extra["delta_bias"], "delta_softplus": True},
    ]:
        expect_scan(
            selective_scan(*args, **kwargs),
            args,
            kwargs,
            torch.float64,
            f"selective_scan with {sorted(kwargs) or 'no options'} on {shape}",
        )


def scan_rows_independent(selective_scan, rng):
    """each batch row starts from a zero state (batch of 4, slow decay so a leak shows)"""
    shape = scan_shapes(rng, batch=4)
    args, extra = scan_inputs(rng, *shape)
    u, delta, A, B, C = args
    A = A * 0.05
    args = (u, delta.abs() + 0.1, A, B, C)
    expect_scan(
        selective_scan(*args, D=extra["D"]),
        args,
        {"D": extra["D"]},
        torch.float64,
        f"selective_scan on a batch of 4, {shape}",
    )


def scan_rejects_bad_layout(selective_scan, rng):
    """wrong layouts (B as (batch, L, state), u and delta of different lengths) give a ValueError"""
    batch, dim, L, state = scan_shapes(rng, batch=2, dim=3, state=5)
    (u, delta, A, B, C), _ = scan_inputs(rng, batch, dim, L, state, full=False)
    expect_value_error(
        lambda: selective_scan(u, delta, A, B.transpose(1, 2), C),
        f"B of shape {tuple(B.transpose(1, 2).shape)} (batch, L, state)",
        "no_error_for_bad_input",
    )
    expect_value_error(
        lambda: selective_scan(u, delta[..., :-1], A, B, C),
        f"u {tuple(u.shape)} with delta {tuple(delta[..., :-1].shape)}",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- MambaBlock


def build(MambaBlock, *args, **kwargs):
    module = MambaBlock(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise named("not_a_module")
    return module, guarded(module, "MambaBlock", FORBIDDEN)


def expected_shapes(d_model, d_state, d_conv, expand):
    d_inner, rank = expand * d_model, math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def randomise(module, shapes, rng) -> dict:
    """Fresh float64 values for every parameter (so a forgotten piece shows); returns them."""
    params = dict(module.named_parameters())
    missing = [
        f"{name} {shape}"
        for name, shape in shapes.items()
        if name not in params or tuple(params[name].shape) != shape
    ]
    if missing or set(params) - set(shapes):
        description, hint = HINTS["wrong_parameters"]
        extra = sorted(set(params) - set(shapes))
        raise Mistake(
            f"MambaBlock's parameters differ from mamba_ssm's: expected "
            f"{', '.join(missing) or 'none missing'}"
            f"{'; unexpected ' + ', '.join(extra) if extra else ''}.",
            hint,
            "wrong_parameters",
        )
    module.double()
    values = {}
    with torch.no_grad():
        for name, shape in shapes.items():
            fan_in = shape[-1] if len(shape) > 1 else 1
            value = randn(shape, rng, torch.float64, 1 / math.sqrt(fan_in))
            if name == "A_log":
                value = torch.log(0.5 + 3 * torch.rand(shape, generator=rng, dtype=torch.float64))
            elif name == "conv1d.weight":
                value = randn(shape, rng, torch.float64, 0.5)
            elif name in ("dt_proj.bias", "conv1d.bias", "D"):
                value = randn(shape, rng, torch.float64, 0.5)
            params[name].copy_(value)
            values[name] = value
    return values


def mamba64(p, x, d_conv, d_state, variant=None):
    """The Mamba block in float64 from the parameters `p`; `variant` plants a mistake."""
    x = x.double()
    L = x.shape[1]
    d_inner = p["D"].shape[0]
    rank = p["dt_proj.weight"].shape[1]
    xz = (x @ p["in_proj.weight"].T).transpose(1, 2)
    u, z = xz[:, :d_inner], xz[:, d_inner:]
    conv = F.conv1d(u, p["conv1d.weight"], p["conv1d.bias"], padding=d_conv - 1, groups=d_inner)
    conv = conv[..., -L:] if variant == "conv_not_causal" else conv[..., :L]
    u = conv if variant == "no_conv_silu" else F.silu(conv)
    dbc = u.transpose(1, 2) @ p["x_proj.weight"].T
    dt, B, C = dbc[..., :rank], dbc[..., rank : rank + d_state], dbc[..., rank + d_state :]
    delta = (dt @ p["dt_proj.weight"].T).transpose(1, 2)
    A = torch.exp(p["A_log"]) if variant == "a_positive" else -torch.exp(p["A_log"])
    scan_variant = variant if variant in ("softplus_missing", "gate_ignored", "missing_d") else None
    y = ref_scan64(
        u,
        delta,
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        p["D"],
        z,
        p["dt_proj.bias"],
        True,
        variant=scan_variant,
    )
    return y.transpose(1, 2) @ p["out_proj.weight"].T


MAMBA_VARIANTS = (
    "conv_not_causal",
    "no_conv_silu",
    "a_positive",
    "softplus_missing",
    "gate_ignored",
    "missing_d",
)


def mamba_setup(MambaBlock, rng, **kwargs):
    d_model = draw(rng, 4, 12)
    config = {
        "d_state": draw(rng, 2, 5),
        "d_conv": draw(rng, 2, 4),
        "expand": draw(rng, 1, 2),
        **kwargs,
    }
    module, forward = build(MambaBlock, d_model, **config)
    values = randomise(module, expected_shapes(d_model, **config), rng)
    return module, forward, values, d_model, config


def mamba_matches(MambaBlock, rng):
    """the block's output matches Mamba's forward (in_proj, causal conv, SiLU, x_proj, dt_proj, scan, gate, out_proj)"""
    module, forward, values, d_model, config = mamba_setup(MambaBlock, rng)
    x = randn((draw(rng, 1, 3), draw(rng, 5, 12), d_model), rng, torch.float64)
    with torch.no_grad():
        out = forward(x)
    args = (values, x, config["d_conv"], config["d_state"])
    expect_close(
        out,
        mamba64(*args),
        torch.float64,
        f"MambaBlock({d_model}, {config})(x) on {tuple(x.shape)}",
        [(v, mamba64(*args, variant=v)) for v in MAMBA_VARIANTS],
    )


def mamba_defaults(MambaBlock, rng):
    """MambaBlock(d_model) has d_state=16, d_conv=4, expand=2, dt_rank = ceil(d_model/16)"""
    d_model = 16 * draw(rng, 1, 2) + draw(rng, 1, 3)
    module, forward = build(MambaBlock, d_model)
    values = randomise(module, expected_shapes(d_model, 16, 4, 2), rng)
    x = randn((2, draw(rng, 4, 8), d_model), rng, torch.float64)
    with torch.no_grad():
        out = forward(x)
    expect_close(out, mamba64(values, x, 4, 16), torch.float64, f"MambaBlock({d_model})(x)")


def mamba_causal(MambaBlock, rng):
    """causal: changing inputs after position t leaves outputs up to t unchanged"""
    module, forward, values, d_model, config = mamba_setup(MambaBlock, rng)
    L = draw(rng, 6, 12)
    t = draw(rng, 1, L - 3)
    x = randn((1, L, d_model), rng, torch.float64)
    later = x.clone()
    later[:, t + 1 :] = randn((1, L - t - 1, d_model), rng, torch.float64)
    with torch.no_grad():
        first, second = forward(x), forward(later)
    expect_tensor(first, "MambaBlock(x)", x.shape, torch.float64)
    if not torch.allclose(first[:, : t + 1], second[:, : t + 1], rtol=1e-9, atol=1e-12):
        description, hint = HINTS["not_causal"]
        raise Mistake(
            f"outputs at positions <= {t} changed when only inputs after {t} did: it "
            f"looks like {description}.",
            hint,
            "not_causal",
        )


def mamba_rejects_bad_input(MambaBlock, rng):
    """x with the wrong feature size gives a clear ValueError"""
    d_model = draw(rng, 4, 8)
    module, forward = build(MambaBlock, d_model, d_state=3)
    x = randn((1, 5, d_model + 1), rng)
    expect_value_error(
        lambda: forward(x),
        f"x of shape {tuple(x.shape)} for d_model = {d_model}",
        "no_error_for_bad_input",
    )


# ----------------------------------------------------------------------------- the exercises


def _call2(impl, a, b):
    return impl(a, b)


def _call_chunked(impl, a, b):
    return impl(a, b, 4)


EXERCISES = {
    "linear_recurrence_sequential": Exercise(
        checks=make_recurrence_checks("linear_recurrence_sequential", _call2), forbidden=FORBIDDEN
    ),
    "linear_recurrence_parallel": Exercise(
        checks=make_recurrence_checks("linear_recurrence_parallel", _call2) + [parallel_log_steps],
        forbidden=FORBIDDEN,
    ),
    "linear_recurrence_chunked": Exercise(
        checks=make_recurrence_checks(
            "linear_recurrence_chunked",
            _call_chunked,
            suspects=lambda a, b: chunk_suspects(a, b, 4),
        )
        + [chunked_sizes, chunked_rejects_bad_chunk],
        forbidden=FORBIDDEN,
    ),
    "linear_recurrence_triton": Exercise(
        checks=make_recurrence_checks(
            "linear_recurrence_triton", _call2, dtypes=(torch.float32,), max_len=40
        ),
        forbidden=FORBIDDEN,
    ),
    "discretize_zoh": Exercise(
        checks=[zoh_matches, zoh_large_steps, zoh_zero_a, zoh_rejects_bad_layout],
        forbidden=FORBIDDEN,
    ),
    "selective_scan": Exercise(
        checks=[scan_full, scan_options, scan_rows_independent, scan_rejects_bad_layout],
        forbidden=FORBIDDEN,
    ),
    "MambaBlock": Exercise(
        checks=[mamba_matches, mamba_defaults, mamba_causal, mamba_rejects_bad_input],
        forbidden=FORBIDDEN,
    ),
}
