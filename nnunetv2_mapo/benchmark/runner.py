"""The benchmark's run: warm-up, trainings, evaluation and results (the package docstring says how it works)."""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from nnunetv2_mapo.benchmark.compute import equal_compute_iterations
from nnunetv2_mapo.benchmark.dataset import locate_dataset
from nnunetv2_mapo.benchmark.lookup import check_trainers, with_benchmark_trainers
from nnunetv2_mapo.benchmark.plans import check_configuration, write_plans_variant
from nnunetv2_mapo.benchmark.process import (
    _Interrupted,
    _invocation_totals,
    _read_json,
    _record_invocation,
    _write_json,
    run_process,
    train_command,
)
from nnunetv2_mapo.benchmark.report import _epochs
from nnunetv2_mapo.benchmark.results import (
    EVALUATION_FILE,
    environment_record,
    evaluate_training,
    load_checkpoint,
    paired_comparison,
    planned_batch_size,
    run_record,
    write_outputs,
)
from nnunetv2_mapo.benchmark.spec import (
    BASELINE_TRAINER,
    DEFAULT_PLANS,
    EQUAL_COMPUTE_TRAINER,
    SPEC_FILE,
    STANDARD_CONFIGURATIONS,
    WARMUP_TRAINER,
    BenchmarkFailed,
    BenchmarkInputError,
    BenchmarkSpec,
    benchmark_name,
    check_same_benchmark,
    shared_arm_name,
    trainer_settings,
    validate_spec,
)
from nnunetv2_mapo.benchmark.split import dataset_cases, install_split, split_for
from nnunetv2_mapo.benchmark.stats import paired_ratios, summarize
from nnunetv2_mapo.benchmark.test_source import check_test_source, predict_and_evaluate, test_source_results
from nnunetv2_mapo.benchmark.unlabeled import carve_unlabeled, write_unlabeled_images
from nnunetv2_mapo.commands.workspace import CommandFailed, NNUNetCommandNotFound, Workspace, nnunet_command
from nnunetv2_mapo.training.checkpointing import atomic_path, initial_trainer_state, write_state
from nnunetv2_mapo.training.settings import ENV_VAR

_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")


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
        self.equal_compute_iterations: int | None = None
        self.unlabeled_folder: str | None = None  # --unlabeled-cases: the MAPO arm's mapo_unlabeled_folder

    # -------------------------------------------------------------------------------------------- helpers
    def step(self, message: str) -> None:
        """Prints one progress line with the elapsed time."""
        print(f"[{time.monotonic() - self.started:8.1f} s] {message}", file=self.out, flush=True)

    @property
    def trainers(self) -> tuple[str, ...]:
        """``(baseline, MAPO trainer)``, or ``(baseline, equal-compute arm, MAPO trainer)``."""
        equal = (EQUAL_COMPUTE_TRAINER,) if self.spec.equal_compute else ()
        return (BASELINE_TRAINER, *equal, self.spec.mapo_trainer)

    def role(self, trainer: str) -> str:
        """The trainer's role for :func:`trainer_settings`."""
        return {BASELINE_TRAINER: "baseline", EQUAL_COMPUTE_TRAINER: "equal_compute",
                WARMUP_TRAINER: "warmup"}.get(trainer, "mapo")

    def results_root(self, seed: int, trainer: str) -> str:
        """The ``nnUNet_results`` folder of one training: this benchmark's own for MAPO, for the other trainings the
        one the workspace's benchmarks share (:func:`shared_arm_name`) unless this folder holds them (before 0.6.0)."""
        own = os.path.join(self.folder, f"seed_{seed}", "nnUNet_results")
        if self.role(trainer) == "mapo" or os.path.isdir(os.path.join(own, self.dataset_name, self._model(trainer))):
            return own
        name = shared_arm_name(self.spec, self.dataset_name, self.role(trainer), self.equal_compute_iterations)
        return os.path.join(os.path.dirname(self.folder), "shared_arms", name, f"seed_{seed}", "nnUNet_results")

    def _model(self, trainer: str) -> str:  # nnU-Net's model folder name
        return f"{trainer}__{self.spec.plans_identifier}__{self.spec.configuration}"

    def fold_folder(self, seed: int, trainer: str, fold: int) -> str:
        """nnU-Net's output folder of one training."""
        return os.path.join(self.results_root(seed, trainer), self.dataset_name, self._model(trainer), f"fold_{fold}")

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

    def prepare(self) -> None:
        """Dataset, plans, batch-size variant, folds, trainer lookup: every check before training starts.

        Raises:
            BenchmarkInputError: Missing dataset, unknown configuration or fold, settings that do not match an
                earlier run of the same benchmark folder, a trainer nnU-Net cannot find.
        """
        spec = self.spec
        try:  # before any work: the commands the benchmark runs exist
            for command in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train"):
                nnunet_command(command)
        except NNUNetCommandNotFound as err:
            raise BenchmarkInputError(str(err)) from err
        self.workspace = workspace = Workspace(spec.workdir)
        self.dataset_name = locate_dataset(spec, workspace, self.step)
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
            check_same_benchmark(spec_file, spec, self.folder)
        raw_dataset = os.path.join(workspace.raw, self.dataset_name)
        split = split_for(spec.train_cases, spec.split_file, raw_dataset, spec.group_pattern)
        if spec.unlabeled_cases is not None:  # held-out cases without their labels: the MAPO arm's unlabeled scans
            split, unlabeled = carve_unlabeled(split, spec.unlabeled_cases, spec.group_pattern)
            self.unlabeled_folder = write_unlabeled_images(raw_dataset, unlabeled,
                                                           os.path.join(workspace.root, "unlabeled"))
        if spec.test_source is not None:
            check_test_source(spec.test_source, raw_dataset)
        splits_file = os.path.join(dataset_pre, "splits_final.json")
        count = len(_read_json(splits_file)) if os.path.isfile(splits_file) else 5  # nnU-Net's default: 5 folds
        if any(f >= count for f in spec.folds):
            raise BenchmarkInputError(f"Folds {list(spec.folds)}: the split has folds 0-{count - 1} "
                                      f"({splits_file if os.path.isfile(splits_file) else 'nnU-Net default'}).")
        if not spec.report_only:
            if not all(self.finished(self.fold_folder(seed, t, fold))
                       for seed in range(spec.seeds) for fold in spec.folds for t in self.trainers):
                check_trainers((*self.trainers, WARMUP_TRAINER), spec.mapo_trainer)  # seconds: only when needed
            os.makedirs(os.path.join(self.folder, "logs"), exist_ok=True)
            _write_json(spec_file, spec.comparable())
            self.step(f"planning and preprocessing {self.dataset_name} ({spec.configuration}; skipped if done)")
            try:
                workspace.plan_and_preprocess(spec.dataset_id, [spec.configuration],
                                              log_file=os.path.join(self.folder, "logs", "plan_and_preprocess.log"))
            except CommandFailed as err:
                raise BenchmarkFailed(str(err)) from err
            check_configuration(_read_json(plans_file), spec.configuration, plans_file)
            if split is not None and install_split(dataset_pre, split):
                self.step(f"split: {len(split['train'])} training cases, {len(split['val'])} held out (fold 0)")
            if spec.batch_size is not None:
                identifier = write_plans_variant(dataset_pre, spec.configuration, spec.batch_size)
                self.step(f"plans variant {identifier}.json (batch size {spec.batch_size}, same preprocessed data)")
        batch_size = planned_batch_size(os.path.join(dataset_pre, spec.plans_identifier + ".json"), spec)
        if spec.equal_compute and batch_size is not None:  # None: not planned, so nothing trained to report either
            cases = split["train"] if split else dataset_cases(raw_dataset)
            self.equal_compute_iterations = equal_compute_iterations(  # 5-fold split: ~80% train; non-2d: 3D views
                spec.total_epochs, spec.shared_warmup_epochs, spec.iterations, batch_size, len(cases) if split else
                len(cases) - len(cases) // 5, trainer_settings(spec, "mapo", 0), 2 if spec.configuration == "2d" else 3)

    def environment(self, results_root: str, settings: Mapping[str, Any], extra: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
        """The environment of one ``nnUNetv2_train``: workspace folders, its results root, the settings."""
        assert self.workspace is not None
        env = self.workspace.environment({"nnUNet_results": results_root,
                                          "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0"),
                                          ENV_VAR: json.dumps(dict(settings)), **(extra or {})})
        return with_benchmark_trainers(env)

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

        command = train_command(spec.dataset_id, spec.configuration, fold, trainer, spec.plans_identifier,
                                     spec.device)
        try:
            invocation = run_process(command, self.environment(self.results_root(seed, trainer), settings, extra_env),
                                     log_file, progress)
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
        from nnunetv2_mapo.benchmark.trainers import SCHEDULE_ENV_VAR

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
            epoch = int(load_checkpoint(warmup_checkpoint)["current_epoch"])
            write_state(target, epoch, initial_trainer_state(seed))  # the state first: the pair is never incomplete
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
        assert self.workspace is not None
        self.step(f"seed {seed} fold {fold}: evaluating {trainer} (Dice, HD95, ASD, NSD)")
        fg = evaluate_training(os.path.join(self.workspace.preprocessed, self.dataset_name, "gt_segmentations"),
                               self.fold_folder(seed, trainer, fold))
        self.step(f"seed {seed} fold {fold}: {trainer}: Dice {fg['Dice']:.4f}, HD95 {fg.get('HD95', math.nan):.2f}, "
                  f"ASD {fg.get('ASD', math.nan):.3f} ({fg['cases']} cases)")

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
        if spec.shared_warmup_epochs and any(not self.trained(folders[t]) and self._needs_start(
                folders[t], self.role(t) == "mapo") for t in pending):
            warmup_checkpoint = self._warmup(seed, fold)
        for trainer in pending:
            folder, role = folders[trainer], self.role(trainer)
            if not self.trained(folder):
                if warmup_checkpoint and self._needs_start(folder, role == "mapo"):
                    self._start_from_warmup(warmup_checkpoint, folder, role == "mapo", seed)
                    self.step(f"seed {seed} fold {fold}: {trainer} starts from the shared warm-up checkpoint")
                what = {"baseline": "the baseline", "mapo": "MAPO"}.get(
                    role, f"the equal-compute arm ({self.equal_compute_iterations} iterations per epoch)")
                if spec.shared_warmup_epochs:
                    what += f" (continues after the shared warm-up of {_epochs(spec.shared_warmup_epochs)})"
                iterations = self.equal_compute_iterations if role == "equal_compute" else None
                self._train(seed, fold, trainer, trainer_settings(spec, role, seed, iterations, self.unlabeled_folder),
                            what)
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
        return run_record(folder, trainer, seed, fold, self.spec.shared_warmup_epochs, self.role(trainer) != "mapo")

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
        batch_size = planned_batch_size(os.path.join(self.workspace.preprocessed if self.workspace else "",
                                                     self.dataset_name, spec.plans_identifier + ".json"), spec)
        return {
            "spec": {**asdict(spec), "folds": list(spec.folds)},
            "dataset": self.dataset_name, "plans_identifier": spec.plans_identifier, "batch_size": batch_size,
            "trainers": list(self.trainers), "baseline_note": "nnUNetTrainer + budget overrides only",
            "summary": summarize(runs, self.trainers),
            "ratios": paired_ratios(runs, BASELINE_TRAINER, spec.mapo_trainer),
            "paired": paired_comparison(runs, BASELINE_TRAINER, spec.mapo_trainer),
            **({"equal_compute_iterations": self.equal_compute_iterations,
                "ratios_equal_compute": paired_ratios(runs, EQUAL_COMPUTE_TRAINER, spec.mapo_trainer),
                "paired_equal_compute": paired_comparison(runs, EQUAL_COMPUTE_TRAINER, spec.mapo_trainer)}
               if spec.equal_compute else {}),
            **(test_source_results(runs, self.trainers, spec.test_source) if spec.test_source else {}),
            "runs": runs, "warmups": warmups, "missing": missing,
            "environment": environment_record(),
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
        }

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
                    if self.spec.test_source is not None:
                        predict_and_evaluate(self, seed, fold)
        results = self.collect_results()
        if not results["runs"]:
            raise BenchmarkInputError(f"No finished training in {self.folder} to report.")
        paths = write_outputs(self.folder, results)
        self.step(f"results: {paths['results.md']} (and results.json, metrics.png, training_curves.png)")
        return {**results, "paths": paths}


def run_benchmark(spec: BenchmarkSpec, out: Any = None) -> dict[str, Any]:
    """Runs a benchmark: :meth:`Benchmark.run` (progress lines to ``out``, default stdout); same returns and raises."""
    return Benchmark(spec, out).run()
