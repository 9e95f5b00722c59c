"""Fixed-length chunking of a song into clips (the split by song happens before, in split.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class ChunkConfig:
    sample_rate: int = 32000  # MusicGen's EnCodec rate
    chunk_seconds: float = 30.0  # MusicGen trains on 30-s segments
    hop_seconds: float | None = None  # None: no overlap (hop = chunk)
    tail: str = "pad"  # what to do with the last, shorter piece: "pad" with silence, or "drop"
    min_tail_seconds: float = 10.0  # a tail shorter than this is always dropped
    silence_db: float = -45.0  # a 0.5-s window quieter than this (RMS, dBFS) counts as silent
    max_silent_fraction: float = 0.5  # drop a chunk whose audio is mostly silent windows
    channels: int = 1  # 1: mono clips; 2: stereo clips, for facebook/musicgen-stereo-*

    CHOICES: ClassVar[dict] = {"tail": ("pad", "drop"), "channels": (1, 2)}


@dataclass
class Chunk:
    """One chunk of a song.

    Attributes:
        audio: float32 [T] (mono) or [C, T], T = chunk_seconds * sample_rate, zero-padded after `n_valid`
            samples.
    """

    index: int
    start: float  # seconds from the song's start
    audio: np.ndarray
    n_valid: int
    silent_fraction: float

    @property
    def padded(self) -> bool:
        return self.n_valid < self.audio.shape[-1]


def window_db(audio: np.ndarray, sample_rate: int, window_seconds: float = 0.5) -> np.ndarray:
    """RMS level in dBFS of consecutive windows. audio: [T] -> [ceil(T / window)]."""
    w = max(1, int(window_seconds * sample_rate))
    n = int(np.ceil(len(audio) / w))
    padded = np.zeros(n * w, dtype=np.float32)
    padded[: len(audio)] = audio
    frames = padded.reshape(n, w)
    if len(audio) % w:  # the last window holds fewer real samples: average over those only
        counts = np.full(n, w, dtype=np.float64)
        counts[-1] = len(audio) % w
    else:
        counts = np.full(n, w, dtype=np.float64)
    rms = np.sqrt((frames.astype(np.float64) ** 2).sum(axis=1) / counts)
    return 20 * np.log10(np.maximum(rms, 1e-10))


def chunk_audio(audio: np.ndarray, config: ChunkConfig) -> tuple[list[Chunk], list[tuple[int, str]]]:
    """Cut one song into fixed-length chunks.

    Args:
        audio: float32 mono [T], or [C, T], at `config.sample_rate`. Silence is judged on the mono mix-down.
    Returns:
        (kept chunks, dropped) where dropped lists (chunk index, reason) for silent chunks and tails.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be [T] or [C, T], not {audio.shape}")
    mono = audio if audio.ndim == 1 else audio.mean(axis=0)
    sr = config.sample_rate
    size = int(round(config.chunk_seconds * sr))
    hop = int(round((config.hop_seconds or config.chunk_seconds) * sr))
    min_tail = int(round(config.min_tail_seconds * sr))
    if config.tail not in ("pad", "drop"):
        raise ValueError(f"tail must be 'pad' or 'drop', not {config.tail!r}")
    kept, dropped = [], []
    n = audio.shape[-1]
    starts = list(range(0, max(n - size, 0) + 1, hop)) if n >= size else []
    # The piece after the last full chunk is a tail; it may still become a padded chunk.
    tail_start = (starts[-1] + hop) if starts else 0
    if tail_start < n:
        starts.append(tail_start)
    for index, start in enumerate(starts):
        piece = audio[..., start : start + size]
        n_valid = piece.shape[-1]
        if n_valid < size:
            if config.tail == "drop" or n_valid < min_tail:
                dropped.append((index, f"tail of {n_valid / sr:.1f} s (rule: {config.tail}, min {config.min_tail_seconds} s)"))
                continue
            pad = [(0, 0)] * (piece.ndim - 1) + [(0, size - n_valid)]
            piece = np.pad(piece, pad)
        silent = float(np.mean(window_db(mono[start : start + n_valid], sr) < config.silence_db))
        if silent > config.max_silent_fraction:
            dropped.append((index, f"silent ({silent:.0%} of windows below {config.silence_db} dBFS)"))
            continue
        kept.append(Chunk(index, start / sr, piece.astype(np.float32, copy=False), n_valid, silent))
    return kept, dropped
