"""Export a run as a folder that audiocraft's `MusicGen.get_pretrained(<folder>)` loads.

Full runs write the fine-tuned LM weights; LoRA runs merge the adapters into the base weights (and
also save the adapter alone, in peft's format, for base + adapter loading: lora.load_adapter). The
LM's configuration and the compression model are taken from the base model, so the folder is complete
on its own.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .io import atomic_path, write_json
from .lora import LoraConfig, merge_lora, save_adapter
from .model import DEMUCS_DIR, checkpoint_files, resolve_model_name
from .runs import RELEASE_DTYPE, load_run_lm


def export_run(run_dir: str | Path, out_dir: str | Path, device: str | None = None) -> Path:
    """Write `out_dir/{state_dict.bin, compression_state_dict.bin, export.json}` (+ `adapter/` for LoRA,
    + `demucs/` when the base model folder has its own Demucs: the bundled tiny-melody).

    Args:
        device: where the model is assembled (default: the GPU when there is one: audiocraft then
            builds the base in half precision on it, and RAM holds little more than the files).
    """
    from .model import default_device

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, cfg = load_run_lm(run_dir, device or default_device(), merge=False)
    lm = model.lm
    if cfg["mode"] == "lora":
        save_adapter(lm, LoraConfig(**cfg["lora"]), out_dir / "adapter", base_model=cfg["model"])
        lm = merge_lora(lm)
    base_lm, base_codec = checkpoint_files(cfg["model"])
    # Only the base's configuration is needed: memory-mapped, its weights are never read into RAM
    # (a file in torch's legacy format cannot be mapped and is read whole).
    try:
        xp_cfg = torch.load(base_lm, map_location="cpu", mmap=True, weights_only=True)["xp.cfg"]
    except RuntimeError:
        xp_cfg = torch.load(base_lm, map_location="cpu", weights_only=True)["xp.cfg"]
    state = {k: v.detach().to("cpu", RELEASE_DTYPE if v.is_floating_point() else v.dtype).clone()
             for k, v in lm.state_dict().items()}
    with atomic_path(out_dir / "state_dict.bin") as tmp:
        torch.save({"xp.cfg": xp_cfg, "best_state": state}, tmp)  # tensors and a string: weights_only-loadable
    with atomic_path(out_dir / "compression_state_dict.bin") as tmp:
        shutil.copyfile(base_codec, tmp)  # the codec is not trained: the base's file as it is
    base_demucs = Path(resolve_model_name(cfg["model"])) / DEMUCS_DIR
    if base_demucs.is_dir():  # a bundled melody model's own Demucs (model.demucs_from loads it from here)
        tmp = out_dir / f".{DEMUCS_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base_demucs, tmp)
        shutil.rmtree(out_dir / DEMUCS_DIR, ignore_errors=True)
        tmp.rename(out_dir / DEMUCS_DIR)
    write_json(out_dir / "export.json", {"run": str(Path(run_dir).resolve()), "base_model": cfg["model"],
                                         "mode": cfg["mode"]})
    return out_dir
