"""Song-level train/valid/test split and fixed-length chunking.

The split is decided per song (or per artist) *before* chunking, so the chunks of one song can never
end up on both sides (the seed paper split 30-s chunks at random, which leaks songs into the test set).
Decisions are kept in <root>/splits.csv: adding songs later never moves an existing song.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layout import SPLITS


@dataclass
class SplitConfig:
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0  # changes which songs go where; the same seed always gives the same split
    group_by: str = "song"  # "song", or "artist": every song of an artist lands in one split
    test_artists: list[str] = field(default_factory=list)  # artists held out entirely for test


@dataclass
class ChunkConfig:
    sample_rate: int = 32000  # MusicGen's EnCodec rate
    chunk_seconds: float = 30.0  # MusicGen trains on 30-s segments
    hop_seconds: float | None = None  # None: no overlap (hop = chunk)
    tail: str = "pad"  # what to do with the last, shorter piece: "pad" with silence, or "drop"
    min_tail_seconds: float = 10.0  # a tail shorter than this is always dropped
    silence_db: float = -45.0  # a 0.5-s window quieter than this (RMS, dBFS) counts as silent
    max_silent_fraction: float = 0.5  # drop a chunk whose audio is mostly silent windows


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


def _unit_hash(seed: int, unit: str) -> float:
    """A stable number in [0, 1) for a split unit: the same on every machine and Python run."""
    h = hashlib.sha1(f"{seed}:{unit}".encode("utf-8")).hexdigest()
    return int(h[:12], 16) / float(16**12)


def assign_splits(songs: dict[str, str], config: SplitConfig, previous: dict[str, str] | None = None) -> dict[str, str]:
    """Decide the split of every song.

    Args:
        songs: song_id -> artist.
        previous: decisions of an earlier run (song_id -> split); they are kept as they are.
    Returns:
        song_id -> "train" | "valid" | "test".

    On a first run the units are ordered by a seeded hash and cut at the exact fractions (at least one
    unit in valid and test when there are 3 or more units and the fraction is > 0), so tiny datasets
    still get every split. Units that appear later go by their hash alone, which keeps old decisions.
    """
    if config.group_by not in ("song", "artist"):
        raise ValueError(f"group_by must be 'song' or 'artist', not {config.group_by!r}")
    if config.valid_fraction < 0 or config.test_fraction < 0 or config.valid_fraction + config.test_fraction >= 1:
        raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to less than 1")
    previous = {s: sp for s, sp in (previous or {}).items() if s in songs}
    held_out = {a.strip().lower() for a in config.test_artists}
    unit_of = {s: (a if config.group_by == "artist" else s) for s, a in songs.items()}
    out: dict[str, str] = dict(previous)
    unit_split: dict[str, str] = {unit_of[s]: sp for s, sp in previous.items()}
    for s, a in songs.items():
        if s not in out and a.strip().lower() in held_out:
            out[s] = unit_split[unit_of[s]] = "test"

    new_units = sorted({unit_of[s] for s in songs if s not in out and unit_of[s] not in unit_split},
                       key=lambda u: _unit_hash(config.seed, u))
    if not previous:  # first run: exact cut
        n = len(new_units)

        def count(frac: float) -> int:
            k = int(round(frac * n))
            return max(k, 1) if (frac > 0 and n >= 3) else k

        n_test, n_valid = count(config.test_fraction), count(config.valid_fraction)
        for i, u in enumerate(new_units):
            unit_split[u] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    else:
        for u in new_units:
            x = _unit_hash(config.seed + 1, u)
            unit_split[u] = ("test" if x < config.test_fraction
                             else "valid" if x < config.test_fraction + config.valid_fraction else "train")
    for s in songs:
        out.setdefault(s, unit_split[unit_of[s]])
    assert set(out.values()) <= set(SPLITS)
    return out


def read_splits(path: Path) -> dict[str, str]:
    import pandas as pd

    if not Path(path).exists():
        return {}
    df = pd.read_csv(path)
    return dict(zip(df["song_id"], df["split"]))


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
