"""The training loop under torchrun: 2 CPU processes (gloo) with DDP and gradient accumulation (the
no_sync micro-steps), against one process on the same global batch."""
import os
import subprocess
import sys

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
    assert valid(ddp_rows)[-1] < 0.8 * valid(ddp_rows)[0]
    assert len(list((tmp_path / "ddp" / "checkpoints").glob("ckpt_*"))) == 2  # written once, by rank 0
