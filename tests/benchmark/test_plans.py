"""Tests of ``nnunetv2_mapo.benchmark.plans``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.plans import make_plans_variant, write_plans_variant
from nnunetv2_mapo.benchmark.spec import (
    BenchmarkInputError,
)


def toy_plans() -> dict:
    return {"dataset_name": "Dataset990_Toy", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2},
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}}


def test_make_plans_variant_changes_batch_size_and_name_only() -> None:
    plans = toy_plans()
    variant = make_plans_variant(plans, "3d_cascade_fullres", 5)
    assert plans == toy_plans(), "the input must not change"
    assert variant["plans_name"] == "nnUNetPlans_bs5"
    assert variant["configurations"]["3d_cascade_fullres"]["batch_size"] == 5
    assert variant["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]
    assert variant["configurations"]["3d_cascade_fullres"]["inherits_from"] == "3d_fullres"
    with pytest.raises(BenchmarkInputError, match="'3d_lowres' is not in"):
        make_plans_variant(plans, "3d_lowres", 2)
    with pytest.raises(BenchmarkInputError, match="batch-size"):
        make_plans_variant(plans, "3d_fullres", 0)


def test_write_plans_variant_beside_the_plans(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkInputError, match="plan and preprocess"):
        write_plans_variant(str(tmp_path), "3d_fullres", 3)
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(toy_plans()))
    assert write_plans_variant(str(tmp_path), "3d_fullres", 3) == "nnUNetPlans_bs3"
    path = tmp_path / "nnUNetPlans_bs3.json"
    assert json.loads(path.read_text()) == make_plans_variant(toy_plans(), "3d_fullres", 3)
    written = path.stat().st_mtime_ns
    time.sleep(0.01)
    write_plans_variant(str(tmp_path), "3d_fullres", 3)
    assert path.stat().st_mtime_ns == written, "an up-to-date variant is not rewritten"
