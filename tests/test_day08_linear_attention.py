"""The day08 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, correct implementations written differently pass too, and bad input gives
clear errors."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_mistake_named, day_report

DAY = "day08-linear-attention"

# For tests/test_nbgrader_e2e.py: a chunked form whose intra-chunk scores are not masked lets
# queries see future keys of their own chunk; it costs that exercise's 2 + 1 points.
PLANTED_SUBMISSION = {
    "cell": "causal_linear_attention_chunked",
    "old": "local = torch.tril(qc @ kc.transpose(-2, -1))",
    "new": "local = qc @ kc.transpose(-2, -1)",
    "points_lost": 3,
    "hint": "inside a chunk, query i sees only the chunk keys up to itself: mask the (c, c) scores "
            "with tril (set the rest to 0) before summing.",
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def stub(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- the solution





def test_causal_forms_agree_with_each_other_and_the_masked_quadratic_form(solution):
    q, k, v = (torch.randn(2, 3, 77, 8, dtype=torch.float64) for _ in range(3))
    w = (solution["elu_feature_map"](q) @ solution["elu_feature_map"](k).transpose(-2, -1)).tril()
    masked = (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)
    rec = solution["causal_linear_attention_recurrent"](q, k, v)
    for c in (1, 5, 64, 100):
        torch.testing.assert_close(solution["causal_linear_attention_chunked"](q, k, v, c), rec)
    torch.testing.assert_close(rec, masked)


@pytest.mark.parametrize("name", ["linear_attention", "causal_linear_attention_recurrent",
                                  "causal_linear_attention_chunked", "performer_attention"])
@pytest.mark.parametrize("shapes, match", [
    (((2, 5, 4), (2, 5, 4), (2, 6, 4)), "same length"),
    (((2, 5, 4), (2, 5, 3), (2, 5, 4)), "head dim"),
    (((5,), (5,), (5,)), r"\(\.\.\., L, D\)"),
    (((2, 5, 4), (1, 5, 4), (1, 5, 4)), "leading dims"),
], ids=["lengths", "head-dim", "1-D", "leading"])
def test_bad_input_gives_clear_errors(solution, name, shapes, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        solution[name](q, k, v)


def test_causal_forms_reject_lq_not_lk_and_bad_chunk(solution):
    q, k = torch.randn(4, 8), torch.randn(6, 8)
    for name in ("causal_linear_attention_recurrent", "causal_linear_attention_chunked"):
        with pytest.raises(ValueError, match="Lq == Lk"):
            solution[name](q, k, k)
    with pytest.raises(ValueError, match="chunk_size"):
        solution["causal_linear_attention_chunked"](k, k, k, chunk_size=0)


# ----------------------------------------------------------------------------- elu_feature_map

@pytest.mark.parametrize("bug, key", [
    (lambda x: F.elu(x), "negative_features"),
    (lambda x: x, "negative_features"),
    (stub, "not_implemented"),
], ids=["elu-only", "identity", "stub"])
def test_elu_bug_is_named(bug, key, capsys):
    assert_named("elu_feature_map", bug, key, capsys)


def test_elu_written_with_f_elu_passes():
    assert report("elu_feature_map", lambda x: F.elu(x) + 1).passed


# ----------------------------------------------------------------------------- linear_attention

def phi(x):
    return F.elu(x) + 1


def validate(q, k, v, causal=False):
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2 or q.shape[-1] != k.shape[-1] \
            or k.shape[-2] != v.shape[-2] or not q.shape[:-2] == k.shape[:-2] == v.shape[:-2] \
            or (causal and q.shape[-2] != k.shape[-2]):
        raise ValueError("bad shapes")


def make_linear(normalise=True, eps_on=True, use_map=True, quadratic=False, causal=False, check=True):
    def linear_attention(q, k, v, feature_map=phi, eps=1e-6):
        if check:
            validate(q, k, v)
        fmap = feature_map if use_map else (lambda t: t)
        qf, kf = fmap(q), fmap(k)
        if quadratic or causal:
            w = qf @ kf.transpose(-2, -1)
            if causal:
                w = w * torch.ones(w.shape[-2:], dtype=w.dtype).tril(k.shape[-2] - q.shape[-2])
            num, den = w @ v, w.sum(-1, keepdim=True)
        else:
            num, den = qf @ (kf.transpose(-2, -1) @ v), qf @ kf.sum(-2).unsqueeze(-1)
        if not normalise:
            return num
        return num / (den + eps) if eps_on else num / den
    return linear_attention


@pytest.mark.parametrize("bug, key", [
    (make_linear(normalise=False), "missing_normaliser"),
    (make_linear(eps_on=False), "normaliser_without_eps"),
    (make_linear(use_map=False), "ignores_feature_map"),
    (make_linear(quadratic=True), "quadratic_memory"),
    (make_linear(causal=True), "causal_when_not"),
    (make_linear(check=False), "no_error_for_bad_input"),
    (stub, "not_implemented"),
], ids=["no-normaliser", "no-eps", "ignores-map", "quadratic", "causal", "no-check", "stub"])
def test_linear_attention_bug_is_named(bug, key, capsys):
    assert_named("linear_attention", bug, key, capsys)


def test_linear_attention_written_differently_passes():
    assert report("linear_attention", make_linear()).passed


# ----------------------------------------------------------------------------- causal forms

def make_recurrent(leak=False, exclusive=False, eps_on=True, normalise=True, check=True):
    def causal_linear_attention_recurrent(q, k, v, feature_map=phi, eps=1e-6):
        if check:
            validate(q, k, v, causal=True)
        qf, kf = feature_map(q), feature_map(k)
        if leak:
            S0, z0 = kf.transpose(-2, -1) @ v, kf.sum(-2)
        S = torch.zeros(*q.shape[:-2], kf.shape[-1], v.shape[-1], dtype=q.dtype)
        z = torch.zeros(*q.shape[:-2], kf.shape[-1], dtype=q.dtype)
        out = []
        for t in range(q.shape[-2]):
            if exclusive:
                Sr, zr = S, z
            S = S + kf[..., t, :, None] * v[..., t, None, :]
            z = z + kf[..., t, :]
            if not exclusive:
                Sr, zr = S, z
            if leak:
                Sr, zr = S0, z0
            num = (qf[..., t, :, None] * Sr).sum(-2)
            den = (qf[..., t, :] * zr).sum(-1, keepdim=True)
            out.append(num if not normalise else num / (den + eps) if eps_on else num / den)
        return torch.stack(out, -2)
    return causal_linear_attention_recurrent


def cumsum_causal(q, k, v, feature_map=phi, eps=1e-6, chunk_size=None):
    """Correct but different: prefix sums of the outer products (O(L D Dv) memory)."""
    validate(q, k, v, causal=True)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    qf, kf = feature_map(q), feature_map(k)
    S = torch.cumsum(kf.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., L, D', Dv)
    z = torch.cumsum(kf, dim=-2)
    return (qf.unsqueeze(-1) * S).sum(-2) / ((qf * z).sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("bug, key", [
    (make_recurrent(leak=True), "future_leak"),
    (make_recurrent(exclusive=True), "excludes_self"),
    (make_recurrent(eps_on=False), "normaliser_without_eps"),
    (make_recurrent(normalise=False), "missing_normaliser"),
    (make_recurrent(check=False), "no_error_for_bad_input"),
    (stub, "not_implemented"),
], ids=["leak", "exclusive", "no-eps", "no-normaliser", "no-check", "stub"])
def test_recurrent_bug_is_named(bug, key, capsys):
    assert_named("causal_linear_attention_recurrent", bug, key, capsys)


def test_recurrent_written_with_prefix_sums_passes():
    assert report("causal_linear_attention_recurrent", cumsum_causal).passed


def make_chunked(mask=True, carry=True, drop_last=False, diagonal=0, eps_on=True, check=True):
    def causal_linear_attention_chunked(q, k, v, chunk_size=64, feature_map=phi, eps=1e-6):
        if check:
            validate(q, k, v, causal=True)
            if chunk_size < 1:
                raise ValueError("chunk_size must be >= 1")
        qf, kf = feature_map(q), feature_map(k)
        S = torch.zeros(*q.shape[:-2], kf.shape[-1], v.shape[-1], dtype=q.dtype)
        z = torch.zeros(*q.shape[:-2], kf.shape[-1], 1, dtype=q.dtype)
        L = q.shape[-2]
        stop = L - L % chunk_size if drop_last and L % chunk_size else L
        outs = []
        for s in range(0, stop, chunk_size):
            qc, kc, vc = qf[..., s:s + chunk_size, :], kf[..., s:s + chunk_size, :], v[..., s:s + chunk_size, :]
            w = qc @ kc.transpose(-2, -1)
            if mask:
                w = torch.tril(w, diagonal)
            num, den = qc @ S + w @ vc, qc @ z + w.sum(-1, keepdim=True)
            outs.append(num / (den + eps) if eps_on else num / den)
            if carry:
                S = S + kc.transpose(-2, -1) @ vc
                z = z + kc.sum(-2).unsqueeze(-1)
        return torch.cat(outs, -2)
    return causal_linear_attention_chunked


@pytest.mark.parametrize("bug, key", [
    (make_chunked(mask=False), "future_leak_in_chunk"),
    (make_chunked(carry=False), "state_not_carried"),
    (make_chunked(drop_last=True), "drops_last_chunk"),
    (make_chunked(diagonal=-1), "excludes_self"),
    (make_chunked(eps_on=False), "normaliser_without_eps"),
    (make_chunked(check=False), "no_error_for_bad_input"),
    (lambda q, k, v, chunk_size=64, feature_map=phi, eps=1e-6:
        make_linear(causal=True)(q, k, v, feature_map, eps) if q.shape[-2] == k.shape[-2]
        else (_ for _ in ()).throw(ValueError("Lq != Lk")), "quadratic_memory"),
    (stub, "not_implemented"),
], ids=["no-mask", "no-carry", "drop-last", "exclusive", "no-eps", "no-check", "quadratic", "stub"])
def test_chunked_bug_is_named(bug, key, capsys):
    assert_named("causal_linear_attention_chunked", bug, key, capsys)


def test_chunked_written_differently_passes():
    assert report("causal_linear_attention_chunked", make_chunked()).passed


# ----------------------------------------------------------------------------- random features

def make_orf(orthogonal=True, norms="chi", use_generator=True):
    def orthogonal_random_features(num_features, dim, generator=None):
        g = generator if use_generator else None
        if orthogonal:
            blocks = [torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0].T
                      for _ in range(math.ceil(num_features / dim))]
            rows = torch.cat(blocks)[:num_features]
        else:
            rows = torch.randn(num_features, dim, generator=g, dtype=torch.float64)
            rows = rows / rows.norm(dim=-1, keepdim=True)
        if norms == "chi":
            rows = rows * torch.randn(num_features, dim, generator=g, dtype=torch.float64).norm(dim=-1, keepdim=True)
        elif norms == "sqrt":
            rows = rows * math.sqrt(dim)
        return rows.float()
    return orthogonal_random_features


@pytest.mark.parametrize("bug, key", [
    (lambda m, d, g=None: torch.randn(m, d, generator=g), "not_orthogonal"),
    (make_orf(orthogonal=False), "not_orthogonal"),
    (make_orf(norms="unit"), "unit_norms"),
    (make_orf(norms="sqrt"), "fixed_norms"),
    (make_orf(use_generator=False), "not_reproducible"),
    (lambda m, d, g=None: make_orf()(m, d, torch.Generator().manual_seed(0)), "not_random"),
    (stub, "not_implemented"),
], ids=["iid", "iid-normalised", "unit", "sqrt-d", "global-rng", "reseeded", "stub"])
def test_orf_bug_is_named(bug, key, capsys):
    assert_named("orthogonal_random_features", bug, key, capsys)


def test_orf_without_sign_fix_passes():
    assert report("orthogonal_random_features", make_orf()).passed


def make_favor(kind="right"):
    def favor_feature_map(x, projection, is_query=False):
        if kind != "no_check" and x.shape[-1] != projection.shape[-1]:
            raise ValueError("D differs")
        m = projection.shape[0]
        wx = x @ projection.T
        if kind == "trig":
            return torch.cat([torch.cos(wx), torch.sin(wx)], -1)[..., :m] / math.sqrt(m)
        e = wx if kind == "no_norm" else wx - (x * x).sum(-1, keepdim=True) / 2
        if kind == "none":
            return torch.exp(e) / math.sqrt(m)
        if kind == "per_row" or is_query:
            return torch.exp(e - e.amax(-1, keepdim=True)) / math.sqrt(m)
        return torch.exp(e - e.amax((-2, -1), keepdim=True)) / math.sqrt(m)
    return favor_feature_map


@pytest.mark.parametrize("bug, key", [
    (make_favor("trig"), "negative_features"),
    (make_favor("no_norm"), "missing_norm_term"),
    (make_favor("per_row"), "per_key_stabiliser"),
    (make_favor("none"), "no_stabiliser"),
    (make_favor("no_check"), "no_error_for_bad_input"),
    (stub, "not_implemented"),
], ids=["trig", "no-norm-term", "per-row-keys", "no-stabiliser", "no-check", "stub"])
def test_favor_bug_is_named(bug, key, capsys):
    assert_named("favor_feature_map", bug, key, capsys)


def test_favor_written_differently_passes():
    assert report("favor_feature_map", make_favor()).passed


def make_performer(scale=True, normalise=True, iid=False):
    def performer_attention(q, k, v, num_features=256, generator=None):
        validate(q, k, v)
        d = q.shape[-1]
        if iid:
            W = torch.randn(num_features, d, generator=generator, dtype=q.dtype)
        else:
            W = make_orf()(num_features, d, generator).to(q.dtype)
        s = d ** -0.25 if scale else 1.0
        qf, kf = make_favor()(q * s, W, is_query=True), make_favor()(k * s, W)
        num, den = qf @ (kf.transpose(-2, -1) @ v), qf @ kf.sum(-2).unsqueeze(-1)
        return num / (den + 1e-6) if normalise else num
    return performer_attention


@pytest.mark.parametrize("bug, key", [
    (make_performer(scale=False), "missing_scale"),
    (make_performer(normalise=False), "error_does_not_fall"),
    (lambda q, k, v, num_features=256, generator=None: make_performer()(q, k, v, num_features, None),
     "not_reproducible"),
    (stub, "not_implemented"),
], ids=["no-scale", "no-normaliser", "global-rng", "stub"])
def test_performer_bug_is_named(bug, key, capsys):
    assert_named("performer_attention", bug, key, capsys)


def test_performer_with_iid_features_still_passes():
    assert report("performer_attention", make_performer(iid=True)).passed


def test_performer_calling_softmax_is_a_shortcut():
    def cheat(q, k, v, num_features=256, generator=None):
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ v
    assert "shortcut" in report("performer_attention", cheat).keys
