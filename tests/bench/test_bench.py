"""course.bench: the timer the notebooks' Measure sections use."""

import pytest

from course.bench import median_time


def test_median_time_measures_a_call():
    assert median_time(sum, range(10_000), repeats=3) > 0


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}])
def test_median_time_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="need repeats >= 1 and warmup >= 0"):
        median_time(sum, range(10), **kwargs)


# peak_memory


def test_peak_memory_counts_what_is_alive_at_once():
    import torch

    from course.bench import peak_memory

    def two_then_one_bigger():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(1_000_000)  # 4 MB: 8 alive
        del a  # 4 alive
        c = torch.empty(2_000_000)  # 8 MB: 12 alive, the peak
        return b, c

    assert peak_memory(two_then_one_bigger) == 12_000_000


def test_peak_memory_ignores_views_and_in_place_but_counts_copies():
    import torch

    from course.bench import peak_memory

    x = torch.zeros(1000, 250)  # 1 MB, allocated before measuring
    assert peak_memory(lambda t: t.view(-1)[:10].t(), x) == 0
    assert peak_memory(lambda t: t.add_(1), x) == 0
    assert peak_memory(lambda t: t + 1, x) == 1_000_000
    assert peak_memory(lambda t: t.t().contiguous(), x) == 1_000_000
    assert peak_memory(lambda t: t.double(), x) == 2_000_000


def test_peak_memory_sees_the_square_matrix_of_dense_attention():
    import torch

    from course.bench import peak_memory

    L = 512
    q = torch.randn(L, 16)
    scores_bytes = L * L * 4
    assert (
        peak_memory(lambda q: (q @ q.T).softmax(-1) @ q, q) >= 2 * scores_bytes
    )  # scores + weights
    assert peak_memory(lambda q: (q @ q.T).softmax(-1) @ q, q) < 3 * scores_bytes


def test_benchmark_script_runs_on_tiny_sizes(tmp_path, capsys):
    from course.bench.sparse import main

    status = main(
        [
            "--lengths",
            "64",
            "256",
            "--window",
            "8",
            "--repeats",
            "1",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    printed = capsys.readouterr().out
    assert status in (0, 1)
    assert "peak dense" in printed and "ratio" in printed
    assert "memory at L = 256" in printed and "t(256) / t(64)" in printed
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_a_topic_run_returns_named_measurements_and_verdicts(capsys):
    from course.bench.sparse import run

    result = run(lengths=[64, 128], window=8, repeats=1, head_dim=8)
    assert "peak dense" in capsys.readouterr().out
    assert {(row.mechanism, row.L) for row in result.rows} == {
        (mechanism, L) for mechanism in ("dense masked", "sliding window") for L in (64, 128)
    }
    assert all(
        row.topic == "sparse" and row.seconds > 0 and row.peak_bytes > 0 for row in result.rows
    )
    assert result.verdicts[0].target.startswith("memory at L = 128")
    assert result.status == (0 if all(v.passed for v in result.verdicts) else 1)


def test_records_are_written_as_csv_and_json(tmp_path):
    import csv
    import json

    from course.bench import Measurement, Verdict
    from course.bench.records import write_csv, write_json

    rows = [Measurement("sparse", "dense masked", 64, seconds=0.5, peak_bytes=10)]
    write_csv(rows, tmp_path / "r.csv")
    write_json(rows, [("sparse", Verdict(True, "small enough"))], tmp_path / "r.json")
    with open(tmp_path / "r.csv", newline="") as file:
        (line,) = csv.DictReader(file)
    assert (line["mechanism"], line["L"], line["peak_bytes"], line["error"]) == (
        "dense masked",
        "64",
        "10",
        "",
    )
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["rows"][0]["seconds"] == 0.5 and document["rows"][0]["error"] is None
    assert document["verdicts"] == [{"topic": "sparse", "passed": True, "target": "small enough"}]


def test_print_verdicts_prints_each_target_and_fails_if_any_failed(capsys):
    from course.bench import Verdict, print_verdicts

    assert print_verdicts([Verdict(True, "fast enough"), Verdict(True, "small enough")]) == 0
    assert print_verdicts([Verdict(True, "fast enough"), Verdict(False, "small enough")]) == 1
    assert capsys.readouterr().out.splitlines()[-2:] == ["PASS: fast enough", "FAIL: small enough"]


def test_saved_figure_writes_a_png_with_lengths_on_the_axis(tmp_path):
    from course.bench import label_lengths_axis, saved_figure

    lengths = [128, 256, 512]
    with saved_figure(tmp_path / "scaling.png") as figure:
        ax = figure.subplots()
        ax.loglog(lengths, [1, 4, 16], "o-", label="quadratic")
        label_lengths_axis(ax, lengths, ylabel="time (ms)")
    assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG")
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["128", "256", "512"]
    assert ax.get_xlabel() == "sequence length L"
