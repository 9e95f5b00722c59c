"""The tiny codec's fitted codebooks: codes that carry the demo's real (rendered) music."""
import json
from pathlib import Path

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
    """Spread code usage and a small quantization error: the codes tell frames of music apart. About half
    the weakest figures measured on the default demo's clips (genre family: perplexity 190-319 per
    codebook, 361-400 codes used, 4.2 % error; base family: 123-276, 196-363 used, 1.4 %)."""
    return (all(u["perplexity"] > 60 and u["used"] > 100 for u in report["usage"])
            and 0.005 < report["latent_rel_error"] < 0.1)


@pytest.fixture(scope="module")
def audio(demo_root):
    return _demo_audio(demo_root)


@pytest.fixture(scope="module")
def base_family_audio(tmp_path_factory):
    """6-s excerpts of the base family (organ and choir chorales), rendered here: [N, T] at 32 kHz."""
    from jpop_helpers.demo import build_corpus
    from jpop_helpers.io import load_audio

    folders = build_corpus(tmp_path_factory.mktemp("base-family"), seconds=7, per_artist=2, family="base")
    files = sorted(f for folder in folders.values() for f in folder.iterdir())
    return np.stack([load_audio(f, 32000)[: 6 * 32000] for f in files])


def test_the_bundled_tiny_codec_spreads_its_codes_over_the_demo_music(audio, base_family_audio):
    """Both families: the genre's synth leads and piano, and the base family's organ and choir, on which
    the demo's forgetting check is measured."""
    from jpop_helpers.codec_fit import codec_report, describe
    from jpop_helpers.model import load_musicgen

    codec = load_musicgen("tiny", "cpu").compression_model  # as audiocraft loads it from the folder
    for music in (audio, base_family_audio):
        report = codec_report(codec, music)
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


def test_a_tiny_model_folder_from_another_build_is_rebuilt(tmp_path, monkeypatch):
    """A folder holding an older tiny model (no build stamp, e.g. the noise-fitted codebooks) is rebuilt
    on first use, not reused; a current one is reused as is."""
    from jpop_helpers.model import BUILD_FILE, TINY_BUILD, resolve_model_name

    monkeypatch.setenv("JPOP_TINY_MODEL_DIR", str(tmp_path / "tiny"))
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "state_dict.bin").write_bytes(b"an older build")
    folder = Path(resolve_model_name("tiny"))
    assert (folder / "state_dict.bin").read_bytes() != b"an older build"
    assert json.loads((folder / BUILD_FILE).read_text())["build"] == TINY_BUILD
    mtime = (folder / "state_dict.bin").stat().st_mtime_ns
    assert resolve_model_name("tiny") == str(folder) and (folder / "state_dict.bin").stat().st_mtime_ns == mtime
