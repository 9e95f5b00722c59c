"""Vocal-removal cost: seconds of compute per minute of audio, on CPU and (when present) GPU.

The separator is the released htdemucs ARCHITECTURE at full size (HTDemucs, 42.0 M parameters,
7.8-s segments; tests/hub_standin.py's HTDEMUCS_FULL_KWARGS) with random weights: its arithmetic does
not depend on the weights. It is written as a local demucs model repository and loaded through
`jpop_helpers.separate.load_separator`, then run by `separate` exactly as stage 02 runs it
(apply_model, split into segments, overlap 0.25, no shifts) on `--seconds` of audio.

Reported per device: wall seconds per minute of audio and the real-time factor (audio seconds per
wall second), plus, on CPU, process CPU seconds per minute (on a shared machine the wall time depends
on the neighbours, the CPU time less so). The baseline in the same process is decoding + resampling
that audio from a file at 44.1 kHz (what stage 02 pays for every song without separation).

    python bench/separate_speed.py [--seconds 60] [--devices cpu cuda] [--out bench/results/separate_speed.json]
    python bench/separate_speed.py --smoke    # the stand-in model, 2 s of audio, CPU (tests/test_bench_separate.py)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JPOP_NO_PROGRESS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's package; hub_standin (the repository writer)


def _music(seconds: float, sample_rate: int, seed: int = 0):
    """Stereo test audio [2, T]: a chord with a tremolo plus noise bursts on a beat (not silence)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3 * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    beat = np.exp(-((t * 2) % 1) * 30) * rng.randn(len(t)) * 0.3
    return np.stack([chord + beat, chord * 0.8 + beat]).astype(np.float32) * 0.4


def _time(fn, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of fn(), synchronising CUDA around it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="audio length separated per device")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="the small stand-in model on 2 s of audio, CPU only")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "separate_speed.json"))
    a = ap.parse_args()

    import soundfile as sf
    import torch

    from hub_standin import HTDEMUCS_FULL_KWARGS, write_demucs_repo
    from jpop_helpers.io import load_audio
    from jpop_helpers.separate import load_separator, separate

    if a.threads:
        torch.set_num_threads(a.threads)
    full = not a.smoke
    seconds = 2.0 if a.smoke else a.seconds
    devices = ["cpu"] if a.smoke else (a.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_separate_") as tmp:
        folder = write_demucs_repo(Path(tmp) / "repo", full=full)
        wav = _music(seconds, 44100)
        song = Path(tmp) / "song.flac"
        sf.write(song, wav.T, 44100)
        t0 = time.perf_counter()
        load_audio(song, 44100, mono=False)
        baseline = time.perf_counter() - t0
        for device in devices:
            model = load_separator("htdemucs", device=device, folder=folder)
            params = sum(p.numel() for p in model.parameters())
            warm = wav[:, : int(44100 * min(seconds, 8.0))]
            separate(model, warm, 44100, device)  # warm-up: kernels, allocator, cuDNN autotuning
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            out = {}
            wall, cpu = _time(lambda m=model: out.update(stems=separate(m, wav, 44100, device)), device)
            assert all(s.shape == wav.shape for s in out["stems"].values())
            row = {"device": device, "audio_seconds": seconds, "wall_s": round(wall, 3),
                   "wall_s_per_audio_min": round(wall / seconds * 60, 2), "realtime_factor": round(seconds / wall, 2),
                   "cpu_s_per_audio_min": round(cpu / seconds * 60, 2), "params": params,
                   "baseline_decode_s_per_audio_min": round(baseline / seconds * 60, 3),
                   "vs_baseline": round(wall / max(baseline, 1e-9), 1)}
            if device.startswith("cuda"):
                row["gpu"] = torch.cuda.get_device_name(torch.device(device))
                row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            else:
                row["threads"] = torch.get_num_threads()
            results.append(row)
            print(json.dumps(row))
            del model
    report = {"model": "htdemucs architecture (random weights)" if full else "stand-in (small HTDemucs)",
              "kwargs": {k: str(v) for k, v in HTDEMUCS_FULL_KWARGS.items()} if full else None,
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
              "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
