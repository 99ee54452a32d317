"""Causal linear attention: chunked vs recurrent vs the masked quadratic form, on the CPU.

    python -m course.bench.linear_attention                      # L = 1k .. 16k
    python -m course.bench.linear_attention --plot linear.png    # and save the log-log plot

The three forms are course.reference.linear_attention's causal_linear_attention_chunked (chunk 64),
causal_linear_attention_recurrent (a Python loop, one state update per token) and
quadratic_linear_attention(causal=True). The recurrent loop is timed on its first
--recurrent-steps tokens (default 2048) and its per-step cost extrapolated to L (the table marks
those rows with '*'): its cost per step does not depend on L. The targets (from the day08
issue) are checked and reported as PASS or FAIL: the chunked form is at least 10x faster than
the recurrent loop at L = 4096, and its time grows linearly, t(16k) / t(2k) <= 10.
"""

import argparse
import sys
import time

import torch

from course.bench import (
    label_lengths_axis,
    median_time,
    print_verdicts,
    saved_figure,
    scaling_guides,
)
from course.reference.linear_attention import (
    causal_linear_attention_chunked,
    causal_linear_attention_recurrent,
    quadratic_linear_attention,
)

SPEEDUP_TARGET = 10.0  # recurrent / chunked at L = 4096
GROWTH_TARGET = 10.0  # chunked t(16k) / t(2k); linear is 8


def best_time(fn, *args, repeats: int, **kwargs) -> float:
    """The fastest of `repeats` runs after one warm-up, in seconds: on a shared machine the
    other jobs only ever add time, so the minimum is the least noisy estimate."""
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    lengths,
    heads: int,
    head_dim: int,
    chunk_size: int,
    repeats: int,
    recurrent_steps: int,
    quadratic_max: int,
) -> list:
    """One row per L: (L, chunked s, recurrent s, recurrent extrapolated?, quadratic s or None).

    Every chunked point is measured first, then the recurrent ones, then the quadratic ones: the
    quadratic form's gigabyte matrices would otherwise charge the next small measurements for
    freshly faulted-in pages. Times are the best of `repeats` runs (one run for the recurrent
    loop, whose thousands of steps average the noise out).
    """
    inputs = {L: [torch.randn(1, heads, L, head_dim) for _ in range(3)] for L in lengths}
    chunked = {
        L: best_time(causal_linear_attention_chunked, *inputs[L], chunk_size, repeats=repeats)
        for L in lengths
    }
    recurrent = {}
    for L in lengths:
        steps = min(L, recurrent_steps)
        q, k, v = (t[..., :steps, :] for t in inputs[L])
        recurrent[L] = (
            median_time(causal_linear_attention_recurrent, q, k, v, repeats=1, warmup=0) * L / steps
        )
    quadratic = {
        L: best_time(
            quadratic_linear_attention, *inputs[L], causal=True, repeats=repeats if L <= 4096 else 1
        )
        for L in lengths
        if L <= quadratic_max
    }
    return [
        (L, chunked[L], recurrent[L], min(L, recurrent_steps) < L, quadratic.get(L))
        for L in lengths
    ]


def table(rows) -> str:
    lines = [
        f"{'L':>6} {'chunked':>9} {'recurrent':>11} {'quadratic':>10} {'recurrent/chunked':>18}",
        f"{'':>6} {'(ms)':>9} {'(ms)':>11} {'(ms)':>10} {'':>18}",
    ]
    for L, chunked, recurrent, extrapolated, quadratic in rows:
        quad = f"{1e3 * quadratic:>10.1f}" if quadratic is not None else f"{'skipped':>10}"
        lines.append(
            f"{L:>6} {1e3 * chunked:>9.1f} {1e3 * recurrent:>10.0f}{'*' if extrapolated else ' '} "
            f"{quad} {recurrent / chunked:>18.1f}"
        )
    if any(row[3] for row in rows):
        lines.append("* recurrent timed on its first tokens, per-step cost extrapolated to L")
    return "\n".join(lines)


def verdicts(rows) -> list:
    by_length = {row[0]: row for row in rows}
    out = []
    if 4096 in by_length:
        speedup = by_length[4096][2] / by_length[4096][1]
        out.append(
            (
                speedup >= SPEEDUP_TARGET,
                f"chunked vs recurrent at L = 4096: {speedup:.1f}x faster (target >= {SPEEDUP_TARGET:g}x)",
            )
        )
    if 16384 in by_length and 2048 in by_length:
        growth = by_length[16384][1] / by_length[2048][1]
        out.append(
            (
                growth <= GROWTH_TARGET,
                f"chunked time growth t(16384) / t(2048) = {growth:.2f} (target <= {GROWTH_TARGET:g}, linear is 8)",
            )
        )
    return out


def plot(rows, path: str) -> None:

    lengths = [row[0] for row in rows]
    with saved_figure(path, figsize=(5.5, 3.8)) as figure:
        ax = figure.subplots()
        ax.loglog(lengths, [r[1] * 1e3 for r in rows], "o-", label="chunked")
        ax.loglog(lengths, [r[2] * 1e3 for r in rows], "o-", label="recurrent")
        quad = [(r[0], r[4] * 1e3) for r in rows if r[4] is not None]
        if quad:
            ax.loglog(*zip(*quad), "o-", label="masked quadratic")
        scaling_guides(ax, lengths, linear_from=rows[0][1] * 1e3)
        label_lengths_axis(ax, lengths, ylabel="time (ms)", title="causal linear attention, cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench.linear_attention",
        description="Time causal linear attention (chunked, recurrent, masked quadratic) on the CPU, "
        "with PASS/FAIL for the day08 targets (chunked >= 10x faster than recurrent at "
        "L = 4096; chunked t(16k) / t(2k) <= 10).",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096, 8192, 16384],
        help="sequence lengths (default: 1024 2048 4096 8192 16384)",
    )
    parser.add_argument("--heads", type=int, default=1, help="attention heads (default: 1)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension (default: 64)")
    parser.add_argument("--chunk-size", type=int, default=64, help="chunk size (default: 64)")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per point (default: 9)")
    parser.add_argument(
        "--recurrent-steps",
        type=int,
        default=2048,
        help="tokens the recurrent loop is timed on, then extrapolated (default: 2048)",
    )
    parser.add_argument(
        "--quadratic-max",
        type=int,
        default=16384,
        help="longest L for the quadratic form (default: 16384)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1; the recurrent loop's many small ops "
        "and a shared machine make more threads noisy)",
    )
    parser.add_argument("--plot", metavar="FILE", help="save the log-log plot to FILE")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.repeats < 1 or args.chunk_size < 1 or args.recurrent_steps < 1:
        parser.error("lengths, --repeats, --chunk-size and --recurrent-steps must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(
        f"causal linear attention (elu + 1): batch 1, {args.heads} head(s), head_dim {args.head_dim}, "
        f"chunk {args.chunk_size}, float32, cpu, {torch.get_num_threads()} threads"
    )
    rows = measure(
        sorted(set(args.lengths)),
        args.heads,
        args.head_dim,
        args.chunk_size,
        args.repeats,
        args.recurrent_steps,
        args.quadratic_max,
    )
    print(table(rows))
    status = print_verdicts(verdicts(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot saved to {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
