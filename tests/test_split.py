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
