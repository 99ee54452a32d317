"""course.reference.mamba_scan, the library version of day09: every scan equals a float64 loop, the selective scan
equals mamba_ssm's reference loop, the Mamba block is causal, bad input gives clear errors, and
the benchmark script runs (tiny sizes, no timing asserted)."""

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


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_ref of mamba_ssm, as a float64 loop."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = torch.empty_like(u)
    for i in range(u.shape[0]):
        x = torch.zeros(u.shape[1], A.shape[1], dtype=torch.float64)
        for t in range(u.shape[2]):
            x = (
                torch.exp(delta[i, :, t, None] * A) * x
                + delta[i, :, t, None] * B[i, :, t] * u[i, :, t, None]
            )
            y[i, :, t] = x @ C[i, :, t]
    out = y if D is None else y + D.double()[:, None] * u
    return out if z is None else out * F.silu(z.double())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"D": True},
        {"z": True},
        {"D": True, "z": True, "delta_bias": True, "delta_softplus": True},
    ],
)
def test_selective_scan_matches_the_reference(options):
    g = torch.Generator().manual_seed(1)
    batch, dim, L, N = 2, 3, 11, 4

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    u, delta, A, B, C = (
        r(batch, dim, L),
        r(batch, dim, L).abs(),
        -r(dim, N).abs(),
        r(batch, N, L),
        r(batch, N, L),
    )
    kwargs = {
        "D": r(dim) if options.get("D") else None,
        "z": r(batch, dim, L) if options.get("z") else None,
        "delta_bias": r(dim) if options.get("delta_bias") else None,
        "delta_softplus": options.get("delta_softplus", False),
    }
    torch.testing.assert_close(
        scan.selective_scan(u, delta, A, B, C, **kwargs),
        reference_scan(u, delta, A, B, C, **kwargs),
    )


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
