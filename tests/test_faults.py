"""Fault injection: a stage (download, prepare, token cache + training, evaluation) killed (SIGKILL, as
when Colab drops the runtime) at some point, then run again, ends exactly where an uninterrupted run
ends, and nothing half-written is ever read.

Each stage runs as `python -m jpop_helpers <verb>` in a child process; the kill points are fractions
of the uninterrupted run's wall time. The soak variant, by hand:
    JPOP_FAULT_POINTS=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 python3 -m pytest tests/test_faults.py
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, copy_prepared
from jpop_helpers.io import read_jsonl

pytestmark = pytest.mark.slow
POINTS = [float(x) for x in os.environ.get("JPOP_FAULT_POINTS", "0.55").split(",")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "JPOP_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}


def run(args, kill_after=None) -> float:
    """Run a CLI verb to the end (returns its wall time), or kill it after `kill_after` seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jpop_helpers", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return time.perf_counter() - t0
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.communicate()
    return time.perf_counter() - t0


def tree(folder, skip=()):
    """Every file under `folder` with its bytes (hidden temp files would show up here too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(s in str(p) for s in skip)}


def test_prepare_killed_then_rerun_equals_an_uninterrupted_run(demo_root, tmp_path):
    import shutil

    # --keep-vocals: the demo corpus has no vocals and no separator weights exist offline
    args = lambda root: ["prepare", "--root", str(root), "--dsp-only", "--keep-vocals", "--chunk-seconds", "10",
                         "--min-tail-seconds", "4"]
    artists = sorted((demo_root / "raw").iterdir())[:2]  # four songs keep it quick
    copy_raw = lambda root: [shutil.copytree(a, root / "raw" / a.name) for a in artists]
    ref = tmp_path / "ref"
    copy_raw(ref)
    wall = run(args(ref))
    interrupted = 0
    for point in POINTS:
        root = tmp_path / f"killed-{point}"
        copy_raw(root)
        run(args(root), kill_after=wall * point)
        for attempt in (1, 2):  # the reference ran slower (a loaded machine): kill earlier, on a fresh copy
            if not (root / "labels.csv").exists():
                break
            shutil.rmtree(root)
            copy_raw(root)
            run(args(root), kill_after=wall * point / 2 ** attempt)
        interrupted += not (root / "labels.csv").exists()  # else the kill came after the end
        run(args(root))
        for sub in ("clips", "manifests"):
            a, b = tree(ref / sub), tree(root / sub)
            if sub == "manifests":  # absolute paths differ by root only
                a = {k: v.replace(str(ref.resolve()).encode(), b"ROOT") for k, v in a.items()}
                b = {k: v.replace(str(root.resolve()).encode(), b"ROOT") for k, v in b.items()}
            assert a == b, (point, sub, set(a) ^ set(b))
        assert (ref / "labels.csv").read_text().replace(str(ref.resolve()), "") == \
            (root / "labels.csv").read_text().replace(str(root.resolve()), "")
    assert interrupted, "every kill came after the end: use earlier kill points"


def test_training_killed_then_rerun_equals_an_uninterrupted_run(demo_root, tmp_path):
    """The token cache and training are both interrupted here (the first run encodes, then trains)."""
    from jpop_helpers.checkpoint import list_checkpoints, load_weights

    data = copy_prepared(demo_root, tmp_path / "data-ref")
    args = lambda data, run_dir: ["train", "--root", str(data), "--run", str(run_dir), "--model", "tiny",
                                  "--mode", "full", "--steps", "6", "--batch-size", "4", "--lr", "1e-3",
                                  "--warmup-steps", "1", "--eval-every", "3", "--save-every", "2",
                                  "--log-every", "1", "--device", "cpu"]
    wall = run(args(data, tmp_path / "ref"))
    curve = lambda r: [(m["step"], m.get("train/ce"), m.get("valid/ce")) for m in read_jsonl(r / "metrics.jsonl")]
    interrupted = 0
    for point in POINTS:
        data = copy_prepared(demo_root, tmp_path / f"data-{point}")
        run_dir = tmp_path / f"killed-{point}"
        run(args(data, run_dir), kill_after=wall * point)
        interrupted += not (run_dir / "checkpoints" / "ckpt_00000006").exists()  # else the kill came after the end
        run(args(data, run_dir))
        assert curve(run_dir) == curve(tmp_path / "ref"), point
        a = load_weights(list_checkpoints(tmp_path / "ref" / "checkpoints")[-1])
        b = load_weights(list_checkpoints(run_dir / "checkpoints")[-1])
        assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a), point
        assert not list(run_dir.rglob(".*.tmp*")) and not list(data.rglob(".*.tmp*"))  # no temp file left
        index = json.loads(next((data / "tokens").rglob("index.json")).read_text())
        assert index  # the cache the second run finished is readable
    assert interrupted, "every kill came after the end: use earlier kill points"


def test_download_killed_then_rerun_equals_an_uninterrupted_run(demo_root, tmp_path):
    """Local sources through yt-dlp (the same path as online ones, file:// URLs)."""
    src = tmp_path / "src"
    for artist in sorted((demo_root / "raw").iterdir())[:2]:
        for wav in sorted(artist.glob("*.wav")):
            dest = src / artist.name / wav.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(wav.read_bytes())
    csv = tmp_path / "sources.csv"
    csv.write_text("artist,source\n" + "".join(f"{a.name},{a}\n" for a in sorted(src.iterdir())))
    args = lambda root: ["download", "--manifest", str(csv), "--root", str(root)]
    drop_times = lambda t: {k: (json.dumps({**json.loads(v), "downloaded_at": None}).encode() if k.endswith(".json") else v)
                            for k, v in t.items()}
    wall = run(args(tmp_path / "ref"))
    ref = drop_times(tree(tmp_path / "ref" / "raw"))
    interrupted = 0
    for point in POINTS:
        root = tmp_path / f"killed-{point}"
        run(args(root), kill_after=wall * point)
        interrupted += len(list(root.glob("raw/*/*.info.json"))) < len([k for k in ref if k.endswith(".info.json")])
        run(args(root))
        assert drop_times(tree(root / "raw")) == ref, point
    assert interrupted, "every kill came after the end: use earlier kill points"


def test_evaluation_killed_then_rerun_equals_an_uninterrupted_run(demo_root, tiny_run, tmp_path):
    import shutil

    data = copy_prepared(demo_root, tmp_path / "data")
    args = lambda run_dir: ["evaluate", "--root", str(data), "--run", str(run_dir), "--n-prompts", "1",
                            "--duration", "1", "--clap-checkpoint", "", "--device", "cpu"]
    runs = {}
    for name in ["ref"] + [f"killed-{p}" for p in POINTS]:
        runs[name] = Path(shutil.copytree(tiny_run, tmp_path / name, ignore=shutil.ignore_patterns("eval")))
    wall = run(args(runs["ref"]))
    summary = lambda r: {k: v for k, v in json.loads((r / "eval" / "summary.json").read_text()).items() if k != "run"}
    interrupted = 0
    for point in POINTS:
        run_dir = runs[f"killed-{point}"]
        run(args(run_dir), kill_after=wall * point)
        interrupted += not (run_dir / "eval" / "summary.json").exists()
        run(args(run_dir))
        assert summary(run_dir)["ce"] == summary(runs["ref"])["ce"] and summary(run_dir)["pair_ids"]
        gen = lambda r: {str(p.relative_to(r)): p.read_bytes() for p in (r / "eval" / "generated").rglob("*.wav")}
        assert gen(run_dir) == gen(runs["ref"]), point  # the same clips, none half-written
    assert interrupted, "every kill came after the end: use earlier kill points"
