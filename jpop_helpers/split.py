"""Song-level train/valid/test split.

The split is decided per song (or per artist) *before* chunking, so the chunks of one song can never
end up on both sides (the seed paper split 30-s chunks at random, which leaks songs into the test set).
Decisions are kept in <root>/splits.csv: adding songs later never moves an existing song.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from .layout import SPLITS


@dataclass
class SplitConfig:
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0  # changes which songs go where; the same seed always gives the same split
    group_by: str = "song"  # "song", or "artist": every song of an artist lands in one split
    test_artists: list[str] = field(default_factory=list)  # artists held out entirely for test

    CHOICES: ClassVar[dict] = {"group_by": ("song", "artist")}
    CLI_NAMES: ClassVar[dict] = {"seed": "split_seed", "test_artists": "test_artist"}


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
