"""What a benchmark runs (:class:`BenchmarkSpec`), its checks before any training, and each training's settings."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nnunetv2_mapo.training.settings import MAPOConfigError, parse_config_source

BASELINE_TRAINER = "nnUNetTrainerBenchmarkBaseline"
EQUAL_COMPUTE_TRAINER = "nnUNetTrainerBenchmarkEqualCompute"
WARMUP_TRAINER = "nnUNetTrainerBenchmarkWarmup"
DEFAULT_MAPO_TRAINER = "nnUNetTrainerMAPO"
DEFAULT_PLANS = "nnUNetPlans"
STANDARD_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every")
EVALUATION_FILE = "benchmark_summary.json"
SPEC_FILE = "spec.json"



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
        train_cases: A low-data split (:mod:`nnunetv2_mapo.benchmark.split`): train on this many cases (drawn with a
            fixed seed) and hold out all the others as the test set (fold 0 only).
        split_file: The same with a given split (``{"train": [...], "val": [...]}`` or nnU-Net's layout).
        group_pattern: A regular expression whose first group names a case's group (a video sequence, a slide, a
            patient): the split keeps every group on one side (with ``train_cases`` or ``split_file``).
        test_source: Another raw dataset of the same task whose every case the trained networks also predict
            (:mod:`nnunetv2_mapo.benchmark.test_source`); not part of what defines the trainings.
        unlabeled_cases: The semi-supervised protocol (:mod:`nnunetv2_mapo.benchmark.unlabeled`): this many held-out
            cases lose their labels and become the MAPO arm's ``mapo_unlabeled_folder``; the others stay the test set.
        equal_compute: Also train the equal-compute arm: the baseline with MAPO's extra sample-passes as extra
            iterations per epoch (:mod:`nnunetv2_mapo.benchmark.compute`).
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
    train_cases: int | None = None
    split_file: str | None = None
    equal_compute: bool = False
    group_pattern: str | None = None
    test_source: str | None = None
    unlabeled_cases: int | None = None

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
                "shared_warmup_epochs", "single_warmup", "settings", "mapo_trainer", "device", "train_cases",
                "split_file", "equal_compute", "group_pattern", "unlabeled_cases")
        # the fields added later only when given, so that the shared arms of earlier workspaces keep their names
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k in keep and (
            k not in ("group_pattern", "unlabeled_cases") or v is not None)}))

    def warmup_seed(self, seed: int) -> int:
        """The seed whose warm-up ``seed`` continues from."""
        return 0 if self.single_warmup else seed


def check_same_benchmark(spec_file: str, spec: BenchmarkSpec, folder: str) -> None:
    """Refuses to continue a benchmark folder whose ``spec.json`` records other settings.

    Raises:
        BenchmarkInputError: Naming each differing field (earlier, now).
    """
    with open(spec_file, encoding="utf-8") as handle:
        earlier = json.load(handle)
    absent = {f.name: f.default for f in fields(BenchmarkSpec)}  # keys added later: their default then
    differ = {k: (earlier.get(k, absent[k]), v) for k, v in spec.comparable().items() if earlier.get(k, absent[k]) != v}
    if differ:
        raise BenchmarkInputError(f"{folder} holds a benchmark with other settings (earlier, now): {differ}. Use "
                                  f"another --name or --workdir, or the earlier settings.")


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


def _check_group_pattern(spec: BenchmarkSpec) -> None:
    if spec.train_cases is None and spec.split_file is None:
        raise BenchmarkInputError("--group-pattern keeps groups apart in the split of --train-cases or --split-file: "
                                  "give one of them.")
    try:
        groups = re.compile(spec.group_pattern).groups
    except re.error as err:
        raise BenchmarkInputError(f"--group-pattern {spec.group_pattern!r} is not a regular expression ({err}).") \
            from err
    if groups < 1:
        raise BenchmarkInputError(f"--group-pattern {spec.group_pattern!r} has no group: put the part of the case "
                                  f"name that names its group in parentheses, e.g. '^(seq\\d+)_'.")


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
    if spec.train_cases is not None:
        _positive("--train-cases", spec.train_cases)
    if spec.train_cases is not None and spec.split_file is not None:
        raise BenchmarkInputError("Give --train-cases or --split-file, not both.")
    if (spec.train_cases is not None or spec.split_file is not None) and tuple(spec.folds) != (0,):
        raise BenchmarkInputError(f"--train-cases and --split-file define one split, fold 0; got folds "
                                  f"{list(spec.folds)}.")
    if spec.group_pattern is not None:
        _check_group_pattern(spec)
    if spec.unlabeled_cases is not None:
        _positive("--unlabeled-cases", spec.unlabeled_cases)
        if spec.train_cases is None and spec.split_file is None:
            raise BenchmarkInputError("--unlabeled-cases takes its cases from the held-out cases of --train-cases or "
                                      "--split-file: give one of them.")
        if "mapo_unlabeled_folder" in spec.settings:
            raise BenchmarkInputError("mapo_unlabeled_folder is set by --unlabeled-cases; remove it from --settings.")
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


def trainer_settings(spec: BenchmarkSpec, role: str, seed: int, iterations: int | None = None,
                     unlabeled_folder: str | None = None) -> dict[str, Any]:
    """The ``nnUNet_mapo_config`` object of one training.

    Args:
        spec: The benchmark.
        role: ``'warmup'``, ``'baseline'``, ``'equal_compute'`` or ``'mapo'``.
        seed: The repetition.
        iterations: Iterations per epoch instead of ``spec.iterations`` (the equal-compute arm's).
        unlabeled_folder: ``mapo_unlabeled_folder`` of the ``'mapo'`` role (``--unlabeled-cases``).

    Returns:
        Budget keys for every role; the nnU-Net keys of ``spec.settings`` for every role; the ``mapo_*`` keys,
        ``mapo_seed = seed`` and (with a shared warm-up) ``mapo_warmup_epochs = W`` for ``'mapo'`` only.

    Raises:
        ValueError: Unknown role.
    """
    if role not in ("warmup", "baseline", "equal_compute", "mapo"):
        raise ValueError(f"Unknown role {role!r}.")
    epochs = spec.shared_warmup_epochs if role == "warmup" else spec.total_epochs
    settings: dict[str, Any] = {"num_epochs": epochs, "num_iterations_per_epoch": iterations or spec.iterations,
                                "num_val_iterations_per_epoch": spec.val_iterations, "save_every": spec.save_every}
    for key, value in spec.settings.items():
        if role == "mapo" or not key.startswith("mapo_"):
            settings[key] = value
    if role == "mapo":
        settings["mapo_seed"] = seed
        if unlabeled_folder is not None:
            settings["mapo_unlabeled_folder"] = unlabeled_folder
        if spec.shared_warmup_epochs:
            settings["mapo_warmup_epochs"] = spec.shared_warmup_epochs
    return settings


def nnunet_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings every arm trains with: ``settings`` without the ``mapo_*`` keys that only MAPO reads."""
    return {k: v for k, v in settings.items() if not k.startswith("mapo_")}


def shared_arm_name(spec: BenchmarkSpec, dataset_name: str, role: str, iterations: int | None = None) -> str:
    """The folder, under ``benchmarks/shared_arms``, of the trainings that do not depend on the MAPO trainer.

    The baseline (with its shared warm-up, if any) and the equal-compute arm are trained the same way for every MAPO
    trainer and ``mapo_*`` setting, so benchmarks of several variants in one workspace train them once. The name holds
    a digest of what does define them: dataset, configuration, budget, batch size, split, device, the nnU-Net settings
    and, for the equal-compute arm, its iterations per epoch.

    Args:
        spec: The benchmark.
        dataset_name: nnU-Net's dataset folder name.
        role: ``'baseline'`` or ``'warmup'`` (one folder: the baseline continues from the warm-up), or
            ``'equal_compute'``.
        iterations: The equal-compute arm's iterations per epoch (None while not yet known).

    Returns:
        ``{dataset_name}__{role}__{digest}``.

    Raises:
        ValueError: Another role.
    """
    if role not in ("baseline", "warmup", "equal_compute"):
        raise ValueError(f"Only the baseline, its warm-up and the equal-compute arm are shared, not {role!r}.")
    defining = {k: v for k, v in spec.comparable().items() if k not in ("mapo_trainer", "equal_compute", "settings")}
    defining["settings"] = nnunet_settings(spec.settings)
    if role == "equal_compute":
        defining["equal_compute_iterations"] = iterations
    digest = hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:10]
    return f"{dataset_name}__{'equal_compute' if role == 'equal_compute' else 'baseline'}__{digest}"


def benchmark_name(spec: BenchmarkSpec, dataset_name: str) -> str:
    """The default sub-folder name: dataset, configuration, plans, budget, MAPO trainer and settings."""
    name = (f"{dataset_name}__{spec.configuration}__{spec.plans_identifier}__w{spec.shared_warmup_epochs}"
            f"{'x1' if spec.single_warmup else ''}-e{spec.epochs}-it{spec.iterations}-val{spec.val_iterations}")
    if spec.train_cases is not None:
        name += f"__train{spec.train_cases}"
    if spec.equal_compute:
        name += "__eqc"
    if spec.split_file is not None:
        name += f"__split-{hashlib.sha1(spec.split_file.encode()).hexdigest()[:8]}"
    if spec.unlabeled_cases is not None:
        name += f"__unlabeled{spec.unlabeled_cases}"
    if spec.group_pattern is not None:
        name += f"__groups-{hashlib.sha1(spec.group_pattern.encode()).hexdigest()[:8]}"
    if spec.mapo_trainer != DEFAULT_MAPO_TRAINER:
        name += f"__{spec.mapo_trainer}"
    if spec.settings:
        digest = hashlib.sha1(json.dumps(spec.settings, sort_keys=True).encode()).hexdigest()[:8]
        name += f"__settings-{digest}"
    return name
