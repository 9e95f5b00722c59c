"""Batch generation with fixed seeds: the same prompts and seeds for every model compared.

Prompts: captions drawn (seeded) from the test split, plus the user's own. Prompt i is generated with
seed + i by every model, so base and fine-tuned renditions of a prompt differ only by the model.
A clip's file name is a hash of everything that made it (the model's weights, prompt, seed and
sampling settings), so re-running after more training or with other prompts never passes an old clip
off as a new one, and a clip already made is reused. <out>/index.csv lists every clip in the folder.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .colab import progress
from .io import atomic_path, short_hash, write_wav
from .manifest import split_clips

INDEX_COLUMNS = ["prompt_id", "prompt", "seed", "model", "path", "model_fingerprint", "duration", "top_k",
                 "temperature", "cfg_coef"]


@dataclass
class GenerateConfig:
    duration: float = 10.0  # seconds per clip
    top_k: int = 250  # MusicGen's defaults
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int = 0  # prompt i is generated with seed + i, by every model


def test_prompts(root: str | Path, n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions of test-split clips (one per song first), chosen with a fixed seed."""
    try:
        clips = split_clips(root, "test")
    except FileNotFoundError:
        return []
    by_song: dict[str, list[str]] = {}
    for clip in clips:
        by_song.setdefault(clip.song_id, []).append(clip.descriptions[0])
    rng = random.Random(seed)
    songs = sorted(by_song)
    rng.shuffle(songs)
    out: list[str] = []
    for round_ in range(max((len(v) for v in by_song.values()), default=0)):
        for s in songs:
            if len(out) < n and round_ < len(by_song[s]) and by_song[s][round_] not in out:
                out.append(by_song[s][round_])
    return out


def clip_name(model_fingerprint: str, prompt: str, seed: int, config: GenerateConfig) -> str:
    """The file stem of one generated clip: a hash of what made it."""
    settings = {k: v for k, v in asdict(config).items() if k != "seed"}
    return short_hash(json.dumps([model_fingerprint, prompt, seed, settings], sort_keys=True), 16)


def generate_set(models: dict, prompts: list[str], out_dir: str | Path, config: GenerateConfig | None = None) -> list[dict]:
    """Generate every prompt with every model (clips that already exist for the same model, prompt,
    seed and settings are reused).

    Args:
        models: name -> audiocraft MusicGen.
    Returns:
        this call's index rows {prompt_id, prompt, seed, model, path, ...}; <out_dir>/index.csv keeps
        the rows of every clip in the folder, these included.
    """
    from .model import weights_fingerprint

    config = config or GenerateConfig()
    out_dir = Path(out_dir)
    rows = []
    for name, model in models.items():
        fingerprint = weights_fingerprint(model.lm)
        model.set_generation_params(duration=config.duration, top_k=config.top_k, temperature=config.temperature,
                                    cfg_coef=config.cfg_coef)
        for i, prompt in enumerate(progress(prompts, desc=f"generate {name}", unit="clip")):
            seed = config.seed + i
            path = out_dir / name / f"{clip_name(fingerprint, prompt, seed, config)}.wav"
            if not path.exists():
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
                with torch.no_grad():
                    wav = model.generate([prompt])  # [1, 1, T]
                write_wav(path, wav[0, 0].float().cpu().numpy(), model.sample_rate)
            rows.append({"prompt_id": f"p{i:03d}", "prompt": prompt, "seed": seed, "model": name, "path": str(path),
                         "model_fingerprint": fingerprint, "duration": config.duration, "top_k": config.top_k,
                         "temperature": config.temperature, "cfg_coef": config.cfg_coef})
    _update_index(out_dir / "index.csv", rows)
    return rows


def _update_index(index: Path, rows: list[dict]) -> None:
    """Merge `rows` into index.csv: one row per clip file that exists, the newest row winning."""
    import pandas as pd

    old = pd.read_csv(index).to_dict("records") if index.exists() else []
    by_path = {r["path"]: r for r in old + rows if Path(r["path"]).exists()}
    with atomic_path(index) as tmp:
        pd.DataFrame(list(by_path.values()), columns=INDEX_COLUMNS).to_csv(tmp, index=False)
