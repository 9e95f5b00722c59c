"""The benchmark scripts run (tiny sizes), so they cannot rot between GPU sessions."""
import json
import runpy
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_train_bench_smoke_on_cpu(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["train_gpu.py", "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "1",
                                      "--seconds", "2", "--batches", "2", "--out", str(out)])
    runpy.run_path(str(REPO / "bench" / "train_gpu.py"), run_name="__main__")  # in this process: no second import
    rows = json.loads(out.read_text())["results"]
    assert {(r["mode"], r["variant"]) for r in rows} == {("full", "baseline"), ("full", "ours"), ("lora", "ours")}
    assert all(r["clips_per_s"] > 0 and r["batch"] == 2 for r in rows)
    # What the comparison rests on: the baseline encodes audio every step (warm-up included), ours never.
    assert {(r["variant"], r["encodes"]) for r in rows} == {("baseline", 2), ("ours", 0)}
    base = [r for r in rows if r["variant"] == "baseline"][0]
    ours = [r for r in rows if r["variant"] == "ours" and r["mode"] == "full"][0]
    assert ours["speedup_vs_baseline"] == pytest.approx(ours["clips_per_s"] / base["clips_per_s"], abs=0.006)


# bench/train_speed.py runs in tests/test_gpu_rehearsal.py, inside the rehearsal of bench/gpu_all.sh
