"""Tests of ``nnunetv2_mapo.benchmark.compare``: several variants' benchmarks in one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.compare import CompareInputError, compare_table, load_results
from nnunetv2_mapo.benchmark.spec import BASELINE_TRAINER, EQUAL_COMPUTE_TRAINER
from nnunetv2_mapo.commands.cli import main

SPEC = {"dataset_id": 4, "configuration": "2d", "epochs": 40, "iterations": 20, "val_iterations": 4, "batch_size": 32,
        "shared_warmup_epochs": 0, "single_warmup": False, "device": "cpu", "train_cases": 20, "split_file": None,
        "seeds": 1, "folds": [0], "settings": {"mapo_regen_every": 2}, "equal_compute": True}


def stat(mean: float) -> dict:
    return {"mean": mean, "std": float("nan"), "n": 1}


def paired(dice: float, low: float, high: float, wins: int) -> dict:
    cell = {"mean_difference": dice, "ci_low": low, "ci_high": high, "relative": 0.0, "seed_wins": wins, "seeds": 1,
            "cases": 80}
    return {"0": {"Dice": cell, "HD95": cell | {"mean_difference": -0.5}, "ASD": cell | {"mean_difference": -0.1}}}


def write(folder: Path, trainer: str, dice: float, wall: float, **spec) -> Path:
    folder.mkdir(parents=True)
    summary = {BASELINE_TRAINER: {"Dice": stat(0.80), "HD95": stat(3.0), "ASD": stat(1.0), "NSD": stat(0.9),
                                  "wall_seconds": stat(100.0), "preference_share": stat(float("nan"))},
               EQUAL_COMPUTE_TRAINER: {"Dice": stat(0.81), "HD95": stat(2.9), "ASD": stat(0.9), "NSD": stat(0.91),
                                       "wall_seconds": stat(110.0), "preference_share": stat(float("nan"))},
               trainer: {"Dice": stat(dice), "HD95": stat(2.5), "ASD": stat(0.8), "NSD": stat(0.92),
                         "wall_seconds": stat(wall), "preference_share": stat(0.04)}}
    results = {"spec": SPEC | {"mapo_trainer": trainer} | spec, "summary": summary,
               "paired": paired(dice - 0.80, -0.01, 0.03, 1),
               "paired_equal_compute": paired(dice - 0.81, -0.02, 0.02, 0)}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_one_row_per_arm_and_paired_rows_per_variant(tmp_path: Path) -> None:
    a = write(tmp_path / "a", "nnUNetTrainerMAPO", 0.82, 112.0)
    b = write(tmp_path / "b", "nnUNetTrainerMAPO_GTAnchored", 0.83, 105.0, settings={"mapo_regen_every": 2,
                                                                                   "mapo_beta": 0.2})
    table = compare_table(load_results([str(a), str(b)]), ["a", "b"])
    means = table.split("\n\n")[0]
    rows = {line.split("|")[1].strip(): line for line in means.splitlines() if line.startswith("| nnUNet")}
    assert "| 0.8000 | 3.00 | 1.000 | 0.9000 | 1.00x | – |" in rows[BASELINE_TRAINER]
    assert "| 0.8100 | 2.90 | 0.900 | 0.9100 | 1.10x | – |" in rows[EQUAL_COMPUTE_TRAINER]
    assert "| 0.8300 | 2.50 | 0.800 | 0.9200 | 1.05x | 4.0% |" in rows["nnUNetTrainerMAPO_GTAnchored (b)"]
    assert "| nnUNetTrainerMAPO_GTAnchored (b) | baseline | +0.0300 [-0.0100, +0.0300] 1/1 | -0.50" in table
    assert "| nnUNetTrainerMAPO_GTAnchored (b) | equal compute | +0.0200 [-0.0200, +0.0200] 0/1 |" in table
    assert table.count("| nnUNetTrainerMAPO (a) | ") == 3  # its means, and its two paired rows


def test_one_trainer_with_two_settings_gets_two_named_rows(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain", "nnUNetTrainerMAPO", 0.79, 112.0)
    gated = write(tmp_path / "gated", "nnUNetTrainerMAPO", 0.83, 112.0,
                  settings={"mapo_regen_every": 2, "mapo_start_dice": 0.7})
    table = compare_table(load_results([str(plain), str(gated)]), ["plain", "gated"])
    assert "| nnUNetTrainerMAPO (plain) | 0.7900 |" in table
    assert "| nnUNetTrainerMAPO (gated) | 0.8300 |" in table
    assert "| nnUNetTrainerMAPO (gated) | baseline | +0.0300 " in table
    assert "(1)" in compare_table(load_results([str(plain)]))  # unnamed: numbered in the order given


def test_other_protocols_and_missing_results_are_refused(tmp_path: Path, capsys) -> None:
    a = write(tmp_path / "a", "nnUNetTrainerMAPO", 0.82, 112.0)
    b = write(tmp_path / "b", "nnUNetTrainerMAPO_DPOP", 0.82, 112.0, epochs=50)
    c = write(tmp_path / "c", "nnUNetTrainerMAPO_SimPO", 0.82, 112.0, settings={"initial_lr": 0.02})
    with pytest.raises(CompareInputError, match=r"\['epochs'\] differ"):
        load_results([str(a), str(b)])
    with pytest.raises(CompareInputError, match="settings"):
        load_results([str(a), str(c)])
    assert main(["benchmark-compare", str(a), str(tmp_path / "nothing")]) == 2
    assert "results.json does not exist" in capsys.readouterr().err
    out = tmp_path / "table.md"
    assert main(["benchmark-compare", str(a), "-o", str(out)]) == 0
    assert out.read_text().strip() == capsys.readouterr().out.strip()
    assert "| nnUNetTrainerMAPO (a) |" in out.read_text()  # the command names rows by their folders


def test_the_round_signature_is_drawn_from_the_runs_curves(tmp_path: Path, capsys) -> None:
    nan = float("nan")
    folders = []
    for name, trainer in (("a", "nnUNetTrainerMAPO"), ("b", "nnUNetTrainerMAPO_DPO")):
        folder = write(tmp_path / name, trainer, 0.82, 112.0)
        results = json.loads((folder / "results.json").read_text())
        results["trainers"] = [BASELINE_TRAINER, trainer]
        results["runs"] = [
            {"trainer": BASELINE_TRAINER, "curves": {"val_losses": [-0.1, -0.5, -0.6, -0.7]}},
            {"trainer": trainer, "curves": {"val_losses": [-0.1, -0.5, -0.55, -0.6],
                                            "mapo_margin_nats": [nan, 0.4, 1.1, 1.9],
                                            "mapo_reward_accuracy": [nan, 0.6, 0.8, 1.0],
                                            "mapo_regen_seconds": [nan, 2.0, nan, 2.1]}}]
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(str(folder))
    image = tmp_path / "signature.png"
    assert main(["benchmark-compare", *folders, "--signature", str(image)]) == 0
    assert f"round signature: {image}" in capsys.readouterr().out
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000
