"""Batch generation with fixed seeds: the same prompts and seeds for every model compared.

Prompts: captions drawn (seeded) from the test split, plus the user's own. Prompt i is generated with
seed + i by every model, so base and fine-tuned renditions of a prompt differ only by the model.
Generation goes through jpop_helpers.sampler (prompts batched, CFG in one forward, static KV cache,
CUDA graphs on a GPU): a clip depends on its prompt, melody, seed and settings, never on the batch it
was made in. A clip's file name is a hash of everything that made it (the model's weights, prompt,
melody, seed, sampling settings and the sampler), so re-running after more training or with other
prompts never passes an old clip off as a new one, and a clip already made is reused. <out>/index.csv
lists every clip in the folder.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .colab import progress
from .io import atomic_path, short_hash, write_wav
from .manifest import split_clips
from .melody import seeded_python_random, takes_melody
from .sampler import SamplingParams, generate_tokens

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["prompt_id", "prompt", "melody", "seed", "model", "path", "model_fingerprint", "duration", "top_k",
                 "top_p", "temperature", "cfg_coef"]
# Part of every clip's hash: the scheme that turns a seed into a clip. Clips of audiocraft's own generate
# (one prompt at a time, global RNG) or of another sampler version are never reused as ours.
SAMPLER_ID = "jpop-sampler-1"
NOT_IN_HASH = ("seed", "batch_size")  # the seed enters on its own; the batch never changes a clip


@dataclass
class GenerateConfig:
    duration: float = 10.0  # seconds per clip
    top_k: int = 250  # MusicGen's defaults
    top_p: float = 0.0  # nucleus sampling when > 0 (top_k is then ignored, as in audiocraft)
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int = 0  # prompt i is generated with seed + i, by every model
    batch_size: int = 8  # prompts generated together (speed and memory only: clips do not depend on it)


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


def clip_name(model_fingerprint: str, prompt: str, seed: int, config: GenerateConfig, melody: str | None = None) -> str:
    """The file stem of one generated clip: a hash of what made it."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_IN_HASH}
    made_by = [model_fingerprint, prompt, seed, settings, SAMPLER_ID]
    if melody is not None:
        made_by.append({"melody": melody})
    return short_hash(json.dumps(made_by, sort_keys=True), 16)


def require_melody_model(model, name: str) -> None:
    """Raises ValueError naming `model` when it takes no melody."""
    if not takes_melody(model):
        raise ValueError(f"model {name!r} takes no melody (its LM has no 'self_wav' conditioner): a melody needs a "
                         f"melody model, e.g. facebook/musicgen-melody (or tiny-melody offline)")


def check_melody_files(paths: list[str | Path]) -> None:
    """Raises ValueError naming every melody file that does not exist (cheap: before a model loads)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"melody file not found: {', '.join(missing)}")


def _check_melodies(model, name: str, prompts: list[str], melodies: list | None) -> None:
    """Raises ValueError naming every unusable melody (before anything is generated)."""
    if melodies is None:
        return
    if len(melodies) != len(prompts):
        raise ValueError(f"{len(melodies)} melodies for {len(prompts)} prompts: give one per prompt (or None)")
    if any(m is not None for m in melodies):
        require_melody_model(model, name)
    problems = []
    for i, m in enumerate(melodies):
        if m is None:
            continue
        try:
            wav, sample_rate, melody_name = m
        except (TypeError, ValueError):
            problems.append(f"melody {i}: expected (wav [C, T] float32, sample_rate, name)")
            continue
        wav = np.asarray(wav)
        if wav.ndim != 2 or wav.shape[-1] == 0:
            problems.append(f"melody {melody_name!r}: shape {wav.shape}, expected [channels, samples]")
        elif not np.isfinite(wav).all():
            problems.append(f"melody {melody_name!r}: NaN or infinite samples")
        elif not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
            problems.append(f"melody {melody_name!r}: sample rate {sample_rate!r}")
    if problems:
        raise ValueError("; ".join(problems))


def read_melodies(paths: list[str | Path], n_prompts: int, model, model_name: str) -> list:
    """Melody files as generate_set's `melodies`: one file for every prompt, or one per prompt.

    Args:
        paths: audio files in any format io.load_audio decodes (wav, flac, mp3, ogg, m4a, ...).
        model: the audiocraft MusicGen they will condition; model_name: its name, for the messages.
    Returns:
        n_prompts entries (wav float32 [C, T] at the model's rate, rate, the file's stem).
    Raises:
        ValueError: the model takes no melody (naming it), a file is missing or cannot be decoded
            (naming the file), or the number of files fits neither one nor every prompt.
    """
    from .melody import melody_input

    require_melody_model(model, model_name)
    if len(paths) not in (1, n_prompts):
        raise ValueError(f"{len(paths)} melody files for {n_prompts} prompts: give one for every prompt, or one per prompt")
    check_melody_files(paths)
    melodies = [melody_input(p, model.sample_rate) for p in paths]  # ValueError naming an undecodable file
    return melodies * n_prompts if len(melodies) == 1 else melodies


def _attributes(model, prompt: str, melody) -> list:
    """audiocraft's conditions for one prompt, built by MusicGen itself (as generate/generate_with_chroma)."""
    if melody is None:
        attrs, _ = model._prepare_tokens_and_attributes([prompt], None)
        return attrs
    from audiocraft.data.audio_utils import convert_audio

    wav, sample_rate, _ = melody
    wav = convert_audio(torch.as_tensor(np.asarray(wav, np.float32)), sample_rate, model.sample_rate, model.audio_channels)
    attrs, _ = model._prepare_tokens_and_attributes([prompt], None, melody_wavs=[wav])
    return attrs


def make_clips(model, prompts: list[str], seeds: list[int], config: GenerateConfig, melodies: list | None = None) -> torch.Tensor:
    """Audio for a batch of prompts (one forward batch), each from its own seed.

    Args:
        model: audiocraft MusicGen (its .lm may carry LoRA adapters: lora.add_lora).
        melodies: None, or per prompt None / (wav [C, T], sample_rate, name).
    Returns:
        [B, C, T] float audio at model.sample_rate.
    """
    melodies = melodies or [None] * len(prompts)
    frames = int(config.duration * model.frame_rate)
    if config.duration > model.max_duration:  # audiocraft's windowed extension: one prompt at a time
        log.warning("%.0f s is beyond the model's %.0f s: audiocraft's generate (slow) makes these clips",
                    config.duration, model.max_duration)
        # audiocraft's stride (18 s of 30) must be shorter than the window: the same share of shorter ones
        model.set_generation_params(duration=config.duration, top_k=config.top_k, top_p=config.top_p,
                                    temperature=config.temperature, cfg_coef=config.cfg_coef,
                                    extend_stride=min(18.0, 0.6 * model.max_duration))
        wavs = []
        for prompt, seed, melody in zip(prompts, seeds, melodies):
            torch.manual_seed(seed)
            with torch.no_grad(), seeded_python_random(seed):  # the melody's Demucs shift, as in the sampler
                if melody is None:
                    wavs.append(model.generate([prompt]))
                else:
                    wavs.append(model.generate_with_chroma([prompt], torch.as_tensor(np.asarray(melody[0], np.float32)),
                                                           melody[1]))
        return torch.cat(wavs)
    attrs = [a for p, m in zip(prompts, melodies) for a in _attributes(model, p, m)]
    params = SamplingParams(use_sampling=True, temp=config.temperature, top_k=config.top_k, top_p=config.top_p,
                            cfg_coef=config.cfg_coef)
    model.lm.eval()
    codes = generate_tokens(model.lm, attrs, seeds, frames, params)
    # decoded one clip at a time: a batched decode rounds differently with the batch's size
    return torch.cat([model.generate_audio(c[None]) for c in codes])


def generate_set(models: dict, prompts: list[str], out_dir: str | Path, config: GenerateConfig | None = None,
                 melodies: list | None = None) -> list[dict]:
    """Generate every prompt with every model, `config.batch_size` prompts at a time (clips that already
    exist for the same model, prompt, melody, seed and settings are reused).

    Args:
        models: name -> audiocraft MusicGen.
        melodies: None, or one entry per prompt: None or (wav: np.ndarray [C, T] float32, sample_rate,
            name), for melody models (audiocraft's 'self_wav' condition); the name enters the clip's
            hash and index.csv.
    Returns:
        this call's index rows {prompt_id, prompt, melody, seed, model, path, ...}; <out_dir>/index.csv
        keeps the rows of every clip in the folder, these included.
    Raises:
        ValueError: melodies that do not fit the prompts or the model (nothing is generated then).
    """
    from .model import weights_fingerprint

    config = config or GenerateConfig()
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {config.batch_size})")
    out_dir = Path(out_dir)
    melodies = list(melodies) if melodies is not None else None
    for name, model in models.items():
        _check_melodies(model, name, prompts, melodies)
    rows = []
    for name, model in models.items():
        fingerprint = weights_fingerprint(model.lm)
        todo, model_rows = [], []
        for i, prompt in enumerate(prompts):
            seed = config.seed + i
            melody = melodies[i] if melodies is not None else None
            melody_name = None if melody is None else str(melody[2])
            path = out_dir / name / f"{clip_name(fingerprint, prompt, seed, config, melody_name)}.wav"
            if not path.exists():
                todo.append((i, prompt, seed, melody, path))
            model_rows.append({"prompt_id": f"p{i:03d}", "prompt": prompt, "melody": melody_name or "", "seed": seed,
                               "model": name, "path": str(path), "model_fingerprint": fingerprint,
                               "duration": config.duration, "top_k": config.top_k, "top_p": config.top_p,
                               "temperature": config.temperature, "cfg_coef": config.cfg_coef})
        batches = [todo[j : j + config.batch_size] for j in range(0, len(todo), config.batch_size)]
        bar = progress(total=len(todo), desc=f"generate {name}", unit="clip")
        for batch in batches:
            wavs = make_clips(model, [t[1] for t in batch], [t[2] for t in batch], config,
                              [t[3] for t in batch] if melodies is not None else None)
            for (_, _, _, _, path), wav in zip(batch, wavs.float().cpu().numpy()):
                write_wav(path, wav[0] if wav.shape[0] == 1 else wav.T, model.sample_rate)  # [T] or [T, C]
            bar.update(len(batch))
        bar.close()
        rows += model_rows
    _update_index(out_dir / "index.csv", rows)
    return rows


def _update_index(index: Path, rows: list[dict]) -> None:
    """Merge `rows` into index.csv: one row per clip file that exists, the newest row winning."""
    import pandas as pd

    old = pd.read_csv(index).to_dict("records") if index.exists() else []
    by_path = {r["path"]: r for r in old + rows if Path(r["path"]).exists()}
    with atomic_path(index) as tmp:
        pd.DataFrame(list(by_path.values()), columns=INDEX_COLUMNS).to_csv(tmp, index=False)
