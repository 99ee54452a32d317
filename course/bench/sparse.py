"""Sliding-window attention against dense masked attention: peak memory and time.

    python -m course.bench.sparse                      # L = 1k .. 16k, window 256, CPU
    python -m course.bench.sparse --plot sparse.png    # and save the log-log plot

Dense masked attention is the course's library attention (course.reference.masks.attention) under
sliding_window_mask(L, window): it builds the mask, the (L, L) scores and the (L, L) weights.
The sliding version is course.reference.sparse.sliding_window_attention, which works tile by tile. Both
include building whatever mask they need. The targets (from the day05 issue) are checked and
reported as PASS or FAIL: at the longest L the sliding version's peak memory is at most a tenth
of the dense one's, and its time grows linearly, t(16k) / t(4k) <= 5.
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
from course.reference.sparse import sliding_window_attention, sliding_window_mask

MEMORY_TARGET = 0.1  # sliding peak / dense peak at the longest L
TIME_TARGET = 5.0  # t(longest) / t(longest / 4) for the sliding version
DENSE, SLIDING = "dense masked", "sliding window"


def dense_masked(q, k, v, window: int) -> torch.Tensor:
    mask = sliding_window_mask(q.shape[-2], window, device=q.device)
    return attention(q, k, v, mask)[0]


def measure(lengths, window: int, heads: int, head_dim: int, repeats: int, device) -> list:
    """A Measurement (time and peak memory) per mechanism and L.

    Every sliding-window point is measured before any dense one: after dense attention has freed
    its gigabytes, the next allocations fault in fresh pages, and the small, fast sliding version
    would be charged for that noise.
    """
    inputs = {
        L: [torch.randn(1, heads, L, head_dim, device=device) for _ in range(3)] for L in lengths
    }
    return [
        Measurement(
            topic="sparse",
            mechanism=mechanism,
            L=L,
            seconds=median_time(fn, *inputs[L], window, repeats=repeats),
            peak_bytes=peak_memory(fn, *inputs[L], window),
            heads=heads,
            head_dim=head_dim,
            device=device.type,
            note=f"window {window}",
        )
        for mechanism, fn in [(SLIDING, sliding_window_attention), (DENSE, dense_masked)]
        for L in lengths
    ]


def table(rows) -> str:
    point = by_point(rows)
    lines = [
        f"{'L':>6} {'time dense':>11} {'time sliding':>13} {'peak dense':>11} "
        f"{'peak sliding':>13} {'ratio':>7}",
        f"{'':>6} {'(ms)':>11} {'(ms)':>13} {'(MiB)':>11} {'(MiB)':>13} {'':>7}",
    ]
    for L in sorted({row.L for row in rows}):
        dense, sliding = point[DENSE, L], point[SLIDING, L]
        lines.append(
            f"{L:>6} {1e3 * dense.seconds:>11.1f} {1e3 * sliding.seconds:>13.1f} "
            f"{dense.peak_bytes / 2**20:>11.1f} {sliding.peak_bytes / 2**20:>13.1f} "
            f"{sliding.peak_bytes / dense.peak_bytes:>7.3f}"
        )
    return "\n".join(lines)


def verdicts(rows) -> list:
    """A Verdict for each target that these lengths can judge."""
    point = by_point(rows)
    longest = max(row.L for row in rows)
    ratio = point[SLIDING, longest].peak_bytes / point[DENSE, longest].peak_bytes
    out = [
        Verdict(
            ratio <= MEMORY_TARGET,
            f"memory at L = {longest}: sliding / dense = {ratio:.3f} (target <= {MEMORY_TARGET})",
        )
    ]
    quarter = point.get((SLIDING, longest // 4))
    if quarter is not None:
        growth = point[SLIDING, longest].seconds / quarter.seconds
        out.append(
            Verdict(
                growth <= TIME_TARGET,
                f"time growth of sliding, t({longest}) / t({quarter.L}) = {growth:.2f} "
                f"(target <= {TIME_TARGET:g}, linear is 4)",
            )
        )
    return out


def save_plot(rows, path, window: int, device) -> None:
    lengths = sorted({row.L for row in rows})
    with saved_figure(path, figsize=(10, 3.8)) as figure:
        for ax, (quantity, scale, title) in zip(
            figure.subplots(1, 2),
            [("seconds", 1e3, "time (ms)"), ("peak_bytes", 2**-20, "peak memory (MiB)")],
        ):
            y = plot_by_mechanism(ax, rows, quantity, scale)
            scaling_guides(ax, lengths, quadratic_from=y[DENSE][0], linear_from=y[SLIDING][0])
            label_lengths_axis(ax, lengths, title=f"{title}, window {window}, {device.type}")


def run(
    lengths=(1024, 2048, 4096, 8192, 16384),
    window: int = 256,
    heads: int = 1,
    head_dim: int = 64,
    repeats: int = 5,
    device="cpu",
    plot=None,
) -> Result:
    """Measure, print the table and the verdicts, and save the plot to the file `plot` if given."""
    device = torch.device(device)
    torch.manual_seed(0)
    print(
        f"sliding window {window} vs dense masked attention: batch 1, {heads} head(s), "
        f"head_dim {head_dim}, float32, {device.type}, {torch.get_num_threads()} threads"
    )
    rows = measure(sorted(set(lengths)), window, heads, head_dim, repeats, device)
    draw = functools.partial(save_plot, window=window, device=device)
    return report(rows, verdicts(rows), table(rows), plot, draw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench.sparse",
        description="Peak memory and time of sliding-window attention against dense masked "
        "attention, with PASS/FAIL for the day05 targets (memory ratio <= 0.1 at the "
        "longest L; sliding time t(L) / t(L/4) <= 5).",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096, 8192, 16384],
        help="sequence lengths (default: 1024 2048 4096 8192 16384)",
    )
    parser.add_argument("--window", type=int, default=256, help="window size (default: 256)")
    parser.add_argument("--heads", type=int, default=1, help="attention heads (default: 1)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (default: 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--plot", metavar="FILE", help="save the log-log plot to FILE (e.g. sparse.png)"
    )
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.window < 1 or args.repeats < 1:
        parser.error("lengths, --window and --repeats must be >= 1")
    return run(
        args.lengths, args.window, args.heads, args.head_dim, args.repeats, args.device, args.plot
    ).status


if __name__ == "__main__":
    sys.exit(main())
