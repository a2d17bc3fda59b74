"""Statistics of benchmark runs: means and spreads, paired ratios, epoch timing and round diagnostics."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("Dice", "HD95", "ASD", "NSD")
# Quantities of a run that the summary and the ratios cover, with their table labels and number formats.
QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("Dice", "Dice (foreground mean)", "{:.4f}"),
    ("HD95", "HD95 (mm, foreground mean)", "{:.2f}"),
    ("ASD", "ASD (mm, foreground mean)", "{:.3f}"),
    ("NSD", "NSD (foreground mean, 2 mm tolerance)", "{:.4f}"),
    ("wall_seconds", "wall time per training (s)", "{:.1f}"),
    ("seconds_per_epoch", "time per epoch (s)", "{:.2f}"),
    ("training_seconds", "epoch time, summed (s)", "{:.1f}"),
    ("preference_seconds", "preference rounds (s)", "{:.1f}"),
    ("preference_share", "preference rounds, share of epoch time", "{:.1%}"),
    ("peak_rss_gib", "peak memory, max RSS (GiB)", "{:.2f}"),
    ("peak_gpu_gib", "peak GPU memory, torch.cuda.max_memory_allocated (GiB)", "{:.2f}"),
    ("round_dice_chosen", "rounds: Dice of y+ (mean over pairs and rounds)", "{:.4f}"),
    ("round_dice_rejected", "rounds: Dice of y-", "{:.4f}"),
    ("round_dice_no_dropout", "rounds: Dice without dropout, same patches", "{:.4f}"),
)
# Round diagnostics logged by the MAPO trainer, averaged over the rounds of a run.
ROUND_DICE_KEYS = {"round_dice_chosen": "mapo_dice_chosen", "round_dice_rejected": "mapo_dice_rejected",
                   "round_dice_no_dropout": "mapo_dice_no_dropout"}
_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")


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
