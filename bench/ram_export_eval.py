"""Peak RAM (RSS) of export and evaluation for a full fine-tune of the real small architecture, on CPU.

Colab gives ~12 GiB of RAM. This builds the offline stand-in of `facebook/musicgen-small` at full
depth (random weights, the real configuration and loading path: tests/hub_standin.py), trains one
full fine-tuning step on 2-s token clips to get a real checkpoint, then runs, each in a fresh process
and measured by its own peak RSS (ru_maxrss):
  load      MusicGen.get_pretrained of the base (the baseline every later step pays)
  export    export_run(run) (weights only from the checkpoint, the base's config memory-mapped)
  evaluate  what stage 05 holds: the base and the run's model (load_run_lm) side by side, and the CE
            of both on a few clips
Medium and large are estimated from small's measured bytes per LM parameter (no stand-in fits here).

    python bench/ram_export_eval.py [--out bench/results/ram_export_eval.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
what, run, out = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
if what == "load":
    from jpop_helpers.model import load_musicgen
    m = load_musicgen("facebook/musicgen-small", "cpu")
elif what == "export":
    from jpop_helpers.export import export_run
    export_run(run, out)
elif what == "evaluate":
    from jpop_helpers.loss import evaluate_ce
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.runs import load_run_lm
    from jpop_helpers.tokens import TokenItem
    tuned, _ = load_run_lm(run, "cpu")
    base = load_musicgen("facebook/musicgen-small", "cpu")
    g = torch.Generator().manual_seed(0)
    items = [TokenItem(str(i), torch.randint(0, 2048, (4, 100), generator=g).to(torch.int16), 100, ["j-pop"]) for i in range(2)]
    for m in (base, tuned):
        evaluate_ce(m.lm, items, 2, "cpu")
print(json.dumps({{"what": what, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds": time.perf_counter() - t0}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ram_export_eval.json"))
    a = ap.parse_args()
    import torch

    from hub_standin import MUSICGEN_REPO, build_standin_hub

    work = Path(tempfile.mkdtemp(prefix="ram-bench-"))
    cache = work / "hf" / "hub"
    t0 = time.perf_counter()
    info = build_standin_hub(cache)  # full depth: 24 LM layers, t5-base's 12
    print(f"stand-in hub (full depth) built in {time.perf_counter() - t0:.0f} s", flush=True)
    env = {**os.environ, "HF_HOME": str(cache.parent), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "JPOP_NO_PROGRESS": "1"}
    env.pop("AUDIOCRAFT_CACHE_DIR", None)
    run = work / "run"
    train = (f"import sys, torch; sys.path.insert(0, {str(REPO)!r})\n"
             "from jpop_helpers.tokens import TokenItem\nfrom jpop_helpers.train import TrainConfig, train\n"
             "g = torch.Generator().manual_seed(0)\n"
             "items = [TokenItem(str(i), torch.randint(0, 2048, (4, 100), generator=g).to(torch.int16), 100, ['j-pop'])"
             " for i in range(2)]\n"
             f"train(TrainConfig(model={MUSICGEN_REPO!r}, mode='full', steps=1, batch_size=2, grad_accum=1, warmup_steps=1), "
             f"{str(run)!r}, items, [], device='cpu')\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", train], env=env, check=True)
    print(f"one full step + checkpoint in {time.perf_counter() - t0:.0f} s", flush=True)
    ckpt = next((run / "checkpoints").iterdir())
    rows = []
    for what in ("load", "export", "evaluate"):
        proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), what, str(run), str(work / "export")],
                              env=env, check=True, capture_output=True, text=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    from jpop_helpers.plan import PUBLISHED

    params = {size: arch.lm_params for size, arch in PUBLISHED.items()}
    estimates = {size: {r["what"]: round(r["peak_rss_gib"] / params["small"] * p, 1) for r in rows}
                 for size, p in params.items() if size != "small"}
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": "cpu (2 cores)",
              "model": "facebook/musicgen-small stand-in, full depth, random weights", "lm_layers": info.lm_num_layers,
              "checkpoint_files_gib": {f.name: round(f.stat().st_size / 2**30, 2) for f in ckpt.iterdir()},
              "export_files_gib": {f.name: round(f.stat().st_size / 2**30, 2) for f in (work / "export").iterdir()
                                   if f.is_file()},
              "measured_small_cpu": rows, "estimated_cpu_by_lm_params": estimates}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
