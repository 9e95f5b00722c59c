"""A training run's folder, and the model it holds.

<runs>/<run>/config.json       the TrainConfig it was started with
             metrics.jsonl     one JSON row per log / validation (step, train/ce, valid/ce, ...)
             curves.png        CE and perplexity curves
             summary.json      the notebook's one-line summary of the run
             checkpoints/      ckpt_<step>.pt, atomic, last K kept
             export/           the folder MusicGen.get_pretrained loads (export.py)
             eval/             stage 05's report, tables, generated clips, A/B judgments
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .io import read_json


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
    """The MusicGen of a run's latest checkpoint: its base model + the trained weights.

    Args:
        merge: LoRA runs only: merge the adapters into the base weights (else the LM stays a peft model).
    Returns:
        (MusicGen, the run's config dict)
    Raises:
        FileNotFoundError: the run has no readable checkpoint.
    """
    from .checkpoint import load_latest
    from .lora import LoraConfig, add_lora, load_adapter_state, merge_lora
    from .model import load_musicgen

    run = RunLayout(run_dir)
    cfg = read_run_config(run_dir)
    state, _ = load_latest(run.checkpoints, map_location="cpu")
    if state is None:
        raise FileNotFoundError(f"{run.checkpoints} holds no readable checkpoint")
    model = load_musicgen(cfg["model"], device)
    lm = model.lm.float()
    if cfg["mode"] == "lora":
        lm = add_lora(lm, LoraConfig(**cfg["lora"]), base_model=cfg["model"])
        load_adapter_state(lm, state["model"])
        if merge:
            lm = merge_lora(lm)
    else:
        lm.load_state_dict(state["model"])
    del state  # the optimizer state is not needed here: free it before the caller works
    model.lm = lm.eval()
    return model, cfg
