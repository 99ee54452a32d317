"""Checks for selective_scan, against the loop of mamba_ssm's selective_scan_ref in float64."""

import torch
import torch.nn.functional as F

from grader.harness.checking import expect_close, expect_value_error, named, naming_crashes
from grader.suites._common import call_unchanged, draw, randn
from grader.suites.day09_mamba_scan.discretisation import axes_clash, scan_shapes


def ref_scan64(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, variant=None
):
    """selective_scan_ref as a float64 loop over batch rows and time; `variant` plants a mistake."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if variant == "b_c_swapped":
        B, C = C, B
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
            elif variant == "b_without_delta":
                b_bar = B[i, None, :, t].expand_as(dA)
            else:
                b_bar = delta[i, :, t, None] * B[i, None, :, t]
            if variant == "readout_before_update":
                y[i, :, t] = x @ C[i, :, t]
            x = deltaA * x + b_bar * (1.0 if variant == "u_missing" else u[i, :, t, None])
            if variant == "readout_over_channels":
                y[i, :, t] = (x @ C[i, :, t]).mean()  # one y_t, the same for every channel
            elif variant != "readout_before_update":
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
    "readout_before_update",
    "readout_over_channels",
    "b_c_swapped",
    "u_missing",
    "b_without_delta",
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


def run_scan(selective_scan, args, kwargs):
    """selective_scan(*args, **kwargs), which must leave its inputs as they were, with the
    crashes that are the signature of one mistake named: a per-channel tensor broadcast along L,
    B or C's state axis against dim (no two of dim, L and state alike: `scan_shapes`), or an
    optional tensor asked for its truth value."""
    dim, L = args[0].shape[1:]
    state = args[2].shape[1]
    truth_value = ("tensor_truth_value", "RuntimeError", "Boolean value of Tensor")
    crashes = (
        *axes_clash("per_channel_along_l", L, dim),
        *axes_clash("dim_state_crossed", dim, state),
        truth_value,
    )
    inputs = dict(zip(("u", "delta", "A", "B", "C"), args))
    with naming_crashes(*crashes):
        return call_unchanged(selective_scan, inputs, **kwargs)


def expect_scan(out, args, kwargs, dtype, what, nonfinite=None):
    ref = ref_scan64(*args, **kwargs)
    suspects = []
    for variant in SCAN_VARIANTS:
        wrong = ref_scan64(*args, **kwargs, variant=variant)
        if not torch.allclose(wrong, ref, rtol=1e-9, atol=1e-12):
            suspects.append((variant, wrong))
    expect_close(out, ref, dtype, what, suspects, nonfinite)


def scan_full(selective_scan, rng):
    """matches selective_scan_ref with D, z, delta_bias and delta_softplus=True"""
    for dtype in (torch.float64, torch.float32):
        shape = scan_shapes(rng, batch=draw(rng, 2, 3))
        args, extra = scan_inputs(rng, *shape, dtype)
        out = run_scan(selective_scan, args, {**extra, "delta_softplus": True})
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
            run_scan(selective_scan, args, kwargs),
            args,
            kwargs,
            torch.float64,
            f"selective_scan with {sorted(kwargs) or 'no options'} on {shape}",
        )


def scan_large_steps(selective_scan, rng):
    """raw steps near 100 in float32 (exp overflows past 88): softplus(delta) must stay finite"""
    shape = scan_shapes(rng, batch=2)
    (u, delta, A, B, C), _ = scan_inputs(rng, *shape, torch.float32, full=False)
    delta[..., ::2] += 90 + 10 * torch.rand(delta[..., ::2].shape, generator=rng)  # every other t
    args = (u, delta, A, B, C)
    expect_scan(
        run_scan(selective_scan, args, {"delta_softplus": True}),
        args,
        {"delta_softplus": True},
        torch.float32,
        f"selective_scan(..., delta_softplus=True) with raw delta up to 100 on {shape} float32",
        nonfinite=named("softplus_overflow"),
    )


def scan_rows_independent(selective_scan, rng):
    """each batch row starts from a zero state (batch of 4, slow decay so a leak shows)"""
    shape = scan_shapes(rng, batch=4)
    args, extra = scan_inputs(rng, *shape)
    u, delta, A, B, C = args
    A = A * 0.05
    args = (u, delta.abs() + 0.1, A, B, C)
    expect_scan(
        run_scan(selective_scan, args, {"D": extra["D"]}),
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
        "no_error_for_bad_layout",
    )
    expect_value_error(
        lambda: selective_scan(u, delta[..., :-1], A, B, C),
        f"u {tuple(u.shape)} with delta {tuple(delta[..., :-1].shape)}",
        "no_error_for_bad_layout",
    )
