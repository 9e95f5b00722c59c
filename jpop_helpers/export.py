"""Export a run as a folder that audiocraft's `MusicGen.get_pretrained(<folder>)` loads.

Full runs write the fine-tuned LM weights; LoRA runs merge the adapters into the base weights (and
also save the adapter alone, in peft's format, for base + adapter loading). The LM's configuration and
the compression model are taken from the base model, so the folder is complete on its own.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .io import atomic_path, write_json
from .lora import merge_lora, save_adapter
from .runs import load_run_lm


def _base_packages(name: str) -> tuple[dict, dict]:
    """The base model's audiocraft checkpoint packages (lm, compression), from a folder or the hub."""
    from audiocraft.models.loaders import load_compression_model_ckpt, load_lm_model_ckpt

    from .model import resolve_model_name

    name = resolve_model_name(name)
    return load_lm_model_ckpt(name), load_compression_model_ckpt(name)


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir/{state_dict.bin, compression_state_dict.bin, export.json}` (+ `adapter/` for LoRA)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg = load_run_lm(run_dir, "cpu", merge=False)
    lm = model.lm
    if cfg["mode"] == "lora":
        save_adapter(lm, out_dir / "adapter")
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
