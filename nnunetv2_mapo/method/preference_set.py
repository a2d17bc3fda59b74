"""The preference set: the pairs of one round, their sampling for training steps, and their saved state.

A set holds, per pair, the input patch (float16), the preferred and dispreferred masks, the valid-voxel mask and
the reference log-likelihoods of both masks. The reference policy is the network at generation time; since a pair's
patch never changes, its reference log-likelihoods are computed once by the round (:mod:`.round`) instead of by a
frozen network copy at every step (same loss, no extra memory, no extra forward pass). A set of mirrored pairs
(:mod:`.mirroring`) holds one reference log-likelihood per mirrored view, and :meth:`PreferenceSet.sample` mirrors
each drawn pair by a view drawn with it. The Dice of y+, of y- and of the network's own prediction without dropout
are kept as diagnostics. With several objectives (:mod:`.objectives`) an item may give one pair per objective; each
pair records its objective's index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from nnunetv2_mapo.method.mirroring import mirror_rows

STATE_VERSION = 4
READABLE_STATE_VERSIONS = (1, 2, 3, 4)  # version 1 had no network_dice, 1-2 no objective, 1-3 no views


@dataclass
class PreferenceBatch:
    """Pairs for one training step (tensors on one device)."""

    images: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    valid: torch.Tensor | None
    reference_chosen_logps: torch.Tensor
    reference_rejected_logps: torch.Tensor
    objective: torch.Tensor | None = None  # (P,) objective index of each pair; None: all 0

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
        reference_chosen_logps: ``(P,)`` reference log-likelihood of y+ over the disagreement voxels; ``(P, V)``
            with mirrored views, one column per view.
        reference_rejected_logps: ``(P,)`` or ``(P, V)``, the same for y-.
        chosen_dice: ``(P,)`` Dice of y+; ``rejected_dice`` likewise.
        network_dice: ``(P,)`` Dice of the network's prediction without dropout (NaN in sets saved by version 1).
        keys: Case identifier of each pair.
        round_index: Which round made the set (0-based).
        epoch: The epoch at whose start it was made.
        num_items: Items scored in the round (pairs plus items without a pair).
        objective: ``(P,)`` int64 index of the objective that ranked each pair (:mod:`.objectives`), or None when
            every pair is ranked by Dice (sets of a single objective, and sets saved before version 3).
        views: The mirrored views the pairs are drawn in (:func:`~.mirroring.mirror_views`, the unmirrored view
            first, as lists of spatial axes), or None: pairs are used as they were generated.
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
    objective: torch.Tensor | None = None
    views: list[list[int]] | None = None

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
        """Draws ``count`` pairs uniformly (with replacement when the set is smaller); with mirrored views, each pair
        in a view drawn uniformly, its reference log-likelihoods those of that view.

        Raises:
            ValueError: The set is empty.
        """
        if len(self) == 0:
            raise ValueError("Cannot sample from an empty preference set.")
        if count <= len(self):
            index = torch.randperm(len(self), generator=generator)[:count]
        else:
            index = torch.randint(len(self), (count,), generator=generator)
        return self.take(index, generator)

    def take(self, index: torch.Tensor, generator: torch.Generator) -> PreferenceBatch:
        """The pairs at ``index`` as a batch; with mirrored views each in a view drawn uniformly from ``generator``,
        its reference log-likelihoods those of that view."""
        count = len(index)
        images, chosen, rejected = self.images[index].float(), self.chosen[index], self.rejected[index]
        valid = None if self.valid is None else self.valid[index]
        reference_chosen, reference_rejected = self.reference_chosen_logps[index], self.reference_rejected_logps[index]
        if self.views is not None:
            views = [tuple(view) for view in self.views]
            choice = torch.randint(len(views), (count,), generator=generator)
            spatial_dims = images.ndim - 2
            images, chosen, rejected = (mirror_rows(t, views, choice, spatial_dims) for t in (images, chosen, rejected))
            valid = None if valid is None else mirror_rows(valid, views, choice, spatial_dims)
            rows = torch.arange(count)
            reference_chosen, reference_rejected = reference_chosen[rows, choice], reference_rejected[rows, choice]
        return PreferenceBatch(images, chosen, rejected, valid, reference_chosen, reference_rejected,
                               None if self.objective is None else self.objective[index])

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
        if state["version"] < 3:
            state = state | {"objective": None}
        if state["version"] < 4:
            state = state | {"views": None}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"Preference-set state lacks the fields {missing}.")
        tensors = ("images", "chosen", "rejected", "reference_chosen_logps", "reference_rejected_logps",
                   "chosen_dice", "rejected_dice", "network_dice")
        wrong = [n for n in tensors if not (isinstance(state[n], torch.Tensor) and state[n].ndim >= 1)]
        if state["valid"] is not None and not (isinstance(state["valid"], torch.Tensor) and state["valid"].ndim >= 1):
            wrong.append("valid")
        if state["objective"] is not None and not (isinstance(state["objective"], torch.Tensor)
                                                   and state["objective"].ndim == 1):
            wrong.append("objective")
        if not isinstance(state["keys"], list) or not all(isinstance(k, str) for k in state["keys"]):
            wrong.append("keys")
        if state["views"] is not None and not (isinstance(state["views"], list) and all(
                isinstance(v, list) and all(type(a) is int for a in v) for v in state["views"])):
            wrong.append("views")
        wrong += [n for n in ("round_index", "epoch", "num_items") if type(state[n]) is not int]
        if wrong:
            raise ValueError(f"Preference-set state is corrupt: the fields {wrong} have the wrong type.")
        result = cls(**{n: state[n] for n in names})
        count = result.images.shape[0]
        per_pair = [result.chosen, result.rejected, result.reference_chosen_logps, result.reference_rejected_logps,
                    result.chosen_dice, result.rejected_dice, result.network_dice]
        per_pair += [t for t in (result.valid, result.objective) if t is not None]
        if any(t.shape[0] != count for t in per_pair) or len(result.keys) != count:
            raise ValueError("Preference-set state is inconsistent: its tensors hold different numbers of pairs.")
        if result.chosen.shape != result.rejected.shape:
            raise ValueError("Preference-set state is inconsistent: chosen and rejected masks differ in shape.")
        expected = (count,) if result.views is None else (count, len(result.views))
        for reference in (result.reference_chosen_logps, result.reference_rejected_logps):
            if tuple(reference.shape) != expected:
                raise ValueError(f"Preference-set state is inconsistent: reference log-likelihoods of shape "
                                 f"{tuple(reference.shape)} for {count} pairs and views {result.views}.")
        return result

    @classmethod
    def concatenate(cls, parts: Sequence[PreferenceSet]) -> PreferenceSet:
        """Joins the parts made by several ranks (in rank order), or a round's labeled and unlabeled parts, into one
        set. Pairs of a part without objective tags get objective 0 when another part has tags."""
        num_items = sum(p.num_items for p in parts)
        parts = [p for p in parts if len(p)] or list(parts[:1])
        first = parts[0]
        tagged = any(p.objective is not None for p in parts)
        objectives = [p.objective if p.objective is not None else torch.zeros(len(p), dtype=torch.long)
                      for p in parts]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            images=cat("images"), chosen=cat("chosen"), rejected=cat("rejected"),
            valid=None if first.valid is None else cat("valid"),
            reference_chosen_logps=cat("reference_chosen_logps"),
            reference_rejected_logps=cat("reference_rejected_logps"),
            chosen_dice=cat("chosen_dice"), rejected_dice=cat("rejected_dice"), network_dice=cat("network_dice"),
            keys=[k for p in parts for k in p.keys], round_index=first.round_index, epoch=first.epoch,
            num_items=num_items, objective=torch.cat(objectives) if tagged else None, views=first.views,
        )


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
