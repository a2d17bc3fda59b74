"""The preference set: generation from dropout hypotheses, sampling for training steps, and its saved state.

A round takes one foreground patch per training case, runs K dropout hypotheses per patch in batched forward passes
(normalization layers in eval mode), scores them by Dice, keeps one (y+, y-) pair per item where the Dice gap allows
it, and stores the reference log-likelihoods of both masks computed with dropout off. The reference policy is the
network at generation time; since a pair's patch never changes, its reference log-likelihoods are computed once here
instead of by a frozen network copy at every step (same loss, no extra memory, no extra forward pass). That pass
is also the network's own prediction, whose Dice is kept beside y+ and y- as a diagnostic: it tells whether the
preferred dropout hypothesis is better or worse than what the network predicts without dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn

from nnunetv2_mapo.dpo import mask_log_likelihoods
from nnunetv2_mapo.dropout import DropoutInjector
from nnunetv2_mapo.scoring import logits_to_masks, mean_foreground_dice, select_pairs, split_target

STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)  # version 1 had no network_dice


@dataclass
class PreferenceBatch:
    """Pairs for one training step (tensors on one device)."""

    images: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    valid: torch.Tensor | None
    reference_chosen_logps: torch.Tensor
    reference_rejected_logps: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> PreferenceBatch:
        return PreferenceBatch(*[None if t is None else t.to(device, non_blocking=True)
                                 for t in (getattr(self, f.name) for f in fields(self))])


@dataclass
class PreferenceSet:
    """Preference pairs of one round, kept on the CPU.

    Attributes:
        images: ``(P, C_in, *patch)`` float16 input patches.
        chosen: Preferred masks, ``(P, *patch)`` labels or ``(P, R, *patch)`` bool regions.
        rejected: Dispreferred masks, same layout.
        valid: ``(P, 1, *patch)`` bool (False on the ignore label) or None.
        reference_chosen_logps: ``(P,)`` reference log-likelihood of y+ over the disagreement voxels.
        reference_rejected_logps: ``(P,)`` the same for y-.
        chosen_dice: ``(P,)`` Dice of y+; ``rejected_dice`` likewise.
        network_dice: ``(P,)`` Dice of the network's prediction without dropout (NaN in sets saved by version 1).
        keys: Case identifier of each pair.
        round_index: Which round made the set (0-based).
        epoch: The epoch at whose start it was made.
        num_items: Items scored in the round (pairs plus items without a pair).
    """

    images: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    valid: torch.Tensor | None
    reference_chosen_logps: torch.Tensor
    reference_rejected_logps: torch.Tensor
    chosen_dice: torch.Tensor
    rejected_dice: torch.Tensor
    network_dice: torch.Tensor
    keys: list[str] = field(default_factory=list)
    round_index: int = 0
    epoch: int = 0
    num_items: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def mean_dice_gap(self) -> float:
        return float((self.chosen_dice - self.rejected_dice).mean()) if len(self) else float("nan")

    @property
    def chosen_beats_network(self) -> float:
        """Share of pairs whose y+ scores a higher Dice than the network's prediction without dropout."""
        known = ~torch.isnan(self.network_dice)  # sets saved by version 1 do not know it
        if not bool(known.any()):
            return float("nan")
        return float((self.chosen_dice[known] > self.network_dice[known]).float().mean())

    def sample(self, count: int, generator: torch.Generator) -> PreferenceBatch:
        """Draws ``count`` pairs uniformly (with replacement when the set is smaller).

        Raises:
            ValueError: The set is empty.
        """
        if len(self) == 0:
            raise ValueError("Cannot sample from an empty preference set.")
        if count <= len(self):
            index = torch.randperm(len(self), generator=generator)[:count]
        else:
            index = torch.randint(len(self), (count,), generator=generator)
        return PreferenceBatch(
            self.images[index].float(), self.chosen[index], self.rejected[index],
            None if self.valid is None else self.valid[index],
            self.reference_chosen_logps[index], self.reference_rejected_logps[index],
        )

    def state_dict(self) -> dict:
        """Tensors and plain Python values only, so that ``torch.load(..., weights_only=True)`` reads it back."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["keys"] = list(self.keys)
        state["version"] = STATE_VERSION
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> PreferenceSet:
        """Rebuilds a set from :meth:`state_dict`, checking that the pieces fit together.

        Raises:
            ValueError: Missing fields, an unknown version, or inconsistent shapes.
        """
        if not isinstance(state, dict) or state.get("version") not in READABLE_STATE_VERSIONS:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(f"Unsupported preference-set state (version {version!r}, expected one of "
                             f"{list(READABLE_STATE_VERSIONS)}).")
        if state["version"] == 1 and isinstance(state.get("chosen_dice"), torch.Tensor):
            state = state | {"network_dice": torch.full_like(state["chosen_dice"], math.nan)}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"Preference-set state lacks the fields {missing}.")
        tensors = ("images", "chosen", "rejected", "reference_chosen_logps", "reference_rejected_logps",
                   "chosen_dice", "rejected_dice", "network_dice")
        wrong = [n for n in tensors if not (isinstance(state[n], torch.Tensor) and state[n].ndim >= 1)]
        if state["valid"] is not None and not (isinstance(state["valid"], torch.Tensor) and state["valid"].ndim >= 1):
            wrong.append("valid")
        if not isinstance(state["keys"], list) or not all(isinstance(k, str) for k in state["keys"]):
            wrong.append("keys")
        wrong += [n for n in ("round_index", "epoch", "num_items") if type(state[n]) is not int]
        if wrong:
            raise ValueError(f"Preference-set state is corrupt: the fields {wrong} have the wrong type.")
        result = cls(**{n: state[n] for n in names})
        count = result.images.shape[0]
        per_pair = [result.chosen, result.rejected, result.reference_chosen_logps, result.reference_rejected_logps,
                    result.chosen_dice, result.rejected_dice, result.network_dice]
        per_pair += [result.valid] if result.valid is not None else []
        if any(t.shape[0] != count for t in per_pair) or len(result.keys) != count:
            raise ValueError("Preference-set state is inconsistent: its tensors hold different numbers of pairs.")
        if result.chosen.shape != result.rejected.shape:
            raise ValueError("Preference-set state is inconsistent: chosen and rejected masks differ in shape.")
        return result

    @classmethod
    def concatenate(cls, parts: Sequence[PreferenceSet]) -> PreferenceSet:
        """Joins the parts made by several ranks (in rank order) into one set."""
        num_items = sum(p.num_items for p in parts)
        parts = [p for p in parts if len(p)] or list(parts[:1])
        first = parts[0]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            images=cat("images"), chosen=cat("chosen"), rejected=cat("rejected"),
            valid=None if first.valid is None else cat("valid"),
            reference_chosen_logps=cat("reference_chosen_logps"),
            reference_rejected_logps=cat("reference_rejected_logps"),
            chosen_dice=cat("chosen_dice"), rejected_dice=cat("rejected_dice"), network_dice=cat("network_dice"),
            keys=[k for p in parts for k in p.keys], round_index=first.round_index, epoch=first.epoch,
            num_items=num_items,
        )


def pairs_for_step(pairs_per_step: float, step: int) -> int:
    """How many pairs training step ``step`` (0-based) carries so that steps ``0..n-1`` carry ``ceil(rate x n)``.

    A fractional rate alternates between its floor and its ceiling (0.375: 1, 0, 1, 0, 0, 1, 0, 0, ...), so the
    extra compute stays ``rate / batch size`` on average, and with nnU-Net's SGD momentum of 0.99 a pair every few
    steps acts like a fraction of one every step. Step 0 always carries at least one pair.

    Args:
        pairs_per_step: The average number of pairs per step, > 0.
        step: The index of the step among the steps with a preference set.

    Raises:
        ValueError: A rate <= 0 or a negative step.
    """
    if not pairs_per_step > 0:
        raise ValueError(f"pairs_per_step must be > 0, got {pairs_per_step}.")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")

    def carried(n: int) -> int:  # rounding first: 0.1 x 30 must give 3, not ceil(3.0000000000000004) = 4
        return math.ceil(round(pairs_per_step * n, 9))

    return carried(step + 1) - carried(step)


def hypothesis_rates(dropout_rates: Sequence[float], num_hypotheses: int) -> list[float]:
    """Spreads the configured rates evenly over K hypotheses (each rate used about K/len(rates) times)."""
    return [float(dropout_rates[k * len(dropout_rates) // num_hypotheses]) for k in range(num_hypotheses)]


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


@torch.no_grad()
def generate_preference_set(
    network: nn.Module,
    injector: DropoutInjector,
    batches: Iterable[dict],
    label_manager: LabelManager,
    num_hypotheses: int,
    dropout_rates: Sequence[float],
    pair_margin: float,
    items_per_forward: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    round_index: int = 0,
    epoch: int = 0,
) -> PreferenceSet:
    """Runs one preference round over ``batches`` and returns the pairs it found.

    Args:
        network: The policy, unwrapped (no DDP). It is put in eval mode for the round (dropout comes from the
            injector only, normalization layers keep their running statistics) and restored afterwards.
        injector: The network's :class:`DropoutInjector`.
        batches: Dicts with ``data`` ``(n, C_in, *patch)``, ``target`` (training format, full resolution) and
            ``keys``, as nnU-Net's data loader yields them without augmentation.
        label_manager: The dataset's label manager.
        num_hypotheses: K.
        dropout_rates: Rates spread over the K hypotheses (:func:`hypothesis_rates`).
        pair_margin: tau, the minimum Dice gap between y+ and y-.
        items_per_forward: Items per batched forward pass (each item is replicated K times).
        device: Where to run the network.
        generator: Random generator for the dropout masks (on ``device``).
        round_index: Stored in the set.
        epoch: Stored in the set.

    Returns:
        The preference set (possibly empty), on the CPU.
    """
    rates = torch.tensor(hypothesis_rates(dropout_rates, num_hypotheses))
    was_training = network.training
    network.eval()
    autocast = torch.autocast("cuda") if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    parts: dict[str, list] = {name: [] for name in ("images", "chosen", "rejected", "valid", "ref_c", "ref_r",
                                                     "dice_c", "dice_r", "dice_n", "keys")}
    num_items = 0
    try:
        for batch in batches:
            data_all, target_all, keys_all = batch["data"], batch["target"], list(batch["keys"])
            for start in range(0, data_all.shape[0], max(1, items_per_forward)):
                stop = start + max(1, items_per_forward)
                # Rounded to the float16 the set stores, so the reference sees exactly what the policy will see.
                data = data_all[start:stop].to(device).half().float()
                target = target_all[start:stop].to(device)
                n = data.shape[0]
                num_items += n
                reference, valid = split_target(target, label_manager)
                with autocast:
                    with injector.sampling(rates.repeat(n), generator):
                        logits = _first_output(network(data.repeat_interleave(num_hypotheses, 0)))
                    hypotheses = logits_to_masks(logits, label_manager)
                    hypotheses = hypotheses.reshape(n, num_hypotheses, *hypotheses.shape[1:])
                    scores = mean_foreground_dice(hypotheses, reference, valid, label_manager)
                    chosen_idx, rejected_idx, has_pair = select_pairs(scores, pair_margin)
                    items = torch.arange(n, device=device)
                    chosen, rejected = hypotheses[items, chosen_idx], hypotheses[items, rejected_idx]
                    reference_logits = _first_output(network(data))
                    network_masks = logits_to_masks(reference_logits, label_manager).unsqueeze(1)
                    network_scores = mean_foreground_dice(network_masks, reference, valid, label_manager)[:, 0]
                ref_c, ref_r, num_disagree = mask_log_likelihoods(
                    reference_logits.float(), chosen, rejected, valid, label_manager.has_regions)
                keep = has_pair & (num_disagree > 0)
                if not bool(keep.any()):
                    continue
                keep_cpu = keep.cpu()
                parts["images"].append(data[keep].half().cpu())
                parts["chosen"].append(chosen[keep].cpu())
                parts["rejected"].append(rejected[keep].cpu())
                parts["valid"].append(None if valid is None else valid[keep].cpu())
                parts["ref_c"].append(ref_c[keep].cpu())
                parts["ref_r"].append(ref_r[keep].cpu())
                parts["dice_c"].append(scores[items, chosen_idx][keep].float().cpu())
                parts["dice_r"].append(scores[items, rejected_idx][keep].float().cpu())
                parts["dice_n"].append(network_scores[keep].float().cpu())
                parts["keys"].extend(str(k) for k, kept in zip(keys_all[start:stop], keep_cpu.tolist()) if kept)
    finally:
        network.train(was_training)
    return _assemble(parts, label_manager, round_index, epoch, num_items)


def _assemble(parts: dict, label_manager: LabelManager, round_index: int, epoch: int, num_items: int) -> PreferenceSet:
    if parts["images"]:
        cat = lambda name: torch.cat(parts[name])  # noqa: E731
        return PreferenceSet(
            images=cat("images"), chosen=cat("chosen"), rejected=cat("rejected"),
            valid=None if parts["valid"][0] is None else cat("valid"),
            reference_chosen_logps=cat("ref_c"), reference_rejected_logps=cat("ref_r"),
            chosen_dice=cat("dice_c"), rejected_dice=cat("dice_r"), network_dice=cat("dice_n"), keys=parts["keys"],
            round_index=round_index, epoch=epoch, num_items=num_items,
        )
    return empty_preference_set(round_index, epoch, num_items, has_ignore=label_manager.has_ignore_label)


def empty_preference_set(round_index: int = 0, epoch: int = 0, num_items: int = 0,
                         has_ignore: bool = False) -> PreferenceSet:
    """A set with no pairs (a round where no item had a large enough Dice gap)."""
    none = torch.zeros(0)
    return PreferenceSet(
        images=torch.zeros(0, dtype=torch.float16), chosen=torch.zeros(0, dtype=torch.uint8),
        rejected=torch.zeros(0, dtype=torch.uint8), valid=torch.zeros(0, dtype=torch.bool) if has_ignore else None,
        reference_chosen_logps=none, reference_rejected_logps=none.clone(), chosen_dice=none.clone(),
        rejected_dice=none.clone(), network_dice=none.clone(), keys=[], round_index=round_index, epoch=epoch,
        num_items=num_items,
    )
