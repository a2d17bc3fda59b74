"""Tests of ``nnunetv2_mapo.training.checkpointing``: atomic writes, MAPO's state beside checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

from nnunetv2_mapo.training.checkpointing import (
    STATE_FORMAT,
    STATE_VERSION,
    MAPOStateError,
    atomic_path,
    load_state,
    save_with_state,
    state_path,
)

pytestmark = pytest.mark.usefixtures("mapo_single_thread")


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def checkpoint_writer(text: str):
    return lambda path: write_text(path, text)


def sample_state() -> dict:
    return {"round_index": 3, "tensor": torch.arange(4.0), "nested": {"keys": ["a", "b"], "value": None},
            "generator": torch.Generator().manual_seed(1).get_state()}


# ------------------------------------------------------------------------------------------------ atomic_path
def test_atomic_path_writes_the_target(tmp_path):
    target = tmp_path / "file.pth"
    with atomic_path(str(target)) as temporary:
        assert temporary != str(target)
        assert os.path.dirname(temporary) == str(tmp_path)  # same folder: the rename is atomic
        assert not target.exists()  # nothing visible before the block ends
        write_text(temporary, "new")
    assert read_text(str(target)) == "new"
    assert os.listdir(tmp_path) == ["file.pth"]


def test_atomic_path_leaves_no_partial_target_when_the_writer_raises(tmp_path):
    target = tmp_path / "file.pth"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(str(target)) as temporary:
            write_text(temporary, "half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_path_keeps_the_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "file.pth"
    write_text(str(target), "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target)) as temporary:
            write_text(temporary, "partial new content")
            raise KeyboardInterrupt
    assert read_text(str(target)) == "old"
    assert os.listdir(tmp_path) == ["file.pth"]


def test_atomic_path_replaces_an_existing_file(tmp_path):
    target = tmp_path / "file.pth"
    write_text(str(target), "old")
    with atomic_path(str(target)) as temporary:
        write_text(temporary, "new")
    assert read_text(str(target)) == "new"
    assert os.listdir(tmp_path) == ["file.pth"]


def test_atomic_path_refuses_an_empty_write(tmp_path):
    target = tmp_path / "file.pth"
    write_text(str(target), "old")
    with pytest.raises(OSError, match="Nothing was written"):
        with atomic_path(str(target)):
            pass
    assert read_text(str(target)) == "old"
    assert os.listdir(tmp_path) == ["file.pth"]


def test_atomic_path_with_torch_save(tmp_path):
    target = tmp_path / "weights.pt"
    with atomic_path(str(target)) as temporary:
        torch.save({"w": torch.ones(2)}, temporary)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))


# ------------------------------------------------------------------------------------------------ save_with_state
def test_state_path_names_the_epoch():
    assert state_path("/a/checkpoint_latest.pth", 7) == "/a/checkpoint_latest.pth.mapo_e000007.pt"
    assert state_path("c.pth", 1234567) == "c.pth.mapo_e1234567.pt"


def test_save_writes_state_before_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    seen = {}

    def write_checkpoint(path: str) -> None:
        own = state_path(checkpoint, 5)
        seen["state_exists"] = os.path.isfile(own)
        seen["state"] = torch.load(own, weights_only=True)["state"]["round_index"] if os.path.isfile(own) else None
        seen["checkpoint_exists"] = os.path.exists(checkpoint)
        seen["path"] = path
        write_text(path, "checkpoint 5")

    save_with_state(checkpoint, 5, write_checkpoint, sample_state())
    assert seen["state_exists"] and seen["state"] == 3
    assert not seen["checkpoint_exists"]
    assert seen["path"] != checkpoint  # written to a temporary name, then renamed
    assert read_text(checkpoint) == "checkpoint 5"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_latest.pth", "checkpoint_latest.pth.mapo_e000005.pt"]


def test_save_and_load_roundtrip(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    state = sample_state()
    save_with_state(checkpoint, 12, checkpoint_writer("x"), state)
    loaded = load_state(checkpoint, 12)
    assert loaded["round_index"] == 3
    assert torch.equal(loaded["tensor"], state["tensor"])
    assert loaded["nested"] == {"keys": ["a", "b"], "value": None}
    assert torch.equal(loaded["generator"], state["generator"])


def test_save_removes_states_of_other_epochs_only_for_this_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    other_checkpoint = str(tmp_path / "checkpoint_best.pth")
    save_with_state(other_checkpoint, 3, checkpoint_writer("best"), {"a": 1})
    save_with_state(checkpoint, 3, checkpoint_writer("3"), {"a": 1})
    unrelated = tmp_path / "checkpoint_latest.pth.mapo_e000001.pt.bak"
    write_text(str(unrelated), "keep me")
    save_with_state(checkpoint, 4, checkpoint_writer("4"), {"a": 2})
    save_with_state(checkpoint, 6, checkpoint_writer("6"), {"a": 3})
    assert sorted(os.listdir(tmp_path)) == sorted([
        "checkpoint_best.pth", "checkpoint_best.pth.mapo_e000003.pt",
        "checkpoint_latest.pth", "checkpoint_latest.pth.mapo_e000006.pt",
        "checkpoint_latest.pth.mapo_e000001.pt.bak",
    ])
    assert load_state(checkpoint, 6) == {"a": 3}
    assert load_state(other_checkpoint, 3) == {"a": 1}


def test_save_at_the_same_epoch_overwrites(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 2, checkpoint_writer("first"), {"a": 1})
    save_with_state(checkpoint, 2, checkpoint_writer("second"), {"a": 2})
    assert load_state(checkpoint, 2) == {"a": 2}
    assert read_text(checkpoint) == "second"
    assert len(os.listdir(tmp_path)) == 2


def test_failed_checkpoint_write_keeps_the_previous_matching_pair(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 2, checkpoint_writer("epoch 2"), {"a": 2})

    def dies(path: str) -> None:
        write_text(path, "half")
        raise RuntimeError("killed while writing the checkpoint")

    with pytest.raises(RuntimeError, match="killed"):
        save_with_state(checkpoint, 3, dies, {"a": 3})
    assert read_text(checkpoint) == "epoch 2"
    assert load_state(checkpoint, 2) == {"a": 2}  # the old state was not removed
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_state_must_be_weights_only_serializable(tmp_path):
    # save_with_state accepts anything torch.save takes, but load_state refuses what weights_only cannot read.
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 1, checkpoint_writer("x"), {"object": Opaque()})
    with pytest.raises(MAPOStateError, match="Cannot read MAPO state"):
        load_state(checkpoint, 1)


# ------------------------------------------------------------------------------------------------ load_state
def test_missing_state_gives_none(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_final.pth")
    assert load_state(checkpoint, 5) is None
    write_text(checkpoint, "plain nnU-Net checkpoint")
    assert load_state(checkpoint, 5) is None


def test_state_of_another_epoch_is_a_mismatch(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 4, checkpoint_writer("x"), {"a": 1})
    with pytest.raises(MAPOStateError, match="holds epoch 5") as err:
        load_state(checkpoint, 5)
    assert "mapo_e000004" in str(err.value)


def test_payload_epoch_must_match_the_file_name(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 4, checkpoint_writer("x"), {"a": 1})
    os.rename(state_path(checkpoint, 4), state_path(checkpoint, 5))  # renamed by hand
    with pytest.raises(MAPOStateError, match="belongs to epoch 4"):
        load_state(checkpoint, 5)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupt_state_file(tmp_path, content):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    with open(state_path(checkpoint, 2), "wb") as handle:
        handle.write(content)
    with pytest.raises(MAPOStateError, match="Cannot read MAPO state") as err:
        load_state(checkpoint, 2)
    message = str(err.value)
    assert state_path(checkpoint, 2) in message
    assert "corrupt" in message and "Delete the checkpoint" in message


def test_truncated_state_file(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    save_with_state(checkpoint, 2, checkpoint_writer("x"), sample_state())
    own = state_path(checkpoint, 2)
    with open(own, "rb") as handle:
        data = handle.read()
    with open(own, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(MAPOStateError, match="Cannot read MAPO state"):
        load_state(checkpoint, 2)


class Opaque:
    """A plain class instance: not something weights_only may rebuild."""


class Payload:
    """Pickles to a call of os.mkdir: unpickling it with weights_only=False would run that call."""

    marker = ""

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_code_is_refused_and_not_executed(tmp_path):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    marker = tmp_path / "payload_ran"
    Payload.marker = str(marker)
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": 2, "state": {"evil": Payload()}}
    torch.save(payload, state_path(checkpoint, 2))
    with pytest.raises(MAPOStateError, match="Cannot read MAPO state"):
        load_state(checkpoint, 2)
    assert not marker.exists()
    # the control: the same file does run code when loaded without weights_only
    torch.load(state_path(checkpoint, 2), weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("payload", [
    {"version": STATE_VERSION, "epoch": 2, "state": {}},
    {"format": "something.else", "version": STATE_VERSION, "epoch": 2, "state": {}},
    [STATE_FORMAT, STATE_VERSION, 2],
    torch.zeros(3),
])
def test_wrong_header(tmp_path, payload):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    torch.save(payload, state_path(checkpoint, 2))
    with pytest.raises(MAPOStateError, match="is not a MAPO state file"):
        load_state(checkpoint, 2)


@pytest.mark.parametrize("version", [STATE_VERSION + 1, 0, None, "1"])
def test_wrong_version(tmp_path, version):
    checkpoint = str(tmp_path / "checkpoint_latest.pth")
    torch.save({"format": STATE_FORMAT, "version": version, "epoch": 2, "state": {}}, state_path(checkpoint, 2))
    with pytest.raises(MAPOStateError, match="state version") as err:
        load_state(checkpoint, 2)
    assert repr(version) in str(err.value)


def test_state_error_is_a_runtime_error():
    assert issubclass(MAPOStateError, RuntimeError)


def test_checkpoint_names_with_glob_characters(tmp_path):
    folder = tmp_path / "run[1]"
    folder.mkdir()
    checkpoint = str(folder / "checkpoint_latest.pth")
    save_with_state(checkpoint, 1, checkpoint_writer("1"), {"a": 1})
    save_with_state(checkpoint, 2, checkpoint_writer("2"), {"a": 2})
    assert sorted(os.listdir(folder)) == ["checkpoint_latest.pth", "checkpoint_latest.pth.mapo_e000002.pt"]
    with pytest.raises(MAPOStateError, match="other epochs"):
        load_state(checkpoint, 1)


def test_a_fixed_reference_network_is_written_once_and_read_back_or_refused_clearly(tmp_path) -> None:
    from nnunetv2_mapo.training.checkpointing import read_reference_network, write_reference_network

    weights = {"layer.weight": torch.arange(6.0).reshape(2, 3)}
    name = write_reference_network(str(tmp_path), weights)
    assert torch.equal(read_reference_network(str(tmp_path), name)["layer.weight"], weights["layer.weight"])
    with pytest.raises(MAPOStateError, match="fixed reference network .* which is missing"):
        read_reference_network(str(tmp_path / "elsewhere"), name)
    (tmp_path / name).write_bytes(b"not a torch file")
    with pytest.raises(MAPOStateError, match="Cannot read the fixed reference network"):
        read_reference_network(str(tmp_path), name)
