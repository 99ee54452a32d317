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
    Measurement,
    Result,
    Verdict,
    by_point,
    label_lengths_axis,
    median_time,
    plot_by_mechanism,
    report,
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
CHUNKED, RECURRENT, QUADRATIC = "chunked", "recurrent", "masked quadratic"
EXTRAPOLATED = "extrapolated"


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
    """A Measurement (time) per form and L; the quadratic form only up to `quadratic_max`.

    Every chunked point is measured first, then the recurrent ones, then the quadratic ones: the
    quadratic form's gigabyte matrices would otherwise charge the next small measurements for
    freshly faulted-in pages. Times are the best of `repeats` runs (one run for the recurrent
    loop, whose thousands of steps average the noise out).
    """
    inputs = {L: [torch.randn(1, heads, L, head_dim) for _ in range(3)] for L in lengths}

    def row(mechanism, L, seconds, note=""):
        return Measurement(
            "linear_attention",
            mechanism,
            L,
            seconds,
            heads=heads,
            head_dim=head_dim,
            causal=True,
            note=note,
        )

    rows = [
        row(
            CHUNKED,
            L,
            best_time(causal_linear_attention_chunked, *inputs[L], chunk_size, repeats=repeats),
            f"chunk {chunk_size}",
        )
        for L in lengths
    ]
    for L in lengths:
        steps = min(L, recurrent_steps)
        q, k, v = (t[..., :steps, :] for t in inputs[L])
        seconds = median_time(causal_linear_attention_recurrent, q, k, v, repeats=1, warmup=0)
        rows.append(row(RECURRENT, L, seconds * L / steps, EXTRAPOLATED if steps < L else ""))
    for L in lengths:
        if L <= quadratic_max:
            seconds = best_time(
                quadratic_linear_attention,
                *inputs[L],
                causal=True,
                repeats=repeats if L <= 4096 else 1,
            )
            rows.append(row(QUADRATIC, L, seconds))
    return rows


def table(rows) -> str:
    point = by_point(rows)
    lines = [
        f"{'L':>6} {'chunked':>9} {'recurrent':>11} {'quadratic':>10} {'recurrent/chunked':>18}",
        f"{'':>6} {'(ms)':>9} {'(ms)':>11} {'(ms)':>10} {'':>18}",
    ]
    for L in sorted({row.L for row in rows}):
        chunked, recurrent, quadratic = (point.get((m, L)) for m in (CHUNKED, RECURRENT, QUADRATIC))
        quad = f"{1e3 * quadratic.seconds:>10.1f}" if quadratic else f"{'skipped':>10}"
        star = "*" if recurrent.note == EXTRAPOLATED else " "
        lines.append(
            f"{L:>6} {1e3 * chunked.seconds:>9.1f} {1e3 * recurrent.seconds:>10.0f}{star} "
            f"{quad} {recurrent.seconds / chunked.seconds:>18.1f}"
        )
    if any(row.note == EXTRAPOLATED for row in rows):
        lines.append("* recurrent timed on its first tokens, per-step cost extrapolated to L")
    return "\n".join(lines)


def verdicts(rows) -> list:
    seconds = {(row.mechanism, row.L): row.seconds for row in rows}
    out = []
    if (CHUNKED, 4096) in seconds:
        speedup = seconds[RECURRENT, 4096] / seconds[CHUNKED, 4096]
        out.append(
            Verdict(
                speedup >= SPEEDUP_TARGET,
                f"chunked vs recurrent at L = 4096: {speedup:.1f}x faster (target >= {SPEEDUP_TARGET:g}x)",
            )
        )
    if (CHUNKED, 16384) in seconds and (CHUNKED, 2048) in seconds:
        growth = seconds[CHUNKED, 16384] / seconds[CHUNKED, 2048]
        out.append(
            Verdict(
                growth <= GROWTH_TARGET,
                f"chunked time growth t(16384) / t(2048) = {growth:.2f} (target <= {GROWTH_TARGET:g}, linear is 8)",
            )
        )
    return out


def save_plot(rows, path) -> None:
    lengths = sorted({row.L for row in rows})
    with saved_figure(path, figsize=(5.5, 3.8)) as figure:
        ax = figure.subplots()
        y = plot_by_mechanism(ax, rows, "seconds", 1e3)
        scaling_guides(ax, lengths, linear_from=y[CHUNKED][0])
        label_lengths_axis(ax, lengths, ylabel="time (ms)", title="causal linear attention, cpu")


def run(
    lengths=(1024, 2048, 4096, 8192, 16384),
    heads: int = 1,
    head_dim: int = 64,
    chunk_size: int = 64,
    repeats: int = 9,
    recurrent_steps: int = 2048,
    quadratic_max: int = 16384,
    threads: int = 1,
    plot=None,
) -> Result:
    """Measure, print the table and the verdicts, and save the plot to the file `plot` if given."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    print(
        f"causal linear attention (elu + 1): batch 1, {heads} head(s), head_dim {head_dim}, "
        f"chunk {chunk_size}, float32, cpu, {torch.get_num_threads()} threads"
    )
    rows = measure(
        sorted(set(lengths)), heads, head_dim, chunk_size, repeats, recurrent_steps, quadratic_max
    )
    return report(rows, verdicts(rows), table(rows), plot, save_plot)


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
    return run(
        args.lengths,
        args.heads,
        args.head_dim,
        args.chunk_size,
        args.repeats,
        args.recurrent_steps,
        args.quadratic_max,
        args.threads,
        args.plot,
    ).status


if __name__ == "__main__":
    sys.exit(main())
