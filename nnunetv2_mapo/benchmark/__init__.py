"""``nnunetv2_mapo benchmark``: ``nnUNetTrainer`` against ``nnUNetTrainerMAPO``, same split, same budget.

For every repetition ("seed") and fold the benchmark trains, through nnU-Net's real ``nnUNetv2_train``:

* the baseline, :class:`~nnunetv2_mapo.benchmark.trainers.nnUNetTrainerBenchmarkBaseline`: ``nnUNetTrainer`` with
  the budget (epochs, iterations) applied from ``nnUNet_mapo_config`` and nothing else changed;
* the MAPO trainer (``nnUNetTrainerMAPO`` or a variant), with the same budget and the MAPO settings;
* with ``--equal-compute``, :class:`~nnunetv2_mapo.benchmark.trainers.nnUNetTrainerBenchmarkEqualCompute`: the
  baseline with MAPO's extra sample-passes as extra iterations per epoch (:mod:`.compute`).

Variants share the other arms: the baseline (with its warm-up) and the equal-compute arm do not depend on the MAPO
trainer or its ``mapo_*`` settings, so they are trained once per workspace, in
``benchmarks/shared_arms/<Dataset>__<arm>__<digest>`` (:func:`.spec.shared_arm_name`), and every benchmark folder
of the workspace with the same dataset, configuration, budget, split and nnU-Net settings reuses them (a benchmark
folder that already holds them, written before 0.6.0, keeps its own). Screening five variants then costs five MAPO
trainings plus two, not fifteen. Run one benchmark at a time per workspace.

With ``--train-cases N`` (or ``--split-file``) the split is a low-data one: N training cases, all others held out and
predicted by nnU-Net's final validation (:mod:`.split`). ``results.md`` adds the paired per-case differences with a
hierarchical bootstrap interval (:mod:`.paired`).

nnU-Net's final validation predicts the fold's validation cases into ``fold_X/validation/``; they are evaluated with
:func:`nnunetv2_mapo.evaluation.folder.evaluate_folder` (nnU-Net's Dice plus HD95, ASD and NSD) against
``nnUNet_preprocessed/<Dataset>/gt_segmentations``. The results go to ``results.json``, ``results.md`` (mean and
sample standard deviation over seeds x folds per trainer, MAPO/baseline ratios of the runs of the same seed and
fold), ``metrics.png`` and ``training_curves.png``.

Seeds: nnU-Net has no seed option and seeds nothing itself (initial weights, patch sampling and augmentation are
random in every process). A seed here is a repetition: an independent warm-up and independent trainings, with
``mapo_seed`` set to the seed index for MAPO's own randomness (round cases, dropout masks, pair sampling).

Shared warm-up (``--shared-warmup-epochs W``): per seed and fold (with ``--single-warmup``: once per fold, seed 0's,
for every seed),
:class:`~nnunetv2_mapo.benchmark.trainers.nnUNetTrainerBenchmarkWarmup` trains W epochs (its learning-rate
schedule spans W + E epochs, so it is the start of a W + E epoch training). Its ``checkpoint_final.pth`` is copied
into both trainers' fold folders as ``checkpoint_latest.pth`` and both continue with ``--c`` for E more epochs from
identical weights, optimizer state, learning-rate position and logs. MAPO gets ``mapo_warmup_epochs = W`` and an
initial state file beside the copy (:func:`nnunetv2_mapo.training.checkpointing.write_state`).

Every step is skipped when its result is on disk (``checkpoint_final.pth`` plus the evaluation summary for a
training), and every training runs with ``--c``, so an interrupted benchmark continues where it stopped when the
same command is run again; the tables and plots are recomputed from the files each time.

Memory: the peak resident set size of each ``nnUNetv2_train`` process is ``ru_maxrss`` of the rusage that
``os.wait4`` returns for it (Linux: the larger of the process's own peak and that of its largest waited-for child,
such as nnU-Net's export workers; not a sum). It is started by a tiny launcher process rather than directly from the
benchmark's process, whose own peak would otherwise be counted (see :func:`run_process`).

Modules:

- :mod:`.spec`: what to run, and its checks before any training
- :mod:`.split`, :mod:`.compute`, :mod:`.paired`: the low-data split, the equal-compute arm's iterations, the paired
  per-case statistics
- :mod:`.dataset`, :mod:`.plans`: the dataset in the workspace, plans variants (batch size)
- :mod:`.process`: running ``nnUNetv2_train`` with wall time and peak memory
- :mod:`.runner`: the benchmark itself: warm-up, trainings, evaluation
- :mod:`.results`, :mod:`.stats`, :mod:`.report`, :mod:`.plots`: records, summaries, the markdown report, figures
- :mod:`.trainers`, :mod:`.lookup`: the baseline and warm-up trainers, listed for nnU-Net only in the benchmark's own
  processes
- :mod:`.cli`: the command's arguments
- :mod:`.compare`: ``nnunetv2_mapo benchmark-compare``, several variants' benchmarks in one table
- :mod:`.test_source`: ``--test-source``, a second test set from another source
- :mod:`.regimes`: the overview table of every regime measured (``benchmark-compare --regimes``)
"""
