"""The day09 check suite, tested: the solution passes on every seed, each planted bug is caught
with its named hint, correct implementations written differently pass, and bad input gives
clear errors. Planted bugs are one-line edits of the solution notebook's own cells."""

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import course  # noqa: F401  (Triton in interpreter mode without a GPU)
from helpers import (
    ROOT,
    assert_mistake_named,
    assert_named_on_seeds,
    assert_promise_kept,
    day_report,
    edited_solution,
    promised,
)

DAY = "day09-mamba-scan"
EXERCISES = [
    "linear_recurrence_sequential",
    "linear_recurrence_parallel",
    "linear_recurrence_chunked",
    "linear_recurrence_triton",
    "discretize_zoh",
    "selective_scan",
    "MambaBlock",
]

# For tests/test_nbgrader_e2e.py: Euler instead of the zero-order hold for A costs
# discretize_zoh's visible and hidden points (2 + 1), and the feedback names the mistake.
PLANTED_SUBMISSION = {
    "cell": "discretize_zoh",
    "old": "A_bar = torch.exp(dA)",
    "new": "A_bar = 1 + dA",
    "points_lost": 3,
    "hint": "the exact solution of h' = A h over a step delta is exp(delta*A): A_bar = torch.exp(delta*A).",
}

report = functools.partial(day_report, DAY)
assert_named = functools.partial(assert_mistake_named, DAY)


def planted(solution, cell: str, old: str, new: str, name: str = None):
    """The solution's `name` after replacing `old` by `new` in solution cell `cell`."""
    return edited_solution(DAY, solution, cell, [(old, new)], name)


# ----------------------------------------------------------------------------- the solution


def test_worked_examples(solution):
    a, b = torch.tensor([0.5, 0.5, 2.0]), torch.tensor([1.0, 2.0, 3.0])
    for name in EXERCISES[:4]:
        fn = solution[name]
        out = fn(a, b, 2) if name.endswith("chunked") else fn(a, b)
        torch.testing.assert_close(out, torch.tensor([1.0, 2.5, 8.0]))
    A_bar, B_bar = solution["discretize_zoh"](
        torch.ones(1, 1, 1), torch.tensor([[-math.log(2)]]), torch.ones(1, 1, 1)
    )
    assert A_bar.item() == pytest.approx(0.5) and B_bar.item() == pytest.approx(0.5 / math.log(2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m["linear_recurrence_sequential"](torch.ones(3), torch.ones(4)), "same shape"),
        (
            lambda m: m["linear_recurrence_parallel"](torch.ones(2, 3), torch.ones(3, 2)),
            "same shape",
        ),
        (lambda m: m["linear_recurrence_chunked"](torch.ones(3), torch.ones(3), 0), "chunk_size"),
        (lambda m: m["linear_recurrence_triton"](torch.ones(3), torch.ones(2)), "same shape"),
        (
            lambda m: m["discretize_zoh"](
                torch.ones(1, 2, 5), torch.ones(2, 3), torch.ones(1, 5, 3)
            ),
            r"\(1, 5, 3\)",
        ),
        (
            lambda m: m["selective_scan"](
                torch.ones(1, 2, 5),
                torch.ones(1, 2, 4),
                torch.ones(2, 3),
                torch.ones(1, 3, 5),
                torch.ones(1, 3, 5),
            ),
            "u and delta",
        ),
        (
            lambda m: m["selective_scan"](
                torch.ones(1, 2, 5),
                torch.ones(1, 2, 5),
                torch.ones(2, 3),
                torch.ones(1, 5, 3),
                torch.ones(1, 3, 5),
            ),
            "B must be",
        ),
        (lambda m: m["MambaBlock"](8)(torch.ones(1, 5, 9)), r"\(batch, L, 8\)"),
    ],
    ids=[
        "seq-length",
        "par-transposed",
        "chunk0",
        "triton-length",
        "zoh-layout",
        "scan-length",
        "scan-layout",
        "mamba-features",
    ],
)
def test_bad_input_gives_clear_errors(solution, call, match):
    with pytest.raises(ValueError, match=match):
        call(solution)


# ----------------------------------------------------------------------------- planted bugs: recurrences


def flat_state(a, b):
    """A loop that never resets the state between rows."""
    rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    h = torch.empty_like(rows_b)
    state = torch.zeros((), dtype=b.dtype)
    for r in range(rows_a.shape[0]):
        for t in range(rows_a.shape[1]):
            state = rows_a[r, t] * state + rows_b[r, t]
            h[r, t] = state
    return h.reshape(b.shape)


SEQUENTIAL_BUGS = {
    "exclusive_scan": (
        "state = a[..., t] * state + b[..., t]\n        h[..., t] = state",
        "h[..., t] = state\n        state = a[..., t] * state + b[..., t]",
    ),
    "decay_after_write": (
        "state = a[..., t] * state + b[..., t]",
        "state = a[..., t] * (state + b[..., t])",
    ),
    "reversed_time": ("for t in range(b.shape[-1]):", "for t in reversed(range(b.shape[-1])):"),
    "no_error_for_bad_input": ("if a.shape != b.shape or a.ndim == 0:", "if False:"),
    "no_error_for_bad_input (0-d)": (
        "if a.shape != b.shape or a.ndim == 0:",
        "if a.shape != b.shape:",
    ),
    "scan_along_first_axis": (
        "state = torch.zeros_like(b[..., 0])  # one state per leading index\n"
        "    for t in range(b.shape[-1]):\n"
        "        state = a[..., t] * state + b[..., t]\n"
        "        h[..., t] = state",
        "state = torch.zeros_like(b[0])\n"
        "    for t in range(b.shape[0]):\n"
        "        state = a[t] * state + b[t]\n"
        "        h[t] = state",
    ),
    "decay_shifted": (
        "state = a[..., t] * state + b[..., t]",
        "state = (a[..., t - 1] if t > 0 else 1.0) * state + b[..., t]",
    ),
    "initial_state_one": ("torch.zeros_like(b[..., 0])", "torch.ones_like(b[..., 0])"),
    "a_b_swapped": (
        "state = a[..., t] * state + b[..., t]",
        "state = b[..., t] * state + a[..., t]",
    ),
    "modified_input": ("h = torch.empty_like(b)", "h = b"),  # the right values, written into b
    "divides_by_running_product": (
        "    h = torch.empty_like(b)\n",
        "    P = torch.cumprod(a, -1)\n    return P * torch.cumsum(b / P, -1)\n",
    ),
    # h from torch.zeros: the last entry stays 0
    "last_step_skipped": (
        "h = torch.empty_like(b)\n    state = torch.zeros_like(b[..., 0])  # one state per leading"
        " index\n    for t in range(b.shape[-1]):",
        "h = torch.zeros_like(b)\n    state = torch.zeros_like(b[..., 0])\n"
        "    for t in range(b.shape[-1] - 1):",
    ),
    # a crash on (L,) and on (batch, dim, L) once t passes dim
    "scan_along_dim_1": (
        "state = a[..., t] * state + b[..., t]\n        h[..., t] = state",
        "state = a[:, t] * state + b[:, t]\n        h[:, t] = state",
    ),
}


@pytest.mark.parametrize("case", SEQUENTIAL_BUGS)
def test_sequential_planted_bugs_are_named(solution, case, capsys):
    bug = planted(solution, "linear_recurrence_sequential", *SEQUENTIAL_BUGS[case])
    assert_named("linear_recurrence_sequential", bug, case.split()[0], capsys)


def test_state_not_reset_between_rows_is_named(capsys):
    assert_named("linear_recurrence_sequential", flat_state, "state_not_reset", capsys)


PARALLEL_BUGS = {
    "combine_wrong_order": (
        "A, H = A_left * A, A * H_left + H",
        "A, H = A_left * A, A_left * H + H_left",
    ),
    "exclusive_scan": ("    return H\n", "    return F.pad(H[..., :-1], (1, 0))\n"),
    "exclusive_plus_b": ("    return H\n", "    return F.pad(H[..., :-1], (1, 0)) + b\n"),
    "sequential_loop": ("    A, H = a, b\n", "    return linear_recurrence_sequential(a, b)\n"),
    "missing_last_step": (
        "while step < b.shape[-1]:",
        "for _ in range(int(math.log2(b.shape[-1]))):",
    ),
    "decays_not_composed": ("A, H = A_left * A, A * H_left + H", "H = A * H_left + H"),
    "decays_updated_before_h": (
        "A, H = A_left * A, A * H_left + H",
        "A = A_left * A\n        H = A * H_left + H",
    ),
    "decay_from_left": (
        "A, H = A_left * A, A * H_left + H",
        "A, H = A_left * A, A_left * H_left + H",
    ),
    "divides_by_running_product": (
        "    A, H = a, b\n",
        "    P = torch.cumprod(a, -1)\n    return P * torch.cumsum(b / P, -1)\n",
    ),
    "offsets_not_doubled": (
        "    step = 1\n    while step < b.shape[-1]:",
        "    for step in range(1, min((b.shape[-1] - 1).bit_length() + 1, b.shape[-1])):",
    ),
    # every offset up to L - 1: O(L) steps, named as well as the Python loop over time
    "offsets_not_doubled (d += 1 while d < L)": ("        step *= 2\n", "        step += 1\n"),
    "shift_wraps_around": (
        "A_left = F.pad(A[..., :-step], (step, 0), value=1.0)\n"
        "        H_left = F.pad(H[..., :-step], (step, 0), value=0.0)",
        "A_left = A.roll(step, -1)\n        H_left = H.roll(step, -1)",
    ),
    # the right values, computed in a and b themselves
    "modified_input": (
        "A, H = A_left * A, A * H_left + H",
        "H[..., step:] = A[..., step:] * H[..., :-step] + H[..., step:]\n"
        "        A[..., step:] = A[..., :-step] * A[..., step:]",
    ),
}


@pytest.mark.parametrize("case", PARALLEL_BUGS)
def test_parallel_planted_bugs_are_named(solution, case, capsys):
    bug = planted(solution, "linear_recurrence_parallel", *PARALLEL_BUGS[case])
    assert_named("linear_recurrence_parallel", bug, case.split()[0], capsys)


CHUNKED_BUGS = {
    "no_carry": ("h = local + decay * entering.unsqueeze(-1)", "h = local"),
    "carry_not_decayed": (
        "h = local + decay * entering.unsqueeze(-1)",
        "h = local + entering.unsqueeze(-1)",
    ),
    "drops_last_chunk": (
        "    n = -(-L // chunk_size)\n    pad = n * chunk_size - L\n",
        "    n = max(L // chunk_size, 1)\n    pad = max(chunk_size - L, 0)\n"
        "    a, b = a[..., :n * chunk_size], b[..., :n * chunk_size]\n",
    ),
    "no_error_for_bad_chunk_size": ("if chunk_size < 1:", "if chunk_size < -100:"),
    "decay_without_a_t": (
        "decay = torch.cumprod(a_c, dim=-1)",
        "decay = torch.cumprod(F.pad(a_c[..., :-1], (1, 0), value=1.0), dim=-1)",
    ),
    "carry_from_local_end": (
        "ends = linear_recurrence_parallel(decay[..., -1], local[..., -1])",
        "ends = local[..., -1]",
    ),
    "front_padding": (
        "F.pad(a, (0, pad), value=1.0).unflatten(-1, (n, chunk_size))  # (..., n, C)\n"
        "    b_c = F.pad(b, (0, pad), value=0.0)",
        "F.pad(a, (pad, 0), value=1.0).unflatten(-1, (n, chunk_size))  # (..., n, C)\n"
        "    b_c = F.pad(b, (pad, 0), value=0.0)",
    ),
    "chunks_strided": (
        ".unflatten(-1, (n, chunk_size))  # (..., n, C)\n"
        "    b_c = F.pad(b, (0, pad), value=0.0).unflatten(-1, (n, chunk_size))\n",
        ".unflatten(-1, (chunk_size, n)).mT\n"
        "    b_c = F.pad(b, (0, pad), value=0.0).unflatten(-1, (chunk_size, n)).mT\n",
    ),
    "carry_not_shifted": ("entering = F.pad(ends[..., :-1], (1, 0))", "entering = ends"),
    "ends_summed": (
        "ends = linear_recurrence_parallel(decay[..., -1], local[..., -1])",
        "ends = torch.cumsum(local[..., -1], -1)",
    ),
    "carry_decayed_by_first_a": (
        "linear_recurrence_parallel(decay[..., -1], local[..., -1])",
        "linear_recurrence_parallel(decay[..., 0], local[..., -1])",
    ),
    "decay_over_whole_row": (
        "decay = torch.cumprod(a_c, dim=-1)",
        "decay = torch.cumprod(a_c.flatten(-2), dim=-1).unflatten(-1, a_c.shape[-2:])",
    ),
}


@pytest.mark.parametrize("key", CHUNKED_BUGS)
def test_chunked_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "linear_recurrence_chunked", *CHUNKED_BUGS[key])
    assert_named("linear_recurrence_chunked", bug, key, capsys)


# Right values written into the caller's tensor: every check that fails names the in-place
# write, none a mistake of the maths (an oracle computed from the changed input would).
IN_PLACE_WRITES = {
    "linear_recurrence_chunked": (
        "    return h.flatten(-2)[..., :L]\n",
        "    b.copy_(h.flatten(-2)[..., :L])\n    return b\n",
    ),
    "selective_scan": ("delta = delta + delta_bias[:, None]", "delta += delta_bias[:, None]"),
}


@pytest.mark.parametrize("name", IN_PLACE_WRITES)
def test_in_place_writes_are_named_as_such(solution, name):
    bug = planted(solution, name, *IN_PLACE_WRITES[name])
    result = report(name, bug)
    assert result.keys == {"modified_input"}, [(r.key, r.message) for r in result.results]


TRITON_BUGS = {
    "combine_wrong_order": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_left * a_right, a_left * b_right + b_left",
        )
    ],
    # right in the interpreter's left-to-right scan, wrong in a GPU's tree
    "combine_a_not_composed": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_left, a_right * b_left + b_right",
        )
    ],
    "combine_a_not_composed (a sum)": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_left + a_right, a_right * b_left + b_right",
        )
    ],
    "combine_decays_own_b": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_left * a_right, a_left * b_left + b_right",
        )
    ],
    "scan_product_stored": [("_, h = tl.associative_scan", "h, _ = tl.associative_scan")],
    "block_not_power_of_two": [("BLOCK=triton.next_power_of_2(L)", "BLOCK=L")],
    # the rows after the first are left as torch.empty gave them
    "rows_not_launched": [("scan_rows_kernel[(a_rows.shape[0],)]", "scan_rows_kernel[(1,)]")],
    # L programs for the one row of a (L,) input
    "grid_from_first_dim": [
        ("scan_rows_kernel[(a_rows.shape[0],)]", "scan_rows_kernel[(a.shape[0],)]")
    ],
    "scan_axis_not_0": [("tl.associative_scan((a, b), 0,", "tl.associative_scan((a, b), 1,")],
    "strided_as_contiguous": [
        ("a_rows = a.reshape(-1, L).contiguous()", "a_rows = a.reshape(-1, L)"),
        ("b_rows = b.reshape(-1, L).contiguous()", "b_rows = b.reshape(-1, L)"),
    ],
    # both crashed the interpreter before the checks watched the launches
    "out_of_bounds (unmasked store)": [
        (
            "tl.store(h_ptr + row * L + offsets, h, mask=inside)",
            "tl.store(h_ptr + row * L + offsets, h)",
        )
    ],
    "row_stride_block": [
        (
            "row * L + offsets, mask=inside, other=1.0",
            "row * BLOCK + offsets, mask=inside, other=1.0",
        ),
        (
            "row * L + offsets, mask=inside, other=0.0",
            "row * BLOCK + offsets, mask=inside, other=0.0",
        ),
        ("tl.store(h_ptr + row * L + offsets", "tl.store(h_ptr + row * BLOCK + offsets"),
    ],
}


@pytest.mark.parametrize("case", TRITON_BUGS)
def test_triton_planted_bugs_are_named(solution, case, capsys):
    bug = edited_solution(DAY, solution, "linear_recurrence_triton", TRITON_BUGS[case])
    assert_named("linear_recurrence_triton", bug, case.split()[0], capsys)


def assert_every_failure_named(name, bug, key, also=()):
    """`bug` fails, and every check it fails names `key` (or one of `also`)."""
    failed = [r for r in report(name, bug).results if not r.passed]
    keys = {r.key for r in failed}
    assert key in keys and keys <= {key, *also}, [(r.check, r.key, r.message) for r in failed]


# Every check a planted bug fails names that bug, none a fallback or another mistake: the
# strided views of the Triton scan, and the a_t = 0 check of the chunked scan (with a_t = 0 in
# every row, P from one cumprod over the whole row is 0 after it, no different from no carry at
# all). `also`: other mistakes the same code makes.
EVERY_FAILURE_NAMED = {
    "combine_a_not_composed (a sum)": ("linear_recurrence_triton", ()),
    "combine_decays_own_b": ("linear_recurrence_triton", ()),
    "decay_over_whole_row": ("linear_recurrence_chunked", ()),
    "offsets_not_doubled (d += 1 while d < L)": (
        "linear_recurrence_parallel",
        ("sequential_loop",),
    ),
}


@pytest.mark.parametrize("case", EVERY_FAILURE_NAMED)
def test_every_failing_check_names_the_planted_bug(solution, case):
    name, also = EVERY_FAILURE_NAMED[case]
    bugs = {
        "linear_recurrence_triton": TRITON_BUGS,
        "linear_recurrence_chunked": CHUNKED_BUGS,
        "linear_recurrence_parallel": PARALLEL_BUGS,
    }[name]
    edits = bugs[case] if isinstance(bugs[case], list) else [bugs[case]]
    assert_every_failure_named(
        name, edited_solution(DAY, solution, name, edits), case.split()[0], also
    )


# An out-of-bounds store in a plain call (the example cell after the kernel, say), outside any
# check: the setup cell's watch must name it and the process live on to the next launch.
OUT_OF_BOUNDS_SCRIPT = """
import nbformat, sys, torch

notebook = nbformat.read({notebook!r}, as_version=4)
exec(next(c.source for c in notebook.cells if c.metadata.get("nbgrader", {{}}).get("grade_id") == "setup"))

sys.path.insert(0, {tests!r})
from copy_kernel import copy_kernel

x, y = torch.arange(5.0), torch.zeros(5)
try:
    copy_kernel[(1,)](x, y, 5, BLOCK=4096, MASKED=False)
except Exception as error:
    print(type(error).__name__, error.key)
    print(error)
copy_kernel[(1,)](x, y, 5, BLOCK=8, MASKED=True)
print("alive", torch.equal(x, y))
"""


@pytest.mark.parametrize("day", ["day07-flash-triton", DAY])
def test_out_of_bounds_outside_the_checks_is_named(day, tmp_path):
    script = tmp_path / "plain_launch.py"  # a file: Triton reads its kernels' source
    notebook = ROOT / "solutions" / day / f"{day}.ipynb"
    script.write_text(
        OUT_OF_BOUNDS_SCRIPT.format(notebook=str(notebook), tests=str(ROOT / "tests"))
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "OutOfBounds out_of_bounds" in run.stdout, run.stdout
    assert "copy_kernel: a load from x_ptr touched" in run.stdout
    assert "hint: mask every tl.load" in run.stdout
    assert run.stdout.rstrip().endswith("alive True"), run.stdout


# ----------------------------------------------------------------------------- planted bugs: ZOH, scan, block

ZOH_BUGS = {
    "euler_a": ("A_bar = torch.exp(dA)", "A_bar = 1 + dA"),
    "simplified_b": ("torch.expm1(dA) / torch.where(zero, 1.0, A[:, None, :])", "delta[..., None]"),
    "b_not_divided": ("torch.expm1(dA) / torch.where(zero, 1.0, A[:, None, :])", "torch.expm1(dA)"),
    "missing_minus_one": ("torch.expm1(dA) / torch.where", "torch.exp(dA) / torch.where"),
    "zero_a_nan": (
        "gain = torch.where(zero, delta[..., None], torch.expm1(dA) / torch.where(zero, 1.0, A[:, None, :]))",
        "gain = torch.expm1(dA) / A[:, None, :]",
    ),
    "no_error_for_bad_layout": (
        "if tuple(A.shape) != (dim, A.shape[1]) or tuple(B.shape) != (batch, A.shape[1], L):",
        "if False:",
    ),
    "pair_swapped": ("return A_bar, B_bar", "return B_bar, A_bar"),
    "zero_a_limit_b": (
        "torch.where(zero, delta[..., None], torch.expm1",
        "torch.where(zero, 1.0, torch.expm1",
    ),
    "b_delta_twice": ("B_bar = gain * B", "B_bar = gain * delta[..., None] * B"),
    "exp_minus_one": ("torch.expm1(dA) / torch.where", "(torch.exp(dA) - 1) / torch.where"),
    "zero_a_zeroed": (
        "torch.where(zero, delta[..., None], torch.expm1",
        "torch.where(zero, 0.0, torch.expm1",
    ),
    "b_reshaped": (
        "B.transpose(1, 2)[:, None, :, :]",
        "B.reshape(B.shape[0], B.shape[2], B.shape[1])[:, None, :, :]",
    ),
    "a_bar_without_delta": (
        "A_bar = torch.exp(dA)",
        "A_bar = torch.exp(A)[:, None, :].expand_as(dA)",
    ),
    "modified_input": (
        "zero = (A == 0)[:, None, :]",
        "zero = (A == 0)[:, None, :]\n    A[A == 0] = 1.0",
    ),
}


@pytest.mark.parametrize("key", ZOH_BUGS)
def test_zoh_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "discretize_zoh", *ZOH_BUGS[key])
    assert_named("discretize_zoh", bug, key, capsys)


SCAN_BUGS = {
    "softplus_twice": ("delta = F.softplus(delta)", "delta = F.softplus(F.softplus(delta))"),
    "softplus_missing": ("if delta_softplus:\n        delta = F.softplus(delta)", "pass"),
    "softplus_ignores_flag": ("if delta_softplus:\n", "if True:\n"),
    "bias_after_softplus": (
        "    if delta_bias is not None:\n        delta = delta + delta_bias[:, None]\n"
        "    if delta_softplus:\n        delta = F.softplus(delta)\n",
        "    if delta_softplus:\n        delta = F.softplus(delta)\n"
        "    if delta_bias is not None:\n        delta = delta + delta_bias[:, None]\n",
    ),
    "missing_d": ("y = y + D[:, None] * u", "y = y"),
    "gate_sigmoid": ("y = y * F.silu(z)", "y = y * torch.sigmoid(z)"),
    "gate_without_silu": ("y = y * F.silu(z)", "y = y * z"),
    "euler_a": (
        "A_bar = torch.exp(delta[..., None] * A[:, None, :])",
        "A_bar = 1 + delta[..., None] * A[:, None, :]",
    ),
    "zoh_b_in_scan": (
        "Bu = (delta * u)[..., None] * B.transpose(1, 2)[:, None]",
        "Bu = (torch.expm1(delta[..., None] * A[:, None, :]) / A[:, None, :]) * u[..., None] * B.transpose(1, 2)[:, None]",
    ),
    "no_error_for_bad_layout": ("if tuple(t.shape) != (batch, A.shape[1], L):", "if False:"),
    "readout_before_update": (
        'y = torch.einsum("bdnl,bnl->bdl", x, C)',
        'y = torch.einsum("bdnl,bnl->bdl", F.pad(x[..., :-1], (1, 0)), C)',
    ),
    "u_missing": ("Bu = (delta * u)[..., None]", "Bu = delta[..., None]"),
    "b_without_delta": ("Bu = (delta * u)[..., None]", "Bu = u[..., None]"),
    "readout_over_channels": (
        'y = torch.einsum("bdnl,bnl->bdl", x, C)',
        'y = torch.einsum("bdnl,bnl->bl", x, C)[:, None].expand_as(u) / u.shape[1]',
    ),
    "softplus_overflow": (
        "delta = F.softplus(delta)",
        "delta = torch.log(1 + torch.exp(delta))",
    ),
}


@pytest.mark.parametrize("key", SCAN_BUGS)
def test_scan_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "selective_scan", *SCAN_BUGS[key])
    assert_named("selective_scan", bug, key, capsys)


def test_scan_with_b_and_c_swapped_is_named(solution, capsys):
    edits = [
        ("Bu = (delta * u)[..., None] * B.transpose", "Bu = (delta * u)[..., None] * C.transpose"),
        ('y = torch.einsum("bdnl,bnl->bdl", x, C)', 'y = torch.einsum("bdnl,bnl->bdl", x, B)'),
    ]
    bug = edited_solution(DAY, solution, "selective_scan", edits)
    assert_named("selective_scan", bug, "b_c_swapped", capsys)


def scan_without_reset(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    x = torch.zeros(u.shape[1], A.shape[1], dtype=u.dtype)
    y = torch.empty_like(u)
    for i in range(u.shape[0]):  # the state is never reset: row i starts where row i - 1 ended
        for t in range(u.shape[2]):
            x = (
                torch.exp(delta[i, :, t, None] * A) * x
                + delta[i, :, t, None] * B[i, None, :, t] * u[i, :, t, None]
            )
            y[i, :, t] = x @ C[i, :, t]
    if D is not None:
        y = y + D[:, None] * u
    return y * F.silu(z) if z is not None else y


def test_scan_state_not_reset_between_rows_is_named(capsys):
    assert_named("selective_scan", scan_without_reset, "state_not_reset", capsys)


CONV_THEN_X_PROJ = (
    "        u = F.silu(self.conv1d(u)[..., :L])                          # causal: the first L outputs\n"
    "        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)"
)
MAMBA_BUGS = {
    "conv_not_causal": (
        "u = F.silu(self.conv1d(u)[..., :L])",
        "u = F.silu(self.conv1d(u)[..., -L:])",
    ),
    "no_conv_silu": ("u = F.silu(self.conv1d(u)[..., :L])", "u = self.conv1d(u)[..., :L]"),
    "a_positive": ("-torch.exp(self.A_log)", "torch.exp(self.A_log)"),
    "wrong_parameters": (
        "self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)",
        "self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state)",
    ),
    "gate_ignored": ("D=self.D, z=z,", "D=self.D, z=None,"),
    "no_error_for_bad_features": ("if x.ndim != 3 or x.shape[-1] != self.d_model:", "if False:"),
    "u_z_swapped": ("u, z = self.in_proj(x)", "z, u = self.in_proj(x)"),
    "x_proj_split_order": (
        "dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state]",
        "B, C, dt = self.x_proj(u.transpose(1, 2)).split([self.d_state, self.d_state, self.dt_rank]",
    ),
    "dt_bias_twice": ("delta = F.linear(dt, self.dt_proj.weight)", "delta = self.dt_proj(dt)"),
    "x_proj_before_conv": (CONV_THEN_X_PROJ, "\n".join(reversed(CONV_THEN_X_PROJ.split("\n")))),
    "gate_silu_twice": ("D=self.D, z=z,", "D=self.D, z=F.silu(z),"),
    "b_c_reshaped": (
        "B.transpose(1, 2), C.transpose(1, 2)",
        "B.reshape(B.shape[0], self.d_state, L), C.reshape(C.shape[0], self.d_state, L)",
    ),
    "not_initialised_as_mamba": (
        "nn.Parameter(torch.ones(d_inner))",
        "nn.Parameter(torch.zeros(d_inner))",
    ),
}


@pytest.mark.parametrize("key", MAMBA_BUGS)
def test_mamba_planted_bugs_are_named(solution, key, capsys):
    bug = planted(solution, "MambaBlock", *MAMBA_BUGS[key])
    assert_named("MambaBlock", bug, key, capsys)


# The forward's mistakes, named by the check of MambaBlock(d_model)'s defaults too (d_state = 16,
# d_conv = 4), not only by the one of drawn sizes; a conv or a reshape that mixes up time is also
# not causal.
FORWARD_BUGS = [
    key
    for key in MAMBA_BUGS
    if key not in ("wrong_parameters", "no_error_for_bad_features", "not_initialised_as_mamba")
]


@pytest.mark.parametrize("key", FORWARD_BUGS)
def test_mamba_forward_bugs_are_named_by_every_check(solution, key):
    bug = planted(solution, "MambaBlock", *MAMBA_BUGS[key])
    assert_every_failure_named("MambaBlock", bug, key, also=("not_causal",))


# Slips that crash, named by the crash's own text (the sizes it names): every hidden draw keeps
# the sizes apart, so that the wrong layout never broadcasts by chance.
NAMED_CRASHES = {
    "l_state_crossed": ("discretize_zoh", "B.transpose(1, 2)[:, None, :, :]", "B[:, None, :, :]"),
    "per_channel_along_l (A in discretize_zoh)": (
        "discretize_zoh",
        "dA = delta[..., None] * A[:, None, :]",
        "dA = delta[..., None] * A[None]",
    ),
    "dim_state_crossed": (
        "selective_scan",
        'y = torch.einsum("bdnl,bnl->bdl", x, C)',
        "y = (x * C[:, :, None, :]).sum(2)",
    ),
    "per_channel_along_l (delta_bias)": (
        "selective_scan",
        "delta = delta + delta_bias[:, None]",
        "delta = delta + delta_bias",
    ),
    "per_channel_along_l (D)": ("selective_scan", "y = y + D[:, None] * u", "y = y + D * u"),
    "tensor_truth_value": ("selective_scan", "if D is not None:", "if D:"),
    # u, z split along the features of in_proj's (batch, L, 2 * d_inner): u reaches the conv
    # as (batch, L, d_inner)
    "conv_input_layout": (
        "MambaBlock",
        "self.in_proj(x).transpose(1, 2).chunk(2, dim=1)",
        "self.in_proj(x).chunk(2, dim=-1)",
    ),
    "in_proj_split_along_l": (
        "MambaBlock",
        "self.in_proj(x).transpose(1, 2).chunk(2, dim=1)",
        "(t.transpose(1, 2) for t in self.in_proj(x).chunk(2, dim=1))",
    ),
    # the student's own selective_scan refuses them, naming their shape
    "scan_b_c_layout": ("MambaBlock", "B.transpose(1, 2), C.transpose(1, 2)", "B, C"),
}


@pytest.mark.parametrize("case", NAMED_CRASHES)
def test_crashes_are_named_on_hidden_seeds(solution, case, capsys):
    cell, old, new = NAMED_CRASHES[case]
    bug = planted(solution, cell, old, new)
    assert_named_on_seeds(DAY, cell, bug, case.split()[0], capsys, range(1, 5))


def test_untransposed_b_c_in_an_unchecked_scan_are_named(solution, capsys):
    """A scan without its own shape checks: B and C in (batch, L, d_state) fail in a broadcast."""
    unchecked = planted(
        solution, "selective_scan", "if tuple(t.shape) != (batch, A.shape[1], L):", "if False:"
    )
    _, old, new = NAMED_CRASHES["scan_b_c_layout"]
    bug = planted({**solution, "selective_scan": unchecked}, "MambaBlock", old, new)
    assert_named_on_seeds(DAY, "MambaBlock", bug, "scan_b_c_layout", capsys, range(1, 5))


def test_same_padding_is_not_causal_on_hidden_seeds(solution, capsys):
    """Padding d_conv // 2 ("same") lets the conv see ahead; the causal check draws kernels of 3
    and 4, where it does (padded by 1, a kernel of 2 is causal)."""
    conv = "self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv"
    bug = planted(solution, "MambaBlock", f"{conv} - 1)", f"{conv} // 2)")
    assert_named_on_seeds(DAY, "MambaBlock", bug, "not_causal", capsys, range(1, 5))


def test_mamba_lookahead_is_not_causal(solution):
    bug = planted(
        solution,
        "MambaBlock",
        "u = F.silu(self.conv1d(u)[..., :L])",
        "u = F.silu(self.conv1d(u)[..., -L:])",
    )
    assert "not_causal" in report("MambaBlock", bug).keys


def test_library_versions_are_forbidden():
    import course.reference.mamba_scan as library

    for name in EXERCISES[:6]:
        assert report(name, getattr(library, name)).keys == {"shortcut"}
    assert "shortcut" in report("MambaBlock", library.MambaBlock).keys


# ----------------------------------------------------------------------------- correct, written differently


def blelloch_like(a, b):
    """Recursive doubling on pairs with torch.cat (the other spelling of Hillis-Steele)."""
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    step = 1
    while step < a.shape[-1]:
        b = torch.cat([b[..., :step], a[..., step:] * b[..., :-step] + b[..., step:]], -1)
        a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], -1)
        step *= 2
    return b


def log_depth_recursive(a, b):
    """Even/odd recursion (the up-sweep idea): pair neighbours, scan the half, fill in the rest."""
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    L = a.shape[-1]
    if L == 1:
        return b.clone()
    if L % 2:
        a, b = F.pad(a, (0, 1), value=1.0), F.pad(b, (0, 1))
    a_even, a_odd, b_even, b_odd = a[..., 0::2], a[..., 1::2], b[..., 0::2], b[..., 1::2]
    h_odd = log_depth_recursive(a_even * a_odd, a_odd * b_even + b_odd)  # h at 1, 3, 5, ...
    h_even = torch.cat([b_even[..., :1], a_even[..., 1:] * h_odd[..., :-1] + b_even[..., 1:]], -1)
    return torch.stack([h_even, h_odd], -1).flatten(-2)[..., :L]


def in_place_slices(a, b):
    """Hillis-Steele on copies, updated in place slice by slice: H first, so it reads the old A
    (each right-hand side is computed before it is written)."""
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"shapes: a {tuple(a.shape)}, b {tuple(b.shape)}")
    A, H = a.clone(), b.clone()
    d = 1
    while d < a.shape[-1]:
        H[..., d:] = A[..., d:] * H[..., :-d] + H[..., d:]
        A[..., d:] = A[..., :-d] * A[..., d:]
        d *= 2
    return H


def work_efficient(a, b):
    """Blelloch's up-sweep and down-sweep on a row padded to a power of two with the identity:
    an exclusive scan, made inclusive as a * excl + b."""
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"shapes: a {tuple(a.shape)}, b {tuple(b.shape)}")
    L = a.shape[-1]
    n = 1 << (L - 1).bit_length()
    A, H = F.pad(a, (0, n - L), value=1.0), F.pad(b, (0, n - L))
    d = 1
    while d < n:  # up-sweep: node r absorbs its left sibling r - d
        r = torch.arange(2 * d - 1, n, 2 * d)
        H[..., r], A[..., r] = A[..., r] * H[..., r - d] + H[..., r], A[..., r - d] * A[..., r]
        d *= 2
    H[..., n - 1], A[..., n - 1] = 0.0, 1.0
    while d > 1:  # down-sweep: the left child takes the parent's prefix, the right one both
        d //= 2
        r = torch.arange(2 * d - 1, n, 2 * d)
        Hl, Al, Hr, Ar = H[..., r - d], A[..., r - d], H[..., r], A[..., r]
        H[..., r - d], A[..., r - d] = Hr, Ar
        H[..., r], A[..., r] = Al * Hr + Hl, Ar * Al
    return a * H[..., :L] + b


@pytest.mark.parametrize(
    "impl", [blelloch_like, log_depth_recursive, in_place_slices, work_efficient]
)
def test_other_correct_parallel_scans_pass(impl):
    assert report("linear_recurrence_parallel", impl).passed


def chunked_with_loop(a, b, chunk_size):
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h, carry = [], torch.zeros_like(b[..., 0])
    for start in range(0, a.shape[-1], chunk_size):
        a_c, b_c = a[..., start : start + chunk_size], b[..., start : start + chunk_size]
        local = blelloch_like(a_c, b_c)
        h.append(local + torch.cumprod(a_c, -1) * carry.unsqueeze(-1))
        carry = h[-1][..., -1]
    return torch.cat(h, -1)


def test_other_correct_chunked_scan_passes():
    assert report("linear_recurrence_chunked", chunked_with_loop).passed


def sequential_in_float64(a, b):
    """A list of float64 states (addcmul), stacked and cast back to the input's dtype."""
    if a.ndim == 0 or a.shape != b.shape:
        raise ValueError(f"bad shapes a={tuple(a.shape)} b={tuple(b.shape)}")
    state, out = torch.zeros(a.shape[:-1], dtype=torch.float64), []
    for a_t, b_t in zip(a.double().unbind(-1), b.double().unbind(-1)):
        state = torch.addcmul(b_t, a_t, state)
        out.append(state)
    return torch.stack(out, -1).to(b.dtype)


def test_other_correct_sequential_scan_passes():
    assert report("linear_recurrence_sequential", sequential_in_float64).passed


# Kernels written differently: tl.fma in the combine and a block twice the power of two needed;
# the combine with its operands' product the other way round and a row base in int64.
OTHER_TRITON_SCANS = {
    "fma, wide block": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_right * a_left, tl.fma(a_right, b_left, b_right)",
        ),
        ("BLOCK=triton.next_power_of_2(L)", "BLOCK=2 * triton.next_power_of_2(L)"),
    ],
    "int64 row base": [
        (
            "return a_left * a_right, a_right * b_left + b_right",
            "return a_right * a_left, b_right + b_left * a_right",
        ),
        ("row = tl.program_id(0)", "row = tl.program_id(0).to(tl.int64)"),
    ],
}


@pytest.mark.parametrize("case", OTHER_TRITON_SCANS)
def test_other_correct_triton_scans_pass(solution, case):
    scan = edited_solution(DAY, solution, "linear_recurrence_triton", OTHER_TRITON_SCANS[case])
    assert report("linear_recurrence_triton", scan).passed


def zoh_as_einsum(delta, A, B):
    if (
        delta.ndim != 3
        or A.ndim != 2
        or B.ndim != 3
        or A.shape[0] != delta.shape[1]
        or B.shape != (delta.shape[0], A.shape[1], delta.shape[2])
    ):
        raise ValueError(f"bad shapes {delta.shape}, {A.shape}, {B.shape}")
    dA = torch.einsum("bdl,dn->bdln", delta, A)
    safe = torch.where(A == 0, torch.ones_like(A), A)
    gain = torch.where(
        (A == 0)[:, None, :], delta.unsqueeze(-1), torch.expm1(dA) / safe[:, None, :]
    )
    return torch.exp(dA), gain * torch.einsum("bnl->bln", B).unsqueeze(1)


def zoh_series_float64(delta, A, B):
    """In float64, with a series for (e^x - 1) / x where |x| is tiny, cast back."""
    if delta.ndim != 3 or A.ndim != 2 or B.ndim != 3:
        raise ValueError(
            f"layouts: delta {tuple(delta.shape)} A {tuple(A.shape)} B {tuple(B.shape)}"
        )
    if A.shape[0] != delta.shape[1] or B.shape != (delta.shape[0], A.shape[1], delta.shape[2]):
        raise ValueError(
            f"sizes disagree: delta {tuple(delta.shape)} A {tuple(A.shape)} B {tuple(B.shape)}"
        )
    step = delta.double().unsqueeze(-1)
    x = step * A.double()[None, :, None, :]
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    phi = torch.where(small, 1 + x / 2 + x * x / 6, torch.expm1(safe) / safe)
    B_bar = step * phi * B.double().permute(0, 2, 1).unsqueeze(1)
    return torch.exp(x).to(delta.dtype), B_bar.to(delta.dtype)


@pytest.mark.parametrize("impl", [zoh_as_einsum, zoh_series_float64])
def test_other_correct_zoh_passes(impl):
    assert report("discretize_zoh", impl).passed


def scan_as_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    if (
        u.ndim != 3
        or u.shape != delta.shape
        or A.ndim != 2
        or A.shape[0] != u.shape[1]
        or B.shape != (u.shape[0], A.shape[1], u.shape[2])
        or C.shape != B.shape
    ):
        raise ValueError(
            f"bad shapes u {u.shape}, delta {delta.shape}, A {A.shape}, B {B.shape}, C {C.shape}"
        )
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        x = (
            torch.exp(delta[:, :, t, None] * A) * x
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, t]))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    return y if z is None else y * F.silu(z)


def scan_by_chunks(solution):
    """The state's recurrence as one linear_recurrence_chunked over (batch, dim, state, L), and
    softplus as a clamped log1p(exp)."""

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        batch, dim, L = u.shape
        if delta.shape != u.shape or A.shape[0] != dim or B.shape != (batch, A.shape[1], L):
            raise ValueError(
                f"bad shapes u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        if C.shape != B.shape:
            raise ValueError(f"C {tuple(C.shape)} must be {tuple(B.shape)}")
        if delta_bias is not None:
            delta = delta + delta_bias.view(1, -1, 1)
        if delta_softplus:
            delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta.clamp(max=20))))
        step = delta.unsqueeze(2)  # (batch, dim, 1, L)
        decay = torch.exp(step * A.view(1, dim, -1, 1))
        x = solution["linear_recurrence_chunked"](decay, step * B.unsqueeze(1) * u.unsqueeze(2), 5)
        y = torch.einsum("bdnl,bnl->bdl", x, C)
        if D is not None:
            y = y + D.view(1, -1, 1) * u
        return y if z is None else y * F.silu(z)

    return selective_scan


@pytest.mark.parametrize("impl", [lambda solution: scan_as_loop, scan_by_chunks])
def test_other_correct_selective_scan_passes(solution, impl):
    assert report("selective_scan", impl(solution)).passed


def test_other_correct_mamba_block_passes(solution):
    """The recorded unusual blocks: dt_proj applied whole (its bias inside, so no delta_bias for
    the scan), and the causal conv as a left pad and F.conv1d with the module's weights."""
    block = edited_solution(
        DAY,
        solution,
        "MambaBlock",
        [
            ("delta = F.linear(dt, self.dt_proj.weight)", "delta = self.dt_proj(dt)"),
            ("delta_bias=self.dt_proj.bias", "delta_bias=None"),
            (
                "u = F.silu(self.conv1d(u)[..., :L])",
                "u = F.silu(F.conv1d(F.pad(u, (self.conv1d.kernel_size[0] - 1, 0)), "
                "self.conv1d.weight, self.conv1d.bias, groups=u.shape[1]))",
            ),
        ],
    )
    assert report("MambaBlock", block).passed
    for seed in range(1, 4):
        assert report("MambaBlock", block, hidden=True, seed=seed).passed


def test_mamba_block_scanning_row_by_row_passes(solution):
    """The conv as a sum of shifted copies with conv1d's weights, and the scan one batch row at a
    time."""
    block = edited_solution(
        DAY,
        solution,
        "MambaBlock",
        [
            (
                "u = F.silu(self.conv1d(u)[..., :L])",
                "w, K = self.conv1d.weight[:, 0, :], self.conv1d.kernel_size[0]\n"
                "        padded = F.pad(u, (K - 1, 0))\n"
                "        u = F.silu(sum(w[:, k, None] * padded[..., k : k + L] for k in range(K))"
                " + self.conv1d.bias[:, None])",
            ),
            (
                "y = selective_scan(u, delta, -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2),\n"
                "                           D=self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True)",
                "B, C = B.transpose(1, 2), C.transpose(1, 2)\n"
                "        y = torch.cat([selective_scan(u[i : i + 1], delta[i : i + 1], -torch.exp(self.A_log), "
                "B[i : i + 1], C[i : i + 1], self.D, z[i : i + 1], self.dt_proj.bias, True) "
                "for i in range(x.shape[0])])",
            ),
        ],
    )
    assert report("MambaBlock", block).passed
    for seed in range(1, 4):
        assert report("MambaBlock", block, hidden=True, seed=seed).passed


# ----------------------------------------------------------------------------- the notebook's promises

# Planted bugs for mistakes the notebook's lists name that the tables above do not plant, each
# named on seed 0 and on hidden seeds: case -> (exercise, edits). Some are recurrence mistakes
# planted again in the chunked and Triton scans, whose lists promise "the recurrence mistakes
# above" too.
PROMISED_BUGS = {
    "shifted_left (sequential)": (
        "linear_recurrence_sequential",
        [("    return h\n", "    return torch.cat([h[..., 1:], h[..., -1:]], -1)\n")],
    ),
    # every row scanned as the continuation of the one before it
    "state_not_reset (parallel)": (
        "linear_recurrence_parallel",
        [
            ("    A, H = a, b\n", "    A, H = a.reshape(-1), b.reshape(-1)\n"),
            ("    return H\n", "    return H.reshape(b.shape)\n"),
        ],
    ),
    "no_error_for_bad_input (parallel)": (
        "linear_recurrence_parallel",
        [("if a.shape != b.shape or a.ndim == 0:", "if False:")],
    ),
    # the next chunk entered with h_end + P_end * carry, where h_end already holds the carry
    "carry_added_twice": (
        "linear_recurrence_chunked",
        [
            (
                "parallel(decay[..., -1], local[..., -1])",
                "parallel(2 * decay[..., -1], local[..., -1])",
            )
        ],
    ),
    "exclusive_scan (chunked)": (
        "linear_recurrence_chunked",
        [
            (
                "    return h.flatten(-2)[..., :L]\n",
                "    return F.pad(h.flatten(-2)[..., : L - 1], (1, 0))\n",
            )
        ],
    ),
    "decay_after_write (chunked)": (
        "linear_recurrence_chunked",
        [("b_c = F.pad(b, (0, pad)", "b_c = F.pad(a * b, (0, pad)")],
    ),
    "reversed_time (chunked)": (
        "linear_recurrence_chunked",
        [
            ("    L = b.shape[-1]\n", "    a, b = a.flip(-1), b.flip(-1)\n    L = b.shape[-1]\n"),
            ("    return h.flatten(-2)[..., :L]\n", "    return h.flatten(-2)[..., :L].flip(-1)\n"),
        ],
    ),
    "state_not_reset (chunked)": (
        "linear_recurrence_chunked",
        [
            (
                "    L = b.shape[-1]\n",
                "    shape = b.shape\n    a, b = a.reshape(-1), b.reshape(-1)\n    L = b.shape[-1]\n",
            ),
            (
                "    return h.flatten(-2)[..., :L]\n",
                "    return h.flatten(-2)[..., :L].reshape(shape)\n",
            ),
        ],
    ),
    "no_error_for_bad_input (chunked)": (
        "linear_recurrence_chunked",
        [("if a.shape != b.shape or a.ndim == 0:", "if False:")],
    ),
    "no_error_for_bad_input (triton)": (
        "linear_recurrence_triton",
        [("if a.shape != b.shape or a.ndim == 0:", "if False:")],
    ),
    # all the rows as one row
    "state_not_reset (triton)": (
        "linear_recurrence_triton",
        [("    L = b.shape[-1]\n", "    L = b.numel()\n")],
    ),
    "exclusive_scan (triton)": (
        "linear_recurrence_triton",
        [
            (
                "    return h.reshape(b.shape)\n",
                "    return F.pad(h[..., :-1], (1, 0)).reshape(b.shape)\n",
            )
        ],
    ),
    "bias_ignored": (
        "selective_scan",
        [("    if delta_bias is not None:\n        delta = delta + delta_bias[:, None]\n", "")],
    ),
    "d_after_gate": (
        "selective_scan",
        [
            ("    if D is not None:\n        y = y + D[:, None] * u\n", ""),
            (
                "        y = y * F.silu(z)\n",
                "        y = y * F.silu(z)\n    if D is not None:\n        y = y + D[:, None] * u\n",
            ),
        ],
    ),
    "gate_ignored (selective_scan)": (
        "selective_scan",
        [("    if z is not None:\n        y = y * F.silu(z)\n", "")],
    ),
    "softplus_missing (MambaBlock)": (
        "MambaBlock",
        [
            (
                "delta_bias=self.dt_proj.bias, delta_softplus=True",
                "delta_bias=self.dt_proj.bias, delta_softplus=False",
            )
        ],
    ),
    "missing_d (MambaBlock)": ("MambaBlock", [("D=self.D, z=z,", "D=None, z=z,")]),
}


@pytest.mark.parametrize("case", PROMISED_BUGS)
def test_promised_planted_bugs_are_named(solution, case, capsys):
    name, edits = PROMISED_BUGS[case]
    bug = edited_solution(DAY, solution, name, edits)
    assert_named_on_seeds(DAY, name, bug, case.split()[0], capsys, range(1, 4))


# The keys of the planted bugs tested one by one above, outside the tables.
SINGLE_PLANTED = {
    "linear_recurrence_sequential": {"state_not_reset"},  # flat_state
    "selective_scan": {"b_c_swapped", "state_not_reset"},  # scan_without_reset
    "MambaBlock": {"not_causal", "scan_b_c_layout"},  # lookahead, "same" padding; unchecked scan
}
BUG_TABLES = {
    "linear_recurrence_sequential": SEQUENTIAL_BUGS,
    "linear_recurrence_parallel": PARALLEL_BUGS,
    "linear_recurrence_chunked": CHUNKED_BUGS,
    "linear_recurrence_triton": TRITON_BUGS,
    "discretize_zoh": ZOH_BUGS,
    "selective_scan": SCAN_BUGS,
    "MambaBlock": MAMBA_BUGS,
}


def keys_planted(name: str) -> set:
    """The mistake keys the planted-bug tests of this file expect exercise `name` to name."""
    keys = {case.split()[0] for case in BUG_TABLES[name]} | SINGLE_PLANTED.get(name, set())
    if name in IN_PLACE_WRITES:
        keys.add("modified_input")
    for tables in (NAMED_CRASHES, PROMISED_BUGS):
        keys |= {case.split()[0] for case, (cell, *_) in tables.items() if cell == name}
    return keys


# Each exercise's "Mistakes the checks recognise" list in the notebook (just before its check
# cell), phrase by phrase, and the key (or keys) a planted bug above is named under. "The
# (general) recurrence mistakes above" of the chunked and Triton scans stand for the recurrence
# mistakes planted in them again.
PROMISES = {
    "linear_recurrence_sequential": {
        "h shifted by one (an exclusive scan: 0 first": "exclusive_scan",
        "or h_{t+1} at t)": "shifted_left",
        "`h_t = a_t * (h_{t-1} + b_t)`: the input decayed with the old state": "decay_after_write",
        "the recurrence run backwards in time": "reversed_time",
        "the last step never computed (a loop over `range(L - 1)`)": "last_step_skipped",
        "a closed form that divides by the running product of $a$": "divides_by_running_product",
        "time indexed as dim 1 (`a[:, t]`)": "scan_along_dim_1",
        "the state carried from one batch row into the next": "state_not_reset",
        "the scan run along the first axis instead of the last": "scan_along_first_axis",
        "each step decayed by the previous step's $a_{t-1}$": "decay_shifted",
        "a state started at 1": "initial_state_one",
        "$a$ and $b$ swapped": "a_b_swapped",
        "an input changed in place": "modified_input",
        "mismatched shapes or 0-d tensors accepted without a ValueError": "no_error_for_bad_input",
    },
    "linear_recurrence_parallel": {
        "the combine applied in the wrong order (`a_left * H + H_left`)": "combine_wrong_order",
        "an exclusive scan (shifted by one)": "exclusive_scan",
        "`excl + b` instead of `a * excl + b`": "exclusive_plus_b",
        "a Python loop over time": "sequential_loop",
        "doubling steps (one too few when $L$ is not a power of two)": "missing_last_step",
        "that do not double": "offsets_not_doubled",
        "the decays `A` never composed": "decays_not_composed",
        "or updated before `H` reads them": "decays_updated_before_h",
        "the shift made with `torch.roll`": "shift_wraps_around",
        "the state carried across batch rows": "state_not_reset",
        "an input changed in place": "modified_input",
        "mismatched shapes accepted": "no_error_for_bad_input",
    },
    "linear_recurrence_chunked": {
        "each chunk scanned from zero (no carry)": "no_carry",
        "the carry added without the decay P_t": "carry_not_decayed",
        "with a P_t that leaves out $a_t$": "decay_without_a_t",
        "the state entering the next chunk taken from the local scan": "carry_from_local_end",
        "or with the carry added twice": "carry_added_twice",
        "each chunk corrected by its own end state instead of the one entering it": (
            "carry_not_shifted"
        ),
        "the ends summed without their decays": "ends_summed",
        "or decayed by $P_0$ instead of": "carry_decayed_by_first_a",
        "from one cumprod over the whole row": "decay_over_whole_row",
        "the chunks cut as `(chunk_size, n)` and transposed": "chunks_strided",
        "the padding put at the front": "front_padding",
        "the last, shorter chunk dropped when L is not a multiple of chunk_size": (
            "drops_last_chunk"
        ),
        "the general recurrence mistakes above": (
            "exclusive_scan",
            "decay_after_write",
            "reversed_time",
            "state_not_reset",
            "modified_input",
            "no_error_for_bad_input",
        ),
        "chunk_size < 1 accepted without a ValueError": "no_error_for_bad_chunk_size",
    },
    "linear_recurrence_triton": {
        "`scan_combine` with its operands swapped (the later block applied first)": (
            "combine_wrong_order"
        ),
        "its first field not `a_left * a_right`": "combine_a_not_composed",
        "the earlier block's `b` decayed by its own `a`": "combine_decays_own_b",
        "the scan's first field (the products of $a$) stored instead of $h$": (
            "scan_product_stored"
        ),
        "a load or store outside the tensors (an unmasked store)": "out_of_bounds",
        "rows stepped at `row * BLOCK` (the padded block) instead of `row * L`": (
            "row_stride_block"
        ),
        "a grid of fewer or more programs than rows": ("rows_not_launched", "grid_from_first_dim"),
        "a block size that is not a power of two": "block_not_power_of_two",
        "`tl.associative_scan` along an axis other than 0": "scan_axis_not_0",
        "strided inputs read as if they were contiguous": "strided_as_contiguous",
        "the recurrence mistakes above": ("exclusive_scan", "state_not_reset"),
        "mismatched shapes accepted": "no_error_for_bad_input",
    },
    "discretize_zoh": {
        "Euler for A (`1 + delta*A`) instead of `exp(delta*A)`": "euler_a",
        "`delta*B` (Mamba's simplification) where the exact hold is asked": "simplified_b",
        "`(exp(delta*A) - 1) * B` without `/ A`": "b_not_divided",
        "`exp(delta*A) / A * B` without the `- 1`": "missing_minus_one",
        "`torch.exp(dA) - 1` instead of `torch.expm1(dA)`": "exp_minus_one",
        "`A_bar = exp(A)` without `delta`": "a_bar_without_delta",
        "NaN where A = 0": "zero_a_nan",
        "or `B` or 0 there instead of the limit `delta * B`": ("zero_a_limit_b", "zero_a_zeroed"),
        "an extra factor `delta` on top of the exact hold": "b_delta_twice",
        "`B` reshaped to (batch, L, state) instead of transposed": "b_reshaped",
        "the pair returned as `(B_bar, A_bar)`": "pair_swapped",
        "`A` changed in place (to avoid the division by 0)": "modified_input",
        "wrong layouts accepted without a ValueError": "no_error_for_bad_layout",
        "`B` (batch, state, L) used without moving L next to `delta`'s L": "l_state_crossed",
        "or `A` broadcast with its dim against L": "per_channel_along_l",
    },
    "selective_scan": {
        "softplus applied twice": "softplus_twice",
        "not at all when `delta_softplus=True`": "softplus_missing",
        "or when it is False": "softplus_ignores_flag",
        "the bias added after the softplus": "bias_after_softplus",
        "after the softplus, or ignored": "bias_ignored",
        "the `D * u` skip term missing": "missing_d",
        "or added after the gate": "d_after_gate",
        "the gate as `z` or `sigmoid(z)` instead of `silu(z)`": (
            "gate_without_silu",
            "gate_sigmoid",
        ),
        "`silu(z)`, or ignored": "gate_ignored",
        "Euler for A (`1 + delta*A`)": "euler_a",
        "where the reference uses `delta*B`": "zoh_b_in_scan",
        "$y_t$ read out before step $t$'s update": "readout_before_update",
        "`B` and `C` swapped": "b_c_swapped",
        "`u` or `delta` left out of the input term": ("u_missing", "b_without_delta"),
        "the state carried from one batch row into the next": "state_not_reset",
        "wrong layouts accepted": "no_error_for_bad_layout",
        "an input changed in place (`delta += ...`)": "modified_input",
        "`B` or `C` given their new axis in the wrong place": "dim_state_crossed",
        "a per-channel vector (`delta_bias`, `D`) added along L instead of along dim": (
            "per_channel_along_l"
        ),
        "`if D:` on a tensor": "tensor_truth_value",
    },
    "MambaBlock": {
        "parameters with other names or shapes than `mamba_ssm.Mamba`'s": "wrong_parameters",
        "a convolution that looks ahead (the last L outputs kept instead of the first L)": (
            "conv_not_causal"
        ),
        "or no SiLU after it": "no_conv_silu",
        "A = exp(A_log) (positive: a state that blows up) instead of -exp(A_log)": "a_positive",
        "no softplus on Δ": "softplus_missing",
        "no gate": "gate_ignored",
        "no D;": "missing_d",
        "an output that depends on later inputs": "not_causal",
        "a wrong feature size accepted": "no_error_for_bad_features",
        "`u` and `z` swapped": "u_z_swapped",
        "`x_proj`'s output split in another order": "x_proj_split_order",
        "`dt_proj`'s bias added twice": "dt_bias_twice",
        "a fresh block not initialised as `mamba_ssm`'s (`A_log`, `D`)": (
            "not_initialised_as_mamba"
        ),
        "the conv given (batch, L, channels) instead of (batch, channels, L)": "conv_input_layout",
        "or `in_proj`'s output split along L": "in_proj_split_along_l",
        "`B` and `C` passed to the scan as (batch, L, state) instead of (batch, state, L)": (
            "scan_b_c_layout"
        ),
        "or reshaped to it instead of transposed": "b_c_reshaped",
        "`x_proj` fed `u` from before the convolution": "x_proj_before_conv",
        "`z` put through SiLU before the scan (which applies it again)": "gate_silu_twice",
    },
}


@pytest.mark.parametrize("name, phrase", promised(PROMISES))
def test_the_notebook_lists_only_mistakes_the_checks_name(name, phrase):
    assert_promise_kept(DAY, PROMISES, name, phrase, keys_planted(name))
