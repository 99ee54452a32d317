"""Checks for MambaBlock: its parameters' shapes, its output against a float64 forward built
from its own weights, and causality."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.harness.checking import (
    Mistake,
    expect_close,
    expect_tensor,
    expect_value_error,
    guarded,
    named,
    naming_crashes,
)
from grader.suites._common import distinct_sizes, draw, randn
from grader.suites.day09_mamba_scan.discretisation import axes_clash
from grader.suites.day09_mamba_scan.hints import FORBIDDEN, HINTS
from grader.suites.day09_mamba_scan.selective_scan import ref_scan64


def inner_sizes(d_model, config) -> tuple:
    """(d_inner, d_state) of MambaBlock(d_model, **config), mamba_ssm's defaults filling in."""
    return config.get("expand", 2) * d_model, config.get("d_state", 16)


def layout_crashes(x, d_inner, d_state):
    """The crashes of forward(x) that name a layout mistake: u reaching the conv, or B and C the
    scan, in the (batch, L, features) layout nn.Linear returns. `block_length` keeps L apart
    from the other sizes, so these layouts always fail, and the sizes in the error tell them."""
    batch, L = x.shape[:2]
    as_projected = (batch, L, d_state)  # x_proj's B and C before their transpose
    return (
        ("conv_input_layout", "RuntimeError", f"to have {d_inner} channels, but got {L} channels"),
        # in_proj's output halved along L: both halves of the features reach the conv
        (
            "in_proj_split_along_l",
            "RuntimeError",
            f"to have {d_inner} channels, but got {2 * d_inner} channels",
        ),
        # the student's own selective_scan refusing B or C, naming the shape (tuple or torch.Size)
        ("scan_b_c_layout", "ValueError", str(as_projected)),
        ("scan_b_c_layout", "ValueError", str(list(as_projected))),
        # or, if it takes them unchecked, broadcasting their L axis against the state's
        *axes_clash("scan_b_c_layout", L, d_state),
    )


def build(MambaBlock, d_model, **config):
    """The student's block, MambaBlock(d_model, **config), and a guarded call of it that names
    the crashes of a layout mistake."""
    module = MambaBlock(d_model, **config)
    if not isinstance(module, nn.Module):
        raise named("not_a_module")
    forward = guarded(module, "MambaBlock", FORBIDDEN)
    d_inner, d_state = inner_sizes(d_model, config)

    def call(x):
        with naming_crashes(*layout_crashes(x, d_inner, d_state)):
            return forward(x)

    return module, call


def block_length(rng, low, high, batch, d_model, config) -> int:
    """A sequence length in [low, high] unlike the block's other sizes: a (batch, L, d_inner) u
    fed to the conv, or B and C passed to the scan untransposed, then always fails in shape."""
    d_inner, d_state = inner_sizes(d_model, config)
    (L,) = distinct_sizes(rng, (low, high), avoid=(batch, d_model, d_inner, 2 * d_inner, d_state))
    return L


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
    for name, shape in shapes.items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        value = randn(shape, rng, torch.float64, 1 / math.sqrt(fan_in))
        if name == "A_log":
            value = torch.log(0.5 + 3 * torch.rand(shape, generator=rng, dtype=torch.float64))
        elif name == "conv1d.weight":
            value = randn(shape, rng, torch.float64, 0.5)
        elif name in ("dt_proj.bias", "conv1d.bias", "D"):
            value = randn(shape, rng, torch.float64, 0.5)
        values[name] = value
    # one call of the module's own load_state_dict: the module may live in the student's kernel
    # (grader/autograde/remote.py), where only calls reach it
    module.load_state_dict(values, strict=False)
    return values


def mamba64(p, x, d_conv, d_state, variant=None):
    """The Mamba block in float64 from the parameters `p`; `variant` plants a mistake."""
    x = x.double()
    L = x.shape[1]
    d_inner = p["D"].shape[0]
    rank = p["dt_proj.weight"].shape[1]
    xz = (x @ p["in_proj.weight"].T).transpose(1, 2)
    u, z = xz[:, :d_inner], xz[:, d_inner:]
    if variant == "u_z_swapped":
        u, z = z, u
    conv = F.conv1d(u, p["conv1d.weight"], p["conv1d.bias"], padding=d_conv - 1, groups=d_inner)
    conv = conv[..., -L:] if variant == "conv_not_causal" else conv[..., :L]
    before_conv = u
    u = conv if variant == "no_conv_silu" else F.silu(conv)
    projected = before_conv if variant == "x_proj_before_conv" else u
    dbc = projected.transpose(1, 2) @ p["x_proj.weight"].T
    dt, B, C = dbc[..., :rank], dbc[..., rank : rank + d_state], dbc[..., rank + d_state :]
    if variant == "x_proj_split_order":
        B, C, dt = dbc[..., :d_state], dbc[..., d_state : 2 * d_state], dbc[..., 2 * d_state :]
    delta = (dt @ p["dt_proj.weight"].T).transpose(1, 2)
    if variant == "dt_bias_twice":  # dt_proj(dt) with its bias, then delta_bias again
        delta = delta + p["dt_proj.bias"][:, None]
    A = torch.exp(p["A_log"]) if variant == "a_positive" else -torch.exp(p["A_log"])
    scan_variant = variant if variant in ("softplus_missing", "gate_ignored", "missing_d") else None

    def to_scan(t):  # (batch, L, d_state) -> (batch, d_state, L); reshaped, a mistake
        return t.reshape(t.shape[0], d_state, L) if variant == "b_c_reshaped" else t.transpose(1, 2)

    y = ref_scan64(
        u,
        delta,
        A,
        to_scan(B),
        to_scan(C),
        p["D"],
        F.silu(z) if variant == "gate_silu_twice" else z,
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
    "u_z_swapped",
    "x_proj_split_order",
    "dt_bias_twice",
    "x_proj_before_conv",
    "gate_silu_twice",
    "b_c_reshaped",
)


def mamba_setup(MambaBlock, rng, d_conv=(2, 4)):
    """A block of drawn sizes (the conv's kernel in the range `d_conv`) with fresh parameters."""
    d_model, expand = draw(rng, 4, 12), draw(rng, 1, 2)
    # d_state unlike d_model and d_inner: B and C in (batch, L, d_state) have a shape of their own
    (d_state,) = distinct_sizes(rng, (2, 5), avoid=(d_model, expand * d_model))
    config = {"d_state": d_state, "d_conv": draw(rng, *d_conv), "expand": expand}
    module, forward = build(MambaBlock, d_model, **config)
    values = randomise(module, expected_shapes(d_model, **config), rng)
    return module, forward, values, d_model, config


def mamba_matches(MambaBlock, rng):
    """the block's output matches Mamba's forward (in_proj, causal conv, SiLU, x_proj, dt_proj, scan, gate, out_proj)"""
    module, forward, values, d_model, config = mamba_setup(MambaBlock, rng)
    batch = draw(rng, 1, 3)
    L = block_length(rng, 5, 12, batch, d_model, config)
    x = randn((batch, L, d_model), rng, torch.float64)
    with torch.no_grad():
        out = forward(x)
    expect_block(
        out,
        values,
        x,
        config["d_conv"],
        config["d_state"],
        f"MambaBlock({d_model}, {config})(x) on {tuple(x.shape)}",
    )


def expect_block(out, values, x, d_conv, d_state, what):
    """The block's output `out` against mamba64 from its parameters `values`, each of
    MAMBA_VARIANTS a suspect: a mistake in the forward is named whatever the sizes."""
    args = (values, x, d_conv, d_state)
    suspects = [(v, mamba64(*args, variant=v)) for v in MAMBA_VARIANTS]
    expect_close(out, mamba64(*args), torch.float64, what, suspects)


def mamba_defaults(MambaBlock, rng):
    """MambaBlock(d_model) has d_state=16, d_conv=4, expand=2, dt_rank = ceil(d_model/16)"""
    d_model = 16 * draw(rng, 1, 2) + draw(rng, 1, 3)
    module, forward = build(MambaBlock, d_model)
    values = randomise(module, expected_shapes(d_model, 16, 4, 2), rng)
    x = randn((2, block_length(rng, 4, 8, 2, d_model, {}), d_model), rng, torch.float64)
    with torch.no_grad():
        out = forward(x)
    expect_block(out, values, x, 4, 16, f"MambaBlock({d_model})(x) on {tuple(x.shape)}")


def mamba_initialised(MambaBlock, rng):
    """a fresh block starts as mamba_ssm's: A_log = log(1..d_state) in every row, D = 1"""
    d_model, d_state = draw(rng, 4, 12), draw(rng, 2, 6)
    module, _ = build(MambaBlock, d_model, d_state=d_state, expand=1)
    params = {name: p.detach().double() for name, p in module.named_parameters()}
    if params.get("A_log", torch.empty(0)).shape != (d_model, d_state) or "D" not in params:
        return  # the parameters' names and shapes are mamba_matches' to name
    A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float64)).repeat(d_model, 1)
    started_right = torch.allclose(params["A_log"], A_log, atol=1e-6) and torch.allclose(
        params["D"], torch.ones(d_model, dtype=torch.float64)
    )
    if not started_right:
        description, fix = HINTS["not_initialised_as_mamba"]
        raise Mistake(
            f"MambaBlock({d_model}, d_state={d_state}, expand=1) starts with A_log[0] = "
            f"{params['A_log'][0].tolist()} and D[:3] = {params['D'][:3].tolist()}: it looks like "
            f"{description}.",
            fix,
            "not_initialised_as_mamba",
        )


def mamba_causal(MambaBlock, rng):
    """causal: changing inputs after position t leaves outputs up to t unchanged"""
    # kernels of 3 and 4: a kernel of 2 padded by d_conv // 2 = 1 is causal by chance
    module, forward, values, d_model, config = mamba_setup(MambaBlock, rng, d_conv=(3, 4))
    L = block_length(rng, 6, 12, 1, d_model, config)
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
        "no_error_for_bad_features",
    )
