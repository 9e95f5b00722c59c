"""Training memory and speed: our step against an audiocraft-solver-style step, in one run.

For each MusicGen size (random-init weights of the real architectures: small 1024x24, medium 1536x48,
large 2048x48; EnCodec 32 kHz; 30-s clips) and mode, measures peak GPU memory and clips/s of
  baseline  audiocraft-solver-style: EnCodec encode every step, fp16 autocast + GradScaler, fp32 AdamW
            over every LM weight (what the seed paper ran)
  ours      jpop_helpers' step: cached tokens (no encode), bf16 autocast where supported (fp16 + scaler
            on a T4), fused AdamW; LoRA with frozen half-precision base weights; optional activation
            checkpointing (the LMLoss module of jpop_helpers.loss and the loop's setup_trainable)
and reports memory against a T4's 15 GiB and ours/baseline throughput. Also (CPU, meta device) the
parameter counts and adapter sizes of every size.

    python bench/train_gpu.py                       # GPU: all sizes, full + LoRA, batch 2 and 8 (small)
    python bench/train_gpu.py --tiny --device cpu   # smoke run on CPU with the tiny model (tests use it)
    python bench/train_gpu.py --sizes-only          # parameter and LoRA adapter sizes (CPU, meta device)
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

T4_GIB = 15.0
ARCH = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}


def real_lm_cfg(size: str) -> dict:
    """MusicGen's LM hyper-parameters (hidden 4x, 4 codebooks of 2048, delay pattern); text
    conditioning through a lookup table of the same width, since T5 weights cannot be downloaded here."""
    from jpop_helpers.model import tiny_lm_cfg

    dim, layers, heads = ARCH[size]
    cfg = tiny_lm_cfg(dim=dim, num_layers=layers, num_heads=heads)
    cfg["transformer_lm"].update(card=2048, bias_proj=False)
    cfg["conditioners"]["description"]["lut"]["dim"] = dim
    return cfg


def real_codec_cfg() -> dict:
    """EnCodec 32 kHz as used by MusicGen: SEANet 64 filters, ratios 8-5-4-4 (640x), 4 x 2048 codes."""
    from jpop_helpers.model import tiny_compression_cfg

    cfg = tiny_compression_cfg()
    cfg["seanet"].update(dimension=128, n_filters=64, n_residual_layers=1, ratios=[8, 5, 4, 4], lstm=2)
    cfg["rvq"].update(bins=2048, n_q=4, kmeans_init=False)
    return cfg


def build(size: str, device: str):
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    if size == "tiny":
        from jpop_helpers.model import load_musicgen

        m = load_musicgen("tiny", device)
        return m.lm, m.compression_model
    lm = builders.get_lm_model(OmegaConf.create({**real_lm_cfg(size), "device": device}))
    codec = builders.get_compression_model(OmegaConf.create({**real_codec_cfg(), "device": device}))
    return lm, codec.eval()


@dataclass
class Result:
    size: str
    mode: str
    variant: str
    batch: int
    clips_per_s: float
    peak_gib: float | None
    precision: str
    encodes: int  # EnCodec passes over the audio, warm-up included (the baseline: one per step)


def run_variant(size, mode, variant, batch, steps, warmup, device, seconds, act_ckpt) -> Result:
    from audiocraft.modules.conditioners import ConditioningAttributes

    from jpop_helpers.loss import LMLoss
    from jpop_helpers.precision import choose_precision
    from jpop_helpers.train import TrainConfig, setup_trainable

    torch.manual_seed(0)
    lm, codec = build(size, device)
    frames = int(seconds * 50) if size != "tiny" else int(seconds * 25)
    card = lm.card
    baseline = variant == "baseline"
    dtype = torch.float16 if baseline else choose_precision("auto", device)
    if device == "cpu":
        dtype = torch.float32
    if not baseline and act_ckpt:
        lm.transformer.checkpointing = "torch"
    lm, params = setup_trainable(lm, TrainConfig(mode=mode), device, dtype)  # the loop's own choice
    step_module = LMLoss(lm)
    fused = {"fused": True} if (device.startswith("cuda") and not baseline) else {}
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), **fused)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    audio = torch.randn(batch, 1, int(seconds * 32000), device=device) * 0.1
    codes = torch.randint(card, (batch, 4, frames), device=device)
    pad = torch.ones_like(codes, dtype=torch.bool)
    attrs = [ConditioningAttributes(text={"description": "upbeat j-pop with piano"}) for _ in range(batch)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0, encodes = None, 0
    for i in range(warmup + steps):
        if i == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if baseline:  # the solver encodes audio every step
            with torch.no_grad():
                codes, _ = codec.encode(audio)
            encodes += 1
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            ce, _, _ = step_module(codes, pad, attrs)
        scaler.scale(ce).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    del lm, codec, opt, step_module
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return Result(size, mode, variant, batch, batch * steps / dt, peak, str(dtype).replace("torch.", ""),
                  encodes)


def adapter_sizes() -> list[dict]:
    """Parameter counts of each real architecture and of its LoRA adapter (r=16), on the meta device."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from jpop_helpers.lora import LoraConfig, add_lora

    out = []
    for size in ARCH:
        with torch.device("meta"):
            lm = builders.get_lm_model(OmegaConf.create({**real_lm_cfg(size), "device": "meta"}))
            full = sum(p.numel() for p in lm.parameters())
            lm = add_lora(lm, LoraConfig())
            lora = sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)
        out.append({"size": size, "lm_params_M": round(full / 1e6, 1), "lora_params_M": round(lora / 1e6, 2),
                    "lora_fraction": round(lora / full, 4), "adapter_MiB_fp32": round(lora * 4 / 2**20, 1),
                    "full_lm_MiB_fp32": round(full * 4 / 2**20, 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,medium,large")
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--batches", default="2,8", help="batch sizes (8 is run for small only)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny model only (smoke test)")
    ap.add_argument("--no-sizes-table", action="store_true")
    ap.add_argument("--sizes-only", action="store_true", help="only the parameter/adapter size table (CPU)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_gpu.json"))
    a = ap.parse_args()

    if a.sizes_only:
        table = adapter_sizes()
        out = Path(a.out).with_name("lora_sizes.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=2) + "\n")
        print(json.dumps(table, indent=2))
        return
    sizes = ["tiny"] if a.tiny else a.sizes.split(",")
    rows = []
    for size in sizes:
        for mode in a.modes.split(","):
            for batch in [int(b) for b in a.batches.split(",")]:
                if batch > 2 and size not in ("small", "tiny"):
                    continue
                pair = {}
                for variant in ("baseline", "ours"):
                    if variant == "baseline" and mode == "lora":
                        continue  # the baseline is the solver's full fine-tuning step
                    act = size in ("medium", "large")
                    try:
                        r = run_variant(size, mode, variant, batch, a.steps, a.warmup, a.device, a.seconds, act)
                        pair[variant] = r
                        rows.append({**r.__dict__, "fits_t4": None if r.peak_gib is None else r.peak_gib < T4_GIB})
                    except torch.OutOfMemoryError:
                        rows.append({"size": size, "mode": mode, "variant": variant, "batch": batch, "oom": True})
                        torch.cuda.empty_cache()
                    print(json.dumps(rows[-1]), flush=True)
    # speed-up of ours over the baseline measured in this run (full fine-tuning, same size and batch)
    base = {(r["size"], r["batch"]): r["clips_per_s"] for r in rows if r.get("variant") == "baseline" and "clips_per_s" in r}
    for r in rows:
        if r.get("variant") == "ours" and (r["size"], r["batch"]) in base:
            r["speedup_vs_baseline"] = round(r["clips_per_s"] / base[(r["size"], r["batch"])], 2)
    report = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
              "seconds_per_clip": a.seconds, "results": rows,
              "sizes": [] if (a.tiny or a.no_sizes_table) else adapter_sizes()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
