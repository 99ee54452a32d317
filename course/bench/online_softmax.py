"""Tiled (online-softmax) attention against naive attention: peak memory, time, correctness.

    python -m course.bench.online_softmax                     # L = 1k .. 4k, CPU
    python -m course.bench.online_softmax --plot tiled.png    # and save the log-log plot

Naive attention is the course's library attention (course.reference.masks.attention): it holds the
(L, L) scores and weights. Tiled is course.reference.online_softmax.tiled_attention with fixed tiles: one
(block, block) tile of scores at a time, so beyond the output it returns its memory does not
grow with L. The day06 targets are checked and reported as PASS or FAIL: at L = 4096 (or the
longest L measured) the tiled peak memory is at most a quarter of the naive one; and at small
sizes tiled_attention and flash_attention_torch (forward and backward, causal or not) agree with
float64 naive attention and its autograd.
"""

import argparse
import functools
import sys

import torch

from course.bench import (
    Measurement,
    Result,
    Verdict,
    by_point,
    label_lengths_axis,
    median_time,
    peak_memory,
    plot_by_mechanism,
    report,
    saved_figure,
    scaling_guides,
)
from course.reference.masks import attention
from course.reference.online_softmax import flash_attention_torch, tiled_attention

MEMORY_TARGET = 0.25  # tiled peak / naive peak at L = 4096
TARGET_LENGTH = 4096
ERROR_TARGET = 1e-10  # float64 max abs error against the naive float64 reference
NAIVE, TILED = "naive", "tiled"


def naive(q, k, v):
    return attention(q, k, v)[0]


def measure(lengths, heads: int, head_dim: int, block: int, repeats: int, device) -> list:
    """A Measurement (time and peak memory) per mechanism and L. Every tiled point is measured
    before any naive one (see course.bench.sparse)."""
    inputs = {
        L: [torch.randn(1, heads, L, head_dim, device=device) for _ in range(3)] for L in lengths
    }

    def tiled(q, k, v):
        return tiled_attention(q, k, v, block_q=block, block_k=block)[0]

    return [
        Measurement(
            topic="online_softmax",
            mechanism=mechanism,
            L=L,
            seconds=median_time(fn, *inputs[L], repeats=repeats),
            peak_bytes=peak_memory(fn, *inputs[L]),
            heads=heads,
            head_dim=head_dim,
            device=device.type,
            note=f"{block} x {block} tiles" if fn is tiled else "",
        )
        for mechanism, fn in [(TILED, tiled), (NAIVE, naive)]
        for L in lengths
    ]


def correctness(device) -> list:
    """(what, max abs error) of tiled forward and flash backward against float64 naive attention,
    ragged tiles, Lq != Lk, causal or not (bottom-right)."""
    g = torch.Generator().manual_seed(0)
    results = []
    for Lq, Lk in [(100, 100), (37, 90), (90, 37)]:
        q, k, v = (
            torch.randn(2, 3, L, 16, generator=g, dtype=torch.float64).to(device)
            for L in (Lq, Lk, Lk)
        )
        d_out = torch.randn(2, 3, Lq, 16, generator=g, dtype=torch.float64).to(device)
        for causal in (False, True):
            mask = None
            if causal:
                mask = (
                    torch.arange(Lk, device=device)
                    <= torch.arange(Lq, device=device)[:, None] + Lk - Lq
                )
            out, _ = tiled_attention(q, k, v, block_q=16, block_k=24, causal=causal)
            ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            ref = attention(*ref_leaves, mask)[0]
            ref.backward(d_out)
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            flash_attention_torch(*leaves, causal, 16, 24).backward(d_out)
            error = max(
                [(out - ref).abs().max().item()]
                + [(a.grad - b.grad).abs().max().item() for a, b in zip(leaves, ref_leaves)]
            )
            results.append((f"Lq={Lq}, Lk={Lk}, causal={causal}", error))
    return results


def table(rows) -> str:
    point = by_point(rows)
    lines = [
        f"{'L':>6} {'time naive':>11} {'time tiled':>11} {'peak naive':>11} {'peak tiled':>11} {'ratio':>7}",
        f"{'':>6} {'(ms)':>11} {'(ms)':>11} {'(MiB)':>11} {'(MiB)':>11} {'':>7}",
    ]
    for L in sorted({row.L for row in rows}):
        naive, tiled = point[NAIVE, L], point[TILED, L]
        lines.append(
            f"{L:>6} {1e3 * naive.seconds:>11.1f} {1e3 * tiled.seconds:>11.1f} "
            f"{naive.peak_bytes / 2**20:>11.2f} {tiled.peak_bytes / 2**20:>11.2f} "
            f"{tiled.peak_bytes / naive.peak_bytes:>7.3f}"
        )
    return "\n".join(lines)


def verdicts(rows, errors) -> list:
    point = by_point(rows)
    lengths = {row.L for row in rows}
    judged = TARGET_LENGTH if TARGET_LENGTH in lengths else max(lengths)
    ratio = point[TILED, judged].peak_bytes / point[NAIVE, judged].peak_bytes
    worst, worst_error = max(errors, key=lambda e: e[1])
    return [
        Verdict(
            ratio <= MEMORY_TARGET,
            f"memory at L = {judged}: tiled / naive = {ratio:.3f} (target <= {MEMORY_TARGET})",
        ),
        Verdict(
            worst_error <= ERROR_TARGET,
            f"correctness (float64, forward and gradients, {len(errors)} cases): max abs error "
            f"{worst_error:.1e} at {worst} (target <= {ERROR_TARGET:.0e})",
        ),
    ]


def save_plot(rows, path, block: int, device) -> None:
    lengths = sorted({row.L for row in rows})
    with saved_figure(path, figsize=(6, 3.8)) as figure:
        ax = figure.subplots()
        y = plot_by_mechanism(ax, rows, "peak_bytes", 2**-20)
        scaling_guides(ax, lengths, quadratic_from=y[NAIVE][0], linear_from=y[TILED][0])
        label_lengths_axis(ax, lengths, title=f"peak memory (MiB), {device.type}")


def run(
    lengths=(1024, 2048, 4096),
    heads: int = 1,
    head_dim: int = 64,
    block: int = 128,
    repeats: int = 3,
    device="cpu",
    plot=None,
) -> Result:
    """Measure, check correctness, print the table and the verdicts, and save the plot to the
    file `plot` if given."""
    device = torch.device(device)
    torch.manual_seed(0)
    print(
        f"tiled ({block} x {block}) vs naive attention: batch 1, {heads} head(s), "
        f"head_dim {head_dim}, float32, {device.type}, {torch.get_num_threads()} threads"
    )
    rows = measure(sorted(set(lengths)), heads, head_dim, block, repeats, device)
    draw = functools.partial(save_plot, block=block, device=device)
    return report(rows, verdicts(rows, correctness(device)), table(rows), plot, draw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench.online_softmax",
        description="Peak memory and time of tiled (online-softmax) attention against naive "
        "attention, with PASS/FAIL for the day06 targets (tiled peak memory <= a "
        "quarter of naive at L = 4096; float64 forward and gradients match naive "
        "attention at small sizes).",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096],
        help="sequence lengths (default: 1024 2048 4096)",
    )
    parser.add_argument("--heads", type=int, default=1, help="attention heads (default: 1)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension (default: 64)")
    parser.add_argument(
        "--block", type=int, default=128, help="tile size block_q = block_k (default: 128)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (default: 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--plot", metavar="FILE", help="save the log-log plot to FILE (e.g. tiled.png)"
    )
    args = parser.parse_args(argv)
    if (
        min(args.lengths) < 1
        or args.heads < 1
        or args.head_dim < 1
        or args.block < 1
        or args.repeats < 1
    ):
        parser.error("lengths, --heads, --head-dim, --block and --repeats must be >= 1")
    return run(
        args.lengths, args.heads, args.head_dim, args.block, args.repeats, args.device, args.plot
    ).status


if __name__ == "__main__":
    sys.exit(main())
