"""The training loop under torchrun: 2 CPU processes (gloo) with DDP and gradient accumulation (the
no_sync micro-steps), against one process on the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jpop_helpers.io import read_jsonl

pytestmark = pytest.mark.slow


def _train_cmd(launcher, root, run, batch_size):
    return [*launcher, "-m", "jpop_helpers", "train", "--root", str(root), "--run-dir", str(run), "--model", "tiny",
            "--mode", "full", "--steps", "6", "--batch-size", str(batch_size), "--grad-accum", "2", "--lr", "1e-3",
            "--warmup-steps", "1", "--keep-last", "2",
            "--eval-every", "3", "--save-every", "3", "--cfg-dropout", "0", "--device", "cpu"]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(data_copy, tmp_path):
    demo_root = data_copy
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run(_train_cmd(torchrun, demo_root, tmp_path / "ddp", 1), env=env, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(_train_cmd([sys.executable], demo_root, tmp_path / "one", 2), env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    ddp_rows, one_rows = read_jsonl(tmp_path / "ddp" / "metrics.jsonl"), read_jsonl(tmp_path / "one" / "metrics.jsonl")
    check = [r for r in ddp_rows if "ddp/max_param_divergence" in r]
    assert check == [{"step": 6, "ddp/world_size": 2, "ddp/max_param_divergence": 0.0}]  # replicas in sync
    valid = lambda rows: [r["valid/ce"] for r in rows if "valid/ce" in r]
    # Same global batch (2 ranks x 1 clip vs 2 clips, 2 micro-batches each): the same curve up to how CE is averaged over each rank's tokens.
    assert valid(ddp_rows)[0] == pytest.approx(valid(one_rows)[0], rel=1e-6)  # same start
    assert valid(ddp_rows)[-1] == pytest.approx(valid(one_rows)[-1], rel=0.02)
    assert abs(valid(ddp_rows)[-1] - valid(ddp_rows)[0]) > 1e-3  # training moved the model (test_train: it fits)
    assert len(list((tmp_path / "ddp" / "checkpoints").glob("ckpt_*"))) == 2  # written once, by rank 0


def same_weights(a: dict, b: dict) -> bool:
    """The same weights up to rounding, as two runs of one computation in other process layouts give.

    AdamW's normalised update (up to lr = 1e-3 a step) amplifies float rounding on the few weights whose
    gradient is near zero: here 38 of 357,568 weights differed by more than 1e-5 (at most 1.6e-5), and on
    another machine a resumed run's weights by more than 5e-5. A wrong or missing shard moves whole
    slices, by a step's size (1e-3) or a weight's (0.02) at least."""
    far = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    return far < 1e-3 * sum(v.numel() for v in a.values()) and all((a[k] - b[k]).abs().max() < 5e-4 for k in a)


def test_fsdp_two_processes_match_one_process_and_resume_on_one(data_copy, tiny_tokens, tmp_path):
    """FSDP (fully_shard) under torchrun with 2 gloo processes == 1 process on the same global batch,
    and its sharded checkpoint (torch.distributed.checkpoint) resumes in 1 process."""
    import shutil

    import torch

    from jpop_helpers.checkpoint import list_checkpoints, load_weights
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split
    from jpop_helpers.train import TrainConfig, train

    # Only clips without padding, so each process's CE (mean over its tokens) weighs its clip as the
    # single process's CE over both does: then the two runs are the same computation.
    import json

    manifest = data_copy / "manifests" / "train" / "data.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("".join(line + "\n" for line in lines if not json.loads(
        Path(json.loads(line)["path"]).with_suffix(".json").read_text()).get("padded_seconds")))
    train_items = [it for it in tiny_tokens[0] if it.valid_frames == it.codes.shape[1]]
    tiny_tokens = (train_items, tiny_tokens[1])
    assert 2 < len(train_items) < len(lines)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = _train_cmd(torchrun, data_copy, tmp_path / "fsdp", 1)
    cmd[cmd.index("--steps") + 1], cmd[cmd.index("--save-every") + 1], cmd[cmd.index("--eval-every") + 1] = "4", "2", "4"
    two = subprocess.run([*cmd, "--parallel", "fsdp", "--optimizer", "adamw", "--log-every", "1"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    ckpts = list_checkpoints(tmp_path / "fsdp" / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt_00000002", "ckpt_00000004"]
    assert sorted(f.name for f in (ckpts[-1] / "sharded").iterdir()) == [  # one file of slices per process
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]

    # The 2-process run's own tokens (its token cache in the data root): encoded there with 1 thread, a
    # fitted codebook's near-ties can give a code other than the session fixture's 2-thread encoding.
    codes = {it.clip_id: it for it in encode_split(load_musicgen("tiny", "cpu"), data_copy, "train", "tiny")}
    tiny_tokens = ([codes[it.clip_id] for it in train_items], tiny_tokens[1])
    cfg = TrainConfig(model="tiny", mode="full", steps=4, batch_size=2, grad_accum=2, lr=1e-3, warmup_steps=1,
                      keep_last=2, eval_every=4, save_every=2, log_every=1, cfg_dropout=0.0, parallel="fsdp",
                      optimizer="adamw")
    one = train(cfg, tmp_path / "one", *tiny_tokens, device="cpu")
    curve = lambda rows: [(r["step"], r["train/ce"]) for r in rows if "train/ce" in r]  # noqa: E731
    two_rows = read_jsonl(tmp_path / "fsdp" / "metrics.jsonl")
    assert [s for s, _ in curve(two_rows)] == [1, 2, 3, 4]
    assert [c for _, c in curve(two_rows)] == pytest.approx([c for _, c in curve(one.metrics)], rel=1e-5)
    a, b = load_weights(ckpts[-1]), load_weights(list_checkpoints(tmp_path / "one" / "checkpoints")[-1])
    assert set(a) == set(b) and same_weights(a, b)
    assert any(not torch.equal(a[k], load_weights(ckpts[0])[k]) for k in a)  # steps 3-4 did move the weights

    # 2 -> 1 process: the step-2 checkpoint of the 2-process run, resumed here
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "ckpt_00000004")
    model = load_musicgen("tiny", "cpu")
    train(cfg, resumed_dir, *tiny_tokens, model=model, device="cpu", stop_after=0)  # only loads
    at2 = load_weights(ckpts[0])
    assert all(torch.equal(v, at2[k]) for k, v in model.lm.state_dict().items())  # every slice put back exactly
    resumed = train(cfg, resumed_dir, *tiny_tokens, device="cpu")
    assert resumed.start_step == 2
    assert [c for _, c in curve(resumed.metrics)] == pytest.approx([c for _, c in curve(two_rows)], rel=1e-5)
    c = load_weights(list_checkpoints(resumed_dir / "checkpoints")[-1])
    assert same_weights(a, c)
