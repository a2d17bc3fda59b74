"""Every quantity MAPO logs, declared once: the loss, the trainer's epoch log, the plot and the docs read it here.

Each metric is one key of nnU-Net's logger (one value per epoch, NaN when it does not apply). The reward names
follow TRL's DPO trainer (``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``).
Notation (``docs/method.md``): h+ = (l_theta(y+) - l_ref(y+)) / |D| in nats per disagreement voxel, r+ = beta h+,
r- and h- likewise, D the voxels where y+ and y- differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SOURCES = ("step", "set", "round")
REDUCTIONS = ("mean", "sum", "value")


@dataclass(frozen=True)
class Metric:
    """One logged quantity.

    Args:
        key: The logger key.
        source: ``step`` (each training step with pairs gives a value; the epoch logs their reduction), ``set``
            (the preference set in use, every epoch after the first round), ``round`` (the round run at the start
            of this epoch; NaN in epochs without one).
        reduction: How step values become the epoch's value: ``mean`` or ``sum`` over the steps with pairs;
            ``value`` for set and round metrics (one value per epoch).
        panel: The panel of ``progress_mapo.png`` that shows it ("" for none).
        meaning: Definition (formula) for the docs.
        trl_name: The name of the same quantity in TRL's DPO trainer, if it has one.
    """

    key: str
    source: str
    reduction: str
    panel: str
    meaning: str
    trl_name: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {self.source!r}.")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {self.reduction!r}.")
        if (self.source == "step") == (self.reduction == "value"):
            raise ValueError(f"{self.key}: step metrics are reduced by mean or sum, the others are one 'value'.")


METRICS: tuple[Metric, ...] = (
    Metric("mapo_dpo_loss", "step", "mean", "preference loss",
           "preference loss L_p, mean over pairs (DPO: -log sigmoid(r+ - r-), ln 2 at a round's start)", "loss"),
    Metric("mapo_term", "step", "mean", "",
           "what the step adds to Dice+CE, before mapo_weight: the mean of the pairs' losses, each sized by "
           "P |D_p| / (B |Omega|) / s with mapo_term_scale 'voxel_gradient'"),
    Metric("mapo_margin_nats", "step", "mean", "margin per voxel",
           "mean of h = h+ - h- over pairs: the log-ratio margin in nats per disagreement voxel (r+ - r- = beta h)"),
    Metric("mapo_rewards_chosen", "step", "mean", "implicit rewards", "mean of r+ over pairs", "rewards/chosen"),
    Metric("mapo_rewards_rejected", "step", "mean", "implicit rewards", "mean of r- over pairs", "rewards/rejected"),
    Metric("mapo_reward_margin", "step", "mean", "implicit rewards", "mean of r+ - r- over pairs", "rewards/margins"),
    Metric("mapo_reward_accuracy", "step", "mean", "reward accuracy", "share of pairs with r+ > r-",
           "rewards/accuracies"),
    Metric("mapo_skipped_steps", "step", "sum", "",
           "steps whose preference term was not finite and was left out (they trained on Dice+CE alone)"),
    Metric("mapo_num_pairs", "set", "value", "preference set",
           "pairs in the preference set in use (mapo_online_pairs: the epoch's steps that drew pairs)"),
    Metric("mapo_dice_chosen", "round", "value", "round Dice of the pairs", "mean Dice of y+ over the round's pairs"),
    Metric("mapo_dice_rejected", "round", "value", "round Dice of the pairs", "mean Dice of y- over the round's pairs"),
    Metric("mapo_dice_no_dropout", "round", "value", "round Dice of the pairs",
           "mean Dice of the network's own prediction (dropout off) on the same patches: is y+ better than it?"),
    Metric("mapo_dice_gap", "round", "value", "", "mean Dice(y+) - Dice(y-) over the pairs"),
    Metric("mapo_regen_seconds", "round", "value", "round time [s]", "seconds the round took"),
    Metric("mapo_unlabeled_pairs", "round", "value", "unlabeled pairs",
           "nnUNetTrainerMAPO_Unlabeled: pairs the round drew from unlabeled patches (in mapo_num_pairs as well)"),
    Metric("mapo_unlabeled_items", "round", "value", "unlabeled pairs",
           "nnUNetTrainerMAPO_Unlabeled: unlabeled patches the round scored (one per case)"),
    Metric("mapo_unlabeled_seconds", "round", "value", "round time [s]",
           "nnUNetTrainerMAPO_Unlabeled: seconds of the round spent on unlabeled patches (in mapo_regen_seconds)"),
)

LOG_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)
STEP_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if m.source == "step")
ROUND_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if m.source == "round")


def panels() -> list[tuple[str, tuple[str, ...]]]:
    """``(panel title, keys)`` in the order of :data:`METRICS`."""
    order: dict[str, list[str]] = {}
    for metric in (m for m in METRICS if m.panel):
        order.setdefault(metric.panel, []).append(metric.key)
    return [(title, tuple(keys)) for title, keys in order.items()]


def inactive_step_stats() -> dict[str, float]:
    """The step statistics of a step without pairs: NaN, which the epoch's reduction leaves out."""
    return {key: math.nan for key in STEP_KEYS}


def reduce_step_stats(stats: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The epoch's value of each step metric from its per-step values.

    Args:
        stats: ``{key: values of the epoch's steps}`` for every key of :data:`STEP_KEYS` (NaN for steps without
            pairs).

    Returns:
        ``mean``: the mean of the finite values (NaN without any); ``sum``: their sum (0.0 without any).
    """
    result = {}
    for metric in METRICS:
        if metric.source != "step":
            continue
        finite = [float(v) for v in stats[metric.key] if not math.isnan(v)]
        if metric.reduction == "sum":
            result[metric.key] = float(sum(finite))
        else:
            result[metric.key] = float(sum(finite) / len(finite)) if finite else math.nan
    return result


def markdown_table() -> str:
    """The metrics as a markdown table (kept in sync with ``docs/usage.md`` by a test)."""
    rows = ["| log key | TRL name | from | per epoch | meaning |", "|---|---|---|---|---|"]
    for m in METRICS:
        per_epoch = {"mean": "mean over steps with pairs", "sum": "sum over steps",
                     "value": "every epoch" if m.source == "set" else "epochs with a round"}[m.reduction]
        rows.append(f"| `{m.key}` | {m.trl_name and f'`{m.trl_name}`'} | {m.source} | {per_epoch} | {m.meaning} |")
    return "\n".join(rows)


def register_log_keys(logger, keys: Sequence[str], epoch: int) -> None:
    """Registers ``keys`` with nnU-Net's logger, which only takes known keys (one value per epoch), padded with NaN up
    to ``epoch`` (a resumed run's old log lacks them)."""
    logged = logger.local_logger.my_fantastic_logging
    for key in keys:
        values = logged.setdefault(key, [])
        values.extend([math.nan] * (epoch - len(values)))


def epoch_line(values: Mapping[str, float]) -> str:
    """The epoch's line in nnU-Net's log, from its logged values."""
    skipped = values["mapo_skipped_steps"]
    return (f"MAPO: dpo_loss {values['mapo_dpo_loss']:.4f}, reward accuracy {values['mapo_reward_accuracy']:.3f}, "
            f"margin {values['mapo_reward_margin']:.4f} ({values['mapo_margin_nats']:.4f} nats per voxel), pairs "
            f"{int(values['mapo_num_pairs'])}"
            + (f", {int(skipped)} steps skipped (non-finite DPO)" if skipped else ""))
