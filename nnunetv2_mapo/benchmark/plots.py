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
