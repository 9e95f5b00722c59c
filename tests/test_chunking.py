import numpy as np

from jpop_helpers.chunking import ChunkConfig, chunk_audio

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


def test_stereo_chunks_keep_both_channels_and_judge_silence_on_the_mix():
    left, right = noise(25, 0.1, seed=1), noise(25, 0.1, seed=2)
    right[10 * SR : 20 * SR] = 0.0  # one channel silent: the chunk is still music
    left[20 * SR :] = right[20 * SR :] = 0.0  # both silent: dropped
    stereo = np.stack([left, right])
    kept, dropped = chunk_audio(stereo, ChunkConfig(sample_rate=SR, chunk_seconds=10, min_tail_seconds=4, channels=2))
    assert [c.index for c in kept] == [0, 1] and dropped[0][0] == 2 and "silent" in dropped[0][1]
    assert all(c.audio.shape == (2, 10 * SR) for c in kept)
    assert np.array_equal(kept[1].audio[0], left[10 * SR : 20 * SR]) and np.array_equal(kept[1].audio[1], right[10 * SR : 20 * SR])
    padded, _ = chunk_audio(stereo[:, : 15 * SR], ChunkConfig(sample_rate=SR, chunk_seconds=10, min_tail_seconds=4))
    assert padded[1].audio.shape == (2, 10 * SR) and padded[1].n_valid == 5 * SR and not padded[1].audio[:, 5 * SR :].any()
