import os
import pickle
import random

import numpy as np
import pytest
import torch

from jpop_helpers.checkpoint import (latest_checkpoint, list_checkpoints, load_state, load_weights, pack,
                                     remove_checkpoint, rng_state, save_checkpoint, set_rng_state, unpack)


def test_nested_training_state_round_trips_through_safetensors_and_json():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2)}, 7: {"q": {"absmax": torch.ones(2)}}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 7], "fused": None}],
             "np": np.arange(5, dtype=np.uint32), "scale": np.float64(65536.0)}
    shared = torch.arange(4.0)
    state["shared"] = [shared, shared]  # bitsandbytes keeps one map for many parameters
    tensors = {}
    skeleton = pack(state, tensors)
    back = unpack(skeleton, tensors)
    assert back["shared"][0] is back["shared"][1] and torch.equal(back["shared"][0], shared)
    assert set(back["state"]) == {0, 7}  # integer keys stay integers (the optimizer needs them)
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.95) and back["np"].dtype == np.uint32
    with pytest.raises(TypeError, match="cannot store a function"):
        pack({"f": lambda: 0}, {})


def test_rng_states_restore_the_same_random_streams(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_state(list_checkpoints(tmp_path)[0])["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_old_checkpoints_are_emptied_before_they_are_deleted(tmp_path):
    """On Drive a deleted file goes to the Trash with its bytes; an emptied one takes no space there."""
    first = save_checkpoint(tmp_path, 1, {"w": torch.randn(1000)}, {"step": 1}, keep_last=1)
    witness = tmp_path / "witness"
    os.link(first / "model.safetensors", witness)  # a second name for the same file, like a Trash entry
    assert witness.stat().st_size > 4000
    save_checkpoint(tmp_path, 2, {"w": torch.randn(1000)}, {"step": 2}, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000002"]
    assert witness.stat().st_size == 0


def test_a_planted_pickle_is_never_loaded(tmp_path):
    """A crafted checkpoint cannot run code: nothing in a checkpoint is unpickled."""
    ran = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    good = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"step": 1})
    evil = tmp_path / "ckpt_00000002"
    evil.mkdir()
    for name in ("model.safetensors", "state.safetensors"):
        (evil / name).write_bytes(pickle.dumps(Exploit()))
    (evil / "state.json").write_text("{}")
    (tmp_path / "ckpt_00000003.pt").write_bytes(pickle.dumps(Exploit()))  # the old format's name
    torch.save({"x": Exploit()}, tmp_path / "ckpt_00000004.pt")
    assert latest_checkpoint(tmp_path) == good  # the planted ones are skipped as unreadable
    assert torch.equal(load_weights(good)["w"], torch.ones(2))
    assert not ran.exists()


def test_a_crash_mid_save_leaves_the_previous_checkpoint_and_no_trace(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"step": 1})
    import jpop_helpers.checkpoint as C

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C, "write_json", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(2)}, {"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000001"]
    assert latest_checkpoint(tmp_path).name == "ckpt_00000001"
    remove_checkpoint(tmp_path / "ckpt_00000001")
    assert latest_checkpoint(tmp_path) is None


def test_a_full_disk_is_named_with_the_space_needed_before_anything_is_written(tmp_path, monkeypatch):
    """Before: torch.save failed with 'unexpected pos 42176 vs 42064'."""
    import shutil

    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"step": 1})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"no space left on .*needs ~0\.00 GiB, 0\.00 GiB free.*Trash"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(10_000)}, {"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000001"]


def test_a_disk_that_fills_while_writing_leaves_nothing_half_written(tmp_path, monkeypatch):
    import errno

    import jpop_helpers.checkpoint as C

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "write_json", enospc)
    with pytest.raises(OSError, match="no space left on"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_checkpoint_missing_a_shard_or_holding_a_bad_one_is_refused_by_name(tmp_path):
    """Slices are placed by the offsets in each file's DCP header; a missing file would leave its slice as
    uninitialised memory in the assembled weights, so it is refused, and an unreadable file is named."""
    import json

    from safetensors.torch import save_file

    from jpop_helpers.checkpoint import _assemble

    w = torch.arange(12.0).reshape(6, 2)
    for i in range(3):  # three processes, two rows each, as FSDP's dim-0 sharding writes them
        save_file({"model.w": w[2 * i : 2 * i + 2].contiguous()}, str(tmp_path / f"shard-{i + 1:05d}.safetensors"),
                  metadata={"DCP_SHARDING_INFO": json.dumps({"model.w": {"saved_offsets": [2 * i, 0]}})})
    assert torch.equal(_assemble(tmp_path, "model.")["model.w"], w)
    (tmp_path / "shard-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="model.w is missing slices"):
        _assemble(tmp_path, "model.")
    (tmp_path / "shard-00002.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="shard-00002.safetensors: unreadable checkpoint shard"):
        _assemble(tmp_path, "model.")
