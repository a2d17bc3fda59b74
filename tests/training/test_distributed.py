"""Tests of ``nnunetv2_mapo.training.distributed``: MAPO's DDP logic with 2 CPU processes on the gloo backend.

nnU-Net's ``-num_gpus N`` needs CUDA and NCCL; the collectives used here (``all_gather_object``, DDP's gradient
all-reduce, nnU-Net's ``AllGatherGrad`` in the batch Dice) are the same calls on gloo. One module-scoped spawn of two
processes runs every distributed scenario (process start-up dominates the cost); each rank saves what it saw and the
assertions run here, in the parent, comparing the ranks with each other and with single-process references.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import distributed as dist
from torch import nn

from nnunetv2_mapo.method.dropout import find_injector, inject_dropout
from nnunetv2_mapo.method.preference_loss import PreferenceLoss, PreferenceLossConfig, mask_log_likelihoods
from nnunetv2_mapo.method.preference_set import PreferenceSet, empty_preference_set
from nnunetv2_mapo.method.round import generate_preference_set
from nnunetv2_mapo.training.distributed import (
    assert_same_on_all_ranks,
    gather_preference_set,
    gather_step_stats,
    is_distributed,
    parameters_fingerprint,
    shard_cases,
)
from nnunetv2_mapo.training.loss import MAPOLoss, append_pair_rows, collate_step_stats
from nnunetv2_mapo.training.metrics import STEP_KEYS

pytestmark = pytest.mark.usefixtures("mapo_single_thread")

WORLD_SIZE = 2
COLLECTIVE_TIMEOUT_S = 30  # a rank left waiting in a collective fails after this
RUN_TIMEOUT_S = 480  # the whole spawn; the processes are killed after it
LABELS = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
CPU = torch.device("cpu")
SIZE, K, RATES, MARGIN, SEED = 16, 4, (0.2, 0.4, 0.6), 0.02, 12345
KEYS = [f"case_{i}" for i in range(5)]
BATCH, PAIRS_PER_STEP, STEPS, BETA, WEIGHT = 2, 2, 3, 10.0, 1.0
DS_WEIGHTS = (1.0, 1e-6)  # nnU-Net under DDP: 1e-6 instead of 0 for the lowest output, else DDP sees unused params


# ------------------------------------------------------------------------------------------------- helpers
def tiny_unet() -> nn.Module:
    """The same weights in every process (fixed seed), dropout hooks injected, two deep-supervision outputs."""
    torch.manual_seed(0)
    network = PlainConvUNet(
        input_channels=1, n_stages=3, features_per_stage=(4, 8, 8), conv_op=nn.Conv2d, kernel_sizes=3,
        strides=(1, 2, 2), n_conv_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=True,
    )
    inject_dropout(network)
    return network


def item_data(key: str) -> torch.Tensor:
    """The patch of one synthetic case: a function of its key only, so every process builds the same one."""
    return torch.randn(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1000 + int(key.split("_")[1]))) * 3


def clean_logits(network: nn.Module, data: torch.Tensor) -> torch.Tensor:
    was_training = network.training
    network.eval()
    with torch.no_grad():
        out = network(data)[0]
    network.train(was_training)
    return out


def synthetic_batches(network: nn.Module, keys: list[str], per_batch: int = 2) -> list[dict]:
    """Batches as nnU-Net's loader yields them; targets are the clean network's prediction (dropout lowers Dice)."""
    batches = []
    for start in range(0, len(keys), per_batch):
        chunk = keys[start:start + per_batch]
        data = torch.stack([item_data(k) for k in chunk])
        batches.append({"data": data, "target": clean_logits(network, data).argmax(1, keepdim=True).float(),
                        "keys": chunk})
    return batches


def preference_round(network: nn.Module, keys: list[str], rank: int, round_index: int) -> PreferenceSet:
    """This rank's part of a round, seeded per rank as ``nnUNetTrainerMAPO.run_preference_round`` does."""
    shard = shard_cases(keys, rank, WORLD_SIZE)
    generator = torch.Generator().manual_seed(SEED + 1000003 * round_index + rank)
    return generate_preference_set(network, find_injector(network), synthetic_batches(network, shard), LABELS, K,
                                   RATES, MARGIN, 2, CPU, generator, round_index=round_index, epoch=7 + round_index)


def nnunet_ddp_loss() -> nn.Module:
    """``nnUNetTrainer._build_loss`` for label training under DDP (batch Dice all-gathered across ranks)."""
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": True}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array(DS_WEIGHTS)
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def flat_grads(network: nn.Module) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in network.parameters()])


def flat_params(network: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in network.parameters()]).clone()


def ddp_training(rank: int, preference_set: PreferenceSet, pair_ranks: tuple[int, ...]) -> dict:
    """``STEPS`` steps of ``nnUNetTrainerMAPO.train_step`` through DDP; pairs are appended on ``pair_ranks`` only."""
    network = tiny_unet()
    model = nn.parallel.DistributedDataParallel(network)  # CPU: no device_ids
    # The term as a mean of the pairs' losses, which local_dpo_gradient computes by hand.
    loss = MAPOLoss(nnunet_ddp_loss(), PreferenceLoss(PreferenceLossConfig("sigmoid", BETA)), WEIGHT, scale="pair_mean")
    optimizer = torch.optim.SGD(model.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    pair_generator = torch.Generator().manual_seed(SEED + rank)  # as the trainer: seed + local_rank
    batch_generator = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    record: dict = {"grads": [], "params": [], "fingerprints": [], "stats": [], "rows": []}
    for _ in range(STEPS):
        data = torch.randn(BATCH, 1, SIZE, SIZE, generator=batch_generator)
        target = torch.randint(0, 3, (BATCH, 1, SIZE, SIZE), generator=batch_generator).float()
        target = [target, target[:, :, ::2, ::2]]
        # nnUNetTrainerMAPO.train_step: append the pairs' patches to the batch, hand the pairs to the loss.
        pairs = preference_set.sample(PAIRS_PER_STEP, pair_generator) if rank in pair_ranks else None
        data = append_pair_rows(data, pairs)
        # nnUNetTrainer.train_step (CPU: no autocast, no grad scaler)
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(data), target, pairs=pairs)
        value.backward()
        record["grads"].append(flat_grads(network))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()
        record["params"].append(flat_params(network))
        record["fingerprints"].append(parameters_fingerprint(model))
        record["stats"].append(dict(loss.last_stats))
        record["rows"].append(data.shape[0])
    assert_same_on_all_ranks(parameters_fingerprint(network), "parameters after DDP training")
    record["gathered_stats"] = gather_step_stats(collate_step_stats(record["stats"]))
    return record


def local_dpo_gradient(rank: int, preference_set: PreferenceSet) -> torch.Tensor:
    """Gradient of ``WEIGHT`` x this rank's first-step DPO term alone, without DDP (same weights, same pairs)."""
    network = tiny_unet()
    pairs = preference_set.sample(PAIRS_PER_STEP, torch.Generator().manual_seed(SEED + rank))
    losses = PreferenceLoss(PreferenceLossConfig("sigmoid", BETA))(
        network(pairs.images)[0], pairs.chosen, pairs.rejected, pairs.reference_chosen_logps,
        pairs.reference_rejected_logps, pairs.valid)[0]
    (WEIGHT * losses.mean()).backward()
    return flat_grads(network)


def raises(function, *args) -> str | None:
    """The exception's type and message, or None."""
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


# -------------------------------------------------------------------------------------------- the scenarios
def scenario_gather(rank: int) -> dict:
    network = tiny_unet()
    assert_same_on_all_ranks(parameters_fingerprint(network), "initial parameters")
    local0 = preference_round(network, KEYS, rank, round_index=0)  # 3 cases on rank 0, 2 on rank 1
    local1 = preference_round(network, KEYS[:1], rank, round_index=1)  # rank 1's share is empty
    return {
        "shards": [shard_cases(KEYS, rank, WORLD_SIZE), shard_cases(KEYS[:1], rank, WORLD_SIZE)],
        "local": [local0.state_dict(), local1.state_dict()],
        "gathered": [gather_preference_set(local0).state_dict(), gather_preference_set(local1).state_dict()],
    }


def scenario_ddp(rank: int) -> dict:
    network = tiny_unet()
    preference_set = gather_preference_set(preference_round(network, KEYS, rank, round_index=0))
    # On rank 1 only, the DPO value is NaN: that rank's step falls back to Dice+CE (MAPOLoss), the other's does not.
    poisoned = preference_set if rank == 0 else dataclasses.replace(
        preference_set, reference_chosen_logps=torch.full_like(preference_set.reference_chosen_logps, math.nan))
    return {
        "num_pairs": len(preference_set),
        "both": ddp_training(rank, preference_set, (0, 1)),
        "none": ddp_training(rank, preference_set, ()),
        "rank1_only": ddp_training(rank, preference_set, (1,)),
        "nonfinite_on_rank1": ddp_training(rank, poisoned, (0, 1)),
        "local_dpo_grad": local_dpo_gradient(rank, preference_set),
    }


def scenario_stats_and_checks(rank: int) -> dict:
    stats = {"mapo_dpo_loss": [0.5 + rank, math.nan, 10.0 * rank][: 2 + rank], "mapo_skipped_steps": [float(rank)]}
    part = empty_preference_set(round_index=rank, epoch=3, num_items=1)
    return {
        "stats": gather_step_stats(stats),
        "stats_key_mismatch": raises(gather_step_stats, {f"key_{rank}": [1.0]}),
        "same_float": raises(assert_same_on_all_ranks, 1.25, "a float"),
        "same_nan": raises(assert_same_on_all_ranks, math.nan, "NaN"),
        "same_tensor": raises(assert_same_on_all_ranks, torch.arange(3.0), "a tensor"),
        "different_float": raises(assert_same_on_all_ranks, 1.0 + rank * 1e-12, "the fingerprint"),
        "different_tensor": raises(assert_same_on_all_ranks, torch.tensor([1, rank]), "a tensor"),
        "different_shape": raises(assert_same_on_all_ranks, torch.zeros(1 + rank), "a tensor"),
        "close_float": raises(assert_same_on_all_ranks, 1.0 + rank * 1e-12, "the fingerprint", 1e-9),
        "round_mismatch": raises(gather_preference_set, part),
    }


def scenario_pairs_per_step(rank: int) -> dict:
    """nnU-Net's own split of the batch over the ranks, then MAPO's pairs per step from this rank's share."""
    from types import SimpleNamespace

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mapo.training.settings import ALL_SETTINGS, resolve_and_check

    trainer = SimpleNamespace(is_ddp=True, configuration_manager=SimpleNamespace(batch_size=5),
                              oversample_foreground_percent=0.33)
    nnUNetTrainer._set_batch_size_and_oversample(trainer)
    settings = resolve_and_check({s.name: s.default for s in ALL_SETTINGS.values()}, trainer.batch_size)
    return {"batch_size": trainer.batch_size, "pairs_per_step": settings["mapo_pairs_per_step"]}


SCENARIOS = {"gather": scenario_gather, "ddp": scenario_ddp, "stats": scenario_stats_and_checks,
             "pairs_per_step": scenario_pairs_per_step}


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    results: dict = {}
    try:
        for name, scenario in SCENARIOS.items():
            try:
                results[name] = scenario(rank)
            except Exception:  # noqa: BLE001 - reported by the test of this scenario; the later ones are skipped
                results[name] = {"error": traceback.format_exc()}
                break
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Runs every scenario on 2 gloo processes; returns what each rank saved, in rank order."""
    folder = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD_SIZE, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"The 2 gloo processes did not finish within {RUN_TIMEOUT_S} s (hang in a collective?).")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def result(ranks: list[dict], scenario: str) -> list[dict]:
    per_rank = [r.get(scenario) for r in ranks]
    problems = [f"rank {r}: " + ("did not run (an earlier scenario failed)" if res is None else res["error"])
                for r, res in enumerate(per_rank) if res is None or "error" in res]
    if problems:
        pytest.fail(f"Scenario {scenario!r} failed:\n" + "\n".join(problems))
    return per_rank


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# --------------------------------------------------------------------------------------- shard_cases (pure)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("count", [0, 1, 2, 5, 6, 13])
def test_shards_are_disjoint_balanced_and_cover_the_keys_in_order(count, world_size):
    keys = [f"c{i:02d}" for i in range(count)]
    shards = [shard_cases(keys, rank, world_size) for rank in range(world_size)]
    assert [k for shard in shards for k in shard] == keys  # disjoint, complete, rank order = key order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger shares first
    assert shards == [shard_cases(tuple(keys), rank, world_size) for rank in range(world_size)]  # deterministic


def test_more_ranks_than_keys_leaves_trailing_ranks_empty():
    assert [shard_cases(["a", "b"], rank, 4) for rank in range(4)] == [["a"], ["b"], [], []]
    assert shard_cases([], 0, 2) == []


def test_shards_keep_the_given_order_and_do_not_alias_the_input():
    keys = ["z", "a", "m"]
    shard = shard_cases(keys, 0, 1)
    assert shard == keys and shard is not keys


@pytest.mark.parametrize(("keys", "rank", "world_size", "message"), [
    ("case_0", 0, 1, "single string"),
    (["a", 3], 0, 1, "must be strings"),
    (["a", "b", "a"], 0, 2, "duplicates"),
    (["a"], 0, 0, "world_size must be >= 1"),
    (["a"], 2, 2, r"rank must lie in \[0, 1\]"),
    (["a"], -1, 2, "rank must lie"),
    (["a"], 0.0, 2, "rank must be an int"),
    (["a"], True, 2, "rank must be an int"),
    (["a"], 0, 2.0, "world_size must be an int"),
])
def test_shard_cases_rejects_bad_arguments(keys, rank, world_size, message):
    with pytest.raises(ValueError, match=message):
        shard_cases(keys, rank, world_size)


# ------------------------------------------------------------------------------ without a process group
def test_without_a_process_group_everything_is_local():
    assert not is_distributed()
    part = empty_preference_set(num_items=4)
    assert gather_preference_set(part) is part
    stats = {"mapo_dpo_loss": [0.1, math.nan], "mapo_skipped_steps": [0.0, 1.0]}
    gathered = gather_step_stats(stats)
    assert list(gathered) == list(stats) and gathered["mapo_skipped_steps"] == [0.0, 1.0]
    assert gathered["mapo_dpo_loss"][0] == 0.1 and math.isnan(gathered["mapo_dpo_loss"][1])
    assert gathered["mapo_dpo_loss"] is not stats["mapo_dpo_loss"]
    assert_same_on_all_ranks(1.0, "anything")  # nothing to compare against


def test_parameters_fingerprint():
    network = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    expected = sum(float(p.detach().double().sum() + p.detach().double().square().sum()) for p in network.parameters())
    assert parameters_fingerprint(network) == pytest.approx(expected, rel=1e-12)
    assert parameters_fingerprint(network) == parameters_fingerprint(network)
    with_buffers = parameters_fingerprint(network, include_buffers=True)  # running_var (ones) counts twice
    assert with_buffers == pytest.approx(expected + 4.0, rel=1e-12)  # num_batches_tracked is not a float
    before = parameters_fingerprint(network)
    with torch.no_grad():
        network[0].weight[0, 0] += 1e-3
    assert parameters_fingerprint(network) != before
    assert parameters_fingerprint(nn.ReLU()) == 0.0


# ------------------------------------------------------------------------------------ 2 gloo processes
def test_gathered_preference_set_is_identical_on_all_ranks_and_in_rank_order(ranks):
    rank0, rank1 = result(ranks, "gather")
    assert rank0["shards"][0] == KEYS[:3] and rank1["shards"][0] == KEYS[3:]
    local = [PreferenceSet.from_state_dict(r["local"][0]) for r in (rank0, rank1)]
    assert len(local[0]) > 0 and len(local[1]) > 0, "each rank should find pairs (the parts must differ)"
    assert set(local[0].keys) <= set(KEYS[:3]) and set(local[1].keys) <= set(KEYS[3:])
    assert_same_state(rank0["gathered"][0], rank1["gathered"][0])
    assert_same_state(rank0["gathered"][0], PreferenceSet.concatenate(local).state_dict())
    gathered = PreferenceSet.from_state_dict(rank0["gathered"][0])
    assert gathered.keys == local[0].keys + local[1].keys == [k for k in KEYS if k in gathered.keys]
    assert gathered.num_items == len(KEYS) and len(gathered) == len(local[0]) + len(local[1])
    assert (gathered.round_index, gathered.epoch) == (0, 7)


def test_gathered_references_match_one_process(ranks):
    """Each rank computed its pairs' reference log-likelihoods; with identical weights they are what one process
    computes for the same patches, so no broadcast of the reference is needed."""
    gathered = PreferenceSet.from_state_dict(result(ranks, "gather")[0]["gathered"][0])
    network = tiny_unet()
    assert torch.equal(gathered.images, torch.stack([item_data(k) for k in gathered.keys]).half())
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(network, gathered.images.float()), gathered.chosen,
                                           gathered.rejected)
    assert torch.allclose(gathered.reference_chosen_logps, ref_c, rtol=1e-5, atol=1e-4)
    assert torch.allclose(gathered.reference_rejected_logps, ref_r, rtol=1e-5, atol=1e-4)


def test_gather_with_an_empty_part(ranks):
    rank0, rank1 = result(ranks, "gather")
    assert rank0["shards"][1] == KEYS[:1] and rank1["shards"][1] == []
    empty = PreferenceSet.from_state_dict(rank1["local"][1])
    assert len(empty) == 0 and empty.num_items == 0
    assert_same_state(rank0["gathered"][1], rank1["gathered"][1])
    first = PreferenceSet.from_state_dict(rank0["local"][1])
    gathered = PreferenceSet.from_state_dict(rank0["gathered"][1])
    assert_same_state(gathered.state_dict(), first.state_dict())  # rank 0's part; rank 1 added nothing
    assert gathered.num_items == 1 and gathered.round_index == 1


def test_ddp_keeps_parameters_identical_after_every_step(ranks):
    rank0, rank1 = result(ranks, "ddp")
    assert rank0["num_pairs"] == rank1["num_pairs"] > 0
    for run in ("both", "none", "rank1_only", "nonfinite_on_rank1"):
        a, b = rank0[run], rank1[run]
        for step in range(STEPS):
            assert torch.equal(a["grads"][step], b["grads"][step]), (run, step)  # all-reduced
            assert torch.equal(a["params"][step], b["params"][step]), (run, step)
            assert a["fingerprints"][step] == b["fingerprints"][step], (run, step)
        assert not torch.equal(a["params"][0], a["params"][-1])  # it did train
    assert rank0["rank1_only"]["rows"] == [BATCH] * STEPS and rank1["rank1_only"]["rows"] == [BATCH + 2] * STEPS


def test_dpo_statistics_are_finite_and_start_at_log2(ranks):
    for rank, outcome in enumerate(result(ranks, "ddp")):
        for step, stats in enumerate(outcome["both"]["stats"]):
            assert all(math.isfinite(stats[key]) for key in STEP_KEYS), (rank, step, stats)
            assert stats["mapo_skipped_steps"] == 0.0
        # At the first step the policy is the reference on every rank, whichever rank made the pair: r+ = r- = 0.
        first = outcome["both"]["stats"][0]
        assert first["mapo_dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert abs(first["mapo_reward_margin"]) < 1e-4
        assert all(math.isnan(s["mapo_dpo_loss"]) for s in outcome["none"]["stats"])
    assert all(math.isnan(s["mapo_dpo_loss"]) for s in result(ranks, "ddp")[0]["rank1_only"]["stats"])


def test_the_dpo_gradient_is_averaged_over_ranks(ranks):
    """DDP's gradient with pairs minus without = the mean over ranks of the local DPO gradients (InstanceNorm: the
    appended rows do not change the batch rows' outputs), so every rank's preference term reaches every rank."""
    rank0, rank1 = result(ranks, "ddp")
    dpo0, dpo1 = rank0["local_dpo_grad"], rank1["local_dpo_grad"]
    assert dpo0.abs().max() > 0 and dpo1.abs().max() > 0
    none, both, rank1_only = (rank0[run]["grads"][0] for run in ("none", "both", "rank1_only"))
    scale = float(dpo0.abs().max() + dpo1.abs().max())
    assert not torch.allclose(both, none, rtol=0, atol=1e-3 * scale)  # the DPO term contributes
    assert torch.allclose(both - none, (dpo0 + dpo1) / WORLD_SIZE, rtol=1e-3, atol=1e-4 * scale)
    # rank 0 had no pairs, yet its gradient holds rank 1's preference term
    assert torch.allclose(rank1_only - none, dpo1 / WORLD_SIZE, rtol=1e-3, atol=1e-4 * scale)


def test_a_nonfinite_dpo_value_on_one_rank_drops_only_that_ranks_term(ranks):
    rank0, rank1 = result(ranks, "ddp")
    for stats in rank1["nonfinite_on_rank1"]["stats"]:
        assert stats["mapo_skipped_steps"] == 1.0 and math.isnan(stats["mapo_dpo_loss"])
    for stats in rank0["nonfinite_on_rank1"]["stats"]:
        assert stats["mapo_skipped_steps"] == 0.0 and math.isfinite(stats["mapo_dpo_loss"])
    for outcome in (rank0, rank1):
        grads = outcome["nonfinite_on_rank1"]["grads"]
        assert all(bool(torch.isfinite(g).all()) for g in grads)
    dpo0 = rank0["local_dpo_grad"]
    difference = rank0["nonfinite_on_rank1"]["grads"][0] - rank0["none"]["grads"][0]
    assert torch.allclose(difference, dpo0 / WORLD_SIZE, rtol=1e-3, atol=1e-4 * float(dpo0.abs().max()))


def test_gathered_step_stats_of_training_are_in_rank_order(ranks):
    rank0, rank1 = result(ranks, "ddp")
    for run in ("both", "rank1_only"):
        expected = {k: [s[k] for s in rank0[run]["stats"]] + [s[k] for s in rank1[run]["stats"]]
                    for k in STEP_KEYS}
        for outcome in (rank0, rank1):
            assert list(outcome[run]["gathered_stats"]) == list(STEP_KEYS)
            for key in STEP_KEYS:
                assert np.array_equal(outcome[run]["gathered_stats"][key], expected[key], equal_nan=True)


def test_gather_step_stats_concatenates_in_rank_order(ranks):
    for outcome in result(ranks, "stats"):
        stats = outcome["stats"]
        assert list(stats) == ["mapo_dpo_loss", "mapo_skipped_steps"]
        assert np.array_equal(stats["mapo_dpo_loss"], [0.5, math.nan, 1.5, math.nan, 10.0], equal_nan=True)
        assert stats["mapo_skipped_steps"] == [0.0, 1.0]
        assert outcome["stats_key_mismatch"].startswith("ValueError: The ranks report different step statistics")


def test_consistency_checks_raise_on_every_rank(ranks):
    for outcome in result(ranks, "stats"):
        assert outcome["same_float"] is None and outcome["same_nan"] is None and outcome["same_tensor"] is None
        assert outcome["close_float"] is None
        assert outcome["different_float"].startswith("RuntimeError: the fingerprint differs between ranks")
        assert outcome["different_tensor"].startswith("RuntimeError: a tensor differs between ranks")
        assert outcome["different_shape"].startswith("RuntimeError: a tensor differs between ranks")
        assert outcome["round_mismatch"].startswith("ValueError: The ranks' preference-set parts come from")


def test_pairs_per_step_follow_each_ranks_share_of_the_batch(ranks):
    per_rank = result(ranks, "pairs_per_step")
    assert [r["batch_size"] for r in per_rank] == [3, 2]  # nnU-Net splits a batch of 5 over 2 ranks
    assert [r["pairs_per_step"] for r in per_rank] == [3 / 8, 2 / 8]
    assert sum(r["pairs_per_step"] for r in per_rank) == 5 / 8  # +12.5% rows in all, whatever the number of ranks
