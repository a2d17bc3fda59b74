"""In-process tests of nnUNetTrainerMAPO's hooks on a small preprocessed synthetic dataset."""

from __future__ import annotations

import json
import math
import os
import warnings
from types import SimpleNamespace

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunetv2_mapo
from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import Workspace
from nnunetv2_mapo.method.dropout import find_injector
from nnunetv2_mapo.training.checkpointing import MAPOStateError
from nnunetv2_mapo.training.preference_round import pair_mirror_axes, round_cases
from nnunetv2_mapo.training.settings import MAPOConfigError
from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO
from nnunetv2_mapo.training.variants.preference_loss import nnUNetTrainerMAPO_IPO
from nnunetv2_mapo.training.variants.schedule import nnUNetTrainerMAPO_NoWarmup


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws = Workspace(str(tmp_path_factory.mktemp("trainer")))
    write_synthetic_dataset(ws.raw, 905, "TrainerToy", dim=2, num_cases=10, shape=(48, 48), seed=5)
    ws.plan_and_preprocess(905, ["2d"])
    return ws


@pytest.fixture
def make_trainer(workspace: Workspace, monkeypatch):
    for key, value in workspace.environment({"nnUNet_n_proc_DA": "0"}).items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("nnUNet_mapo_config", raising=False)
    folder = os.path.join(workspace.preprocessed, "Dataset905_TrainerToy")

    def make(cls=nnUNetTrainerMAPO, fold: int = 0, continue_training: bool = False, **settings):
        plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
        plans["continue_training"] = continue_training
        trainer = cls(plans, "2d", fold, load_json(os.path.join(folder, "dataset.json")), torch.device("cpu"))
        for name, value in settings.items():
            setattr(trainer, name, value)
        return trainer

    return make


def test_network_keys_equal_plain_network(make_trainer) -> None:
    trainer = make_trainer()
    trainer.initialize()
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, True)
    assert list(trainer.network.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(trainer.network.state_dict(), strict=True)
    assert find_injector(trainer.network).hooked_modules


def test_settings_from_environment_and_bad_values(make_trainer, monkeypatch) -> None:
    monkeypatch.setenv("nnUNet_mapo_config", json.dumps({"mapo_beta": 0.25, "num_epochs": 20}))
    trainer = make_trainer()
    trainer.initialize()
    assert trainer.mapo_beta == 0.25 and trainer.num_epochs == 20
    assert trainer.mapo_warmup_epochs == 2  # derived: 10% of num_epochs
    assert trainer.loss.preference_loss.beta == 0.25

    monkeypatch.setenv("nnUNet_mapo_config", json.dumps({"mapo_num_hypotheses": 1}))
    bad = make_trainer(fold=1)
    with pytest.raises(MAPOConfigError, match="mapo_num_hypotheses"):
        bad.initialize()
    assert bad.network is None and bad.dataloader_train is None  # refused before building anything


def test_variant_attributes_are_validated_too(make_trainer) -> None:
    trainer = make_trainer(nnUNetTrainerMAPO_IPO)
    trainer.initialize()
    assert trainer.loss.preference_loss.loss_type == "ipo"
    with pytest.raises(MAPOConfigError, match="mapo_warmup_epochs"):
        make_trainer(mapo_warmup_epochs=1000, num_epochs=1000).initialize()


def rounds_run(trainer, epochs: range, ema: list[float] | None = None) -> list[int]:
    """The epochs at which rounds run, each round leaving a set stamped with its epoch (as a real round does)."""
    trainer.mapo_preference_set, rounds = None, []
    for epoch in epochs:
        if ema is not None:
            trainer.logger.local_logger.my_fantastic_logging["ema_fg_dice"] = ema[:epoch]  # logged at epoch ends
        if trainer.mapo_round_due(epoch):
            rounds.append(epoch)
            trainer.mapo_preference_set = SimpleNamespace(epoch=epoch)
    return rounds


def test_round_schedule(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=3, mapo_regen_every=5, num_epochs=30)
    trainer.initialize()
    assert [e for e in range(15) if trainer.mapo_round_due(e)] == list(range(3, 15))  # no set yet: all due
    assert rounds_run(trainer, range(15)) == [3, 8, 13]
    trainer.mapo_preference_set = SimpleNamespace(epoch=8)  # resumed at epoch 10 with the set of epoch 8
    assert [e for e in range(10, 15) if trainer.mapo_round_due(e)] == [13, 14]
    no_warmup = make_trainer(nnUNetTrainerMAPO_NoWarmup, num_epochs=10)
    no_warmup.initialize()
    assert no_warmup.mapo_round_due(0)


def test_first_round_waits_for_the_pseudo_dice(make_trainer, capsys) -> None:
    ema = [0.0, 0.1, 0.2, 0.3, 0.45, 0.55, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    gated = make_trainer(mapo_warmup_epochs=3, mapo_regen_every=5, num_epochs=30, mapo_start_dice=0.5)
    gated.initialize()
    # the EMA of epoch 5 (0.55) is known at the start of epoch 6; then every 5 epochs from there, whatever follows
    assert rounds_run(gated, range(15), ema) == [6, 11]
    assert rounds_run(gated, range(15), [0.2] * 15) == []  # never ready: never a round (MAPO = nnU-Net)
    ungated = make_trainer(mapo_warmup_epochs=3, mapo_regen_every=5, num_epochs=30)
    ungated.initialize()
    assert rounds_run(ungated, range(15), [0.0] * 15) == [3, 8, 13]  # 0 (the default): the warm-up alone decides
    gated.mapo_preference_set, gated.current_epoch = None, 4
    gated.logger.local_logger.my_fantastic_logging["ema_fg_dice"] = ema[:4]
    gated.on_train_epoch_start()
    log = open(gated.log_file).read()
    assert "no round yet, the EMA pseudo Dice 0.3000 is below mapo_start_dice 0.5" in log
    assert gated.mapo_preference_set is None


def test_round_step_and_state_round_trip(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=4, mapo_num_hypotheses=4,
                           mapo_pair_margin=0.0, mapo_pairs_per_step=1)  # a pair in every step
    trainer.on_train_start()
    try:
        pairs = trainer.run_preference_round()
        assert pairs.num_items == 4 and trainer.mapo_round_index == 1
        assert os.path.isfile(os.path.join(trainer.output_folder, "mapo_rounds", "round_0000.png"))
        assert len(pairs) >= 1
        assert bool((pairs.chosen_dice >= pairs.rejected_dice).all())

        trainer.network.train()
        trainer.mapo_step_stats = []
        result = trainer.train_step(next(trainer.dataloader_train))
        assert set(result) == {"loss"}  # nnU-Net's step output; MAPO's metrics wait in mapo_step_stats
        stats = {k: float(v) for k, v in trainer.mapo_step_stats[-1].items()}
        assert math.isfinite(stats["mapo_dpo_loss"]) and 0 <= stats["mapo_reward_accuracy"] <= 1
        # policy == reference at the start of a round (InstanceNorm): rewards start at zero
        assert abs(stats["mapo_rewards_chosen"]) < 1e-3 and abs(stats["mapo_rewards_rejected"]) < 1e-3

        # a non-finite DPO value never reaches the optimizer: the step trains on Dice+CE and is counted
        healthy = trainer.mapo_preference_set.reference_chosen_logps.clone()
        trainer.mapo_preference_set.reference_chosen_logps.fill_(float("nan"))
        before = [p.detach().clone() for p in trainer.network.parameters()]
        skipped = trainer.train_step(next(trainer.dataloader_train))
        skipped_stats = trainer.mapo_step_stats[-1]
        assert skipped_stats["mapo_skipped_steps"] == 1.0 and math.isnan(skipped_stats["mapo_dpo_loss"])
        assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))  # Dice+CE step ran
        trainer.on_train_epoch_end([result, skipped])
        assert trainer.logger.get_value("mapo_skipped_steps", step=-1) == 1
        trainer.mapo_preference_set.reference_chosen_logps.copy_(healthy)

        # a fractional rate: pairs in every other step, and the schedule position survives a resume
        trainer.mapo_pairs_per_step = 0.5
        steps_before = trainer._mapo_pair_steps
        counts = [0 if (p := trainer._next_pairs()) is None else len(p) for _ in range(4)]
        assert sum(counts) == 2 and set(counts) == {0, 1}
        assert trainer._mapo_pair_steps == steps_before + 4

        state = trainer.mapo_state_dict()
        other = make_trainer(fold=1)
        other.initialize()
        other.load_mapo_state_dict(state, folder=trainer.output_folder)  # the round's set file is in that folder
        assert other._mapo_pair_steps == trainer._mapo_pair_steps
        assert torch.equal(other._mapo_pair_reuse.uses, trainer._mapo_pair_reuse.uses)  # the reuse bound resumes
        assert int(trainer._mapo_pair_reuse.uses.sum()) == 4  # 2 steps with a pair each, then 2 of 4 half-steps
        assert other.mapo_round_index == 1 and len(other.mapo_preference_set) == len(pairs)
        assert torch.equal(other.mapo_preference_set.chosen, pairs.chosen)
        with pytest.raises(MAPOStateError):
            other.load_mapo_state_dict({"round_index": 1})
    finally:
        trainer.on_train_end()


def test_a_set_spent_by_the_reuse_bound_is_regenerated_at_the_next_epoch(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=50, mapo_cases_per_round=4, mapo_num_hypotheses=4,
                           mapo_pair_margin=0.0, mapo_pairs_per_step=1, mapo_max_pair_uses=2, mapo_regen_every=40)
    trainer.on_train_start()
    try:
        pairs = trainer.run_preference_round()
        assert len(pairs) >= 1
        drawn = [trainer._next_pairs() for _ in range(2 * len(pairs) + 3)]
        assert all(batch is not None and len(batch) == 1 for batch in drawn[:2 * len(pairs)])
        assert all(batch is None for batch in drawn[2 * len(pairs):])  # spent: every pair drawn twice
        assert trainer._mapo_pair_reuse.uses.tolist() == [2] * len(pairs)
        assert trainer.mapo_round_due(pairs.epoch + 1)  # 1 epoch later, not mapo_regen_every = 40
        trainer._mapo_pair_reuse.uses.zero_()
        assert not trainer.mapo_round_due(pairs.epoch + 1)
        trainer.mapo_max_pair_uses = None
        trainer.run_preference_round()
        assert all(trainer._next_pairs() is not None for _ in range(10 * len(pairs)))  # no bound: never spent
        assert not trainer.mapo_round_due(trainer.mapo_preference_set.epoch + 39)
    finally:
        trainer.on_train_end()


def test_a_fixed_reference_is_the_network_of_the_first_round_and_survives_a_resume(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=4, mapo_num_hypotheses=4,
                           mapo_pair_margin=0.0, mapo_reference_policy="first_round")
    trainer.on_train_start()
    try:
        trainer.run_preference_round()
        first = {k: v.clone() for k, v in trainer.mapo_reference_network.state_dict().items()}
        assert all(torch.equal(first[k], v) for k, v in trainer.network.state_dict().items())
        assert os.path.isfile(os.path.join(trainer.output_folder, "mapo_reference_network.pt"))
        with torch.no_grad():  # training moves the policy ...
            for parameter in trainer.network.parameters():
                parameter.add_(0.01)
        second = trainer.run_preference_round()
        # ... but not the reference: the second round's reference log-likelihoods are the first network's
        assert all(torch.equal(first[k], v) for k, v in trainer.mapo_reference_network.state_dict().items())
        assert not any(p.requires_grad for p in trainer.mapo_reference_network.parameters())
        other = make_trainer(fold=1, mapo_reference_policy="first_round")
        other.initialize()
        other.load_mapo_state_dict(trainer.mapo_state_dict(), folder=trainer.output_folder)
        assert all(torch.equal(first[k], v.cpu()) for k, v in other.mapo_reference_network.state_dict().items())
        assert len(other.mapo_preference_set) == len(second)
    finally:
        trainer.on_train_end()


def test_online_pairs_come_from_the_steps_own_batch_and_no_round_runs(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=5, mapo_num_hypotheses=4, mapo_pair_margin=0.0,
                           mapo_pairs_per_step=2, mapo_online_pairs=True)
    trainer.on_train_start()
    try:
        assert not any(trainer.mapo_round_due(epoch) for epoch in range(5))
        batch = next(trainer.dataloader_train)
        pairs = trainer._next_pairs(batch)
        assert pairs is not None and 1 <= len(pairs) <= 2
        # the pairs' patches are the last rows of the batch (rounded to the float16 a set stores)
        last = batch["data"][-2:].half().float()
        assert all(any(torch.equal(image, row) for row in last) for image in pairs.images)
        trainer.network.train()
        trainer.mapo_step_stats = []
        result = trainer.train_step(next(trainer.dataloader_train))
        stats = {k: float(v) for k, v in trainer.mapo_step_stats[-1].items()}
        assert abs(stats["mapo_rewards_chosen"]) < 1e-3  # reference = the network of this very step
        trainer.on_train_epoch_end([result])
        assert trainer.mapo_preference_set is None and trainer.mapo_round_index == 0
        assert trainer.logger.get_value("mapo_num_pairs", step=-1) == 1  # the one step of the epoch with pairs
    finally:
        trainer.on_train_end()


def test_dropout_only_trains_with_the_injected_dropout_and_runs_no_round(make_trainer) -> None:
    from nnunetv2_mapo.method.dropout import find_injector
    from nnunetv2_mapo.training.variants.dropout import nnUNetTrainerDropoutOnly

    trainer = make_trainer(nnUNetTrainerDropoutOnly, mapo_warmup_epochs=0, num_epochs=5)
    trainer.on_train_start()
    try:
        injector = find_injector(trainer.network)
        seen = []
        handle = trainer.network.register_forward_hook(lambda *_: seen.append(injector.active))
        trainer.network.train()
        trainer.train_step(next(trainer.dataloader_train))
        trainer.network.eval()
        trainer.validation_step(next(trainer.dataloader_val))
        handle.remove()
        assert seen == [True, False]  # dropout in the supervised step, none in validation (or prediction)
        assert not any(trainer.mapo_round_due(epoch) for epoch in range(5))
        trainer.on_train_epoch_start()
        assert trainer.mapo_preference_set is None and "no round yet" not in open(trainer.log_file).read()
    finally:
        trainer.on_train_end()


def test_several_patches_per_case_give_that_many_items_per_case(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=2, mapo_patches_per_case=3,
                           mapo_num_hypotheses=2, mapo_pair_margin=0.0, mapo_round_pictures=0)
    trainer.on_train_start()
    try:
        keys = round_cases(trainer)
        assert len(keys) == 6 and len(set(keys)) == 2 and all(keys.count(k) == 3 for k in keys)
        pairs = trainer.run_preference_round()
        assert pairs.num_items == 6  # three patches of each of the two cases were scored
        assert set(pairs.keys) <= set(keys)
        with open(trainer.log_file, encoding="utf-8") as handle:
            assert "for each of 6 training patches" in handle.read()
    finally:
        trainer.on_train_end()


def test_mirrored_pairs_use_nnunet_mirror_axes(make_trainer) -> None:
    trainer = make_trainer(mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=2, mapo_mirror_pairs=True,
                           mapo_num_hypotheses=2, mapo_pair_margin=0.0, mapo_round_pictures=0)
    trainer.on_train_start()  # nnU-Net sets inference_allowed_mirroring_axes here: (0, 1) for 2d
    try:
        assert pair_mirror_axes(trainer) == (0, 1)
        pairs = trainer.run_preference_round()
        assert len(pairs) > 0 and pairs.views == [[], [0], [1], [0, 1]]
        assert pairs.reference_chosen_logps.shape == (len(pairs), 4)
        trainer.mapo_mirror_pairs = False
        assert pair_mirror_axes(trainer) == ()
    finally:
        trainer.on_train_end()


def test_mirrored_pairs_without_mirror_axes_stay_unmirrored_and_say_so() -> None:
    logged = []
    trainer = SimpleNamespace(mapo_mirror_pairs=True, inference_allowed_mirroring_axes=None,
                              mapo_warned_no_mirroring=False, print_to_log_file=logged.append)
    assert pair_mirror_axes(trainer) == () and pair_mirror_axes(trainer) == ()
    assert len(logged) == 1 and "allows no mirroring" in logged[0]  # once per training


def test_continue_from_foreign_checkpoint_is_refused(make_trainer, tmp_path) -> None:
    trainer = make_trainer()
    trainer.initialize()
    path = str(tmp_path / "checkpoint_latest.pth")
    nnUNetTrainer.save_checkpoint(trainer, path)  # what a plain nnUNetTrainer writes: no MAPO state beside it
    fresh = make_trainer(fold=1)
    with pytest.raises(MAPOStateError, match="-pretrained_weights"):
        fresh.load_checkpoint(path)


def test_resuming_with_changed_settings_stops_unless_opted_in(make_trainer, tmp_path, monkeypatch) -> None:
    from nnunetv2_mapo.training.trainer import ALLOW_CHANGED_SETTINGS_VAR, MAPOSettingsChanged

    trainer = make_trainer()
    trainer.initialize()
    latest, final = str(tmp_path / "checkpoint_latest.pth"), str(tmp_path / "checkpoint_final.pth")
    trainer.save_checkpoint(latest)
    trainer.save_checkpoint(final)
    monkeypatch.setenv("nnUNet_mapo_config", json.dumps({"mapo_beta": 0.7, "mapo_seed": 5}))
    with pytest.raises(MAPOSettingsChanged, match=r"mapo_beta: 1\.0 -> 0\.7.*mapo_seed: 12345 -> 5.*"
                                                  + ALLOW_CHANGED_SETTINGS_VAR):
        make_trainer(fold=1).load_checkpoint(latest)
    make_trainer(fold=1).load_checkpoint(final)  # validation and prediction only read the weights
    monkeypatch.setenv(ALLOW_CHANGED_SETTINGS_VAR, "1")
    resumed = make_trainer(fold=1)
    resumed.load_checkpoint(latest)
    assert resumed.mapo_beta == 0.7 and resumed.mapo_seed == 5  # continues with the new values, and says so
    with open(resumed.log_file, encoding="utf-8") as handle:
        assert "settings differ from the checkpoint's (saved -> now): mapo_beta: 1.0 -> 0.7" in handle.read()


def test_round_without_pairs_warns_once_and_trains_on_dice_ce(make_trainer) -> None:
    trainer = make_trainer(fold=4, mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=3, mapo_num_hypotheses=2,
                           mapo_pair_margin=1.0, mapo_dropout_rates=[0.0])  # own fold: its own output folder
    trainer.on_train_start()
    try:
        with pytest.warns(RuntimeWarning, match="no item yielded a preference pair"):
            empty = trainer.run_preference_round()
        assert len(empty) == 0 and empty.num_items == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trainer.run_preference_round()  # the warning is given once per run
        trainer.network.train()
        result = trainer.train_step(next(trainer.dataloader_train))
        assert math.isnan(trainer.mapo_step_stats[-1]["mapo_dpo_loss"]) and math.isfinite(float(result["loss"]))
        trainer.on_train_epoch_end([result])
        assert trainer.logger.get_value("mapo_num_pairs", step=-1) == 0
        assert trainer.logger.get_value("mapo_skipped_steps", step=-1) == 0
        assert not os.path.exists(os.path.join(trainer.output_folder, "mapo_rounds"))  # no pair, nothing to draw
    finally:
        trainer.on_train_end()


def test_round_pictures_can_be_turned_off(make_trainer) -> None:
    trainer = make_trainer(fold=2, mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=2, mapo_num_hypotheses=4,
                           mapo_pair_margin=0.0, mapo_round_pictures=0)
    trainer.on_train_start()
    try:
        assert len(trainer.run_preference_round()) >= 1
        assert not os.path.exists(os.path.join(trainer.output_folder, "mapo_rounds"))
    finally:
        trainer.on_train_end()


def test_hyperparameters_in_init_are_the_documented_settings(make_trainer) -> None:
    import inspect

    from nnunetv2_mapo.training.settings import MAPO_SETTINGS, NNUNET_SETTINGS

    trainer = make_trainer()  # not initialised: the values written out in __init__
    for setting in MAPO_SETTINGS + NNUNET_SETTINGS:
        value = getattr(trainer, setting.name)
        assert value == setting.default, (setting.name, value, setting.default)
    source = inspect.getsource(nnUNetTrainerMAPO.__init__)
    block = source.split("### Some hyperparameters for you to fiddle with", 1)[1].split("\n\n", 1)[0]
    written = [line.strip().split(":")[0].split(" =")[0].removeprefix("self.") for line in block.splitlines()[1:]]
    assert written == [s.name for s in MAPO_SETTINGS]  # each written out once, in the table's order


def test_variants_compose_by_multiple_inheritance(make_trainer) -> None:
    from nnunetv2_mapo.training.variants.dropout import nnUNetTrainerMAPO_ChannelDropout

    class Combined(nnUNetTrainerMAPO_IPO, nnUNetTrainerMAPO_ChannelDropout, nnUNetTrainerMAPO_NoWarmup):
        pass

    trainer = make_trainer(Combined)
    assert (trainer.mapo_loss_type, trainer.mapo_dropout_mode, trainer.mapo_warmup_epochs) == ("ipo", "channel", 0)


def test_settings_join_the_wandb_config_offline(make_trainer, monkeypatch) -> None:
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    monkeypatch.setenv("nnUNet_wandb_mode", "offline")  # nnU-Net's W&B logger; nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("nnUNet_mapo_config", json.dumps({"mapo_beta": 0.3}))
    trainer = make_trainer(fold=3)
    run = trainer.logger.loggers[0].run
    try:
        trainer.on_train_start()
        assert run.config["mapo_beta"] == 0.3  # the value in effect, from nnUNet_mapo_config
        assert run.config["mapo_regen_every"] == 50 and run.config["mapo_trainer"] == "nnUNetTrainerMAPO"
        assert run.config["nnunetv2_mapo_version"] == nnunetv2_mapo.__version__
    finally:
        trainer.on_train_end()
        run.finish()


def test_pairs_per_step_come_from_this_processs_batch_size(make_trainer, monkeypatch) -> None:
    trainer = make_trainer()
    trainer.initialize()
    assert trainer.mapo_pairs_per_step == trainer.batch_size / 8
    original = nnUNetTrainer._set_batch_size_and_oversample

    def one_rank_share(self) -> None:  # what nnU-Net does on one of several GPUs: a share of the batch
        original(self)
        self.batch_size = 1

    monkeypatch.setattr(nnUNetTrainer, "_set_batch_size_and_oversample", one_rank_share)
    share = make_trainer(fold=1)
    share.initialize()
    assert share.mapo_pairs_per_step == 1 / 8 != trainer.mapo_pairs_per_step
    explicit = make_trainer(fold=2, mapo_pairs_per_step=2.0)
    explicit.initialize()
    assert explicit.mapo_pairs_per_step == 2.0  # a value set by the user is kept


def test_a_rounds_set_is_stored_once_and_checkpoints_add_kilobytes(make_trainer) -> None:
    from nnunetv2_mapo.training.checkpointing import SET_FOLDER, preference_set_path, state_path

    settings = {"mapo_warmup_epochs": 0, "num_epochs": 5, "mapo_cases_per_round": 4, "mapo_num_hypotheses": 4,
                "mapo_pair_margin": 0.0, "mapo_round_pictures": 0}
    trainer = make_trainer(fold=3, **settings)
    trainer.on_train_start()
    folder = trainer.output_folder
    latest, best = os.path.join(folder, "checkpoint_latest.pth"), os.path.join(folder, "checkpoint_best.pth")
    try:
        first = trainer.run_preference_round()
        assert len(first) >= 1 and os.path.isfile(preference_set_path(folder, 0))
        trainer.save_checkpoint(latest)
        trainer.save_checkpoint(best)
        assert os.listdir(os.path.join(folder, SET_FOLDER)) == ["round_0000.pt"]  # once, for both checkpoints
        set_bytes = os.path.getsize(preference_set_path(folder, 0))
        inline = os.path.join(folder, "inline.pt")  # what a state holding the set itself weighs
        torch.save(trainer.mapo_state_dict() | {"preference_set": first.state_dict()}, inline)
        for checkpoint in (latest, best):
            added = os.path.getsize(state_path(checkpoint, trainer.current_epoch + 1))
            assert added < 16 * 1024 and added + 0.9 * set_bytes < os.path.getsize(inline)
        os.remove(inline)

        trainer.run_preference_round()
        trainer.save_checkpoint(latest)  # best still names round 0's set: both stay
        assert sorted(os.listdir(os.path.join(folder, SET_FOLDER))) == ["round_0000.pt", "round_0001.pt"]
        trainer.save_checkpoint(best)  # nothing names round 0's set any more
        assert os.listdir(os.path.join(folder, SET_FOLDER)) == ["round_0001.pt"]

        resumed = make_trainer(fold=3, **settings)  # --c in the same folder: the same set, exactly
        resumed.load_checkpoint(latest)
        assert resumed.mapo_round_index == 2
        for name in ("images", "chosen", "rejected", "reference_chosen_logps", "reference_rejected_logps"):
            assert torch.equal(getattr(resumed.mapo_preference_set, name), getattr(trainer.mapo_preference_set, name))
    finally:
        trainer.on_train_end()


def test_mapo_on_top_of_another_trainer_in_one_line(make_trainer) -> None:
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )

    from nnunetv2_mapo.training.loss import MAPOLoss

    class nnUNetTrainerOwnNetwork(nnUNetTrainer):  # a user's trainer with its own build_network_architecture
        built = 0

        @staticmethod
        def build_network_architecture(*args, **kwargs):
            nnUNetTrainerOwnNetwork.built += 1
            return nnUNetTrainer.build_network_architecture(*args, **kwargs)

    class nnUNetTrainerOwnNetwork_MAPO(nnUNetTrainerMAPO, nnUNetTrainerOwnNetwork):
        pass

    class nnUNetTrainerNoMirroring_MAPO(nnUNetTrainerMAPO, nnUNetTrainerNoMirroring):
        pass

    own = make_trainer(nnUNetTrainerOwnNetwork_MAPO)
    own.initialize()
    assert nnUNetTrainerOwnNetwork.built == 1  # the user's network, with MAPO's dropout hooks on it
    assert find_injector(own.network).hooked_modules and isinstance(own.loss, MAPOLoss)
    network = nnUNetTrainerOwnNetwork_MAPO.build_network_architecture(  # as nnU-Net's predictor calls it
        own.plans_manager, own.configuration_manager, own.num_input_channels,
        own.label_manager.num_segmentation_heads, False)
    assert nnUNetTrainerOwnNetwork.built == 2 and find_injector(network).hooked_modules
    mirrorless = make_trainer(nnUNetTrainerNoMirroring_MAPO, fold=1)
    mirrorless.initialize()
    mirrorless.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirrorless.inference_allowed_mirroring_axes is None  # nnUNetTrainerNoMirroring's behaviour is kept
    assert mirrorless.mapo_beta == 1.0 and find_injector(mirrorless.network).hooked_modules


class _WithDropPath(torch.nn.Module):
    """A planned U-Net followed by a residual DropPath branch on its full-resolution output (as in Transformers)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        from dynamic_network_architectures.building_blocks.regularization import DropPath

        self.network = network
        self.drop_path = DropPath(0.5)

    @property
    def decoder(self) -> torch.nn.Module:  # nnU-Net switches deep supervision on the decoder
        return self.network.decoder

    def forward(self, x: torch.Tensor):
        outputs = self.network(x)
        return [outputs[0] + self.drop_path(outputs[0]), *outputs[1:]]


class nnUNetTrainerDropPath(nnUNetTrainer):
    @staticmethod
    def build_network_architecture(*args, **kwargs):
        return _WithDropPath(nnUNetTrainer.build_network_architecture(*args, **kwargs))


class nnUNetTrainerDropPath_MAPO(nnUNetTrainerMAPO, nnUNetTrainerDropPath):
    pass


def _first_step_rewards(trainer) -> tuple[float, float]:
    trainer.run_preference_round()
    trainer.network.train()
    trainer.mapo_step_stats = []
    trainer.train_step(next(trainer.dataloader_train))
    stats = trainer.mapo_step_stats[-1]
    return float(stats["mapo_rewards_chosen"]), float(stats["mapo_rewards_rejected"])


@pytest.mark.parametrize("kind", ["batchnorm", "droppath"])
def test_policy_equals_reference_at_a_rounds_first_step(make_trainer, kind) -> None:
    from nnunetv2_mapo.training.variants.networks import nnUNetTrainerMAPO_BN

    cls = nnUNetTrainerMAPO_BN if kind == "batchnorm" else nnUNetTrainerDropPath_MAPO
    settings = {"mapo_warmup_epochs": 0, "num_epochs": 5, "mapo_cases_per_round": 4, "mapo_num_hypotheses": 4,
                "mapo_pair_margin": 0.0, "mapo_pairs_per_step": 2, "mapo_round_pictures": 0}
    trainer = make_trainer(cls, fold=2, **settings)
    trainer.on_train_start()
    try:
        assert trainer.mapo_pair_pass_in_eval_mode
        if kind == "batchnorm":  # running statistics far from a batch's, as after some training
            for module in trainer.network.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.running_mean.fill_(0.5)
                    module.running_var.fill_(2.0)
        for _ in range(2):  # a round, then its first step: the rewards start at 0
            assert all(abs(r) < 1e-4 for r in _first_step_rewards(trainer))
        # the check above can fail: the pair rows in the batch's training-mode pass give rewards that are noise
        trainer.mapo_pair_pass_in_eval_mode = False
        assert max(abs(r) for r in _first_step_rewards(trainer)) > 1e-3
    finally:
        trainer.on_train_end()


def test_instancenorm_unet_pairs_share_the_batchs_pass(make_trainer) -> None:
    trainer = make_trainer()
    trainer.initialize()
    assert not trainer.mapo_pair_pass_in_eval_mode


def test_a_compiled_network_is_not_recompiled_as_the_pair_rows_vary(make_trainer) -> None:
    """torch.compile (nnU-Net compiles on CUDA): the batch grows from B to B + 1 or B + 2 rows from step to step.
    Dynamo specialises on the first shape and makes the batch dimension dynamic at the first change; after that no
    step may compile again. Counted with a backend that only counts (the same guards as inductor's)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    trainer = make_trainer(fold=4, mapo_warmup_epochs=0, num_epochs=5, mapo_cases_per_round=4,
                           mapo_num_hypotheses=4, mapo_pair_margin=0.0, mapo_pairs_per_step=1.5,
                           mapo_round_pictures=0)  # 1 and 2 pair rows in turn
    trainer.on_train_start()
    try:
        trainer.run_preference_round()  # the round runs the unwrapped network: nothing compiled there
        trainer.network = torch.compile(trainer.network, backend=counter)
        trainer.network.train()
        for _ in range(6):
            trainer.train_step(next(trainer.dataloader_train))
        trainer.run_preference_round()  # a new round (hooks switched on and off) changes nothing compiled
        trainer.network.train()
        for _ in range(2):
            trainer.train_step(next(trainer.dataloader_train))
        assert counter.frame_count <= 2, counter.frame_count
        assert trainer.mapo_step_stats and all(math.isfinite(float(s["mapo_dpo_loss"])) for s in
                                               trainer.mapo_step_stats)
    finally:
        trainer.network = trainer.network._orig_mod
        trainer.on_train_end()
        torch._dynamo.reset()
