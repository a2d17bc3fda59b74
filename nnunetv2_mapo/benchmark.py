"""``nnunetv2_mapo benchmark``: ``nnUNetTrainer`` against ``nnUNetTrainerMAPO``, same split, same budget.

For every repetition ("seed") and fold the benchmark trains, through nnU-Net's real ``nnUNetv2_train``:

* the baseline, :class:`~nnunetv2_mapo.benchmark_trainers.nnUNetTrainerBenchmarkBaseline`: ``nnUNetTrainer`` with
  the budget (epochs, iterations) applied from ``nnUNet_mapo_config`` and nothing else changed;
* the MAPO trainer (``nnUNetTrainerMAPO`` or a variant), with the same budget and the MAPO settings.

nnU-Net's final validation predicts the fold's validation cases into ``fold_X/validation/``; they are evaluated with
:func:`nnunetv2_mapo.evaluation.evaluate_folder` (nnU-Net's Dice plus HD95/ASD) against
``nnUNet_preprocessed/<Dataset>/gt_segmentations``. The results go to ``results.json``, ``results.md`` (mean and
sample standard deviation over seeds x folds per trainer, MAPO/baseline ratios of the runs of the same seed and
fold), ``metrics.png`` and ``training_curves.png``.

Seeds: nnU-Net has no seed option and seeds nothing itself (initial weights, patch sampling and augmentation are
random in every process). A seed here is a repetition: an independent warm-up and independent trainings, with
``mapo_seed`` set to the seed index for MAPO's own randomness (round cases, dropout masks, pair sampling).

Shared warm-up (``--shared-warmup-epochs W``): per seed and fold (with ``--single-warmup``: once per fold, seed 0's,
for every seed),
:class:`~nnunetv2_mapo.benchmark_trainers.nnUNetTrainerBenchmarkWarmup` trains W epochs (its learning-rate
schedule spans W + E epochs, so it is the start of a W + E epoch training). Its ``checkpoint_final.pth`` is copied
into both trainers' fold folders as ``checkpoint_latest.pth`` and both continue with ``--c`` for E more epochs from
identical weights, optimizer state, learning-rate position and logs. MAPO gets ``mapo_warmup_epochs = W`` and an
initial state file beside the copy (:func:`nnunetv2_mapo.checkpointing.write_state`).

Every step is skipped when its result is on disk (``checkpoint_final.pth`` plus the evaluation summary for a
training), and every training runs with ``--c``, so an interrupted benchmark continues where it stopped when the
same command is run again; the tables and plots are recomputed from the files each time.

Memory: the peak resident set size of each ``nnUNetv2_train`` process is ``ru_maxrss`` of the rusage that
``os.wait4`` returns for it (Linux: the larger of the process's own peak and that of its largest waited-for child,
such as nnU-Net's export workers; not a sum). It is started by a tiny launcher process rather than directly from the
benchmark's process, whose own peak would otherwise be counted (see :func:`run_process`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from nnunetv2_mapo.checkpointing import atomic_path, write_state
from nnunetv2_mapo.config import ENV_VAR, MAPOConfigError, parse_config_source
from nnunetv2_mapo.pipeline import CommandFailed, Workspace, copy_raw_dataset

BASELINE_TRAINER = "nnUNetTrainerBenchmarkBaseline"
WARMUP_TRAINER = "nnUNetTrainerBenchmarkWarmup"
DEFAULT_MAPO_TRAINER = "nnUNetTrainerMAPO"
DEFAULT_PLANS = "nnUNetPlans"
STANDARD_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every")
METRICS = ("Dice", "HD95", "ASD")
RUN_RECORD = "benchmark_run.json"
EVALUATION_FILE = "benchmark_summary.json"
SPEC_FILE = "spec.json"
CURVE_KEYS = ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses")
# Quantities of a run that the summary and the ratios cover, with their table labels and number formats.
QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("Dice", "Dice (foreground mean)", "{:.4f}"),
    ("HD95", "HD95 (mm, foreground mean)", "{:.2f}"),
    ("ASD", "ASD (mm, foreground mean)", "{:.3f}"),
    ("wall_seconds", "wall time per training (s)", "{:.1f}"),
    ("seconds_per_epoch", "time per epoch (s)", "{:.2f}"),
    ("training_seconds", "epoch time, summed (s)", "{:.1f}"),
    ("preference_seconds", "preference rounds (s)", "{:.1f}"),
    ("preference_share", "preference rounds, share of epoch time", "{:.1%}"),
    ("peak_rss_gib", "peak memory, max RSS (GiB)", "{:.2f}"),
    ("round_dice_chosen", "rounds: Dice of y+ (mean over pairs and rounds)", "{:.4f}"),
    ("round_dice_rejected", "rounds: Dice of y-", "{:.4f}"),
    ("round_dice_no_dropout", "rounds: Dice without dropout, same patches", "{:.4f}"),
)
# Round diagnostics logged by the MAPO trainer, averaged over the rounds of a run.
ROUND_DICE_KEYS = {"round_dice_chosen": "mapo_dice_chosen", "round_dice_rejected": "mapo_dice_rejected",
                   "round_dice_no_dropout": "mapo_dice_no_dropout"}
_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")


class BenchmarkInputError(ValueError):
    """Unusable benchmark input (missing dataset, unknown configuration, bad budget or settings)."""


class BenchmarkFailed(RuntimeError):
    """An nnU-Net command of the benchmark failed; the message names its log file."""


@dataclass
class BenchmarkSpec:
    """What to benchmark.

    Args:
        dataset_id: nnU-Net dataset id.
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``, ...).
        folds: Folds of nnU-Net's cross-validation split.
        epochs: Epochs each trainer trains (after the shared warm-up, if any).
        iterations: Training iterations per epoch.
        val_iterations: Validation iterations per epoch (nnU-Net's pseudo Dice).
        seeds: Number of repetitions (>= 1); see the module docstring.
        workdir: Workspace folder (nnU-Net folders and the benchmark's outputs).
        batch_size: Batch size override (a plans variant ``nnUNetPlans_bs{B}``), or None for the planned one.
        shared_warmup_epochs: W, epochs of a shared warm-up both trainers continue from (0: none).
        single_warmup: One warm-up per fold for all seeds (seed 0's) instead of one per seed and fold: the seeds then
            repeat the comparison from the same start, which saves ``seeds - 1`` warm-ups when the warm-up is long.
        raw_source: An nnU-Net raw dataset folder copied into the workspace if it is not there yet (read only).
        settings: Further ``nnUNet_mapo_config`` settings: ``mapo_*`` keys for the MAPO trainer, nnU-Net keys
            (``initial_lr``, ``weight_decay``, ``oversample_foreground_percent``) for every trainer.
        mapo_trainer: The MAPO trainer class (``nnUNetTrainerMAPO`` or a subclass nnU-Net can find).
        device: ``cpu``, ``cuda`` or ``mps``.
        save_every: Epochs between nnU-Net's ``checkpoint_latest.pth`` (what an interrupted training resumes from).
        name: Sub-folder of ``workdir/benchmarks`` (default: derived from dataset, configuration and budget).
        report_only: Train nothing; summarise what is finished on disk.
    """

    dataset_id: int
    configuration: str
    folds: tuple[int, ...]
    epochs: int
    iterations: int
    val_iterations: int
    seeds: int = 1
    workdir: str = "benchmark_runs"
    batch_size: int | None = None
    shared_warmup_epochs: int = 0
    single_warmup: bool = False
    raw_source: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    mapo_trainer: str = DEFAULT_MAPO_TRAINER
    device: str = "cpu"
    save_every: int = 5
    name: str | None = None
    report_only: bool = False

    @property
    def plans_identifier(self) -> str:
        """``nnUNetPlans`` or, with a batch size override, ``nnUNetPlans_bs{B}``."""
        return plans_identifier(self.batch_size)

    @property
    def total_epochs(self) -> int:
        """``num_epochs`` of the trainers: warm-up plus own epochs."""
        return self.shared_warmup_epochs + self.epochs

    def comparable(self) -> dict[str, Any]:
        """The fields that define the results (not seeds, folds, paths): a re-run must match them."""
        keep = ("dataset_id", "configuration", "epochs", "iterations", "val_iterations", "batch_size",
                "shared_warmup_epochs", "single_warmup", "settings", "mapo_trainer", "device")
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k in keep}))

    def warmup_seed(self, seed: int) -> int:
        """The seed whose warm-up ``seed`` continues from."""
        return 0 if self.single_warmup else seed


def plans_identifier(batch_size: int | None) -> str:
    """The plans identifier (``-p``) for a batch size override.

    Args:
        batch_size: The override, or None.

    Returns:
        ``nnUNetPlans`` without override, else ``nnUNetPlans_bs{batch_size}``.
    """
    return DEFAULT_PLANS if batch_size is None else f"{DEFAULT_PLANS}_bs{int(batch_size)}"


def _positive(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchmarkInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def validate_spec(spec: BenchmarkSpec) -> None:
    """Checks everything that can be checked without nnU-Net's files (budget, seeds, settings).

    Args:
        spec: The benchmark.

    Raises:
        BenchmarkInputError: A value out of range, or settings that the benchmark sets itself.
    """
    _positive("--dataset", spec.dataset_id, 0)
    for name, value in (("--epochs", spec.epochs), ("--iterations", spec.iterations),
                        ("--val-iterations", spec.val_iterations), ("--seeds", spec.seeds),
                        ("--save-every", spec.save_every)):
        _positive(name, value)
    _positive("--shared-warmup-epochs", spec.shared_warmup_epochs, 0)
    if spec.batch_size is not None:
        _positive("--batch-size", spec.batch_size)
    if not spec.folds:
        raise BenchmarkInputError("Give at least one fold.")
    for fold in spec.folds:
        _positive("fold", fold, 0)
    if len(set(spec.folds)) != len(spec.folds):
        raise BenchmarkInputError(f"Folds are repeated: {list(spec.folds)}.")
    if spec.device not in ("cpu", "cuda", "mps"):
        raise BenchmarkInputError(f"--device must be cpu, cuda or mps, got {spec.device!r}.")
    if not spec.configuration or not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.configuration):
        raise BenchmarkInputError(f"Invalid configuration name {spec.configuration!r}.")
    if spec.name is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+", spec.name):
        raise BenchmarkInputError(f"--name may only hold letters, digits and _.+-, got {spec.name!r}.")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", spec.mapo_trainer):
        raise BenchmarkInputError(f"Invalid trainer class name {spec.mapo_trainer!r}.")
    fixed = [k for k in BUDGET_KEYS if k in spec.settings]
    if fixed:
        raise BenchmarkInputError(f"Settings {fixed} are set by the benchmark (--epochs, --iterations, "
                                  f"--val-iterations, --save-every); remove them from --settings.")
    if "mapo_seed" in spec.settings:
        raise BenchmarkInputError("mapo_seed is set to the seed index of each repetition; remove it from --settings.")
    warmup = spec.settings.get("mapo_warmup_epochs")
    if spec.single_warmup and not spec.shared_warmup_epochs:
        raise BenchmarkInputError("--single-warmup needs --shared-warmup-epochs W >= 1 (the warm-up to share).")
    if spec.shared_warmup_epochs and "mapo_warmup_epochs" in spec.settings:
        raise BenchmarkInputError(f"With --shared-warmup-epochs {spec.shared_warmup_epochs}, MAPO's warm-up is the "
                                  f"shared one (mapo_warmup_epochs = {spec.shared_warmup_epochs}); remove "
                                  f"mapo_warmup_epochs from --settings.")
    if warmup is not None and warmup >= spec.epochs:
        raise BenchmarkInputError(f"mapo_warmup_epochs = {warmup} leaves no epoch for MAPO within --epochs "
                                  f"{spec.epochs}.")


def parse_settings(text: str | None) -> dict[str, Any]:
    """``--settings``: inline JSON or a JSON file, checked like ``nnUNet_mapo_config``.

    Args:
        text: The argument, or None.

    Returns:
        The validated settings (JSON types; rates as lists).

    Raises:
        BenchmarkInputError: Malformed JSON or an invalid key or value.
    """
    if text is None or not text.strip():
        return {}
    try:
        parsed = parse_config_source(text)
    except MAPOConfigError as err:
        raise BenchmarkInputError(f"--settings: {err}") from err
    return json.loads(json.dumps(parsed))


def trainer_settings(spec: BenchmarkSpec, role: str, seed: int) -> dict[str, Any]:
    """The ``nnUNet_mapo_config`` object of one training.

    Args:
        spec: The benchmark.
        role: ``'warmup'``, ``'baseline'`` or ``'mapo'``.
        seed: The repetition.

    Returns:
        Budget keys for every role; the nnU-Net keys of ``spec.settings`` for every role; the ``mapo_*`` keys,
        ``mapo_seed = seed`` and (with a shared warm-up) ``mapo_warmup_epochs = W`` for ``'mapo'`` only.

    Raises:
        ValueError: Unknown role.
    """
    if role not in ("warmup", "baseline", "mapo"):
        raise ValueError(f"Unknown role {role!r}.")
    epochs = spec.shared_warmup_epochs if role == "warmup" else spec.total_epochs
    settings: dict[str, Any] = {"num_epochs": epochs, "num_iterations_per_epoch": spec.iterations,
                                "num_val_iterations_per_epoch": spec.val_iterations, "save_every": spec.save_every}
    for key, value in spec.settings.items():
        if role == "mapo" or not key.startswith("mapo_"):
            settings[key] = value
    if role == "mapo":
        settings["mapo_seed"] = seed
        if spec.shared_warmup_epochs:
            settings["mapo_warmup_epochs"] = spec.shared_warmup_epochs
    return settings


def benchmark_name(spec: BenchmarkSpec, dataset_name: str) -> str:
    """The default sub-folder name: dataset, configuration, plans, budget, MAPO trainer and settings."""
    name = (f"{dataset_name}__{spec.configuration}__{spec.plans_identifier}__w{spec.shared_warmup_epochs}"
            f"{'x1' if spec.single_warmup else ''}-e{spec.epochs}-it{spec.iterations}-val{spec.val_iterations}")
    if spec.mapo_trainer != DEFAULT_MAPO_TRAINER:
        name += f"__{spec.mapo_trainer}"
    if spec.settings:
        digest = hashlib.sha1(json.dumps(spec.settings, sort_keys=True).encode()).hexdigest()[:8]
        name += f"__settings-{digest}"
    return name


# --------------------------------------------------------------------------------------------------- plans
def check_configuration(plans: Mapping[str, Any], configuration: str, plans_file: str = "plans") -> None:
    """Raises when ``configuration`` is not in the plans.

    Raises:
        BenchmarkInputError: Unknown configuration, with the ones that exist.
    """
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise BenchmarkInputError(f"Configuration {configuration!r} is not in {plans_file}; it has {available}.")


def make_plans_variant(plans: Mapping[str, Any], configuration: str, batch_size: int) -> dict[str, Any]:
    """A copy of nnU-Net plans with another batch size for one configuration.

    The copy keeps every ``data_identifier``, so it uses the preprocessed data of the original plans; its
    ``plans_name`` is the new identifier, which nnU-Net puts in the output folder name
    (``<trainer>__nnUNetPlans_bs{B}__<configuration>``).

    Args:
        plans: The plans (``nnUNetPlans.json``).
        configuration: The configuration to change.
        batch_size: The new batch size (>= 1).

    Returns:
        The new plans.

    Raises:
        BenchmarkInputError: Unknown configuration or a batch size < 1.
    """
    check_configuration(plans, configuration)
    _positive("--batch-size", batch_size)
    variant = json.loads(json.dumps(plans))
    variant["plans_name"] = plans_identifier(batch_size)
    # A configuration that inherits from another keeps its own keys on top of the parent's, so this is enough.
    variant["configurations"][configuration]["batch_size"] = int(batch_size)
    return variant


def write_plans_variant(preprocessed_dataset_folder: str, configuration: str, batch_size: int) -> str:
    """Writes ``nnUNetPlans_bs{B}.json`` beside ``nnUNetPlans.json`` (only when it changes).

    Args:
        preprocessed_dataset_folder: ``nnUNet_preprocessed/DatasetXXX_Name``.
        configuration: The configuration whose batch size changes.
        batch_size: The batch size.

    Returns:
        The plans identifier to pass to ``nnUNetv2_train -p``.

    Raises:
        BenchmarkInputError: No ``nnUNetPlans.json`` or an unknown configuration.
    """
    source = os.path.join(preprocessed_dataset_folder, DEFAULT_PLANS + ".json")
    if not os.path.isfile(source):
        raise BenchmarkInputError(f"{source} does not exist; plan and preprocess the dataset first.")
    with open(source, encoding="utf-8") as handle:
        plans = json.load(handle)
    identifier = plans_identifier(batch_size)
    variant = make_plans_variant(plans, configuration, batch_size)
    target = os.path.join(preprocessed_dataset_folder, identifier + ".json")
    if os.path.isfile(target):
        with open(target, encoding="utf-8") as handle:
            if json.load(handle) == variant:
                return identifier
    with atomic_path(target) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(variant, handle, indent=4)
    return identifier


# ---------------------------------------------------------------------------------------------- statistics
def aggregate(values: Iterable[float | None]) -> dict[str, float | int]:
    """Mean and sample standard deviation (ddof = 1) of the finite values.

    Args:
        values: Numbers; None and NaN are left out.

    Returns:
        ``{'mean', 'std', 'n'}``; ``mean`` is NaN without values, ``std`` NaN with fewer than two.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    mean = float(np.mean(finite)) if n else math.nan
    std = float(np.std(finite, ddof=1)) if n >= 2 else math.nan
    return {"mean": mean, "std": std, "n": n}


def summarize(runs: Sequence[Mapping[str, Any]], trainers: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per trainer, :func:`aggregate` of each quantity of :data:`QUANTITIES` over its runs (seeds x folds)."""
    return {trainer: {key: aggregate(r.get(key) for r in runs if r["trainer"] == trainer) for key, _, _ in QUANTITIES}
            for trainer in trainers}


def paired_ratios(runs: Sequence[Mapping[str, Any]], baseline: str, mapo: str) -> dict[str, dict]:
    """MAPO / baseline per quantity, over the pairs of runs with the same seed and fold.

    Args:
        runs: Run records with ``trainer``, ``seed``, ``fold`` and the quantities.
        baseline: The baseline trainer's name.
        mapo: The MAPO trainer's name.

    Returns:
        ``{quantity: aggregate(ratios)}``; pairs where either value is missing or the baseline's is 0 are left out.
    """
    by_key = {(r["trainer"], r["seed"], r["fold"]): r for r in runs}
    ratios: dict[str, list[float]] = {key: [] for key, _, _ in QUANTITIES}
    for (trainer, seed, fold), run in by_key.items():
        other = by_key.get((baseline, seed, fold))
        if trainer != mapo or other is None:
            continue
        for key in ratios:
            a, b = run.get(key), other.get(key)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b != 0:
                ratios[key].append(a / b)
    return {key: aggregate(values) for key, values in ratios.items()}


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def format_stat(stat: Mapping[str, Any], fmt: str) -> str:
    """``mean ± std`` (std with at least two values), ``mean`` for one value, ``–`` for none."""
    if not stat or not stat.get("n"):
        return "–"
    text = fmt.format(stat["mean"])
    if stat["n"] >= 2 and math.isfinite(stat["std"]):
        text += " ± " + fmt.format(stat["std"])
    return text


def format_table(results: Mapping[str, Any]) -> str:
    """The markdown report: summary table with ratios, notes, per-run table.

    Args:
        results: What :meth:`Benchmark.collect_results` returns (``spec``, ``trainers``, ``summary``, ``ratios``,
            ``runs``, ``warmups``).

    Returns:
        Markdown text.
    """
    spec = results["spec"]
    baseline, mapo = results["trainers"]
    summary, ratios, runs = results["summary"], results["ratios"], results["runs"]
    counts = {t: sum(1 for r in runs if r["trainer"] == t) for t in (baseline, mapo)}
    lines = [
        f"# Benchmark: {results['dataset']} {spec['configuration']}, folds {spec['folds']}, {spec['seeds']} seed(s)",
        "",
        f"Budget per trainer: {_epochs(spec['epochs'])} x {spec['iterations']} iterations (+ {spec['val_iterations']} "
        f"validation iterations per epoch), plans `{results['plans_identifier']}` (batch size "
        f"{results['batch_size']}), device {spec['device']}"
        + (f", after a shared warm-up of {_epochs(spec['shared_warmup_epochs'])}." if spec["shared_warmup_epochs"]
           else ", no shared warm-up."),
        "",
        f"| quantity | baseline: {baseline} (n={counts[baseline]}) | MAPO: {mapo} (n={counts[mapo]}) "
        f"| MAPO / baseline |",
        "|---|---|---|---|",
    ]
    for key, label, fmt in QUANTITIES:
        ratio_fmt = "{:.3f}"
        lines.append(f"| {label} | {format_stat(summary[baseline][key], fmt)} | {format_stat(summary[mapo][key], fmt)} "
                     f"| {format_stat(ratios[key], ratio_fmt)} |")
    warmups = results.get("warmups", [])
    lines += [
        "",
        "Notes:",
        "",
        f"- The baseline is `nnUNetTrainer` + budget overrides only (`{baseline}` applies the nnU-Net keys of "
        f"`{ENV_VAR}`: epochs, iterations per epoch, validation iterations, checkpoint interval"
        + (", and the nnU-Net settings given with --settings" if any(not k.startswith("mapo_")
                                                                    for k in spec["settings"]) else "")
        + "); everything else is nnU-Net's default trainer.",
        "- Values are mean ± sample standard deviation (ddof = 1) over seeds x folds; one value has no spread. "
        "MAPO / baseline: mean ± std of the ratios of the two runs with the same seed and fold, measured in the "
        "same benchmark on the same machine.",
        "- A seed is a repetition: nnU-Net has no seed option (initial weights, sampling and augmentation are random "
        "in every training process); `mapo_seed` is set to the seed index.",
        "- Dice: nnU-Net's foreground mean on the fold's validation cases (nnU-Net's final validation predictions). "
        "HD95/ASD: mean over foreground classes of the per-class means over cases where prediction and reference "
        "are both non-empty (docs/evaluation.md).",
        "- Wall time: the `nnUNetv2_train` processes of a training (start-up, epochs, final validation; summed over "
        "resumed runs). Time per epoch and epoch time come from the checkpoint's epoch_start/end timestamps of the "
        "trainer's own epochs" + (" (after the warm-up)." if spec["shared_warmup_epochs"] else ".")
        + " Preference rounds: sum of the logged `mapo_regen_seconds`; share = that / epoch time.",
        "- Peak memory: `ru_maxrss` of each `nnUNetv2_train` process from `os.wait4` (its own peak or that of its "
        "largest waited-for child, whichever is larger; maximum over resumed runs), measured by a small launcher "
        "process so that the benchmark's own memory is not counted.",
    ]
    if spec["shared_warmup_epochs"]:
        wall = aggregate(w.get("wall_seconds") for w in warmups)
        lines.append(f"- Shared warm-up: `{WARMUP_TRAINER}` ({_epochs(spec['shared_warmup_epochs'])}, learning-rate "
                     f"schedule over {spec['shared_warmup_epochs'] + spec['epochs']} epochs, no final validation), "
                     + ("once per fold, shared by all seeds" if spec.get("single_warmup") else "once per seed and fold")
                     + f"; wall time {format_stat(wall, '{:.1f}')} s, not included above. Both "
                     f"trainers continue from its checkpoint with `--c`.")
    lines += ["", "## Runs", "",
              "| trainer | seed | fold | Dice | HD95 (mm) | ASD (mm) | cases | wall (s) | s/epoch | pref. rounds (s) "
              "| peak RSS (GiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)

    for r in sorted(runs, key=lambda r: (r["seed"], r["fold"], r["trainer"] != baseline)):
        lines.append(f"| {r['trainer']} | {r['seed']} | {r['fold']} | {cell(r.get('Dice'), '{:.4f}')} | "
                     f"{cell(r.get('HD95'), '{:.2f}')} | {cell(r.get('ASD'), '{:.3f}')} | {r.get('num_cases', '–')} | "
                     f"{cell(r.get('wall_seconds'), '{:.1f}')} | {cell(r.get('seconds_per_epoch'), '{:.2f}')} | "
                     f"{cell(r.get('preference_seconds'), '{:.1f}')} | {cell(r.get('peak_rss_gib'), '{:.2f}')} |")
    missing = results.get("missing", [])
    if missing:
        lines += ["", f"Not finished (left out above): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def epoch_timing(logging: Mapping[str, Sequence[float]], first_epoch: int) -> dict[str, float | int | None]:
    """Epoch times and preference-round time of the epochs from ``first_epoch`` on, from nnU-Net's logging dict.

    Args:
        logging: ``checkpoint['logging']`` (``epoch_start_timestamps``, ``epoch_end_timestamps`` and, for MAPO,
            ``mapo_regen_seconds``).
        first_epoch: The first epoch the trainer trained itself (W after a shared warm-up).

    Returns:
        ``epochs``, ``training_seconds`` (sum of epoch durations), ``seconds_per_epoch`` (their mean),
        ``preference_seconds`` (NaN-skipping sum of ``mapo_regen_seconds``; None when not logged) and
        ``preference_share`` (preference / training seconds; None when not logged).
    """
    starts = list(logging.get("epoch_start_timestamps", []))[first_epoch:]
    ends = list(logging.get("epoch_end_timestamps", []))[first_epoch:]
    durations = [float(e) - float(s) for s, e in zip(starts, ends)]
    training = float(sum(durations)) if durations else math.nan
    result: dict[str, float | int | None] = {
        "epochs": len(durations), "training_seconds": training,
        "seconds_per_epoch": training / len(durations) if durations else math.nan,
        "preference_seconds": None, "preference_share": None,
    }
    if "mapo_regen_seconds" in logging:
        regen = [float(v) for v in list(logging["mapo_regen_seconds"])[first_epoch:first_epoch + len(durations)]]
        seconds = float(sum(v for v in regen if math.isfinite(v)))
        result["preference_seconds"] = seconds
        result["preference_share"] = seconds / training if training and math.isfinite(training) else None
    return result


def round_dice(logging: Mapping[str, Sequence[float]], first_epoch: int) -> dict[str, float | None]:
    """Mean Dice of y+, y- and of the prediction without dropout over the rounds from ``first_epoch`` on.

    Returns:
        One entry per key of ``ROUND_DICE_KEYS``; None where the key was not logged or no round ran.
    """
    result: dict[str, float | None] = {}
    for name, key in ROUND_DICE_KEYS.items():
        stat = aggregate(list(logging.get(key, []))[first_epoch:])  # NaN between rounds is left out
        result[name] = stat["mean"] if stat["n"] else None
    return result


# ---------------------------------------------------------------------------------------------------- plots
def plot_metrics(results: Mapping[str, Any], path: str) -> str:
    """``metrics.png``: Dice, HD95 and ASD of every run per trainer, with mean ± std.

    Args:
        results: What :meth:`Benchmark.collect_results` returns.
        path: The image file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    trainers = results["trainers"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 4.2))
    for ax, metric in zip(axes, METRICS):
        for index, trainer in enumerate(trainers):
            values = [r.get(metric) for r in results["runs"] if r["trainer"] == trainer]
            values = [v for v in values if v is not None and math.isfinite(v)]
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.scatter(index + jitter, values, color=f"C{index}", alpha=0.6, zorder=3)
            stat = results["summary"][trainer][metric]
            if stat["n"]:
                err = stat["std"] if math.isfinite(stat["std"]) else 0.0
                ax.errorbar(index + 0.25, stat["mean"], yerr=err, fmt="D", color=f"C{index}", capsize=5, zorder=4)
        ax.set_xticks(range(len(trainers)))
        ax.set_xticklabels(["baseline", "MAPO"])
        unit = " (mm)" if metric != "Dice" else ""
        ax.set_title(f"{metric}{unit}")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{results['dataset']} {results['spec']['configuration']}: validation cases, runs and "
                 f"mean ± std", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(results: Mapping[str, Any], path: str) -> str:
    """``training_curves.png``: pseudo Dice (EMA solid, raw dotted) and losses (train solid, val dashed).

    Args:
        results: What :meth:`Benchmark.collect_results` returns (runs with ``curves``).
        path: The image file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, (dice_ax, loss_ax) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for index, trainer in enumerate(results["trainers"]):
        label = "baseline" if index == 0 else "MAPO"
        for number, run in enumerate(r for r in results["runs"] if r["trainer"] == trainer):
            curves = run.get("curves") or {}
            tag = label if number == 0 else None
            for key, ax, style, alpha in (("ema_fg_dice", dice_ax, "-", 0.9), ("mean_fg_dice", dice_ax, ":", 0.5),
                                          ("train_losses", loss_ax, "-", 0.9), ("val_losses", loss_ax, "--", 0.6)):
                values = curves.get(key) or []
                ax.plot(range(len(values)), values, style, color=f"C{index}", alpha=alpha,
                        label=f"{tag} {key}" if tag else None)
    warmup = results["spec"]["shared_warmup_epochs"]
    for ax in (dice_ax, loss_ax):
        if warmup:
            ax.axvline(warmup - 0.5, color="grey", lw=1, ls="-.")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    dice_ax.set_ylabel("pseudo Dice (EMA solid, per epoch dotted)")
    loss_ax.set_ylabel("loss (train solid, val dashed)\nMAPO's train loss includes its DPO term")
    loss_ax.set_xlabel("epoch" + (" (grey line: end of the shared warm-up)" if warmup else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- running commands
@dataclass
class Invocation:
    """One ``nnUNetv2_train`` process: what ran, how long, how much memory."""

    command: list[str]
    started: str
    wall_seconds: float
    max_rss_bytes: int | None
    returncode: int | None
    interrupted: bool = False


# Runs the command as its child and reports that child's exit code and ru_maxrss (from os.wait4) as JSON to the file
# given first. Why a launcher: on Linux a new process's ru_maxrss starts at the peak RSS of the process it was forked
# (or vforked) from, so a child started directly from this process (torch imported: hundreds of MiB) would report
# at least that much. This interpreter (-S, standard library only) is a few MiB; its child inherits only that.
# Signals reach the command through its process group (run_process); the launcher ignores them so that it can
# still report, and gives the command default handlers (a shell may have started us with SIGINT ignored).
_LAUNCHER = """
import json, os, signal, sys
report, command = sys.argv[1], sys.argv[2:]
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as handle:
    json.dump({"returncode": code, "ru_maxrss": usage.ru_maxrss}, handle)
sys.exit(min(max(code, 0), 255) if code >= 0 else 128 - code)
"""


def _stop_group(process: subprocess.Popen) -> None:
    """SIGINT, SIGTERM, SIGKILL to the process group of ``process`` (a session leader) until the launcher ends."""
    for number, grace in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        break
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers the command left behind
        os.killpg(process.pid, signal.SIGKILL)


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports KiB, macOS bytes.
    return int(ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_process(command: Sequence[str], env: Mapping[str, str], log_file: str,
                on_line: Callable[[str], None] | None = None, poll_seconds: float = 1.0) -> Invocation:
    """Runs a command with its output appended to ``log_file``; measures wall time and peak memory.

    The command runs under a tiny launcher (started with :class:`subprocess.Popen`) that forks it, reaps it with
    ``os.wait4`` and reports its exit code and ``ru_maxrss``: the peak resident set size of that process, or of its
    largest waited-for child if larger (Linux), and nothing of other processes of the benchmark. The launcher starts
    a new session (process group). On Ctrl-C (or SIGTERM, see :func:`run_benchmark_from_args`) the group gets
    SIGINT, then SIGTERM after 20 s and SIGKILL after 10 more (so no worker outlives the benchmark), the invocation
    is recorded as interrupted and KeyboardInterrupt is raised again.

    Args:
        command: The command.
        env: Its environment.
        log_file: Output file (appended).
        on_line: Called with each new output line while the command runs (progress).
        poll_seconds: How often the output is read.

    Returns:
        The :class:`Invocation` (``returncode`` as :attr:`subprocess.Popen.returncode`: negative for a signal).

    Raises:
        KeyboardInterrupt: The user interrupted; the command has been stopped.
    """
    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    started = time.monotonic()
    report = f"{log_file}.rusage.json"
    with contextlib.suppress(FileNotFoundError):
        os.remove(report)
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        offset = log.tell()
        process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, report, *command], env=dict(env),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    pending = ""

    def read_new() -> None:
        nonlocal offset, pending
        if on_line is None:
            return
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        offset += len(chunk)
        pending += chunk.decode("utf-8", errors="replace")
        *complete, pending = pending.split("\n")
        for line in complete:
            on_line(line)

    interrupted = False
    try:
        while process.poll() is None:
            time.sleep(poll_seconds)
            read_new()
    except KeyboardInterrupt:
        interrupted = True
        _stop_group(process)
    read_new()
    returncode, max_rss = process.returncode, None
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as handle:
            usage = json.load(handle)
        os.remove(report)
        returncode, max_rss = usage["returncode"], _maxrss_bytes(usage["ru_maxrss"])
    invocation = Invocation(list(command), started_at, time.monotonic() - started, max_rss, returncode, interrupted)
    if interrupted:
        raise _Interrupted(invocation)
    return invocation


class _Interrupted(KeyboardInterrupt):
    def __init__(self, invocation: Invocation) -> None:
        super().__init__("interrupted")
        self.invocation = invocation


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=True)


def _record_invocation(fold_folder: str, trainer: str, invocation: Invocation) -> None:
    path = os.path.join(fold_folder, RUN_RECORD)
    record = _read_json(path) if os.path.isfile(path) else {"trainer": trainer, "invocations": []}
    record["invocations"].append(asdict(invocation))
    _write_json(path, record)


def _invocation_totals(fold_folder: str) -> tuple[float | None, int | None, int]:
    path = os.path.join(fold_folder, RUN_RECORD)
    if not os.path.isfile(path):
        return None, None, 0
    invocations = _read_json(path)["invocations"]
    wall = float(sum(i["wall_seconds"] for i in invocations))
    rss = [i["max_rss_bytes"] for i in invocations if i.get("max_rss_bytes") is not None]
    return wall, (max(rss) if rss else None), len(invocations)


def _load_checkpoint(path: str) -> dict:
    import torch

    # nnU-Net's own checkpoints (numpy scalars in the logging dict), written by this benchmark's trainings.
    return torch.load(path, map_location="cpu", weights_only=False)


def initial_mapo_state(seed: int) -> dict[str, Any]:
    """The MAPO state of a training that has not run a preference round yet (``nnUNetTrainerMAPO.mapo_state_dict``).

    Args:
        seed: ``mapo_seed`` (the pair sampler is seeded with it, as a fresh ``nnUNetTrainerMAPO`` on rank 0 is).

    Returns:
        ``round_index`` 0, no preference set, the pair sampler's generator state, no settings to compare.
    """
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return {"round_index": 0, "preference_set": None, "pair_generator": generator.get_state(), "settings": {}}


def _find_trainer_class(name: str) -> type:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with contextlib.redirect_stdout(io.StringIO()):
        return recursive_find_trainer_class_by_name(name)


# ------------------------------------------------------------------------------------------------- benchmark
class Benchmark:
    """One benchmark in a workspace; :meth:`run` does everything. See the module docstring.

    Args:
        spec: What to run (checked with :func:`validate_spec`).
        out: Where progress lines go (default stdout).

    Raises:
        BenchmarkInputError: From :func:`validate_spec`.
    """

    def __init__(self, spec: BenchmarkSpec, out: Any = None) -> None:
        validate_spec(spec)
        self.spec = spec
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self.workspace: Workspace | None = None
        self.dataset_name = ""
        self.folder = ""

    # -------------------------------------------------------------------------------------------- helpers
    def step(self, message: str) -> None:
        """Prints one progress line with the elapsed time."""
        print(f"[{time.monotonic() - self.started:8.1f} s] {message}", file=self.out, flush=True)

    @property
    def trainers(self) -> tuple[str, str]:
        """``(baseline, MAPO trainer)``."""
        return BASELINE_TRAINER, self.spec.mapo_trainer

    def results_root(self, seed: int) -> str:
        """The ``nnUNet_results`` folder of one repetition."""
        return os.path.join(self.folder, f"seed_{seed}", "nnUNet_results")

    def fold_folder(self, seed: int, trainer: str, fold: int) -> str:
        """nnU-Net's output folder of one training."""
        return os.path.join(self.results_root(seed), self.dataset_name,
                            f"{trainer}__{self.spec.plans_identifier}__{self.spec.configuration}", f"fold_{fold}")

    def log_file(self, seed: int, fold: int, trainer: str) -> str:
        """The output of the ``nnUNetv2_train`` runs of one training."""
        return os.path.join(self.folder, "logs", f"seed{seed}_fold{fold}_{trainer}.log")

    @staticmethod
    def trained(fold_folder: str) -> bool:
        """nnU-Net finished training and final validation."""
        return (os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth"))
                and os.path.isfile(os.path.join(fold_folder, "validation", "summary.json")))

    @staticmethod
    def finished(fold_folder: str) -> bool:
        """Trained and evaluated."""
        return (os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth"))
                and os.path.isfile(os.path.join(fold_folder, EVALUATION_FILE)))

    # ------------------------------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        """Dataset, plans, batch-size variant, folds, trainer lookup: every check before training starts.

        Raises:
            BenchmarkInputError: Missing dataset, unknown configuration or fold, settings that do not match an
                earlier run of the same benchmark folder, a trainer nnU-Net cannot find.
        """
        spec = self.spec
        self.workspace = workspace = Workspace(spec.workdir)
        prefix = f"Dataset{spec.dataset_id:03d}_"
        if spec.raw_source is not None:
            source = os.path.abspath(spec.raw_source)
            if not os.path.isfile(os.path.join(source, "dataset.json")):
                raise BenchmarkInputError(f"--raw-source {spec.raw_source} is not an nnU-Net raw dataset folder (no "
                                          f"dataset.json).")
            if not os.path.basename(os.path.normpath(source)).startswith(prefix):
                raise BenchmarkInputError(f"--raw-source {spec.raw_source} is not named {prefix}*, but --dataset is "
                                          f"{spec.dataset_id}.")
            target = os.path.join(workspace.raw, os.path.basename(os.path.normpath(source)))
            if os.path.abspath(target) == source:
                raise BenchmarkInputError(f"--raw-source {spec.raw_source} is the workspace's own raw folder.")
            if not os.path.isdir(target):
                self.step(f"copying {source} to {workspace.raw}")
                copy_raw_dataset(source, workspace.raw)
        raw = sorted(glob.glob(os.path.join(workspace.raw, prefix + "*")))
        preprocessed = sorted(glob.glob(os.path.join(workspace.preprocessed, prefix + "*")))
        if len(raw) > 1 or (not raw and len(preprocessed) != 1):
            found = raw or preprocessed
            raise BenchmarkInputError(
                f"Expected one {prefix}* dataset in {workspace.raw} (or, already preprocessed, in "
                f"{workspace.preprocessed}); found {found or 'none'}. Pass --raw-source PATH to copy one in.")
        self.dataset_name = os.path.basename(raw[0] if raw else preprocessed[0])
        dataset_pre = os.path.join(workspace.preprocessed, self.dataset_name)
        plans_file = os.path.join(dataset_pre, DEFAULT_PLANS + ".json")
        if os.path.isfile(plans_file):
            check_configuration(_read_json(plans_file), spec.configuration, plans_file)
        elif spec.configuration not in STANDARD_CONFIGURATIONS:
            raise BenchmarkInputError(f"Configuration {spec.configuration!r} is not one nnUNetv2_plan_and_preprocess "
                                      f"creates ({list(STANDARD_CONFIGURATIONS)}); plan the dataset first.")
        self.folder = os.path.join(workspace.root, "benchmarks", spec.name or benchmark_name(spec, self.dataset_name))
        spec_file = os.path.join(self.folder, SPEC_FILE)
        if os.path.isfile(spec_file):
            earlier = _read_json(spec_file)
            absent = {f.name: f.default for f in fields(BenchmarkSpec)}  # keys added later: their default then
            differ = {k: (earlier.get(k, absent[k]), v) for k, v in spec.comparable().items()
                      if earlier.get(k, absent[k]) != v}
            if differ:
                raise BenchmarkInputError(
                    f"{self.folder} holds a benchmark with other settings (earlier, now): {differ}. Use another "
                    f"--name or --workdir, or the earlier settings.")
        splits_file = os.path.join(dataset_pre, "splits_final.json")
        count = len(_read_json(splits_file)) if os.path.isfile(splits_file) else 5  # nnU-Net's default: 5 folds
        if any(f >= count for f in spec.folds):
            raise BenchmarkInputError(f"Folds {list(spec.folds)}: the split has folds 0-{count - 1} "
                                      f"({splits_file if os.path.isfile(splits_file) else 'nnU-Net default'}).")
        if not spec.report_only:
            if not all(self.finished(self.fold_folder(seed, t, fold))
                       for seed in range(spec.seeds) for fold in spec.folds for t in self.trainers):
                self._check_trainers()  # a few seconds (nnU-Net imports its trainer tree): only when needed
            os.makedirs(os.path.join(self.folder, "logs"), exist_ok=True)
            _write_json(spec_file, spec.comparable())
            self.step(f"planning and preprocessing {self.dataset_name} ({spec.configuration}; skipped if done)")
            try:
                workspace.plan_and_preprocess(spec.dataset_id, [spec.configuration],
                                              log_file=os.path.join(self.folder, "logs", "plan_and_preprocess.log"))
            except CommandFailed as err:
                raise BenchmarkFailed(str(err)) from err
            check_configuration(_read_json(plans_file), spec.configuration, plans_file)
            if spec.batch_size is not None:
                identifier = write_plans_variant(dataset_pre, spec.configuration, spec.batch_size)
                self.step(f"plans variant {identifier}.json (batch size {spec.batch_size}, same preprocessed data)")

    def _check_trainers(self) -> None:
        from nnunetv2_mapo.trainer import nnUNetTrainerMAPO

        for name in (*self.trainers, WARMUP_TRAINER):
            try:
                cls = _find_trainer_class(name)
            except (RuntimeError, AssertionError) as err:
                raise BenchmarkInputError(f"nnU-Net cannot find the trainer {name!r}: {err}") from err
            if name == self.spec.mapo_trainer and not issubclass(cls, nnUNetTrainerMAPO):
                raise BenchmarkInputError(f"--mapo-trainer {name} is not a subclass of nnUNetTrainerMAPO.")

    def environment(self, seed: int, settings: Mapping[str, Any], extra: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
        """The environment of one ``nnUNetv2_train``: workspace folders, this seed's results, the settings."""
        assert self.workspace is not None
        env = self.workspace.environment({"nnUNet_results": self.results_root(seed),
                                          "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0"),
                                          ENV_VAR: json.dumps(dict(settings)), **(extra or {})})
        return env

    @staticmethod
    def train_command(dataset_id: int, configuration: str, fold: int, trainer: str, plans: str, device: str
                      ) -> list[str]:
        """The ``nnUNetv2_train`` command line of one training (always ``--c``: resume whatever is on disk)."""
        executable = shutil.which("nnUNetv2_train") or os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
        return [executable, str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans,
                "-device", device, "--c"]

    # -------------------------------------------------------------------------------------------- training
    def _train(self, seed: int, fold: int, trainer: str, settings: Mapping[str, Any], what: str,
               extra_env: Mapping[str, str] | None = None) -> None:
        spec = self.spec
        fold_folder = self.fold_folder(seed, trainer, fold)
        os.makedirs(fold_folder, exist_ok=True)
        log_file = self.log_file(seed, fold, trainer)
        total = settings["num_epochs"]
        self.step(f"seed {seed} fold {fold}: training {what} ({trainer}, {_epochs(total)} in all); log {log_file}")

        def progress(line: str) -> None:
            match = _EPOCH_LINE.search(line)
            if match:
                self.step(f"    epoch {int(match.group(1)) + 1}/{total}")
            elif line.rstrip().endswith("Training done.") and trainer != WARMUP_TRAINER:
                self.step("    training done; nnU-Net's final validation")

        command = self.train_command(spec.dataset_id, spec.configuration, fold, trainer, spec.plans_identifier,
                                     spec.device)
        try:
            invocation = run_process(command, self.environment(seed, settings, extra_env), log_file, progress)
        except _Interrupted as interrupted:
            _record_invocation(fold_folder, trainer, interrupted.invocation)
            raise KeyboardInterrupt from None
        _record_invocation(fold_folder, trainer, invocation)
        if invocation.returncode != 0:
            with open(log_file, encoding="utf-8", errors="replace") as handle:
                tail = "\n".join(handle.read().strip().splitlines()[-30:])
            raise BenchmarkFailed(f"nnUNetv2_train ({trainer}, seed {seed}, fold {fold}) failed with exit code "
                                  f"{invocation.returncode}. Full output: {log_file}\n{tail}")
        rss = "?" if invocation.max_rss_bytes is None else f"{invocation.max_rss_bytes / 2**30:.2f} GiB"
        self.step(f"seed {seed} fold {fold}: {trainer} done in {invocation.wall_seconds:.1f} s, peak RSS {rss}")

    def _warmup(self, seed: int, fold: int) -> str:
        """Runs (or finds) the shared warm-up of ``seed`` (see ``single_warmup``); returns its checkpoint_final."""
        spec = self.spec
        seed = spec.warmup_seed(seed)
        folder = self.fold_folder(seed, WARMUP_TRAINER, fold)
        checkpoint = os.path.join(folder, "checkpoint_final.pth")
        if os.path.isfile(checkpoint):
            self.step(f"seed {seed} fold {fold}: skip shared warm-up (finished)")
            return checkpoint
        from nnunetv2_mapo.benchmark_trainers import SCHEDULE_ENV_VAR

        self._train(seed, fold, WARMUP_TRAINER, trainer_settings(spec, "warmup", seed),
                    f"the shared warm-up ({_epochs(spec.shared_warmup_epochs)})",
                    {SCHEDULE_ENV_VAR: str(spec.total_epochs)})
        if not os.path.isfile(checkpoint):
            raise BenchmarkFailed(f"The warm-up finished without {checkpoint}.")
        return checkpoint

    def _start_from_warmup(self, warmup_checkpoint: str, fold_folder: str, mapo: bool, seed: int) -> None:
        """Copies the warm-up checkpoint as ``checkpoint_latest.pth`` (plus MAPO's initial state) for ``--c``."""
        os.makedirs(fold_folder, exist_ok=True)
        target = os.path.join(fold_folder, "checkpoint_latest.pth")
        if mapo:
            epoch = int(_load_checkpoint(warmup_checkpoint)["current_epoch"])
            write_state(target, epoch, initial_mapo_state(seed))  # the state first: the pair is never incomplete
        with atomic_path(target) as temporary:
            shutil.copyfile(warmup_checkpoint, temporary)

    def _needs_start(self, fold_folder: str, mapo: bool) -> bool:
        """No checkpoint yet to continue from (or, for MAPO, one without its state: an interrupted copy)."""
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
            path = os.path.join(fold_folder, name)
            if os.path.isfile(path):
                if not mapo:
                    return False
                return not glob.glob(glob.escape(path) + ".mapo_e*.pt")
        return True

    def _evaluate(self, seed: int, fold: int, trainer: str) -> None:
        from nnunetv2_mapo.evaluation import evaluate_folder

        assert self.workspace is not None
        fold_folder = self.fold_folder(seed, trainer, fold)
        output_base = os.path.dirname(fold_folder)
        self.step(f"seed {seed} fold {fold}: evaluating {trainer} (Dice, HD95, ASD)")
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints which reader it uses
            summary = evaluate_folder(
                os.path.join(self.workspace.preprocessed, self.dataset_name, "gt_segmentations"),
                os.path.join(fold_folder, "validation"), os.path.join(output_base, "dataset.json"),
                os.path.join(output_base, "plans.json"), os.path.join(fold_folder, EVALUATION_FILE), 1)
        fg = summary["foreground_mean"]
        self.step(f"seed {seed} fold {fold}: {trainer}: Dice {fg['Dice']:.4f}, HD95 {fg.get('HD95', math.nan):.2f}, "
                  f"ASD {fg.get('ASD', math.nan):.3f} ({len(summary['metric_per_case'])} cases)")

    def run_pair(self, seed: int, fold: int) -> None:
        """Warm-up (if any), both trainings and their evaluation for one seed and fold; finished steps are skipped."""
        spec = self.spec
        folders = {t: self.fold_folder(seed, t, fold) for t in self.trainers}
        pending = [t for t in self.trainers if not self.finished(folders[t])]
        for trainer in self.trainers:
            if trainer not in pending:
                self.step(f"seed {seed} fold {fold}: skip {trainer} (finished)")
        if not pending:
            return
        warmup_checkpoint = None
        if spec.shared_warmup_epochs and any(
                not self.trained(folders[t]) and self._needs_start(folders[t], t != BASELINE_TRAINER) for t in pending):
            warmup_checkpoint = self._warmup(seed, fold)
        for trainer in pending:
            folder = folders[trainer]
            role = "baseline" if trainer == BASELINE_TRAINER else "mapo"
            if not self.trained(folder):
                if warmup_checkpoint and self._needs_start(folder, role == "mapo"):
                    self._start_from_warmup(warmup_checkpoint, folder, role == "mapo", seed)
                    self.step(f"seed {seed} fold {fold}: {trainer} starts from the shared warm-up checkpoint")
                what = "the baseline" if role == "baseline" else "MAPO"
                if spec.shared_warmup_epochs:
                    what += f" (continues after the shared warm-up of {_epochs(spec.shared_warmup_epochs)})"
                self._train(seed, fold, trainer, trainer_settings(spec, role, seed), what)
                if not self.trained(folder):
                    raise BenchmarkFailed(f"{trainer} (seed {seed}, fold {fold}) ended without checkpoint_final.pth "
                                          f"and validation/summary.json in {folder}; see "
                                          f"{self.log_file(seed, fold, trainer)}.")
            self._evaluate(seed, fold, trainer)

    # ------------------------------------------------------------------------------------------- results
    def run_record(self, seed: int, fold: int, trainer: str) -> dict[str, Any] | None:
        """The record of one finished training, read from its folder; None when it is not finished."""
        folder = self.fold_folder(seed, trainer, fold)
        if not self.finished(folder):
            return None
        summary = _read_json(os.path.join(folder, EVALUATION_FILE))
        fg = summary["foreground_mean"]
        logging = _load_checkpoint(os.path.join(folder, "checkpoint_final.pth"))["logging"]
        first = self.spec.shared_warmup_epochs
        wall, rss, invocations = _invocation_totals(folder)
        record: dict[str, Any] = {
            "trainer": trainer, "seed": seed, "fold": fold, "output_folder": folder,
            "num_cases": len(summary["metric_per_case"]),
            **{m: float(fg[m]) if fg.get(m) is not None else math.nan for m in METRICS},
            "counts": {k: fg[k] for k in ("n_surface_evaluated", "n_both_empty", "n_ref_empty_pred_nonempty",
                                          "n_pred_empty_ref_nonempty") if k in fg},
            "per_class": {str(k): {m: v.get(m) for m in METRICS} for k, v in summary["mean"].items()},
            "wall_seconds": wall, "invocations": invocations,
            "peak_rss_bytes": rss, "peak_rss_gib": None if rss is None else rss / 2**30,
            **epoch_timing(logging, first),
            **round_dice(logging, first),
            "curves": {k: [float(v) for v in logging.get(k, [])] for k in CURVE_KEYS},
        }
        if trainer == BASELINE_TRAINER:
            record["preference_seconds"] = record["preference_share"] = None
        return record

    def collect_results(self) -> dict[str, Any]:
        """Reads every finished training of the requested seeds and folds; summary and ratios."""
        spec = self.spec
        runs, missing, warmups = [], [], []
        for seed in range(spec.seeds):
            for fold in spec.folds:
                for trainer in self.trainers:
                    record = self.run_record(seed, fold, trainer)
                    if record is None:
                        missing.append(f"{trainer} seed {seed} fold {fold}")
                    else:
                        runs.append(record)
                if spec.shared_warmup_epochs and spec.warmup_seed(seed) == seed:
                    wall, rss, _ = _invocation_totals(self.fold_folder(seed, WARMUP_TRAINER, fold))
                    if wall is not None:
                        warmups.append({"seed": seed, "fold": fold, "wall_seconds": wall, "peak_rss_bytes": rss})
        batch_size = spec.batch_size
        plans_file = os.path.join(self.workspace.preprocessed if self.workspace else "", self.dataset_name,
                                  spec.plans_identifier + ".json")
        if batch_size is None and os.path.isfile(plans_file):
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            batch_size = PlansManager(plans_file).get_configuration(spec.configuration).batch_size
        import nnunetv2
        import torch

        from nnunetv2_mapo import __version__

        return {
            "spec": {**asdict(spec), "folds": list(spec.folds)},
            "dataset": self.dataset_name, "plans_identifier": spec.plans_identifier, "batch_size": batch_size,
            "trainers": list(self.trainers), "baseline_note": "nnUNetTrainer + budget overrides only",
            "summary": summarize(runs, self.trainers),
            "ratios": paired_ratios(runs, *self.trainers),
            "runs": runs, "warmups": warmups, "missing": missing,
            "environment": {"nnunetv2_mapo": __version__, "nnunetv2": getattr(nnunetv2, "__version__", None),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
        }

    def write_outputs(self, results: Mapping[str, Any]) -> dict[str, str]:
        """``results.json``, ``results.md``, ``metrics.png``, ``training_curves.png`` in the benchmark folder."""
        paths = {name: os.path.join(self.folder, name) for name in ("results.json", "results.md", "metrics.png",
                                                                    "training_curves.png")}
        _write_json(paths["results.json"], results)
        with atomic_path(paths["results.md"]) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(format_table(results))
        plot_metrics(results, paths["metrics.png"])
        plot_curves(results, paths["training_curves.png"])
        return paths

    def run(self) -> dict[str, Any]:
        """Prepares, trains and evaluates what is not finished, and writes the results.

        Returns:
            The results (also in ``results.json``), with ``paths`` of the written files added.

        Raises:
            BenchmarkInputError: Bad input, found before any training.
            BenchmarkFailed: An nnU-Net command failed (its log file is named).
            KeyboardInterrupt: Interrupted; running the same command again continues.
        """
        self.prepare()
        if not self.spec.report_only:
            for seed in range(self.spec.seeds):
                for fold in self.spec.folds:
                    self.run_pair(seed, fold)
        results = self.collect_results()
        if not results["runs"]:
            raise BenchmarkInputError(f"No finished training in {self.folder} to report.")
        paths = self.write_outputs(results)
        self.step(f"results: {paths['results.md']} (and results.json, metrics.png, training_curves.png)")
        return {**results, "paths": paths}


def run_benchmark(spec: BenchmarkSpec, out: Any = None) -> dict[str, Any]:
    """Runs a benchmark (see the module docstring).

    Args:
        spec: What to run.
        out: Stream for the progress lines (default stdout).

    Returns:
        The results, as written to ``results.json``, plus ``paths`` of the written files.

    Raises:
        BenchmarkInputError: Bad input, found before any training.
        BenchmarkFailed: An nnU-Net command failed.
        KeyboardInterrupt: Interrupted; the same command continues.
    """
    return Benchmark(spec, out).run()


# ------------------------------------------------------------------------------------------------------- CLI
def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``nnunetv2_mapo benchmark`` to ``parser``.

    Args:
        parser: The (sub-)parser.
    """
    parser.add_argument("-d", "--dataset", type=int, required=True, help="nnU-Net dataset id")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=[0], help="folds (default: 0)")
    parser.add_argument("--epochs", type=int, required=True,
                        help="epochs per trainer (after the shared warm-up, if any)")
    parser.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, required=True,
                        help="validation iterations per epoch (nnU-Net's pseudo Dice)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repetitions (default 1); nnU-Net has no seed option: each is an independent training, "
                             "mapo_seed = index")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size override (plans variant nnUNetPlans_bs{B}, same preprocessed data)")
    parser.add_argument("--shared-warmup-epochs", type=int, default=0,
                        help="W: train W epochs once per seed and fold, then both trainers continue from that "
                             "checkpoint (MAPO with mapo_warmup_epochs = W); default 0")
    parser.add_argument("--single-warmup", action="store_true",
                        help="one shared warm-up per fold for all seeds (seed 0's) instead of one per seed: the seeds "
                             "repeat the comparison from the same start")
    parser.add_argument("--workdir", default="benchmark_runs",
                        help="workspace with nnUNet_raw/_preprocessed and benchmarks/ (default ./benchmark_runs)")
    parser.add_argument("--raw-source", default=None,
                        help="nnU-Net raw dataset folder copied into the workspace (never written to)")
    parser.add_argument("--settings", default=None,
                        help="JSON object or file with more nnUNet_mapo_config settings: mapo_* for the MAPO trainer, "
                             "initial_lr/weight_decay/oversample_foreground_percent for both")
    parser.add_argument("--mapo-trainer", default=DEFAULT_MAPO_TRAINER,
                        help="MAPO trainer class (default nnUNetTrainerMAPO)")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--save-every", type=int, default=5,
                        help="epochs between nnU-Net's checkpoint_latest.pth, where an interrupted training resumes "
                             "(default 5)")
    parser.add_argument("--name", default=None, help="sub-folder of WORKDIR/benchmarks (default: from the settings)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; rewrite the results from the finished trainings")


def spec_from_args(args: argparse.Namespace) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of parsed arguments.

    Raises:
        BenchmarkInputError: Invalid ``--settings``.
    """
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return BenchmarkSpec(
        dataset_id=args.dataset, configuration=args.configuration, folds=tuple(args.folds), epochs=args.epochs,
        iterations=args.iterations, val_iterations=args.val_iterations, seeds=args.seeds, workdir=args.workdir,
        batch_size=args.batch_size, shared_warmup_epochs=args.shared_warmup_epochs,
        single_warmup=args.single_warmup, raw_source=args.raw_source,
        settings=parse_settings(args.settings), mapo_trainer=args.mapo_trainer, device=device,
        save_every=args.save_every, name=args.name, report_only=args.report_only)


def run_benchmark_from_args(args: argparse.Namespace) -> int:
    """Entry point of ``nnunetv2_mapo benchmark``.

    Args:
        args: Parsed :func:`add_benchmark_arguments` arguments.

    Returns:
        0 on success, 2 for bad input, 1 when an nnU-Net command failed, 130 when interrupted.
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM like Ctrl-C: stop the running nnUNetv2_train, keep what is on disk

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        run_benchmark(spec_from_args(args))
    except BenchmarkInputError as err:
        print(f"nnunetv2_mapo benchmark: error: {err}", file=sys.stderr)
        return 2
    except BenchmarkFailed as err:
        print(f"nnunetv2_mapo benchmark: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnnunetv2_mapo benchmark: interrupted. Run the same command again to continue (finished steps are "
              "skipped, unfinished trainings resume with --c).", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
