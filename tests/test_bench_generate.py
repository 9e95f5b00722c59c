"""bench/generate_speed.py runs (tiny sizes, CPU), so it cannot rot between GPU sessions."""
import json
import runpy

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_generate_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "r.json"
    bench = runpy.run_path(str(REPO / "bench" / "generate_speed.py"))  # in this process: no second import
    bench["main"](["--tiny", "--device", "cpu", "--seconds", "0.2", "--warmup-seconds", "0.08", "--batches", "1", "2",
                   "--out", str(out)])
    report = json.loads(out.read_text())
    assert {"device", "date", "versions", "results"} <= set(report)
    assert {"torch", "audiocraft", "transformers"} <= set(report["versions"])
    rows = report["results"]
    assert {(r["variant"], r["batch"]) for r in rows} == {(v, b) for v in ("ours", "audiocraft", "transformers") for b in (1, 2)}
    assert all(r["audio_s_per_s"] > 0 and r["audio_seconds"] == 0.2 for r in rows)
    for r in (r for r in rows if r["variant"] == "ours"):
        for base in ("audiocraft", "transformers"):
            b = next(x for x in rows if x["variant"] == base and x["batch"] == r["batch"])
            # the bench rounds ratios to 2 decimals (a slow, loaded CPU gives ratios near 0.1: use abs)
            assert r[f"x_vs_{base}"] == pytest.approx(r["audio_s_per_s"] / b["audio_s_per_s"], abs=0.0051)
        assert r["t4_estimate_audio_s_per_s"] > 0
