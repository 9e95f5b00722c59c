import math

import pytest
import torch
import torch.nn.functional as F

from jpop_helpers.checkpoint import list_checkpoints
from jpop_helpers.train import TrainConfig, batch_indices, codebook_ce, train


def tiny_config(mode="full", steps=8, **kw):
    base = dict(model="tiny", mode=mode, steps=steps, batch_size=4, lr=1e-3 if mode == "full" else 3e-3,
                warmup_steps=2, eval_every=steps, save_every=steps, log_every=1, cfg_dropout=0.3)
    base.update(kw)
    return TrainConfig(**base)


def test_codebook_ce_matches_audiocraft_solver_definition():
    g = torch.Generator().manual_seed(0)
    B, K, T, card = 3, 4, 20, 50
    logits = torch.randn(B, K, T, card, generator=g)
    targets = torch.randint(card, (B, K, T), generator=g)
    mask = torch.rand(B, K, T, generator=g) > 0.3
    logits[~mask] = float("nan")  # what the LM returns at invalid delay-pattern positions
    ce, sums, counts = codebook_ce(logits, targets, mask)
    # audiocraft solvers/musicgen.py::_compute_cross_entropy, written out independently
    ref = sum(F.cross_entropy(logits[:, k][mask[:, k]], targets[:, k][mask[:, k]]) for k in range(K)) / K
    assert torch.isfinite(ce) and torch.allclose(ce, ref, atol=1e-6)
    assert counts.tolist() == mask.sum(dim=(0, 2)).tolist()
    assert torch.allclose((sums / counts).float().mean(), ref, atol=1e-6)


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch():
    n, b = 10, 3
    epoch0 = sum((batch_indices(m, n, b, seed=1) for m in range(3)), [])
    assert len(set(epoch0)) == 9  # 3 full batches, last partial dropped
    assert batch_indices(5, n, b, 1) == batch_indices(5, n, b, 1)
    assert batch_indices(3, n, b, 1) != batch_indices(0, n, b, 1)  # a new permutation each epoch


@pytest.mark.parametrize("mode,factor", [("full", 0.5), ("lora", 0.8)])
def test_valid_ce_falls_clearly_in_both_modes(tiny_tokens, tmp_path, mode, factor):
    train_items, valid_items = tiny_tokens
    result = train(tiny_config(mode, steps=30), tmp_path / mode, train_items, valid_items, device="cpu")
    valid = [r for r in result.metrics if "valid/ce" in r]
    assert valid[0]["step"] == 0 and valid[-1]["step"] == 30
    assert valid[-1]["valid/ce"] < factor * valid[0]["valid/ce"], valid
    assert valid[-1]["valid/ppl"] == pytest.approx(math.exp(valid[-1]["valid/ce"]))
    row = [r for r in result.metrics if "train/ce" in r][-1]
    assert {"lr", "grad_norm", "scale", "clips_per_s", "train/ce_q1", "train/ce_q4"} <= set(row)


def test_lora_trains_only_adapters_and_checkpoints_only_them(tiny_tokens, tmp_path):
    from jpop_helpers.export import load_run_lm
    from jpop_helpers.model import load_musicgen

    train_items, valid_items = tiny_tokens
    train(tiny_config("lora", steps=4), tmp_path / "run", train_items, valid_items, device="cpu")
    state = torch.load(list_checkpoints(tmp_path / "run" / "checkpoints")[-1], weights_only=False)
    keys = list(state["model"])
    assert keys and all("lora_" in k for k in keys)
    assert any("in_proj_weight" in k or ".self_attn.lora_" in k for k in keys)  # the packed projection too
    base = load_musicgen("tiny", "cpu").lm.state_dict()
    tuned, _ = load_run_lm(tmp_path / "run", merge=False)
    tuned_base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in tuned.lm.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], tuned_base[k]) for k in base if k in tuned_base)  # frozen
    assert sum(k in tuned_base for k in base) == len(base)


def test_resume_continues_exactly(tiny_tokens, tmp_path):
    """2N steps straight == N steps, a 'disconnect', then resume for N more (bitwise on CPU)."""
    train_items, valid_items = tiny_tokens
    cfg = tiny_config("full", steps=6, save_every=3, eval_every=3, grad_accum=2)
    straight = train(cfg, tmp_path / "a", train_items, valid_items, device="cpu")
    first = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu", stop_after=3)
    assert first.step == 3
    resumed = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu")
    losses = lambda r: [(m["step"], m["train/ce"]) for m in r.metrics if "train/ce" in m]
    assert losses(resumed) == losses(straight)
    assert [m["valid/ce"] for m in resumed.metrics if "valid/ce" in m] == \
        [m["valid/ce"] for m in straight.metrics if "valid/ce" in m]
    a = torch.load(list_checkpoints(tmp_path / "a" / "checkpoints")[-1], weights_only=False)["model"]
    b = torch.load(list_checkpoints(tmp_path / "b" / "checkpoints")[-1], weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_during_checkpoint_write_resumes_from_the_previous_one(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    cfg = tiny_config("full", steps=6, save_every=2, keep_last=3)
    straight = train(cfg, tmp_path / "a", train_items, valid_items, device="cpu")
    train(cfg, tmp_path / "b", train_items, valid_items, device="cpu", stop_after=4)
    ckpts = tmp_path / "b" / "checkpoints"
    # the crash: step 4's checkpoint is torn (e.g. Drive sync cut off), plus a leftover temp file
    newest = list_checkpoints(ckpts)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    (ckpts / ".ckpt_00000006.abcd.tmp.pt").write_bytes(b"partial")
    resumed = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu")
    assert resumed.step == 6
    curve = lambda r: [(m["step"], m["train/ce"]) for m in r.metrics if "train/ce" in m]
    assert curve(resumed) == curve(straight)  # steps 3-4 retrained once, not logged twice


def test_a_run_folder_refuses_a_different_mode(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    train(tiny_config("full", steps=1), tmp_path / "r", train_items, valid_items, device="cpu")
    with pytest.raises(ValueError, match="mode='full'"):
        train(tiny_config("lora", steps=1), tmp_path / "r", train_items, valid_items, device="cpu")


def test_fp16_overflow_skips_the_step_instead_of_writing_nan(tiny_tokens, tmp_path, monkeypatch):
    """The seed paper saw 'grad scale INF' in fp16: a non-finite gradient must skip the step."""
    import jpop_helpers.train as T

    train_items, valid_items = tiny_tokens
    real_ce = T.codebook_ce
    calls = {"n": 0}

    def overflowing_ce(logits, targets, mask):
        ce, s, c = real_ce(logits, targets, mask)
        calls["n"] += 1
        return (ce * float("inf") if calls["n"] == 2 else ce), s, c  # the 2nd micro-batch overflows

    monkeypatch.setattr(T, "codebook_ce", overflowing_ce)
    monkeypatch.setattr(T, "choose_precision", lambda config, device: torch.float16)
    result = train(tiny_config("full", steps=3, eval_every=100), tmp_path / "r", train_items, [], device="cpu")
    rows = [m for m in result.metrics if "skipped_steps" in m]
    assert rows[-1]["skipped_steps"] == 1 and rows[-1]["scale"] < 65536.0
    state = torch.load(list_checkpoints(tmp_path / "r" / "checkpoints")[-1], weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_activation_checkpointing_gives_the_same_step(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    runs = [train(tiny_config("full", steps=2, activation_checkpointing=ckpt, cfg_dropout=0.0), tmp_path / str(ckpt),
                  train_items, [], device="cpu") for ckpt in (False, True)]
    a, b = ([m["train/ce"] for m in r.metrics if "train/ce" in m] for r in runs)
    assert a == pytest.approx(b, rel=1e-5)


def test_8bit_adamw_trains_and_keeps_8bit_state(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    result = train(tiny_config("full", steps=10, optimizer="adamw8bit", eval_every=10), tmp_path / "r",
                   train_items, valid_items, device="cpu")
    valid = [r["valid/ce"] for r in result.metrics if "valid/ce" in r]
    assert valid[-1] < 0.8 * valid[0]
    state = torch.load(list_checkpoints(tmp_path / "r" / "checkpoints")[-1], weights_only=False)["optimizer"]
    flat = []
    for s in state["state"].values():  # bitsandbytes nests its quantised state one level down
        for v in s.values():
            flat.extend(v.values() if isinstance(v, dict) else [v])
    moments = [v for v in flat if torch.is_tensor(v) and v.numel() > 256]
    assert moments and all(v.dtype == torch.uint8 for v in moments)  # 1 byte per moment, not 4
