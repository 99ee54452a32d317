"""Sweep: every reference solution through its hidden checks on many seeds, to show that a right
answer passes whatever the hidden draw, and how close it comes to being rejected.

    python -m tools.seed_sweep                                  every exercise, 10,000 seeds
    python -m tools.seed_sweep --seeds 200 --days day01-sdpa
    python -m tools.seed_sweep --seeds 50 --exercises stable_softmax --first 5000 --workers 2

Each exercise's solution is the solution notebook's own function (tests/helpers.py,
`solution_functions`), run as `run_exercise(day, exercise, fn, hidden=True, seed=s)` for the
seeds first .. first + seeds - 1, spread over worker processes. The table has one row per
exercise: the seeds run, how many failed, and the worst ratio error / tolerance of any comparison
`expect_close` made (1 would be a right answer rejected). Below it, each failing seed with its
first message: `check(day, exercise, fn, hidden=True, seed=s)` reproduces it.
"""

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 25  # seeds per task: small enough to spread a short sweep over the workers


@dataclasses.dataclass
class Sweep:
    """What the seeds of one exercise showed."""

    day: str
    exercise: str
    seeds: int = 0
    failures: list = dataclasses.field(default_factory=list)  # (seed, check, message)
    worst: tuple = (0.0, None, "")  # (error / tolerance, seed, what was compared)

    def add(self, other: "Sweep") -> None:
        self.seeds += other.seeds
        self.failures += other.failures
        self.worst = max(self.worst, other.worst, key=lambda worst: worst[0])


def sweep_seeds(day: str, exercise: str, seeds) -> Sweep:
    """Run the solution of `exercise` through its hidden checks once per seed, in this process."""
    from grader import run_exercise
    from grader.harness.checking import recorded_comparisons

    solution = _solutions(day)[exercise]
    result = Sweep(day, exercise)
    for seed in seeds:
        result.seeds += 1
        with recorded_comparisons() as comparisons:
            try:
                report = run_exercise(
                    day, exercise, solution, hidden=True, seed=seed, verbose=False
                )
            except Exception as exc:  # the check itself crashed on this draw: a suite's bug
                result.failures.append((seed, "the check itself", f"{type(exc).__name__}: {exc}"))
                continue
        result.failures += [(seed, r.check, r.message) for r in report.results if not r.passed][:1]
        for comparison in comparisons:
            ratio = comparison.error / comparison.allowed
            result.worst = max(result.worst, (ratio, seed, comparison.what), key=lambda w: w[0])
    return result


def sweep(days: list, exercises: list, seeds: int, first: int = 0, workers: int = 1) -> list:
    """A Sweep per (day, exercise) of `days` (all when empty) whose name is in `exercises` (all
    when empty), over seeds first .. first + seeds - 1, with `workers` processes."""
    from grader.suites import assignments
    from grader.suites import exercises as exercises_of

    wanted = [
        (day, name)
        for day in (days or assignments())
        for name in exercises_of(day)
        if not exercises or name in exercises
    ]
    tasks = [
        (day, name, range(start, min(start + CHUNK, first + seeds)))
        for day, name in wanted
        for start in range(first, first + seeds, CHUNK)
    ]
    results = {(day, name): Sweep(day, name) for day, name in wanted}
    if workers <= 1:
        done = map(_task, tasks)
    else:
        # spawn, not fork: a forked copy of a process that has run torch's thread pool can hang
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)
        done = pool.imap_unordered(_task, tasks)
    for part in done:
        results[(part.day, part.exercise)].add(part)
    if workers > 1:
        pool.close()
    return list(results.values())


def _task(task) -> Sweep:
    return sweep_seeds(*task)


def _one_thread() -> None:
    """Each worker gets one core's worth of threads: the workers share the machine."""
    import torch

    torch.set_num_threads(1)


def _solutions(day: str) -> dict:
    """The solution notebook's functions (its setup and solution cells, run once per process)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # last: tests/grader must not hide the package
    from helpers import solution_functions

    return solution_functions(day)


def table(results: list) -> str:
    rows = [("day", "exercise", "seeds", "failures", "worst error/tol", "at seed")]
    for r in results:
        ratio, seed, _ = r.worst
        rows.append((r.day, r.exercise, r.seeds, len(r.failures), f"{ratio:.3f}", seed))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    for r in results:
        for seed, check, message in r.failures:
            lines.append(f"FAILED {r.day} {r.exercise} seed {seed}: {check}: {message}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10_000, help="seeds per exercise")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--days", nargs="*", default=[], help="e.g. day01-sdpa (default: all)")
    parser.add_argument("--exercises", nargs="*", default=[], help="names (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = sweep(args.days, args.exercises, args.seeds, args.first, args.workers)
    print(table(results))
    print(f"{time.perf_counter() - start:.0f} s with {args.workers} workers")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
