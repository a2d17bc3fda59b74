"""Atomic checkpoint files and MAPO's own state beside each nnU-Net checkpoint.

nnU-Net writes ``checkpoint_*.pth`` in place, so a process killed mid-write leaves a truncated file. Here every
file is written to a temporary name in the same folder, flushed to disk and renamed over the target, which the
operating system does atomically: a reader sees the old file or the new one, never half of one.

MAPO's state (round counters, the preference set, random generator states) goes to a file of its own,
``<checkpoint>.mapo_e<EPOCH>.pt``, named after the epoch stored in the checkpoint it belongs to. It is written
before the checkpoint and the files of other epochs are removed only after the checkpoint has been replaced, so
whenever the process dies, the checkpoint on disk has its matching state beside it. The state holds tensors and
plain Python values only and is read with ``torch.load(..., weights_only=True)``: loading it executes no code.

A round's preference set (the patches and masks: up to about 1 GB for 100 cases of 128^3) is written once, when the
round ends, to ``mapo_sets/round_NNNN.pt`` in the fold's folder; the state beside each checkpoint names that file.
So ``checkpoint_best/latest/final`` add a few kilobytes each instead of a copy of the set, and a set file is removed
once no state names it any more. A fixed reference policy (``mapo_reference_policy = first_round``) is written once,
to ``mapo_reference_network.pt``, and named by every state after it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator

import torch

STATE_FORMAT = "nnunetv2_mapo.state"
STATE_VERSION = 1
SET_FOLDER = "mapo_sets"
REFERENCE_NETWORK_FILE = "mapo_reference_network.pt"


class MAPOStateError(RuntimeError):
    """MAPO's saved state is missing, corrupt, or does not belong to the checkpoint."""


@contextlib.contextmanager
def atomic_path(target: str) -> Iterator[str]:
    """Yields a temporary path; on success it is fsynced and renamed to ``target``, on failure removed."""
    folder = os.path.dirname(os.path.abspath(target))
    fd, temporary = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield temporary
        if os.path.getsize(temporary) == 0:
            raise OSError(f"Nothing was written to {temporary} for {target}.")
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        with contextlib.suppress(OSError):  # persist the rename itself (not possible on every platform)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, data: dict) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)


def state_path(checkpoint: str, epoch: int) -> str:
    """The MAPO state file that belongs to ``checkpoint`` when the checkpoint holds ``current_epoch == epoch``."""
    return f"{checkpoint}.mapo_e{int(epoch):06d}.pt"


def _state_files(checkpoint: str) -> list[str]:
    pattern = re.compile(re.escape(os.path.basename(checkpoint)) + r"\.mapo_e\d{6}\.pt$")
    return [p for p in glob.glob(glob.escape(checkpoint) + ".mapo_e*.pt") if pattern.search(os.path.basename(p))]


def write_state(checkpoint: str, epoch: int, state: dict) -> str:
    """Writes MAPO's state file for ``checkpoint`` holding ``current_epoch == epoch``, atomically.

    Used by :func:`save_with_state`, and on its own to put a state beside a checkpoint that another trainer wrote
    (for example a shared warm-up that ``nnUNetTrainerMAPO`` continues with ``--c``). States of other epochs are
    left alone.

    Args:
        checkpoint: Path of the nnU-Net checkpoint the state belongs to.
        epoch: The ``current_epoch`` value that checkpoint stores.
        state: MAPO's state (tensors and plain values, see ``nnUNetTrainerMAPO.mapo_state_dict``).

    Returns:
        The path of the state file, :func:`state_path` of ``checkpoint`` and ``epoch``.
    """
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(epoch), "state": state}
    own = state_path(checkpoint, epoch)
    with atomic_path(own) as temporary:
        torch.save(payload, temporary)
    return own


def save_with_state(checkpoint: str, epoch: int, write_checkpoint: Callable[[str], None], state: dict) -> None:
    """Writes MAPO's state, then the checkpoint, both atomically; then drops the states of other epochs.

    Args:
        checkpoint: Target path of the nnU-Net checkpoint.
        epoch: The ``current_epoch`` value the checkpoint stores.
        write_checkpoint: Writes the checkpoint to the path it is given (nnU-Net's ``save_checkpoint``).
        state: MAPO's state (tensors and plain values).
    """
    own = write_state(checkpoint, epoch, state)
    with atomic_path(checkpoint) as temporary:
        write_checkpoint(temporary)
    remove_states(checkpoint, keep=own)


def remove_states(checkpoint: str, keep: str | None = None) -> None:
    """Deletes the MAPO state files of ``checkpoint`` (all, or all but ``keep``)."""
    for stale in _state_files(checkpoint):
        if keep is None or os.path.abspath(stale) != os.path.abspath(keep):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)


def load_state(checkpoint: str, epoch: int) -> dict | None:
    """Reads the MAPO state that belongs to ``checkpoint`` (at ``epoch``), without executing code from the file.

    Args:
        checkpoint: Path of the nnU-Net checkpoint that was loaded.
        epoch: The ``current_epoch`` that checkpoint holds.

    Returns:
        The state, or None when no state file exists for this checkpoint at all.

    Raises:
        MAPOStateError: The state file is unreadable or corrupt, or only states of other epochs exist.
    """
    own = state_path(checkpoint, epoch)
    if not os.path.isfile(own):
        others = _state_files(checkpoint)
        if others:
            raise MAPOStateError(
                f"{checkpoint} holds epoch {epoch}, but its MAPO state files are for other epochs ({others}). The "
                f"checkpoint and its state do not match; restore the matching pair or start a new training."
            )
        return None
    try:
        payload = torch.load(own, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MAPOStateError(
            f"Cannot read MAPO state {own}: {type(err).__name__}: {err}. The file is corrupt or not a MAPO state. "
            f"Delete the checkpoint and this file to restart from an earlier checkpoint, or start a new training."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise MAPOStateError(f"{own} is not a MAPO state file (no '{STATE_FORMAT}' header).")
    if payload.get("version") != STATE_VERSION:
        raise MAPOStateError(f"{own} has state version {payload.get('version')!r}; this nnunetv2_mapo reads "
                             f"version {STATE_VERSION}. Use the nnunetv2_mapo version that wrote it.")
    if payload.get("epoch") != int(epoch):
        raise MAPOStateError(f"{own} belongs to epoch {payload.get('epoch')}, but {checkpoint} holds epoch {epoch}.")
    return payload["state"]


def trainer_state(pair_generator_state: torch.Tensor, round_index: int = 0, preference_set: dict | None = None,
                  pair_steps: int = 0, settings: dict | None = None, pair_uses: dict | None = None,
                  reference_network: str | None = None) -> dict:
    """The layout of MAPO's state (what ``nnUNetTrainerMAPO.mapo_state_dict`` saves), in one place.

    Args:
        pair_generator_state: ``torch.Generator.get_state()`` of the pair sampler.
        round_index: Rounds run so far.
        preference_set: The reference to the set in use (:func:`write_preference_set`), or None before the first
            round.
        pair_steps: Training steps taken with a preference set (they schedule the pairs per step).
        settings: The MAPO settings in effect (compared when a training is resumed).
        pair_uses: :meth:`~nnunetv2_mapo.method.schedule.PairReuse.state_dict` of the set in use, or None.
        reference_network: The file of a fixed reference policy (:func:`write_reference_network`), or None.
    """
    return {"round_index": int(round_index), "preference_set": preference_set, "pair_generator": pair_generator_state,
            "pair_steps": int(pair_steps), "settings": dict(settings or {}), "pair_uses": pair_uses,
            "reference_network": reference_network}


def initial_trainer_state(seed: int) -> dict:
    """The state of a MAPO training that has run no round yet, its pair sampler seeded as rank 0 seeds it.

    Put beside a checkpoint that another trainer wrote (a shared warm-up) with :func:`write_state`, it lets
    ``nnUNetTrainerMAPO`` continue from that checkpoint with ``--c``.

    Args:
        seed: ``mapo_seed``.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return trainer_state(generator.get_state())


def preference_set_path(output_folder: str, round_index: int) -> str:
    """``<output_folder>/mapo_sets/round_NNNN.pt``: where a round's preference set is written, once."""
    return os.path.join(output_folder, SET_FOLDER, f"round_{round_index:04d}.pt")


def write_preference_set(output_folder: str, round_index: int, set_state: dict) -> dict:
    """Writes a round's preference set (atomically) and returns the reference a state keeps instead of the set.

    Args:
        output_folder: The fold's folder.
        round_index: The round that made the set.
        set_state: ``PreferenceSet.state_dict()``.

    Returns:
        ``{"file": "round_NNNN.pt", "round_index": NNNN}``.
    """
    path = preference_set_path(output_folder, round_index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(set_state, temporary)
    return {"file": os.path.basename(path), "round_index": int(round_index)}


def read_preference_set(output_folder: str, reference: dict) -> dict:
    """The set state a reference of :func:`write_preference_set` names (an inline set state is returned as is).

    Raises:
        MAPOStateError: The file is missing or unreadable.
    """
    if "file" not in reference:  # states written before 0.4.0 hold the set itself
        return reference
    return _read_named_file(os.path.join(output_folder, SET_FOLDER, os.path.basename(reference["file"])),
                            "the preference set")


def _read_named_file(path: str, what: str) -> dict:
    """A file a MAPO state names, read without executing code; a missing or unreadable one is a MAPOStateError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise MAPOStateError(f"The MAPO state names {what} {path}, which is missing. Restore it from a copy of the "
                             f"fold's folder, or start a new training.") from err
    except Exception as err:
        raise MAPOStateError(f"Cannot read {what} {path}: {type(err).__name__}: {err}.") from err


def remove_unreferenced_sets(output_folder: str) -> None:
    """Deletes the set files that no state file in ``output_folder`` names any more."""
    folder = os.path.join(output_folder, SET_FOLDER)
    if not os.path.isdir(folder):
        return
    named = set()
    for state_file in glob.glob(os.path.join(glob.escape(output_folder), "*.mapo_e*.pt")):
        try:
            payload = torch.load(state_file, map_location="cpu", weights_only=True)
            reference = payload["state"].get("preference_set") or {}
        except Exception:  # noqa: BLE001 - an unreadable state keeps every set: deleting is never the safe guess
            return
        if "file" in reference:
            named.add(reference["file"])
    for path in glob.glob(os.path.join(glob.escape(folder), "round_*.pt")):
        if os.path.basename(path) not in named:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def write_reference_network(output_folder: str, weights: dict) -> str:
    """Writes a fixed reference policy's weights (atomically) once; returns the file name states keep."""
    with atomic_path(os.path.join(output_folder, REFERENCE_NETWORK_FILE)) as temporary:
        torch.save(weights, temporary)
    return REFERENCE_NETWORK_FILE


def read_reference_network(output_folder: str, name: str) -> dict:
    """The weights :func:`write_reference_network` wrote.

    Raises:
        MAPOStateError: The file is missing or unreadable.
    """
    return _read_named_file(os.path.join(output_folder, os.path.basename(name)), "the fixed reference network")
