"""grader/harness/checking.py: the tolerance follows the rounding a right answer can show, and a
wrong result that no named mistake matches is described by what it shows (its diagnosis)."""

import math

import pytest
import torch

from grader import run_exercise
from grader.harness.checking import (
    DIAGNOSES,
    TOLERANCE,
    Mistake,
    expect_close,
    note_inputs,
    recorded_comparisons,
    run,
    tolerance,
    unit_roundoff,
)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def softmax64(x, dim=-1):
    return torch.softmax(x.double(), dim)


def mistake_of(out, ref, dtype=torch.float32, **kwargs) -> Mistake:
    with pytest.raises(Mistake) as raised:
        expect_close(out, ref, dtype, what="out", **kwargs)
    return raised.value


def logits(*shape, scale=3.0, seed=0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the tolerance


@pytest.mark.parametrize("dtype", DTYPES)
def test_tolerance_is_the_rounding_of_the_dtype_grown_by_sums_and_exp(dtype):
    u = torch.finfo(dtype).eps / 2
    assert unit_roundoff(dtype) == u
    cancellation = u ** (2 / 3)  # a third of the digits
    rounding = tolerance(dtype) - cancellation
    assert rounding == pytest.approx(4 * u * 2)  # ROUNDING_SAFETY * u * (sqrt(1) + 1)
    assert tolerance(dtype, reduction=100) == pytest.approx(rounding * 11 / 2 + cancellation)
    assert tolerance(dtype, condition=1000.0) == pytest.approx(rounding * 1001 / 2 + cancellation)
    assert tolerance(dtype, reduction=0, condition=0.0) == tolerance(dtype)  # at least 1 each
    assert TOLERANCE[dtype] == tolerance(dtype, reduction=64, condition=4.0)


def test_a_float32_step_stays_far_above_the_float64_tolerance():
    assert tolerance(torch.float64, reduction=4096, condition=1000.0) < 1e-10
    assert unit_roundoff(torch.float32) > 100 * tolerance(torch.float64, 4096, 1000.0)


def test_integers_and_booleans_are_compared_exactly():
    assert tolerance(torch.int64, reduction=100, condition=50.0) == 0.0
    expect_close(torch.arange(4), torch.arange(4, dtype=torch.float64), torch.int64)
    mistake = mistake_of(torch.arange(4) + 1, torch.arange(4, dtype=torch.float64), torch.int64)
    assert mistake.key == "wrong_values"


def test_a_right_answer_in_float32_is_well_inside_the_tolerance():
    x = logits(3, 4, 9)
    out = torch.softmax(x, -1)  # float32 throughout
    expect_close(out, softmax64(x), torch.float32)
    with recorded_comparisons() as comparisons:
        expect_close(out, softmax64(x), torch.float32, what="weights")
    (comparison,) = comparisons
    assert comparison.what == "weights" and comparison.error < comparison.allowed / 4


def softmax_via_logsumexp(x, dim=-1):
    """Correct in exact arithmetic; in float32 the rounding of logsumexp near 1000 costs 1e-5."""
    lse = torch.logsumexp(x, dim, keepdim=True)  # -inf for a slice that is all -inf
    return torch.exp(x - lse.where(lse > -math.inf, 0.0))


def test_large_logit_softmax_via_logsumexp_passes_though_off_by_more_than_1e_5():
    """Issue #18: this formulation used to fail the large-logit check on most hidden seeds."""
    with recorded_comparisons() as comparisons:
        for seed in range(12):
            report = run_exercise(
                "day01-sdpa",
                "stable_softmax",
                softmax_via_logsumexp,
                hidden=True,
                seed=seed,
                verbose=False,
            )
            assert report.passed, [r.message for r in report.results if not r.passed]
    assert max(c.error for c in comparisons) > 1e-5  # the old flat float32 tolerance


def test_the_inputs_magnitude_sets_the_default_condition():
    x = 5000 + logits(4, 9, scale=5.0, seed=3)  # logsumexp rounds to 2.4e-4 there
    out, ref = softmax_via_logsumexp(x), softmax64(x)
    error = mistake_of(out, ref)  # without the inputs: condition 1
    assert error.key == "wrong_values"
    expect_close(out, ref, torch.float32, condition=float(x.abs().max()))

    def check_softmax(impl, rng):
        """large logits"""
        expect_close(impl(x), ref, torch.float32)

    assert run("softmax", softmax_via_logsumexp, [check_softmax], {}, verbose=False).passed


def test_a_stand_in_for_minus_inf_does_not_loosen_the_tolerance():
    note_inputs(torch.ones(3))  # outside a check: nothing to note it in, and no error

    def check_ones(impl, rng):
        """finfo.min is beyond 1 / u: it cannot carry information through exp"""
        x = torch.tensor([0.0, torch.finfo(torch.float32).min])
        expect_close(impl(x), torch.tensor([1.0, 0.0], dtype=torch.float64), torch.float32)

    report = run("ones", lambda x: torch.tensor([1.0, 1e-4]), [check_ones], {}, verbose=False)
    assert not report.passed


def test_a_float32_constant_in_a_float64_check_fails():
    q, k = logits(4, 8).double(), logits(6, 8, seed=1).double()
    out = q @ k.T / torch.sqrt(torch.tensor(8))  # the float32 sqrt(8) of issue #17
    mistake = mistake_of(out, q @ k.T / math.sqrt(8), torch.float64)
    assert mistake.diagnosis == "lost_precision" and "float32" in mistake.message


# ----------------------------------------------------------------------------- diagnoses

X = logits(2, 3, 5, 5)  # (B, H, Lq, Lk) with Lq = Lk: transposes keep the shape
WEIGHTS = softmax64(X)
V = logits(3, 2, 4, 6, seed=1).double() * math.pi  # (B, H, L, D), B != H, L != D; float64
W = logits(3, 3, 4, 5, seed=2).double()  # B = H: swapping them keeps the shape


def exps(x):
    return torch.exp(x - x.amax(-1, keepdim=True))


def rows_off_from(ref, first):
    wrong = ref.clone()
    wrong[..., first:, :] += 0.1
    return wrong


def shuffled(ref):
    order = torch.randperm(ref.numel(), generator=torch.Generator().manual_seed(0))
    return ref.flatten()[order].reshape(ref.shape)


@pytest.mark.parametrize(
    "out, ref, dtype, diagnosis, says",
    [
        (WEIGHTS.transpose(-2, -1), WEIGHTS, torch.float32, "transposed", "last two dims"),
        (W.transpose(0, 1), W, torch.float32, "permuted", "permute(1, 0, 2, 3)"),
        (softmax64(X, -2), WEIGHTS, torch.float32, "wrong_axis", "over dim 2"),
        (exps(X) / exps(X).sum(), WEIGHTS, torch.float32, "wrong_axis", "the whole tensor"),
        (WEIGHTS / 8, WEIGHTS, torch.float32, "scaled", "0.125 = 1/8"),
        (V * math.sqrt(6), V, torch.float32, "scaled", "sqrt(6)"),
        (-V, V, torch.float32, "scaled", "sign"),
        (torch.zeros_like(V), V, torch.float32, "all_zero", "all zeros"),
        (V.float().double(), V, torch.float64, "lost_precision", "float32"),
        (V.half().double(), V, torch.float32, "lost_precision", "float16"),
        (shuffled(V), V, torch.float32, "wrong_order", "wrong places"),
        (rows_off_from(V, 3), V, torch.float32, "partly_wrong", "index 3 along dim 2"),
        (exps(X), WEIGHTS, torch.float32, "scaled_per_slice", "along dim 3"),
        (V * (1 + 2e-4), V, torch.float32, "imprecise", "than rounding explains"),
        (V + 1, V, torch.float32, "first_wrong_entry", "First wrong entry"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_a_wrong_result_is_described_by_what_it_shows(out, ref, dtype, diagnosis, says):
    mistake = mistake_of(out.to(dtype), ref, dtype)
    assert (mistake.key, mistake.diagnosis) == ("wrong_values", diagnosis), mistake.message
    assert says in mistake.message
    assert mistake.hint == DIAGNOSES[diagnosis][1]
    assert "example" not in mistake.hint  # no example was shown to exercise this case


@pytest.mark.parametrize(
    "out, diagnosis",
    [
        (V.transpose(-2, -1), "transposed"),
        (V.permute(2, 0, 1, 3), "permuted"),
        (V.flatten(-2), "reshaped"),
        (V.unsqueeze(-1), "reshaped"),
    ],
)
def test_a_result_of_the_wrong_shape_that_holds_the_answer_is_described(out, diagnosis):
    mistake = mistake_of(out.float(), V)
    assert (mistake.key, mistake.diagnosis) == ("wrong_shape", diagnosis), mistake.message
    assert f"has shape {tuple(out.shape)}, expected {tuple(V.shape)}" in mistake.message


def test_a_half_precision_result_far_off_is_not_called_imprecise():
    out = (V * 1.05).half()  # 5%: far beyond any rounding, though within 100 float16 tolerances
    assert mistake_of(out, V, torch.float16).diagnosis == "scaled"


def test_the_first_wrong_entry_is_named_with_both_values():
    out = V.clone()
    out[1, 0, 2, 3] += 1.0
    out[2, 1, 0, 0] -= 1.0
    mistake = mistake_of(out.float(), V)
    expected = V[1, 0, 2, 3].item()
    assert f"First wrong entry at index (1, 0, 2, 3): got {expected + 1:.6g}" in mistake.message
    assert f"expected {expected:.6g}; 2 of {V.numel()} entries are wrong" in mistake.message
    assert f"shape {tuple(V.shape)}" in mistake.message


def test_precision_level_differences_show_enough_digits():
    mistake = mistake_of(V.float().double(), V, torch.float64)
    got, expected = mistake.message.split("got ")[1].split(", expected ")
    assert got != expected.split(";")[0]


def test_a_named_mistake_wins_over_a_diagnosis():
    def check_values(impl, rng):
        """values"""
        expect_close(impl(V.float()), V, torch.float32, suspects=[("halved", V / 2)])

    hints = {"halved": ("v / 2", "do not halve v.")}
    report = run("identity", lambda v: v / 2, [check_values], {}, hints=hints, verbose=False)
    assert report.keys == {"halved"} and report.diagnoses == set()
    assert report.results[0].hint == "do not halve v."


def test_the_report_collects_diagnoses():
    def check_values(impl, rng):
        """values"""
        expect_close(impl(W.float()), W, torch.float32)

    report = run("identity", lambda w: w.transpose(0, 1), [check_values], {}, verbose=False)
    assert report.keys == {"wrong_values"} and report.diagnoses == {"permuted"}
    assert run("identity", lambda w: w, [check_values], {}, verbose=False).diagnoses == set()


def test_a_mistake_that_fails_several_checks_prints_its_hint_once(capsys):
    def check_small(impl, rng):
        """small values"""
        expect_close(impl(V.float()), V, torch.float32, suspects=[("halved", V / 2)])

    def check_large(impl, rng):
        """large values"""
        expect_close(impl(1e3 * V.float()), 1e3 * V, torch.float32, suspects=[("halved", 5e2 * V)])

    hints = {"halved": ("v / 2", "do not halve v.")}
    report = run("identity", lambda v: v / 2, [check_small, check_large], {}, hints=hints)
    out = capsys.readouterr().out
    assert [r.hint for r in report.results] == ["do not halve v."] * 2  # the report keeps both
    assert out.count("hint: do not halve v.") == 1 and out.count("hint: as above.") == 1


# ----------------------------------------------------------------------------- where it went wrong


def test_a_crash_under_the_memory_meter_points_at_the_students_line(tmp_path):
    """A student's error raised while course.bench.peak_memory watches the call surfaces in the
    meter's own dispatch frame; the 'at:' line is still the student's, not the course's."""
    import importlib.util

    from course.bench import peak_memory

    cell = tmp_path / "student_cell.py"
    cell.write_text("def attend(x):\n    return x @ x.T.unsqueeze(0).mT[0, :3]\n")
    spec = importlib.util.spec_from_file_location("student_cell", cell)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def measured(attend, rng):
        """runs under the memory meter"""
        peak_memory(attend, torch.randn(4, 5))

    report = run("attend", module.attend, [measured], {}, verbose=False)
    (result,) = report.results
    assert not result.passed
    assert "at: return x @ x.T.unsqueeze(0).mT[0, :3]" in result.message, result.message


@pytest.mark.parametrize(
    "body, says",
    [
        ("    raise ValueError(f'window must be at least 1, got {x.shape}')", "your own raise"),
        ("    raise ValueError(f'x is on {x.device}, not the cache device')", "kept as None"),
        ("    return {'a': x}['b']", "a key it does not hold ('b')"),
        ("    return x[x.shape[0]]", "an index past the end"),
        ("    return x @ x", "shape errors name both shapes"),
        ("    return x.item()", "read the error and the line it points to."),
        # torch's own NotImplementedError is no stub: "not implemented yet" would mislead
        ("    return x.tril() & x.bool()", "does not take that dtype"),
        ("    return x.to('meta').tolist()", "shapes but no values"),
        ("    return x.to('meta') + x.new_ones(4)", "Pass device=x.device"),
    ],
)
def test_an_error_no_check_names_gets_the_hint_of_its_kind(tmp_path, body, says):
    """The student's own raise, a missing dict key, an index past a dim and a shape mismatch
    each get their own hint; only a shape mismatch is told that shape errors name both shapes."""
    import importlib.util

    cell = tmp_path / "student_cell.py"
    cell.write_text(f"def attend(x):\n{body}\n")
    spec = importlib.util.spec_from_file_location("student_cell", cell)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def calls(attend, rng):
        """calls it on a (3, 4) input"""
        attend(torch.randn(3, 4))

    (result,) = run("attend", module.attend, [calls], {}, verbose=False).results
    assert not result.passed and result.key == "raised"
    assert says in result.hint, result.hint
    if "shape errors" not in says:
        assert "shape errors" not in result.hint
    if "device" not in body and "meta" not in body:  # device advice only where devices matter
        assert "device" not in result.hint
