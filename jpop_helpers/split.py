"""Song-level train/valid/test split.

The split is decided per song (or per artist) *before* chunking, so the chunks of one song can never
end up on both sides (the seed paper split 30-s chunks at random, which leaks songs into the test set).
Per song, it is stratified by artist: every artist keeps songs in train, and one with enough songs is
in valid and test too (a small corpus could otherwise hold one artist out entirely, or test on one
artist only). Decisions are kept in <root>/splits.csv: adding songs later never moves an existing song.
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


def _artist_key(artist: str) -> str:
    """Artists are told apart as test_artists names them: case and outer spaces do not count."""
    return artist.strip().lower()


def _count(fraction: float, n: int) -> int:
    """Units of a split on a first run: the exact fraction, at least one when there are 3+ units."""
    k = int(round(fraction * n))
    return max(k, 1) if (fraction > 0 and n >= 3) else k


def _by_threshold(x: float, config: SplitConfig) -> str:
    """The split of a unit added to an existing split, from its hash `x` in [0, 1)."""
    return ("test" if x < config.test_fraction
            else "valid" if x < config.test_fraction + config.valid_fraction else "train")


def assign_splits(songs: dict[str, str], config: SplitConfig, previous: dict[str, str] | None = None) -> dict[str, str]:
    """Decide the split of every song.

    Args:
        songs: song_id -> artist.
        previous: decisions of an earlier run (song_id -> split); they are kept as they are.
    Returns:
        song_id -> "train" | "valid" | "test".
    Raises:
        ValueError: an unknown group_by, or fractions below 0 or summing to 1 or more.

    Songs of `test_artists` go to test. On a first run the others are cut at the exact fractions (at
    least one song in valid and test when there are 3 or more and the fraction is > 0, so tiny datasets
    still get every split), stratified by artist (see `_stratified`); with group_by "artist", whole
    artists are cut instead. Songs that appear later go by their hash, which keeps old decisions (see
    `_later_songs`). Nothing depends on the order `songs` lists them in.
    """
    if config.group_by not in ("song", "artist"):
        raise ValueError(f"group_by must be 'song' or 'artist', not {config.group_by!r}")
    if config.valid_fraction < 0 or config.test_fraction < 0 or config.valid_fraction + config.test_fraction >= 1:
        raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to less than 1")
    previous = {s: sp for s, sp in (previous or {}).items() if s in songs}
    held_out = {_artist_key(a) for a in config.test_artists}
    out = dict(previous)
    out.update({s: "test" for s, a in songs.items() if s not in out and _artist_key(a) in held_out})
    if config.group_by == "artist":
        out = _by_artist(songs, config, out, first_run=not previous)
    else:
        new = {s: a for s, a in songs.items() if s not in out}
        trained = {_artist_key(songs[s]) for s, sp in out.items() if sp == "train"}
        out.update(_later_songs(new, config, trained) if previous else _stratified(new, config))
    assert set(out) == set(songs) and set(out.values()) <= set(SPLITS)
    return out


def _stratified(songs: dict[str, str], config: SplitConfig) -> dict[str, str]:
    """A first run's split of `songs` (song_id -> artist), at the exact overall fractions.

    Each artist gets its share of test, then of valid (its songs x the split's songs / all songs,
    rounded down or up: `_seats`), and keeps at least one song for train; so an artist whose share of
    a split is one song or more is in it, unless that would leave it no train song. Which of an
    artist's songs go where follows a seeded hash of the song ids.
    """
    by_artist: dict[str, list[str]] = {}
    for song, artist in songs.items():
        by_artist.setdefault(_artist_key(artist), []).append(song)
    sizes = {a: len(s) for a, s in by_artist.items()}
    n = len(songs)
    test = _seats(_count(config.test_fraction, n), sizes, {}, config.seed)
    valid = _seats(_count(config.valid_fraction, n), sizes, test, config.seed)
    out = {}
    for artist, artist_songs in by_artist.items():
        ordered = sorted(artist_songs, key=lambda s: _unit_hash(config.seed, s))
        k_test, k_valid = test[artist], valid[artist]
        for i, song in enumerate(ordered):
            out[song] = "test" if i < k_test else "valid" if i < k_test + k_valid else "train"
    return out


def _seats(total: int, sizes: dict[str, int], taken: dict[str, int], seed: int) -> dict[str, int]:
    """Hand a split's `total` songs out to the artists, one at a time.

    Args:
        sizes: artist -> its songs; taken: artist -> its songs already in another split.
    Returns:
        artist -> its songs in this split (summing to `total`).

    Each song goes to the artist furthest below its share (sizes[a] * total / all songs; ties by a
    seeded hash of the artist), so every artist ends with its share rounded down or up, as far as its
    songs allow. An artist keeps its last song for train, unless no other song is left (e.g. one song
    per artist): the fractions come first.
    """
    n = sum(sizes.values())
    given = {a: 0 for a in sizes}
    for keep in (1, 0):
        while sum(given.values()) < total:
            room = [a for a in sizes if taken.get(a, 0) + given[a] < sizes[a] - keep]
            if not room:
                break
            # sizes[a] * total / n - given[a], times n: integers, so ties are exact
            a = max(room, key=lambda a: (sizes[a] * total - given[a] * n, _unit_hash(seed, f"artist:{a}")))
            given[a] += 1
    return given


def _later_songs(songs: dict[str, str], config: SplitConfig, trained: set[str]) -> dict[str, str]:
    """Songs added to a root that has a split (song_id -> artist): each goes by its own hash, so no
    earlier decision moves, except that the first song of an artist with none in train goes to train.

    Args:
        trained: the artists (`_artist_key`) that have songs in train already.
    """
    trained = set(trained)
    out = {}
    for song in sorted(songs, key=lambda s: _unit_hash(config.seed + 1, s)):
        artist = _artist_key(songs[song])
        out[song] = "train" if artist not in trained else _by_threshold(_unit_hash(config.seed + 1, song), config)
        if out[song] == "train":
            trained.add(artist)
    return out


def _by_artist(songs: dict[str, str], config: SplitConfig, decided: dict[str, str], first_run: bool) -> dict[str, str]:
    """group_by "artist": every song of an artist goes where its artist goes (already decided songs
    decide for their artist); new artists are cut at the exact fractions on a first run, by hash later."""
    artist_split = {songs[s]: sp for s, sp in decided.items()}
    new_artists = sorted({a for s, a in songs.items() if s not in decided and a not in artist_split},
                         key=lambda a: _unit_hash(config.seed, a))
    if first_run:
        n = len(new_artists)
        n_test, n_valid = _count(config.test_fraction, n), _count(config.valid_fraction, n)
        for i, a in enumerate(new_artists):
            artist_split[a] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    else:
        artist_split.update({a: _by_threshold(_unit_hash(config.seed + 1, a), config) for a in new_artists})
    return {s: decided.get(s, artist_split[a]) for s, a in songs.items()}


def read_splits(path: Path) -> dict[str, str]:
    import pandas as pd

    if not Path(path).exists():
        return {}
    df = pd.read_csv(path)
    return dict(zip(df["song_id"], df["split"]))
