"""Data-preparation speed on CPU: audio-seconds processed per wall-second.

Measured on the offline demo corpus (real rendered music), in one run:
  baseline  decode + resample to mono 32 kHz only (the floor every pipeline pays)
  prepare   the whole stage 02 with DSP labels: decode, chunk, key + BPM, captions, clip wav + sidecar
            writes, manifests (what `prepare --dsp-only` does)
Reported as audio-s per wall-s for each, and prepare's cost relative to the baseline.

    python bench/prepare_speed.py [--pieces-per-artist 3] [--seconds 75] [--out bench/results/prepare_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JPOP_NO_PROGRESS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces-per-artist", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=75)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prepare_speed.json"))
    a = ap.parse_args()

    from jpop_helpers.demo import build_corpus, write_demo_sources
    from jpop_helpers.download import download, read_sources
    from jpop_helpers.io import load_audio
    from jpop_helpers.labeling import LabelConfig
    from jpop_helpers.prepare import PrepareConfig, find_songs, prepare
    from jpop_helpers.layout import DataLayout

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        folders = build_corpus(work / "corpus", seconds=a.seconds, per_artist=a.pieces_per_artist)
        download(read_sources(write_demo_sources(work / "sources.csv", folders)), work / "root")
        songs = find_songs(DataLayout(work / "root"))

        t0 = time.perf_counter()
        audio_seconds = sum(len(load_audio(s.path, 32000)) / 32000 for s in songs)
        baseline = time.perf_counter() - t0

        t0 = time.perf_counter()
        # keep_vocals: the demo corpus has no vocals; vocal removal is measured by bench/separate_speed.py
        result = prepare(work / "root", PrepareConfig(label=LabelConfig(dsp_only=True), keep_vocals=True))
        full = time.perf_counter() - t0
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "songs": len(songs), "clips": len(result.rows), "audio_seconds": round(audio_seconds, 1),
            "baseline_decode_audio_s_per_s": round(audio_seconds / baseline, 1),
            "prepare_dsp_audio_s_per_s": round(audio_seconds / full, 1),
            "prepare_vs_baseline_time_ratio": round(full / baseline, 2),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
