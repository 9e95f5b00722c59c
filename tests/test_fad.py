import numpy as np
import pytest

from conftest import ffmpeg_tone
from jpop_helpers.fad import (MIN_RELIABLE_CLIPS, MelStatsEmbedder, bootstrap_fad, fad, fad_floor, fad_of_embeddings,
                              frechet_distance, gaussian_stats, halves)


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


def _scipy_reference(ea, eb):
    """The textbook computation (pytorch-fid / Google's FAD): scipy.linalg.sqrtm of the covariance
    product, an eps offset when it is singular; independent of the implementation's eigendecompositions."""
    from scipy import linalg

    mu1, mu2, s1, s2 = ea.mean(0), eb.mean(0), np.cov(ea, rowvar=False), np.cov(eb, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_agrees_with_scipy_sqrtm_and_closed_forms():
    rng = np.random.RandomState(2)
    ea = rng.randn(300, 12) @ rng.randn(12, 12)
    eb = rng.randn(200, 12) @ rng.randn(12, 12) + rng.randn(12)
    assert frechet_distance(*gaussian_stats(ea), *gaussian_stats(eb)) == pytest.approx(_scipy_reference(ea, eb), rel=1e-7)
    # fewer frames than dimensions (rank-deficient covariances, as with few CLAP windows): still the same number
    fa, fb = rng.randn(9, 16), rng.randn(11, 16) * 2 + 0.5
    ref = _scipy_reference(fa, fb)
    assert frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb)) == pytest.approx(ref, rel=1e-4)
    # ... and through the pipeline's window form (nuclear norm of Xa Xb^T), in clips of 3 and 4 windows
    row = fad_of_embeddings([fa[:3], fa[3:6], fa[6:]], [fb[:4], fb[4:8], fb[8:]], n_boot=0, warn=False)
    assert row["fad"] == pytest.approx(ref, rel=1e-4) and (row["frames_a"], row["clips_b"]) == (9, 3)
    # diagonal covariances: sum of (sqrt a_i - sqrt b_i)^2
    mu = rng.randn(6)
    a, b = rng.rand(6) + 0.1, rng.rand(6) + 0.1
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    # 1-D closed form: (m1-m2)^2 + (s1-s2)^2 with standard deviations s
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(4 + 1)


def _clips(rng, n, shift=0.0, frames=8, dim=2):
    """Synthetic clips: a clip-level offset (a song's character) plus frame noise, so the windows of
    one clip are correlated, as real ones are. Population: N(shift, (1 + 0.3^2) I)."""
    return [rng.randn(dim) + shift + 0.3 * rng.randn(frames, dim) for _ in range(n)]


def test_the_bootstrap_interval_covers_the_true_distance_at_its_nominal_rate():
    """95 % intervals from 60 clips per set cover the population distance (|shift|^2 = 2, equal
    covariances) in about 95 % of repeated experiments. Resampling windows instead of clips would treat
    8 correlated windows as independent and cover far less often (about half the time)."""
    rng = np.random.RandomState(0)
    hits = 0
    reps = 40
    for r in range(reps):
        lo, hi = bootstrap_fad(_clips(rng, 60), _clips(rng, 60, shift=1.0), n_boot=100, seed=r)
        hits += lo <= 2.0 <= hi
    assert 0.8 <= hits / reps <= 1.0, hits


def test_the_floor_is_below_the_distance_of_a_shifted_set_and_halves_keep_songs_apart():
    rng = np.random.RandomState(3)
    real = _clips(rng, 40, dim=4)
    songs = [f"song{i // 4}" for i in range(40)]  # 10 songs of 4 clips
    a, b = halves(songs)
    assert not {songs[i] for i in a} & {songs[i] for i in b} and sorted(a + b) == list(range(40))
    floor = fad_floor(real, songs, n_boot=50)
    shifted = fad_of_embeddings(_clips(rng, 40, shift=1.5, dim=4), real, n_boot=50, warn=False)
    assert floor["split"] == "songs" and floor["clips_a"] + floor["clips_b"] == 40
    assert floor["high"] < shifted["low"] and floor["fad"] < shifted["fad"] / 5


def test_below_fifty_clips_is_flagged_indicative_only():
    rng = np.random.RandomState(4)
    with pytest.warns(UserWarning, match="indicative only"):
        few = fad_of_embeddings(_clips(rng, MIN_RELIABLE_CLIPS - 1), _clips(rng, 80), n_boot=10)
    enough = fad_of_embeddings(_clips(rng, MIN_RELIABLE_CLIPS), _clips(rng, 80), n_boot=10)
    assert few["indicative_only"] and not few["reliable"]
    assert not enough["indicative_only"] and enough["reliable"] and enough["warning"] is None
    assert enough["low"] <= enough["fad"] <= enough["high"]


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
    assert row["fad"] == pytest.approx(_scipy_reference(ea, eb), rel=1e-6)
    assert (row["frames_a"], row["frames_b"]) == (len(ea), len(eb)) and not row["comparable"]
    assert "fallback" in row["embedder"] and "0.5-s hop" in row["window"]


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


@pytest.fixture(scope="module")
def vggish_standin(tmp_path_factory):
    """torchvggish's own VGGish class with random weights, saved as the published file is (a state dict)."""
    import torch

    pytest.importorskip("torchvggish", reason="VGGish-FAD needs `pip install torchvggish resampy`")
    from torchvggish.torchvggish import _vgg

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vggish") / "vggish-standin.pth"
    torch.save(_vgg(postprocess=False).state_dict(), path)
    yield path
    path.unlink()  # 290 MB


def test_vggish_fad_equals_a_reference_computation_on_the_same_embeddings(vggish_standin, tmp_path):
    """fad() with VGGish == torchvggish's front end and model driven by hand (16 kHz, 0.96-s examples),
    then the textbook Fréchet distance; 2-s clips give 2 examples each (VGGish is costly on a CPU)."""
    import torch
    from torchvggish.vggish_input import waveform_to_examples

    from jpop_helpers.fad import VGGishEmbedder
    from jpop_helpers.io import load_audio

    emb = VGGishEmbedder.load(vggish_standin)
    a = [ffmpeg_tone(tmp_path / f"a{i}.wav", 2, 220 + 40 * i, rate=16000) for i in range(3)]
    b = [ffmpeg_tone(tmp_path / f"b{i}.wav", 2, 1800 + 90 * i, rate=16000) for i in range(3)]
    with pytest.warns(UserWarning, match="indicative only"):
        row = fad(emb, a, b, n_boot=0)

    def by_hand(files):
        out = []
        for f in files:
            x = waveform_to_examples(load_audio(f, 16000).astype(np.float64), 16000, return_tensor=True)
            with torch.no_grad():
                out.append(emb.model(x.detach()).double().numpy())
        return np.concatenate(out)

    ea, eb = by_hand(a), by_hand(b)
    assert ea.shape == (6, 128) and (row["frames_a"], row["frames_b"]) == (6, 6) and row["comparable"]
    assert row["fad"] == pytest.approx(_scipy_reference(ea, eb), rel=1e-3) and row["fad"] > 0


def test_vggish_weights_that_would_run_code_are_refused(tmp_path):
    import pickle

    import torch

    from jpop_helpers.fad import VGGishEmbedder

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "vggish-evil.pth"
    torch.save({"features.0.weight": Payload()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        VGGishEmbedder.load(bad)
    assert not marker.exists()
