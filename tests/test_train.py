import math

import pytest
import torch

from jpop_helpers.checkpoint import list_checkpoints, load_state, load_weights
from jpop_helpers.train import TrainConfig, train


def tiny_config(mode="full", steps=8, **kw):
    base = dict(model="tiny", mode=mode, steps=steps, batch_size=4, grad_accum=1, lr=1e-3 if mode == "full" else 3e-3,
                warmup_steps=2, eval_every=steps, save_every=steps, log_every=1, cfg_dropout=0.3)
    base.update(kw)
    return TrainConfig(**base)


def checkpoint_state(run):
    newest = list_checkpoints(run / "checkpoints")[-1]
    return {"model": load_weights(newest), **load_state(newest)}


def corrupt_loss(monkeypatch, factor_at):
    """Make the loss of the n-th micro-batch (1-based) non-finite where `factor_at(n)` gives a factor;
    returns a function that puts the real loss back."""
    import jpop_helpers.loss as L

    real_ce, calls = L.codebook_ce, {"n": 0}

    def ce(logits, targets, mask):
        value, s, c = real_ce(logits, targets, mask)
        calls["n"] += 1
        factor = factor_at(calls["n"])
        return (value * factor if factor is not None else value), s, c

    monkeypatch.setattr(L, "codebook_ce", ce)
    return lambda: monkeypatch.setattr(L, "codebook_ce", real_ce)


@pytest.mark.parametrize("mode,margin", [("full", 0.3), ("lora", 0.3)])
def test_training_fits_its_clips_in_both_modes(tiny_tokens, tmp_path, mode, margin):
    """CE on the clips it trains on, validated every 30 steps, falls by a margin in nats. Validation
    here is on the train clips themselves: with the fitted codec one held-out song's codes say little
    about another's (README, "The offline demo"), so a held-out CE after 30 steps from a random tiny
    model moves by a few hundredths either way, which tests nothing."""
    train_items, _ = tiny_tokens
    result = train(tiny_config(mode, steps=30), tmp_path / mode, train_items, train_items, device="cpu")
    valid = [r for r in result.metrics if "valid/ce" in r]
    assert valid[0]["step"] == 0 and valid[-1]["step"] == 30
    assert valid[-1]["valid/ce"] < valid[0]["valid/ce"] - margin, valid
    assert valid[-1]["valid/ppl"] == pytest.approx(math.exp(valid[-1]["valid/ce"]))
    row = [r for r in result.metrics if "train/ce" in r][-1]
    assert {"lr", "grad_norm", "scale", "clips_per_s", "train/ce_q1", "train/ce_q4"} <= set(row)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_continues_exactly(tiny_tokens, tmp_path, mode):
    """2N steps straight == N steps, a 'disconnect', then resume for N more (bitwise on CPU)."""
    train_items, valid_items = tiny_tokens
    cfg = tiny_config(mode, steps=6, save_every=3, eval_every=3, grad_accum=2)
    straight = train(cfg, tmp_path / "a", train_items, valid_items, device="cpu")
    first = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu", stop_after=3)
    assert (first.start_step, first.step) == (0, 3)
    resumed = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu")
    assert (resumed.start_step, resumed.step) == (3, 6)
    losses = lambda r: [(m["step"], m["train/ce"]) for m in r.metrics if "train/ce" in m]
    assert losses(resumed) == losses(straight)
    assert [m["valid/ce"] for m in resumed.metrics if "valid/ce" in m] == \
        [m["valid/ce"] for m in straight.metrics if "valid/ce" in m]
    a, b = checkpoint_state(tmp_path / "a")["model"], checkpoint_state(tmp_path / "b")["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all("lora_" in k for k in a) == (mode == "lora")  # LoRA checkpoints hold the adapters only


def test_a_crash_during_checkpoint_write_resumes_from_the_previous_one(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    cfg = tiny_config("full", steps=6, save_every=2, keep_last=3)
    straight = train(cfg, tmp_path / "a", train_items, valid_items, device="cpu")
    train(cfg, tmp_path / "b", train_items, valid_items, device="cpu", stop_after=4)
    ckpts = tmp_path / "b" / "checkpoints"
    # the crash: step 4's checkpoint is torn (e.g. Drive sync cut off), plus a leftover temp file
    newest = list_checkpoints(ckpts)[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    (ckpts / ".ckpt_00000006.abcd.tmp").mkdir()
    (ckpts / ".ckpt_00000006.abcd.tmp" / "model.safetensors").write_bytes(b"partial")
    resumed = train(cfg, tmp_path / "b", train_items, valid_items, device="cpu")
    assert (resumed.start_step, resumed.step) == (2, 6)
    curve = lambda r: [(m["step"], m["train/ce"]) for m in r.metrics if "train/ce" in m]
    assert curve(resumed) == curve(straight)  # steps 3-4 retrained once, not logged twice


def test_keep_last_prunes_older_checkpoints(tiny_tokens, tmp_path):
    train_items, _ = tiny_tokens
    train(tiny_config("full", steps=5, save_every=1, keep_last=2), tmp_path / "r", train_items, [], device="cpu")
    assert [p.name for p in list_checkpoints(tmp_path / "r" / "checkpoints")] == ["ckpt_00000004", "ckpt_00000005"]


def test_a_run_folder_refuses_a_different_mode(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    train(tiny_config("full", steps=1), tmp_path / "r", train_items, valid_items, device="cpu")
    with pytest.raises(ValueError, match="mode='full'"):
        train(tiny_config("lora", steps=1), tmp_path / "r", train_items, valid_items, device="cpu")


@pytest.mark.parametrize("field,value", [("optimizer", "adam"), ("precision", "fp61"), ("mode", "qlora")])
def test_a_typo_in_a_choice_is_a_clear_error(field, value):
    """An unknown optimizer used to fall back to AdamW silently; an unknown precision was a KeyError."""
    with pytest.raises(ValueError, match=rf"{field} must be one of .*not '{value}'"):
        tiny_config(**{field: value})


def test_fp16_overflow_skips_the_step_instead_of_writing_nan(tiny_tokens, tmp_path, monkeypatch):
    """The seed paper saw 'grad scale INF' in fp16: a non-finite gradient must skip the step."""
    import jpop_helpers.train as T

    train_items, _ = tiny_tokens
    corrupt_loss(monkeypatch, lambda n: float("inf") if n == 2 else None)  # the 2nd micro-batch overflows
    monkeypatch.setattr(T, "choose_precision", lambda precision, device: torch.float16)
    result = train(tiny_config("full", steps=3, eval_every=100), tmp_path / "r", train_items, [], device="cpu")
    rows = [m for m in result.metrics if "skipped_steps" in m]
    assert rows[-1]["skipped_steps"] == 1 and rows[-1]["scale"] < 65536.0
    state = checkpoint_state(tmp_path / "r")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_activation_checkpointing_gives_the_same_step(tiny_tokens, tmp_path):
    train_items, _ = tiny_tokens
    runs = [train(tiny_config("full", steps=2, activation_checkpointing=ckpt, cfg_dropout=0.0), tmp_path / str(ckpt),
                  train_items, [], device="cpu") for ckpt in (False, True)]
    a, b = ([m["train/ce"] for m in r.metrics if "train/ce" in m] for r in runs)
    assert a == pytest.approx(b, rel=1e-5)


def test_8bit_adamw_trains_and_keeps_8bit_state(tiny_tokens, tmp_path):
    train_items, valid_items = tiny_tokens
    result = train(tiny_config("full", steps=10, optimizer="adamw8bit", eval_every=10), tmp_path / "r",
                   train_items, train_items, device="cpu")  # validated on its own clips: see the test above
    valid = [r["valid/ce"] for r in result.metrics if "valid/ce" in r]
    assert valid[-1] < valid[0] - 0.1
    state = checkpoint_state(tmp_path / "r")["optimizer"]
    flat = []
    for s in state["state"].values():  # bitsandbytes nests its quantised state one level down
        for v in s.values():
            flat.extend(v.values() if isinstance(v, dict) else [v])
    moments = [v for v in flat if torch.is_tensor(v) and v.numel() > 256]
    assert moments and all(v.dtype == torch.uint8 for v in moments)  # 1 byte per moment, not 4


def synthetic_tokens(n: int = 8, frames: int = 250, seed: int = 0) -> list:
    """Token clips of the tiny model's shape (4 codebooks of 400 codes), random: for tests that need
    a training step, not music (the lent GPU image cannot render the demo corpus)."""
    from jpop_helpers.tokens import TokenItem

    g = torch.Generator().manual_seed(seed)
    return [TokenItem(f"synthetic-{i}", torch.randint(400, (4, frames), generator=g, dtype=torch.int16), frames,
                      [f"synthetic clip {i}"]) for i in range(n)]


@pytest.mark.gpu
def test_resume_keeps_no_second_copy_of_the_checkpoint_on_the_gpu(tmp_path):
    train_items = synthetic_tokens()
    cfg = tiny_config("full", steps=4, save_every=2)
    train(cfg, tmp_path / "r", train_items, [], device="cuda", stop_after=2)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fresh = train(cfg, tmp_path / "fresh", train_items, [], device="cuda", stop_after=2)
    fresh_peak = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    resumed = train(cfg, tmp_path / "r", train_items, [], device="cuda")
    assert (fresh.start_step, resumed.start_step) == (0, 2)
    assert torch.cuda.max_memory_allocated() <= fresh_peak * 1.05


def test_fp32_nan_never_reaches_the_weights_and_a_run_of_them_stops_with_the_checkpoint_kept(tiny_tokens, tmp_path,
                                                                                             monkeypatch):
    """Before, in fp32 one NaN loss made every weight NaN, the run ended 'normally' and keep-last
    rotated the last good checkpoint out."""
    train_items, _ = tiny_tokens
    restore = corrupt_loss(monkeypatch, lambda n: float("nan") if n > 2 else None)  # from the third step on
    cfg = tiny_config("full", steps=20, save_every=2, eval_every=100, max_bad_steps=3, precision="fp32")
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss.*last good checkpoint"):
        train(cfg, tmp_path / "r", train_items, [], device="cpu")
    newest = checkpoint_state(tmp_path / "r")
    assert newest["step"] == 4 and newest["skipped_steps"] == 2  # steps 3-4 skipped, 5 was the third bad one
    assert all(torch.isfinite(v).all() for v in newest["model"].values() if v.is_floating_point())
    restore()
    train(cfg, tmp_path / "ref", train_items, [], device="cpu", stop_after=2)  # the same run, two good steps
    ref = checkpoint_state(tmp_path / "ref")["model"]
    assert all(torch.equal(ref[k], newest["model"][k]) for k in ref)  # skipped steps left the weights as at step 2


def test_a_log_row_averages_the_steps_since_the_previous_one(tiny_tokens, tmp_path):
    """Numbers stay on the device between log rows; a row holds the mean CE of its window."""
    train_items, _ = tiny_tokens
    every = {n: train(tiny_config("full", steps=3, log_every=n, eval_every=100), tmp_path / str(n), train_items, [],
                      device="cpu") for n in (1, 2)}
    ce = {n: {m["step"]: m["train/ce"] for m in r.metrics if "train/ce" in m} for n, r in every.items()}
    assert sorted(ce[2]) == [2, 3]  # every 2 steps, and the last
    assert ce[2][2] == pytest.approx((ce[1][1] + ce[1][2]) / 2, rel=1e-9)
    assert ce[2][3] == pytest.approx(ce[1][3], rel=1e-9)


def test_compiled_layers_train_the_same(tiny_tokens, tmp_path, monkeypatch):
    """compile=True: each layer goes through torch.compile (TorchDynamo; here with its 'eager' backend, no
    code generation, to stay fast), with the same losses and checkpoint keys."""
    import jpop_helpers.train as T

    monkeypatch.setattr(T, "COMPILE_BACKEND", "eager")
    train_items, _ = tiny_tokens
    runs = [train(tiny_config("full", steps=1, compile=c, cfg_dropout=0.0, eval_every=100), tmp_path / str(c),
                  train_items, [], device="cpu") for c in (False, True)]
    a, b = ([m["train/ce"] for m in r.metrics if "train/ce" in m] for r in runs)
    assert a == pytest.approx(b, rel=1e-5)
    assert set(checkpoint_state(tmp_path / "True")["model"]) == set(checkpoint_state(tmp_path / "False")["model"])


@pytest.mark.gpu
def test_attention_runs_in_the_flash_kernel_on_a_gpu():
    """The loop's attention is PyTorch's flash kernel on a GPU that has it (sm80+, bf16): run a step with
    only that kernel allowed (an error otherwise) and find it in the profile."""
    from audiocraft.models import builders
    from audiocraft.modules.conditioners import ConditioningAttributes
    from omegaconf import OmegaConf
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from jpop_helpers.loss import LMLoss
    from jpop_helpers.model import tiny_lm_cfg
    from jpop_helpers.optim import make_optimizer
    from jpop_helpers.train import attention_kernels

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("flash attention needs compute capability 8.0+ (a T4 uses the memory-efficient kernel)")
    lm = builders.get_lm_model(OmegaConf.create({**tiny_lm_cfg(dim=256, num_layers=2, num_heads=4), "device": "cuda"}))
    step = LMLoss(lm.float().train())
    codes = torch.randint(400, (2, 4, 300), device="cuda")
    attrs = [ConditioningAttributes(text={"description": "calm piano"})] * 2
    assert make_optimizer(list(lm.parameters()), "adamw", 1e-4, 0.0).defaults["fused"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            ce, _, _ = step(codes, torch.ones_like(codes, dtype=torch.bool), attrs)
        ce.backward()
        with torch.autocast("cuda", dtype=torch.bfloat16), attention_kernels("cuda"):  # the loop's own context
            step(codes, torch.ones_like(codes, dtype=torch.bool), attrs)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention" in ops and "aten::_scaled_dot_product_flash_attention_backward" in ops
    assert not any("attention_math" in k for k in ops)
