"""The results of a benchmark: one record per finished training, the environment, the written files."""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
from collections.abc import Mapping
from typing import Any

from nnunetv2_mapo.benchmark.paired import compare
from nnunetv2_mapo.benchmark.plots import plot_curves, plot_metrics
from nnunetv2_mapo.benchmark.process import _invocation_totals, _read_json, _write_json
from nnunetv2_mapo.benchmark.report import format_table
from nnunetv2_mapo.benchmark.stats import METRICS, epoch_timing, round_dice
from nnunetv2_mapo.training.checkpointing import atomic_path
from nnunetv2_mapo.training.gpu_memory import read_peak_gpu_memory

EVALUATION_FILE = "benchmark_summary.json"
CURVE_KEYS = ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "mapo_margin_nats", "mapo_reward_accuracy",
              "mapo_regen_seconds")  # the MAPO keys are absent from the baseline's log
OUTPUT_FILES = ("results.json", "results.md", "metrics.png", "training_curves.png")


def load_checkpoint(path: str) -> dict:
    """An nnU-Net checkpoint written by this benchmark's trainings, on the CPU."""
    import torch

    # nnU-Net's own checkpoints (numpy scalars in the logging dict), written by this benchmark's trainings.
    return torch.load(path, map_location="cpu", weights_only=False)




def run_record(folder: str, trainer: str, seed: int, fold: int, first_epoch: int, baseline: bool) -> dict[str, Any]:
    """The record of one finished and evaluated training.

    Args:
        folder: Its nnU-Net fold folder.
        trainer: Its trainer.
        seed: Its repetition.
        fold: Its fold.
        first_epoch: The first epoch it trained itself (after a shared warm-up).
        baseline: Whether it is the baseline (no preference rounds).
    """
    summary = _read_json(os.path.join(folder, EVALUATION_FILE))
    fg = summary["foreground_mean"]
    logging = load_checkpoint(os.path.join(folder, "checkpoint_final.pth"))["logging"]
    wall, rss, invocations = _invocation_totals(folder)
    gpu = read_peak_gpu_memory(folder)
    record: dict[str, Any] = {
        "trainer": trainer, "seed": seed, "fold": fold, "output_folder": folder,
        "num_cases": len(summary["metric_per_case"]),
        **{m: float(fg[m]) if fg.get(m) is not None else math.nan for m in METRICS},
        "counts": {k: fg[k] for k in ("n_surface_evaluated", "n_both_empty", "n_ref_empty_pred_nonempty",
                                      "n_pred_empty_ref_nonempty") if k in fg},
        "per_class": {str(k): {m: v.get(m) for m in METRICS} for k, v in summary["mean"].items()},
        "wall_seconds": wall, "invocations": invocations,
        "peak_rss_bytes": rss, "peak_rss_gib": None if rss is None else rss / 2**30,
        "peak_gpu_bytes": gpu, "peak_gpu_gib": None if gpu is None else gpu / 2**30,
        **epoch_timing(logging, first_epoch),
        **round_dice(logging, first_epoch),
        "curves": {k: [float(v) for v in logging.get(k, [])] for k in CURVE_KEYS},
    }
    if baseline:
        record["preference_seconds"] = record["preference_share"] = None
    return record


def planned_batch_size(plans_file: str, spec: Any) -> int | None:
    """The batch size the trainings use: ``--batch-size``, else the plans' (None before planning)."""
    if spec.batch_size is not None or not os.path.isfile(plans_file):
        return spec.batch_size
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans_file).get_configuration(spec.configuration).batch_size


def evaluate_training(gt_folder: str, fold_folder: str, predictions: str = "validation",
                      summary_file: str = EVALUATION_FILE, chill: bool = True) -> dict[str, Any]:
    """Evaluates predictions of a training (by default nnU-Net's final validation, ``fold/validation``) into
    ``fold/<summary_file>``; returns the foreground means with ``cases``, the number of cases.

    Args:
        gt_folder: The reference segmentations.
        fold_folder: The training's fold folder (its model folder holds ``dataset.json`` and ``plans.json``).
        predictions: The predictions' folder, relative to ``fold_folder``.
        summary_file: The summary's file name in ``fold_folder``.
        chill: If False, every reference must have a prediction.
    """
    from nnunetv2_mapo.evaluation.folder import evaluate_folder

    output_base = os.path.dirname(fold_folder)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints which reader it uses
        summary = evaluate_folder(gt_folder, os.path.join(fold_folder, predictions),
                                  os.path.join(output_base, "dataset.json"), os.path.join(output_base, "plans.json"),
                                  os.path.join(fold_folder, summary_file), 1, chill=chill)
    return {**summary["foreground_mean"], "cases": len(summary["metric_per_case"])}


def paired_comparison(runs: list[dict[str, Any]], baseline: str, other: str,
                      summary_file: str = EVALUATION_FILE) -> dict[str, dict]:
    """Per fold, the paired per-case comparison of ``other`` against ``baseline`` over the seeds where both finished
    (:func:`nnunetv2_mapo.benchmark.paired.compare`, Dice, HD95, ASD and NSD); folds hold different cases, so each
    fold is compared on its own. ``summary_file``: the evaluation read in each training's folder (another for a
    second test set, :mod:`.test_source`)."""
    by_key = {(r["trainer"], r["seed"], r["fold"]): r for r in runs}
    result = {}
    for fold in sorted({f for (_, _, f) in by_key}):
        seeds = sorted(s for (t, s, f) in by_key if t == other and f == fold and (baseline, s, fold) in by_key)
        if not seeds:
            continue
        summaries = {(t, s): _read_json(os.path.join(by_key[(t, s, fold)]["output_folder"], summary_file))
                     for t in (other, baseline) for s in seeds}
        result[str(fold)] = compare([summaries[(other, s)] for s in seeds], [summaries[(baseline, s)] for s in seeds],
                                    METRICS)
    return result


def environment_record() -> dict[str, Any]:
    """Versions and machine of this run."""
    import nnunetv2
    import torch

    from nnunetv2_mapo import __version__

    return {"nnunetv2_mapo": __version__, "nnunetv2": getattr(nnunetv2, "__version__", None),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def write_outputs(folder: str, results: Mapping[str, Any]) -> dict[str, str]:
    """``results.json``, ``results.md``, ``metrics.png``, ``training_curves.png`` in ``folder``."""
    paths = {name: os.path.join(folder, name) for name in OUTPUT_FILES}
    _write_json(paths["results.json"], results)
    with atomic_path(paths["results.md"]) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(format_table(results))
    plot_metrics(results, paths["metrics.png"])
    plot_curves(results, paths["training_curves.png"])
    return paths
