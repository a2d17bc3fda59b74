"""``nnunetv2_mapo benchmark``: statistics, tables, plans variants, input checks, and one end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from nnunetv2_mapo.benchmark import (
    BASELINE_TRAINER,
    DEFAULT_MAPO_TRAINER,
    EVALUATION_FILE,
    Benchmark,
    BenchmarkInputError,
    BenchmarkSpec,
    add_benchmark_arguments,
    aggregate,
    epoch_timing,
    format_stat,
    format_table,
    make_plans_variant,
    paired_ratios,
    round_dice,
    run_benchmark_from_args,
    run_process,
    summarize,
    trainer_settings,
    validate_spec,
    write_plans_variant,
)
from nnunetv2_mapo.checkpointing import load_state, state_path
from nnunetv2_mapo.synthetic import write_synthetic_dataset

MAPO = DEFAULT_MAPO_TRAINER


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    return parser.parse_args(argv)


def spec(**changes) -> BenchmarkSpec:
    values = dict(dataset_id=990, configuration="2d", folds=(0,), epochs=4, iterations=3, val_iterations=2)
    values.update(changes)
    return BenchmarkSpec(**values)


def run(trainer: str, seed: int, fold: int, **values) -> dict:
    return {"trainer": trainer, "seed": seed, "fold": fold, **values}


# ------------------------------------------------------------------------------------------------ statistics
def test_aggregate_is_mean_and_sample_std_of_finite_values() -> None:
    stat = aggregate([1.0, 2.0, 3.0, math.nan, None])
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(2.0) and stat["std"] == pytest.approx(1.0)
    one = aggregate([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"])
    empty = aggregate([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_paired_ratios_pair_runs_by_seed_and_fold() -> None:
    runs = [run(BASELINE_TRAINER, 0, 0, Dice=0.5, wall_seconds=100.0, preference_seconds=None),
            run(MAPO, 0, 0, Dice=0.6, wall_seconds=150.0, preference_seconds=20.0),
            run(BASELINE_TRAINER, 1, 0, Dice=0.8, wall_seconds=100.0, preference_seconds=None),
            run(MAPO, 1, 0, Dice=0.8, wall_seconds=250.0, preference_seconds=30.0),
            run(MAPO, 2, 0, Dice=0.1, wall_seconds=1.0)]  # no baseline partner: left out
    ratios = paired_ratios(runs, BASELINE_TRAINER, MAPO)
    assert ratios["Dice"]["n"] == 2 and ratios["Dice"]["mean"] == pytest.approx((1.2 + 1.0) / 2)
    assert ratios["wall_seconds"]["mean"] == pytest.approx(2.0)
    assert ratios["wall_seconds"]["std"] == pytest.approx(math.sqrt(0.5))
    assert ratios["preference_seconds"]["n"] == 0
    summary = summarize(runs, [BASELINE_TRAINER, MAPO])
    assert summary[MAPO]["Dice"]["n"] == 3 and summary[BASELINE_TRAINER]["Dice"]["mean"] == pytest.approx(0.65)


def test_epoch_timing_counts_own_epochs_only() -> None:
    logging = {"epoch_start_timestamps": [0.0, 10.0, 20.0, 40.0], "epoch_end_timestamps": [9.0, 19.0, 30.0, 50.0],
               "mapo_regen_seconds": [math.nan, math.nan, 4.0, math.nan]}
    timing = epoch_timing(logging, first_epoch=2)
    assert timing["epochs"] == 2 and timing["training_seconds"] == pytest.approx(20.0)
    assert timing["seconds_per_epoch"] == pytest.approx(10.0)
    assert timing["preference_seconds"] == pytest.approx(4.0) and timing["preference_share"] == pytest.approx(0.2)
    plain = epoch_timing({k: v for k, v in logging.items() if k != "mapo_regen_seconds"}, first_epoch=0)
    assert plain["epochs"] == 4 and plain["preference_seconds"] is None


def test_round_dice_averages_the_rounds_after_the_warmup() -> None:
    nan = math.nan
    logging = {"mapo_dice_chosen": [0.1, nan, 0.8, nan, 0.6], "mapo_dice_rejected": [0.0, nan, 0.5, nan, 0.3],
               "mapo_dice_no_dropout": [nan, nan, nan, nan, nan]}
    values = round_dice(logging, first_epoch=2)  # epoch 0's value belongs to the warm-up and is left out
    assert values["round_dice_chosen"] == pytest.approx(0.7)
    assert values["round_dice_rejected"] == pytest.approx(0.4)
    assert values["round_dice_no_dropout"] is None  # logged, but no round ran / older trainer
    assert set(round_dice({}, first_epoch=0).values()) == {None}  # the baseline logs none of them


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


# ------------------------------------------------------------------------------------------- plans variant
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


# -------------------------------------------------------------------------------------- settings and checks
def test_trainer_settings_per_role() -> None:
    s = spec(shared_warmup_epochs=2, settings={"mapo_beta": 0.5, "initial_lr": 0.02})
    warmup, baseline, mapo = (trainer_settings(s, role, 3) for role in ("warmup", "baseline", "mapo"))
    assert warmup == {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2,
                      "save_every": 5, "initial_lr": 0.02}
    assert baseline == {**warmup, "num_epochs": 6}
    assert mapo == {**baseline, "mapo_beta": 0.5, "mapo_seed": 3, "mapo_warmup_epochs": 2}
    assert "mapo_warmup_epochs" not in trainer_settings(spec(), "mapo", 0)
    with pytest.raises(ValueError):
        trainer_settings(s, "other", 0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"seeds": 0}, "--seeds must be an integer >= 1"),
    ({"epochs": 0}, "--epochs"),
    ({"batch_size": 0}, "--batch-size"),
    ({"folds": ()}, "at least one fold"),
    ({"folds": (0, 0)}, "repeated"),
    ({"shared_warmup_epochs": -1}, "--shared-warmup-epochs"),
    ({"settings": {"num_epochs": 3}}, "set by the benchmark"),
    ({"settings": {"mapo_seed": 3}}, "mapo_seed"),
    ({"settings": {"mapo_warmup_epochs": 1}, "shared_warmup_epochs": 2}, "remove mapo_warmup_epochs"),
    ({"settings": {"mapo_warmup_epochs": 4}}, "leaves no epoch"),
    ({"device": "tpu"}, "--device"),
])
def test_validate_spec_rejects(changes: dict, message: str) -> None:
    with pytest.raises(BenchmarkInputError, match=message):
        validate_spec(spec(**changes))


def test_trainer_module_applies_only_nnunet_keys() -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mapo.benchmark_trainers import (
        nnunet_overrides,
        nnUNetTrainerBenchmarkBaseline,
        nnUNetTrainerBenchmarkWarmup,
        schedule_epochs,
    )
    from nnunetv2_mapo.config import MAPOConfigError

    environ = {"nnUNet_mapo_config": json.dumps({"num_epochs": 3, "initial_lr": 0.02, "mapo_beta": 0.5})}
    assert nnunet_overrides(environ) == {"num_epochs": 3, "initial_lr": 0.02}
    with pytest.raises(MAPOConfigError, match="num_epochs"):
        nnunet_overrides({"nnUNet_mapo_config": '{"num_epochs": 0}'})
    assert schedule_epochs(3, {}) == 3 and schedule_epochs(3, {"nnUNet_benchmark_schedule_epochs": "8"}) == 8
    for bad in ("2", "x", "0"):
        with pytest.raises(MAPOConfigError):
            schedule_epochs(3, {"nnUNet_benchmark_schedule_epochs": bad})
    # Otherwise exactly nnU-Net's trainer: the baseline overrides only set-up and a log line.
    assert nnUNetTrainerBenchmarkBaseline.__bases__ == (nnUNetTrainer,)
    own = {k for k, v in vars(nnUNetTrainerBenchmarkBaseline).items() if callable(v)}
    assert own == {"__init__", "initialize", "on_train_start"}
    assert {k for k, v in vars(nnUNetTrainerBenchmarkWarmup).items() if callable(v)} == {
        "configure_optimizers", "perform_actual_validation"}


# ---------------------------------------------------------------------------------------------- mechanics
def test_run_process_measures_this_childs_peak_memory(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    lines: list[str] = []
    code = "import sys; block = b'x' * (300 * 2**20); print('allocated', flush=True); sys.exit(3)"
    invocation = run_process([sys.executable, "-c", code], dict(os.environ), str(log), lines.append, 0.05)
    assert invocation.returncode == 3 and not invocation.interrupted
    assert invocation.max_rss_bytes is not None and invocation.max_rss_bytes >= 300 * 2**20
    assert "allocated" in lines and "allocated" in log.read_text()
    small = run_process([sys.executable, "-c", "pass"], dict(os.environ), str(log), None, 0.05)
    assert small.returncode == 0 and small.max_rss_bytes < 300 * 2**20, "the previous child must not count"


def test_run_process_stops_the_command_on_interrupt(tmp_path: Path) -> None:
    code = "import time; print('ready', flush=True); time.sleep(120)"

    def interrupt_when_ready(line: str) -> None:
        if line == "ready":
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        run_process([sys.executable, "-c", code], dict(os.environ), str(tmp_path / "log"), interrupt_when_ready, 0.05)
    assert time.monotonic() - started < 20, "SIGINT must stop the command (the launcher resets its handler)"
    invocation = info.value.invocation
    assert invocation.interrupted and invocation.returncode != 0


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
        assert source.startswith(f"seed_{0 if single else seed}{os.sep}"), source
    assert BenchmarkSpec.__dataclass_fields__["single_warmup"].default is False
    with pytest.raises(BenchmarkInputError, match="--single-warmup needs --shared-warmup-epochs"):
        validate_spec(spec(single_warmup=True))


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
            "--workdir", str(root / "ws"), "--raw-source", source, "--settings", '{"mapo_cases_per_round": 4}']
    return {"root": root, "source": source, "before": before, "argv": argv}


@pytest.mark.e2e
def test_benchmark_end_to_end(e2e_run: dict, capsys) -> None:
    assert run_benchmark_from_args(parse(e2e_run["argv"])) == 0
    first = capsys.readouterr().out
    assert "shared warm-up" in first and "evaluating nnUNetTrainerMAPO" in first
    folder = Path(next(line.split("results: ")[1].split(" (and")[0] for line in first.splitlines()
                       if "results: " in line)).parent
    results = json.loads((folder / "results.json").read_text())
    assert results["trainers"] == [BASELINE_TRAINER, MAPO] and results["batch_size"] == 2
    runs = {r["trainer"]: r for r in results["runs"]}
    assert set(runs) == {BASELINE_TRAINER, MAPO} and not results["missing"]
    for trainer, record in runs.items():
        assert math.isfinite(record["Dice"]), trainer
        assert "HD95" in record and "ASD" in record and record["num_cases"] == 2
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
    table = (folder / "results.md").read_text()
    assert "| quantity |" in table and "MAPO / baseline" in table and "budget overrides only" in table
    dice_row = next(line for line in table.splitlines() if line.startswith("| Dice"))
    assert dice_row.count("|") == 5 and dice_row.split("|")[4].strip() not in ("", "–")
    for image in ("metrics.png", "training_curves.png"):
        assert (folder / image).stat().st_size > 1000
    plans_variant = Path(e2e_run["root"]) / "ws" / "nnUNet_preprocessed" / f"Dataset{E2E_ID}_BenchToy"
    assert json.loads((plans_variant / "nnUNetPlans_bs2.json").read_text())["configurations"]["2d"]["batch_size"] == 2
    source = e2e_run["source"]
    after = sorted((p, os.path.getmtime(os.path.join(d, p))) for d, _, files in os.walk(source) for p in files)
    assert after == e2e_run["before"], "the raw source must not be written to"

    started = time.monotonic()
    assert run_benchmark_from_args(parse(e2e_run["argv"])) == 0
    second = capsys.readouterr().out
    assert time.monotonic() - started < 90
    assert f"skip {BASELINE_TRAINER} (finished)" in second and f"skip {MAPO} (finished)" in second
    assert "training" not in second.replace("training_curves", "")
    again = json.loads((folder / "results.json").read_text())
    assert [r["Dice"] for r in again["runs"]] == [r["Dice"] for r in results["runs"]]

    # the same benchmark folder with another budget is refused before any work
    other = [*e2e_run["argv"], "--name", folder.name]
    other[other.index("--iterations") + 1] = "3"
    assert run_benchmark_from_args(parse(other)) == 2
    assert "holds a benchmark with other settings" in capsys.readouterr().err
