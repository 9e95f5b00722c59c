import numpy as np
import pytest

from conftest import ffmpeg_tone
from jpop_helpers.fad import MelStatsEmbedder, fad, frechet_distance, gaussian_stats


def _cov(rng, d):
    a = rng.randn(d, d)
    return a @ a.T / d + np.eye(d) * 0.1


def test_identical_sets_have_zero_distance():
    rng = np.random.RandomState(0)
    emb = rng.randn(500, 16)
    assert frechet_distance(*gaussian_stats(emb), *gaussian_stats(emb.copy())) == pytest.approx(0.0, abs=1e-8)


def test_a_pure_mean_shift_gives_its_squared_length():
    rng = np.random.RandomState(1)
    mu, s = rng.randn(8), _cov(rng, 8)
    shift = rng.randn(8)
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(float(shift @ shift), rel=1e-7)


def test_agrees_with_an_independent_eigendecomposition_and_closed_forms():
    """Not the implementation's formula again: tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), computed
    from symmetric eigendecompositions (numpy.linalg.eigh) instead of scipy's sqrtm of a product."""
    rng = np.random.RandomState(2)
    mu1, mu2, s1, s2 = rng.randn(12), rng.randn(12), _cov(rng, 12), _cov(rng, 12)

    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = sqrt_psd(s1)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrt_psd(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    # diagonal covariances: sum of (sqrt a_i - sqrt b_i)^2
    a, b = rng.rand(6) + 0.1, rng.rand(6) + 0.1
    assert frechet_distance(mu1[:6], np.diag(a), mu1[:6], np.diag(b)) == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    # 1-D closed form: (m1-m2)^2 + (s1-s2)^2 with standard deviations s
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(4 + 1)


def test_the_pipeline_equals_the_distance_of_the_stacked_frame_embeddings(tmp_path):
    """fad() on files == the Frechet distance of every file's frame embeddings stacked, computed here."""
    from jpop_helpers.io import load_audio

    a = [ffmpeg_tone(tmp_path / f"a{i}.wav", 3, 200 + 30 * i) for i in range(3)]
    b = [ffmpeg_tone(tmp_path / f"b{i}.wav", 2, 900 + 50 * i) for i in range(4)]
    emb = MelStatsEmbedder(n_mels=4)
    stack = lambda files: np.concatenate([emb.embed(load_audio(f, emb.sample_rate)) for f in files])
    ea, eb = stack(a), stack(b)
    with pytest.warns(UserWarning):
        row = fad(emb, a, b)
    ref = frechet_distance(ea.mean(0), np.cov(ea.T), eb.mean(0), np.cov(eb.T))
    assert row["fad"] == pytest.approx(ref, rel=1e-9) and (row["frames_a"], row["frames_b"]) == (len(ea), len(eb))


def test_pipeline_on_audio_ranks_sets_and_warns_on_small_samples(tmp_path):
    low = [ffmpeg_tone(tmp_path / f"low{i}.wav", 3, 200 + 10 * i) for i in range(4)]
    low2 = [ffmpeg_tone(tmp_path / f"low2_{i}.wav", 3, 205 + 10 * i) for i in range(4)]
    high = [ffmpeg_tone(tmp_path / f"high{i}.wav", 3, 3000 + 10 * i) for i in range(4)]
    with pytest.warns(UserWarning, match="fewer than 50 clips"):
        near = fad(MelStatsEmbedder(n_mels=8), low, low2)
    far = fad(MelStatsEmbedder(n_mels=8), low, high)
    assert far["fad"] > 5 * near["fad"]
    assert near["clips_a"] == 4 and near["frames_a"] > 8 and not near["reliable"] and "50" in near["warning"]


def test_a_set_with_a_single_frame_gives_nan_and_says_why_instead_of_crashing(tmp_path):
    one = [ffmpeg_tone(tmp_path / "one.wav", 0.4, 300)]  # shorter than one 0.5-s embedding hop
    many = [ffmpeg_tone(tmp_path / f"m{i}.wav", 3, 300 + 20 * i) for i in range(3)]
    with pytest.warns(UserWarning, match="a covariance needs 2 or more"):
        row = fad(MelStatsEmbedder(n_mels=8), one, many)
    assert np.isnan(row["fad"]) and not row["reliable"] and row["frames_a"] == 1
