"""Batch generation with fixed seeds: the same prompts and seeds for every model compared.

Prompts: captions drawn (seeded) from the test split, plus the user's own. Each (model, prompt) pair
is generated with its own seed, so base and fine-tuned renditions of a prompt differ only by the model;
wav files go to <out>/<model>/<prompt_id>.wav with an index CSV. Existing files are kept (resumable).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .colab import progress
from .io import atomic_path, write_wav
from .layout import DataLayout


@dataclass
class GenerateConfig:
    duration: float = 10.0  # seconds per clip
    top_k: int = 250  # MusicGen's defaults
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int = 0  # prompt i is generated with seed + i, by every model


def test_prompts(root: str | Path, n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions of test-split clips (one per song first), chosen with a fixed seed."""
    layout = DataLayout(root)
    by_song: dict[str, list[str]] = {}
    manifest = layout.manifest("test")
    if not manifest.exists():
        return []
    for line in manifest.read_text().splitlines():
        side = json.loads(Path(json.loads(line)["path"]).with_suffix(".json").read_text(encoding="utf-8"))
        by_song.setdefault(side.get("song_id", side["name"]), []).append(side["description"])
    rng = random.Random(seed)
    songs = sorted(by_song)
    rng.shuffle(songs)
    out: list[str] = []
    for round_ in range(max((len(v) for v in by_song.values()), default=0)):
        for s in songs:
            if len(out) < n and round_ < len(by_song[s]) and by_song[s][round_] not in out:
                out.append(by_song[s][round_])
    return out


def generate_set(models: dict, prompts: list[str], out_dir: str | Path, config: GenerateConfig | None = None) -> list[dict]:
    """Generate every prompt with every model.

    Args:
        models: name -> audiocraft MusicGen.
    Returns:
        index rows {prompt_id, prompt, seed, model, path}; also written to <out_dir>/index.csv.
    """
    import pandas as pd

    config = config or GenerateConfig()
    out_dir = Path(out_dir)
    rows = []
    for name, model in models.items():
        model.set_generation_params(duration=config.duration, top_k=config.top_k, temperature=config.temperature,
                                    cfg_coef=config.cfg_coef)
        for i, prompt in enumerate(progress(prompts, desc=f"generate {name}", unit="clip")):
            seed = config.seed + i
            path = out_dir / name / f"p{i:03d}.wav"
            if not path.exists():
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
                with torch.no_grad():
                    wav = model.generate([prompt])  # [1, 1, T]
                write_wav(path, wav[0, 0].float().cpu().numpy(), model.sample_rate)
            rows.append({"prompt_id": f"p{i:03d}", "prompt": prompt, "seed": seed, "model": name, "path": str(path)})
    with atomic_path(out_dir / "index.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return rows
