"""One preference round, from patches to pairs (plain torch; the trainer supplies the patches).

For each item the round runs K dropout hypotheses in batched forward passes (normalization layers in eval mode, so
only the injected dropout differs between them), scores them by Dice against the ground truth, keeps one (y+, y-)
pair where the Dice gap allows it, and computes the reference log-likelihoods of both masks with dropout off. That
reference pass is also the network's own prediction, whose Dice is kept beside y+ and y- as a diagnostic: it tells
whether the preferred dropout hypothesis is better or worse than what the network predicts without dropout.
With ``pairing='ground_truth'`` the preferred mask is the ground truth itself, so it is never worse than the network.
With ``pairing='ground_truth_over_prediction'`` the ground truth is preferred over the network's own prediction
without dropout (SPIN's pairs: the target over the model's own answer); that round runs no dropout hypotheses at all.
With ``objectives=('dice', 'boundary')`` the hypotheses are also ranked by a boundary score (:mod:`.objectives`), and
each objective gives its own pair, tagged with the objective's index; ``('boundary',)`` ranks by the boundary score
alone. With ``pairing='dropout_and_prediction'`` the network's own prediction without dropout is a candidate beside
the K hypotheses, so y+ is never worse than the network's answer by the ranking's own measure.
With ``mirror_axes`` the round also computes the reference log-likelihoods of every mirrored view of each pair
(:mod:`.mirroring`; extra reference passes for the items that got a pair), so that training steps can mirror them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn

from nnunetv2_mapo.method import OBJECTIVE_SETS, PAIRINGS, PREDICTION_PAIRINGS
from nnunetv2_mapo.method.dropout import DropoutInjector
from nnunetv2_mapo.method.label_free import consensus_target
from nnunetv2_mapo.method.mirroring import mirror_views, mirrored_logits
from nnunetv2_mapo.method.objectives import boundary_scores, objectives_of
from nnunetv2_mapo.method.preference_loss import disagreement_counts, mask_log_likelihoods
from nnunetv2_mapo.method.preference_set import PreferenceSet, empty_preference_set
from nnunetv2_mapo.method.schedule import hypothesis_rates
from nnunetv2_mapo.method.scoring import logits_to_masks, mean_foreground_dice, select_pairs, split_target
from nnunetv2_mapo.method.train_eval import eval_mode, full_resolution


@dataclass
class RoundExamples:
    """Collects the first ``limit`` items of a round that got a pair, for pictures (nothing of it is saved).

    Each item is a dict of CPU tensors and numbers: ``image`` ``(C_in, *patch)``, ``reference`` (the ground truth,
    in the masks' format), ``network`` (the prediction without dropout), ``chosen`` and ``rejected`` (y+ and y-),
    their Dice ``dice_network``, ``dice_chosen``, ``dice_rejected``, and the case ``key``.
    """

    limit: int
    items: list[dict] = field(default_factory=list)

    @property
    def wanted(self) -> int:
        return max(0, self.limit - len(self.items))


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
    examples: RoundExamples | None = None,
    reference_pass: bool = True,
    pairing: str = "dropout",
    objectives: Sequence[str] = ("dice",),
    mirror_axes: Sequence[int] | None = None,
    reference_network: nn.Module | None = None,
    label_free_confidence: float | None = None,
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
        examples: When given, receives the first items with a pair (ground truth and prediction included).
        reference_pass: Run the reference pass (dropout off): it gives the reference log-likelihoods and the
            network's own prediction. Reference-free losses (SimPO) skip it: one forward pass per item less, and the
            set stores reference log-likelihoods of 0 and a network Dice of NaN.
        pairing: ``'dropout'`` (the paper's: y+ the best hypothesis, y- the worst one at least ``pair_margin``
            below it), ``'dropout_and_prediction'`` (the same over the K hypotheses and the network's prediction
            without dropout; the round always runs that pass), ``'ground_truth'`` (self-play style: y+ the ground
            truth, y- the worst hypothesis if its Dice is at most ``1 - pair_margin``) or
            ``'ground_truth_over_prediction'`` (y+ the ground truth, y- the network's prediction without dropout if
            its Dice is at most ``1 - pair_margin``; no hypotheses are run, ``num_hypotheses`` and
            ``dropout_rates`` are not used, and there is one objective only).
        objectives: What the hypotheses are ranked by, one pair per objective and item: ``'dice'``, ``'boundary'``
            (:func:`~nnunetv2_mapo.method.objectives.boundary_scores`) or both; ``pair_margin`` applies to each
            objective's score. The set records each pair's objective index when there are several.
        mirror_axes: Spatial axes the pairs may be mirrored along in training (nnU-Net's
            ``inference_allowed_mirroring_axes``); None or empty: no mirroring. Each further view costs one
            reference pass per chunk of items with a pair (none for reference-free losses).
        reference_network: A fixed reference policy (in eval mode, without the injected dropout active) whose
            log-likelihoods the pairs keep instead of the network's own; one more forward pass per item. None: the
            network itself, at this round.
        label_free_confidence: For unlabeled patches: the targets are ignored, and the vote of the hypotheses and
            the network's prediction (:func:`~nnunetv2_mapo.method.label_free.consensus_target`) stands in for the
            ground truth, with ``pairing='ground_truth'`` (y+ = the vote); only items whose agreement reaches this
            value give a pair. None: the targets are the ground truth.

    Raises:
        ValueError: An unknown ``pairing`` or objective, several objectives with
            ``'ground_truth_over_prediction'`` (they would all give the same pair), or ``label_free_confidence``
            without ``pairing='ground_truth'`` and the reference pass.

    Returns:
        The preference set (possibly empty), on the CPU.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"Unknown pairing {pairing!r}; allowed values: {list(PAIRINGS)}.")
    if "+".join(objectives) not in OBJECTIVE_SETS:
        raise ValueError(f"Unknown objectives {list(objectives)}; allowed: "
                         f"{[list(objectives_of(name)) for name in OBJECTIVE_SETS]}.")
    against_prediction = pairing in PREDICTION_PAIRINGS
    with_prediction = pairing == "dropout_and_prediction"  # the prediction is a candidate beside the hypotheses
    if label_free_confidence is not None and (pairing != "ground_truth" or not reference_pass):
        raise ValueError("label_free_confidence needs pairing 'ground_truth' (y+ = the consensus) and the reference "
                         f"pass (the network's prediction votes), got pairing {pairing!r}, reference_pass "
                         f"{reference_pass}.")
    if against_prediction and len(objectives) > 1:
        raise ValueError(f"pairing {pairing!r} gives one pair per item (the ground truth over the prediction), so it "
                         f"takes one objective, not {list(objectives)}; use objectives ('dice',).")
    views = mirror_views(mirror_axes)
    rates = torch.tensor(hypothesis_rates(dropout_rates, num_hypotheses))
    autocast = torch.autocast("cuda") if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    parts: dict[str, list] = {name: [] for name in ("images", "chosen", "rejected", "valid", "ref_c", "ref_r",
                                                     "dice_c", "dice_r", "dice_n", "keys", "objective")}
    num_items = 0
    with eval_mode(network):  # every module's own flag comes back afterwards, also when a batch fails
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
                    if reference_pass or against_prediction or with_prediction:
                        reference_logits = full_resolution(network(data))
                        network_masks = logits_to_masks(reference_logits, label_manager).unsqueeze(1)
                        network_scores = mean_foreground_dice(network_masks, reference, valid, label_manager)[:, 0]
                    else:
                        network_masks, network_scores = None, torch.full((n,), float("nan"), device=device)
                    if against_prediction:  # the one "hypothesis" is the network's own answer, without dropout
                        hypotheses, scores = network_masks, network_scores[:, None]
                    else:
                        with injector.sampling(rates.repeat(n), generator):
                            logits = full_resolution(network(data.repeat_interleave(num_hypotheses, 0)))
                        hypotheses = logits_to_masks(logits, label_manager)
                        hypotheses = hypotheses.reshape(n, num_hypotheses, *hypotheses.shape[1:])
                        scores = mean_foreground_dice(hypotheses, reference, valid, label_manager)
                        if with_prediction:  # candidate K: the network's own answer
                            hypotheses = torch.cat([hypotheses, network_masks.to(hypotheses.dtype)], 1)
                            scores = torch.cat([scores, network_scores[:, None]], 1)
                    confident = torch.ones(n, dtype=torch.bool, device=device)
                    if label_free_confidence is not None:  # no label: the candidates' vote is the target
                        reference, _, confident = consensus_target(
                            torch.cat([hypotheses, network_masks.to(hypotheses.dtype)], 1), label_manager,
                            label_free_confidence)
                        scores = mean_foreground_dice(hypotheses, reference, valid, label_manager)
                        network_scores = mean_foreground_dice(network_masks, reference, valid, label_manager)[:, 0]
                    ranked_by = [scores if objective == "dice" else boundary_scores(hypotheses, reference, valid,
                                                                                    label_manager)
                                 for objective in objectives]
                mirrored: list[torch.Tensor] | None = None  # the other views' reference logits, once per chunk
                policy_logits: torch.Tensor | None = None  # the reference policy's logits, once per chunk
                for objective_index, ranking in enumerate(ranked_by):
                    chosen, chosen_scores, rejected, rejected_scores, has_pair = _pair_up(
                        ranking, hypotheses, scores, reference, pairing, pair_margin)
                    if reference_pass:
                        if policy_logits is None:  # once per chunk
                            with autocast:
                                policy_logits = reference_logits if reference_network is None else \
                                    full_resolution(reference_network(data))
                        ref_c, ref_r, num_disagree = mask_log_likelihoods(
                            policy_logits.float(), chosen, rejected, valid, label_manager.has_regions)
                        if len(views) > 1 and bool(has_pair.any()):
                            if mirrored is None:
                                with autocast:
                                    mirrored = [mirrored_logits(reference_network or network, data, view)
                                                for view in views[1:]]
                            more = [mask_log_likelihoods(logits.float(), chosen, rejected, valid,
                                                         label_manager.has_regions)[:2] for logits in mirrored]
                            ref_c = torch.stack([ref_c, *(m[0] for m in more)], 1)
                            ref_r = torch.stack([ref_r, *(m[1] for m in more)], 1)
                    else:
                        num_disagree = disagreement_counts(chosen, rejected, valid, label_manager.has_regions)
                        ref_c = ref_r = torch.zeros((n, len(views)) if len(views) > 1 else (n,), device=device)
                    keep = has_pair & (num_disagree > 0) & confident
                    if not bool(keep.any()):
                        continue
                    kept = {"images": data, "chosen": chosen, "rejected": rejected, "valid": valid, "ref_c": ref_c,
                            "ref_r": ref_r, "dice_c": chosen_scores, "dice_r": rejected_scores,
                            "dice_n": network_scores}
                    _collect(parts, kept, keep, keys_all[start:stop], objective_index)
                    if examples is not None and objective_index == 0:
                        _add_examples(examples, kept, keep, reference, network_masks, keys_all[start:stop])
    return _assemble(parts, label_manager, round_index, epoch, num_items, len(objectives) > 1,
                     [list(view) for view in views] if len(views) > 1 else None)


def _pair_up(ranking: torch.Tensor, hypotheses: torch.Tensor, dice: torch.Tensor, reference: torch.Tensor,
             pairing: str, pair_margin: float) -> tuple[torch.Tensor, ...]:
    """One candidate pair per item from ``ranking`` ``(n, K)``: y+, its Dice, y-, its Dice, and whether it counts."""
    n = hypotheses.shape[0]
    items = torch.arange(n, device=hypotheses.device)
    if pairing.startswith("ground_truth"):  # y+ = the ground truth (perfect score), y- = the worst hypothesis
        rejected_idx = ranking.argmin(1)
        chosen = reference.to(hypotheses.dtype)
        chosen_dice = torch.ones(n, device=hypotheses.device)
        has_pair = ranking[items, rejected_idx] <= 1.0 - pair_margin
    else:
        chosen_idx, rejected_idx, has_pair = select_pairs(ranking, pair_margin)
        chosen, chosen_dice = hypotheses[items, chosen_idx], dice[items, chosen_idx]
    return chosen, chosen_dice, hypotheses[items, rejected_idx], dice[items, rejected_idx], has_pair


def _collect(parts: dict[str, list], kept: dict[str, torch.Tensor | None], keep: torch.Tensor, keys: Sequence,
             objective_index: int) -> None:
    """Appends the kept items' tensors (images in float16, the rest as they are) to ``parts``, on the CPU."""
    for name, tensor in kept.items():
        if tensor is None:
            parts[name].append(None)
        else:
            tensor = tensor[keep]
            parts[name].append((tensor.half() if name == "images" else tensor.float() if "dice" in name
                                else tensor).cpu())
    keep_cpu = keep.cpu()
    parts["objective"].append(torch.full((int(keep_cpu.sum()),), objective_index, dtype=torch.long))
    parts["keys"].extend(str(k) for k, is_kept in zip(keys, keep_cpu.tolist()) if is_kept)


def _add_examples(examples: RoundExamples, kept: dict[str, torch.Tensor | None], keep: torch.Tensor,
                  reference: torch.Tensor, network_masks: torch.Tensor | None, keys: Sequence) -> None:
    for i in keep.nonzero()[:, 0].tolist()[:examples.wanted]:
        examples.items.append({
            "image": kept["images"][i].cpu(), "reference": reference[i].cpu(),
            "network": None if network_masks is None else network_masks[i, 0].cpu(),
            "chosen": kept["chosen"][i].cpu(), "rejected": kept["rejected"][i].cpu(), "key": str(keys[i]),
            "dice_network": float(kept["dice_n"][i]), "dice_chosen": float(kept["dice_c"][i]),
            "dice_rejected": float(kept["dice_r"][i])})


def _assemble(parts: dict, label_manager: LabelManager, round_index: int, epoch: int, num_items: int,
              tag_objectives: bool, views: list[list[int]] | None) -> PreferenceSet:
    if parts["images"]:
        cat = lambda name: torch.cat(parts[name])  # noqa: E731
        return PreferenceSet(
            images=cat("images"), chosen=cat("chosen"), rejected=cat("rejected"),
            valid=None if parts["valid"][0] is None else cat("valid"),
            reference_chosen_logps=cat("ref_c"), reference_rejected_logps=cat("ref_r"),
            chosen_dice=cat("dice_c"), rejected_dice=cat("dice_r"), network_dice=cat("dice_n"), keys=parts["keys"],
            round_index=round_index, epoch=epoch, num_items=num_items,
            objective=cat("objective") if tag_objectives else None, views=views,
        )
    return empty_preference_set(round_index, epoch, num_items, has_ignore=label_manager.has_ignore_label)
