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
import sys

import torch

from course.bench import (
    label_lengths_axis,
    median_time,
    peak_memory,
    print_verdicts,
    saved_figure,
    scaling_guides,
)
from course.reference.masks import attention
from course.reference.sparse import sliding_window_attention, sliding_window_mask

MEMORY_TARGET = 0.1  # sliding peak / dense peak at the longest L
TIME_TARGET = 5.0  # t(longest) / t(longest / 4) for the sliding version


def dense_masked(q, k, v, window: int) -> torch.Tensor:
    mask = sliding_window_mask(q.shape[-2], window, device=q.device)
    return attention(q, k, v, mask)[0]


def measure(lengths, window: int, heads: int, head_dim: int, repeats: int, device) -> list:
    """One row per L: (L, time dense, time sliding, peak dense, peak sliding), seconds and bytes.

    Every sliding-window point is measured before any dense one: after dense attention has freed
    its gigabytes, the next allocations fault in fresh pages, and the small, fast sliding version
    would be charged for that noise.
    """
    inputs = {
        L: [torch.randn(1, heads, L, head_dim, device=device) for _ in range(3)] for L in lengths
    }
    sliding = {
        L: (
            median_time(sliding_window_attention, *inputs[L], window, repeats=repeats),
            peak_memory(sliding_window_attention, *inputs[L], window),
        )
        for L in lengths
    }
    dense = {
        L: (
            median_time(dense_masked, *inputs[L], window, repeats=repeats),
            peak_memory(dense_masked, *inputs[L], window),
        )
        for L in lengths
    }
    return [(L, dense[L][0], sliding[L][0], dense[L][1], sliding[L][1]) for L in lengths]


def table(rows) -> str:
    lines = [
        f"{'L':>6} {'time dense':>11} {'time sliding':>13} {'peak dense':>11} "
        f"{'peak sliding':>13} {'ratio':>7}",
        f"{'':>6} {'(ms)':>11} {'(ms)':>13} {'(MiB)':>11} {'(MiB)':>13} {'':>7}",
    ]
    for L, t_dense, t_sliding, m_dense, m_sliding in rows:
        lines.append(
            f"{L:>6} {1e3 * t_dense:>11.1f} {1e3 * t_sliding:>13.1f} {m_dense / 2**20:>11.1f} "
            f"{m_sliding / 2**20:>13.1f} {m_sliding / m_dense:>7.3f}"
        )
    return "\n".join(lines)


def verdicts(rows) -> list:
    """(passed, line) for each target that these lengths can judge."""
    by_length = {row[0]: row for row in rows}
    longest = by_length[max(by_length)]
    out = []
    ratio = longest[4] / longest[3]
    out.append(
        (
            ratio <= MEMORY_TARGET,
            f"memory at L = {longest[0]}: sliding / dense = {ratio:.3f} (target <= {MEMORY_TARGET})",
        )
    )
    quarter = by_length.get(longest[0] // 4)
    if quarter is not None:
        growth = longest[2] / quarter[2]
        out.append(
            (
                growth <= TIME_TARGET,
                f"time growth of sliding, t({longest[0]}) / t({quarter[0]}) = {growth:.2f} "
                f"(target <= {TIME_TARGET:g}, linear is 4)",
            )
        )
    return out


def plot(rows, path: str, window: int, device) -> None:

    lengths = [row[0] for row in rows]
    with saved_figure(path, figsize=(10, 3.8)) as figure:
        for ax, (dense, sliding), scale, title in zip(
            figure.subplots(1, 2),
            [(1, 2), (3, 4)],
            [1e3, 2**-20],
            ["time (ms)", "peak memory (MiB)"],
        ):
            dense_y = [row[dense] * scale for row in rows]
            sliding_y = [row[sliding] * scale for row in rows]
            ax.loglog(lengths, dense_y, "o-", label="dense masked")
            ax.loglog(lengths, sliding_y, "o-", label="sliding window")
            scaling_guides(ax, lengths, quadratic_from=dense_y[0], linear_from=sliding_y[0])
            label_lengths_axis(ax, lengths, title=f"{title}, window {window}, {device.type}")


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
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"sliding window {args.window} vs dense masked attention: batch 1, {args.heads} head(s), "
        f"head_dim {args.head_dim}, float32, {device.type}, {torch.get_num_threads()} threads"
    )
    rows = measure(
        sorted(set(args.lengths)), args.window, args.heads, args.head_dim, args.repeats, device
    )
    print(table(rows))
    status = print_verdicts(verdicts(rows))
    if args.plot:
        plot(rows, args.plot, args.window, device)
        print(f"plot saved to {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
