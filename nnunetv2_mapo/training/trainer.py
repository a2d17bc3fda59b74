"""``nnUNetTrainerMAPO``: nnU-Net's trainer plus Model-Agnostic Preference Optimization.

The class reads like a table of contents: each nnU-Net hook hands its MAPO part to the module that does it.

- network: :mod:`nnunetv2_mapo.method.dropout` (dropout hooks, state-dict keys unchanged)
- settings: the hyperparameters in ``__init__``; ranges and ``nnUNet_mapo_config``: :mod:`.settings`
- preference rounds: :mod:`.preference_round` (nnU-Net side) and :mod:`nnunetv2_mapo.method.round`
- loss: :mod:`.loss` (Dice+CE plus the preference term on the pair rows), :mod:`nnunetv2_mapo.method.preference_loss`
- what is logged: :mod:`.metrics`; checkpoints: :mod:`.checkpointing`; plots: :mod:`.progress`
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_mapo import __version__
from nnunetv2_mapo.method.dropout import find_injector, inject_dropout, unwrap
from nnunetv2_mapo.method.objectives import objectives_of
from nnunetv2_mapo.method.preference_loss import PreferenceLoss
from nnunetv2_mapo.method.preference_set import PreferenceBatch, PreferenceSet
from nnunetv2_mapo.method.schedule import PairReuse, pairs_for_step
from nnunetv2_mapo.method.train_eval import eval_mode_forward, mode_dependent_modules
from nnunetv2_mapo.training.checkpointing import (
    MAPOStateError,
    load_state,
    read_preference_set,
    read_reference_network,
    remove_states,
    remove_unreferenced_sets,
    save_with_state,
    trainer_state,
    write_json,
    write_preference_set,
    write_reference_network,
)
from nnunetv2_mapo.training.distributed import gather_step_stats
from nnunetv2_mapo.training.gpu_memory import peak_gpu_memory_line
from nnunetv2_mapo.training.loss import MAPOLoss, append_pair_rows, collate_step_stats
from nnunetv2_mapo.training.metrics import LOG_KEYS, epoch_line, reduce_step_stats, register_log_keys
from nnunetv2_mapo.training.preference_round import frozen_copy, online_pairs, run_preference_round
from nnunetv2_mapo.training.progress import plot_mapo_progress
from nnunetv2_mapo.training.settings import (
    ALLOW_CHANGED_SETTINGS_VAR,
    ENV_VAR,
    TRAINER_SETTINGS,
    MAPOSettingsChanged,
    check_resumed_settings,
    config_from_environment,
    describe_schedule,
    preference_loss_config,
    refuse_unread_settings,
    resolve_and_check,
)

__all__ = ["ALLOW_CHANGED_SETTINGS_VAR", "MAPOSettingsChanged", "MAPOUnsupportedError", "nnUNetTrainerMAPO"]


class MAPOUnsupportedError(RuntimeError):
    """The dataset or configuration is one MAPO refuses (see docs/usage.md, 'Supported datasets')."""


class nnUNetTrainerMAPO(nnUNetTrainer):
    """nnU-Net trainer with dropout hypotheses, online preference rounds and a DPO term (see ``docs/method.md``)."""

    mapo_setting_names: tuple[str, ...] = TRAINER_SETTINGS  # what nnUNet_mapo_config may set for this class

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise MAPOUnsupportedError(
                f"nnUNetTrainerMAPO does not support the cascade: configuration '{configuration}' takes the "
                f"predictions of '{self.configuration_manager.previous_stage_name}' as input, and MAPO's preference "
                f"rounds have not been validated with them. Train '3d_fullres' (or '3d_lowres') with "
                f"nnUNetTrainerMAPO, or the cascade with nnUNetTrainer.")

        ### Some hyperparameters for you to fiddle with (ranges: nnunetv2_mapo settings; why: docs/settings.md)
        self.mapo_warmup_epochs: int | None = None  # plain Dice+CE epochs before the first round; None: 10%
        self.mapo_start_dice = 0.0  # the first round also waits for nnU-Net's EMA pseudo Dice to reach this
        self.mapo_regen_every = 50  # epochs between preference rounds at most (the paper's Figure 2)
        self.mapo_num_hypotheses = 8  # K dropout predictions per training case and round
        self.mapo_dropout_rates = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)  # spread over the K hypotheses
        self.mapo_dropout_mode = "element"  # or "channel" (whole feature maps)
        self.mapo_pair_margin = 0.05  # tau: y- scores at least this much Dice below y+
        self.mapo_pairing = "dropout"  # y+ the best hypothesis (the paper); or "ground_truth[_over_prediction]"
        self.mapo_objectives = "dice"  # what pairs are ranked by; or "dice+boundary" (one pair per objective)
        self.mapo_beta = 1.0  # rewards = beta x log-ratio in nats per disagreement voxel
        self.mapo_weight = 1.0  # lambda: at a round's start a disagreement voxel gets lambda x CE's largest gradient
        self.mapo_term_scale = "voxel_gradient"  # the term sized by its gradient per voxel against cross-entropy's
        self.mapo_loss_type = "cdpo"  # conservative DPO: stops at a finite margin; or "sigmoid" (DPO), "ipo", ...
        self.mapo_label_smoothing = 0.1  # cDPO's epsilon: stops at ln((1 - eps) / eps) / beta = 2.2 nats per voxel
        self.mapo_target_margin = 1.0  # nats per voxel where "target_margin" stops
        self.mapo_simpo_gamma = 0.5  # SimPO's target margin (loss type "simpo")
        self.mapo_dpop_lambda = 10.0  # DPO-Positive's penalty (loss type "dpop")
        self.mapo_rpo_alpha = 1.0  # RPO's weight of y+'s negative log-likelihood per voxel (loss type "rpo")
        self.mapo_reference_policy = "round"  # the reference: the network at each round; or "first_round"
        self.mapo_online_pairs = False  # no rounds: each step's pairs come from its own batch, each used once
        self.mapo_max_pair_uses: int | None = 4  # steps that may draw each pair; a spent set is regenerated
        self.mapo_pairs_per_step: float | None = None  # pair rows added per step on average; None: batch size / 8
        self.mapo_cases_per_round: int | None = 100  # training cases per round; None: all
        self.mapo_patches_per_case = 1  # patches per case and round (2d: other slices); more pairs, each reused less
        self.mapo_mirror_pairs = False  # each step draws a pair in a mirrored view (nnU-Net's mirror axes)
        self.mapo_round_batch_size: int | None = None  # forward passes batched in a round; None: K
        self.mapo_seed = 12345  # round cases, dropout masks, pair sampling
        self.mapo_round_pictures = 4  # items per round in mapo_rounds/round_NNNN.png; 0: none

        # state
        self.mapo_env_overrides: dict = {}
        self.mapo_preference_set: PreferenceSet | None = None
        self.mapo_round_index = 0
        self.mapo_train_keys: list[str] = []  # the cases preference rounds draw from (do_split)
        self.mapo_warned_empty_round = False
        self.mapo_warned_no_mirroring = False
        self._mapo_pair_generator = torch.Generator()
        self._mapo_pair_steps = 0  # training steps taken with a preference set (they schedule the pair counts)
        self._mapo_pair_reuse = PairReuse(0, None)  # draws per pair of the set in use (mapo_max_pair_uses)
        self.mapo_reference_network: nn.Module | None = None  # the fixed reference policy ("first_round")
        self._mapo_reference_file: str | None = None  # where it was written
        self._mapo_epoch_round: dict[str, float] = {}  # the metrics of the round run at this epoch's start
        self._mapo_set_reference: dict | None = None  # the file the set in use was written to
        self.mapo_step_stats: list[dict] = []  # MAPOLoss.last_stats of this epoch's steps
        self.mapo_pair_pass_in_eval_mode = False  # set in initialize: the network's train and eval modes differ

    # ----------------------------------------------------------------------------------------------- network
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        # The next class in the method resolution order builds the network: nnUNetTrainer's planned one, or that of
        # the trainer MAPO is combined with (class nnUNetTrainerX_MAPO(nnUNetTrainerMAPO, nnUNetTrainerX): pass).
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        inject_dropout(network)
        return network

    # ------------------------------------------------------------------------------------------------ set-up
    def initialize(self):
        if not self.was_initialized:
            self._apply_mapo_settings()  # before any data is loaded: bad settings fail fast
        super().initialize()  # sets self.batch_size: this rank's share of the batch with several GPUs
        self.mapo_pairs_per_step = resolve_and_check(self._current_settings(), self.batch_size)["mapo_pairs_per_step"]
        find_injector(self.network).mode = self.mapo_dropout_mode
        self._mapo_pair_generator.manual_seed(self.mapo_seed + self.local_rank)
        register_log_keys(self.logger, LOG_KEYS, self.current_epoch)
        self._choose_pair_pass()

    def _choose_pair_pass(self) -> None:
        # The reference is the eval-mode network; the pair rows must see the same function (method/train_eval.py).
        differing = mode_dependent_modules(unwrap(self.network))
        self.mapo_pair_pass_in_eval_mode = bool(differing)
        if differing:
            shown = ", ".join(name or type(unwrap(self.network)).__name__ for name in differing[:4])
            self.print_to_log_file(
                f"MAPO: {len(differing)} modules compute differently in training and eval mode ({shown}"
                f"{', ...' if len(differing) > 4 else ''}); the pair rows get an eval-mode forward pass of their own, "
                f"the function their reference log-likelihoods come from.")

    def _apply_mapo_settings(self) -> None:
        self.mapo_env_overrides = config_from_environment()
        refuse_unread_settings(self.mapo_env_overrides, self.mapo_setting_names, type(self).__name__)
        for name, value in self.mapo_env_overrides.items():
            setattr(self, name, value)
        for name, value in resolve_and_check(self._current_settings(), None).items():
            setattr(self, name, value)

    def _current_settings(self) -> dict:
        return {name: getattr(self, name) for name in self.mapo_setting_names}

    def mapo_settings(self) -> dict:
        """The settings in effect (JSON-ready)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in self.mapo_setting_names}

    def _build_loss(self):
        preference = PreferenceLoss(preference_loss_config(self._current_settings()),
                                    regions=self.label_manager.has_regions)
        # With a gradient scaler (CUDA) non-finite steps are skipped by nnU-Net: no host check needed per step.
        return MAPOLoss(super()._build_loss(), preference, self.mapo_weight, check_finite=self.grad_scaler is None,
                        num_objectives=len(objectives_of(self.mapo_objectives)), scale=self.mapo_term_scale)

    def on_train_start(self):
        super().on_train_start()  # builds the data loaders, whose do_split() records the training cases
        if self.local_rank == 0:
            record = {"trainer": type(self).__name__, "nnunetv2_mapo_version": __version__,
                      ENV_VAR: os.environ.get(ENV_VAR), "overrides_from_env": self.mapo_env_overrides,
                      "settings": self.mapo_settings()}
            write_json(join(self.output_folder, "mapo_config.json"), record)
        # Experiment trackers (nnU-Net's W&B logger when nnUNet_wandb_enabled=1) get the settings beside nnU-Net's.
        self.logger.update_config({"mapo_trainer": type(self).__name__, "nnunetv2_mapo_version": __version__,
                                   **self.mapo_settings()})
        self.print_to_log_file("MAPO settings: " + json.dumps(self.mapo_settings()), also_print_to_console=False)
        self.print_to_log_file(describe_schedule(self.mapo_settings(), len(self.mapo_train_keys),
                                                 self.loss.preference_loss.config.optimum_margin))

    def do_split(self):
        train_keys, val_keys = super().do_split()
        self.mapo_train_keys = list(train_keys)
        return train_keys, val_keys

    # --------------------------------------------------------------------------------------- preference rounds
    def mapo_round_due(self, epoch: int) -> bool:
        """Whether a preference round runs at the start of ``epoch``: the first after the warm-up, once the network
        segments well enough (``mapo_start_dice``), then once the set in use is spent (``mapo_max_pair_uses``) or
        ``mapo_regen_every`` epochs after the last round, whichever comes first."""
        if epoch < self.mapo_warmup_epochs or self.mapo_online_pairs:
            return False
        if self.mapo_preference_set is None:
            return self.mapo_network_ready()
        return self._mapo_pair_reuse.spent or epoch - self.mapo_preference_set.epoch >= self.mapo_regen_every

    def mapo_round_due_online(self) -> bool:
        """With ``mapo_online_pairs``: whether this epoch's steps draw pairs (after the warm-up and the gate)."""
        return self.current_epoch >= self.mapo_warmup_epochs and self.mapo_network_ready()

    def mapo_network_ready(self) -> bool:
        """nnU-Net's EMA pseudo Dice of the last epoch has reached ``mapo_start_dice`` (always, when that is 0).

        Every rank logs the same value (nnU-Net gathers the validation counts first), so all ranks agree."""
        return self.mapo_start_dice <= 0 or self._mapo_ema_dice() >= self.mapo_start_dice  # NaN: not yet logged

    def _mapo_ema_dice(self) -> float:
        ema = self.logger.local_logger.my_fantastic_logging.get("ema_fg_dice", [])
        return float(ema[-1]) if ema else math.nan

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._mapo_epoch_round = {}
        self.mapo_step_stats = []
        if self.mapo_round_due(self.current_epoch):
            self.run_preference_round()
        elif (self.mapo_preference_set is None and self.current_epoch >= self.mapo_warmup_epochs
              and not self.mapo_network_ready()):
            self.print_to_log_file(f"MAPO: no round yet, the EMA pseudo Dice {self._mapo_ema_dice():.4f} is "
                                   f"below mapo_start_dice {self.mapo_start_dice}.")

    def run_preference_round(self) -> PreferenceSet:
        """Regenerates the preference set from the training cases with the current network as policy (and, unless
        the reference policy is fixed, as reference)."""
        if self.mapo_reference_policy == "first_round" and self.mapo_reference_network is None:
            self._fix_reference_network(unwrap(self.network).state_dict())
        self.mapo_preference_set, self._mapo_epoch_round = self.mapo_generate_round()
        self._mapo_pair_reuse = PairReuse(len(self.mapo_preference_set), self.mapo_max_pair_uses)
        self._mapo_set_reference = None
        if self.local_rank == 0 and not self.disable_checkpointing:  # once per round; checkpoints name the file
            self._mapo_set_reference = write_preference_set(self.output_folder, self.mapo_round_index,
                                                            self.mapo_preference_set.state_dict())
        self.mapo_round_index += 1
        return self.mapo_preference_set

    def mapo_generate_round(self) -> tuple[PreferenceSet, dict[str, float]]:
        """The round's preference set and metrics (a hook: a variant may add pairs from elsewhere)."""
        return run_preference_round(self)

    def _fix_reference_network(self, weights: dict, written: str | None = None) -> None:
        """Builds the fixed reference policy with ``weights`` (a copy of the network, eval mode, no gradients) and
        writes them once (rank 0), unless they were read from ``written``."""
        self.mapo_reference_network = frozen_copy(self, weights)
        self._mapo_reference_file = written
        if written is None and self.local_rank == 0 and not self.disable_checkpointing:
            self._mapo_reference_file = write_reference_network(self.output_folder, weights)

    # ---------------------------------------------------------------------------------------------- training
    def _next_pairs(self, batch: dict | None = None) -> PreferenceBatch | None:
        online = self.mapo_online_pairs and batch is not None and self.mapo_round_due_online()
        if self.mapo_weight == 0 or not (online or (self.mapo_preference_set and not self.mapo_online_pairs)):
            return None  # no term, or no pairs yet (a set of 0 pairs is falsy)
        count = pairs_for_step(self.mapo_pairs_per_step, self._mapo_pair_steps)
        self._mapo_pair_steps += 1
        if online:  # pairs from the step's own batch, after the warm-up and the gate
            return online_pairs(self, batch, min(count, len(batch["data"]))) if count else None
        index = self._mapo_pair_reuse.draw(count, self._mapo_pair_generator)
        return self.mapo_preference_set.take(index, self._mapo_pair_generator) if len(index) else None

    def train_step(self, batch: dict) -> dict:
        pairs = self._next_pairs(batch)
        pair_logits = None
        if pairs is not None and self.mapo_pair_pass_in_eval_mode:
            pairs = pairs.to(self.device)
            pair_logits = self._eval_mode_pair_logits(pairs.images)
        elif pairs is not None:  # the patches join the batch where it is; the loss needs the rest on the device
            batch = {**batch, "data": append_pair_rows(batch["data"], pairs)}
            pairs = pairs.to(self.device)
        with self.loss.pairs_of_this_step(pairs, pair_logits):  # nnU-Net's step calls self.loss(output, target)
            result = super().train_step(batch)
        self.mapo_step_stats.append(self.loss.last_stats)  # device tensors: read once, when the epoch ends
        return result

    def _eval_mode_pair_logits(self, images: torch.Tensor) -> torch.Tensor:
        # Before the batch's training-mode pass, which moves BatchNorm's running statistics: at a round's first step
        # the pairs then see exactly the function of the round's reference pass. Autocast as in nnU-Net's step.
        with torch.autocast(self.device.type) if self.device.type == "cuda" else contextlib.nullcontext():
            return eval_mode_forward(unwrap(self.network), images)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        step_stats = gather_step_stats(collate_step_stats(self.mapo_step_stats))
        values = dict.fromkeys(LOG_KEYS, math.nan) | self._mapo_epoch_round
        if self.mapo_preference_set is not None or (self.mapo_online_pairs and self.mapo_round_due_online()):
            in_set = len(self.mapo_preference_set) if self.mapo_preference_set is not None else \
                sum(math.isfinite(float(v)) for v in step_stats["mapo_dpo_loss"])  # online: the steps with pairs
            values |= reduce_step_stats(step_stats) | {"mapo_num_pairs": float(in_set)}
            self.print_to_log_file(epoch_line(values))
        for key, value in values.items():
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_mapo_progress(self.logger.local_logger.my_fantastic_logging, self.output_folder)

    # ------------------------------------------------------------------------------------------- checkpoints
    def mapo_state_dict(self) -> dict:
        """What a resumed run needs: round counter, preference set, pair sampler, settings (tensors/plain values)."""
        preference_set = self._mapo_set_reference
        if preference_set is None and self.mapo_preference_set is not None:  # not written to a file: inline
            preference_set = self.mapo_preference_set.state_dict()
        return trainer_state(self._mapo_pair_generator.get_state(), self.mapo_round_index, preference_set,
                             self._mapo_pair_steps, self.mapo_settings(), self._mapo_pair_reuse.state_dict(),
                             self._mapo_reference_file)

    def load_mapo_state_dict(self, state: dict, folder: str | None = None) -> None:
        """Restores :meth:`mapo_state_dict`.

        Args:
            state: The state.
            folder: The fold folder whose ``mapo_sets/`` holds the set the state names (default: this trainer's).

        Raises:
            MAPOStateError: The state is incomplete or inconsistent, or its set file is missing.
        """
        try:
            self.mapo_round_index = int(state["round_index"])
            stored = state["preference_set"]
            self.mapo_preference_set = None if stored is None else PreferenceSet.from_state_dict(
                read_preference_set(folder or self.output_folder, stored))
            self._mapo_set_reference = stored if stored is not None and "file" in stored else None
            self._mapo_pair_generator.set_state(state["pair_generator"])
            self._mapo_pair_steps = int(state.get("pair_steps", 0))  # absent in states written by 0.1.x
            self._mapo_pair_reuse = PairReuse(0 if self.mapo_preference_set is None else len(self.mapo_preference_set),
                                              self.mapo_max_pair_uses)
            if state.get("pair_uses") is not None:  # absent in states written by 0.8 and earlier: counts start at 0
                self._mapo_pair_reuse.load_state_dict(state["pair_uses"])
            if state.get("reference_network") is not None:
                where = folder or self.output_folder
                self._fix_reference_network(read_reference_network(where, state["reference_network"]),
                                            written=state["reference_network"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise MAPOStateError(f"MAPO state is incomplete or inconsistent: {err}") from err
        if self.local_rank > 0:
            self._mapo_pair_generator.manual_seed(self.mapo_seed + self.local_rank + 104729 * self.current_epoch)

    def _check_resumed_settings(self, state: dict, checkpoint: str) -> None:
        """Stops ``--c`` when the MAPO settings differ from the checkpoint's, unless the user opted in."""
        resuming = os.path.basename(checkpoint) != "checkpoint_final.pth"  # --val and prediction just read weights
        listing = check_resumed_settings(state.get("settings", {}), self.mapo_settings(), checkpoint, resuming)
        if listing:
            self.print_to_log_file(f"MAPO: settings differ from the checkpoint's (saved -> now): {listing}")

    def on_train_end(self):
        super().on_train_end()  # deletes checkpoint_latest.pth; its MAPO state goes with it
        if (line := peak_gpu_memory_line(self.device)) is not None:  # read back by nnunetv2_mapo benchmark
            self.print_to_log_file(line)
        if self.local_rank == 0 and not self.disable_checkpointing:
            remove_states(join(self.output_folder, "checkpoint_latest.pth"))
            remove_unreferenced_sets(self.output_folder)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        save_with_state(filename, self.current_epoch + 1, super().save_checkpoint, self.mapo_state_dict())
        remove_unreferenced_sets(self.output_folder)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("nnUNetTrainerMAPO.load_checkpoint takes the checkpoint's path (its MAPO state is a "
                            "file beside it).")
        super().load_checkpoint(filename_or_checkpoint)
        register_log_keys(self.logger, LOG_KEYS, self.current_epoch)
        state = load_state(filename_or_checkpoint, self.current_epoch)
        if state is not None:
            self.load_mapo_state_dict(state)
            self._check_resumed_settings(state, filename_or_checkpoint)
        elif os.path.basename(filename_or_checkpoint) == "checkpoint_final.pth":
            self.print_to_log_file(f"MAPO: no MAPO state beside {filename_or_checkpoint}; fine for validation "
                                   f"and prediction of a finished training.")
        else:
            raise MAPOStateError(
                f"{filename_or_checkpoint} has no MAPO state beside it (expected "
                f"{os.path.basename(filename_or_checkpoint)}.mapo_e{self.current_epoch:06d}.pt), so it was not "
                f"written by nnUNetTrainerMAPO. To start MAPO from its weights, train without --c and pass "
                f"-pretrained_weights {filename_or_checkpoint}.")
