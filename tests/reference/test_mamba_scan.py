"""course.reference.mamba_scan, the library version of day09: every scan equals a float64 loop, the selective scan
equals mamba_ssm's reference loop in each of its B/C layouts and, for float16/bfloat16 inputs,
within the tolerances of mamba_ssm's own tests (computed in float32, returned in the input dtype),
the Mamba block is causal, bad input gives clear errors, and the benchmark script runs (tiny
sizes, no timing asserted)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import course  # noqa: F401  (Triton in interpreter mode without a GPU)
from course.bench import mamba_scan as bench
from course.device import has_gpu
from course.reference import mamba_scan as scan


def loop64(a, b):
    a, b = a.double(), b.double()
    h, state = torch.empty_like(b), torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        state = a[..., t] * state + b[..., t]
        h[..., t] = state
    return h


def inputs(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1).to(dtype)
    return a, torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("shape", [(1,), (2,), (37,), (3, 4, 50), (2, 64)])
@pytest.mark.parametrize("fn", ["sequential", "parallel", "chunked"])
def test_recurrences_match_the_float64_loop(fn, shape):
    a, b = inputs(shape)
    call = getattr(scan, f"linear_recurrence_{fn}")
    out = call(a, b, 5) if fn == "chunked" else call(a, b)
    torch.testing.assert_close(out, loop64(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 17, 100])
def test_chunked_any_chunk_size(chunk_size):
    a, b = inputs((2, 33))
    torch.testing.assert_close(scan.linear_recurrence_chunked(a, b, chunk_size), loop64(a, b))


def test_worked_example():
    a, b = torch.tensor([0.5, 0.5, 2.0]), torch.tensor([1.0, 2.0, 3.0])
    for fn in (
        scan.linear_recurrence_sequential,
        scan.linear_recurrence_parallel,
        scan.linear_recurrence_triton,
    ):
        torch.testing.assert_close(fn(a, b), torch.tensor([1.0, 2.5, 8.0]))


def test_parallel_does_not_modify_its_inputs():
    a, b = inputs((3, 20))
    a0, b0 = a.clone(), b.clone()
    scan.linear_recurrence_parallel(a, b)
    scan.linear_recurrence_chunked(a, b, 4)
    assert torch.equal(a, a0) and torch.equal(b, b0)


@pytest.mark.parametrize("shape", [(5,), (3, 33), (2, 2, 64)])
def test_triton_matches_in_float32(shape):
    a, b = inputs(shape, torch.float32)
    torch.testing.assert_close(
        scan.linear_recurrence_triton(a, b), loop64(a, b).float(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
def test_triton_on_gpu_long_rows():
    a, b = inputs((64, 4096), torch.float32)
    out = scan.linear_recurrence_triton(a.cuda(), b.cuda()).cpu()
    ref = loop64(a, b)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: scan.linear_recurrence_sequential(torch.ones(3), torch.ones(4)), "same shape"),
        (lambda: scan.linear_recurrence_parallel(torch.ones(2, 3), torch.ones(3, 2)), "same shape"),
        (lambda: scan.linear_recurrence_chunked(torch.ones(3), torch.ones(3), 0), "chunk_size"),
        (
            lambda: scan.linear_recurrence_triton(
                torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
            ),
            "float32",
        ),
        (
            lambda: scan.discretize_zoh(torch.ones(1, 2, 5), torch.ones(2, 3), torch.ones(1, 5, 3)),
            "do not agree",
        ),
        (
            lambda: scan.selective_scan(
                torch.ones(1, 2, 5),
                torch.ones(1, 2, 4),
                torch.ones(2, 3),
                torch.ones(1, 3, 5),
                torch.ones(1, 3, 5),
            ),
            "u and delta",
        ),
        (
            lambda: scan.selective_scan(
                torch.ones(1, 2, 5),
                torch.ones(1, 2, 5),
                torch.ones(2, 3),
                torch.ones(1, 5, 3),
                torch.ones(1, 3, 5),
            ),
            "B must be",
        ),
        (
            lambda: scan.selective_scan(
                torch.ones(1, 2, 5),
                torch.ones(1, 2, 5),
                torch.ones(2, 3),
                torch.ones(1, 3, 5),
                torch.ones(1, 3, 5),
                D=torch.ones(3),
            ),
            "D must be",
        ),
        (lambda: scan.MambaBlock(8)(torch.ones(1, 5, 9)), r"\(batch, L, 8\)"),
    ],
)
def test_bad_input_gives_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_zoh_is_exact_and_handles_zero_a():
    g = torch.Generator().manual_seed(0)
    delta = torch.rand(2, 3, 5, generator=g, dtype=torch.float64) + 0.1
    A = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.1
    A[0, 0] = 0
    B = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    A_bar, B_bar = scan.discretize_zoh(delta, A, B)
    assert A_bar.shape == B_bar.shape == (2, 3, 5, 4)
    b, d, t, n = 1, 2, 3, 1
    dA = delta[b, d, t] * A[d, n]
    assert A_bar[b, d, t, n].item() == pytest.approx(math.exp(dA))
    assert B_bar[b, d, t, n].item() == pytest.approx(
        (math.exp(dA) - 1) / A[d, n].item() * B[b, n, t].item()
    )
    torch.testing.assert_close(B_bar[:, 0, :, 0], delta[:, 0, :] * B[:, 0, :])


def per_channel(M, i, t, dim):
    """B or C, in any layout of selective_scan_ref, as the (dim, state) matrix that batch row i
    reads at step t."""
    if M.ndim == 2:  # (dim, state): time-invariant
        return M
    if M.ndim == 3:  # (batch, state, L): one matrix for every channel
        return M[i, :, t].expand(dim, -1)
    channels_per_group = dim // M.shape[1]  # (batch, groups, state, L)
    return torch.stack([M[i, d // channels_per_group, :, t] for d in range(dim)])


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_ref of mamba_ssm as a float64 loop over batch rows and time.
    Returns (out, last_state): (batch, dim, L) and (batch, dim, state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    y = torch.empty_like(u)
    last_state = torch.empty(batch, dim, A.shape[1], dtype=torch.float64)
    for i in range(batch):
        x = torch.zeros(dim, A.shape[1], dtype=torch.float64)
        for t in range(L):
            B_t, C_t = per_channel(B, i, t, dim), per_channel(C, i, t, dim)
            x = (
                torch.exp(delta[i, :, t, None] * A) * x
                + delta[i, :, t, None] * B_t * u[i, :, t, None]
            )
            y[i, :, t] = (x * C_t).sum(-1)
        last_state[i] = x
    out = y if D is None else y + D.double()[:, None] * u
    return (out if z is None else out * F.silu(z.double())), last_state


def scan_inputs(batch=2, dim=4, L=11, N=3, layouts=("varying", "varying"), groups=2, seed=1):
    """float64 inputs in the test layout of mamba_ssm: A < 0, delta in [0, 0.5), delta_bias >= 0."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    shapes = {"invariant": (dim, N), "varying": (batch, N, L), "grouped": (batch, groups, N, L)}
    u, delta = r(batch, dim, L), 0.5 * torch.rand(batch, dim, L, generator=g, dtype=torch.float64)
    A = -0.5 * torch.rand(dim, N, generator=g, dtype=torch.float64) - 0.1
    B, C = (r(*shapes[layout]) for layout in layouts)
    extra = {
        "D": r(dim),
        "z": r(batch, dim, L),
        "delta_bias": 0.5 * torch.rand(dim, generator=g, dtype=torch.float64),
    }
    return (u, delta, A, B, C), extra


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"D": True},
        {"z": True},
        {"delta_bias": True},
        {"delta_softplus": True},
        {"D": True, "z": True, "delta_bias": True, "delta_softplus": True},
    ],
)
def test_selective_scan_matches_the_reference(options):
    args, extra = scan_inputs()
    kwargs = {name: extra[name] for name in ("D", "z", "delta_bias") if options.get(name)}
    kwargs["delta_softplus"] = options.get("delta_softplus", False)
    torch.testing.assert_close(
        scan.selective_scan(*args, **kwargs), reference_scan(*args, **kwargs)[0]
    )


@pytest.mark.parametrize("B_layout", ["invariant", "varying", "grouped"])
@pytest.mark.parametrize("C_layout", ["invariant", "varying", "grouped"])
def test_every_b_c_layout_matches_the_reference(B_layout, C_layout):
    args, extra = scan_inputs(layouts=(B_layout, C_layout))
    y, last_state = scan.selective_scan(*args, **extra, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = reference_scan(*args, **extra, delta_softplus=True)
    assert y.dtype == last_state.dtype == torch.float64
    assert last_state.shape == (2, 4, 3)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(last_state, last_ref)


def test_one_group_per_channel():
    args, extra = scan_inputs(layouts=("grouped", "grouped"), groups=4)
    torch.testing.assert_close(
        scan.selective_scan(*args, **extra), reference_scan(*args, **extra)[0]
    )


# mamba_ssm's tests/ops/test_selective_scan.py: its kernel against selective_scan_ref
MAMBA_TOLERANCES = {torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


@pytest.mark.parametrize("layout", ["varying", "grouped"])
@pytest.mark.parametrize("itype", [torch.float16, torch.bfloat16])
def test_mixed_precision_within_mamba_tolerances(itype, layout):
    """u, delta, B, C, z in float16/bfloat16 and A, D, delta_bias in float32, as mamba_ssm runs
    them: y comes back in u's dtype, last_state in float32, both close to the float64 loop on the
    same (rounded) inputs."""
    (u, delta, A, B, C), extra = scan_inputs(L=128, N=8, layouts=(layout, layout))
    u, delta, B, C = (t.to(itype) for t in (u, delta, B, C))
    A, D, delta_bias = A.float(), extra["D"].float(), extra["delta_bias"].float()
    kwargs = {"D": D, "z": extra["z"].to(itype), "delta_bias": delta_bias, "delta_softplus": True}
    y, last_state = scan.selective_scan(u, delta, A, B, C, **kwargs, return_last_state=True)
    y_ref, last_ref = reference_scan(u, delta, A, B, C, **kwargs)
    assert y.dtype == itype and last_state.dtype == torch.float32
    rtol, atol = MAMBA_TOLERANCES[itype]
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last_state.double(), last_ref, rtol=rtol, atol=atol)


def within_one_rounding(out, ref):
    """out is ref rounded once to out's dtype (plus float32 noise): no 16-bit accumulation."""
    unit_roundoff = torch.finfo(out.dtype).eps / 2  # |round(v) - v| <= unit_roundoff * |v|
    torch.testing.assert_close(out.double(), ref, rtol=unit_roundoff + 1e-5, atol=1e-5)


def test_all_bfloat16_accumulates_in_float32():
    args, extra = scan_inputs(L=256, N=8)
    args, extra = [t.bfloat16() for t in args], {k: t.bfloat16() for k, t in extra.items()}
    y = scan.selective_scan(*args, **extra, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    within_one_rounding(y, reference_scan(*args, **extra, delta_softplus=True)[0])


@pytest.mark.parametrize("fn", ["sequential", "parallel", "chunked"])
def test_recurrences_in_bfloat16_accumulate_in_float32(fn):
    a, b = (t.bfloat16() for t in inputs((3, 300)))
    a = 0.5 + a.abs() / 2  # decays in [0.5, 1]: a long memory, where 16-bit sums drift
    h = getattr(scan, f"linear_recurrence_{fn}")(a, b)
    assert h.dtype == torch.bfloat16
    within_one_rounding(h, loop64(a, b))


def test_empty_sequence_has_a_zero_last_state():
    (u, delta, A, B, C), _ = scan_inputs(L=0)
    y, last_state = scan.selective_scan(u, delta, A, B, C, return_last_state=True)
    assert y.shape == (2, 4, 0) and torch.equal(last_state, torch.zeros(2, 4, 3, dtype=A.dtype))


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_complex_weights_are_refused(name):
    (u, delta, A, B, C), _ = scan_inputs()
    weights = {"A": A, "B": B, "C": C}
    weights[name] = weights[name].to(torch.complex128)
    with pytest.raises(ValueError, match="real A only"):
        scan.selective_scan(u, delta, **weights)


@pytest.mark.parametrize(
    "bad_B",
    [
        lambda B: B.transpose(1, 2),  # (batch, L, state)
        lambda B: B[:, None].expand(-1, 3, -1, -1),  # 3 groups do not divide dim = 4
        lambda B: B[0],  # (state, L)
    ],
)
def test_wrong_b_layout_names_the_layouts(bad_B):
    (u, delta, A, B, C), _ = scan_inputs()
    with pytest.raises(ValueError) as error:
        scan.selective_scan(u, delta, A, bad_B(B), C)
    for layout in ("(dim, state)", "(batch, state, L)", "(batch, groups, state, L)"):
        assert layout in str(error.value)


def test_mamba_block_in_bfloat16_and_under_autocast():
    torch.manual_seed(0)
    block, x = scan.MambaBlock(16), torch.randn(2, 10, 16)
    with pytest.raises(ValueError, match="torch.autocast"):
        block(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x).dtype == torch.bfloat16
    block16 = copy.deepcopy(block).bfloat16()
    block64 = copy.deepcopy(block16).double()  # the same rounded weights, run in float64
    out = block16(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), block64(x.bfloat16().double()), rtol=3e-2, atol=5e-2)


def test_scan_attention_matrix_reproduces_the_scan():
    g = torch.Generator().manual_seed(2)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    u, delta, A, B, C = r(2, 3, 9), r(2, 3, 9).abs(), -r(3, 4).abs(), r(2, 4, 9), r(2, 4, 9)
    M = scan.scan_attention_matrix(delta, A, B, C)
    assert torch.equal(M, M.tril())
    torch.testing.assert_close(
        torch.einsum("bdts,bds->bdt", M, u), scan.selective_scan(u, delta, A, B, C)
    )


def test_mamba_block_shapes_parameters_and_causality():
    torch.manual_seed(0)
    block = scan.MambaBlock(20)
    names = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert names == {
        "in_proj.weight": (80, 20),
        "conv1d.weight": (40, 1, 4),
        "conv1d.bias": (40,),
        "x_proj.weight": (2 + 32, 40),
        "dt_proj.weight": (40, 2),
        "dt_proj.bias": (40,),
        "A_log": (40, 16),
        "D": (40,),
        "out_proj.weight": (20, 40),
    }
    x = torch.randn(2, 12, 20)
    later = x.clone()
    later[:, 7:] = torch.randn(2, 5, 20)
    out, out_later = block(x), block(later)
    assert out.shape == (2, 12, 20)
    torch.testing.assert_close(out[:, :7], out_later[:, :7])
    out.sum().backward()
    assert block.A_log.grad is not None and torch.isfinite(block.A_log.grad).all()


def test_benchmark_runs_at_a_tiny_size(capsys):
    code = bench.main(
        ["--length", "64", "--rows", "2", "--repeats", "1", "--triton-size", "2", "16"]
    )
    text = capsys.readouterr().out
    assert (
        code in (0, 1)
        and "parallel scan" in text
        and "triton (CPU interpreter)" in text
        or has_gpu()
    )
    assert "relative error" in text


def test_benchmark_help():
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0


def test_scans_are_differentiable():
    a, b = inputs((2, 19))
    a.requires_grad_(), b.requires_grad_()
    for fn in (
        scan.linear_recurrence_parallel,
        lambda a, b: scan.linear_recurrence_chunked(a, b, 4),
    ):
        grads = torch.autograd.grad(fn(a, b).sum(), (a, b))
        expected = torch.autograd.grad(loop64(a, b).sum(), (a, b))
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want)
