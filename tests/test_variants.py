"""Melody and stereo MusicGen end to end, offline, on the bundled stand-ins (model.TINY_MODELS).

tiny-melody: audiocraft's ChromaStemConditioner over a real (tiny, random) HTDemucs loaded from the
model's own folder through separate.load_separator; tiny-stereo: audiocraft's
InterleaveStereoCompressionModel around the tiny codec and an 8-codebook LM with the stereo delays.
Both: tokens -> training -> export -> MusicGen.get_pretrained -> generation. The data are a few clips
of the session's demo corpus (Demucs on a CPU is the slow part), made stereo for tiny-stereo.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import copy_prepared

N_CLIPS = {"train": 2, "valid": 1, "test": 1}


def _subset(src, dst, stereo: bool = False):
    """A data root with the first N_CLIPS clips of each split of `src` (stereo: every clip rewritten
    as two different channels: the original left, a delayed and quieter copy right)."""
    root = copy_prepared(src, dst)
    for split, n in N_CLIPS.items():
        manifest = root / "manifests" / split / "data.jsonl"
        lines = manifest.read_text().splitlines()[:n]
        manifest.write_text("".join(line + "\n" for line in lines))
        if stereo:
            for line in lines:
                path = json.loads(line)["path"]
                mono, sr = sf.read(path, dtype="float32")
                sf.write(path, np.stack([mono, 0.5 * np.roll(mono, sr // 10)], axis=1), sr, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def melody(demo_root, tmp_path_factory):
    """(model, root, train items, valid items) for tiny-melody."""
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    root = _subset(demo_root, tmp_path_factory.mktemp("melody") / "data")
    model = load_musicgen("tiny-melody", "cpu")
    return model, root, encode_split(model, root, "train", "tiny-melody"), encode_split(model, root, "valid", "tiny-melody")


@pytest.fixture(scope="module")
def stereo(demo_root, tmp_path_factory):
    """(model, root, train items, valid items) for tiny-stereo."""
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    root = _subset(demo_root, tmp_path_factory.mktemp("stereo") / "data", stereo=True)
    model = load_musicgen("tiny-stereo", "cpu")
    return model, root, encode_split(model, root, "train", "tiny-stereo"), encode_split(model, root, "valid", "tiny-stereo")


def _train_export_load(name, items, tmp_path):
    """Two full fine-tuning steps, the export, and audiocraft's own loader on it."""
    from audiocraft.models import MusicGen

    from jpop_helpers.export import export_run
    from jpop_helpers.model import demucs_from
    from jpop_helpers.train import TrainConfig, train

    config = TrainConfig(model=name, mode="full", steps=2, batch_size=2, grad_accum=1, lr=1e-3, warmup_steps=1,
                         eval_every=2, save_every=2, log_every=1, optimizer="adamw")
    result = train(config, tmp_path / "run", *items, device="cpu")
    out = export_run(tmp_path / "run", tmp_path / "export", device="cpu")
    with demucs_from(out):  # the export carries the bundled Demucs; plain get_pretrained otherwise
        exported = MusicGen.get_pretrained(str(out), device="cpu")
    return result, exported


# ---------------------------------------------------------------- stereo
def test_bundled_models_are_named_in_train_help():
    from jpop_helpers.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb").choices["train"]
    text = " ".join(sub.format_help().split())
    assert all(name in text for name in ("tiny,", "tiny-melody", "tiny-stereo"))


def test_stereo_tokens_are_left_and_right_codes_interleaved(stereo):
    """8 codebooks per frame: [L1, R1, L2, R2, ...], each channel encoded by the same mono codec."""
    from jpop_helpers.io import load_audio

    model, root, train_items, _ = stereo
    item = train_items[0]
    assert item.codes.shape[0] == 8 and item.codes.dtype == torch.int16
    path = next(json.loads(x)["path"] for x in (root / "manifests/train/data.jsonl").read_text().splitlines()
                if item.clip_id in x)
    wav = torch.from_numpy(load_audio(path, model.sample_rate, mono=False))
    mono_codec = model.compression_model.model  # the wrapped EnCodec
    with torch.no_grad():
        left, _ = mono_codec.encode(wav[None, :1])
        right, _ = mono_codec.encode(wav[None, 1:])
    assert torch.equal(item.codes[0::2].long(), left[0]) and torch.equal(item.codes[1::2].long(), right[0])
    assert not torch.equal(left, right)  # the channels differ, so the exact check above also checks the order


def test_stereo_train_export_generate(stereo, tmp_path):
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    model, _, train_items, valid_items = stereo
    result, exported = _train_export_load("tiny-stereo", (train_items, valid_items), tmp_path)
    valid = [r for r in result.metrics if "valid/ce" in r]
    assert [k for k in valid[-1] if k.startswith("valid/ce_q")] == [f"valid/ce_q{k}" for k in range(1, 9)]
    per_q = [valid[-1][f"valid/ce_q{k}"] for k in range(1, 9)]
    assert valid[-1]["valid/ce"] == pytest.approx(sum(per_q) / 8)
    assert all(math.isfinite(v) and v > 0 for v in per_q)
    train_rows = [r for r in result.metrics if "train/ce" in r]
    assert "train/ce_q8" in train_rows[-1] and "train/ce_q9" not in train_rows[-1]

    assert isinstance(exported.compression_model, InterleaveStereoCompressionModel)
    assert exported.lm.n_q == 8 and exported.lm.pattern_provider.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    from jpop_helpers.loss import evaluate_ce

    ce = evaluate_ce(exported.lm, valid_items, 2, "cpu")
    assert ce["ce"] == pytest.approx(result.final_valid["valid/ce"], abs=1e-3)  # the export is what was trained
    exported.set_generation_params(duration=0.5, top_k=50)
    torch.manual_seed(0)
    wav = exported.generate(["calm piano"])
    assert wav.shape == (1, 2, int(0.5 * exported.frame_rate) * 1280) and torch.isfinite(wav).all()  # 25 Hz frames


# ---------------------------------------------------------------- melody
def test_melody_model_loads_its_bundled_demucs(melody):
    from demucs.htdemucs import HTDemucs

    from jpop_helpers.melody import melody_conditioner, melody_dropout, model_takes_melody
    from jpop_helpers.model import TINY_HTDEMUCS

    model = melody[0]
    assert model_takes_melody("tiny-melody") and not model_takes_melody("tiny")  # from the stored config alone
    cond = melody_conditioner(model.lm)
    assert type(cond).__name__ == "ChromaStemConditioner"
    assert isinstance(cond.demucs.models[0], HTDemucs) and cond.demucs.samplerate == TINY_HTDEMUCS["samplerate"]
    assert melody_dropout(model.lm) == 0.5  # the released melody models' attribute dropout
    assert model.lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]


def test_cached_chroma_condition_equals_the_conditioner_on_the_clip(melody):
    """The condition built from the token cache (the solver's cached path) equals what audiocraft's
    conditioner computes from the clip's waveform (Demucs + chroma), and differs between clips.
    (Demucs shifts its input by a random offset, from Python's `random`: both runs draw the same one.)"""
    import dataclasses
    import random

    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    from jpop_helpers.batches import collate
    from jpop_helpers.io import load_audio
    from jpop_helpers.melody import CHROMA_SEED, clip_chroma, solver_melody

    model, root, train_items, _ = melody
    lm, provider = model.lm, model.lm.condition_provider
    item = train_items[0]
    path = next(json.loads(x)["path"] for x in (root / "manifests/train/data.jsonl").read_text().splitlines()
                if item.clip_id in x)
    text, audio = item.descriptions[0], load_audio(path, model.sample_rate)[: 4 * model.sample_rate]
    random.seed(7)  # clip_chroma seeds Demucs's shift itself: the caller's state does not matter
    chroma = clip_chroma(lm, audio, model.sample_rate)
    random.seed(8)
    assert torch.equal(clip_chroma(lm, audio, model.sample_rate), chroma)  # re-tokenizing: the same chroma
    assert random.random() == random.Random(8).random()  # and the caller's random sequence is untouched
    item = dataclasses.replace(item, chroma=chroma, valid_frames=item.codes.shape[-1])
    _, _, attrs = collate([item], [text], "cpu", melody=[True])
    wav = torch.from_numpy(audio)[None, None]
    direct = [ConditioningAttributes(text={"description": text}, wav={"self_wav": WavCondition(
        wav, torch.tensor([wav.shape[-1]]), [model.sample_rate], [None], [None])})]
    with torch.no_grad(), solver_melody(lm, attrs):
        cached = provider(provider.tokenize(attrs))["self_wav"]
    random.seed(CHROMA_SEED)  # the conditioner's own path draws the same shift as tokenizing did
    with torch.no_grad(), solver_melody(lm, direct):  # the same settings, but computed from the wav
        computed = provider(provider.tokenize(direct))["self_wav"]
    assert cached[0].shape == computed[0].shape and cached[0].shape[1] == item.chroma.shape[0]
    assert torch.allclose(cached[0], computed[0], atol=1e-6) and torch.equal(cached[1], computed[1])
    assert lm.condition_provider.conditioners["self_wav"].cache is None  # restored after the loss
    # the cached chromas follow the audio: two clips, two melodies (one-hot notes per frame)
    a, b = (it.chroma for it in train_items)
    assert torch.equal(a.sum(-1), torch.ones(len(a))) and not torch.equal(a, b)


def test_melody_dropout_as_the_solver():
    """One CFG draw per micro-batch drops captions and melodies; else one draw drops the melodies."""
    from jpop_helpers.batches import step_conditions
    from jpop_helpers.tokens import TokenItem

    items = [TokenItem(f"c{i}", torch.zeros(4, 10, dtype=torch.int16), 10, ["a", "b"], torch.zeros(5, 12))
             for i in range(3)]
    draws = [step_conditions(items, m, seed=1, cfg_dropout=0.3, melody_dropout=0.5) for m in range(4000)]
    assert draws[:50] == [step_conditions(items, m, 1, 0.3, 0.5) for m in range(50)]  # a pure function of the step
    none_text = [all(t is None for t in texts) for texts, _ in draws]
    assert all(n or not any(t is None for t in texts) for n, (texts, _) in zip(none_text, draws))
    assert all(len(set(keep)) == 1 for _, keep in draws)
    dropped = np.array([not keep[0] for _, keep in draws])
    assert all(dropped[np.array(none_text)])  # CFG dropout drops the melody too
    assert abs(np.mean(none_text) - 0.3) < 0.03
    assert abs(dropped.mean() - (1 - 0.7 * 0.5)) < 0.03


def test_melody_train_export_generate_with_a_melody(melody, tmp_path):
    from jpop_helpers.loss import evaluate_ce
    from jpop_helpers.manifest import split_clips
    from jpop_helpers.melody import melody_input
    from jpop_helpers.tokens import TokenItem

    model, root, train_items, valid_items = melody
    assert all(it.chroma is not None and it.chroma.shape[1] == 12 for it in train_items + valid_items)
    result, exported = _train_export_load("tiny-melody", (train_items, valid_items), tmp_path)
    assert result.step == 2 and result.final_valid is not None
    assert "self_wav" in exported.lm.condition_provider.conditioners

    # CE evaluation conditions on each clip's own melody: another melody gives another CE
    ce = evaluate_ce(exported.lm, valid_items, 2, "cpu")["ce"]
    other = [TokenItem(it.clip_id, it.codes, it.valid_frames, it.descriptions, it.chroma.roll(3, dims=1))
             for it in valid_items]
    assert ce == pytest.approx(result.final_valid["valid/ce"], abs=1e-3)
    assert abs(evaluate_ce(exported.lm, other, 2, "cpu")["ce"] - ce) > 1e-5

    # generation "in the style, following this melody": a held-out clip as the melody
    held_out, sr, name = melody_input(split_clips(root, "test")[0].path, model.sample_rate)  # [C, T]
    assert held_out.ndim == 2 and sr == model.sample_rate and name
    exported.set_generation_params(duration=0.5, top_k=50)
    outs = []
    for melody_wav in (held_out, np.roll(held_out, sr, axis=-1)):
        torch.manual_seed(0)
        outs.append(exported.generate_with_chroma(["calm piano"], torch.from_numpy(melody_wav), sr))
    assert outs[0].shape == (1, 1, int(0.5 * exported.frame_rate) * 1280) and torch.isfinite(outs[0]).all()
    assert not torch.equal(outs[0], outs[1])  # same seed, another melody: the melody steers the model




def test_evaluation_gives_melody_models_held_out_melodies_and_others_none(melody):
    from types import SimpleNamespace

    from jpop_helpers.evaluate import held_out_melodies
    from jpop_helpers.manifest import split_clips

    model, root, _, _ = melody
    test_names = {c.path.stem for c in split_clips(root, "test")}
    train_names = {c.path.stem for c in split_clips(root, "train")}
    mel = held_out_melodies(root, {"base": model, "run": model}, 5, seed=0)
    assert len(mel) == 5 and all(name in test_names and name not in train_names for _, _, name in mel)
    assert len({name for _, _, name in mel}) == min(5, len(test_names))  # one clip after another
    assert all(wav.ndim == 2 and sr == model.sample_rate for wav, sr, _ in mel)
    assert [n for *_, n in held_out_melodies(root, {"base": model}, 5, seed=0)] == [n for *_, n in mel]
    no_melody = SimpleNamespace(lm=SimpleNamespace(condition_provider=SimpleNamespace(conditioners={})))
    assert held_out_melodies(root, {"base": no_melody, "run": model}, 5) is None


def test_an_undecodable_test_clip_is_reported_by_name_and_the_other_melodies_are_used(melody, demo_root, tmp_path):
    from jpop_helpers.evaluate import held_out_melodies
    from jpop_helpers.loss import EmptySplitError
    from jpop_helpers.manifest import split_clips
    from jpop_helpers.problems import ProblemLog

    model = melody[0]
    data = copy_prepared(demo_root, tmp_path / "data")
    clips = split_clips(data, "test")
    assert len(clips) >= 2
    clips[0].path.write_bytes(b"not audio")  # e.g. a clip damaged by an interrupted Drive sync
    problems = ProblemLog.for_stage(data, "evaluate")
    mel = held_out_melodies(data, {"base": model}, 3, seed=0, problems=problems)
    assert len(mel) == 3 and clips[0].path.stem not in {name for *_, name in mel}
    assert {name for *_, name in mel} == {c.path.stem for c in clips[1:]}
    assert str(clips[0].path) in (data / "reports" / "evaluate_problems.jsonl").read_text()
    for clip in clips[1:]:
        clip.path.write_bytes(b"not audio")
    with pytest.raises(EmptySplitError, match="no clips to use as melodies"):
        held_out_melodies(data, {"base": model}, 3, seed=0, problems=problems)


def test_a_damaged_checkpoint_is_named_when_asking_whether_a_model_takes_a_melody(tmp_path):
    from jpop_helpers.melody import model_takes_melody

    (tmp_path / "state_dict.bin").write_bytes(b"truncated")
    (tmp_path / "compression_state_dict.bin").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"state_dict\.bin: cannot read the model's checkpoint"):
        model_takes_melody(str(tmp_path))
