"""course.reference.mechanisms: every kind behind one interface, checked against float64 dense attention
computed here from the layer's own projections."""

import math

import pytest
import torch

from course.reference.mechanisms import ATTENTION_KINDS, describe_kinds, make_attention

D_MODEL, HEADS, L = 32, 4, 40


def dense_reference(layer, x, allowed):
    """float64 softmax attention through `layer`'s projections, `allowed` (L, L) bool."""
    p = {name: getattr(layer, name).double() for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
    x = x.double()
    B, dh = x.shape[0], D_MODEL // HEADS
    q, k, v = (p[f"{n}_proj"](x).view(B, L, HEADS, dh).transpose(1, 2) for n in "qkv")
    scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1).nan_to_num(0.0) @ v  # (B, H, L, dh)
    result = p["out_proj"](out.transpose(1, 2).reshape(B, L, D_MODEL))
    layer.float()
    return result


def pattern(kind, options):
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    if kind in ("dense", "flash"):
        return j <= i if options.get("causal") else torch.ones(L, L, dtype=torch.bool)
    if kind == "sliding_window":
        w = options["window"]
        return (j <= i) & (j > i - w) if options.get("causal") else (i - j).abs() <= w // 2
    if kind == "strided":
        return (j % options["stride"] == 0) | ((i - j).abs() <= options["local_window"] // 2)
    if kind == "chunked":
        c, o = options["chunk_size"], options.get("overlap", 0)
        start = (i // c) * c
        return (j >= start - o) & (j < start + c + o)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("dense", {}),
        ("dense", {"causal": True}),
        ("sliding_window", {"window": 8}),
        ("sliding_window", {"window": 8, "causal": True}),
        ("strided", {"stride": 8, "local_window": 4}),
        ("strided", {"stride": 64, "local_window": 4}),  # a stride past L: column 0 only
        ("chunked", {"chunk_size": 16, "overlap": 4}),
        ("flash", {"causal": True, "block_q": 16, "block_k": 16}),
        ("flash", {}),
    ],
)
def test_exact_kinds_equal_dense_attention_under_their_pattern(kind, options):
    torch.manual_seed(0)
    layer = make_attention(kind, D_MODEL, HEADS, **options)
    x = torch.randn(2, L, D_MODEL)
    out = layer(x)
    assert out.shape == (2, L, D_MODEL) and out.dtype == torch.float32
    reference = dense_reference(layer, x, pattern(kind, options))
    assert torch.allclose(out.double(), reference, atol=1e-5), (
        (out.double() - reference).abs().max()
    )


def test_linear_kinds_agree_and_are_causal_when_asked():
    torch.manual_seed(0)
    layer = make_attention("linear", D_MODEL, HEADS, causal=True, chunk_size=8)
    x = torch.randn(1, L, D_MODEL)
    changed = x.clone()
    changed[:, -1] += 1.0
    assert torch.allclose(layer(x)[:, :-1], layer(changed)[:, :-1], atol=1e-6)  # no look-ahead
    layer.options["causal"] = False
    assert not torch.allclose(layer(x)[:, :-1], layer(changed)[:, :-1], atol=1e-6)


def test_performer_is_a_deterministic_function_that_approaches_softmax_attention():
    torch.manual_seed(0)
    layer = make_attention("performer", D_MODEL, HEADS, num_features=4096)
    x = 0.3 * torch.randn(1, L, D_MODEL)
    assert torch.equal(layer(x), layer(x))
    reference = dense_reference(layer, x, pattern("dense", {}))
    assert (layer(x).double() - reference).norm() / reference.norm() < 0.1


def test_mamba_has_the_same_interface_and_is_causal():
    torch.manual_seed(0)
    layer = make_attention("mamba", D_MODEL, HEADS, d_state=4)
    x = torch.randn(2, L, D_MODEL)
    changed = x.clone()
    changed[:, 20:] += 1.0
    assert layer(x).shape == (2, L, D_MODEL)
    assert torch.allclose(layer(x)[:, :20], layer(changed)[:, :20], atol=1e-6)


def test_dense_takes_a_mask_and_combines_it_with_causal():
    torch.manual_seed(0)
    layer = make_attention("dense", D_MODEL, HEADS, causal=True)
    x = torch.randn(2, L, D_MODEL)
    keys = torch.arange(L) < 30  # padding after 30
    reference = dense_reference(layer, x, pattern("dense", {"causal": True}) & keys)
    assert torch.allclose(layer(x, mask=keys).double(), reference, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(set(ATTENTION_KINDS) - {"dense", "strided"}))
def test_kinds_that_never_build_the_scores_refuse_a_mask(kind):
    options = {"sliding_window": {"window": 4}, "chunked": {"chunk_size": 8}}.get(kind, {})
    layer = make_attention(kind, D_MODEL, HEADS, **options)
    with pytest.raises(ValueError, match="takes no mask"):
        layer(torch.randn(1, 8, D_MODEL), mask=torch.ones(8, 8, dtype=torch.bool))


def test_every_kind_trains():
    torch.manual_seed(0)
    options = {
        "sliding_window": {"window": 4},
        "strided": {"stride": 4, "local_window": 2},
        "chunked": {"chunk_size": 8},
        "performer": {"num_features": 16},
    }
    for kind in ATTENTION_KINDS:
        layer = make_attention(kind, D_MODEL, HEADS, **options.get(kind, {}))
        layer(torch.randn(2, 16, D_MODEL)).square().mean().backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), kind


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: make_attention("sparse", 32, 4),
            r"unknown attention kind 'sparse'[\s\S]*sliding_window: window, causal=False",
        ),
        (lambda: make_attention("sliding_window", 32, 4), "needs window"),
        (
            lambda: make_attention("dense", 32, 4, window=3),
            "takes no argument window; it takes: causal",
        ),
        (lambda: make_attention("dense", 30, 4), "not divisible"),
        (lambda: make_attention("dense", 0, 4), "positive ints"),
        (lambda: make_attention("dense", 32, 4)(torch.randn(2, 5, 16)), r"\(batch, L, 32\)"),
    ],
)
def test_bad_parameters_give_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_describe_kinds_lists_every_kind_with_its_arguments():
    lines = describe_kinds().splitlines()
    assert len(lines) == len(ATTENTION_KINDS)
    assert "  chunked: chunk_size, overlap=0" in lines
