"""Checks for day09-mamba-scan: linear recurrences four ways, ZOH discretisation, the selective
scan of mamba_ssm's selective_scan_ref, and a Mamba block.

Oracles: float64 Python loops over time (the recurrence, and the reference selective scan written
as the loop of selective_scan_ref), and torch built-ins (exp, expm1, softplus, silu, conv1d) for
the discretisation and the block. Each named mistake is the same oracle with one thing changed
(the combine applied in the wrong order, the scan shifted by one, Euler instead of ZOH, softplus
twice or not at all, no D term, the state carried from one batch row into the next, ...).
A layout slip often crashes before there is a result to compare: no two sizes of a draw are
alike, so the sizes in torch's error say which axes met, and the crash is named (B used in its
(batch, state, L) layout, a (dim,) vector broadcast along L, u fed to the conv as (batch, L,
d_inner), ...).
The parallel scan must take O(log L) vectorised steps: the Python lines it runs may not grow
with L. A row with an a_t = 0 and a long row of slow decays catch a closed form that divides by
the running product of a (exact only in exact arithmetic: it turns NaN). The recurrences, the
discretisation and the selective scan must leave their inputs as they were, checked before any
oracle reads them. The Triton scan's launches are watched (grader/harness/triton_watch): a load
or store outside the tensors is named, not a crash, and its scans combine in a tree as on a GPU,
so a scan_combine that is not associative fails in the interpreter too.

One module per exercise group, in the notebook's order: recurrence (the four
linear_recurrence_* exercises), discretisation (discretize_zoh), selective_scan, mamba_block
(MambaBlock); `hints` holds HINTS and FORBIDDEN.
"""

import torch

from grader.suites import Exercise
from grader.suites.day09_mamba_scan.discretisation import (
    zoh_large_steps,
    zoh_matches,
    zoh_rejects_bad_layout,
    zoh_zero_a,
)
from grader.suites.day09_mamba_scan.hints import FORBIDDEN, HINTS
from grader.suites.day09_mamba_scan.mamba_block import (
    mamba_causal,
    mamba_defaults,
    mamba_initialised,
    mamba_matches,
    mamba_rejects_bad_input,
)
from grader.suites.day09_mamba_scan.recurrence import (
    call_triton,
    chunk_suspects,
    chunked_rejects_bad_chunk,
    chunked_sizes,
    make_recurrence_checks,
    parallel_log_steps,
    parallel_suspects,
    triton_strided_inputs,
    triton_suspects,
)
from grader.suites.day09_mamba_scan.selective_scan import (
    scan_full,
    scan_large_steps,
    scan_options,
    scan_rejects_bad_layout,
    scan_rows_independent,
)


def _call2(impl, a, b):
    return impl(a, b)


def _call_chunked(impl, a, b):
    return impl(a, b, 4)


EXERCISES = {
    "linear_recurrence_sequential": Exercise(
        checks=make_recurrence_checks("linear_recurrence_sequential", _call2), forbidden=FORBIDDEN
    ),
    "linear_recurrence_parallel": Exercise(
        checks=make_recurrence_checks(
            "linear_recurrence_parallel", _call2, suspects=parallel_suspects
        )
        + [parallel_log_steps],
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
            "linear_recurrence_triton",
            call_triton,
            dtypes=(torch.float32,),
            max_len=40,
            long_len=None,  # the interpreter scans slowly; no closed form to catch in a kernel
            suspects=triton_suspects,
        )
        + [triton_strided_inputs],
        forbidden=FORBIDDEN,
    ),
    "discretize_zoh": Exercise(
        checks=[zoh_matches, zoh_large_steps, zoh_zero_a, zoh_rejects_bad_layout],
        forbidden=FORBIDDEN,
    ),
    "selective_scan": Exercise(
        checks=[
            scan_full,
            scan_options,
            scan_large_steps,
            scan_rows_independent,
            scan_rejects_bad_layout,
        ],
        forbidden=FORBIDDEN,
    ),
    "MambaBlock": Exercise(
        checks=[
            mamba_matches,
            mamba_defaults,
            mamba_initialised,
            mamba_causal,
            mamba_rejects_bad_input,
        ],
        forbidden=FORBIDDEN,
    ),
}

__all__ = ["EXERCISES", "HINTS"]
