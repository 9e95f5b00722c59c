import math

import pytest

from jpop_helpers.split import SplitConfig, assign_splits


def _songs(n_artists=6, per_artist=5):
    return {f"artist{a}__song{s}": f"Artist {a}" for a in range(n_artists) for s in range(per_artist)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_per_song_deterministic_and_hits_fractions(seed):
    songs = _songs()
    cfg = SplitConfig(valid_fraction=0.1, test_fraction=0.2, seed=seed)
    a, b = assign_splits(songs, cfg), assign_splits(dict(reversed(list(songs.items()))), cfg)
    assert a == b  # order of discovery does not matter
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 21, "valid": 3, "test": 6}
    assert assign_splits(songs, SplitConfig(seed=seed + 10)) != assign_splits(songs, SplitConfig(seed=seed))


def test_adding_songs_never_moves_existing_ones():
    songs = _songs(4, 4)
    first = assign_splits(songs, SplitConfig(seed=3))
    more = {**songs, **{f"new__song{i}": "New" for i in range(20)}}
    second = assign_splits(more, SplitConfig(seed=3), previous=first)
    assert all(second[s] == first[s] for s in songs)
    assert {second[f"new__song{i}"] for i in range(20)} >= {"train"}


def test_group_by_artist_and_held_out_artists():
    songs = _songs()
    split = assign_splits(songs, SplitConfig(group_by="artist", valid_fraction=0.2, test_fraction=0.2))
    for artist in set(songs.values()):
        assert len({split[s] for s, a in songs.items() if a == artist}) == 1
    split = assign_splits(songs, SplitConfig(test_artists=["artist 2"]))
    assert all(split[s] == "test" for s, a in songs.items() if a == "Artist 2")


def test_tiny_datasets_still_get_every_split():
    split = assign_splits({"a": "x", "b": "x", "c": "y"}, SplitConfig())
    assert sorted(split.values()) == ["test", "train", "valid"]


def test_bad_split_config_is_refused():
    with pytest.raises(ValueError):
        assign_splits({"a": "x"}, SplitConfig(valid_fraction=0.6, test_fraction=0.5))


# An uneven corpus: test and valid get 6 songs each (20 % of 30); an artist's share of each is
# its songs x 6 / 30: A 2.4, B 1.6, C 1.0, D 0.6, E and F 0.2.
UNEVEN = {"A": 12, "B": 8, "C": 5, "D": 3, "E": 1, "F": 1}


def _uneven():
    return {f"{a.lower()}__song{i}": a for a, n in UNEVEN.items() for i in range(n)}


def _artists_in(split, songs, which):
    return {songs[s] for s, sp in split.items() if sp == which}


@pytest.mark.parametrize("seed", range(12))
def test_every_artist_keeps_train_songs_and_one_with_a_share_is_in_every_split(seed):
    songs = _uneven()
    split = assign_splits(songs, SplitConfig(valid_fraction=0.2, test_fraction=0.2, seed=seed))
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 18, "valid": 6, "test": 6}  # the exact fractions, as before
    assert _artists_in(split, songs, "train") == set(UNEVEN)  # E and F, one song each, included
    for which in ("valid", "test"):
        assert _artists_in(split, songs, which) >= {"A", "B", "C"}  # a share of one song or more
        for artist, n in UNEVEN.items():
            got, share = sum(split[s] == which for s in songs if songs[s] == artist), n * 6 / 30
            assert math.floor(share) <= got <= math.ceil(share) or n == 1, (which, artist, got, share)


@pytest.mark.parametrize("seed", range(5))
def test_the_split_does_not_depend_on_the_order_songs_are_listed(seed):
    import random

    songs = _uneven()
    cfg = SplitConfig(valid_fraction=0.15, test_fraction=0.25, seed=seed)
    first = assign_splits(songs, cfg)
    for shuffle in range(3):
        items = list(songs.items())
        random.Random(shuffle).shuffle(items)
        assert assign_splits(dict(items), cfg) == first
    assert assign_splits(songs, SplitConfig(valid_fraction=0.15, test_fraction=0.25, seed=seed + 100)) != first


def test_one_song_per_artist_still_fills_every_split_at_the_fractions():
    """No artist can keep a train song and be elsewhere: the fractions come first, as before."""
    songs = {f"s{i}": f"Artist {i}" for i in range(20)}
    split = assign_splits(songs, SplitConfig(valid_fraction=0.1, test_fraction=0.2))
    assert sorted(split.values()).count("test") == 4 and sorted(split.values()).count("valid") == 2


def test_the_demo_corpus_shape_tests_on_every_artist():
    """The demo's genre family: 3 artists x 4 songs, a quarter held out for test. Unstratified, a test
    split of 3 songs was seen to hold 3 songs of one artist."""
    songs = {f"{a}__song{i}": a for a in ("Tokyo Synth", "Neon Lead", "Sakura Keys") for i in range(4)}
    for seed in range(10):
        split = assign_splits(songs, SplitConfig(valid_fraction=0.15, test_fraction=0.25, seed=seed))
        assert sorted(songs[s] for s, sp in split.items() if sp == "test") == ["Neon Lead", "Sakura Keys", "Tokyo Synth"]
        assert sum(sp == "valid" for sp in split.values()) == 2


def test_an_existing_split_file_is_kept_whatever_made_it_and_new_artists_train_first():
    """A root split by an earlier version (here: all of one artist in test) keeps every decision; an
    artist that arrives later with one song is trained on, even where its hash says test."""
    songs = _songs(3, 4)
    previous = {s: ("test" if a == "Artist 0" else "train") for s, a in songs.items()}
    newcomers = {f"solo{i}__song": f"Solo {i}" for i in range(30)}
    split = assign_splits({**songs, **newcomers}, SplitConfig(test_fraction=0.3), previous=previous)
    assert {s: split[s] for s in songs} == previous
    assert all(split[s] == "train" for s in newcomers)
    more = {f"solo0__song{i}": "Solo 0" for i in range(2, 40)}  # the same artist's later songs go by hash
    again = assign_splits({**songs, **newcomers, **more}, SplitConfig(test_fraction=0.3), previous=split)
    assert {again[s] for s in more} == {"train", "valid", "test"}
