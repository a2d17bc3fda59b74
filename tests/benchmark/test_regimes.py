"""Tests of ``nnunetv2_mapo.benchmark.regimes`` and ``benchmark-compare --regimes/--forest``: the overview table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.regimes import (
    COLUMNS,
    NO_READING,
    RegimesTableError,
    dice_intervals,
    read_table,
    regime_rows,
    update_table,
)
from nnunetv2_mapo.commands.cli import main

HEADER = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"


def cell(mean: float, low: float, high: float, relative: float = 0.0, wins: int = 2, seeds: int = 3) -> dict:
    return {"mean_difference": mean, "ci_low": low, "ci_high": high, "relative": relative, "seed_wins": wins,
            "seeds": seeds, "cases": 80}


def results(trainer: str = "nnUNetTrainerMAPO", dice: float = 0.0123, equal_compute: bool = False) -> dict:
    spec = {"dataset_id": 4, "configuration": "2d", "epochs": 80, "iterations": 20, "batch_size": 32,
            "shared_warmup_epochs": 0, "train_cases": 20, "mapo_trainer": trainer, "equal_compute": equal_compute}
    paired = {"0": {"Dice": cell(dice, dice - 0.004, dice + 0.005), "HD95": cell(-0.1, -0.2, 0.0, relative=-0.0512),
                    "ASD": cell(0.01, 0.0, 0.02, relative=0.0204), "NSD": cell(-0.0003, -0.0028, 0.0022)}}
    out = {"spec": spec, "dataset": "Dataset004_Hippocampus", "batch_size": 32, "written": "2026-12-07T13:00:00",
           "environment": {"nnunetv2_mapo": "0.10.0"}, "paired": paired,
           "runs": [{"trainer": trainer, "fold": 0, "num_cases": 80}]}
    if equal_compute:
        out["paired_equal_compute"] = {"0": {"Dice": cell(-0.002, -0.006, 0.001, wins=1)}}
    return out


def test_a_row_states_the_regime_and_the_paired_differences_in_points_and_percent() -> None:
    (row,) = regime_rows(results(), "confirm")
    assert row["date"] == "2026-12-07" and row["version"] == "0.10.0"
    assert row["data, configuration"] == "Hippocampus 2d"
    assert row["train / test cases"] == "20 / 80"
    assert row["budget (epochs x iterations, batch)"] == "80 x 20, 32"
    assert row["arm"] == "`nnUNetTrainerMAPO` (confirm)"
    assert row["Dice diff [95% CI]"] == "+1.23 [+0.83, +1.73]"
    assert (row["HD95"], row["ASD"]) == ("-5.1%", "+2.0%")
    assert row["NSD diff"] == "-0.03 [-0.28, +0.22]"
    assert (row["seeds"], row["Dice seed wins"], row["reading"]) == ("3", "2/3", NO_READING)


def test_the_semi_supervised_protocol_counts_its_unlabeled_cases() -> None:
    semi = results("nnUNetTrainerMAPO_Unlabeled")
    semi["spec"]["unlabeled_cases"] = 40
    semi["runs"][0]["num_cases"] = 40
    (row,) = regime_rows(semi, "semi40")
    assert row["train / test cases"] == "20 (+40 unlabeled) / 40"


def test_the_equal_compute_comparison_gets_its_own_row() -> None:
    rows = regime_rows(results(equal_compute=True), "confirm")
    assert [r["arm"] for r in rows] == ["`nnUNetTrainerMAPO` (confirm)",
                                        "`nnUNetTrainerMAPO` (confirm) vs `nnUNetTrainerBenchmarkEqualCompute`"]
    assert rows[1]["Dice diff [95% CI]"] == "-0.20 [-0.60, +0.10]" and rows[1]["HD95"] == "–"


def test_a_test_set_from_another_source_gets_its_own_row_named_by_that_dataset() -> None:
    crossed = results() | {"test_source": "Dataset504_CVCClinicDB", "paired_test_source": {
        "nnUNetTrainerMAPO": {"0": {"Dice": cell(0.015, 0.004, 0.027) | {"cases": 317}}}}}
    rows = regime_rows(crossed, "kvasir")
    assert [r["data, configuration"] for r in rows] == ["Hippocampus 2d", "Hippocampus 2d -> CVCClinicDB"]
    assert rows[1]["train / test cases"] == "20 / 317" and rows[1]["Dice diff [95% CI]"] == "+1.50 [+0.40, +2.70]"
    assert rows[1]["arm"] == rows[0]["arm"]  # the same networks; the data cell tells the rows apart


def test_new_rows_go_on_top_and_a_rerun_replaces_its_row_keeping_the_reading() -> None:
    older = "| 2026-12-01 | 0.8.0 | hippocampus 2d | 20 / 80 | 40 x 20, 32 | 3 | old arm | -0.88 [-1.35, -0.38] " \
            "| +13.5% | +9.8% | – | 0/3 | worse |\n"
    text = "# Benchmarks\n\n" + HEADER + older + "\nBelow the table.\n"
    first = update_table(text, regime_rows(results(dice=0.001), "confirm"))
    rows = read_table(first)
    assert [r["arm"] for r in rows] == ["`nnUNetTrainerMAPO` (confirm)", "old arm"]
    assert first.startswith("# Benchmarks\n\n") and first.endswith("\nBelow the table.\n")
    edited = first.replace(f"| 2/3 | {NO_READING} |", "| 2/3 | parity, by hand |")
    again = read_table(update_table(edited, regime_rows(results(dice=0.02), "confirm")))
    assert len(again) == 2 and again[0]["Dice diff [95% CI]"] == "+2.00 [+1.60, +2.50]"
    assert again[0]["reading"] == "parity, by hand"  # the reading written by hand survives the rerun
    other = read_table(update_table(edited, regime_rows(results(trainer="nnUNetTrainerMAPO_DPO"), "dpo")))
    assert [r["arm"] for r in other][0] == "`nnUNetTrainerMAPO_DPO` (dpo)" and len(other) == 3


def test_a_file_without_the_table_is_refused_and_an_empty_one_gets_a_table() -> None:
    with pytest.raises(RegimesTableError, match="No regimes table"):
        update_table("# notes\n\nno table here\n", [])
    with pytest.raises(RegimesTableError, match="columns"):
        read_table("| date | version | seeds |\n|---|---|---|\n")
    assert len(read_table(update_table("", regime_rows(results(), "a")))) == 1


def test_only_rows_with_a_dice_interval_are_drawn() -> None:
    rows = [{"date": "d", "version": "0.8", "data, configuration": "x 2d", "seeds": "3", "arm": "`A`",
             "Dice diff [95% CI]": "-0.88 [-1.35, -0.38]"},
            {"date": "d", "version": "0.8", "data, configuration": "x 2d", "seeds": "1", "arm": "B",
             "Dice diff [95% CI]": "ratio 1.014x"},
            {"date": "d", "version": "0.9", "data, configuration": "x 2d", "seeds": "1", "arm": "C",
             "Dice diff [95% CI]": "+1 [+0.5, +2]"}]
    assert dice_intervals(rows) == [("d 0.8 x 2d, 3 seed(s): A", -0.88, -1.35, -0.38),
                                    ("d 0.9 x 2d, 1 seed(s): C", 1, 0.5, 2)]


def test_the_command_writes_the_table_and_the_forest_figure(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "benchmarks" / "confirm"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results(equal_compute=True)))
    other = tmp_path / "benchmarks" / "ph2"
    other.mkdir()
    ph2 = results(dice=-0.005) | {"dataset": "Dataset501_PH2"}
    ph2["spec"] = ph2["spec"] | {"epochs": 40, "batch_size": 4}  # another protocol: allowed in the regimes table
    (other / "results.json").write_text(json.dumps(ph2))
    markdown, image = tmp_path / "benchmarks.md", tmp_path / "forest.png"
    markdown.write_text("# Benchmarks\n\n" + HEADER + "\ntext\n")
    assert main(["benchmark-compare", str(folder), str(other), "--regimes", str(markdown), "--forest", str(image)]) == 0
    assert "3 row(s) written" in capsys.readouterr().out
    rows = read_table(markdown.read_text())
    assert [r["data, configuration"] for r in rows] == ["Hippocampus 2d", "Hippocampus 2d", "PH2 2d"]
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000
    # the figure alone, from the table (no folders), and --forest without --regimes refused
    assert main(["benchmark-compare", "--regimes", str(markdown), "--forest", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").is_file()
    assert main(["benchmark-compare", str(folder), "--forest", str(image)]) == 2
    assert "give both" in capsys.readouterr().err
    (tmp_path / "plain.md").write_text("no table\n")
    assert main(["benchmark-compare", str(folder), "--regimes", str(tmp_path / "plain.md")]) == 2
    assert "No regimes table" in capsys.readouterr().err
    assert (tmp_path / "plain.md").read_text() == "no table\n"  # untouched when refused
