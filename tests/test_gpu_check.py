"""tools/gpu_check.py (`make gpu-check`): without CUDA it says so and exits 0; `--device cpu
--quick` runs every part for real at tiny sizes (Triton's interpreter, one notebook, a class of
two) into a report whose numbers are checked against the course's own measurements here; the
targets' PASS/FAIL logic on given numbers."""

import os
import re
import subprocess
import sys

import pytest

from course.reference.capstone import estimate_attention_memory, measure_attention_memory
from helpers import ROOT
from tools.gpu_check import (
    PARTS,
    QUICK,
    FlashPoint,
    NotebookRun,
    expected_score,
    flash_targets,
    notebook_target,
)

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # this test's machine, whatever it holds


def gpu_check(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tools.gpu_check", *args]
    return subprocess.run(
        command, cwd=ROOT, env=NO_GPU, capture_output=True, text=True, timeout=900
    )


def test_without_cuda_it_says_so_in_one_line_runs_nothing_and_exits_0(tmp_path):
    done = gpu_check("--report", str(tmp_path / "report.md"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("No CUDA device found: nothing run.")
    assert len(done.stdout.splitlines()) == 1
    assert "--device cpu --quick" in done.stdout
    assert not (tmp_path / "report.md").exists()


def test_device_cpu_needs_quick():
    done = gpu_check("--device", "cpu")
    assert done.returncode == 2 and "only with --quick" in done.stderr


# ----------------------------------------------------------------------------- the quick report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    """The quick report, run once for the tests below: every part, for real, on the CPU."""
    path = tmp_path_factory.mktemp("gpu-check") / "report.md"
    done = gpu_check("--device", "cpu", "--quick", "--report", str(path))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return path.read_text()


def section(report: str, title: str) -> str:
    return report.split(f"\n## {title}\n")[1].split("\n## ")[0]


def table(text: str) -> list:
    """The rows of the first Markdown table in `text`, as dicts by column name."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


@pytest.mark.slow
def test_quick_report_has_every_part_ran_ok_and_judges_no_gpu_target(report):
    assert report.startswith("# GPU check (quick)")
    parts = {row["part"]: row["result"] for row in table(section(report, "Parts"))}
    assert parts == {title: "ok" for title, _ in PARTS.values()}
    targets = section(report, "Targets").strip().splitlines()
    assert len(targets) == 3
    assert all(line.startswith("- NOT RUN: ") for line in targets), targets


@pytest.mark.slow
def test_quick_report_counts_the_gpu_tests_it_ran(report):
    text = section(report, "GPU tests")
    counts = re.search(r"exit 0; (\d+) passed, (\d+) failed, (\d+) error, (\d+) skipped", text)
    assert counts and counts.groups()[1:3] == ("0", "0") and int(counts[4]) >= 1
    rows = table(text)
    assert len(rows) == int(counts[4])
    assert all(row["outcome"] == "skipped" and "GPU" in row["message"] for row in rows)


@pytest.mark.slow
def test_quick_report_times_the_notebook_it_ran_on_the_cpu(report):
    (row,) = table(section(report, "Solution notebooks"))
    assert row["notebook"] == QUICK.days[0] and row["result"] == "ran"
    assert row["device"].startswith("CPU") and "interpreter" in row["device"]
    assert float(row["seconds"]) > 0


@pytest.mark.slow
def test_quick_report_compares_triton_with_sdpa_in_both_directions(report):
    rows = table(section(report, "FlashAttention in Triton against SDPA"))
    points = {(row["L"], row["causal"], row["pass"]) for row in rows}
    lengths = {str(L) for L in QUICK.flash_lengths}
    assert points == {
        (L, causal, way)
        for L in lengths
        for causal in ("no", "yes")
        for way in ("forward", "forward+backward")
    }
    for row in rows:
        assert float(row["max abs diff"]) < 1e-5  # float32, the same attention
        triton, sdpa = float(row["Triton TFLOP/s"]), float(row["SDPA TFLOP/s"])
        assert float(row["ratio"]) == pytest.approx(triton / sdpa, abs=0.01, rel=0.02)


@pytest.mark.slow
def test_quick_report_times_each_scan_against_the_float64_loop(report):
    rows = table(section(report, "Scans"))
    assert [row["method"] for row in rows] == [
        "sequential loop",
        "parallel scan",
        "compiled scan (Triton)",
    ]
    assert all(float(row["rel. error"]) <= 1e-5 for row in rows)
    assert rows[0]["vs the loop"] == "1.0x" and rows[1]["vs the parallel scan"] == "1.00x"


@pytest.mark.slow
def test_quick_report_memory_rows_are_the_measured_peak_and_the_estimate(report):
    rows = {
        row["mechanism"]: row for row in table(section(report, "Peak memory against the estimator"))
    }
    batch, heads, head_dim = QUICK.memory_shape
    (L,) = QUICK.memory_lengths
    dense = rows["dense"]
    assert dense["L"] == str(L)
    measured = measure_attention_memory("dense", batch, heads, L, head_dim)  # the CPU tracker
    assert dense["measured MiB"] == f"{measured / 2**20:.3f}"
    estimate = estimate_attention_memory("dense", batch, heads, L, head_dim)
    assert dense["estimated MiB"] == f"{estimate / 2**20:.3f}"
    assert len(rows) == 9 and all(row["within 15%"] == "yes" for row in rows.values())


@pytest.mark.slow
def test_quick_report_grades_the_class_right_on_the_cpu(report):
    text = section(report, "Grading a class")
    assert f"autograde {QUICK.grade_day} --workers 2" in text and "exit 0" in text
    rows = {row["student"]: row for row in table(text)}
    assert set(rows) == set(QUICK.grade_class)
    score, most = rows["correct"]["score"].split(" / ")
    assert score == most and float(most) > 0
    assert rows["broken"]["score"] == f"0 / {most}"
    assert all(row["device in the grading kernel"].startswith("CPU") for row in rows.values())
    assert "inside a grading kernel's sandbox" in text or "No sandbox here" in text


# ----------------------------------------------------------------------------- the targets


def point(L, direction, triton_s=1.0, sdpa_s=1.0) -> FlashPoint:
    return FlashPoint("float16", 64, False, L, direction, triton_s, sdpa_s, 1e-3)


def statuses(points, device="cuda") -> list:
    return [target.status for target in flash_targets(points, device)]


def test_flash_targets_hold_from_4096_at_0_8x_forward_and_0_6x_forward_backward():
    at_bounds = [point(4096, "forward", 1.0, 0.8), point(16384, "forward+backward", 1.0, 0.6)]
    assert statuses(at_bounds) == ["PASS", "PASS"]
    below = [point(8192, "forward", 1.0, 0.79), point(4096, "forward+backward", 1.0, 0.59)]
    assert statuses(below) == ["FAIL", "FAIL"]
    # slow at 2048 does not count; the forward+backward bound is lower than the forward one
    mixed = [
        point(2048, "forward", 1.0, 0.1),
        point(4096, "forward", 1.0, 0.9),
        point(4096, "forward+backward", 1.0, 0.7),
    ]
    assert statuses(mixed) == ["PASS", "PASS"]


def test_a_flash_point_that_did_not_run_fails_its_target_and_nothing_passes_off_the_gpu():
    missing = [point(4096, "forward", None, 1.0), point(4096, "forward+backward", 1.0, 2.0)]
    assert statuses(missing) == ["FAIL", "PASS"]
    assert "1 did not run" in flash_targets(missing, "cuda")[0].why
    fast = [point(4096, "forward", 1.0, 2.0), point(4096, "forward+backward", 1.0, 2.0)]
    assert statuses(fast, "cpu") == ["NOT RUN", "NOT RUN"]
    assert statuses([point(2048, "forward")]) == ["NOT RUN", "NOT RUN"]  # nothing judged


def test_notebook_target_every_notebook_under_20_s_without_an_error():
    quick = [NotebookRun("day01-sdpa", 5.0, "CUDA"), NotebookRun("day02-masks", 19.9, "CUDA")]
    assert notebook_target(quick, "cuda").status == "PASS"
    slow = [*quick, NotebookRun("day03-multihead", 20.0, "CUDA")]
    assert notebook_target(slow, "cuda").status == "FAIL"
    broken = [*quick, NotebookRun("day04-kv-cache", 3.0, "CUDA", "CellExecutionError: x")]
    assert notebook_target(broken, "cuda").status == "FAIL"
    assert "day04-kv-cache" in notebook_target(broken, "cuda").why
    assert notebook_target(quick, "cpu").status == "NOT RUN"
    assert notebook_target([], "cuda").status == "NOT RUN"


def test_a_graded_class_is_right_when_correct_gets_all_broken_none_partial_some():
    assert expected_score("correct", 9, 9) and not expected_score("correct", 8, 9)
    assert not expected_score("correct", 0, 0)  # nothing graded is not full marks
    assert expected_score("broken", 0, 9) and not expected_score("broken", 1, 9)
    assert expected_score("partial", 3, 9)
    assert not expected_score("partial", 0, 9) and not expected_score("partial", 9, 9)
