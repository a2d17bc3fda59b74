"""A second test set from another source: ``nnunetv2_mapo benchmark --test-source RAW_DATASET``.

Every training of the benchmark (baseline, MAPO, the equal-compute arm) predicts every case of another raw nnU-Net
dataset with nnU-Net's own ``nnUNetv2_predict`` from its ``checkpoint_final.pth`` (no retraining: the option can be
added to a finished benchmark), into ``fold_X/test_source/<Dataset>/``, and the predictions are scored like the
held-out cases (:func:`nnunetv2_mapo.evaluation.folder.evaluate_folder` against the other dataset's ``labelsTr``)
into ``fold_X/benchmark_summary_<Dataset>.json``. The results then hold the paired per-case comparison on that set
beside the in-domain one (``paired_test_source``), which ``results.md`` and the regimes table report side by side.

The other dataset must be the same task: the same number of input channels, the same labels and the same file
ending; otherwise the benchmark refuses it before any training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_mapo.benchmark.spec import BenchmarkFailed, BenchmarkInputError

PREDICTION_FOLDER = "test_source"


def source_name(test_source: str) -> str:
    """The test source's name: its folder's name (``Dataset504_CVCClinicDB``)."""
    return os.path.basename(os.path.normpath(test_source))


def summary_file_name(dataset_name: str) -> str:
    """The evaluation summary of one training on the test source: ``benchmark_summary_<Dataset>.json``."""
    return f"benchmark_summary_{dataset_name}.json"


def _dataset_json(folder: str, what: str) -> dict[str, Any]:
    path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(path):
        raise BenchmarkInputError(f"{what} {folder} is not an nnU-Net raw dataset (no dataset.json).")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_test_source(test_source: str, raw_dataset_folder: str) -> str:
    """Refuses a test source that is not the benchmark dataset's task; returns its name (its folder's name).

    Args:
        test_source: The other raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json``).
        raw_dataset_folder: The benchmark's raw dataset.

    Raises:
        BenchmarkInputError: A missing folder, no labelled case, or other channels, labels or file ending.
    """
    other = _dataset_json(test_source, "--test-source")
    own = _dataset_json(raw_dataset_folder, "The benchmark's dataset")
    name = source_name(test_source)
    problems = []
    own_channels = own.get("channel_names", own.get("modality", {}))
    other_channels = other.get("channel_names", other.get("modality", {}))
    if len(own_channels) != len(other_channels):
        problems.append(f"{len(other_channels)} input channel(s) {other_channels}, the benchmark's dataset "
                        f"{len(own_channels)} {own_channels}")
    if other.get("labels") != own.get("labels"):
        problems.append(f"labels {other.get('labels')}, the benchmark's dataset {own.get('labels')}")
    if other.get("file_ending") != own.get("file_ending"):
        problems.append(f"file ending {other.get('file_ending')!r}, the benchmark's dataset {own.get('file_ending')!r}")
    if problems:
        raise BenchmarkInputError(f"--test-source {name} is not the same task: it has {'; '.join(problems)}. Convert "
                                  "it to the benchmark dataset's channels, labels and file ending first.")
    ending = own["file_ending"]
    labels = os.path.join(test_source, "labelsTr")
    cases = [n for n in os.listdir(labels) if n.endswith(ending)] if os.path.isdir(labels) else []
    if not cases or not os.path.isdir(os.path.join(test_source, "imagesTr")):
        raise BenchmarkInputError(f"--test-source {name} has no labelled case (imagesTr/ and labelsTr/*{ending}).")
    return name


def predict_command(nnunet_predict: str, images: str, output: str, dataset_id: int, configuration: str, fold: int,
                    trainer: str, plans: str, device: str) -> list[str]:
    """The ``nnUNetv2_predict`` command line of one trained network on the test source's images."""
    return [nnunet_predict, "-i", images, "-o", output, "-d", str(dataset_id), "-c", configuration, "-f", str(fold),
            "-tr", trainer, "-p", plans, "-chk", "checkpoint_final.pth", "-device", device, "-npp", "1", "-nps", "1",
            "--disable_progress_bar"]


def predict_and_evaluate(benchmark: Any, seed: int, fold: int) -> None:
    """Predicts and scores the test source with each finished training of ``seed`` and ``fold`` that has not done it
    yet (an interrupted prediction starts again; nnU-Net skips nothing on its own).

    Args:
        benchmark: The :class:`~nnunetv2_mapo.benchmark.runner.Benchmark`.
        seed: The repetition.
        fold: The fold.

    Raises:
        BenchmarkFailed: ``nnUNetv2_predict`` failed (its log file is named).
    """
    from nnunetv2_mapo.benchmark.process import run_process
    from nnunetv2_mapo.benchmark.results import evaluate_training
    from nnunetv2_mapo.commands.workspace import nnunet_command

    spec, name = benchmark.spec, source_name(benchmark.spec.test_source)
    for trainer in benchmark.trainers:
        folder = benchmark.fold_folder(seed, trainer, fold)
        summary = os.path.join(folder, summary_file_name(name))
        if os.path.isfile(summary) or not benchmark.finished(folder):
            continue
        output = os.path.join(folder, PREDICTION_FOLDER, name)
        log_file = os.path.join(benchmark.folder, "logs", f"seed{seed}_fold{fold}_{trainer}_predict_{name}.log")
        benchmark.step(f"seed {seed} fold {fold}: {trainer} predicts {name}; log {log_file}")
        command = predict_command(nnunet_command("nnUNetv2_predict"), os.path.join(spec.test_source, "imagesTr"),
                                  output, spec.dataset_id, spec.configuration, fold, trainer, spec.plans_identifier,
                                  spec.device)
        invocation = run_process(command, benchmark.environment(benchmark.results_root(seed, trainer), {}), log_file)
        if invocation.returncode != 0:
            raise BenchmarkFailed(f"nnUNetv2_predict ({trainer}, seed {seed}, fold {fold}, {name}) failed with exit "
                                  f"code {invocation.returncode}. Full output: {log_file}")
        scores = evaluate_training(os.path.join(spec.test_source, "labelsTr"), folder,
                                   os.path.join(PREDICTION_FOLDER, name), summary_file_name(name), chill=False)
        benchmark.step(f"seed {seed} fold {fold}: {trainer} on {name}: Dice {scores['Dice']:.4f} "
                       f"({scores['cases']} cases)")


def test_source_results(runs: Sequence[Mapping[str, Any]], trainers: Sequence[str], test_source: str
                        ) -> dict[str, Any]:
    """The test source's part of ``results.json``: its name, the mean metrics per trainer, and the paired per-case
    comparison of each other arm against the baseline.

    Args:
        runs: The benchmark's run records (``output_folder``, ``trainer``, ``seed``, ``fold``).
        trainers: The benchmark's trainers, the baseline first.
        test_source: The other raw dataset.
    """
    from nnunetv2_mapo.benchmark.process import _read_json
    from nnunetv2_mapo.benchmark.results import paired_comparison
    from nnunetv2_mapo.benchmark.stats import METRICS, aggregate

    name = source_name(test_source)
    file_name = summary_file_name(name)
    scored = [r for r in runs if os.path.isfile(os.path.join(r["output_folder"], file_name))]
    summary = {}
    for trainer in trainers:
        means = [_read_json(os.path.join(r["output_folder"], file_name))["foreground_mean"]
                 for r in scored if r["trainer"] == trainer]
        summary[trainer] = {m: aggregate(fg.get(m) for fg in means) for m in METRICS}
    paired = {other: paired_comparison(list(scored), trainers[0], other, file_name) for other in trainers[1:]}
    return {"test_source": name, "summary_test_source": summary, "paired_test_source": paired}
