"""The linear recurrence h_t = a_t h_{t-1} + b_t: the loop over time against the scans.

    python -m course.bench.mamba_scan                  # 16 rows x L = 4096, CPU, one thread
    python -m course.bench.mamba_scan --rows 16 256    # several batch sizes

Timed: course.reference.mamba_scan.linear_recurrence_sequential (a Python loop of L steps), _parallel
(Hillis-Steele, ceil(log2 L) vectorised steps) and _chunked (scans inside chunks, a short loop
across them), all on the same float32 inputs; each is also compared with a float64 loop. On a
CPU, torch runs many small ops faster on one thread (no thread wake-ups per op), so timing uses
one thread unless --threads says otherwise. Without a GPU the Triton kernel runs through its
interpreter, so it is timed at a small size and labelled as such (a correctness tool, not a
speed one); on a GPU it runs at full size and its throughput is compared with a plain copy of
the same bytes (a scan reads a and b and writes h: 12 bytes per step in float32).

Targets (from the day09 issue), PASS/FAIL: at L = 4096 the parallel and chunked scans are at least
20 times faster than the loop, and equal to the float64 loop within float32 tolerance (relative
error <= 1e-5).
"""

import argparse
import sys

import torch

import course  # noqa: F401  (Triton in interpreter mode without a GPU)
from course.bench import Measurement, Result, Verdict, median_time, print_verdicts
from course.reference.mamba_scan import (
    linear_recurrence_chunked,
    linear_recurrence_parallel,
    linear_recurrence_sequential,
    linear_recurrence_triton,
)

SPEEDUP_TARGET = 20.0
TOLERANCE = 1e-5


def relative_error(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def scan(mechanism, fn, rows: int, L: int, repeats: int, device, seed=0) -> Measurement:
    """Time `fn` on (rows, L) float32 inputs and compare it with the float64 loop."""
    g = torch.Generator().manual_seed(seed)
    a = (0.5 + 0.5 * torch.rand(rows, L, generator=g)).to(device)
    b = torch.randn(rows, L, generator=g).to(device)
    reference = linear_recurrence_sequential(a.double(), b.double())
    return Measurement(
        topic="mamba_scan",
        mechanism=mechanism,
        L=L,
        seconds=median_time(fn, a, b, repeats=repeats),
        error=relative_error(fn(a, b), reference),
        batch=rows,
        device=device.type,
    )


def measure(rows: int, L: int, chunk_size: int, repeats: int, device) -> list:
    """A Measurement (time, relative error) for the loop and each scan; the loop first."""
    fns = [
        ("sequential loop", linear_recurrence_sequential),
        ("parallel scan", linear_recurrence_parallel),
        (f"chunked scan ({chunk_size})", lambda a, b: linear_recurrence_chunked(a, b, chunk_size)),
    ]
    if device.type == "cuda":
        fns.append(("triton scan", linear_recurrence_triton))
    return [scan(name, fn, rows, L, repeats, device) for name, fn in fns]


def copy_bandwidth(nbytes: int, device) -> float:
    x = torch.empty(nbytes // 4, device=device)
    return 2 * nbytes / median_time(torch.clone, x, repeats=10)  # read + write


def table(measured: list) -> str:
    """`measured`: one list per number of rows, the loop first."""
    lines = [f"{'rows':>5} {'method':>22} {'time (ms)':>10} {'speed-up':>9} {'rel. error':>11}"]
    for results in measured:
        loop = results[0].seconds
        for row in results:
            lines.append(
                f"{row.batch:>5} {row.mechanism:>22} {1e3 * row.seconds:>10.2f} "
                f"{loop / row.seconds:>8.1f}x {row.error:>11.1e}"
            )
    return "\n".join(lines)


def verdicts(measured: list) -> list:
    out = []
    for results in measured:
        loop = results[0].seconds
        for row in results[1:3]:  # the parallel and chunked scans
            speedup = loop / row.seconds
            where = f"{row.mechanism}, {row.batch} x L = {row.L}"
            out.append(
                Verdict(
                    speedup >= SPEEDUP_TARGET,
                    f"{where}: {speedup:.1f}x the loop (target >= {SPEEDUP_TARGET:g}x)",
                )
            )
            out.append(
                Verdict(
                    row.error <= TOLERANCE,
                    f"{where}: relative error {row.error:.1e} against the float64 loop "
                    f"(target <= {TOLERANCE:g})",
                )
            )
    return out


def run(
    length: int = 4096,
    rows=(16,),
    chunk_size: int = 64,
    repeats: int = 5,
    threads: int = 1,
    device="cpu",
    triton_size=(4, 256),
) -> Result:
    """Time the loop and the scans for each number of rows, print the table, the Triton line
    and the verdicts."""
    device = torch.device(device)
    torch.set_num_threads(threads)
    print(
        f"h_t = a_t h_(t-1) + b_t, float32, L = {length}, {device.type}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    measured = [measure(n, length, chunk_size, repeats, device) for n in rows]
    print(table(measured))
    result = Result([row for results in measured for row in results])
    if device.type == "cuda":
        widest = max(measured, key=lambda results: results[0].batch)
        triton = next(row for row in widest if row.mechanism == "triton scan")
        nbytes = 12 * triton.batch * length
        print(
            f"triton scan, {triton.batch} x {length}: {nbytes / triton.seconds / 1e9:.1f} GB/s "
            f"moved; a plain copy on this card: {copy_bandwidth(nbytes, device) / 1e9:.1f} GB/s"
        )
    else:
        # at its own small size: the interpreter runs the kernel in Python
        triton = scan(
            "triton (CPU interpreter)", linear_recurrence_triton, *triton_size, 3, device, 1
        )
        result.rows.append(triton)
        print(
            f"{triton.mechanism}, {triton.batch} x {triton.L}: {1e3 * triton.seconds:.1f} ms, "
            f"relative error {triton.error:.1e} "
            "(the interpreter runs the kernel in Python: not comparable with the rows above)"
        )
    result.verdicts = verdicts(measured)
    print_verdicts(result.verdicts)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.bench.mamba_scan",
        description="Time the linear recurrence h_t = a_t h_(t-1) + b_t: a loop over time against "
        "the parallel (Hillis-Steele) and chunked scans, with PASS/FAIL for the day09 "
        "targets (>= 20x faster than the loop at L = 4096, equal to float tolerance), "
        "and the Triton kernel (interpreter at a small size without a GPU).",
    )
    parser.add_argument(
        "--length", type=int, default=4096, help="sequence length L (default: 4096)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[16],
        help="independent sequences (batch x channels) (default: 16)",
    )
    parser.add_argument("--chunk-size", type=int, default=64, help="chunk size (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (default: 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1, fastest for many small ops)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--triton-size",
        type=int,
        nargs=2,
        default=[4, 256],
        metavar=("ROWS", "L"),
        help="size for the Triton row without a GPU (default: 4 256)",
    )
    args = parser.parse_args(argv)
    if (
        args.length < 1
        or min(args.rows) < 1
        or args.chunk_size < 1
        or args.repeats < 1
        or args.threads < 1
    ):
        parser.error("--length, --rows, --chunk-size, --repeats and --threads must be >= 1")
    return run(
        args.length,
        args.rows,
        args.chunk_size,
        args.repeats,
        args.threads,
        args.device,
        args.triton_size,
    ).status


if __name__ == "__main__":
    sys.exit(main())
