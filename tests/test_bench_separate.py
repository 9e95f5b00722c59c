"""bench/separate_speed.py runs (stand-in model, 2 s of audio, CPU), so it cannot rot between GPU sessions."""
import json
import runpy
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # as tests/test_bench.py


def test_separate_bench_smoke_on_cpu(tmp_path, monkeypatch):
    import torch

    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["separate_speed.py", "--smoke", "--out", str(out)])
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the stand-in's tiny convolutions: one thread (see tests/test_separate.py)
    try:
        runpy.run_path(str(REPO / "bench" / "separate_speed.py"), run_name="__main__")
    finally:
        torch.set_num_threads(n)
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["device"] == "cpu" and row["audio_seconds"] == 2.0 and row["threads"] == 1
    assert row["wall_s"] > 0 and row["wall_s_per_audio_min"] == pytest.approx(row["wall_s"] / 2.0 * 60, abs=0.02)
    assert row["params"] < 1_000_000 and report["kwargs"] is None  # the stand-in, not the 42 M model
