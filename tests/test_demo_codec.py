"""The tiny codec's fitted codebooks: codes that carry the demo's real (rendered) music."""
import numpy as np
import pytest
import torch


def _demo_audio(demo_root, seconds=6.0):
    """The first seconds of every prepared clip of the demo corpus (rendered music, all three artists):
    [N, T] at 32 kHz."""
    from jpop_helpers.io import load_audio

    n = int(seconds * 32000)
    clips = sorted((demo_root / "clips").rglob("*.wav"))
    audio = [load_audio(c, 32000)[:n] for c in clips]
    return np.stack([np.pad(a, (0, n - len(a))) for a in audio])


def _sane(report):
    """Spread code usage and a small quantization error: the codes tell frames of music apart."""
    return (all(u["perplexity"] > 30 and u["used"] > 120 for u in report["usage"])
            and 0.005 < report["latent_rel_error"] < 0.35)


@pytest.fixture(scope="module")
def audio(demo_root):
    return _demo_audio(demo_root)


def test_the_bundled_tiny_codec_spreads_its_codes_over_the_demo_music(audio):
    from jpop_helpers.codec_fit import codec_report, describe
    from jpop_helpers.model import load_musicgen

    codec = load_musicgen("tiny", "cpu").compression_model  # as audiocraft loads it from the folder
    report = codec_report(codec, audio)
    print(describe(report))
    assert _sane(report), report
    # the codes are what MusicGen.encode gives (the buffers audiocraft loaded are the fitted ones)
    codes, _ = codec.encode(torch.from_numpy(audio[:2])[:, None])
    assert len(torch.unique(codes[:, 0])) > 20


def test_codebooks_fitted_to_noise_fail_the_same_check(audio):
    """The check can fail: audiocraft's own k-means init on random latents (the tiny codec before)."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from jpop_helpers.codec_fit import codec_report
    from jpop_helpers.model import tiny_compression_cfg

    torch.manual_seed(0)
    codec = builders.get_compression_model(OmegaConf.create(tiny_compression_cfg()))
    codec.quantizer(torch.randn(8, 32, 128), 25)
    report = codec_report(codec, audio)
    assert not _sane(report)
    assert report["usage"][0]["perplexity"] < 5


def test_fitting_is_deterministic_and_sets_audiocrafts_own_buffers():
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from jpop_helpers.codec_fit import fit_audio, fit_codebooks
    from jpop_helpers.model import tiny_compression_cfg

    audio = fit_audio(seconds=30.0, seed=3)
    assert np.array_equal(audio, fit_audio(seconds=30.0, seed=3)) and not np.array_equal(audio, fit_audio(30.0, seed=4))
    books = []
    for _ in range(2):
        torch.manual_seed(0)
        codec = builders.get_compression_model(OmegaConf.create(tiny_compression_cfg()))
        fit_codebooks(codec, audio, iters=5)
        books.append(codec.quantizer.state_dict())
        layer = codec.quantizer.vq.layers[0]._codebook
        assert bool(layer.inited) and torch.equal(layer.embed, layer.embed_avg) and layer.cluster_size.sum() > 0
    assert all(torch.equal(books[0][k], books[1][k]) for k in books[0])
    # training mode's forward must not re-initialise them (inited is set): the codes stay
    codec.train()
    before = codec.quantizer.vq.layers[0]._codebook.embed.clone()
    codec.quantizer.vq.layers[0]._codebook.init_embed_(torch.randn(500, 32))
    assert torch.equal(before, codec.quantizer.vq.layers[0]._codebook.embed)


def test_kmeans_needs_as_many_frames_as_codes():
    from jpop_helpers.codec_fit import kmeans

    with pytest.raises(ValueError, match="cannot fit 400 codes"):
        kmeans(torch.randn(100, 32), 400)
