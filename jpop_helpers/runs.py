"""A training run's folder, and the model it holds.

<runs>/<run>/config.json       the TrainConfig it was started with
             metrics.jsonl     one JSON row per log / validation (step, train/ce, valid/ce, ...)
             curves.png        CE and perplexity curves
             summary.json      the notebook's one-line summary of the run
             checkpoints/      ckpt_<step>/ (safetensors + JSON, atomic, last K kept: checkpoint.py)
             export/           the folder MusicGen.get_pretrained loads (export.py)
             eval/             stage 05's report, tables, generated clips, A/B judgments
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .io import read_json

# How released MusicGen checkpoints store the LM, and so how our exports do: what users load.
RELEASE_DTYPE = torch.float16


@dataclass(frozen=True)
class RunLayout:
    dir: Path

    def __post_init__(self):
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.dir / "curves.png"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def export(self) -> Path:
        return self.dir / "export"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"


def read_run_config(run_dir: str | Path) -> dict:
    """The run's config.json as a dict (model, mode, lora, ...).

    Raises:
        FileNotFoundError: the folder holds no run.
    """
    path = RunLayout(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a training run folder")
    return read_json(path)


def load_run_lm(run_dir: str | Path, device: str = "cpu", merge: bool = True):
    """The MusicGen of a run's latest checkpoint: its base model + the trained weights, as exported.

    The weights are rounded to RELEASE_DTYPE, as the export stores them, so evaluation and generation
    score exactly the model users will load (and the base model is released that way too). On a GPU
    they stay in half precision, as audiocraft loads the base; on a CPU they are computed in fp32.

    Args:
        merge: LoRA runs only: merge the adapters into the base weights (else the LM keeps its
            adapters, unrounded: the export merges and rounds it itself).
    Returns:
        (MusicGen, the run's config dict)
    Raises:
        FileNotFoundError: the run has no readable checkpoint.
    """
    from .checkpoint import latest_checkpoint, load_weights
    from .lora import LoraConfig, add_lora, load_adapter_state, merge_lora
    from .model import load_musicgen

    run = RunLayout(run_dir)
    cfg = read_run_config(run_dir)
    path = latest_checkpoint(run.checkpoints)
    if path is None:
        raise FileNotFoundError(f"{run.checkpoints} holds no readable checkpoint")
    weights = load_weights(path)  # the weights alone: the optimizer state is never read here
    model = load_musicgen(cfg["model"], device)
    lm = model.lm.float()
    if cfg["mode"] == "lora":
        lm = add_lora(lm, LoraConfig(**cfg["lora"]))
        load_adapter_state(lm, weights, source=str(path))
        if merge:
            lm = merge_lora(lm)
    else:
        lm.load_state_dict(weights)
    del weights
    if merge or cfg["mode"] == "full":
        lm = lm.to(RELEASE_DTYPE) if device.startswith("cuda") else lm.to(RELEASE_DTYPE).float()
    model.lm = lm.eval()
    return model, cfg
