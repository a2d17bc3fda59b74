"""The figures of a benchmark: ``metrics.png`` and ``training_curves.png``; of several, the round signature."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnunetv2_mapo.benchmark.stats import METRICS


def arm_labels(trainers: list[str]) -> list[str]:
    """Short names of the arms: baseline first, MAPO last, the equal-compute arm between them when it runs."""
    return ["baseline", *["equal compute"] * (len(trainers) - 2), "MAPO"]


def plot_metrics(results: Mapping[str, Any], path: str) -> str:
    """``metrics.png``: Dice, HD95, ASD and NSD of every run per trainer, with mean ± std.

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
        ax.set_xticklabels(arm_labels(trainers))
        unit = " (mm)" if metric in ("HD95", "ASD") else ""
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
    for index, (trainer, label) in enumerate(zip(results["trainers"], arm_labels(results["trainers"]))):
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


SIGNATURE_PANELS = (("val_losses", "validation loss"), ("mapo_margin_nats", "margin h (nats per voxel)"),
                    ("mapo_reward_accuracy", "reward accuracy"))


def plot_round_signature(results: Sequence[Mapping[str, Any]], names: Sequence[str], path: str) -> str:
    """The signature a reader looks at first: each variant's validation loss around its rounds beside the
    baseline's, its margin in nats per disagreement voxel and its reward accuracy (the first seed of each).

    The paper's Figure 2 shows the validation loss falling after each update of the preference set; 0.8's DPO showed
    it rising after every round while the margin climbed without bound.

    Args:
        results: ``results.json`` of benchmarks of one protocol (runs with ``curves``).
        names: A name per benchmark.
        path: The image file.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SIGNATURE_PANELS), 1, figsize=(10, 9), sharex=True)
    baseline = next((run for run in results[0]["runs"] if run["trainer"] == results[0]["trainers"][0]), None)
    if baseline is not None:
        values = (baseline.get("curves") or {}).get("val_losses") or []
        axes[0].plot(range(len(values)), values, color="black", lw=2, label="baseline")
    for index, (result, name) in enumerate(zip(results, names)):
        run = next((r for r in result["runs"] if r["trainer"] == result["trainers"][-1]), None)
        curves = (run or {}).get("curves") or {}
        rounds = [e for e, v in enumerate(curves.get("mapo_regen_seconds") or []) if math.isfinite(v)]
        for ax, (key, _) in zip(axes, SIGNATURE_PANELS):
            values = curves.get(key) or []
            ax.plot(range(len(values)), values, color=f"C{index}", alpha=0.85, label=name)
            round_values = [values[e] for e in rounds if e < len(values)]
            ax.plot(rounds[:len(round_values)], round_values, "|", color=f"C{index}", markersize=9)
    for ax, (_, label) in zip(axes, SIGNATURE_PANELS):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    axes[-1].set_xlabel("epoch (ticks: epochs that start with a preference round)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_forest(intervals: Sequence[tuple[str, float, float, float]], path: str) -> str:
    """The paired Dice differences of every regime with their 95% intervals, one line each, the first on top.

    The x axis is symmetric-logarithmic beyond 1 Dice point, so that a collapse (tens of points) and a parity result
    (tenths of a point) can be read in one figure.

    Args:
        intervals: (label, mean, low, high) in Dice points, e.g.
            :func:`nnunetv2_mapo.benchmark.regimes.dice_intervals` of the regimes table.
        path: The image file.

    Returns:
        ``path``.

    Raises:
        ValueError: No interval to draw.
    """
    if not intervals:
        raise ValueError("No row with a Dice interval ('mean [low, high]') to draw.")
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 0.42 * len(intervals) + 1.4))
    for position, (_, mean, low, high) in enumerate(intervals):
        color = "C2" if low > 0 else "C3" if high < 0 else "C0"  # above, below, spanning 0
        ax.plot([low, high], [position, position], color=color, lw=2)
        ax.plot(mean, position, "D", color=color)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_xscale("symlog", linthresh=1.0)
    left = min(min(low for _, _, low, _ in intervals), -1.0)
    right = max(max(high for _, _, _, high in intervals), 1.0)
    ax.set_xlim(left * 1.3, right * 1.3)
    ticks = [t for t in (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10) if left * 1.3 <= t <= right * 1.3]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(range(len(intervals)))
    ax.set_yticklabels([label for label, *_ in intervals], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("Dice difference to nnUNetTrainer (points, paired, 95% interval; symmetric log scale beyond 1)\n"
                  "green: interval above 0, red: below 0, blue: spans 0")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
