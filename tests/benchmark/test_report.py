"""Tests of ``nnunetv2_mapo.benchmark.report``."""

from __future__ import annotations

import math

from benchmark_helpers import MAPO, run, spec

from nnunetv2_mapo.benchmark.report import format_stat, format_table
from nnunetv2_mapo.benchmark.spec import (
    BASELINE_TRAINER,
    EQUAL_COMPUTE_TRAINER,
)
from nnunetv2_mapo.benchmark.stats import paired_ratios, summarize


def test_format_stat() -> None:
    assert format_stat({"mean": 0.81234, "std": 0.01, "n": 3}, "{:.4f}") == "0.8123 ± 0.0100"
    assert format_stat({"mean": 0.5, "std": math.nan, "n": 1}, "{:.2f}") == "0.50"
    assert format_stat({"mean": math.nan, "std": math.nan, "n": 0}, "{:.2f}") == "–"
    assert format_stat({"mean": 0.25, "std": 0.05, "n": 2}, "{:.1%}") == "25.0% ± 5.0%"


def test_format_table_has_both_trainers_ratios_and_the_baseline_note() -> None:
    runs = [run(BASELINE_TRAINER, s, 0, Dice=d, HD95=h, ASD=1.0, wall_seconds=100.0, seconds_per_epoch=2.0,
                training_seconds=20.0, preference_seconds=None, preference_share=None, peak_rss_gib=1.0, num_cases=4)
            for s, d, h in ((0, 0.7, 3.0), (1, 0.9, 5.0))]
    runs += [run(MAPO, s, 0, Dice=d, HD95=4.0, ASD=1.0, wall_seconds=150.0, seconds_per_epoch=3.0,
                 training_seconds=30.0, preference_seconds=6.0, preference_share=0.2, peak_rss_gib=1.5, num_cases=4)
             for s, d in ((0, 0.8), (1, 0.9))]
    trainers = [BASELINE_TRAINER, MAPO]
    results = {"spec": {**vars(spec(seeds=2, shared_warmup_epochs=2)), "folds": [0]}, "dataset": "Dataset990_Toy",
               "plans_identifier": "nnUNetPlans_bs2", "batch_size": 2, "trainers": trainers,
               "summary": summarize(runs, trainers), "ratios": paired_ratios(runs, *trainers), "runs": runs,
               "warmups": [{"seed": 0, "fold": 0, "wall_seconds": 30.0}], "missing": []}
    table = format_table(results)
    header = next(line for line in table.splitlines() if line.startswith("| quantity"))
    assert BASELINE_TRAINER in header and MAPO in header and "MAPO / baseline" in header and "(n=2)" in header
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["Dice (foreground mean)"] == ("| Dice (foreground mean) | 0.8000 ± 0.1414 | 0.8500 ± 0.0707 "
                                              "| 1.071 ± 0.101 |")
    assert rows["wall time per training (s)"].endswith("| 100.0 ± 0.0 | 150.0 ± 0.0 | 1.500 ± 0.000 |")
    assert "20.0%" in rows["preference rounds, share of epoch time"]
    assert "| 1.50 ± 0.00 |" in rows["peak memory, max RSS (GiB)"]
    assert "nnUNetTrainer` + budget overrides only" in table
    assert "Shared warm-up" in table and "30.0 s" in table
    assert table.count(f"| {MAPO} | ") == 2  # per-run rows
    assert "Paired per-case differences" not in table  # no per-case comparison given

    paired = {"0": {"Dice": {"mean_difference": 0.0123, "ci_low": 0.0021, "ci_high": 0.0234, "relative": 0.015,
                             "seed_wins": 3, "seeds": 3, "cases": 40}}}
    table = format_table(results | {"paired": paired})
    assert f"{MAPO} - {BASELINE_TRAINER}, fold 0" in table
    assert "| Dice | +0.0123 | [+0.0021, +0.0234] | +1.5% | 3/3 | 40 |" in table


def test_format_table_with_the_equal_compute_arm() -> None:
    values = {"HD95": 3.0, "ASD": 1.0, "wall_seconds": 100.0, "seconds_per_epoch": 2.0, "training_seconds": 20.0,
              "preference_seconds": None, "preference_share": None, "peak_rss_gib": 1.0, "num_cases": 4}
    runs = [run(BASELINE_TRAINER, 0, 0, Dice=0.70, **values), run(EQUAL_COMPUTE_TRAINER, 0, 0, Dice=0.75, **values),
            run(MAPO, 0, 0, Dice=0.84, **values)]
    trainers = [BASELINE_TRAINER, EQUAL_COMPUTE_TRAINER, MAPO]
    paired = {"0": {"Dice": {"mean_difference": 0.09, "ci_low": 0.05, "ci_high": 0.12, "relative": 0.12,
                             "seed_wins": 1, "seeds": 1, "cases": 4}}}
    results = {"spec": {**vars(spec()), "folds": [0]}, "dataset": "Dataset990_Toy", "plans_identifier": "nnUNetPlans",
               "batch_size": 2, "trainers": trainers, "summary": summarize(runs, trainers),
               "ratios": paired_ratios(runs, BASELINE_TRAINER, MAPO), "equal_compute_iterations": 4,
               "ratios_equal_compute": paired_ratios(runs, EQUAL_COMPUTE_TRAINER, MAPO), "runs": runs,
               "warmups": [], "missing": [], "paired": {}, "paired_equal_compute": paired}
    table = format_table(results)
    header = next(line for line in table.splitlines() if line.startswith("| quantity"))
    assert f"equal compute: {EQUAL_COMPUTE_TRAINER} (n=1)" in header and header.endswith("MAPO / equal compute |")
    dice = next(line for line in table.splitlines() if line.startswith("| Dice"))
    assert dice == "| Dice (foreground mean) | 0.7000 | 0.7500 | 0.8400 | 1.200 | 1.120 |"
    assert "trains 4 iterations per epoch" in table
    assert f"{MAPO} - {EQUAL_COMPUTE_TRAINER}, fold 0" in table
