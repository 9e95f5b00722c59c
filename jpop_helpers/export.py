"""Export a run as a folder that audiocraft's `MusicGen.get_pretrained(<folder>)` loads.

Full runs write the fine-tuned LM weights; LoRA runs merge the adapters into the base weights (and
also save the adapter alone, in peft's format, for base + adapter loading). The LM's configuration and
the compression model are taken from the base model, so the folder is complete on its own.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_latest
from .io import atomic_path, read_json, write_json


def _base_packages(name: str) -> tuple[dict, dict]:
    """The base model's audiocraft checkpoint packages (lm, compression), from a folder or the hub."""
    from audiocraft.models.loaders import load_compression_model_ckpt, load_lm_model_ckpt

    from .model import resolve_model_name

    name = resolve_model_name(name)
    return load_lm_model_ckpt(name), load_compression_model_ckpt(name)


def merge_lora(peft_lm) -> torch.nn.Module:
    """Merge the adapters into the base weights and return the plain LMModel.

    peft's merge_and_unload leaves a LoRA layer nested inside a `target_parameters` wrapper (our
    out_proj sits inside the attention whose in_proj_weight is adapted): those are merged and
    swapped for their base layer here, so the state dict has audiocraft's original keys.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    lm = peft_lm.merge_and_unload()
    for name, module in sorted(lm.named_modules(), key=lambda nm: -nm[0].count(".")):
        if isinstance(module, BaseTunerLayer):
            if not module.merged:
                module.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, attr, module.get_base_layer())
    return lm


def load_run_lm(run_dir: str | Path, device: str = "cpu", merge: bool = True):
    """The MusicGen of a run's latest checkpoint: base model + trained weights (LoRA merged if `merge`).

    Returns:
        (MusicGen, train config dict)
    Raises:
        FileNotFoundError: the run has no readable checkpoint.
    """
    from .model import load_musicgen
    from .train import TrainConfig, add_lora, load_trainable_state

    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "config.json")
    config = TrainConfig(**cfg)
    state, path = load_latest(run_dir / "checkpoints", map_location=device)
    if state is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no readable checkpoint")
    model = load_musicgen(config.model, device)
    lm = model.lm.float()
    if config.mode == "lora":
        lm = add_lora(lm, config)
        load_trainable_state(lm, "lora", state["model"])
        if merge:
            lm = merge_lora(lm)
    else:
        load_trainable_state(lm, "full", state["model"])
    model.lm = lm.eval()
    return model, cfg


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/{state_dict.bin, compression_state_dict.bin}` (+ `adapter/` for LoRA runs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg = load_run_lm(run_dir, "cpu", merge=False)
    lm = model.lm
    if cfg["mode"] == "lora":
        lm.save_pretrained(str(out_dir / "adapter"))  # adapter_model.safetensors + adapter_config.json
        lm = merge_lora(lm)
    lm_pkg, codec_pkg = _base_packages(cfg["model"])
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() and cfg["model"] != "tiny" else v.dtype).clone()
             for k, v in lm.state_dict().items()}
    with atomic_path(out_dir / "state_dict.bin") as tmp:
        torch.save({"xp.cfg": lm_pkg["xp.cfg"], "best_state": state}, tmp)
    with atomic_path(out_dir / "compression_state_dict.bin") as tmp:
        torch.save(codec_pkg, tmp)
    write_json(out_dir / "export.json", {"run": str(Path(run_dir).resolve()), "base_model": cfg["model"],
                                         "mode": cfg["mode"]})
    return out_dir
