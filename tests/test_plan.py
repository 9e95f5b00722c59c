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
    assert small.lora_params(16) == 8_650_752  # what peft adapts on the real small (144 sites)
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
