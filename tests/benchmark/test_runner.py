"""Tests of ``nnunetv2_mapo.benchmark.runner``: warm-up start, input errors, one end-to-end run."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from benchmark_helpers import MAPO, parse, spec

from nnunetv2_mapo.benchmark.cli import run as run_benchmark_from_args
from nnunetv2_mapo.benchmark.runner import EVALUATION_FILE, Benchmark
from nnunetv2_mapo.benchmark.spec import (
    BASELINE_TRAINER,
    EQUAL_COMPUTE_TRAINER,
    WARMUP_TRAINER,
    BenchmarkInputError,
    BenchmarkSpec,
    validate_spec,
)
from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.training.checkpointing import load_state, state_path


def test_start_from_warmup_gives_mapo_a_loadable_state(tmp_path: Path) -> None:
    warmup = tmp_path / "warmup" / "checkpoint_final.pth"
    warmup.parent.mkdir()
    torch.save({"current_epoch": 3, "network_weights": {}}, warmup)
    bench = Benchmark(spec(shared_warmup_epochs=3))
    mapo_folder, baseline_folder = tmp_path / "mapo" / "fold_0", tmp_path / "base" / "fold_0"
    assert bench._needs_start(str(mapo_folder), mapo=True)
    bench._start_from_warmup(str(warmup), str(mapo_folder), mapo=True, seed=7)
    bench._start_from_warmup(str(warmup), str(baseline_folder), mapo=False, seed=7)
    latest = mapo_folder / "checkpoint_latest.pth"
    assert latest.read_bytes() == warmup.read_bytes()
    assert os.path.isfile(state_path(str(latest), 3))
    assert not os.path.exists(state_path(str(baseline_folder / "checkpoint_latest.pth"), 3))
    state = load_state(str(latest), 3)
    assert state["round_index"] == 0 and state["preference_set"] is None and state["settings"] == {}
    generator = torch.Generator()
    generator.set_state(state["pair_generator"])
    assert torch.equal(torch.randint(0, 1000, (5,), generator=generator),
                       torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(7)))
    assert not bench._needs_start(str(mapo_folder), mapo=True)
    assert not bench._needs_start(str(baseline_folder), mapo=False)
    os.remove(state_path(str(latest), 3))  # a MAPO checkpoint without its state cannot be continued
    assert bench._needs_start(str(mapo_folder), mapo=True)


@pytest.mark.parametrize("single", [True, False])
def test_warmups_per_seed_or_one_for_all_seeds(tmp_path: Path, monkeypatch, single: bool) -> None:
    bench = Benchmark(spec(shared_warmup_epochs=2, seeds=3, single_warmup=single))
    bench.dataset_name, bench.folder = "Dataset990_Toy", str(tmp_path)
    trained, starts = [], []

    def fake_train(seed, fold, trainer, settings, what, extra_env=None):  # writes what nnUNetv2_train would
        trained.append((seed, trainer))
        folder = Path(bench.fold_folder(seed, trainer, fold))
        (folder / "validation").mkdir(parents=True, exist_ok=True)
        torch.save({"current_epoch": 2}, folder / "checkpoint_final.pth")
        (folder / "validation" / "summary.json").write_text("{}")

    def record_start(warmup_checkpoint, fold_folder, mapo, seed):
        starts.append((seed, os.path.relpath(warmup_checkpoint, tmp_path)))

    monkeypatch.setattr(bench, "_train", fake_train)
    monkeypatch.setattr(bench, "_start_from_warmup", record_start)
    monkeypatch.setattr(bench, "_evaluate", lambda seed, fold, trainer: Path(
        bench.fold_folder(seed, trainer, fold), EVALUATION_FILE).write_text("{}"))
    for seed in range(3):
        bench.run_pair(seed, 0)
    warmups = [seed for seed, trainer in trained if trainer == "nnUNetTrainerBenchmarkWarmup"]
    assert warmups == ([0] if single else [0, 1, 2])
    assert len(starts) == 6 and {seed for seed, _ in starts} == {0, 1, 2}
    for seed, source in starts:
        assert f"shared_arms{os.sep}" in source and f"{os.sep}seed_{0 if single else seed}{os.sep}" in source, source
    assert BenchmarkSpec.__dataclass_fields__["single_warmup"].default is False
    with pytest.raises(BenchmarkInputError, match="--single-warmup needs --shared-warmup-epochs"):
        validate_spec(spec(single_warmup=True))


def test_arms_are_shared_unless_the_folder_holds_its_own(tmp_path: Path) -> None:
    bench = Benchmark(spec(equal_compute=True))
    bench.dataset_name, bench.folder = "Dataset990_Toy", str(tmp_path / "benchmarks" / "variant")
    bench.equal_compute_iterations = 5
    mapo, baseline = bench.fold_folder(1, MAPO, 0), bench.fold_folder(1, BASELINE_TRAINER, 0)
    assert mapo.startswith(os.path.join(bench.folder, "seed_1", "nnUNet_results", "Dataset990_Toy"))
    assert baseline.startswith(str(tmp_path / "benchmarks" / "shared_arms" / "Dataset990_Toy__baseline__"))
    assert os.path.dirname(bench.fold_folder(1, WARMUP_TRAINER, 0)) == os.path.dirname(os.path.dirname(
        baseline)) + os.sep + f"{WARMUP_TRAINER}__nnUNetPlans__2d"
    assert "__equal_compute__" in bench.fold_folder(1, EQUAL_COMPUTE_TRAINER, 0)
    # a benchmark folder from before 0.6.0 trained its own baseline: it keeps using it
    own = Path(bench.folder, "seed_1", "nnUNet_results", "Dataset990_Toy", f"{BASELINE_TRAINER}__nnUNetPlans__2d")
    own.mkdir(parents=True)
    assert bench.fold_folder(1, BASELINE_TRAINER, 0) == str(own / "fold_0")
    assert bench.fold_folder(0, BASELINE_TRAINER, 0) != str(own / "fold_0").replace("seed_1", "seed_0")


def test_input_errors_before_any_work(tmp_path: Path, capsys) -> None:
    base = ["-c", "2d", "--epochs", "1", "--iterations", "1", "--val-iterations", "1", "--device", "cpu",
            "--workdir", str(tmp_path / "ws")]
    assert run_benchmark_from_args(parse(["-d", "990", *base])) == 2
    assert "Expected one Dataset990_* dataset" in capsys.readouterr().err
    assert run_benchmark_from_args(parse(["-d", "990", *base, "--raw-source", str(tmp_path / "nothing")])) == 2
    assert "not an nnU-Net raw dataset folder" in capsys.readouterr().err
    assert run_benchmark_from_args(parse(["-d", "990", *base, "--seeds", "0"])) == 2
    assert "--seeds must be an integer >= 1" in capsys.readouterr().err
    assert run_benchmark_from_args(parse(["-d", "990", *base, "--settings", '{"mapo_bta": 1}'])) == 2
    assert "mapo_beta" in capsys.readouterr().err
    # a dataset with plans, asked for a configuration the plans do not have
    raw = write_synthetic_dataset(str(tmp_path / "src"), 990, "Toy", dim=2, num_cases=2, shape=(8, 8))
    pre = tmp_path / "ws" / "nnUNet_preprocessed" / "Dataset990_Toy"
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {"batch_size": 2}}}))
    argv = ["-d", "990", *base, "--raw-source", raw]
    assert run_benchmark_from_args(parse([*argv[:2], "-c", "3d_fullres", *argv[4:]])) == 2
    assert "Configuration '3d_fullres' is not in" in capsys.readouterr().err
    assert run_benchmark_from_args(parse(["-d", "991", *base, "--raw-source", raw])) == 2
    assert "is not named Dataset991_*" in capsys.readouterr().err
    assert run_benchmark_from_args(parse([*argv, "-f", "5"])) == 2
    assert "folds 0-4" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- end to end
E2E_ID = 993


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("benchmark")
    source = write_synthetic_dataset(str(root / "source"), E2E_ID, "BenchToy", dim=2, num_cases=10, shape=(48, 48),
                                     seed=4)
    before = sorted((p, os.path.getmtime(os.path.join(d, p))) for d, _, files in os.walk(source) for p in files)
    argv = ["-d", str(E2E_ID), "-c", "2d", "-f", "0", "--epochs", "1", "--iterations", "2", "--val-iterations", "1",
            "--seeds", "1", "--shared-warmup-epochs", "1", "--batch-size", "2", "--device", "cpu",
            "--workdir", str(root / "ws"), "--raw-source", source, "--settings", '{"mapo_cases_per_round": 4}',
            "--train-cases", "7",  # the low-data protocol: 7 cases trained on, the other 3 held out
            "--equal-compute"]
    return {"root": root, "source": source, "before": before, "argv": argv}


@pytest.mark.e2e
def test_benchmark_end_to_end(e2e_run: dict, capsys) -> None:
    assert run_benchmark_from_args(parse(e2e_run["argv"])) == 0
    first = capsys.readouterr().out
    assert "shared warm-up" in first and "evaluating nnUNetTrainerMAPO" in first
    folder = Path(next(line.split("results: ")[1].split(" (and")[0] for line in first.splitlines()
                       if "results: " in line)).parent
    results = json.loads((folder / "results.json").read_text())
    assert results["trainers"] == [BASELINE_TRAINER, EQUAL_COMPUTE_TRAINER, MAPO] and results["batch_size"] == 2
    runs = {r["trainer"]: r for r in results["runs"]}
    assert set(runs) == {BASELINE_TRAINER, EQUAL_COMPUTE_TRAINER, MAPO} and not results["missing"]
    # 1 epoch of 2 steps with 0.25 pair rows each, one round of 4 cases x 9 passes at a third: (0.5 + 12) / 2 extra
    assert results["equal_compute_iterations"] == 9  # ceil(2 + 6.25)
    equal_log = torch.load(os.path.join(runs[EQUAL_COMPUTE_TRAINER]["output_folder"], "checkpoint_final.pth"),
                           map_location="cpu", weights_only=False)["logging"]
    assert len(equal_log["train_losses"]) == 2 and "paired_equal_compute" in results
    for trainer, record in runs.items():
        assert math.isfinite(record["Dice"]), trainer
        assert "HD95" in record and "ASD" in record and record["num_cases"] == 3  # every held-out case
        assert record["peak_rss_bytes"] > 0 and record["wall_seconds"] > 0 and record["epochs"] == 1
        assert "nnUNetPlans_bs2__2d" in record["output_folder"]
        assert os.path.isfile(os.path.join(record["output_folder"], EVALUATION_FILE))
    assert runs[MAPO]["preference_seconds"] > 0 and runs[BASELINE_TRAINER]["preference_seconds"] is None
    # both continued from the same warm-up epoch, with the learning rate of a 2-epoch schedule at epoch 1
    base_curves, mapo_curves = runs[BASELINE_TRAINER]["curves"], runs[MAPO]["curves"]
    assert base_curves["train_losses"][0] == mapo_curves["train_losses"][0]
    assert len(base_curves["train_losses"]) == len(mapo_curves["train_losses"]) == 2
    logging = torch.load(os.path.join(runs[MAPO]["output_folder"], "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["logging"]
    assert logging["lrs"][1] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert math.isfinite(logging["mapo_regen_seconds"][1])
    logged_chosen = logging["mapo_dice_chosen"][1]  # NaN when the tiny round found no pair
    assert runs[MAPO]["round_dice_chosen"] == (logged_chosen if math.isfinite(logged_chosen) else None)
    assert runs[BASELINE_TRAINER]["round_dice_no_dropout"] is None
    paired = results["paired"]["0"]  # both trainers on the same 3 held-out cases, one seed
    assert set(paired) == {"Dice", "HD95", "ASD", "NSD"} and paired["Dice"]["seeds"] == 1
    assert paired["Dice"]["cases"] == 3 and math.isfinite(paired["Dice"]["mean_difference"])
    assert "split: 7 training cases, 3 held out (fold 0)" in first
    table = (folder / "results.md").read_text()
    assert "Paired per-case differences" in table
    assert "| quantity |" in table and "MAPO / baseline" in table and "budget overrides only" in table
    dice_row = next(line for line in table.splitlines() if line.startswith("| Dice"))
    cells = [cell.strip() for cell in dice_row.split("|")[1:-1]]  # quantity, three arms, two ratios
    assert len(cells) == 6 and "–" not in cells[1:] and "MAPO / equal compute" in table
    for image in ("metrics.png", "training_curves.png"):
        assert (folder / image).stat().st_size > 1000
    plans_variant = Path(e2e_run["root"]) / "ws" / "nnUNet_preprocessed" / f"Dataset{E2E_ID}_BenchToy"
    split = json.loads((plans_variant / "splits_final.json").read_text())
    assert len(split) == 1 and len(split[0]["train"]) == 7 and len(split[0]["val"]) == 3
    assert json.loads((plans_variant / "nnUNetPlans_bs2.json").read_text())["configurations"]["2d"]["batch_size"] == 2
    source = e2e_run["source"]
    after = sorted((p, os.path.getmtime(os.path.join(d, p))) for d, _, files in os.walk(source) for p in files)
    assert after == e2e_run["before"], "the raw source must not be written to"

    started = time.monotonic()
    assert run_benchmark_from_args(parse(e2e_run["argv"])) == 0
    second = capsys.readouterr().out
    assert time.monotonic() - started < 90
    assert f"skip {BASELINE_TRAINER} (finished)" in second and f"skip {MAPO} (finished)" in second
    assert f"skip {EQUAL_COMPUTE_TRAINER} (finished)" in second
    assert "training" not in second.replace("training_curves", "")
    again = json.loads((folder / "results.json").read_text())
    assert [r["Dice"] for r in again["runs"]] == [r["Dice"] for r in results["runs"]]

    # a second test set from another source, added to the finished benchmark: predicted, scored, nothing retrained
    other_source = write_synthetic_dataset(str(e2e_run["root"] / "other"), E2E_ID + 1, "OtherToy", dim=2,
                                           num_cases=4, shape=(48, 48), seed=9)
    assert run_benchmark_from_args(parse([*e2e_run["argv"], "--test-source", other_source])) == 0
    fourth = capsys.readouterr().out
    assert "training" not in fourth.replace("training_curves", "") and f"{MAPO} predicts Dataset994_OtherToy" in fourth
    crossed = json.loads((folder / "results.json").read_text())
    assert crossed["test_source"] == "Dataset994_OtherToy"
    assert set(crossed["paired_test_source"]) == {EQUAL_COMPUTE_TRAINER, MAPO}
    assert crossed["paired_test_source"][MAPO]["0"]["Dice"]["cases"] == 4  # every case of the other dataset
    assert crossed["paired"] == results["paired"]  # the held-out comparison is unchanged beside it
    predicted = os.listdir(os.path.join(runs[MAPO]["output_folder"], "test_source", "Dataset994_OtherToy"))
    assert sorted(p for p in predicted if p.startswith("case_")) == [f"case_{i:03d}.nii.gz" for i in range(4)]
    assert "## Test source Dataset994_OtherToy" in (folder / "results.md").read_text()
    # a test source of another task (two channels) is refused before any work
    two_channels = write_synthetic_dataset(str(e2e_run["root"] / "bad"), E2E_ID + 2, "TwoChannels", dim=2,
                                           num_cases=2, shape=(16, 16), num_channels=2)
    assert run_benchmark_from_args(parse([*e2e_run["argv"], "--test-source", two_channels])) == 2
    assert "is not the same task: it has 2 input channel(s)" in capsys.readouterr().err

    # another MAPO trainer in the same workspace: a folder of its own that trains only its MAPO arm
    variant = [*e2e_run["argv"], "--mapo-trainer", "nnUNetTrainerMAPO_GTAnchored"]
    assert run_benchmark_from_args(parse(variant)) == 0
    third = capsys.readouterr().out
    assert f"skip {BASELINE_TRAINER} (finished)" in third and f"skip {EQUAL_COMPUTE_TRAINER} (finished)" in third
    assert "training MAPO" in third and "skip shared warm-up (finished)" in third
    assert "training the shared warm-up" not in third and "training the baseline" not in third
    variant_folder = Path(next(line.split("results: ")[1].split(" (and")[0] for line in third.splitlines()
                               if "results: " in line)).parent
    assert variant_folder != folder and variant_folder.parent == folder.parent
    variant_results = json.loads((variant_folder / "results.json").read_text())
    shared = {r["trainer"]: r for r in variant_results["runs"]}
    assert shared[BASELINE_TRAINER]["Dice"] == runs[BASELINE_TRAINER]["Dice"]
    assert shared[BASELINE_TRAINER]["output_folder"] == runs[BASELINE_TRAINER]["output_folder"]
    assert "shared_arms" in runs[BASELINE_TRAINER]["output_folder"]
    assert math.isfinite(shared["nnUNetTrainerMAPO_GTAnchored"]["Dice"])

    # the same benchmark folder with another budget is refused before any work
    other = [*e2e_run["argv"], "--name", folder.name]
    other[other.index("--iterations") + 1] = "3"
    assert run_benchmark_from_args(parse(other)) == 2
    assert "holds a benchmark with other settings" in capsys.readouterr().err
