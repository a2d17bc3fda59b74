"""MAPO's multi-GPU (DDP) logic as small functions that also run, as the identity, without a process group.

Under ``nnUNetv2_train ... -num_gpus N`` every rank holds the same network weights (DDP all-reduces the gradients, so
identical initial weights stay identical). A preference round is therefore split over the ranks:

1. :func:`shard_cases`: each rank takes a contiguous, balanced share of the round's (sorted) cases;
2. each rank scores its share with the unwrapped network (no collective inside the round);
3. :func:`gather_preference_set`: the parts are joined in rank order, so every rank ends with the same set.

Reference log-likelihoods need no broadcast: each rank computes them for its own pairs with the shared weights, and
the gathered set carries them. :func:`parameters_fingerprint` and :func:`assert_same_on_all_ranks` check that the
weights really are the same everywhere. :func:`gather_step_stats` joins the per-step DPO statistics of all ranks for
the epoch log.

Collectives use ``torch.distributed.all_gather_object``. With NCCL it serialises through a CUDA tensor on the current
device, so each rank must have called ``torch.cuda.set_device`` first: nnU-Net's ``run_ddp`` does
(``torch.cuda.set_device(torch.device('cuda', dist.get_rank()))`` right after ``init_process_group('nccl')``).
Every function that communicates must be called by all ranks of the group, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from nnunetv2_mapo.method.preference_set import PreferenceSet

__all__ = [
    "assert_same_on_all_ranks",
    "gather_preference_set",
    "gather_step_stats",
    "is_distributed",
    "parameters_fingerprint",
    "shard_cases",
]


def is_distributed() -> bool:
    """Whether a default ``torch.distributed`` process group is initialized (DDP training)."""
    return dist.is_available() and dist.is_initialized()


def _all_gather(obj: Any, group: dist.ProcessGroup | None) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, obj, group=group)
    return parts


def shard_cases(keys: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's share of a round's cases.

    The shares are contiguous blocks of ``keys`` whose sizes differ by at most one (the first ``len(keys) %
    world_size`` ranks take one case more), so they are disjoint, cover every key, and concatenating them in rank
    order gives ``keys`` back: the gathered preference set lists its pairs in the same case order as a single-GPU
    round. Ranks beyond ``len(keys)`` get an empty share. Every rank must pass the same ``keys`` in the same order
    (the trainer sorts them).

    Args:
        keys: The round's case identifiers, without duplicates.
        rank: This process's rank, ``0 <= rank < world_size``.
        world_size: Number of processes, >= 1.

    Returns:
        The keys this rank scores, in their order in ``keys``.

    Raises:
        ValueError: ``keys`` is a single string, holds a non-string or a duplicate, or ``rank``/``world_size`` are
            not integers in range.
    """
    if isinstance(keys, (str, bytes)):
        raise ValueError(f"keys must be a sequence of case identifiers, got the single string {keys!r}.")
    keys = list(keys)
    if not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys must be strings, got {sorted({type(k).__name__ for k in keys})}.")
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"keys must be unique (a case would be scored twice), got duplicates {duplicates}.")
    for name, value in (("world_size", world_size), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size - 1}] for world_size {world_size}, got {rank}.")
    base, extra = divmod(len(keys), world_size)
    start = rank * base + min(rank, extra)
    return keys[start:start + base + (rank < extra)]


def gather_preference_set(local: PreferenceSet, group: dist.ProcessGroup | None = None) -> PreferenceSet:
    """Joins every rank's part of a preference round; all ranks return the identical set.

    The result is :meth:`PreferenceSet.concatenate` of the parts in rank order (empty parts contribute only their
    ``num_items``). The parts travel through ``all_gather_object`` (pickled, CPU tensors), so each rank briefly holds
    all parts plus, with NCCL, a padded byte buffer of ``world_size`` x the largest part on its GPU. Without a process
    group, ``local`` is returned unchanged.

    Args:
        local: This rank's part (on the CPU, as :func:`~nnunetv2_mapo.method.preference_set.generate_preference_set`
            returns it).
        group: Process group; the default group when None.

    Returns:
        The whole round's set.

    Raises:
        ValueError: The parts disagree on ``round_index`` or ``epoch`` (the ranks are out of step). Every rank sees
            all parts, so every rank raises, and none is left waiting in a later collective.
    """
    parts = _all_gather(local, group)
    if len(parts) == 1:
        return parts[0]
    rounds = [(p.round_index, p.epoch) for p in parts]
    if len(set(rounds)) != 1:
        raise ValueError(f"The ranks' preference-set parts come from different rounds: (round_index, epoch) per rank "
                         f"{rounds}. All ranks must run each preference round together.")
    return PreferenceSet.concatenate(parts)


def gather_step_stats(stats: dict[str, list[float]], group: dist.ProcessGroup | None = None) -> dict[str, list[float]]:
    """Concatenates every rank's per-step statistics, key by key, in rank order.

    Args:
        stats: This rank's statistics, one list of per-step values per key (NaN for steps without pairs).
        group: Process group; the default group when None.

    Returns:
        ``{key: rank 0's values + rank 1's values + ...}``, the same on every rank; without a process group a copy of
        ``stats`` (the keys in their order, new lists).

    Raises:
        ValueError: The ranks passed different keys (every rank raises).
    """
    local = {key: [float(v) for v in values] for key, values in stats.items()}
    parts = _all_gather(local, group)
    keys = [list(part) for part in parts]
    if any(set(k) != set(keys[0]) for k in keys):
        raise ValueError(f"The ranks report different step statistics: keys per rank {keys}.")
    return {key: [v for part in parts for v in part[key]] for key in keys[0]}


def parameters_fingerprint(module: nn.Module, include_buffers: bool = False) -> float:
    """A float64 checksum of a module's weights, to compare them across ranks cheaply.

    The sum over all parameters of ``sum(p) + sum(p**2)``, accumulated in float64 on the parameters' device (the
    squares keep opposite changes from cancelling). Equal weights give bitwise-equal fingerprints on equal hardware.

    Args:
        module: The network; pass the unwrapped one or the DDP wrapper (same parameters).
        include_buffers: Also sum the floating-point buffers (e.g. BatchNorm running statistics).

    Returns:
        The fingerprint (0.0 for a module without parameters). NaN or inf when a weight is.
    """
    tensors = list(module.parameters())
    if include_buffers:
        tensors += [b for b in module.buffers() if b.is_floating_point()]
    total: torch.Tensor | None = None
    with torch.no_grad():
        for tensor in tensors:
            values = tensor.detach().double()
            term = values.sum() + values.square().sum()
            total = term if total is None else total + term.to(total.device)
    return 0.0 if total is None else float(total)


def _tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def assert_same_on_all_ranks(value: float | torch.Tensor, name: str, rtol: float = 0.0,
                             group: dist.ProcessGroup | None = None) -> None:
    """Checks that ``value`` is the same on every rank (a collective; nothing to check without a process group).

    Meant for small values such as :func:`parameters_fingerprint`, e.g. at the start of each preference round, whose
    reference log-likelihoods assume identical weights on all ranks. Tensors are compared on the CPU, exactly (NaN
    equals NaN).

    Args:
        value: A float or a (small) tensor.
        name: What the value is, for the error message.
        rtol: Relative tolerance for floats (0: bitwise equality; NaN equals NaN).
        group: Process group; the default group when None.

    Raises:
        RuntimeError: The ranks disagree (every rank raises, with all ranks' values in the message).
    """
    if isinstance(value, torch.Tensor):
        local: Any = value.detach().cpu()
    else:
        local = float(value)
    parts = _all_gather(local, group)
    first = parts[0]

    def same(other: Any) -> bool:
        if isinstance(first, torch.Tensor) or isinstance(other, torch.Tensor):
            return (isinstance(first, torch.Tensor) and isinstance(other, torch.Tensor) and first.shape == other.shape
                    and first.dtype == other.dtype and _tensors_equal(first, other))
        if math.isnan(first) or math.isnan(other):
            return math.isnan(first) and math.isnan(other)
        return first == other or math.isclose(first, other, rel_tol=rtol, abs_tol=0.0)

    if not all(same(p) for p in parts[1:]):
        shown = [p if not isinstance(p, torch.Tensor) or p.numel() <= 8 else f"tensor{tuple(p.shape)}" for p in parts]
        raise RuntimeError(f"{name} differs between ranks: per rank {shown}. The ranks have diverged.")
