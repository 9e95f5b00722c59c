import numpy as np
import pandas as pd
import pytest
import torch

import jpop_helpers.generate as generate
from jpop_helpers.generate import GenerateConfig, generate_set
from jpop_helpers.model import load_musicgen


@pytest.fixture(scope="module")
def tiny():
    return load_musicgen("tiny", "cpu")


@pytest.fixture
def calls(monkeypatch):
    """Counts the prompts the sampler is asked to generate, batch by batch."""
    made = []
    real = generate.generate_tokens

    def counting(lm, attributes, seeds, *args, **kwargs):
        made.append(len(seeds))
        return real(lm, attributes, seeds, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_tokens", counting)
    return made


def test_clips_are_keyed_by_what_made_them_and_the_index_keeps_every_clip(tmp_path, tiny, calls):
    """Before: <model>/p000.wav was reused whenever it existed, so clips of an older model (or of
    other prompts) were judged as the new ones, and each call rewrote index.csv with its own rows."""
    model = tiny
    cfg = GenerateConfig(duration=0.2, top_k=20)
    first = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    assert calls == [2]  # both prompts in one batch
    again = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    assert calls == [2] and [r["path"] for r in again] == [r["path"] for r in first]  # reused: same maker

    with torch.no_grad():  # "more training": the same model name, other weights
        next(model.lm.parameters()).add_(0.1)
    try:
        later = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    finally:
        with torch.no_grad():
            next(model.lm.parameters()).sub_(0.1)
    assert sum(calls) == 4 and not {r["path"] for r in later} & {r["path"] for r in first}
    other = generate_set({"tuned": model}, ["city pop"], tmp_path, cfg)  # new prompt, same position p000
    assert sum(calls) == 5 and other[0]["path"] not in {r["path"] for r in later}
    longer = generate_set({"tuned": model}, ["city pop"], tmp_path, GenerateConfig(duration=0.28, top_k=20))
    assert sum(calls) == 6 and longer[0]["path"] != other[0]["path"]  # settings are part of the key too
    batched = generate_set({"tuned": model}, ["city pop"], tmp_path, GenerateConfig(duration=0.28, top_k=20, batch_size=1))
    assert sum(calls) == 6 and batched[0]["path"] == longer[0]["path"]  # the batch size is not: clips do not depend on it

    index = pd.read_csv(tmp_path / "index.csv")
    made = first + later + other + longer
    assert sorted(index["path"]) == sorted(r["path"] for r in made)  # every clip in the folder, once
    assert len(list((tmp_path / "tuned").glob("*.wav"))) == 6
    row = index[index["path"] == longer[0]["path"]].iloc[0]
    assert (row["prompt"], row["duration"]) == ("city pop", 0.28)


def test_a_clip_is_the_same_whatever_batch_it_was_made_in(tmp_path, tiny, calls):
    import soundfile as sf

    prompts = ["calm piano", "fast drums", "city pop"]
    together = generate_set({"m": tiny}, prompts, tmp_path / "a", GenerateConfig(duration=0.24, top_k=50, batch_size=3))
    apart = generate_set({"m": tiny}, prompts, tmp_path / "b", GenerateConfig(duration=0.24, top_k=50, batch_size=2))
    assert calls == [3, 2, 1]
    audio = [[sf.read(r["path"])[0] for r in rows] for rows in (together, apart)]
    for a, b in zip(*audio):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(audio[0][0], audio[0][1])  # and prompts (seeds) do differ


def test_melodies_condition_the_clips_and_name_them(tmp_path, calls):
    """A melody model (a 'self_wav' conditioner, prepended): the melody's name enters the clip's hash
    and index.csv, and the melody changes the music."""
    from audiocraft.models import MusicGen
    from test_sampler import build_lm

    tiny = load_musicgen("tiny", "cpu")
    model = MusicGen("tiny-melody-standin", tiny.compression_model, build_lm(melody=True, words=False), max_duration=30)
    t = np.arange(16000) / 16000
    tune_a = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)  # [C, T] at 16 kHz
    tune_b = (0.5 * np.sign(np.sin(2 * np.pi * 97 * t)))[None].astype(np.float32)
    cfg = GenerateConfig(duration=0.2, top_k=0, temperature=0.0)  # greedy: only the conditions differ
    rows = generate_set({"mel": model}, ["calm piano", "calm piano"], tmp_path, cfg,
                        melodies=[(tune_a, 16000, "tune-a"), (tune_b, 16000, "tune-b")])
    plain = generate_set({"mel": model}, ["calm piano"], tmp_path, cfg)
    assert [r["melody"] for r in rows] == ["tune-a", "tune-b"] and plain[0]["melody"] == ""
    assert len({rows[0]["path"], rows[1]["path"], plain[0]["path"]}) == 3
    index = pd.read_csv(tmp_path / "index.csv", keep_default_na=False)
    assert sorted(index["melody"]) == ["", "tune-a", "tune-b"]
    import soundfile as sf

    a, b, none = (sf.read(r["path"])[0] for r in rows + plain)
    assert not np.array_equal(a, b) and not np.array_equal(a, none)

    with pytest.raises(ValueError, match="tune-c.*NaN"):
        generate_set({"mel": model}, ["x"], tmp_path, cfg, melodies=[(tune_a * np.nan, 16000, "tune-c")])
    with pytest.raises(ValueError, match="takes no melody"):
        generate_set({"plain": tiny}, ["x"], tmp_path, cfg, melodies=[(tune_a, 16000, "tune-a")])
    with pytest.raises(ValueError, match="2 melodies for 1 prompts"):
        generate_set({"mel": model}, ["x"], tmp_path, cfg, melodies=[None, None])
    assert calls == [2, 1]  # nothing generated for the refused calls


def test_clips_longer_than_the_model_window_use_audiocrafts_extension(tiny, calls, monkeypatch, caplog):
    """Beyond max_duration the clip comes from audiocraft's windowed generate, with a stride the window
    allows (audiocraft's default 18 s asserts for any window of 18 s or less), at the length asked for,
    reproducible from its seed; the sampler is not used."""
    for name in ("duration", "extend_stride", "generation_params"):  # restored for the module's other tests
        monkeypatch.setattr(tiny, name, getattr(tiny, name))
    monkeypatch.setattr(tiny, "max_duration", 2.0)
    cfg = GenerateConfig(duration=3.0, top_k=50)
    a = generate.make_clips(tiny, ["calm piano"], [5], cfg)
    assert a.shape == (1, 1, 3 * tiny.sample_rate) and torch.isfinite(a).all()
    assert tiny.extend_stride == pytest.approx(1.2) and calls == []
    assert "beyond the model's 2 s" in caplog.text
    assert torch.equal(generate.make_clips(tiny, ["calm piano"], [5], cfg), a)
    assert not torch.equal(generate.make_clips(tiny, ["calm piano"], [6], cfg), a)
