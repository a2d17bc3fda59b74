"""``nnUNetTrainerMAPO``: nnU-Net's trainer plus Model-Agnostic Preference Optimization.

The class only wires nnU-Net's hooks to the modules that do the work:

- network: :mod:`nnunetv2_mapo.dropout` (dropout hooks, state-dict keys unchanged)
- settings: :mod:`nnunetv2_mapo.config` (defaults, ranges, ``nnUNet_mapo_config``)
- preference rounds: :mod:`nnunetv2_mapo.preference_set` and :mod:`nnunetv2_mapo.scoring`
- loss: :mod:`nnunetv2_mapo.loss` and :mod:`nnunetv2_mapo.dpo`
- checkpoints: :mod:`nnunetv2_mapo.checkpointing`; plots: :mod:`nnunetv2_mapo.progress`
"""

from __future__ import annotations

import json
import math
import os
import warnings
from time import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import distributed as dist
from torch import nn

from nnunetv2_mapo import __version__
from nnunetv2_mapo.checkpointing import MAPOStateError, atomic_path, load_state, remove_states, save_with_state
from nnunetv2_mapo.config import ALL_SETTINGS, ENV_VAR, MAPO_SETTINGS, config_from_environment, resolve_and_check
from nnunetv2_mapo.distributed import (
    assert_same_on_all_ranks,
    gather_preference_set,
    gather_step_stats,
    parameters_fingerprint,
    shard_cases,
)
from nnunetv2_mapo.dpo import DPOLoss
from nnunetv2_mapo.dropout import find_injector, inject_dropout, unwrap
from nnunetv2_mapo.loss import STEP_STAT_KEYS, MAPOLoss
from nnunetv2_mapo.preference_set import PreferenceSet, generate_preference_set, pairs_for_step
from nnunetv2_mapo.progress import plot_mapo_progress

__all__ = [
    "nnUNetTrainerMAPO",
    "nnUNetTrainerMAPO_NoWarmup",
    "nnUNetTrainerMAPO_IPO",
    "nnUNetTrainerMAPO_Hinge",
    "nnUNetTrainerMAPO_ChannelDropout",
]

EPOCH_LOG_KEYS = (
    "mapo_dpo_loss", "mapo_reward_accuracy", "mapo_reward_margin", "mapo_rewards_chosen", "mapo_rewards_rejected",
    "mapo_num_pairs", "mapo_regen_seconds", "mapo_dice_gap", "mapo_skipped_steps",
    "mapo_dice_chosen", "mapo_dice_rejected", "mapo_dice_no_dropout",
)


class MAPOUnsupportedError(RuntimeError):
    """The dataset or configuration is one MAPO refuses (see docs/usage.md, 'Supported datasets')."""


class _FixedKeysLoader(nnUNetDataLoader):
    """nnU-Net's loader, but for given cases, one foreground-centred patch each (no augmentation)."""

    def load(self, keys: list[str]) -> dict:
        self._keys, self.batch_size = list(keys), len(keys)
        return self.generate_train_batch()

    def get_indices(self) -> list[str]:
        return self._keys


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class nnUNetTrainerMAPO(nnUNetTrainer):
    """nnU-Net trainer with dropout hypotheses, online preference rounds and a DPO term (see ``docs/method.md``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise MAPOUnsupportedError(
                f"nnUNetTrainerMAPO does not support the cascade: configuration '{configuration}' takes the "
                f"predictions of '{self.configuration_manager.previous_stage_name}' as input, and MAPO's preference "
                f"rounds have not been validated with them. Train '3d_fullres' (or '3d_lowres') with "
                f"nnUNetTrainerMAPO, or the cascade with nnUNetTrainer.")
        for setting in MAPO_SETTINGS:
            setattr(self, setting.name, setting.default)
        self.mapo_env_overrides: dict = {}
        self.mapo_preference_set: PreferenceSet | None = None
        self.mapo_round_index = 0
        self.mapo_train_keys: list[str] = []
        self._mapo_pair_generator = torch.Generator()
        self._mapo_pair_steps = 0  # training steps taken with a preference set (they schedule the pair counts)
        self._mapo_epoch_round: dict = {}
        self._mapo_warned_empty = False

    # ----------------------------------------------------------------------------------------------- network
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        inject_dropout(network)
        return network

    # ------------------------------------------------------------------------------------------------ set-up
    def initialize(self):
        if not self.was_initialized:
            self._apply_mapo_settings()  # before any data is loaded: bad settings fail fast
        super().initialize()
        find_injector(self.network).mode = self.mapo_dropout_mode
        self._mapo_pair_generator.manual_seed(self.mapo_seed + self.local_rank)
        self._register_log_keys()

    def _apply_mapo_settings(self) -> None:
        self.mapo_env_overrides = config_from_environment()
        for name, value in self.mapo_env_overrides.items():
            setattr(self, name, value)
        current = {name: getattr(self, name) for name in ALL_SETTINGS}
        for name, value in resolve_and_check(current, self.configuration_manager.batch_size).items():
            setattr(self, name, value)

    def mapo_settings(self) -> dict:
        """The settings in effect (JSON-ready)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in ALL_SETTINGS}

    def _build_loss(self):
        preference = DPOLoss(self.mapo_beta, self.mapo_loss_type, regions=self.label_manager.has_regions)
        return MAPOLoss(super()._build_loss(), preference, self.mapo_weight)

    def _register_log_keys(self) -> None:
        # nnU-Net's local logger only takes registered keys, one value per epoch; pad after loading old logs.
        logged = self.logger.local_logger.my_fantastic_logging
        for key in EPOCH_LOG_KEYS:
            values = logged.setdefault(key, [])
            values.extend([math.nan] * (self.current_epoch - len(values)))

    def on_train_start(self):
        super().on_train_start()  # builds the data loaders, whose do_split() records the training cases
        if self.local_rank == 0:
            record = {"trainer": type(self).__name__, "nnunetv2_mapo_version": __version__,
                      ENV_VAR: os.environ.get(ENV_VAR), "overrides_from_env": self.mapo_env_overrides,
                      "settings": self.mapo_settings()}
            with atomic_path(join(self.output_folder, "mapo_config.json")) as temporary:
                with open(temporary, "w", encoding="utf-8") as handle:
                    json.dump(record, handle, indent=2)
        self.print_to_log_file("MAPO settings: " + json.dumps(self.mapo_settings()), also_print_to_console=False)
        self.print_to_log_file(
            f"MAPO: warm-up {self.mapo_warmup_epochs} epochs, then a preference round every {self.mapo_regen_every} "
            f"epochs ({min(len(self.mapo_train_keys), self.mapo_cases_per_round or 10**9)} cases x "
            f"{self.mapo_num_hypotheses} hypotheses), {self.mapo_pairs_per_step:g} pairs per step on average, "
            f"weight {self.mapo_weight}, beta {self.mapo_beta}.")

    def do_split(self):
        train_keys, val_keys = super().do_split()
        self.mapo_train_keys = list(train_keys)  # the cases preference rounds draw from
        return train_keys, val_keys

    # --------------------------------------------------------------------------------------- preference rounds
    def mapo_round_due(self, epoch: int) -> bool:
        """Whether a preference round runs at the start of ``epoch``."""
        if epoch < self.mapo_warmup_epochs:
            return False
        return self.mapo_preference_set is None or (epoch - self.mapo_warmup_epochs) % self.mapo_regen_every == 0

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._mapo_epoch_round = {}
        if self.mapo_round_due(self.current_epoch):
            self.run_preference_round()

    def _round_cases(self) -> list[str]:
        keys = sorted(self.mapo_train_keys)
        limit = self.mapo_cases_per_round
        if limit is not None and limit < len(keys):
            rng = np.random.RandomState((self.mapo_seed + 7919 * self.mapo_round_index) % 2**32)
            keys = sorted(rng.choice(keys, limit, replace=False).tolist())
        if self.is_ddp:  # each rank scores its share; the parts are gathered afterwards
            keys = shard_cases(keys, dist.get_rank(), dist.get_world_size())
        return keys

    def _round_batches(self, keys: list[str], items_per_batch: int):
        if not keys:  # a rank with no share of the cases (more ranks than cases)
            return
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        lm = self.label_manager
        transforms = self.get_validation_transforms(
            None, is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
            regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        patch_size = self.configuration_manager.patch_size
        loader = _FixedKeysLoader(dataset, 1, patch_size, patch_size, lm, oversample_foreground_percent=1.0,
                                  transforms=transforms)
        for start in range(0, len(keys), items_per_batch):
            yield loader.load(keys[start:start + items_per_batch])

    def run_preference_round(self) -> PreferenceSet:
        """Regenerates the preference set from the training cases with the current network as reference."""
        started = time()
        keys = self._round_cases()
        self.print_to_log_file(
            f"MAPO round {self.mapo_round_index} (epoch {self.current_epoch}): {self.mapo_num_hypotheses} dropout "
            f"hypotheses for each of {len(keys)} training cases" + (" on this rank" if self.is_ddp else ""))
        items_per_forward = max(1, self.mapo_round_batch_size // self.mapo_num_hypotheses)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.mapo_seed + 1000003 * self.mapo_round_index + self.local_rank)
        # Every rank computes reference log-likelihoods for its share: the weights must be identical (no-op w/o DDP).
        assert_same_on_all_ranks(parameters_fingerprint(unwrap(self.network)), "network parameters at a MAPO round")
        numpy_state = np.random.get_state()  # nnU-Net's patch sampling uses the global numpy generator
        np.random.seed((self.mapo_seed + 7919 * self.mapo_round_index + self.local_rank) % 2**32)
        try:
            preference_set = generate_preference_set(
                unwrap(self.network), find_injector(self.network), self._round_batches(keys, items_per_forward),
                self.label_manager, self.mapo_num_hypotheses, self.mapo_dropout_rates, self.mapo_pair_margin,
                items_per_forward, self.device, generator, self.mapo_round_index, self.current_epoch)
        finally:
            np.random.set_state(numpy_state)
        preference_set = gather_preference_set(preference_set)  # all ranks end with the same set
        seconds = time() - started
        self.mapo_preference_set = preference_set
        self.mapo_round_index += 1
        self._mapo_epoch_round = {"seconds": seconds, "gap": preference_set.mean_dice_gap}
        if len(preference_set):  # the means the log line reports and the epoch's log keys record
            self._mapo_epoch_round |= {"chosen": float(preference_set.chosen_dice.mean()),
                                       "rejected": float(preference_set.rejected_dice.mean()),
                                       "no_dropout": float(preference_set.network_dice.mean())}
        self._report_round(preference_set, self._mapo_epoch_round)
        return preference_set

    def _report_round(self, preference_set: PreferenceSet, stats: dict) -> None:
        seconds = stats["seconds"]
        if len(preference_set):
            self.print_to_log_file(
                f"MAPO round {preference_set.round_index}: {len(preference_set)} pairs from "
                f"{preference_set.num_items} items ({preference_set.num_items - len(preference_set)} without a Dice "
                f"gap >= {self.mapo_pair_margin}); Dice chosen {stats['chosen']:.4f}, rejected "
                f"{stats['rejected']:.4f}, gap {stats['gap']:.4f}; without dropout {stats['no_dropout']:.4f} "
                f"(y+ better on {preference_set.chosen_beats_network:.0%} of the pairs); {seconds:.1f} s")
            return
        self.print_to_log_file(
            f"MAPO round {preference_set.round_index}: 0 pairs from {preference_set.num_items} items; {seconds:.1f} s. "
            f"Training continues on Dice+CE alone until the next round.")
        if not self._mapo_warned_empty:
            self._mapo_warned_empty = True
            warnings.warn(
                f"MAPO: no item yielded a preference pair (no dropout hypothesis scored {self.mapo_pair_margin} Dice "
                f"below the best). Lower mapo_pair_margin or raise mapo_dropout_rates if this persists.",
                RuntimeWarning, stacklevel=2)

    # ---------------------------------------------------------------------------------------------- training
    def _next_pairs(self):
        if self.mapo_preference_set is None or len(self.mapo_preference_set) == 0 or self.mapo_weight == 0:
            return None
        count = pairs_for_step(self.mapo_pairs_per_step, self._mapo_pair_steps)
        self._mapo_pair_steps += 1
        if count == 0:
            return None
        return self.mapo_preference_set.sample(count, self._mapo_pair_generator)

    def train_step(self, batch: dict) -> dict:
        pairs = self._next_pairs()
        if pairs is not None:
            data = batch["data"]
            batch = {**batch, "data": torch.cat([data, pairs.images.to(data.device, data.dtype)])}
            pairs = pairs.to(self.device)
        self.loss.set_pairs(pairs)
        result = super().train_step(batch)
        result.update(self.loss.last_stats)
        return result

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        step_stats = gather_step_stats({key: [float(o[key]) for o in train_outputs] for key in STEP_STAT_KEYS})
        active = self.mapo_preference_set is not None
        skipped = [v for v in step_stats["mapo_skipped_nonfinite"] if not math.isnan(v)]
        values = {
            "mapo_dpo_loss": _nanmean(step_stats["mapo_dpo_loss"]),
            "mapo_reward_accuracy": _nanmean(step_stats["mapo_reward_accuracy"]),
            "mapo_reward_margin": _nanmean(step_stats["mapo_reward_margin"]),
            "mapo_rewards_chosen": _nanmean(step_stats["mapo_rewards_chosen"]),
            "mapo_rewards_rejected": _nanmean(step_stats["mapo_rewards_rejected"]),
            "mapo_num_pairs": float(len(self.mapo_preference_set)) if active else math.nan,
            "mapo_regen_seconds": self._mapo_epoch_round.get("seconds", math.nan),
            "mapo_dice_gap": self._mapo_epoch_round.get("gap", math.nan),
            "mapo_dice_chosen": self._mapo_epoch_round.get("chosen", math.nan),
            "mapo_dice_rejected": self._mapo_epoch_round.get("rejected", math.nan),
            "mapo_dice_no_dropout": self._mapo_epoch_round.get("no_dropout", math.nan),
            "mapo_skipped_steps": float(sum(skipped)) if active else math.nan,
        }
        for key, value in values.items():
            self.logger.log(key, value, self.current_epoch)
        if active:
            self.print_to_log_file(
                f"MAPO: dpo_loss {values['mapo_dpo_loss']:.4f}, reward accuracy {values['mapo_reward_accuracy']:.3f}, "
                f"margin {values['mapo_reward_margin']:.4f}, pairs {int(values['mapo_num_pairs'])}"
                + (f", {int(values['mapo_skipped_steps'])} steps skipped (non-finite DPO)"
                   if values["mapo_skipped_steps"] else ""))

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_mapo_progress(self.logger.local_logger.my_fantastic_logging, self.output_folder)

    # ------------------------------------------------------------------------------------------- checkpoints
    def mapo_state_dict(self) -> dict:
        """What a resumed run needs: round counter, preference set, pair sampler, settings (tensors/plain values)."""
        return {
            "round_index": self.mapo_round_index,
            "preference_set": None if self.mapo_preference_set is None else self.mapo_preference_set.state_dict(),
            "pair_generator": self._mapo_pair_generator.get_state(),
            "pair_steps": self._mapo_pair_steps,
            "settings": self.mapo_settings(),
        }

    def load_mapo_state_dict(self, state: dict) -> None:
        """Restores :meth:`mapo_state_dict`.

        Raises:
            MAPOStateError: The state is incomplete or inconsistent.
        """
        try:
            self.mapo_round_index = int(state["round_index"])
            stored = state["preference_set"]
            self.mapo_preference_set = None if stored is None else PreferenceSet.from_state_dict(stored)
            self._mapo_pair_generator.set_state(state["pair_generator"])
            self._mapo_pair_steps = int(state.get("pair_steps", 0))  # absent in states written by 0.1.x
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise MAPOStateError(f"MAPO state is incomplete or inconsistent: {err}") from err
        if self.local_rank > 0:
            self._mapo_pair_generator.manual_seed(self.mapo_seed + self.local_rank + 104729 * self.current_epoch)
        now = self.mapo_settings()
        changed = {k: (v, now.get(k)) for k, v in state.get("settings", {}).items() if now.get(k) != v}
        if changed:
            self.print_to_log_file(f"MAPO: settings differ from the checkpoint's (saved, now): {changed}")

    def on_train_end(self):
        super().on_train_end()  # deletes checkpoint_latest.pth; its MAPO state goes with it
        if self.local_rank == 0 and not self.disable_checkpointing:
            remove_states(join(self.output_folder, "checkpoint_latest.pth"))

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        save_with_state(filename, self.current_epoch + 1, super().save_checkpoint, self.mapo_state_dict())

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("nnUNetTrainerMAPO.load_checkpoint takes the checkpoint's path (its MAPO state is a "
                            "file beside it).")
        super().load_checkpoint(filename_or_checkpoint)
        self._register_log_keys()
        state = load_state(filename_or_checkpoint, self.current_epoch)
        if state is not None:
            self.load_mapo_state_dict(state)
        elif os.path.basename(filename_or_checkpoint) == "checkpoint_final.pth":
            self.print_to_log_file(f"MAPO: no MAPO state beside {filename_or_checkpoint}; fine for validation "
                                   f"and prediction of a finished training.")
        else:
            raise MAPOStateError(
                f"{filename_or_checkpoint} has no MAPO state beside it (expected "
                f"{os.path.basename(filename_or_checkpoint)}.mapo_e{self.current_epoch:06d}.pt), so it was not "
                f"written by nnUNetTrainerMAPO. To start MAPO from its weights, train without --c and pass "
                f"-pretrained_weights {filename_or_checkpoint}.")


class nnUNetTrainerMAPO_NoWarmup(nnUNetTrainerMAPO):
    """Preference rounds from the first epoch: for fine-tuning with ``-pretrained_weights``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_warmup_epochs = 0


class nnUNetTrainerMAPO_IPO(nnUNetTrainerMAPO):
    """IPO instead of DPO's sigmoid loss."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "ipo"


class nnUNetTrainerMAPO_Hinge(nnUNetTrainerMAPO):
    """Hinge (SLiC-style) instead of DPO's sigmoid loss."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "hinge"


class nnUNetTrainerMAPO_ChannelDropout(nnUNetTrainerMAPO):
    """Hypotheses from channel (spatial) dropout instead of element-wise dropout."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_dropout_mode = "channel"
