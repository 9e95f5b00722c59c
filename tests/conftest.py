"""Shared fixtures: real audio made here (rendered music, click tracks, tones), built once per session.

Nothing is read from ../shared or the internet. Session fixtures (demo_root, tiny_tokens, tiny_run) are
read-only by convention: a test that writes under a data root or a run folder takes its own copy
(`data_copy`, `run_copy`), so no test can change what another one reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JPOP_NO_PROGRESS", "1")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is available."""
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_dir(tmp_path_factory):
    """Build the tiny MusicGen inside this test session, never reuse one from the user's cache."""
    os.environ["JPOP_TINY_MODEL_DIR"] = str(tmp_path_factory.mktemp("tiny-musicgen"))


def click_track(bpm: float, seconds: float, sample_rate: int) -> np.ndarray:
    """A metronome: 10-ms decaying 1 kHz bursts on every beat, accented every 4th. Returns [T] float32."""
    x = np.zeros(int(seconds * sample_rate), np.float32)
    t = np.arange(int(0.01 * sample_rate)) / sample_rate
    burst = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t * 300)).astype(np.float32)
    for i, beat in enumerate(np.arange(0, seconds, 60.0 / bpm)):
        s = int(beat * sample_rate)
        seg = x[s : s + len(burst)]
        seg += burst[: len(seg)] * (0.9 if i % 4 == 0 else 0.6)
    return x


def ffmpeg_tone(path: Path, seconds: float, freq: float = 440, rate: int = 44100, channels: int = 1,
                codec: list[str] | None = None) -> Path:
    """An audio file of a sine tone with a slow tremolo (not silent, not constant), in any format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:duration={seconds}:sample_rate={rate}", "-af", "tremolo=f=2:d=0.5",
                    "-ac", str(channels), "-ar", str(rate), *(codec or []), str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The offline pipeline run once on a small demo corpus: 3 artists x 2 songs x 25 s, 10-s clips.

    01 (yt-dlp over file:// URLs) then 02 (DSP labels), exactly as `python -m jpop_helpers demo` does.
    """
    from jpop_helpers.demo import build_corpus, write_demo_sources
    from jpop_helpers.download import download, read_sources
    from jpop_helpers.prepare import prepare

    base = tmp_path_factory.mktemp("demo")
    folders = build_corpus(base / "corpus", seconds=25, per_artist=2)
    result = download(read_sources(write_demo_sources(base / "sources.csv", folders)), base / "root")
    assert len(result.downloaded) == 6, result.summary()
    prepare(base / "root", demo_prepare_config())
    return base / "root"


@pytest.fixture(scope="session")
def demo_story(demo_root, tmp_path_factory):
    """The offline demo's story, small: a base pretrained on the base family (2 songs of each of its 3
    artists, 25 s each), then fine-tuned full and LoRA on the genre family (`demo_root`), as
    `python -m jpop_helpers demo` does it. Returns (demo.Story, the story's CE dict from demo.story_ce)."""
    from jpop_helpers.demo import (DEMO_LR, Story, finetune_both, prepare_family, pretrain_base, story_ce, story_items,
                                   story_models)
    from jpop_helpers.train import TrainConfig

    base = tmp_path_factory.mktemp("story")
    prepare_family(base / "base-family", base / "corpus", "base", demo_prepare_config(), seconds=25, per_artist=2)
    cfg = TrainConfig(model="tiny", steps=STORY_STEPS, batch_size=4, grad_accum=1, warmup_steps=5,
                      eval_every=STORY_STEPS, save_every=STORY_STEPS * 10, log_every=STORY_STEPS)
    pre = dataclasses.replace(cfg, steps=STORY_BASE_STEPS, lr=DEMO_LR["base"], eval_every=STORY_BASE_STEPS,
                              save_every=STORY_BASE_STEPS)
    model = pretrain_base(base / "base-family", base / "runs" / "tiny-base", base / "models" / "base", pre)
    runs = finetune_both(demo_root, base / "runs", model, cfg, DEMO_LR)
    story = Story(model, runs, demo_root, base / "base-family")
    models = story_models(story)
    return story, story_ce(models, *story_items(story, models))


STORY_STEPS, STORY_BASE_STEPS = 30, 150  # the demo's ratio of pretraining to fine-tuning steps (5), made short


def demo_prepare_config():
    from jpop_helpers.chunking import ChunkConfig
    from jpop_helpers.labeling import LabelConfig
    from jpop_helpers.prepare import PrepareConfig

    # keep_vocals: the demo corpus is rendered MIDI without vocals, and no separator weights exist
    # offline; vocal removal is tested on its own (tests/test_separate.py, a stand-in Demucs)
    return PrepareConfig(chunk=ChunkConfig(chunk_seconds=10.0, min_tail_seconds=4.0), label=LabelConfig(dsp_only=True),
                         keep_vocals=True)


@pytest.fixture(scope="session")
def tiny_tokens(demo_root):
    """The demo clips encoded with the tiny model's codec: (train items, valid items)."""
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    model = load_musicgen("tiny", "cpu")
    return encode_split(model, demo_root, "train", "tiny"), encode_split(model, demo_root, "valid", "tiny")


@pytest.fixture(scope="session")
def tiny_run(tiny_tokens, tmp_path_factory):
    """A short full fine-tune of the tiny model on the demo data: the run folder."""
    from jpop_helpers.train import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "tiny-full"
    cfg = TrainConfig(model="tiny", mode="full", steps=20, batch_size=4, grad_accum=1, lr=1e-3, warmup_steps=2, eval_every=10,
                      save_every=20)
    train(cfg, run, *tiny_tokens, device="cpu")
    return run


def copy_prepared(src: Path, dst: Path) -> Path:
    """A prepared data root's clips, manifests and splits, copied to `dst` with the manifests pointing
    at the copy (they hold absolute paths, as audiocraft's AudioMeta does)."""
    for name in ("clips", "manifests"):
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "splits.csv", dst / "splits.csv")
    for manifest in (dst / "manifests").glob("*/data.jsonl"):
        metas = [json.loads(line) for line in manifest.read_text().splitlines()]
        for m in metas:
            m["path"] = str(dst / Path(m["path"]).relative_to(src.resolve()))
        manifest.write_text("".join(json.dumps(m) + "\n" for m in metas))
    return dst


@pytest.fixture
def data_copy(demo_root, tmp_path) -> Path:
    """A private copy of the prepared demo root (clips, manifests, splits), for tests that write there."""
    return copy_prepared(demo_root, tmp_path / "data")


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny fine-tuning run, without any evaluation in it."""
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / "tiny-full", ignore=shutil.ignore_patterns("eval")))
