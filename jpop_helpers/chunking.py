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

    CHOICES: ClassVar[dict] = {"tail": ("pad", "drop")}


@dataclass
class Chunk:
    """One chunk of a song.

    Attributes:
        audio: float32 [chunk_seconds * sample_rate], zero-padded after `n_valid` samples.
    """

    index: int
    start: float  # seconds from the song's start
    audio: np.ndarray
    n_valid: int
    silent_fraction: float

    @property
    def padded(self) -> bool:
        return self.n_valid < len(self.audio)


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
        audio: float32 mono [T] at `config.sample_rate`.
    Returns:
        (kept chunks, dropped) where dropped lists (chunk index, reason) for silent chunks and tails.
    """
    sr = config.sample_rate
    size = int(round(config.chunk_seconds * sr))
    hop = int(round((config.hop_seconds or config.chunk_seconds) * sr))
    min_tail = int(round(config.min_tail_seconds * sr))
    if config.tail not in ("pad", "drop"):
        raise ValueError(f"tail must be 'pad' or 'drop', not {config.tail!r}")
    kept, dropped = [], []
    starts = list(range(0, max(len(audio) - size, 0) + 1, hop)) if len(audio) >= size else []
    # The piece after the last full chunk is a tail; it may still become a padded chunk.
    tail_start = (starts[-1] + hop) if starts else 0
    if tail_start < len(audio):
        starts.append(tail_start)
    for index, start in enumerate(starts):
        piece = audio[start : start + size]
        n_valid = len(piece)
        if n_valid < size:
            if config.tail == "drop" or n_valid < min_tail:
                dropped.append((index, f"tail of {n_valid / sr:.1f} s (rule: {config.tail}, min {config.min_tail_seconds} s)"))
                continue
            piece = np.concatenate([piece, np.zeros(size - n_valid, dtype=np.float32)])
        silent = float(np.mean(window_db(audio[start : start + n_valid], sr) < config.silence_db))
        if silent > config.max_silent_fraction:
            dropped.append((index, f"silent ({silent:.0%} of windows below {config.silence_db} dBFS)"))
            continue
        kept.append(Chunk(index, start / sr, piece.astype(np.float32, copy=False), n_valid, silent))
    return kept, dropped
