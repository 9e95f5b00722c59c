"""CLAP scoring and CLAP-FAD offline, on a tiny randomly initialised transformers ClapModel (the real
checkpoint, laion/larger_clap_music, is loaded the same way when the hub is reachable)."""
import numpy as np
import pytest
import torch

from conftest import ffmpeg_tone
from jpop_helpers.clap import SAMPLE_RATE, Clap, ClapEmbedder, clap_score, fad_windows


@pytest.fixture(scope="module")
def tiny_clap():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig,
                              PreTrainedTokenizerFast)

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "j-pop", "song", "with", "piano", "calm", "city", "pop", "at", "night", "fast"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    text = ClapTextConfig(vocab_size=len(words) + 2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, projection_dim=16, pad_token_id=0)
    audio = ClapAudioConfig(window_size=8, num_mel_bins=64, spec_size=256, patch_size=16, patch_stride=(16, 16),
                            depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32, patch_embeds_hidden_size=16,
                            projection_dim=16, enable_fusion=False)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).eval()
    fe = ClapFeatureExtractor(feature_size=64, sampling_rate=SAMPLE_RATE, max_length_s=10)
    return Clap(model, fe, tokenizer, "cpu", "tiny-test-clap")


def test_clips_are_scored_over_fixed_windows_not_one_random_crop(tiny_clap, tmp_path):
    sr = SAMPLE_RATE
    assert [len(w) / sr for w in tiny_clap.windows(np.zeros(25 * sr))] == [10, 10, 5]
    assert [len(w) / sr for w in tiny_clap.windows(np.zeros(22 * sr))] == [10, 10]  # a 2-s scrap is dropped
    assert [len(w) / sr for w in tiny_clap.windows(np.zeros(4 * sr))] == [4]
    f = ffmpeg_tone(tmp_path / "c.wav", 25, 440, rate=48000)
    prompt = "calm city pop at night"
    score = clap_score(tiny_clap, [prompt], [str(f)])[0]
    # Oracle: the transformers model driven by hand, one window at a time, cosine in numpy.
    import soundfile as sf

    audio, sr = sf.read(f, dtype="float32")
    assert sr == SAMPLE_RATE
    model, fe, tok = tiny_clap.model, tiny_clap.feature_extractor, tiny_clap.tokenizer
    emb = lambda out: (out if torch.is_tensor(out) else out.pooler_output)[0].numpy().astype(np.float64)
    with torch.no_grad():
        t = emb(model.get_text_features(**{k: v for k, v in tok([prompt], return_tensors="pt").items()
                                           if k in ("input_ids", "attention_mask")}))
        cosines = []
        for start, end in ((0, 10), (10, 20), (20, 25)):  # fixed windows; the 5-s rest is kept (>= half)
            a = emb(model.get_audio_features(**fe(audio[start * sr : end * sr], sampling_rate=sr, return_tensors="pt",
                                                   padding="repeatpad", truncation="rand_trunc")))
            cosines.append(a @ t / np.linalg.norm(a) / np.linalg.norm(t))
    assert score == pytest.approx(float(np.mean(cosines)), abs=1e-5)
    assert score == clap_score(tiny_clap, [prompt], [str(f)])[0]  # deterministic: no random crop
    assert len(set(np.round(cosines, 6))) == 3  # the windows differ, so the mean is over all three


def test_fad_windows_are_fadtks():
    sr = SAMPLE_RATE
    x = np.linspace(-1.5, 1.5, int(12.5 * sr)).astype(np.float32)
    w = fad_windows(x)
    assert len(w) == 13 and all(len(c) == 10 * sr for c in w)  # a window starts every second, to the end
    assert np.abs(w[1][: 9 * sr] - np.clip(x[sr : 10 * sr], -1, 1)).max() <= 1 / 32767  # the second starts at 1 s
    assert np.abs(w[0] - np.clip(x[: 10 * sr], -1, 1)).max() <= 1 / 32767  # 16-bit rounded
    assert not w[12][int(0.5 * sr) :].any() and w[12][: int(0.5 * sr)].any()  # the last: 0.5 s of audio, then zeros


def test_clap_fad_equals_a_reference_computation_on_the_same_embeddings(tiny_clap, tmp_path):
    """fad() with the CLAP embedder == windows cut by hand as fadtk does, the transformers model driven
    directly, and the textbook Fréchet distance (scipy.linalg.sqrtm)."""
    import soundfile as sf
    from scipy import linalg

    from jpop_helpers.fad import fad

    a = [ffmpeg_tone(tmp_path / f"a{i}.wav", 4, 300 + 60 * i, rate=48000) for i in range(5)]
    b = [ffmpeg_tone(tmp_path / f"b{i}.wav", 4, 2500 + 90 * i, rate=48000) for i in range(5)]
    with pytest.warns(UserWarning, match="indicative only"):
        row = fad(ClapEmbedder(tiny_clap), a, b, n_boot=0)
    model, fe = tiny_clap.model, tiny_clap.feature_extractor

    def reference_embeddings(files):
        out = []
        for f in files:
            audio, sr = sf.read(f, dtype="float32")
            audio = (np.clip(audio, -1, 1) * 32767).astype(np.int16) / 32767.0
            for start in range(0, len(audio), sr):
                window = np.zeros(10 * sr, np.float32)
                piece = audio[start : start + 10 * sr]
                window[: len(piece)] = piece
                with torch.no_grad():
                    e = model.get_audio_features(**fe(window, sampling_rate=sr, return_tensors="pt",
                                                      truncation="rand_trunc"))  # exactly 10 s: no crop
                e = (e if torch.is_tensor(e) else e.pooler_output)[0].numpy().astype(np.float64)
                out.append(e / np.linalg.norm(e))
        return np.array(out)

    ea, eb = reference_embeddings(a), reference_embeddings(b)
    mu1, mu2, s1, s2 = ea.mean(0), eb.mean(0), np.cov(ea, rowvar=False), np.cov(eb, rowvar=False)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert (row["frames_a"], row["frames_b"]) == (20, 20) and row["comparable"] and "fadtk" in row["window"]
    assert row["fad"] == pytest.approx(ref, rel=1e-4, abs=1e-6) and row["fad"] > 0


def test_evaluate_run_reports_clap_scores_and_clap_fad(data_copy, run_copy, tiny_clap):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run

    run = run_copy
    with pytest.warns(UserWarning):
        s = evaluate_run(data_copy, run, EvalConfig(n_prompts=2, duration=1.0, vggish=None), clap=tiny_clap)
    assert {r["model"] for r in s["clap"]} == {"base", "finetuned"} and all(r["clips"] == 2 for r in s["clap"])
    assert {r["embedder"] for r in s["fad"]} == {"mel-stats (offline fallback)", "clap:tiny-test-clap"}
    assert {(r["model"], r["clips_a"]) for r in s["fad"] if r["comparable"]} == {("base", 2), ("finetuned", 2)}
    assert {r["embedder"] for r in s["fad_floor"]} == {r["embedder"] for r in s["fad"]}
    assert "CLAP score" in (run / "eval" / "report.md").read_text()


def test_an_unreachable_checkpoint_is_reported_and_the_rest_goes_on(data_copy, run_copy, tmp_path):
    from jpop_helpers.evaluate import EvalConfig, evaluate_run

    run = run_copy
    (tmp_path / "no-clap").mkdir()
    with pytest.warns(UserWarning):
        s = evaluate_run(data_copy, run, EvalConfig(n_prompts=1, duration=1.0, clap_checkpoint=str(tmp_path / "no-clap"), vggish=None))
    assert s["clap"] == [] and "not available" in s["clap_note"] and s["ce"]
    assert "not available" in (run / "eval" / "report.md").read_text()
