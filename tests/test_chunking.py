import numpy as np
import pytest

from jpop_helpers.chunking import ChunkConfig, SplitConfig, assign_splits, chunk_audio

SR = 1000  # a low rate keeps these tests instant; the rules do not depend on it


def noise(seconds, level=0.1, seed=0):
    return (np.random.RandomState(seed).randn(int(seconds * SR)) * level).astype(np.float32)


def test_chunks_have_fixed_length_and_tail_rule():
    cfg = ChunkConfig(sample_rate=SR, chunk_seconds=10, min_tail_seconds=4)
    kept, dropped = chunk_audio(noise(35), cfg)  # 3 full chunks + a 5-s tail -> padded
    assert [c.start for c in kept] == [0, 10, 20, 30]
    assert all(len(c.audio) == 10 * SR for c in kept)
    assert kept[-1].n_valid == 5 * SR and kept[-1].padded and not np.any(kept[-1].audio[5 * SR:])
    kept, dropped = chunk_audio(noise(33), cfg)  # 3-s tail < min -> dropped
    assert len(kept) == 3 and "tail" in dropped[0][1]
    kept, _ = chunk_audio(noise(35), ChunkConfig(sample_rate=SR, chunk_seconds=10, tail="drop"))
    assert len(kept) == 3


def test_overlapping_hop():
    kept, _ = chunk_audio(noise(30), ChunkConfig(sample_rate=SR, chunk_seconds=10, hop_seconds=5, tail="drop"))
    assert [c.start for c in kept] == [0, 5, 10, 15, 20]


def test_silent_chunks_are_dropped_but_quiet_music_is_kept():
    audio = noise(30, 0.1)
    audio[10 * SR : 20 * SR] = 0.0  # a silent middle (e.g. a gap between tracks)
    audio[20 * SR :] *= 0.05  # quiet but present: about -46 dBFS, above the -60 dBFS threshold
    kept, dropped = chunk_audio(audio, ChunkConfig(sample_rate=SR, chunk_seconds=10, silence_db=-60))
    assert [c.index for c in kept] == [0, 2]
    assert dropped[0][0] == 1 and "silent" in dropped[0][1]


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
