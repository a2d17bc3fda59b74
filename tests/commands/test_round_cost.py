"""``nnunetv2_mapo round-cost``: patch parsing, the planner-like U-Net, the share formula, one tiny timed run."""

from __future__ import annotations

import argparse
import json

import pytest

from nnunetv2_mapo.commands.round_cost import (
    RoundCostInputError,
    add_arguments,
    format_report,
    measure,
    parse_patch,
    plans_like_unet,
    projected_share,
    run,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("text", "patch"), [("128x128", (128, 128)), ("40X56x40", (40, 56, 40))])
def test_parse_patch(text, patch):
    assert parse_patch(text) == patch


@pytest.mark.parametrize("text", ["128", "4x4", "8x8x8x8", "axb", "", "64x-64"])
def test_parse_patch_rejects(text):
    with pytest.raises(RoundCostInputError, match="expected 2 or 3 integers >= 8"):
        parse_patch(text)


@pytest.mark.parametrize(("patch", "stages", "last_features"), [
    ((40, 56, 40), 4, 256),  # nnU-Net's plans for Dataset004_Hippocampus 3d_fullres: 4 stages, 32..256
    ((192, 256), 6, 512),  # Dataset501_PH2 2d: 6 stages, 32..512
    ((128, 128, 128), 6, 320),  # capped at 6 stages and 320 features in 3D
])
def test_plans_like_unet_matches_nnunets_plans(patch, stages, last_features):
    network = plans_like_unet(patch)
    assert len(network.encoder.stages) == stages
    assert network.encoder.output_channels[-1] == last_features


def test_projected_share():
    # 100 cases x 2 s = 200 s of rounds against 50 x 250 steps x 1 s
    assert projected_share(2.0, 1.0, 100, 50, 250) == pytest.approx(200 / (200 + 12500))
    assert projected_share(2.0, 1.0, 100, 1, 1) > projected_share(2.0, 1.0, 100, 50, 250)
    with pytest.raises(ValueError):
        projected_share(0.0, 1.0, 100, 50, 250)


def test_measure_and_report_on_a_tiny_patch():
    result = measure((16, 16), [1, 2], num_hypotheses=2, batch_size=1, repeats=1)
    assert result["voxels"] == 256 and result["stages"] == 3 and result["step_seconds"] > 0
    assert [r["cases"] for r in result["rounds"]] == [1, 2]
    assert all(r["seconds"] > 0 and r["per_case"] == pytest.approx(r["seconds"] / r["cases"])
               for r in result["rounds"])
    report = format_report([result], cases_per_round=10, regen_every=2, iterations=5)
    assert report.count("| 16x16 |") == 2 and "10 cases per round every 2 epochs of 5 iterations" in report
    share = projected_share(result["rounds"][-1]["per_case"], result["step_seconds"], 10, 2, 5)
    assert f"{100 * share:.2f}%" in report


def test_cli_rejects_bad_input_before_timing(capsys):
    assert run(parse(["--patches", "12"])) == 2
    assert "Patch size '12' is invalid" in capsys.readouterr().err
    assert run(parse(["--patches", "16x16", "-K", "1"])) == 2
    assert "-K must be >= 2" in capsys.readouterr().err


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "cost.json"
    argv = ["--patches", "16x16", "--cases", "1", "-K", "2", "--repeats", "1", "--batch-size", "1", "--json", str(path)]
    assert run(parse(argv)) == 0
    assert "| 16x16 | 256 | 3 | 1 |" in capsys.readouterr().out
    assert json.loads(path.read_text())["results"][0]["patch"] == [16, 16]
