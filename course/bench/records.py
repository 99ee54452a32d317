"""What a benchmark returns: one `Measurement` per measured point and one `Verdict` per target.

Every topic script returns a `Result` of both. The records are tidy (one row per mechanism and
size, one column per quantity), so the same rows print as a table, plot with seaborn and are
written to report.csv and report.json by `python -m course.bench`.
"""

import csv
import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measurement:
    """One measured point: one mechanism at one size. Quantities not measured are None."""

    topic: str  # the script that measured it: "sparse", "kv_cache", ...
    mechanism: str  # what ran: "dense masked", "sliding window", "KV cache", ...
    L: int  # sequence length (for kv_cache: the position of the generated token)
    seconds: float | None = None  # time of one call
    peak_bytes: int | None = None  # course.bench.peak_memory of one call
    error: float | None = None  # against the script's reference (its table says which error)
    batch: int = 1  # independent sequences (for mamba_scan: rows)
    heads: int = 1
    head_dim: int | None = None
    causal: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    note: str = ""  # how to read this row: "extrapolated", "failed: ...", ...


@dataclass(frozen=True)
class Verdict:
    """One target of a topic's issue, met or not."""

    passed: bool
    target: str  # what was measured against what, in words


@dataclass
class Result:
    """What one benchmark script measured and how it judged it."""

    rows: list[Measurement] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def status(self) -> int:
        """The script's exit status: 0 when every target passed, else 1."""
        return 0 if all(verdict.passed for verdict in self.verdicts) else 1


def by_point(rows) -> dict:
    """{(mechanism, L): measurement}: how a table or a verdict finds one point."""
    return {(row.mechanism, row.L): row for row in rows}


def print_verdicts(verdicts) -> int:
    """Print each target as a PASS or FAIL line; return 0 when every one passed, else 1."""
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.target}")
    return Result(verdicts=list(verdicts)).status


def report(rows, verdicts, table: str, plot=None, save_plot=None) -> Result:
    """The end of every topic's run(): print its table and verdicts, and when `plot` names a
    file, draw the rows there with `save_plot(rows, plot)`."""
    print(table)
    result = Result(rows, verdicts)
    print_verdicts(result.verdicts)
    if plot:
        save_plot(rows, plot)
        print(f"plot saved to {plot}")
    return result


def write_csv(rows, path) -> None:
    """One line per measurement, one column per field of Measurement."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, [f.name for f in dataclasses.fields(Measurement)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def write_json(rows, verdicts, path) -> None:
    """{"rows": [measurement, ...], "verdicts": [{"topic", "passed", "target"}, ...]}; `verdicts`
    is a list of (topic, Verdict)."""
    document = {
        "rows": [dataclasses.asdict(row) for row in rows],
        "verdicts": [{"topic": topic, **dataclasses.asdict(v)} for topic, v in verdicts],
    }
    with open(path, "w") as file:
        json.dump(document, file, indent=1)
