"""Shared fixtures: real audio made here (rendered music, click tracks, tones), built once per session.

Nothing is read from ../shared or the internet. Session fixtures (demo_root, tiny_tokens, tiny_run) are
read-only by convention: a test that writes under a data root or a run folder takes its own copy
(`data_copy`, `run_copy`), so no test can change what another one reads.
"""
from __future__ import annotations

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


DEMO_STORY_ARGS = ["--seconds", "20"]  # every piece of both families, 20 s each (2 clips): ~70 s on 2 cores


@pytest.fixture(scope="session")
def demo_story(tmp_path_factory):
    """The README's demo command, `python -m jpop_helpers demo`, run once with shorter pieces: both
    families rendered, downloaded and prepared, the base pretrained, fine-tuned full and LoRA, all three
    evaluated. Returns (data root, what it printed, eval summary.json, the story's CE dict)."""
    import contextlib
    import io

    from jpop_helpers.cli import main
    from jpop_helpers.demo import story_from_rows

    root = tmp_path_factory.mktemp("story") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):  # its one-line error too
        code = main(["demo", "--root", str(root), *DEMO_STORY_ARGS])
    assert code == 0, printed.getvalue()[-3000:]
    summary = json.loads((root / "eval" / "summary.json").read_text())
    return root, printed.getvalue(), summary, story_from_rows(summary["ce"])


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
