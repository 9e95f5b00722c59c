import shutil

import pytest

from jpop_helpers.plan import (PUBLISHED, T4_GIB, check_disk, checkpoint_gib, estimate, plan_table,
                               plan_training, read_arch)
from jpop_helpers.train import TrainConfig


@pytest.mark.parametrize("batch,measured", [(2, 11.1), (8, 22.2), (16, 37.0)])
def test_the_estimate_reproduces_the_measured_peaks_it_is_calibrated_on(batch, measured):
    """H100, small, 30-s clips, solver-style full fine-tuning (fp16 autocast, AdamW): DESIGN.md."""
    assert estimate(PUBLISHED["small"], "full", batch, 30, "adamw").allocated == pytest.approx(measured, abs=0.3)


def test_parameter_counts_match_the_real_models():
    small = PUBLISHED["small"]
    assert small.lora_params(16) == 8_650_752  # the adapters on the real small (144 sites)
    assert small.lm_params == pytest.approx(420.9e6, rel=0.005)  # counted on the meta device (bench/)
    assert PUBLISHED["large"].lm_params == pytest.approx(3260.1e6, rel=0.005)


def test_the_tiny_models_architecture_is_read_from_its_checkpoint():
    from jpop_helpers.lora import LoraConfig, add_lora
    from jpop_helpers.model import load_musicgen

    arch = read_arch("tiny")
    assert (arch.dim, arch.layers, arch.codebooks, arch.card, arch.frame_rate, arch.text_encoder_params) == \
        (64, 2, 4, 400, 25.0, 0.0)
    lm = add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=16))
    assert arch.lora_params(16) == sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)


def config(**kw):
    return TrainConfig(**{"model": "facebook/musicgen-small", "batch_size": 2, **kw})


def test_full_medium_on_a_t4_is_refused_up_front_with_what_would_fit():
    with pytest.raises(MemoryError) as e:
        plan_training(PUBLISHED["medium"], config(model="facebook/musicgen-medium", mode="full"), 30, T4_GIB)
    message = str(e.value)
    assert "does NOT fit" in message and "of 14.7 GiB" in message
    assert "LoRA instead (notebook 04" in message


def test_activation_checkpointing_turns_on_only_when_needed_to_fit():
    plan, cfg = plan_training(PUBLISHED["large"], config(mode="lora"), 30, T4_GIB)
    assert cfg.activation_checkpointing == "on" and plan.activation_checkpointing and plan.fits
    plan, cfg = plan_training(PUBLISHED["small"], config(mode="lora"), 30, T4_GIB)
    assert cfg.activation_checkpointing == "auto" and not plan.activation_checkpointing  # not needed
    with pytest.raises(MemoryError, match="activation checkpointing"):  # asked off: say what would fit
        plan_training(PUBLISHED["large"], config(mode="lora", activation_checkpointing="off"), 30, T4_GIB)
    plan, _ = plan_training(PUBLISHED["large"], config(mode="full"), 30, None)  # CPU: nothing to refuse
    assert plan.fits and plan.capacity is None and "NOT" not in plan.describe()


def test_every_notebook_choice_fits_a_t4_or_is_refused_before_loading_anything():
    """No combination dies with a CUDA OOM an hour in: the plan answers for each, at once."""
    for size, arch in PUBLISHED.items():
        for mode in ("full", "lora"):
            for batch in (1, 2, 4, 8):
                try:
                    plan, cfg = plan_training(arch, config(mode=mode, batch_size=batch), 30, T4_GIB)
                    assert plan.total * 1.25 <= T4_GIB
                except MemoryError as e:
                    assert "Try:" in str(e) or "Nothing in reach fits" in str(e)


def test_default_full_small_checkpoints_fit_a_free_drive():
    """A default full-small run holds at most ~6 GiB on Drive (a checkpoint and the next, mid-save)."""
    cfg = config()
    size = checkpoint_gib(PUBLISHED["small"], cfg.mode, cfg.resolved_optimizer())
    assert cfg.resolved_optimizer() == "adamw8bit" and (cfg.keep_last + 1) * size <= 6.0
    assert checkpoint_gib(PUBLISHED["small"], "full", "adamw") == pytest.approx(4.7, abs=0.05)  # as measured


def test_a_run_whose_checkpoints_cannot_fit_is_refused(tmp_path, monkeypatch):
    free = {"gib": 3.0}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(15 * 2**30, 0, int(free["gib"] * 2**30)))
    with pytest.raises(OSError, match=r"up to 4.70 GiB during a save; 3.0 GiB free.*Trash"):
        check_disk(tmp_path / "run", 2.35, keep_last=1)
    free["gib"] = 5.0
    assert "5.0 GiB free" in check_disk(tmp_path / "run", 2.35, keep_last=1)


def test_the_readme_shows_the_plans_own_table():
    from conftest import REPO

    assert plan_table() in (REPO / "README.md").read_text()


def test_a_melody_models_prefix_is_counted_from_its_conditioner():
    """tiny-melody prepends its chroma and its description: the plan's prefix is what audiocraft's own
    conditioners give for a 30-s clip, and it adds activations in proportion on a melody-sized model."""
    from dataclasses import replace

    import torch

    from jpop_helpers.lora import LoraConfig, add_lora
    from jpop_helpers.model import load_musicgen

    arch = read_arch("tiny-melody")
    lm = load_musicgen("tiny-melody", "cpu").lm
    conds = lm.condition_provider.conditioners
    chroma_frames = conds["self_wav"].chroma(torch.zeros(1, int(30 * conds["self_wav"].sample_rate))).shape[1]
    desc = conds["description"]
    desc_len = desc(desc.tokenize(["calm piano with strings"]))[0].shape[1]
    assert arch.prefix(30) == chroma_frames + desc_len and not arch.cross_attention
    assert read_arch("tiny").prefix(30) == 0
    # no cross-attention: the parameter count (here the adapters') drops it
    lora = add_lora(lm, LoraConfig(rank=16))
    assert arch.lora_params(16) == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)

    # on a musicgen-melody-sized LM (medium's layers, this chroma), the prefix adds activations in
    # proportion to the positions it adds, and nothing to the static terms
    melody = replace(PUBLISHED["medium"], cross_attention=False, chroma_hop_seconds=arch.chroma_hop_seconds)
    with_prefix = estimate(melody, "lora", 2, 30)
    without = estimate(replace(melody, chroma_hop_seconds=0.0), "lora", 2, 30)
    frames = 30 * melody.frame_rate
    added = with_prefix.activations - without.activations
    assert with_prefix.weights == without.weights and added > 0
    assert 0.5 < added / (without.activations * chroma_frames / frames) < 1.0  # the logits part does not grow


def test_cached_text_conditions_take_t5_off_the_gpu():
    """TrainConfig.text_encoder="cached": T5's fp32 weights (t5-base, counted here on the meta device)
    leave the plan; "live" keeps them."""
    import torch
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, vocab_size=32128))
    t5_gib = 4 * sum(p.numel() for p in t5.parameters()) / 2**30
    live, _ = plan_training(PUBLISHED["small"], config(mode="lora", text_encoder="live"), 30, T4_GIB)
    cached, _ = plan_training(PUBLISHED["small"], config(mode="lora", text_encoder="cached"), 30, T4_GIB)
    assert cached.text_encoder == 0 and live.text_encoder == pytest.approx(t5_gib, rel=0.01)
    assert live.total - cached.total == pytest.approx(t5_gib, rel=0.01)


def test_fsdp_splits_weights_gradients_and_optimizer_state_over_the_gpus(capsys):
    """Full medium with AdamW: each of N GPUs holds 1/N of the fp32 weights, gradients and AdamW state
    (16 bytes a weight) plus two whole layers; DDP holds everything on every GPU."""
    from jpop_helpers.cli import main

    arch = PUBLISHED["medium"]
    fsdp = config(model="facebook/musicgen-medium", mode="full", optimizer="adamw", parallel="fsdp",
                  activation_checkpointing="on")
    ddp = replace_cfg(fsdp, parallel="ddp")
    whole, _ = plan_training(arch, ddp, 30, None, world_size=4)
    assert whole.total == plan_training(arch, ddp, 30, None, world_size=1)[0].total  # DDP: no split
    totals = []
    for n in (2, 4, 8):
        split, _ = plan_training(arch, fsdp, 30, None, world_size=n)
        saved = (whole.total - split.total) * 2**30
        assert 0.8 < saved / (16 * arch.lm_params * (1 - 1 / n)) < 1.0  # minus the gathered layers
        assert split.activations == whole.activations and split.shards == n
        totals.append(split.total)
    assert totals == sorted(totals, reverse=True)
    with pytest.raises(MemoryError):  # medium full does not fit one T4, but does over eight
        plan_training(arch, fsdp, 30, T4_GIB, world_size=1)
    assert plan_training(arch, fsdp, 30, T4_GIB, world_size=8)[0].fits
    assert main(["plan", "--model", "tiny", "--mode", "full", "--optimizer", "adamw", "--parallel", "fsdp",
                 "--gpus", "4"]) == 0
    assert "FSDP over 4 GPUs" in capsys.readouterr().out


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)
